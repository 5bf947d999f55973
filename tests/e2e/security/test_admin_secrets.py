"""Secrets never shown, and a node's resources only to those who may speak for it
(issue 14 #11), against a real daemon with admin mutual TLS and a real Envoy: raw Envoy
resources inject a generic secret, a TLS certificate with key and password, session
ticket keys, a listener and a cluster with inline private keys; ``/debug/config_dump``
shows none of them (and still shows the rest), ``/debug/errors`` and the log do not quote
a key from a file that fails to parse, and the dump of a node is refused to a
certificate that may not speak for it, unless it is one of ``admin_sans``."""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import free_port, wait_until, write_atomically

SERVER_NAME = "xdsd.mesh.test"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
SECRETS = (
    "GENERIC-SENTINEL",
    "KEY-SENTINEL",
    "PASSWORD-SENTINEL",
    "TICKET-SENTINEL",
    "LISTENER-KEY-SENTINEL",
    "CLUSTER-KEY-SENTINEL",
    "BROKEN-KEY-SENTINEL",
)


def _key(sentinel: str) -> str:
    return f"-----BEGIN PRIVATE KEY-----\n{sentinel}\n-----END PRIVATE KEY-----\n"


def _certificate(sentinel: str, *, inline_bytes: bool = False) -> dict[str, object]:
    key = (
        {"inline_bytes": base64.b64encode(_key(sentinel).encode()).decode()}
        if inline_bytes
        else {"inline_string": _key(sentinel)}
    )
    return {"certificate_chain": {"inline_string": "PUBLIC-CHAIN"}, "private_key": key}


RAW = {
    "generic": {
        "@type": TLS + "Secret",
        "name": "raw-generic",
        "generic_secret": {"secret": {"inline_string": "GENERIC-SENTINEL"}},
    },
    "tls": {
        "@type": TLS + "Secret",
        "name": "raw-tls",
        "tls_certificate": {
            **_certificate("KEY-SENTINEL"),
            "password": {"inline_string": "PASSWORD-SENTINEL"},
        },
    },
    "tickets": {
        "@type": TLS + "Secret",
        "name": "raw-tickets",
        "session_ticket_keys": {
            "keys": [{"inline_bytes": base64.b64encode(b"TICKET-SENTINEL" * 6).decode()}]
        },
    },
}


def _raw_listener(port: int) -> dict[str, object]:
    return {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "raw-tls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "raw",
                            "cluster": "raw-tls",
                        },
                    }
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": TLS + "DownstreamTlsContext",
                        "common_tls_context": {
                            "tls_certificates": [
                                _certificate("LISTENER-KEY-SENTINEL", inline_bytes=True)
                            ]
                        },
                        "session_ticket_keys": {"keys": [{"inline_string": "TICKET-SENTINEL" * 6}]},
                    },
                },
            }
        ],
    }


RAW_CLUSTER = {
    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "name": "raw-tls",
    "type": "STATIC",
    "connect_timeout": "1s",
    "load_assignment": {
        "cluster_name": "raw-tls",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}
                        }
                    }
                ]
            }
        ],
    },
    "transport_socket": {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS + "UpstreamTlsContext",
            "common_tls_context": {"tls_certificates": [_certificate("CLUSTER-KEY-SENTINEL")]},
        },
    },
}


