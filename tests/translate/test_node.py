"""Node classes from xDS nodes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import fuzz_settings
from xdsd.errors import TranslationError
from xdsd.model import Locality
from xdsd.translate.node import (
    ClientKind,
    ConfigSourceKind,
    NodeClass,
    Role,
    client_kind,
    node_class_from_node,
)


def make_node(cluster: str = "reviews", user_agent: str = "envoy", **metadata: object) -> Any:
    node = base_pb2.Node(id="sidecar-1", cluster=cluster, user_agent_name=user_agent)
    node.metadata.CopyFrom(struct_pb2.Struct())
    node.metadata.update(metadata)
    return node


def test_reads_cluster_metadata_and_locality() -> None:
    node = make_node(
        namespace="shop",
        labels={"version": "v2", "app": "reviews"},
        role="gateway",
        instance_ip="127.0.0.5",
        outbound_ip="127.0.0.6",
    )
    node.locality.region = "eu"
    node.locality.zone = "zone-a"
    got = node_class_from_node(node, config_source=ConfigSourceKind.REST)
    assert got == NodeClass(
        service="reviews",
        namespace="shop",
        role=Role.GATEWAY,
        labels=(("app", "reviews"), ("version", "v2")),
        locality=Locality("eu", "zone-a"),
        client=ClientKind.ENVOY,
        config_source=ConfigSourceKind.REST,
        instance_ip="127.0.0.5",
        outbound_ip="127.0.0.6",
    )


def test_defaults() -> None:
    got = node_class_from_node(make_node(), config_source=ConfigSourceKind.ADS)
    assert (got.namespace, got.role, got.labels, got.instance_ip, got.outbound_ip) == (
        "default",
        Role.SIDECAR,
        (),
        "",
        "127.0.0.1",
    )


def test_ignores_other_fields() -> None:
    a = make_node(namespace="shop")
    b = make_node(namespace="shop", build="1.2.3")
    b.id = "another-id"
    b.user_agent_version = "1.40.0"
    b.client_features.append("envoy.lb.does_not_support_overprovisioning")
    kind = ConfigSourceKind.ADS
    assert node_class_from_node(a, config_source=kind) == node_class_from_node(
        b, config_source=kind
    )


def test_non_string_labels_become_strings() -> None:
    got = node_class_from_node(
        make_node(labels={"replica": 2, "canary": True}), config_source=ConfigSourceKind.ADS
    )
    assert got.labels == (("canary", "true"), ("replica", "2"))


@pytest.mark.parametrize(
    ("user_agent", "kind"),
    [
        ("envoy", ClientKind.ENVOY),
        ("gRPC C-core linux", ClientKind.GRPC),
        ("gRPC Go", ClientKind.GRPC),
        ("grpc-java", ClientKind.GRPC),
        ("MOSN", ClientKind.MOSN),
        ("mosn/1.5", ClientKind.MOSN),
        ("", ClientKind.ENVOY),
    ],
)
def test_client_kind(user_agent: str, kind: ClientKind) -> None:
    assert client_kind(user_agent) is kind


@pytest.mark.parametrize(
    ("node", "field"),
    [
        (make_node(cluster=""), "cluster"),
        (make_node(role="ingress"), "metadata.role"),
        (make_node(labels="v2"), "metadata.labels"),
        (make_node(instance_ip="my-host"), "metadata.instance_ip"),
        (make_node(outbound_ip="300.0.0.1"), "metadata.outbound_ip"),
        (make_node(namespace=3), "metadata.namespace"),
        (make_node(mesh_tls="yes"), "metadata.mesh_tls"),
        (make_node(client="linkerd"), "metadata.client"),
        (make_node(client="  "), "metadata.client"),  # blank, not empty: refused
        (make_node(role=7), "metadata.role"),
        (make_node(labels={"version": ["v1"]}), "metadata.labels.version"),
        # a null is a value of the wrong type, not "not given"
        (make_node(namespace=None), "metadata.namespace"),
        (make_node(labels={"version": None}), "metadata.labels.version"),
        (make_node(mesh_tls=None), "metadata.mesh_tls"),
        # numbers JSON cannot hold: a client may send them in a Struct
        (make_node(namespace=math.nan), "metadata.namespace"),
        (make_node(labels={"version": math.inf}), "metadata.labels.version"),
        (make_node(outbound_ip=-math.inf), "metadata.outbound_ip"),
    ],
)
def test_unusable_fields_are_errors(node: Any, field: str) -> None:
    with pytest.raises(TranslationError) as err:
        node_class_from_node(node, config_source=ConfigSourceKind.ADS)
    assert [p.field for p in err.value.problems] == [field]
    assert err.value.problems[0].path == "<node>"


def test_every_unusable_field_is_named_at_once() -> None:
    node = make_node(cluster="", role="ingress", namespace=3, mesh_tls="yes", other=[None])
    with pytest.raises(TranslationError) as err:
        node_class_from_node(node, config_source=ConfigSourceKind.ADS)
    assert [str(p) for p in err.value.problems] == [
        "<node>: cluster: is empty: set node.cluster to the service name",
        "<node>: metadata.namespace: must be a string (got number 3.0)",
        "<node>: metadata.role: must be one of sidecar, gateway (got 'ingress')",
        "<node>: metadata.mesh_tls: must be true or false (got string 'yes')",
    ]


def test_blank_values_are_the_defaults() -> None:
    got = node_class_from_node(
        make_node(user_agent="gRPC Go", namespace="", role="", client="", outbound_ip=""),
        config_source=ConfigSourceKind.ADS,
    )
    assert (got.namespace, got.role, got.client, got.outbound_ip) == (
        "default",
        Role.SIDECAR,
        ClientKind.GRPC,
        "127.0.0.1",
    )


_VALUES = st.one_of(
    st.none(), st.booleans(), st.floats(), st.sampled_from(["", " grpc", "GATEWAY", "x", "1.2.3.4"])
)


@fuzz_settings(0.5)
@given(
    st.dictionaries(
        st.sampled_from(["namespace", "role", "client", "labels"]),
        _VALUES | st.dictionaries(st.sampled_from(["app", "v"]), _VALUES, max_size=2),
        max_size=4,
    ),
    st.sampled_from(["", "envoy", "gRPC Go", "MOSN"]),
)
def test_node_identity_reads_role_and_labels_as_the_class_does(
    metadata: dict[str, object], agent: str
) -> None:
    """What ``transports.limits.node_identity`` authorizes is what the class is built of."""
    from xdsd.transports.limits import node_identity

    node = make_node("reviews", agent)
    node.metadata.update(metadata)
    try:
        got = node_class_from_node(node, config_source=ConfigSourceKind.ADS)
    except TranslationError:
        return  # refused: such a node is served nothing, whatever its identity says
    identity = node_identity(node)
    role = {Role.GATEWAY: "gateway"}.get(got.role, "sidecar")
    if role == "sidecar" and got.client is ClientKind.GRPC:
        role = "proxyless"
    assert (identity.namespace, identity.role, identity.labels) == (got.namespace, role, got.labels)


def test_labels_are_sorted_and_classes_hashable() -> None:
    a = NodeClass("reviews", labels=(("b", "2"), ("a", "1")))
    b = NodeClass("reviews", labels=(("a", "1"), ("b", "2")))
    assert a == b and hash(a) == hash(b)
    assert a.labels == (("a", "1"), ("b", "2"))


def test_mesh_tls_is_a_proxyless_grpc_clients_only() -> None:
    ads = ConfigSourceKind.ADS
    grpc = node_class_from_node(
        make_node(user_agent="gRPC Python", mesh_tls=True), config_source=ads
    )
    assert grpc.mesh_tls and "mesh-tls" in str(grpc)
    # An Envoy reads the mesh's certificates by SDS: the flag would only split classes.
    envoy = node_class_from_node(make_node(mesh_tls=True), config_source=ads)
    assert not envoy.mesh_tls and envoy == node_class_from_node(make_node(), config_source=ads)
