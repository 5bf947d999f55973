"""Bootstraps: a class's resources inlined for a static Envoy, and configs that point
proxies and proxyless gRPC clients at xdsd.

How this works: ``render_static`` takes the snapshot an Envoy of the class would receive
and makes it self-contained: each EDS cluster gets its ClusterLoadAssignment inline (and
becomes STATIC), each HTTP connection manager that names a route configuration by RDS
gets that configuration inline, and TLS contexts name their SDS secrets without a config
source, which makes them the bootstrap's ``static_resources.secrets`` (the certificate
bytes inline, as read when rendering). Everything is built as Envoy messages (a ``Bootstrap``)
and only turned into a JSON-able dict at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import UsageError
from xdsd.located import is_ip
from xdsd.model import Mesh
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, NO_MESH_TLS, MeshConfig, MeshTLS
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, pack, to_json
from xdsd.translate.cluster_policy import MESH_CERTIFICATE_PROVIDER
from xdsd.translate.config_sources import (
    HTTP_PROTOCOL_OPTIONS_KEY,
    XDS_CLUSTER,
    config_source,
    duration,
    http2_protocol_options,
)
from xdsd.translate.mesh import MeshTranslation
from xdsd.translate.node import ClientKind, ConfigSourceKind, NodeClass
from xdsd.translate.proxy_defaults import admin_cluster
from xdsd.translate.secrets import static_secret_references

Transport = Literal["grpc", "delta", "rest"]
#: How long Envoy waits to connect to xdsd before retrying.
XDS_CONNECT_TIMEOUT = timedelta(seconds=1)
ADMIN_IP = "127.0.0.1"
#: The files ``xdsd certificate --out DIR`` keeps in DIR: the chain (leaf first), the
#: private key and the trust bundle.
CERTIFICATE_FILE = "cert.pem"
KEY_FILE = "key.pem"
BUNDLE_FILE = "ca.pem"
#: The gRPC metadata key an xdsd token travels in (``authorization: Bearer TOKEN``).
AUTHORIZATION_HEADER = "authorization"
_HCM_TYPE = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name


def plain_json(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with every mapping a plain ``dict`` and every sequence a ``list``
    (``MessageToDict`` returns ``OrderedDict`` for ``Any`` fields, which YAML dumpers
    refuse)."""
    return {str(k): _plain(v) for k, v in document.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return plain_json(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def node_metadata(node: NodeClass) -> Any:
    """The ``node.metadata`` Struct xdsd reads back (see ``node_class_from_node``):
    namespace, labels, role, outbound_ip and, when set, instance_ip, mesh_tls, mesh DNS
    (virtual_addresses, dns, dns_upstream), capture and vhds."""
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "namespace": node.namespace,
            "labels": dict(node.labels),
            "role": node.role.value,
            "outbound_ip": node.outbound_ip,
        }
    )
    if node.instance_ip:
        metadata.update({"instance_ip": node.instance_ip})
    if node.mesh_tls:
        metadata.update({"mesh_tls": True})
    if node.virtual_addresses:
        metadata.update({"virtual_addresses": node.virtual_addresses})
    if node.dns:
        metadata.update({"dns": node.dns})
    if node.dns_upstream:
        metadata.update({"dns_upstream": list(node.dns_upstream)})
    if node.capture:
        # a string: Envoy hands a YAML bootstrap's scalars over as strings anyway
        metadata.update({"capture": str(node.capture)})
    if node.vhds:
        metadata.update({"vhds": "true"})  # a string, as for capture
    return metadata


def node_message(node_id: str, node: NodeClass) -> Any:
    """The xDS ``Node`` a client of class ``node`` announces itself with."""
    out = base_pb2.Node(id=node_id, cluster=node.service)
    out.metadata.CopyFrom(node_metadata(node))
    loc = node.locality
    if loc.region or loc.zone or loc.sub_zone:
        out.locality.region = loc.region
        out.locality.zone = loc.zone
        out.locality.sub_zone = loc.sub_zone
    return out


def _admin(bootstrap: Any, admin_port: int) -> None:
    sock = bootstrap.admin.address.socket_address
    sock.address = ADMIN_IP
    sock.port_value = admin_port


