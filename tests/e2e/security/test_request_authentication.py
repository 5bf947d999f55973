"""RequestAuthentication enforced by a real Envoy sidecar on real requests, with tokens
signed in the test (``tests.jwt_signer``, RS256 and ES256): a valid token passes, one
with a bad signature, expired or from an unknown issuer is refused with 401 (one for
another audience with 403, as Envoy and so Istio answer it), a request
without a token passes (no AuthorizationPolicy here); tokens are read from where the
rule says (a custom header with its prefix, a query parameter, a cookie); the verified
payload and a claim reach the application as headers; the original token is stripped
unless ``forwardOriginalToken``; a ``jwksUri`` is served by a real HTTP server on
loopback and fetched by Envoy through the cluster xdsd adds for it; an edit of the
policy applies on save. Also: what xdsd renders for every field (with an ``https``
``jwksUri``) passes ``envoy --mode validate``.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Reply, Upstream
from tests.harness import envoy_accepts, free_port
from tests.jwt_signer import SigningKey, claims, jwks
from xdsd.sources import load_directory
from xdsd.translate import NodeClass, render_static

INLINE = "https://inline.issuer.test"
REMOTE = "https://remote.issuer.test"


class JwksServer:
    """A JWKS document served over HTTP on loopback (a free port), counting fetches."""

    def __init__(self, document: str) -> None:
        self.document = document.encode()
        self.fetches = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                self.send_response(200 if self.path == "/keys.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.document)))
                self.end_headers()
                self.wfile.write(server.document)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.http.daemon_threads = True
        self.port = int(self.http.server_address[1])
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/keys.json"

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def policy(rsa: SigningKey, jwks_uri: str, audience: str = "web") -> str:
    """The RequestAuthentication of the test: an inline RS256 issuer in the default
    places, with its payload and ``sub`` copied into headers; an ES256 issuer fetched
    from ``jwks_uri``, in a custom header, a query parameter and a cookie, forwarded."""
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: web-jwt, namespace: default}}
spec:
  selector:
    matchLabels: {{app: web}}
  jwtRules:
  - issuer: {INLINE}
    audiences: [{audience}]
    jwks: '{jwks(rsa)}'
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
  - issuer: {REMOTE}
    jwksUri: {jwks_uri}
    timeout: 3s
    fromHeaders:
    - {{name: x-token, prefix: "Token "}}
    fromParams: [tok]
    fromCookies: [session]
    forwardOriginalToken: true
"""


@dataclass
class World:
    mesh: TrafficMesh
    web: Sidecar
    app: Upstream
    rsa: SigningKey
    ec: SigningKey
    server: JwksServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("request-authn")
    rsa = SigningKey.generate("RS256", "rsa-1")
    ec = SigningKey.generate("ES256", "ec-1")
    server = JwksServer(jwks(ec))
    try:
        with TrafficMesh(root) as mesh:
            app_port = free_port()
            app = mesh.upstream("web-app", host="127.0.0.1", port=app_port)
            mesh.rule("web-jwt", policy(rsa, server.uri))
            web = mesh.start("web", app_port=app_port, labels={"app": "web"})
            world = World(mesh, web, app, rsa, ec, server)
            web.wait_for(lambda: call(world).status == 200, "web's inbound listener")
            web.wait_for(
                lambda: call(world, bearer(world, ttl=-600)).status == 401,
                "web's jwt_authn filter",
            )
            yield world
    finally:
        server.stop()


