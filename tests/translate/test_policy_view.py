"""Which security policies the admin server says apply to a node class: the selection
listeners are built from (namespace, root namespace, selector), each inbound port's
mutual TLS mode, nothing for a class no policy selects."""

from __future__ import annotations

from tests.translate.meshes import service
from xdsd.model import Mesh, Origin, Port, Protocol
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG
from xdsd.model.security import (
    AuthorizationAction,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    WorkloadSelector,
)
from xdsd.translate import MeshTranslation, NodeClass, Role
from xdsd.translate.policy_view import AppliedPolicies, applied_policies

REVIEWS = service("reviews", Port(9080, Protocol.HTTP, "http"), Port(9090, Protocol.TCP, "tcp"))
RATINGS = service("ratings", Port(80, Protocol.HTTP, "http"), namespace="shop")


def _mesh() -> Mesh:
    return Mesh(
        services=(REVIEWS, RATINGS),
        authorization_policies=(
            AuthorizationPolicy(
                "deny-all", namespace="istio-system", action=AuthorizationAction.DENY
            ),
            AuthorizationPolicy(
                "allow-v2",
                selector=WorkloadSelector((("version", "v2"),)),
                origin=Origin("security/allow.yaml", 3),
            ),
            AuthorizationPolicy("shop-only", namespace="shop", dry_run=True),
        ),
        peer_authentications=(PeerAuthentication("strict", namespace="default"),),
        request_authentications=(
            RequestAuthentication(
                "jwt", namespace="shop", selector=WorkloadSelector((("app", "x"),))
            ),
        ),
    )


def test_a_sidecar_sees_the_policies_of_its_namespace_labels_and_the_root() -> None:
    translation = MeshTranslation(_mesh())
    node = NodeClass(service="reviews", labels=(("version", "v2"),))
    shown = applied_policies(translation, node)
    assert [str(p) for p in shown.authorization_policies] == [
        "AuthorizationPolicy default/allow-v2 (ALLOW)",
        "AuthorizationPolicy istio-system/deny-all (DENY)",
    ]
    assert [str(p) for p in shown.peer_authentications] == ["PeerAuthentication default/strict"]
    assert shown.request_authentications == ()
    assert shown.mtls == ((9080, "DISABLE"), (9090, "DISABLE"))  # the settings' mode
    as_json = shown.as_json()
    assert as_json["authorization_policies"][0] == {
        "namespace": "default",
        "name": "allow-v2",
        "action": "ALLOW",
        "origin": "security/allow.yaml:3",
    }
    assert as_json["mtls"] == {"9080": "DISABLE", "9090": "DISABLE"}


def test_labels_and_namespace_decide() -> None:
    translation = MeshTranslation(_mesh())
    v1 = applied_policies(translation, NodeClass(service="reviews", labels=(("version", "v1"),)))
    assert [p.name for p in v1.authorization_policies] == ["deny-all"]
    shop = applied_policies(
        translation, NodeClass(service="ratings", namespace="shop", labels=(("app", "x"),))
    )
    assert [str(p) for p in shop.authorization_policies] == [
        "AuthorizationPolicy istio-system/deny-all (DENY)",
        "AuthorizationPolicy shop/shop-only (ALLOW DRY-RUN)",
    ]
    assert [p.name for p in shop.request_authentications] == ["jwt"]
    assert shop.peer_authentications == ()
    assert shop.mtls == ((80, "DISABLE"),)


def test_a_gateway_has_policies_but_no_inbound_ports() -> None:
    translation = MeshTranslation(_mesh())
    gateway = applied_policies(translation, NodeClass(service="ingress", role=Role.GATEWAY))
    assert [p.name for p in gateway.authorization_policies] == ["deny-all"]
    assert gateway.mtls == ()


def test_a_mesh_without_policies_shows_none() -> None:
    translation = MeshTranslation(Mesh(services=(REVIEWS,)), mesh_config=DEFAULT_MESH_CONFIG)
    shown = applied_policies(translation, NodeClass(service="reviews"))
    assert shown == AppliedPolicies(mtls=((9080, "DISABLE"), (9090, "DISABLE")))
    assert shown.as_json()["authorization_policies"] == []