def render_static(
    mesh: Mesh,
    node: NodeClass,
    *,
    admin_port: int,
    node_id: str = "",
    mesh_config: MeshConfig = DEFAULT_MESH_CONFIG,
) -> dict[str, Any]:
    """A complete Envoy bootstrap (proto3 JSON as a dict) holding, inline, every cluster
    and listener an Envoy sidecar of class ``node`` would receive from xdsd.

    The class is rendered as an Envoy (``client`` and ``config_source`` are overridden):
    proxyless gRPC listeners have no static form. The node id defaults to the service
    name; admin listens on 127.0.0.1:``admin_port`` (and the cluster
    ``prometheus_stats`` leads there, for the stats listener of ``mesh_config``). Raises
    TranslationError as ``MeshTranslation.snapshot_for`` does.
    """
    envoy_node = dataclasses.replace(
        node, client=ClientKind.ENVOY, config_source=ConfigSourceKind.STATIC
    )
    snapshot = MeshTranslation(mesh, mesh_config=mesh_config).snapshot_for(envoy_node)
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.CopyFrom(node_message(node_id or node.service, envoy_node))
    _admin(bootstrap, admin_port)
    resources = bootstrap.static_resources
    resources.clusters.append(admin_cluster(ADMIN_IP, admin_port))
    for cluster in snapshot.get(CLUSTER).values():
        inlined = _inline_endpoints(cluster.message, snapshot)
        resources.clusters.append(static_secret_references(inlined))
    for listener in snapshot.get(LISTENER).values():
        if listener.message.HasField("api_listener"):
            continue
        inlined = _inline_routes(listener.message, snapshot)
        resources.listeners.append(static_secret_references(inlined))
    for secret in snapshot.get(SECRET).values():
        resources.secrets.append(secret.message)
    return plain_json(to_json(bootstrap))


def _inline_endpoints(message: Any, snapshot: Snapshot) -> Any:
    """A copy of cluster ``message`` with its EDS assignment inline."""
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(message)
    if cluster.type != cluster_pb2.Cluster.EDS:
        return cluster
    name = cluster.eds_cluster_config.service_name or cluster.name
    cluster.ClearField("eds_cluster_config")
    assignment = snapshot.get(ENDPOINT).get(name)
    if assignment is not None:
        cluster.load_assignment.CopyFrom(assignment.message)
    else:
        cluster.load_assignment.cluster_name = name
    cluster.load_assignment.cluster_name = cluster.name
    addresses = [
        lb.endpoint.address
        for group in cluster.load_assignment.endpoints
        for lb in group.lb_endpoints
    ]
    static = all(a.HasField("pipe") or is_ip(a.socket_address.address) for a in addresses)
    cluster.type = cluster_pb2.Cluster.STATIC if static else cluster_pb2.Cluster.STRICT_DNS
    return cluster


def _inline_routes(message: Any, snapshot: Snapshot) -> Any:
    """A copy of listener ``message`` whose HTTP connection managers carry their route
    configurations inline instead of naming them by RDS."""
    listener = type(message)()
    listener.CopyFrom(message)
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            typed = network_filter.typed_config
            if typed.type_url.rsplit("/", 1)[-1] != _HCM_TYPE:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            typed.Unpack(hcm)
            if not hcm.HasField("rds"):
                continue
            routes = snapshot.get(ROUTE).get(hcm.rds.route_config_name)
            name = hcm.rds.route_config_name
            hcm.ClearField("rds")
            if routes is not None:
                hcm.route_config.CopyFrom(routes.message)
                # Inline, Envoy would check every cluster a route names by default; RDS
                # does not (a Gateway API route to an unresolved backend names none).
                if not hcm.route_config.HasField("validate_clusters"):
                    hcm.route_config.validate_clusters.value = False
            else:
                hcm.route_config.name = name
            network_filter.typed_config.CopyFrom(pack(hcm))
    return listener