def call(
    world: World,
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> Reply:
    """A plaintext request straight to web's inbound listener."""
    web = world.web
    return web.request("web", path, headers=headers, address=web.ip, port=web.inbound_port)


def bearer(world: World, *, ttl: int = 3600, **more: Any) -> dict[str, str]:
    """``Authorization: Bearer`` with an RS256 token of the inline issuer."""
    more.setdefault("aud", "web")
    token = world.rsa.sign(claims(INLINE, ttl=ttl, **more))
    return {"Authorization": f"Bearer {token}"}


def remote_token(world: World, *, ttl: int = 3600) -> str:
    return world.ec.sign(claims(REMOTE, "bob", ttl=ttl))


def last_seen(world: World) -> dict[str, str]:
    return world.app.seen[-1].headers


def test_a_valid_token_passes_and_the_application_sees_its_claims(world: World) -> None:
    world.app.reset()
    reply = call(world, bearer(world, role="admin"))
    assert reply.status == 200 and reply.backend == "web-app"
    seen = last_seen(world)
    assert seen["x-jwt-sub"] == "alice"
    padded = seen["x-jwt-payload"] + "=" * (-len(seen["x-jwt-payload"]) % 4)
    payload = json.loads(base64.urlsafe_b64decode(padded))
    assert payload["iss"] == INLINE and payload["role"] == "admin"
    # forwardOriginalToken unset: the token does not reach the application.
    assert "authorization" not in seen


def test_a_request_without_a_token_passes(world: World) -> None:
    world.app.reset()
    reply = call(world)
    assert reply.status == 200 and reply.backend == "web-app"
    assert "x-jwt-sub" not in last_seen(world)


#: What Envoy answers a token spoiled each way: 401, except a token for another audience,
#: which Envoy (and so Istio) refuses with 403 ("Audiences in Jwt are not allowed").
REFUSALS = {"signature": 401, "expired": 401, "audience": 403, "issuer": 401, "garbage": 401}


@pytest.mark.parametrize("spoil", sorted(REFUSALS))
def test_a_bad_token_is_refused(world: World, spoil: str) -> None:
    world.app.reset()
    if spoil == "signature":
        # Signed by another key under the same kid: the JWKS's key does not verify it.
        other = SigningKey.generate("RS256", world.rsa.kid)
        token = other.sign(claims(INLINE, aud="web"))
        headers = {"Authorization": f"Bearer {token}"}
    elif spoil == "expired":
        headers = bearer(world, ttl=-600)  # beyond Envoy's 60 s of clock skew
    elif spoil == "audience":
        headers = bearer(world, aud="elsewhere")
    elif spoil == "issuer":
        token = world.rsa.sign(claims("https://stranger.test", aud="web"))
        headers = {"Authorization": f"Bearer {token}"}
    else:
        headers = {"Authorization": "Bearer not.a.token"}
    reply = call(world, headers)
    assert reply.status == REFUSALS[spoil], (spoil, reply.status, reply.body)
    assert world.app.hits == 0


def test_a_token_fetched_by_jwks_uri_is_read_from_header_param_and_cookie(world: World) -> None:
    world.app.reset()
    token = remote_token(world)
    reply = call(world, {"x-token": f"Token {token}"})
    assert reply.status == 200, reply.body
    assert world.server.fetches > 0  # Envoy fetched the keys through xdsd's cluster
    assert last_seen(world)["x-token"] == f"Token {token}"  # forwardOriginalToken: true
    assert call(world, path=f"/?tok={token}").status == 200
    assert call(world, {"Cookie": f"session={token}"}).status == 200
    # The same places refuse a spoiled token.
    expired = remote_token(world, ttl=-600)
    assert call(world, {"x-token": f"Token {expired}"}).status == 401
    assert call(world, path=f"/?tok={expired}").status == 401
    assert call(world, {"Cookie": f"session={expired}"}).status == 401
    # A remote token in the default place is not looked for there by its rule.
    assert call(world, {"Authorization": f"Bearer {token}"}).status == 401
    stats = world.web.stats()
    assert any(
        k.startswith("cluster.jwks|127.0.0.1|") and k.endswith("upstream_rq_200") and v > 0
        for k, v in stats.items()
    ), "no fetch through the jwks cluster"


def test_an_edit_applies_on_save(world: World) -> None:
    old, new = bearer(world), bearer(world, aud="web-v2")
    assert call(world, old).status == 200
    world.mesh.rule("web-jwt", policy(world.rsa, world.server.uri, audience="web-v2"))
    try:
        world.web.wait_for(lambda: call(world, old).status == 403, "the new audience applied")
        assert call(world, new).status == 200
    finally:
        world.mesh.rule("web-jwt", policy(world.rsa, world.server.uri))
        world.web.wait_for(lambda: call(world, old).status == 200, "the policy restored")


def test_envoy_accepts_every_field_rendered(tmp_path: Path) -> None:
    """What xdsd renders for every field of a RequestAuthentication, with an ``https``
    jwksUri by name (TLS with SNI, a LOGICAL_DNS cluster), passes Envoy's validation."""
    root = tmp_path / "config"
    root.mkdir()
    (root / "web.toml").write_text(
        'kind = "Service"\nname = "web"\n[[ports]]\nname = "http"\nnumber = 8080\n'
        'protocol = "HTTP"\ntargetPort = 9080\n[[endpoints]]\naddress = "10.0.0.1"\n'
    )
    rsa = SigningKey.generate("RS256", "k")
    text = policy(rsa, "https://login.example.com/.well-known/jwks.json")
    (root / "jwt.yaml").write_text(
        text + "  - issuer: third\n    jwksUri: http://[::1]:8081/keys\n"
    )
    mesh = load_directory(str(root)).mesh
    node = NodeClass("web", namespace="default", instance_ip="127.0.0.2", labels=(("app", "web"),))
    config = render_static(mesh, node, node_id="web", admin_port=0)
    names = {c["name"] for c in config["static_resources"]["clusters"]}
    assert {"jwks|login.example.com|443", "jwks|::1|8081"} <= names
    envoy_accepts(config, tmp_path / "web.json")
