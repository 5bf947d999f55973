"""The cluster of an extension provider a CUSTOM policy names is in the snapshot of
every class the policy applies to, whatever its Sidecar leaves out; ext_authz filters
count as references in the consistency check."""

from __future__ import annotations

from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.listener.v3 import listener_components_pb2 as components_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.translate.meshes import http, service
from xdsd.model import Mesh, Origin
from xdsd.model.mesh_config import ExtAuthzKind, ExtensionProvider, MeshConfig
from xdsd.model.networking import EgressListener, Sidecar
from xdsd.model.security import (
    AuthorizationAction,
    AuthorizationPolicy,
    AuthorizationRule,
    WorkloadSelector,
)
from xdsd.resources import CLUSTER, pack
from xdsd.resources.references import references_of
from xdsd.translate import MeshTranslation, NodeClass

AUTHZ_CLUSTER = "outbound|8000||ext-authz.authz.svc.cluster.local"
PROVIDER = ExtensionProvider("authz", ExtAuthzKind.HTTP, "ext-authz.authz.svc.cluster.local", 8000)


def _mesh() -> Mesh:
    custom = AuthorizationPolicy(
        "ext",
        "default",
        selector=WorkloadSelector((("app", "web"),)),
        action=AuthorizationAction.CUSTOM,
        provider="authz",
        rules=(AuthorizationRule(),),
    )
    only_own = Sidecar(
        "default", "default", (), (EgressListener(("./*",)),), (), None, origin=Origin("s", 1)
    )
    return Mesh(
        services=(
            service("web", http(8080, 18080)),
            service("api", http(8081, 18081)),
            service("ext-authz", http(8000), namespace="authz"),
        ),
        sidecars=(only_own,),
        authorization_policies=(custom,),
    )


def test_a_sidecar_scope_keeps_the_provider_cluster_of_its_policies() -> None:
    translation = MeshTranslation(_mesh(), mesh_config=MeshConfig(extension_providers=(PROVIDER,)))
    web = translation.snapshot_for(
        NodeClass("web", labels=(("app", "web"),), instance_ip="10.0.0.1")
    )
    api = translation.snapshot_for(
        NodeClass("api", labels=(("app", "api"),), instance_ip="10.0.0.2")
    )
    assert AUTHZ_CLUSTER in web.get(CLUSTER)
    # The policy selects web only: api's Sidecar leaves the provider out.
    assert AUTHZ_CLUSTER not in api.get(CLUSTER)
    assert "outbound|8080||web.default.svc.cluster.local" in api.get(CLUSTER)


def _listener(*filters: components_pb2.Filter) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name="l", filter_chains=[components_pb2.FilterChain(filters=filters)]
    )


def test_ext_authz_filters_reference_their_server_cluster() -> None:
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name="outbound|9000||g")
    )
    http_authz = http_ext_authz_pb2.ExtAuthz()
    http_authz.http_service.server_uri.cluster = "outbound|8000||h"
    hcm = hcm_pb2.HttpConnectionManager(
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.ext_authz", typed_config=pack(http_authz)),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.ext_authz",
                typed_config=pack(http_ext_authz_pb2.ExtAuthz(grpc_service=grpc)),
            ),
        ]
    )
    tcp = tcp_ext_authz_pb2.ExtAuthz(grpc_service=grpc)
    listener = _listener(
        components_pb2.Filter(name="envoy.filters.network.ext_authz", typed_config=pack(tcp)),
        components_pb2.Filter(name="hcm", typed_config=pack(hcm)),
    )
    cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert set(references_of(listener)) == {
        (cluster, "outbound|9000||g"),
        (cluster, "outbound|8000||h"),
    }