def _xds_cluster(
    xds_host: str, xds_port: int, *, http2: bool, replicas: Sequence[tuple[str, int]] = ()
) -> Any:
    """The static cluster that leads to xdsd (HTTP/2 for gRPC: without it Envoy 1.40
    hangs on the xDS stream). With ``replicas`` (more xdsd replicas), each address is an
    endpoint of it at the next priority (the first preferred while it accepts
    connections, then the next), with the failover policy of ``_failover``."""
    addresses = [(xds_host, xds_port), *replicas]
    static = all(is_ip(host) for host, _ in addresses)  # STRICT_DNS takes IPs too
    kind = cluster_pb2.Cluster.STATIC if static else cluster_pb2.Cluster.STRICT_DNS
    cluster = cluster_pb2.Cluster(name=XDS_CLUSTER, type=kind)
    cluster.connect_timeout.CopyFrom(duration(XDS_CONNECT_TIMEOUT))
    cluster.load_assignment.cluster_name = XDS_CLUSTER
    for priority, (host, port) in enumerate(addresses):
        endpoints = cluster.load_assignment.endpoints.add(priority=priority)
        sock = endpoints.lb_endpoints.add().endpoint.address
        sock.socket_address.address = host
        sock.socket_address.port_value = port
    if http2:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(
            http2_protocol_options()
        )
    if replicas:
        _failover(cluster)
    return cluster


#: How long a replica Envoy could not connect to is left aside (then tried again).
XDS_EJECTION_TIME = timedelta(seconds=10)
#: The ADS stream's reconnection backoff with replicas: first and longest wait.
XDS_RETRY_BASE = timedelta(milliseconds=250)
XDS_RETRY_MAX = timedelta(seconds=2)


def _failover(cluster: Any) -> None:
    """The policy of an ``xds_cluster`` of several xdsd replicas, one per priority in
    the order given: a proxy's stream goes to the first replica that accepts
    connections. A replica Envoy cannot connect to is ejected at once (outlier detection
    on local-origin failures, for ``XDS_EJECTION_TIME``), so the stream's next attempt
    (``XDS_RETRY_BASE``) goes to the next priority; no panic routing to replicas known
    dead. No active health check: a stream never moves back on its own (a replica's
    return causes no reconnect), and proxies times replicas checks would load every
    replica for nothing. Proxies spread over replicas by listing them in different
    orders."""
    outlier = cluster.outlier_detection
    outlier.split_external_local_origin_errors = True
    outlier.consecutive_local_origin_failure.value = 1
    outlier.enforcing_consecutive_local_origin_failure.value = 100
    outlier.interval.CopyFrom(duration(timedelta(seconds=1)))
    outlier.base_ejection_time.CopyFrom(duration(XDS_EJECTION_TIME))
    outlier.max_ejection_percent.value = 100
    cluster.common_lb_config.healthy_panic_threshold.value = 0


