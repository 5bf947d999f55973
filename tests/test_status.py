"""``xdsd status`` against a running daemon with a real Envoy (SYNCED), a client that NACKs
and one that never ACKs (STALE); unreachable daemons; the states from /debug/clients."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.certs import CertAuthority, CertFiles
from tests.e2e.mesh import EchoMesh
from tests.harness import Xdsd, free_port, wait_until
from tests.xds_clients import AdsClient
from xdsd.status import (
    NACKED,
    NOT_SENT,
    PENDING,
    STALE,
    SYNCED,
    render_table,
    summarize,
    to_json,
)


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def test_status_of_a_synced_envoy_a_nacking_and_a_stale_client(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd()
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    admin = f"127.0.0.1:{xdsd.admin_port}"

    def envoy_synced() -> bool:
        result = _status("--admin", admin)
        return result.returncode == 0 and "SYNCED  SYNCED  SYNCED  SYNCED" in result.stdout

    wait_until(envoy_synced, what="Envoy SYNCED on every type")
    table = _status("--admin", admin).stdout
    assert table.splitlines()[0].split() == [
        "NAME",
        "SERVICE",
        "TRANSPORT",
        "CDS",
        "EDS",
        "LDS",
        "RDS",
        "AGENT",
    ]
    assert "client-grpc  default/client  ads" in table
    # the Envoy version the real Envoy reported in its node
    agent = next(line for line in table.splitlines() if line.startswith("client-grpc")).split()[-1]
    assert agent.startswith("envoy/1."), agent
    assert "1 proxy: 1 synced, 0 NACKing" in table

    nacking = AdsClient(
        xdsd.grpc_port, "sim-nack", "sim", mode="nack", error="bad cluster: " + "x" * 300
    )
    silent = AdsClient(xdsd.grpc_port, "sim-silent", "sim", mode="silent")
    try:

        def failing() -> subprocess.CompletedProcess[str] | None:
            result = _status("--admin", admin, "--stale-after", "1")
            return result if "NACKED" in result.stdout and "STALE" in result.stdout else None

        result = wait_until(failing, what="NACKED and STALE shown")
        assert result.returncode == 1, result.stdout
        lines = {
            line.split()[0]: line
            for line in result.stdout.splitlines()
            if line.startswith("sim-") or line.startswith("client-")
        }
        assert lines["sim-nack"].split()[3] == NACKED
        assert lines["sim-silent"].split()[3] == STALE
        assert lines["client-grpc"].split()[3:7] == [SYNCED] * 4
        rejection = next(
            line for line in result.stdout.splitlines() if line.startswith("  sim-nack CDS")
        )
        assert (
            "bad cluster: xxx" in rejection and rejection.endswith("...") and len(rejection) < 200
        )
        assert "3 proxies: 1 synced, 1 NACKing, 1 stale" in result.stdout

        as_json = json.loads(_status("--admin", admin, "--stale-after", "1", "--json").stdout)
        by_node = {p["node_id"]: p for p in as_json["proxies"]}
        assert by_node["sim-nack"]["types"]["clusters"]["error"].startswith("bad cluster: ")
        assert by_node["sim-nack"]["failing"] and not by_node["client-grpc"]["failing"]
        assert as_json["exit_code"] == 1
    finally:
        nacking.stop()
        silent.stop()
    wait_until(lambda: _status("--admin", admin).returncode == 0, what="back to all synced")


def test_unreachable_daemon_is_a_clear_error() -> None:
    result = _status("--admin", f"127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "cannot reach xdsd's admin server at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


SERVER_NAME = "xdsd.status.test"


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[tuple[Xdsd, CertAuthority, CertFiles]]:
    """xdsd whose listeners, admin included, speak mTLS; its CA and a client certificate."""
    ca = CertAuthority(tmp_path / "ca")
    server = ca.issue("xdsd", dns_names=[SERVER_NAME])
    client = ca.issue("operator", uris=["spiffe://status.test/operator"])
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n'
        f'tls_client_ca = "{ca.ca_path}"\nadmin_tls = true\n'
    )
    config = tmp_path / "config"
    config.mkdir()
    (config / "echo.toml").write_text(
        'kind = "Service"\nname = "echo"\n\n[[ports]]\nname = "http"\nnumber = 8080\n'
        'protocol = "HTTP"\n\n[[endpoints]]\naddress = "127.0.0.1"\n'
    )
    xdsd = Xdsd(config, tmp_path, extra=["--settings", str(settings)])
    try:
        yield xdsd, ca, client
    finally:
        xdsd.stop()


def test_status_over_mtls_admin(tls_daemon: tuple[Xdsd, CertAuthority, CertFiles]) -> None:
    import queue

    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    xdsd, ca, client = tls_daemon
    admin = f"127.0.0.1:{xdsd.admin_port}"
    flags = (
        "--admin-tls-ca",
        str(ca.ca_path),
        "--admin-tls-cert",
        str(client.cert),
        "--admin-tls-key",
        str(client.key),
    )
    # a proxy connected over mTLS, holding its stream open without ACKing
    credentials = grpc.ssl_channel_credentials(
        ca.ca_path.read_bytes(), client.key.read_bytes(), client.cert.read_bytes()
    )
    requests: queue.Queue[bytes | None] = queue.Queue()
    requests.put(
        discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="tls-proxy", cluster="client"),
            type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
        ).SerializeToString()
    )
    with grpc.secure_channel(
        f"127.0.0.1:{xdsd.grpc_port}",
        credentials,
        options=[("grpc.ssl_target_name_override", SERVER_NAME)],
    ) as channel:
        stream = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
        )(iter(requests.get, None), timeout=60)
        next(stream)
        try:
            result = _status("--admin", admin, *flags, "--json")
            assert result.returncode == 0, result.stderr
            shown = json.loads(result.stdout)
            assert [p["node_id"] for p in shown["proxies"]] == ["tls-proxy"]
            assert shown["proxies"][0]["types"]["clusters"]["state"] == PENDING
            # https:// and the server name checked against the certificate
            named = _status(
                "--admin", f"https://{admin}", *flags, "--admin-tls-server-name", SERVER_NAME
            )
            assert named.returncode == 0, named.stderr
            assert "tls-proxy" in named.stdout
        finally:
            requests.put(None)
            stream.cancel()

    wrong_name = _status("--admin", admin, *flags, "--admin-tls-server-name", "other.test")
    assert wrong_name.returncode == 3
    assert "TLS with xdsd's admin server" in wrong_name.stderr, wrong_name.stderr
    assert "other.test" in wrong_name.stderr  # OpenSSL's "Hostname mismatch ... 'other.test'"
    no_client_cert = _status("--admin", admin, "--admin-tls-ca", str(ca.ca_path))
    assert no_client_cert.returncode == 3, no_client_cert.stdout
    assert "--admin-tls-cert" in no_client_cert.stderr
    untrusted = _status("--admin", f"https://{admin}")  # the system's CAs do not know ours
    assert untrusted.returncode == 3 and "TLS with" in untrusted.stderr
    plaintext = _status("--admin", admin)
    assert plaintext.returncode == 3
    assert "--admin https://HOST:PORT" in plaintext.stderr, plaintext.stderr
    for result in (wrong_name, no_client_cert, untrusted, plaintext):
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--admin-tls-cert", "c.pem"), "--admin-tls-cert and --admin-tls-key go together"),
        (("--admin-tls-ca", "/nonexistent/ca.pem"), "--admin-tls-ca /nonexistent/ca.pem"),
        (("--admin", "http://127.0.0.1:1", "--admin-tls-ca", "{ca}"), "is http://"),
    ],
)
def test_status_tls_flags_that_cannot_work(
    tmp_path: Path, argv: tuple[str, ...], fragment: str
) -> None:
    ca = CertAuthority(tmp_path)
    result = _status(*(a.format(ca=ca.ca_path) for a in argv))
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr


def _client(types: dict[str, Any]) -> dict[str, Any]:
    return {
        "client_id": "ads-1",
        "node_id": "n",
        "connected": True,
        "transport": "ads",
        "class": "NodeClass(service='reviews', namespace='shop', role=<Role.GATEWAY: 'gateway'>)",
        "types": types,
    }


def test_states_from_client_records() -> None:
    def t(
        sent: str | None, acked: str | None, at: float = 100.0, nack: str | None = None
    ) -> dict[str, Any]:
        return {
            "sent_version": sent,
            "acked_version": acked,
            "sent_at": at,
            "not_applied": False,
            "nack": None if nack is None else {"version": nack, "message": "no"},
        }

    status = summarize(
        [
            _client(
                {
                    "clusters": t("2", "2"),
                    "endpoints": t("3", "2", at=90.0),
                    "listeners": t("4", "1", at=99.5),
                    "routes": t("5", "1", nack="5"),
                    "secrets": t(None, None),
                }
            )
        ],
        [{"text": "a.yaml:1: x: bad"}, {"text": "b.yaml:2: y: odd", "severity": "warning"}],
        now=100.0,
        stale_after=5.0,
    )
    (proxy,) = status.proxies
    assert {n: s.state for n, s in proxy.types.items()} == {
        "clusters": SYNCED,
        "endpoints": STALE,
        "listeners": PENDING,
        "routes": NACKED,
        "secrets": NOT_SENT,
    }
    assert proxy.service == "shop/reviews (gateway)"
    assert status.exit_code == 1 and len(status.errors) == 1 and len(status.warnings) == 1
    disconnected = summarize([{**_client({}), "connected": False}], [], now=0, stale_after=1)
    assert disconnected.proxies == () and disconnected.exit_code == 0


POLICIES = {
    "authorization_policies": [
        {"namespace": "istio-system", "name": "deny-all", "action": "DENY", "origin": "a:1"},
        {"namespace": "shop", "name": "allow-get", "action": "ALLOW DRY-RUN", "origin": "b:2"},
    ],
    "peer_authentications": [{"namespace": "shop", "name": "strict", "origin": "c:1"}],
    "request_authentications": [],
    "mtls": {"9080": "STRICT", "15021": "PERMISSIVE"},
}


def test_policies_of_each_proxy_are_listed_below_the_table() -> None:
    clients = [
        {**_client({}), "node_id": "secured", "policies": POLICIES},
        {**_client({}), "node_id": "plain", "policies": {"mtls": {"80": "DISABLE"}}},
        {**_client({}), "node_id": "old-daemon"},  # a daemon that does not say
        {**_client({}), "node_id": "junk", "policies": ["not", "a", "mapping"]},
    ]
    status = summarize(clients, [], now=0, stale_after=1)
    by_node = {p.node_id: p for p in status.proxies}
    assert by_node["secured"].policies == (
        "AuthorizationPolicy istio-system/deny-all (DENY)",
        "AuthorizationPolicy shop/allow-get (ALLOW DRY-RUN)",
        "PeerAuthentication shop/strict",
    )
    assert by_node["secured"].mtls == {"9080": "STRICT", "15021": "PERMISSIVE"}
    assert by_node["plain"].policies == by_node["old-daemon"].policies == ()
    assert by_node["junk"].policies == () and by_node["junk"].mtls == {}
    table = render_table(status)
    below = table.split("security policies:\n", 1)[1].splitlines()
    assert below[:2] == [
        "  secured: AuthorizationPolicy istio-system/deny-all (DENY), "
        "AuthorizationPolicy shop/allow-get (ALLOW DRY-RUN), PeerAuthentication shop/strict",
        "           mTLS: 9080 STRICT, 15021 PERMISSIVE",
    ]
    assert "plain" not in table.split("security policies:")[1]  # nothing enforced there
    as_json = to_json(status)["proxies"]
    assert {p["node_id"]: p["policies"] for p in as_json}["secured"] == list(
        by_node["secured"].policies
    )


def test_identities_their_expiry_and_one_expiring_soon() -> None:
    def identity(serial: str, not_after: float, soon: bool = False) -> dict[str, Any]:
        return {
            "spiffe_id": f"spiffe://mesh.test/ns/shop/sa/{serial}",
            "serial": serial,
            "not_after": not_after,
            "credential": "token",
            "token_id": f"tok-{serial}",
            "expiring_soon": soon,
        }

    synced = {"clusters": {"sent_version": "1", "acked_version": "1", "sent_at": 0.0}}
    clients = [
        {**_client(synced), "node_id": "fresh", "identity": identity("a1", 1000.0 + 86399)},
        {**_client(synced), "node_id": "late", "identity": identity("b2", 1000.0 + 90, True)},
        {**_client(synced), "node_id": "dead", "identity": identity("c3", 999.0)},
        {**_client(synced), "node_id": "none"},
        {**_client(synced), "node_id": "junk", "identity": "not a mapping"},
    ]
    status = summarize(clients, [], now=1000.0, stale_after=60)
    by_node = {p.node_id: p for p in status.proxies}
    fresh = by_node["fresh"].identity
    assert fresh is not None and fresh.spiffe_id == "spiffe://mesh.test/ns/shop/sa/a1"
    assert fresh.expires_in == 86399 and not fresh.expiring_soon
    assert not by_node["fresh"].failing
    assert by_node["late"].failing and by_node["dead"].failing  # expired counts too
    assert by_node["none"].identity is None and by_node["junk"].identity is None
    assert status.exit_code == 1
    table = render_table(status)
    rows = {line.split()[0]: line for line in table.splitlines()[1:6]}
    assert rows["fresh"].endswith("23h59m") and rows["late"].endswith("EXPIRING 1m30s")
    assert rows["dead"].endswith("EXPIRED") and rows["none"].endswith("-")
    below = table.split("identities:\n", 1)[1].splitlines()
    assert below[0] == "  dead: spiffe://mesh.test/ns/shop/sa/c3 (token tok-c3) serial c3, EXPIRED"
    assert below[2] == (
        "  late: spiffe://mesh.test/ns/shop/sa/b2 (token tok-b2) serial b2, expires in "
        "1m30s - EXPIRING SOON (not renewed in time)"
    )
    assert "identities: 3, 2 expiring soon" in table
    as_json = {p["node_id"]: p["identity"] for p in to_json(status)["proxies"]}
    assert as_json["late"]["expiring_soon"] and as_json["none"] is None
    # A daemon without a CA reports no identities: no column, no section, exit 0.
    plain = render_table(summarize([{**_client(synced), "node_id": "x"}], [], now=0, stale_after=1))
    assert "CERT" not in plain and "identities" not in plain


def test_the_daemons_stale_verdict_and_threshold_are_used_unless_overridden() -> None:
    sent = {"sent_version": "2", "acked_version": "1", "sent_at": 99.0, "state": "stale"}
    status = summarize([_client({"clusters": sent})], [], now=100.0, daemon_stale_after=0.5)
    assert status.proxies[0].types["clusters"].state == STALE and status.exit_code == 1
    assert "1 stale (no ACK after 0.5s)" in render_table(status)
    # --stale-after decides here instead
    status = summarize([_client({"clusters": sent})], [], now=100.0, stale_after=5)
    assert status.proxies[0].types["clusters"].state == PENDING and status.exit_code == 0


EXPECTED = {
    "expected": 3,
    "absent": [
        {
            "namespace": "shop",
            "service": "reviews",
            "address": "10.0.0.12",
            "origin": "Service shop/reviews (reviews.yaml:1)",
            "last_seen": {"node_id": "reviews-2", "agent": "envoy 1.40.0", "disconnected_at": 40},
        },
        {
            "namespace": "shop",
            "service": "",
            "address": "10.0.0.20",
            "origin": "WorkloadEntry shop/vm (vm.yaml:1)",
            "last_seen": None,
        },
    ],
}


def test_disconnected_and_absent_proxies_are_listed_and_counted() -> None:
    gone = {
        **_client({}),
        "node_id": "reviews-2",
        "connected": False,
        "disconnected_at": 40.0,
        "agent": "envoy 1.40.0",
    }
    back = {**_client({}), "node_id": "n", "connected": False, "disconnected_at": 30.0}
    old = {**_client({}), "node_id": "long-gone", "connected": False, "disconnected_at": -4000}
    synced = {"sent_version": "1", "acked_version": "1", "sent_at": 1.0, "state": "in_sync"}
    clients = [{**_client({"clusters": synced}), "agent": "envoy 1.40.0"}, gone, back, old]
    status = summarize(clients, [], now=100.0, daemon_stale_after=10, expected=EXPECTED)
    assert [g.node_id for g in status.disconnected] == ["reviews-2"]  # n came back
    assert status.exit_code == 0  # neither disconnected nor absent proxies fail
    text = render_table(status)
    assert "  reviews-2 (shop/reviews (gateway), ads, envoy 1.40.0) DISCONNECTED 1m0s ago" in text
    assert (
        "  shop/reviews 10.0.0.12 ABSENT - last seen: reviews-2, disconnected 1m0s ago"
        " - from Service shop/reviews (reviews.yaml:1)" in text
    )
    assert "  shop/* 10.0.0.20 ABSENT - never seen - from WorkloadEntry shop/vm" in text
    assert text.splitlines()[0].split()[-1] == "AGENT" and "envoy/1.40.0" in text
    assert text.rstrip().endswith(
        "1 proxy: 1 synced, 0 NACKing, 0 stale (no ACK after 10s), 0 pending; "
        "1 disconnected; 2 of 3 expected absent; config: 0 errors, 0 warnings"
    )
    as_json = to_json(status)
    assert as_json["summary"] == {
        "total": 1,
        "synced": 1,
        "pending": 0,
        "stale": 0,
        "nacked": 0,
        "failing": 0,
        "disconnected": 1,
        "expected": 3,
        "absent": 2,
        "identities": 0,
        "expiring_soon": 0,
        "config_errors": 0,
        "config_warnings": 0,
    }
    assert as_json["disconnected"][0]["state"] == "DISCONNECTED"
    assert as_json["absent"][1] == {
        "service": "shop/*",
        "address": "10.0.0.20",
        "origin": "WorkloadEntry shop/vm (vm.yaml:1)",
        "state": "ABSENT",
        "last_seen": None,
        "ago": None,
    }
    assert as_json["proxies"][0]["agent"] == "envoy 1.40.0"


def test_registered_workloads_say_since_when_and_which_replica_holds_them() -> None:
    """Each registered workload: its group, address, node, state, since when, health and
    the replica holding it (``/debug/registrations`` of a replica shows every replica's)."""
    view = {
        "replica": "xdsd-a",
        "registrations": [
            {
                "namespace": "default",
                "group": "api",
                "address": "10.0.0.7",
                "node": "api-7",
                "since": 1000.0,
                "disconnected": 0,
                "health": "HEALTHY",
                "replica": "xdsd-b",
            },
            {
                "namespace": "default",
                "group": "api",
                "address": "10.0.0.8",
                "node": "api-8",
                "since": 1000.0,
                "disconnected": 1290.0,
                "health": "UNKNOWN",
                "replica": "xdsd-a",
            },
        ],
    }
    text = render_table(summarize([], [], now=1300.0, registrations=view))
    assert (
        "default/api 10.0.0.7 node api-7 (connected, registered 5m0s ago, HEALTHY, held by "
        "replica xdsd-b)"
    ) in text, text
    assert (
        "api-8 (left, in its grace period, registered 5m0s ago, UNKNOWN, held by replica xdsd-a)"
        in text
    )
