"""RequestAuthentication and AuthorizationPolicy together, enforced by a real Envoy
sidecar on real requests with tokens signed in the test (``tests.jwt_signer``): what
``jwt_authn`` verified (its payload in dynamic metadata) is what the RBAC filter's
``requestPrincipals`` and ``request.auth.*`` conditions read.

One sidecar (``web``) accepts tokens of two issuers; one ALLOW policy holds a rule per
path, each needing one thing of the token, and a DENY policy is Istio's "require a
token" recipe (``notRequestPrincipals: ["*"]``). A valid token that the rule wants is a
200; a valid token it does not want, or none, a 403 from RBAC; an invalid token a 401
from ``jwt_authn``, before RBAC is asked. An edit of the policy applies on save.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Reply, Upstream
from tests.harness import free_port
from tests.jwt_signer import SigningKey, claims, jwks

INLINE = "https://inline.issuer.test"
PARTNER = "https://partner.issuer.test"


def request_authentication(rsa: SigningKey, ec: SigningKey) -> str:
    """Two issuers, no audience restriction (``request.auth.audiences`` decides)."""
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: web-jwt, namespace: default}}
spec:
  selector:
    matchLabels: {{app: web}}
  jwtRules:
  - issuer: {INLINE}
    jwks: '{jwks(rsa)}'
  - issuer: {PARTNER}
    jwks: '{jwks(ec)}'
"""


def authorization(edit_principal: str = f"{INLINE}/alice") -> str:
    """An ALLOW policy with one rule per path, and the "require a token" DENY policy on
    ``/secure``."""
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: jwt-allow, namespace: default}}
spec:
  selector:
    matchLabels: {{app: web}}
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: [/principal]}}}}]
    from: [{{source: {{requestPrincipals: ["{INLINE}/alice"]}}}}]
  - to: [{{operation: {{paths: [/group]}}}}]
    when: [{{key: "request.auth.claims[group]", values: [admins]}}]
  - to: [{{operation: {{paths: [/nested]}}}}]
    when: [{{key: "request.auth.claims[a][b]", values: [c]}}]
  - to: [{{operation: {{paths: [/audience]}}}}]
    when: [{{key: request.auth.audiences, values: [web]}}]
  - to: [{{operation: {{paths: [/presenter]}}}}]
    when: [{{key: request.auth.presenter, values: [frontend]}}]
  - to: [{{operation: {{paths: [/any-partner]}}}}]
    from: [{{source: {{requestPrincipals: ["{PARTNER}/*"]}}}}]
  - to: [{{operation: {{paths: [/any-bob]}}}}]
    from: [{{source: {{requestPrincipals: ["*/bob"]}}}}]
  - to: [{{operation: {{paths: [/principal-claim]}}}}]
    when: [{{key: request.auth.principal, values: ["{INLINE}/alice"]}}]
  - to: [{{operation: {{paths: [/secure]}}}}]
  - to: [{{operation: {{paths: [/edit]}}}}]
    from: [{{source: {{requestPrincipals: ["{edit_principal}"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-token, namespace: default}}
spec:
  selector:
    matchLabels: {{app: web}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/secure]}}}}]
    from: [{{source: {{notRequestPrincipals: ["*"]}}}}]
