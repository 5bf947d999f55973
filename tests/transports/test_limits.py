"""The limits' and node authorization's decisions, without sockets."""

from __future__ import annotations

import pytest

from xdsd.settings import NodeGrant
from xdsd.transports.limits import (
    AddressCount,
    NodeAuthorizer,
    NodeIdentity,
    Refused,
    certificate_sans,
    node_identity,
)

CERT = {"subjectAltName": (("URI", "spiffe://m/a"), ("DNS", "a.m"), ("IP Address", "10.0.0.1"))}
GRANTS = (
    NodeGrant("spiffe://m/a", node_ids=("a-1",)),
    NodeGrant("a.m", services=("alpha",)),
    NodeGrant("spiffe://m/ops", node_ids=("*",)),
)


def test_sans_are_the_uri_and_dns_names() -> None:
    assert certificate_sans(CERT) == ("spiffe://m/a", "a.m")
    assert certificate_sans(None) == ()


@pytest.mark.parametrize(
    ("cert", "node_id", "service", "allowed"),
    [
        (CERT, "a-1", "anything", True),  # by node id (URI SAN)
        (CERT, "other", "alpha", True),  # by service (DNS SAN)
        (CERT, "b-1", "beta", False),
        ({"subjectAltName": (("URI", "spiffe://m/ops"),)}, "b-1", "beta", True),
        ({"subjectAltName": (("URI", "spiffe://m/unknown"),)}, "a-1", "alpha", False),
        (None, "a-1", "alpha", False),
    ],
)
def test_a_certificate_speaks_only_for_its_nodes(
    cert: dict[str, object] | None, node_id: str, service: str, allowed: bool
) -> None:
    authorizer = NodeAuthorizer(GRANTS)
    if allowed:
        authorizer.check(cert, NodeIdentity(node_id, service))
    else:
        with pytest.raises(Refused) as info:
            authorizer.check(cert, NodeIdentity(node_id, service))
        assert (info.value.code, info.value.http_status) == ("PERMISSION_DENIED", 403)
        assert node_id in info.value.message


@pytest.mark.parametrize(
    ("san", "namespace", "service", "allowed"),
    [
        ("spiffe://mesh.test/ns/prod/sa/web", "prod", "web", True),
        ("spiffe://mesh.test/ns/prod/sa/web", "default", "web", False),  # another namespace
        ("spiffe://mesh.test/ns/prod/sa/web", "prod", "api", False),  # another service
        ("spiffe://other.test/ns/prod/sa/web", "prod", "web", False),  # another trust domain
        ("spiffe://m/a", "prod", "web", False),  # no grant, not a mesh identity
    ],
)
def test_mesh_identities_speak_for_their_own_service_and_namespace(
    san: str, namespace: str, service: str, allowed: bool
) -> None:
    authorizer = NodeAuthorizer((), trust_domain="mesh.test")
    assert authorizer.enforcing
    cert = {"subjectAltName": (("URI", san),)}
    if allowed:
        authorizer.check(cert, NodeIdentity("any-id", service, namespace))
    else:
        with pytest.raises(Refused, match=f"in namespace '{namespace}'"):
            authorizer.check(cert, NodeIdentity("any-id", service, namespace))


def test_a_service_grant_may_name_its_namespace() -> None:
    authorizer = NodeAuthorizer((NodeGrant("a.m", services=("prod/web", "api")),))
    cert = {"subjectAltName": (("DNS", "a.m"),)}
    authorizer.check(cert, NodeIdentity("x", "web", "prod"))
    authorizer.check(cert, NodeIdentity("x", "api", "anywhere"))  # a bare name: any namespace
    with pytest.raises(Refused):
        authorizer.check(cert, NodeIdentity("x", "web", "default"))


def test_a_mesh_identity_does_not_speak_for_a_gateway() -> None:
    """A gateway receives the server keys of the Gateways its labels select: a mesh
    workload claiming to be one (with its own service name) needs a grant with the
    gateway role and the labels."""
    web = {"subjectAltName": (("URI", "spiffe://mesh.test/ns/default/sa/web"),)}
    authorizer = NodeAuthorizer((), trust_domain="mesh.test")
    authorizer.check(web, NodeIdentity("web-1", "web"))
    with pytest.raises(Refused, match="may not speak for gateway"):
        authorizer.check(web, NodeIdentity("web-1", "web", role="gateway"))
    granted = NodeAuthorizer(
        (
            NodeGrant(
                "spiffe://mesh.test/ns/default/sa/web",
                services=("default/web",),
                roles=("gateway",),
                gateway_labels=(("istio", "web-gw"),),
            ),
        ),
        trust_domain="mesh.test",
    )
    granted.check(web, NodeIdentity("web-1", "web", role="gateway", labels=(("istio", "web-gw"),)))


PRODUCTPAGE = {"subjectAltName": (("URI", "spiffe://mesh.test/productpage"),)}
GATEWAY = {"subjectAltName": (("DNS", "gateway.mesh.test"),)}
INGRESS = (("istio", "ingressgateway"),)
DOCS_GRANTS = (
    NodeGrant("spiffe://mesh.test/productpage", services=("default/productpage",)),
    NodeGrant(
        "gateway.mesh.test",
        node_ids=("ingress-gateway",),
        roles=("gateway",),
        gateway_labels=(("app", "istio-ingressgateway"), *INGRESS),
    ),
)


