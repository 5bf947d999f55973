"""Access control enforced by a gateway on its own listeners, proven with real traffic
through a real gateway Envoy configured by xdsd, in front of real upstreams.

The gateway node runs in namespace ``infra`` with label ``istio=ingressgateway`` and
serves an HTTP server (routed to the HTTP upstream ``web``) and a TCP server (to the TCP
echo ``pipe``). The policies that select the node (its namespace and labels, or the root
namespace) put RBAC and ``jwt_authn`` in front of the router and RBAC in front of the
TCP proxy, as on a sidecar's inbound side. Clients connect from two loopback addresses
of their own (``allowed`` and ``denied``), which is the peer address the gateway sees.
xdsd's settings declare one HTTP ext_authz provider (a small real server, a
ServiceEntry host) for CUSTOM policies; a JWKS document is served by a real HTTP server.

Each test starts from no policy (every peer let in), writes the policies of its case to
``rules/policy.yaml`` and waits until a probe answers the way that case makes it
answer; one gateway Envoy serves the module.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.security.ext_authz import HttpAuthz
from tests.e2e.security.test_request_authentication import JwksServer
from tests.e2e.traffic_mesh import GatewayNode, TrafficMesh
from tests.e2e.upstreams import Upstream
from tests.harness import free_port, wait_until
from tests.jwt_signer import SigningKey, claims, jwks

NAMESPACE = "infra"
LABELS = {"istio": "ingressgateway"}
ISSUER = "https://issuer.gateway.test"
AUTHZ_HOST = "authz.gateway.test"


def settings(authz_port: int) -> str:
    """xdsd's settings: one HTTP ext_authz provider for CUSTOM policies."""
    return f"""\
[[mesh.extension_providers]]
name = "edge-authz"
[mesh.extension_providers.envoy_ext_authz_http]
service = "{AUTHZ_HOST}"
port = {authz_port}
timeout = "2s"
include_request_headers_in_check = ["x-ext-authz"]
headers_to_downstream_on_deny = ["x-ext-authz-check"]
"""


def routing(http_port: int, tcp_port: int, pipe_port: int) -> str:
    """The gateway's servers and the rules bound to them."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {NAMESPACE}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-routes, namespace: {NAMESPACE}}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: web.default.svc.cluster.local}}}}]
  tcp:
  - route: [{{destination: {{host: pipe.default.svc.cluster.local, port: {{number: {pipe_port}}}}}}}]
"""


def authz_entry(address: str, port: int) -> str:
    """The ext_authz server as a mesh host outside the mesh (asked in plaintext)."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: edge-authz, namespace: {NAMESPACE}}}
spec:
  hosts: [{AUTHZ_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: {address}}}]
"""