"""


@dataclass
class World:
    mesh: TrafficMesh
    web: Sidecar
    app: Upstream
    rsa: SigningKey
    ec: SigningKey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("jwt-authorization")
    rsa = SigningKey.generate("RS256", "rsa-1")
    ec = SigningKey.generate("ES256", "ec-1")
    with TrafficMesh(root) as mesh:
        app_port = free_port()
        app = mesh.upstream("web-app", host="127.0.0.1", port=app_port)
        mesh.rule("web-jwt", request_authentication(rsa, ec))
        mesh.rule("web-authz", authorization())
        web = mesh.start("web", app_port=app_port, labels={"app": "web"})
        world = World(mesh, web, app, rsa, ec)
        web.wait_for(lambda: call(world, "/secure", inline(world)).status == 200, "web's inbound")
        web.wait_for(lambda: call(world, "/secure").status == 403, "web's RBAC filter")
        yield world


def call(world: World, path: str, token: str | None = None) -> Reply:
    """A plaintext request straight to web's inbound listener, with ``Authorization:
    Bearer TOKEN`` when a token is given."""
    web = world.web
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return web.request("web", path, headers=headers, address=web.ip, port=web.inbound_port)


def inline(world: World, subject: str = "alice", *, ttl: int = 3600, **more: Any) -> str:
    """A token of the inline (RS256) issuer."""
    return str(world.rsa.sign(claims(INLINE, subject, ttl=ttl, **more)))


def partner(world: World, subject: str = "bob", **more: Any) -> str:
    """A token of the partner (ES256) issuer."""
    return str(world.ec.sign(claims(PARTNER, subject, **more)))


def assert_status(world: World, path: str, token: str | None, status: int) -> None:
    """``path`` with ``token`` gets ``status``; a 403 is RBAC's, a 401 jwt_authn's, and
    neither reaches the application."""
    world.app.reset()
    reply = call(world, path, token)
    assert reply.status == status, (path, reply.status, reply.body)
    if status == 200:
        assert reply.backend == "web-app"
    else:
        assert world.app.hits == 0
    if status == 403:
        assert b"RBAC: access denied" in reply.body, reply.body


def spoiled(world: World) -> dict[str, str]:
    """Tokens jwt_authn refuses: expired, signed by another key, not a token."""
    other = SigningKey.generate("RS256", world.rsa.kid)
    return {
        "expired": inline(world, ttl=-600),
        "signature": str(other.sign(claims(INLINE, "alice"))),
        "garbage": "not.a.token",
    }


def test_request_principals_valid_token_passes_absent_is_403_invalid_is_401(
    world: World,
) -> None:
    assert_status(world, "/principal", inline(world), 200)
    assert_status(world, "/principal", None, 403)
    assert_status(world, "/principal", inline(world, "mallory"), 403)
    assert_status(world, "/principal", partner(world, "alice"), 403)  # another issuer
    for name, token in spoiled(world).items():
        reply = call(world, "/principal", token)
        assert reply.status == 401, (name, reply.status, reply.body)
        assert b"Jwt" in reply.body, (name, reply.body)  # jwt_authn's answer, not RBAC's
    # request.auth.principal is the same pair.
    assert_status(world, "/principal-claim", inline(world), 200)
    assert_status(world, "/principal-claim", inline(world, "mallory"), 403)
    assert_status(world, "/principal-claim", None, 403)


def test_deny_not_request_principals_requires_a_token(world: World) -> None:
    assert_status(world, "/secure", None, 403)
    assert_status(world, "/secure", inline(world, "anyone"), 200)
    assert_status(world, "/secure", partner(world), 200)
    assert_status(world, "/secure", spoiled(world)["expired"], 401)
    # Only /secure requires one: a path no rule allows is denied with or without a token.
    assert_status(world, "/elsewhere", inline(world), 403)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"group": "admins"}, 200),
        ({"group": ["dev", "admins"]}, 200),  # a list claim holding the value
        ({"group": "dev"}, 403),
        ({"group": ["dev"]}, 403),
        ({}, 403),
    ],
)
def test_a_claim_condition(world: World, extra: dict[str, Any], status: int) -> None:
    assert_status(world, "/group", inline(world, **extra), status)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"a": {"b": "c"}}, 200),
        ({"a": {"b": ["x", "c"]}}, 200),
        ({"a": {"b": "d"}}, 403),
        ({"a": "c"}, 403),
        ({"b": "c"}, 403),
    ],
)
def test_a_nested_claim_condition(world: World, extra: dict[str, Any], status: int) -> None:
    assert_status(world, "/nested", inline(world, **extra), status)


@pytest.mark.parametrize(
    ("aud", "status"), [("web", 200), (["other", "web"], 200), ("other", 403), (None, 403)]
)
def test_audiences_condition(world: World, aud: Any, status: int) -> None:
    token = inline(world) if aud is None else inline(world, aud=aud)
    assert_status(world, "/audience", token, status)


@pytest.mark.parametrize(("azp", "status"), [("frontend", 200), ("backend", 403), (None, 403)])
def test_presenter_condition(world: World, azp: str | None, status: int) -> None:
    token = inline(world) if azp is None else inline(world, azp=azp)
    assert_status(world, "/presenter", token, status)


def test_request_principals_with_wildcards(world: World) -> None:
    # "ISSUER/*": any subject of that issuer.
    assert_status(world, "/any-partner", partner(world, "bob"), 200)
    assert_status(world, "/any-partner", partner(world, "carol"), 200)
    assert_status(world, "/any-partner", inline(world, "bob"), 403)
    assert_status(world, "/any-partner", None, 403)
    # "*/bob": that subject of any issuer.
    assert_status(world, "/any-bob", inline(world, "bob"), 200)
    assert_status(world, "/any-bob", partner(world, "bob"), 200)
    assert_status(world, "/any-bob", inline(world, "alice"), 403)
    assert_status(world, "/any-bob", None, 403)


def test_an_edit_of_the_policy_applies_on_save(world: World) -> None:
    alice, carol = inline(world, "alice"), inline(world, "carol")
    assert_status(world, "/edit", alice, 200)
    assert_status(world, "/edit", carol, 403)
    world.mesh.rule("web-authz", authorization(f"{INLINE}/carol"))
    try:
        world.web.wait_for(lambda: call(world, "/edit", carol).status == 200, "carol allowed")
        assert_status(world, "/edit", alice, 403)
    finally:
        world.mesh.rule("web-authz", authorization())
        world.web.wait_for(lambda: call(world, "/edit", alice).status == 200, "alice again")