@pytest.mark.parametrize(
    ("cert", "identity", "allowed"),
    [
        # issue 14 #6: a service's certificate posing as the ingress gateway
        (PRODUCTPAGE, NodeIdentity("x", "productpage", role="gateway", labels=INGRESS), False),
        (PRODUCTPAGE, NodeIdentity("x", "productpage", role="gateway"), False),
        (PRODUCTPAGE, NodeIdentity("x", "productpage", labels=INGRESS), True),  # a sidecar
        (PRODUCTPAGE, NodeIdentity("x", "productpage", role="proxyless"), True),
        (PRODUCTPAGE, NodeIdentity("x", "productpage", "prod"), False),  # another namespace
        (GATEWAY, NodeIdentity("ingress-gateway", "gw", role="gateway", labels=INGRESS), True),
        (GATEWAY, NodeIdentity("ingress-gateway", "gw", role="gateway"), True),  # fewer labels
        (
            GATEWAY,
            NodeIdentity(
                "ingress-gateway", "gw", role="gateway", labels=(("istio", "egressgateway"),)
            ),
            False,
        ),  # another Gateway's
        (
            GATEWAY,
            NodeIdentity("ingress-gateway", "gw", role="gateway", labels=(*INGRESS, ("x", "y"))),
            False,
        ),  # a label not granted
        (GATEWAY, NodeIdentity("ingress-gateway", "gw"), False),  # a sidecar: not granted
    ],
)
def test_a_grant_binds_role_and_labels(
    cert: dict[str, object], identity: NodeIdentity, allowed: bool
) -> None:
    authorizer = NodeAuthorizer(DOCS_GRANTS)
    assert authorizer.allowed(cert, identity) is allowed
    if not allowed:
        with pytest.raises(Refused, match=f"may not speak for {identity.role}"):
            authorizer.check(cert, identity)


def test_a_grant_with_labels_bounds_a_sidecars_labels() -> None:
    grant = NodeGrant("a.m", services=("web",), labels=(("app", "web"), ("version", "*")))
    assert grant.allows("x", "web", labels={"app": "web", "version": "v2"})
    assert grant.allows("x", "web", labels={})
    assert not grant.allows("x", "web", labels={"app": "reviews"})
    assert not grant.allows("x", "web", labels={"app": "web", "team": "a"})


def test_node_ids_and_services_together_must_both_match() -> None:
    grant = NodeGrant("a.m", node_ids=("web-1",), services=("web",))
    assert grant.allows("web-1", "web")
    assert not grant.allows("web-1", "reviews")
    assert not grant.allows("web-2", "web")


def test_a_slash_in_a_service_name_does_not_meet_a_namespaced_grant() -> None:
    authorizer = NodeAuthorizer((NodeGrant("a.m", services=("prod/web",)),))
    with pytest.raises(Refused):
        authorizer.check({"subjectAltName": (("DNS", "a.m"),)}, NodeIdentity("x", "prod/web"))


@pytest.mark.parametrize(
    ("metadata", "agent", "namespace", "role", "labels"),
    [
        ({}, "envoy", "default", "sidecar", ()),
        ({"namespace": "prod", "role": "Gateway"}, "envoy", "prod", "gateway", ()),
        ({"namespace": "", "role": "sidecar"}, "envoy", "default", "sidecar", ()),
        ({"namespace": 3, "role": 1}, "envoy", "default", "sidecar", ()),  # refused by its class
        ({}, "gRPC C-core", "default", "proxyless", ()),
        ({"client": " GRPC"}, "envoy", "default", "proxyless", ()),
        ({"client": "grpc", "role": "gateway"}, "", "default", "gateway", ()),
        (
            {"labels": {"istio": "ingressgateway", "n": 2, "b": True, "f": 1.5}},
            "",
            "default",
            "sidecar",
            (("b", "true"), ("f", "1.5"), ("istio", "ingressgateway"), ("n", "2")),
        ),
    ],
)
def test_node_identity_reads_the_node_as_its_class_does(
    metadata: dict[str, object],
    agent: str,
    namespace: str,
    role: str,
    labels: tuple[tuple[str, str], ...],
) -> None:
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(id="n", cluster="web", user_agent_name=agent)
    node.metadata.update(metadata)
    assert node_identity(node) == NodeIdentity("n", "web", namespace, role, labels)


def test_without_grants_every_client_is_allowed() -> None:
    authorizer = NodeAuthorizer(())
    assert not authorizer.enforcing
    authorizer.check(None, NodeIdentity("x", "y"))


def test_streams_are_counted_per_address() -> None:
    count = AddressCount(2)
    count.acquire("10.0.0.1")
    count.acquire("10.0.0.1")
    count.acquire("10.0.0.2")
    with pytest.raises(Refused) as info:
        count.acquire("10.0.0.1")
    assert info.value.code == "RESOURCE_EXHAUSTED"
    count.release("10.0.0.1")
    count.acquire("10.0.0.1")
    assert count["10.0.0.1"] == 2 and count["10.0.0.2"] == 1