@dataclass
class World:
    mesh: TrafficMesh
    gateway: GatewayNode
    web: Upstream
    http_port: int
    tcp_port: int
    #: Local addresses the clients connect from.
    allowed: str
    denied: str
    key: SigningKey
    stranger: SigningKey
    server: JwksServer
    authz: HttpAuthz

    def policies(self, text: str) -> None:
        """Write ``rules/policy.yaml`` (empty text: remove it, no policy)."""
        if text:
            self.mesh.rule("policy", text)
        else:
            (self.mesh.config / "rules" / "policy.yaml").unlink(missing_ok=True)

    def status(
        self, path: str = "/", *, source: str = "", headers: dict[str, str] | None = None
    ) -> int:
        """The status of a GET of ``path`` on the HTTP server, from ``source`` (the
        ``allowed`` address by default)."""
        reply = self.gateway.request(
            self.http_port,
            "web.example.com",
            path,
            headers=headers,
            source=source or self.allowed,
        )
        return reply.status

    def tcp(self, source: str) -> bytes:
        """What the TCP server answers ``hello`` with from ``source``; empty when the
        gateway closed (or reset) the connection."""
        try:
            return self.gateway.tcp(self.tcp_port, b"hello", source=source)
        except ConnectionResetError:
            return b""

    def token(self, *, key: SigningKey | None = None, ttl: int = 3600) -> dict[str, str]:
        """``Authorization: Bearer`` with a token of ``ISSUER`` signed by ``key``."""
        signed = (key or self.key).sign(claims(ISSUER, ttl=ttl))
        return {"Authorization": f"Bearer {signed}"}

    def until(self, check: Callable[[], bool], what: str) -> None:
        """Wait until ``check()`` holds (a refused or cut request counts as not yet)."""

        def attempt() -> bool:
            try:
                return check()
            except (OSError, http.client.HTTPException):
                return False

        wait_until(attempt, timeout=30, what=what)

    def rbac_denied(self, server: str) -> int:
        """How many requests (``server`` ``http``) or connections (``tcp``) the
        gateway's RBAC filters denied, by the stat docs/operations.md names."""
        name = "tcp.rbac.denied"
        if server == "http":
            name = f"http.{self.gateway.ip}_{self.http_port}.rbac.denied"
        return self.gateway.envoy.stats().get(name, 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("gateway-security")
    key = SigningKey.generate("RS256", "gw-1")
    # The same key id with another key: its signatures do not verify.
    stranger = SigningKey.generate("RS256", "gw-1")
    server = JwksServer(jwks(key))
    authz: HttpAuthz | None = None
    try:
        with TrafficMesh(root) as mesh:
            authz = HttpAuthz(mesh.ip())
            (root / "settings.toml").write_text(settings(authz.port))
            mesh.xdsd_args = ["--settings", str(root / "settings.toml")]
            mesh.rule("edge-authz", authz_entry(authz.host, authz.port))
            ip = mesh.gateway_ip("ingress")
            http_port, tcp_port, pipe_port = free_port(ip), free_port(ip), free_port()
            web = mesh.upstream("web")
            mesh.service("web", [web])
            pipe = mesh.tcp_upstream("pipe", pipe_port)
            mesh.service("pipe", [pipe], port=pipe_port, protocol="TCP")
            mesh.rule("edge", routing(http_port, tcp_port, pipe_port))
            gateway = mesh.start_gateway("ingress", LABELS, namespace=NAMESPACE)
            world = World(
                mesh,
                gateway,
                web,
                http_port,
                tcp_port,
                mesh.ip(),
                mesh.ip(),
                key,
                stranger,
                server,
                authz,
            )
            world.until(
                lambda: world.status() == 200 and world.tcp(world.allowed) == b"pipe:hello",
                "the gateway's HTTP and TCP servers",
            )
            yield world
    finally:
        server.stop()
        if authz is not None:
            authz.stop()


@pytest.fixture
def w(world: World) -> World:
    """The world with no policy in force: without a policy the gateway's servers are
    open to every peer (HTTP 200, the TCP server echoes)."""
    world.policies("")
    world.until(
        lambda: (
            world.status("/admin", source=world.denied) == 200
            and world.status(source=world.allowed) == 200
            and world.tcp(world.denied) == b"pipe:hello"
            and world.tcp(world.allowed) == b"pipe:hello"
        ),
        "no policy on the gateway",
    )
    return world


SELECTION = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/admin, /admin/*]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: namespace-wide, namespace: {NAMESPACE}}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/internal]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: mesh-wide, namespace: istio-system}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/mesh-denied]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: same-labels-other-namespace, namespace: public}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/other-namespace]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: other-labels, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/other-labels]}}}}]
"""


def test_policies_selecting_the_gateway_deny_paths(w: World) -> None:
    """An AuthorizationPolicy in the gateway's namespace selecting its labels denies
    its paths with 403 (counted by the gateway's RBAC stats), other paths reach the
    upstream; a policy of the namespace without selector and one of the root namespace
    apply too; a policy with the same selector in another namespace, or selecting other
    labels, does not. The DENY rules name only paths, an HTTP-only field: on the TCP
    server they match without it (Istio's fail-closed reading), so its connections are
    closed."""
    w.policies(SELECTION)
    w.until(lambda: w.status("/admin") == 403, "the gateway's DENY policy")
    hits, denied = w.web.hits, w.rbac_denied("http")
    assert w.status("/admin/users") == 403
    assert w.status("/internal") == 403
    assert w.status("/mesh-denied") == 403
    assert w.web.hits == hits
    assert w.rbac_denied("http") == denied + 3
    assert w.status("/other-namespace") == 200
    assert w.status("/other-labels") == 200
    assert w.status("/") == 200
    assert w.web.hits == hits + 3
    assert w.tcp(w.allowed) == b""


def test_gateway_normalizes_paths_before_its_policies(w: World) -> None:
    """Dot segments and percent-encoded letters do not pass the gateway's DENY on
    ``/admin/*``: the path is normalized before RBAC (Istio's BASE), and the upstream is
    handed the normalized path."""
    w.policies(SELECTION)
    w.until(lambda: w.status("/admin") == 403, "the gateway's DENY policy")
    hits = w.web.hits
    for path in ("/public/../admin/x", "/./admin/x", "/%61dmin/x", "/public/%2e%2e/admin"):
        assert w.status(path) == 403, path
    assert w.web.hits == hits
    assert w.status("/public/../ok") == 200
    assert [s.path for s in w.web.seen[hits:]] == ["/ok"]


def jwt_recipe(jwks_uri: str) -> str:
    """The ingress recipe: a RequestAuthentication with a remote key set and an ALLOW
    for any request principal, both selecting the gateway."""
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {jwks_uri}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
"""


def test_ingress_requires_a_valid_token(w: World) -> None:
    """RequestAuthentication + ALLOW ``requestPrincipals: ["*"]`` on the gateway: a
    request without a token is denied by RBAC (403), one with a valid token reaches the
    upstream, one with a bad signature or an expired token is refused by ``jwt_authn``
    (401). The key set is fetched by the gateway from a real HTTP server through the
    ``jwks|HOST|PORT`` cluster xdsd adds to the gateway's snapshot. The same ALLOW
    closes the gateway's TCP server: a rule that needs an HTTP-only field never matches
    a TCP connection."""
    fetches = w.server.fetches
    w.policies(jwt_recipe(w.server.uri))
    w.until(
        lambda: w.status() == 403 and w.status(headers=w.token()) == 200,
        "the gateway's JWT recipe",
    )
    assert w.status("/any/path", headers=w.token()) == 200
    assert w.status(headers=w.token(key=w.stranger)) == 401
    assert w.status(headers=w.token(ttl=-600)) == 401
    assert w.status(headers={"Authorization": "Bearer not-a-jwt"}) == 401
    # requestPrincipals is HTTP-only: on the TCP server the ALLOW rule never matches,
    # so the gateway closes every connection there.
    assert w.tcp(w.allowed) == b""
    assert w.server.fetches > fetches
    cluster = f"cluster.jwks|127.0.0.1|{w.server.port}.upstream_rq_completed"
    assert w.gateway.envoy.stats().get(cluster, 0) >= 1


TCP_ALLOW = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: tcp-from-allowed, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{ipBlocks: ["{allowed}/32"]}}}}]
    to: [{{operation: {{ports: ["{port}"]}}}}]
"""


def test_tcp_server_allows_by_ip_block(w: World) -> None:
    """An ALLOW by ``ipBlocks`` on the TCP server's port: the gateway closes the
    connections of any other peer address before they reach the upstream, and proxies
    the allowed one's. The HTTP server, which no ALLOW rule names, denies everyone
    (403): ALLOW policies that match nothing deny."""
    text = TCP_ALLOW.format(namespace=NAMESPACE, allowed=w.allowed, port=w.tcp_port)
    w.policies(text)
    w.until(lambda: w.tcp(w.denied) == b"", "the gateway's TCP ALLOW policy")
    denied = w.rbac_denied("tcp")
    assert w.tcp(w.allowed) == b"pipe:hello"
    assert w.tcp(w.denied) == b""
    assert w.rbac_denied("tcp") == denied + 1
    assert w.status(source=w.allowed) == 403
    assert w.status(source=w.denied) == 403


REMOTE_DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-remote, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from: [{{source: {{remoteIpBlocks: ["{denied}/32"]}}}}]
"""


def test_remote_ip_blocks_use_the_peer_not_x_forwarded_for(w: World) -> None:
    """A DENY by ``remoteIpBlocks`` on the gateway: the gateway's HTTP connection
    manager takes the peer address as the client's (``use_remote_address``, no trusted
    hops), so the denied address gets 403 whatever ``X-Forwarded-For`` it sends, and an
    allowed peer is not denied by a forged header naming the denied address."""
    w.policies(REMOTE_DENY.format(namespace=NAMESPACE, denied=w.denied))
    w.until(lambda: w.status(source=w.denied) == 403, "the gateway's remoteIpBlocks DENY")
    assert w.status(source=w.allowed) == 200
    assert w.status(source=w.denied, headers={"X-Forwarded-For": w.allowed}) == 403
    assert w.status(source=w.allowed, headers={"X-Forwarded-For": w.denied}) == 200


CUSTOM = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-check, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: CUSTOM
  provider: {{name: edge-authz}}
  rules:
  - to: [{{operation: {{paths: ["/ext/*"], ports: ["{port}"]}}}}]
"""


def test_custom_policy_asks_the_ext_authz_server(w: World) -> None:
    """A CUSTOM policy selecting the gateway: the requests its rule matches are checked
    by a real HTTP ext_authz server (through the cluster of the provider's mesh host,
    which xdsd adds to the gateway's snapshot), denied with its 403 and headers unless
    it allows them; other requests pass unchecked. The rule names the HTTP port, so the
    TCP server stays open."""
    w.policies(CUSTOM.format(namespace=NAMESPACE, port=w.http_port))
    w.until(lambda: w.status("/ext/a") == 403, "the gateway's CUSTOM policy")
    checked = len(w.authz.checked)
    denied = w.gateway.request(w.http_port, "web.example.com", "/ext/b", source=w.allowed)
    assert (denied.status, denied.headers.get("x-ext-authz-check")) == (403, "denied")
    allowed = w.gateway.request(
        w.http_port,
        "web.example.com",
        "/ext/c",
        headers={"x-ext-authz": "allow"},
        source=w.allowed,
    )
    assert (allowed.status, allowed.backend) == (200, "web")
    assert w.status("/elsewhere") == 200
    assert w.authz.checked[checked:] == ["/ext/b", "/ext/c"]
    assert w.tcp(w.allowed) == b"pipe:hello"
