"""Listeners that cannot share a port, and ``allowedRoutes.kinds`` a listener cannot
take: their conditions, and that the rest of the Gateway is still served (the gateway
node's translation never fails on what the conversion let through)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sources.gateway_api.test_convert_http import NODE, SERVICES
from xdsd.model import Mesh
from xdsd.model.gateway_api import (
    CONTROLLER_NAME,
    AllowedRoutes,
    Condition,
    GatewayAPI,
    GatewayClass,
    KubeGateway,
    Listener,
    ListenerTLS,
    ObjectRef,
)
from xdsd.model.service import CertificateFile
from xdsd.resources import LISTENER
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.convert import Converted, convert
from xdsd.translate import MeshTranslation

GROUP = "gateway.networking.k8s.io"
TERMINATE = ListenerTLS(
    "Terminate",
    (ObjectRef("/certs/edge.pem", "File", "xdsd.dev"),),
    (("xdsd.dev/private-key", "/certs/edge.key"),),
)
PASSTHROUGH = ListenerTLS("Passthrough")
CERTIFICATES = (
    CertificateFile("/certs/edge.key", b"KEY"),
    CertificateFile("/certs/edge.pem", b"CERT"),
)


def https(name: str, port: int, host: str = "") -> Listener:
    return Listener(name, port, "HTTPS", hostname=host, tls=TERMINATE)


def run(*listeners: Listener) -> Converted:
    gateway = KubeGateway("edge", "infra", "xdsd", listeners)
    return convert(GatewayAPI((GatewayClass("xdsd", CONTROLLER_NAME),), (gateway,), ()), SERVICES)


def listener_state(out: Converted, name: str) -> dict[str, Condition]:
    scope = cond.listener_scope(name)
    return {c.type: c for c in out.conditions if c.scope == scope}


def served_ports(out: Converted) -> set[int]:
    """The ports the gateway node listens on: translates, or the test fails."""
    mesh = Mesh(
        services=SERVICES,
        gateways=out.gateways,
        virtual_services=out.virtual_services,
        certificates=CERTIFICATES,
    )
    snapshot = MeshTranslation(mesh).snapshot_for(NODE)
    return {r.message.address.socket_address.port_value for r in snapshot.get(LISTENER).values()}


def test_tcp_sharing_a_port_conflicts_and_the_rest_is_served() -> None:
    out = run(
        Listener("fine", 8000, "HTTP"),
        Listener("web", 9000, "HTTP"),
        Listener("raw", 9000, "TCP"),
    )
    for name, other in (("web", "raw"), ("raw", "web")):
        state = listener_state(out, name)
        assert state[cond.CONFLICTED].status is True
        assert state[cond.CONFLICTED].reason == cond.PROTOCOL_CONFLICT
        assert state[cond.ACCEPTED].status is False
        assert state[cond.PROGRAMMED].status is False
        assert repr(other) in state[cond.CONFLICTED].message
    fine = listener_state(out, "fine")
    assert fine[cond.ACCEPTED].status and not fine[cond.CONFLICTED].status
    [gateway] = out.gateways
    assert [s.name for s in gateway.servers] == ["fine"]
    whole = [c for c in out.conditions if c.target.kind == "KubeGateway" and not c.scope]
    accepted = next(c for c in whole if c.type == cond.ACCEPTED)
    assert (accepted.status, accepted.reason) == (True, cond.LISTENERS_NOT_VALID)
    assert "'web'" in accepted.message and "'raw'" in accepted.message
    warnings = [p.message for p in out.problems]
    assert any("'web' is not served" in m and "'raw'" in m for m in warnings)
    assert any("'raw' is not served" in m and "'web'" in m for m in warnings)
    assert served_ports(out) == {8000}


def test_http_and_https_on_one_port_conflict() -> None:
    out = run(
        Listener("ok", 80, "HTTP"),
        Listener("a", 8443, "HTTP"),
        https("b", 8443, "b.example.com"),
    )
    for name in ("a", "b"):
        assert listener_state(out, name)[cond.CONFLICTED].reason == cond.PROTOCOL_CONFLICT
    assert served_ports(out) == {80}


def test_terminate_and_passthrough_on_one_sni_host_conflict() -> None:
    out = run(
        Listener("ok", 80, "HTTP"),
        https("a", 8443),
        Listener("b", 8443, "TLS", tls=PASSTHROUGH),
    )
    for name in ("a", "b"):
        state = listener_state(out, name)
        assert state[cond.CONFLICTED].reason == cond.HOSTNAME_CONFLICT
        assert "'*'" in state[cond.CONFLICTED].message
    assert served_ports(out) == {80}


def test_distinct_listeners_share_a_port() -> None:
    out = run(
        https("a", 8443, "a.example.com"),
        https("b", 8443, "b.example.com"),
        Listener("c", 8443, "TLS", hostname="c.example.com", tls=PASSTHROUGH),
        Listener("d", 80, "HTTP", hostname="d.example.com"),
        Listener("e", 80, "HTTP"),
        Listener("f", 5353, "UDP"),
        Listener("g", 5353, "TCP"),
    )
    assert not out.problems
    for name in "abcdefg":
        state = listener_state(out, name)
        assert state[cond.ACCEPTED].status and not state[cond.CONFLICTED].status, name
    whole = [c for c in out.conditions if c.target.kind == "KubeGateway" and not c.scope]
    assert next(c for c in whole if c.type == cond.ACCEPTED).reason == cond.ACCEPTED


LISTENERS = st.lists(
    st.tuples(
        st.sampled_from(["HTTP", "HTTPS", "TLS", "TCP", "UDP"]),
        st.sampled_from([80, 443]),
        st.sampled_from(["", "a.example.com", "*.example.com"]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(LISTENERS)
def test_whatever_is_accepted_translates(specs: list[tuple[str, int, str]]) -> None:
    """Any set of listeners: those not conflicted are served and the gateway node's
    translation does not fail (the conversion applies the translation's own rule)."""
    listeners = []
    for i, (protocol, port, host) in enumerate(specs):
        if protocol in ("TCP", "UDP"):
            host = ""
        tls = TERMINATE if protocol == "HTTPS" else PASSTHROUGH if protocol == "TLS" else None
        listener = Listener(f"l{i}", port, protocol, hostname=host, tls=tls)
        if any((x.port, x.protocol, x.hostname) == (port, protocol, host) for x in listeners):
            continue  # refused when the file is read
        listeners.append(listener)
    out = run(*listeners)
    served = {s.name for g in out.gateways for s in g.servers}
    for listener in listeners:
        state = listener_state(out, listener.name)
        assert state[cond.ACCEPTED].status == (listener.name in served)
        assert state[cond.CONFLICTED].status == (listener.name not in served)
    served_ports(out)


def test_allowed_route_kinds_a_listener_cannot_take() -> None:
    kinds = ((GROUP, "TCPRoute"), (GROUP, "HTTPRoute"), ("example.com", "GRPCRoute"))
    out = run(
        Listener("http", 80, "HTTP", allowed_routes=AllowedRoutes(kinds=kinds)),
        Listener("fine", 81, "HTTP", allowed_routes=AllowedRoutes(kinds=kinds[1:2])),
    )
    state = listener_state(out, "http")
    refs = state[cond.RESOLVED_REFS]
    assert (refs.status, refs.reason) == (False, cond.INVALID_ROUTE_KINDS)
    assert "TCPRoute" in refs.message and "example.com/GRPCRoute" in refs.message
    assert "HTTPRoute," not in refs.message.split("takes")[0]
    assert state[cond.ACCEPTED].status  # still served, for the kinds it can take
    assert listener_state(out, "fine")[cond.RESOLVED_REFS].status