def bootstrap(
    node_id: str,
    node: NodeClass,
    *,
    xds_host: str,
    xds_port: int,
    transport: Transport,
    admin_port: int,
    token: str = "",
    replicas: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """An Envoy bootstrap (proto3 JSON as a dict) that fetches clusters and listeners
    from xdsd at ``xds_host:xds_port`` — or from any of several replicas, with
    ``replicas`` (more ``(host, port)``): one cluster of them all that Envoy fails over
    in (``_failover``), its ADS stream reconnecting within ``XDS_RETRY_MAX``.

    ``grpc``: state-of-the-world ADS; ``delta``: incremental ADS (both send the node only
    on the first message and reach xdsd over HTTP/2); ``rest``: REST-JSON polling every
    second. The node carries ``node``'s service, metadata and locality, so xdsd puts the
    proxy in that class (its ``config_source`` field is not used: ``transport`` decides).
    Admin listens on 127.0.0.1:``admin_port``; the static cluster ``prometheus_stats``
    leads there, for the stats listener the mesh settings may give every proxy.

    ``token`` (an xdsd token, ``xdsd token``) becomes the ADS service's
    ``initial_metadata`` ``authorization: Bearer TOKEN``, which Envoy sends with every
    xDS stream: the returned document then holds a credential. Raises UsageError for a
    token with ``rest`` (REST-JSON polls carry no gRPC metadata: REST clients prove who
    they are with a client certificate).
    """
    if token and transport == "rest":
        raise UsageError(
            "a token travels in gRPC metadata, which REST-JSON polls cannot send: "
            "give a REST proxy a client certificate instead (--xds-tls-cert/--xds-tls-key)"
        )
    out = bootstrap_pb2.Bootstrap()
    out.node.CopyFrom(node_message(node_id, node))
    _admin(out, admin_port)
    out.static_resources.clusters.append(
        _xds_cluster(xds_host, xds_port, http2=transport != "rest", replicas=replicas)
    )
    out.static_resources.clusters.append(admin_cluster(ADMIN_IP, admin_port))
    dynamic = out.dynamic_resources
    if transport == "rest":
        dynamic.cds_config.CopyFrom(config_source(ConfigSourceKind.REST))
        dynamic.lds_config.CopyFrom(config_source(ConfigSourceKind.REST))
    else:
        ads = dynamic.ads_config
        ads.api_type = (
            config_source_pb2.ApiConfigSource.DELTA_GRPC
            if transport == "delta"
            else config_source_pb2.ApiConfigSource.GRPC
        )
        ads.transport_api_version = config_source_pb2.V3
        ads.set_node_on_first_message_only = True
        service = ads.grpc_services.add()
        service.envoy_grpc.cluster_name = XDS_CLUSTER
        if replicas:
            back_off = service.envoy_grpc.retry_policy.retry_back_off
            back_off.base_interval.CopyFrom(duration(XDS_RETRY_BASE))
            back_off.max_interval.CopyFrom(duration(XDS_RETRY_MAX))
        if token:
            service.initial_metadata.add(key=AUTHORIZATION_HEADER, value=f"Bearer {token}")
        dynamic.cds_config.CopyFrom(config_source(ConfigSourceKind.ADS))
        dynamic.lds_config.CopyFrom(config_source(ConfigSourceKind.ADS))
    return plain_json(to_json(out))


def grpc_bootstrap(
    node_id: str,
    node: NodeClass,
    *,
    xds_host: str,
    xds_port: int,
    mesh_tls: MeshTLS = NO_MESH_TLS,
    certificate_dir: str = "",
    replicas: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """The JSON file ``GRPC_XDS_BOOTSTRAP`` names, for a proxyless gRPC client of class
    ``node``: xdsd as its xDS server (plaintext, xDS v3) and its node.

    With mesh mutual TLS on (``mesh_tls``), the client's own certificate files (the
    templates filled in for its namespace, service and ``instance_ip``) and the mesh CA
    become the certificate provider ``mesh`` (gRPC's ``file_watcher``, which reads them
    again every minute), and the node says it has them (``mesh_tls``), so xdsd sends it
    mesh mutual TLS; the application must dial with xDS channel credentials. Raises
    UsageError when the templates name workloads by ``{instance_ip}`` and the node has
    none.

    ``certificate_dir`` (a directory ``xdsd certificate --out`` keeps current, for a mesh
    whose certificates xdsd's CA issues) is where the provider ``mesh`` reads instead:
    ``cert.pem``, ``key.pem`` and ``ca.pem`` there, and the node says it has them.

    ``replicas`` (more xdsd replicas) follow the first in ``xds_servers``: gRPC's xDS
    fallback (gRFC A71) moves to the next when one cannot be reached."""
    out: dict[str, Any] = {
        "xds_servers": [
            {
                "server_uri": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
            for host, port in [(xds_host, xds_port), *replicas]
        ],
    }
    if certificate_dir:
        node = dataclasses.replace(node, mesh_tls=True)
        out["certificate_providers"] = _file_watcher(
            f"{certificate_dir}/{CERTIFICATE_FILE}",
            f"{certificate_dir}/{KEY_FILE}",
            f"{certificate_dir}/{BUNDLE_FILE}",
        )
    elif mesh_tls.enabled:
        if mesh_tls.per_workload and not node.instance_ip:
            raise UsageError(
                "the mesh certificates are per workload ({instance_ip}): give --instance-ip"
            )
        node = dataclasses.replace(node, mesh_tls=True)
        certificate, key = mesh_tls.workload_files(node.namespace, node.service, node.instance_ip)
        out["certificate_providers"] = _file_watcher(certificate, key, mesh_tls.ca)
    out["node"] = plain_json(to_json(node_message(node_id, node)))
    return out


def _file_watcher(certificate: str, key: str, ca: str) -> dict[str, Any]:
    """The ``certificate_providers`` of a gRPC bootstrap: ``mesh``, gRPC's
    ``file_watcher`` reading these files (again every minute)."""
    return {
        MESH_CERTIFICATE_PROVIDER: {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": certificate,
                "private_key_file": key,
                "ca_certificate_file": ca,
                "refresh_interval": "60s",
            },
        }
    }