class World:
    def __init__(self, root: Path) -> None:
        self.ca = CertAuthority(root / "pki")
        self.server = self.ca.issue("xdsd", dns_names=[SERVER_NAME])
        self.web = self.ca.issue("web", uris=["spiffe://mesh.test/web"])
        self.other = self.ca.issue("other", uris=["spiffe://mesh.test/other"])
        self.ops = self.ca.issue("ops", uris=["spiffe://mesh.test/ops"])
        self.mesh = m = TrafficMesh(root)
        (root / "settings.toml").write_text(
            f'tls_cert = "{self.server.cert}"\ntls_key = "{self.server.key}"\n'
            f'tls_client_ca = "{self.ca.ca_path}"\n'
            'admin_sans = ["spiffe://mesh.test/ops"]\n\n'
            "[authorized_nodes]\n"
            '"spiffe://mesh.test/web" = { services = ["default/web"] }\n'
            '"spiffe://mesh.test/other" = { services = ["default/other"] }\n'
        )
        m.xdsd_args = ["--settings", str(root / "settings.toml")]
        for name, body in {
            **RAW,
            "listener": _raw_listener(free_port()),
            "cluster": RAW_CLUSTER,
        }.items():
            write_atomically(m.config / "envoy" / f"{name}.json", json.dumps(body))
        self.sidecar: Sidecar = m.start(
            "web",
            bootstrap_args=(
                "--xds-tls-ca",
                str(self.ca.ca_path),
                "--xds-tls-cert",
                str(self.web.cert),
                "--xds-tls-key",
                str(self.web.key),
                "--xds-tls-server-name",
                SERVER_NAME,
            ),
        )

    def admin(self, path: str, cert: CertFiles) -> tuple[int, str]:
        assert self.mesh.xdsd is not None
        context = ssl.create_default_context(cafile=str(self.ca.ca_path))
        context.check_hostname = False
        context.load_cert_chain(cert.cert, cert.key)
        url = f"https://127.0.0.1:{self.mesh.xdsd.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10, context=context) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("admin-secrets"))
    try:
        yield w
    finally:
        w.mesh.stop()


def leaks(text: str) -> list[str]:
    """The sentinels ``text`` shows, as written or base64-encoded (a JSON ``bytes``)."""
    found = [s for s in SECRETS if s in text]
    encoded = [base64.b64encode(_key(s).encode()).decode()[28:48] for s in SECRETS]
    return found + [s for s, e in zip(SECRETS, encoded, strict=True) if e in text]


def test_config_dump_redacts_every_kind_of_secret(world: World) -> None:
    status, body = world.admin("/debug/config_dump?node=web-sidecar", world.ops)
    assert status == 200, body
    dump = json.loads(body)
    secrets = {s["name"]: s for s in dump["resources"]["secrets"]}
    assert {"raw-generic", "raw-tls", "raw-tickets"} <= set(secrets), list(secrets)
    assert leaks(body) == []
    assert secrets["raw-generic"]["generic_secret"] == {"secret": {"inline_string": "[redacted]"}}
    assert secrets["raw-tls"]["tls_certificate"]["password"] == {"inline_string": "[redacted]"}
    assert "PUBLIC-CHAIN" in body  # only secrets are hidden
    [listener] = [r for r in dump["resources"]["listeners"] if r["name"] == "raw-tls"]
    context = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["common_tls_context"]["tls_certificates"][0]["private_key"] == {
        "inline_bytes": "[redacted]"
    }


def test_a_nodes_dump_follows_the_grants(world: World) -> None:
    assert world.admin("/debug/config_dump?node=web-sidecar", world.web)[0] == 200
    status, body = world.admin("/debug/config_dump?node=web-sidecar", world.other)
    assert status == 403 and "may not read node 'web-sidecar'" in body, body
    assert leaks(body) == [] and "PUBLIC-CHAIN" not in body
    metrics = world.admin("/metrics", world.other)[1]
    assert re.search(
        r'xdsd_refused_total\{listener="admin",reason="permission_denied"\} [1-9]', metrics
    ), metrics


def test_a_key_in_a_file_that_fails_to_parse_is_not_quoted(world: World) -> None:
    key = _key("BROKEN-KEY-SENTINEL").replace("\n", "\n  ")
    broken = world.mesh.config / "envoy" / "broken.yaml"
    write_atomically(broken, f"'@type': {TLS}Secret\nname: broken\nprivate_key: |\n  {key}\n: [\n")
    try:

        def refused() -> str:
            body = world.admin("/debug/errors", world.ops)[1]
            return body if "broken.yaml" in body else ""

        body = wait_until(refused, what="the broken file refused")
        assert leaks(body) == [], body
        assert "[redacted]" in body or "PRIVATE KEY" not in body, body
    finally:
        broken.unlink()
    assert world.mesh.xdsd is not None
    assert leaks(world.mesh.xdsd.log()) == []


#: A symmetric (HMAC) JWT key: whoever reads it can sign tokens the sidecars accept.
HMAC_KEY = "U0VDUkVULUhNQUMtS0VZLURPLU5PVC1TSE9X"


def _request_authentication(jwks: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        "metadata: {name: hmac, namespace: default}\n"
        f"spec:\n  jwtRules:\n  - issuer: https://hmac.issuer.test\n    jwks: {jwks}\n"
    )


def _local_jwks(tree: object) -> Iterator[dict[str, str]]:
    """Every ``local_jwks`` in a config dump."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "local_jwks":
                yield value
            else:
                yield from _local_jwks(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _local_jwks(item)


def test_config_dump_redacts_a_symmetric_jwt_key(world: World) -> None:
    """The inline JWKS of a RequestAuthentication reaches the sidecar (its jwt_authn
    filter), and the dump shows the key's public members but not its ``k``."""
    jwks = {"keys": [{"kty": "oct", "alg": "HS256", "kid": "hmac-1", "k": HMAC_KEY}]}
    rule = world.mesh.config / "rules" / "hmac.yaml"
    write_atomically(rule, _request_authentication(json.dumps(json.dumps(jwks))))
    try:

        def dumped() -> str:
            status, body = world.admin("/debug/config_dump?node=web-sidecar", world.ops)
            return body if status == 200 and "hmac.issuer.test" in body else ""

        body = wait_until(dumped, what="the JWT provider in web's dump")
        assert HMAC_KEY not in body
        assert HMAC_KEY[:12] not in body
        providers = list(_local_jwks(json.loads(body)))
        assert len(providers) == 1, body
        shown = json.loads(providers[0]["inline_string"])
        assert shown == {
            "keys": [{"kty": "oct", "alg": "HS256", "kid": "hmac-1", "k": "[redacted]"}]
        }
    finally:
        rule.unlink()
    assert world.mesh.xdsd is not None
    assert HMAC_KEY not in world.mesh.xdsd.log()


@pytest.mark.parametrize(
    "jwks",
    [
        # Not a string: a mapping holding the key.
        f"{{keys: [{{kty: oct, k: {HMAC_KEY}}}]}}",
        # Not a string: a list of it.
        f"[{HMAC_KEY}]",
        # A string that is no JSON, cut after the key.
        json.dumps(f'{{"keys": [{{"kty": "oct", "k": "{HMAC_KEY}"}}'),
        # The key in the member xdsd checks the value of.
        json.dumps(json.dumps({"keys": [{"kty": HMAC_KEY, "k": HMAC_KEY}]})),
    ],
    ids=["mapping", "list", "broken-json", "in-kty"],
)
def test_a_refused_jwks_is_not_quoted(world: World, jwks: str) -> None:
    """A RequestAuthentication whose jwks is refused is named on ``/debug/errors`` (and
    the log) by its file and line, without its key."""
    rule = world.mesh.config / "rules" / "hmac-broken.yaml"
    write_atomically(rule, _request_authentication(jwks))
    try:

        def refused() -> str:
            body = world.admin("/debug/errors", world.ops)[1]
            return body if "hmac-broken.yaml" in body and "jwks" in body else ""

        body = wait_until(refused, what="the broken JWKS refused")
        assert HMAC_KEY[:12] not in body, body
    finally:
        rule.unlink()

    def cleared() -> bool:
        return "hmac-broken.yaml" not in world.admin("/debug/errors", world.ops)[1]

    wait_until(cleared, what="the broken JWKS gone")
    assert world.mesh.xdsd is not None
    assert HMAC_KEY[:12] not in world.mesh.xdsd.log()
