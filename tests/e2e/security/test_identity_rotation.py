"""xdsd's CA under traffic, with real Envoy sidecars that got only a bootstrap with a
token: a client sends requests continuously through the caller's sidecar to the callee
over STRICT mutual TLS (a new connection, so a new handshake, per request) while

- workload certificates live a few seconds and are renewed several times (the serial in
  Envoy's ``/certs`` changes);
- the CA is rotated in three steps, each a settings change and SIGHUP (a new authority
  next to the old one; the new one signing; the old one removed);
- xdsd is stopped (SIGTERM) and started again on the same ports and state directory: the
  proxies keep serving on what they hold, and after reconnecting each one holds a valid
  identity — a re-issued one: a workload's private key lives only in the memory of the
  daemon that made it and of its proxy, so a new daemon has no key to hand back and
  issues each reconnecting proxy a fresh key pair and certificate;

and not one request fails. Also: no private key of a workload appears outside the
processes (state directory, daemon log, ``/debug/config_dump``, ``/debug/clients``,
``/metrics``), and the operator views show each proxy's identity and expiry.

The tests of this module run in order on one mesh (one xdsd, two Envoys)."""

from __future__ import annotations

import base64
import http.client
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import Xdsd, free_port, wait_until

TRUST_DOMAIN = "mesh.test"
#: Workload certificates' life (seconds): renewed at half of it. Long enough that a
#: proxy's certificate outlives an xdsd restart (and Envoy's reconnect backoff).
TTL = 20

#: A connection per request: every request makes a TLS handshake with the certificates
#: the proxies hold at that moment.
WEB_RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 1}}
"""


def spiffe(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def settings_text(state: Path, authorities: list[str], signing: str = "") -> str:
    """``[mesh.mtls]`` STRICT with xdsd's CA (``authorities`` generated in ``state``)."""
    text = (
        "[mesh.mtls]\n"
        'mode = "STRICT"\n'
        f'trust_domain = "{TRUST_DOMAIN}"\n'
        "\n[mesh.ca]\n"
        f'state_dir = "{state}"\n'
        f'workload_ttl = "{TTL}s"\n'
    )
    if signing:
        text += f'signing = "{signing}"\n'
    for name in authorities:
        text += f'\n[[mesh.ca.authorities]]\nname = "{name}"\n'
    return text


class Traffic:
    """Requests sent one after another, from a thread, through the caller's sidecar to
    web's inbound port, until ``stop``; every answer but 200, and every error, is a
    failure (kept, with what it was)."""

    def __init__(self, client: Sidecar, web: Sidecar) -> None:
        self.client, self.web = client, web
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.client.request("web", port=self.web.inbound_port, timeout=5).status
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failures.append(f"HTTP {status}")

    def stop(self) -> tuple[int, list[str]]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.ok, self.failures

    def wait_for_more(self, n: int) -> None:
        """Wait until ``n`` more requests succeeded (traffic is really flowing)."""
        target = self.ok + n
        wait_until(lambda: self.ok >= target or bool(self.failures), what=f"{n} requests")


@dataclass
class World:
    mesh: TrafficMesh
    root: Path
    state: Path
    settings: Path
    client: Sidecar
    web: Sidecar
    #: Every leaf certificate (PEM) the proxies were seen holding.
    leaves: dict[str, bytes] = field(default_factory=dict)

    @property
    def xdsd(self) -> Xdsd:
        assert self.mesh.xdsd is not None
        return self.mesh.xdsd

    def sidecars(self) -> tuple[Sidecar, Sidecar]:
        return self.client, self.web

    def reload(self, authorities: list[str], signing: str = "") -> None:
        self.settings.write_text(settings_text(self.state, authorities, signing))
        self.xdsd.proc.send_signal(signal.SIGHUP)

    def traffic(self) -> Traffic:
        self.client.wait_for(lambda: call_web(self) == 200, "client → web over mesh mTLS")
        return Traffic(self.client, self.web)


def call_web(world: World) -> int:
    return world.client.request("web", port=world.web.inbound_port).status


def token(settings: Path, service: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "token",
            "--service",
            service,
            "--settings",
            str(settings),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("identity-rotation")
    state = root / "ca-state"
    settings = root / "settings.toml"
    settings.write_text(settings_text(state, ["first"]))
    with TrafficMesh(root) as mesh:
        mesh.xdsd_args = ["--settings", str(settings)]
        app_port = free_port()
        mesh.upstream("web-app", host="127.0.0.1", port=app_port)
        mesh.rule("web", WEB_RULE)
        sidecars = {}
        for name, port in (("web", app_port), ("client", 0)):
            if mesh.xdsd is None:
                # xdsd starts with the first sidecar; the tokens need its state (the
                # token signing key it generates): start it bare first.
                mesh.xdsd = Xdsd(mesh.config, root, extra=mesh.xdsd_args)
            path = root / f"{name}.token"
            path.write_text(token(settings, name) + "\n")
            path.chmod(0o600)
            sidecars[name] = mesh.start(
                name, app_port=port, bootstrap_args=("--token-file", str(path))
            )
        yield World(mesh, root, state, settings, sidecars["client"], sidecars["web"])


# -- what the proxies hold ------------------------------------------------------------


def leaf_pem(sidecar: Sidecar) -> bytes:
    """The leaf of the ``default`` secret Envoy holds (its config dump shows the chain;
    Envoy redacts the key)."""
    dump = sidecar.envoy.admin_json("/config_dump?resource=dynamic_active_secrets")
    for entry in dump.get("configs", []):
        secret = entry.get("secret", {})
        if secret.get("name") != "default":
            continue
        tls = secret["tls_certificate"]
        assert "PRIVATE KEY" not in str(tls.get("private_key")), "Envoy showed a key"
        chain = base64.b64decode(tls["certificate_chain"]["inline_bytes"])
        return x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.PEM)
    raise AssertionError("no default secret in Envoy")


def leaf(sidecar: Sidecar) -> x509.Certificate:
    return x509.load_pem_x509_certificate(leaf_pem(sidecar))


def serial_in_certs(sidecar: Sidecar) -> int | None:
    """The serial of the mesh certificate Envoy's ``/certs`` reports (None: none yet)."""
    for entry in sidecar.envoy.admin_json("/certs").get("certificates", []):
        for cert in entry.get("cert_chain", []):
            uris = [san.get("uri") for san in cert.get("subject_alt_names", [])]
            if any(str(u).startswith(f"spiffe://{TRUST_DOMAIN}/") for u in uris):
                return int(cert["serial_number"], 16)
    return None


def trusted_roots(sidecar: Sidecar) -> set[str]:
    """The subjects of the certificates in the ``ROOTCA`` Envoy holds."""
    dump = sidecar.envoy.admin_json("/config_dump?resource=dynamic_active_secrets")
    for entry in dump.get("configs", []):
        secret = entry.get("secret", {})
        if secret.get("name") == "ROOTCA":
            pem = base64.b64decode(secret["validation_context"]["trusted_ca"]["inline_bytes"])
            return {c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(pem)}
    return set()


def remember(world: World) -> None:
    for sidecar in world.sidecars():
        pem = leaf_pem(sidecar)
        world.leaves[pem.decode()] = pem


def identities(world: World) -> dict[str, dict[str, Any]]:
    """``/debug/clients``' identity of each connected node."""
    return {
        c["node_id"]: c["identity"]
        for c in world.xdsd.admin("/debug/clients")
        if c["connected"] and c.get("identity")
    }


def metrics(world: World) -> str:
    url = f"http://127.0.0.1:{world.xdsd.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def each(world: World, check: Callable[[Sidecar], bool], what: str, timeout: float = 60) -> None:
    """Wait until ``check`` holds for each sidecar."""
    for sidecar in world.sidecars():
        sidecar.wait_for(partial(check, sidecar), f"{sidecar.name}: {what}", timeout)


# -- the tests --------------------------------------------------------------------------


def test_views_show_each_proxys_identity_and_expiry(world: World) -> None:
    world.client.wait_for(lambda: call_web(world) == 200, "client → web over mesh mTLS")
    ids = identities(world)
    for sidecar in world.sidecars():
        mine = ids[f"{sidecar.name}-sidecar"]
        assert mine["spiffe_id"] == spiffe(sidecar.name)
        assert mine["credential"] == "token" and mine["token_id"]
        assert mine["not_after"] - mine["issued_at"] == pytest.approx(TTL, abs=2)
        assert not mine["expiring_soon"]
        # what xdsd says it issued is what Envoy holds (or the next renewal of it)
        assert int(mine["serial"], 16) in {serial_in_certs(sidecar), leaf(sidecar).serial_number}
    text = metrics(world)
    assert sample(text, "xdsd_certificates_issued_total") >= 2
    assert sample(text, 'xdsd_workload_identities{credential="token"}') == 2
    soonest = sample(text, "xdsd_certificate_soonest_expiry_timestamp_seconds")
    assert soonest == pytest.approx(min(i["not_after"] for i in ids.values()), abs=TTL)
    with urllib.request.urlopen(f"http://127.0.0.1:{world.xdsd.admin_port}/", timeout=5) as r:
        page = r.read().decode()
    assert spiffe("client") in page and "with an identity" in page
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "status",
            "--admin",
            f"127.0.0.1:{world.xdsd.admin_port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "identities:" in status.stdout and spiffe("web") in status.stdout, status.stdout


def test_status_page_identities_in_headless_chromium(world: World, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"http://127.0.0.1:{world.xdsd.admin_port}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    cells = IdentityCells()
    cells.feed(dom.stdout)
    assert set(cells.spiffe) == {spiffe("client"), spiffe("web")}, cells.spiffe
    assert all("expires in" in text for text in cells.text), cells.text


class IdentityCells(HTMLParser):
    """The status page's identity cells: their SPIFFE ids and text."""

    def __init__(self) -> None:
        super().__init__()
        self.spiffe: list[str] = []
        self.text: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "td" and found.get("data-spiffe"):
            self.spiffe.append(found["data-spiffe"] or "")
            self.text.append("")
            self._depth = 1
        elif self._depth and tag == "td":
            self._depth = 0

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._depth = 0

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.text[-1] += data


def test_certificates_renew_several_times_under_traffic(world: World) -> None:
    traffic = world.traffic()
    try:
        seen: dict[str, set[int]] = {s.name: set() for s in world.sidecars()}

        def renewed_three_times() -> bool:
            for sidecar in world.sidecars():
                serial = serial_in_certs(sidecar)
                if serial is not None:
                    seen[sidecar.name].add(serial)
            remember(world)
            return all(len(serials) >= 4 for serials in seen.values())

        wait_until(renewed_three_times, timeout=TTL * 4, interval=0.5, what="3 renewals each")
        traffic.wait_for_more(5)
    finally:
        ok, failures = traffic.stop()
    assert failures == [], failures[:5]
    assert ok > 20
    assert sample(metrics(world), "xdsd_certificate_renewals_total") >= 6


def test_ca_rotation_in_three_steps_under_traffic(world: World) -> None:
    old = leaf(world.client).issuer.rfc4514_string()
    traffic = world.traffic()
    try:
        # 1. a second authority, trusted next to the first: every proxy trusts both.
        world.reload(["first", "second"])
        each(world, lambda s: len(trusted_roots(s)) == 2, "trusts both authorities")
        traffic.wait_for_more(5)
        # 2. the second one signs: every proxy is re-issued a certificate of it.
        world.reload(["first", "second"], signing="second")
        each(world, lambda s: leaf(s).issuer.rfc4514_string() != old, "re-issued by second")
        new = leaf(world.client).issuer.rfc4514_string()
        assert leaf(world.web).issuer.rfc4514_string() == new
        remember(world)
        traffic.wait_for_more(5)
        # 3. the first one goes: the bundle holds only the second.
        world.reload(["second"])
        each(world, lambda s: trusted_roots(s) == {new}, "trusts only the second")
        traffic.wait_for_more(10)
        remember(world)
    finally:
        ok, failures = traffic.stop()
    assert failures == [], failures[:5]
    assert ok > 20


def test_xdsd_restart_keeps_traffic_flowing_and_reissues_identities(world: World) -> None:
    before = {s.name: serial_in_certs(s) for s in world.sidecars()}
    traffic = world.traffic()
    old = world.xdsd
    try:
        ports = (old.grpc_port, old.rest_port, old.admin_port)
        assert old.stop() == 0  # SIGTERM
        during = traffic.ok
        traffic.wait_for_more(10)  # no daemon: the proxies serve on what they hold
        assert traffic.ok - during >= 10
        world.mesh.xdsd = Xdsd(
            world.mesh.config, world.root, extra=world.mesh.xdsd_args, ports=ports
        )
        wait_until(
            lambda: set(identities(world)) == {"client-sidecar", "web-sidecar"},
            timeout=60,
            what="both proxies back with an identity",
        )
        each(world, lambda s: serial_in_certs(s) not in (None, before[s.name]), "re-issued")
        traffic.wait_for_more(10)
        remember(world)
    finally:
        _, failures = traffic.stop()
    assert failures == [], failures[:5]
    ids = identities(world)
    for sidecar in world.sidecars():
        cert = leaf(sidecar)
        mine = ids[f"{sidecar.name}-sidecar"]
        assert cert.serial_number == int(mine["serial"], 16)
        assert cert.not_valid_after_utc.timestamp() > mine["not_before"]
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe(sidecar.name)]
        # the same CA as before the restart: its key was kept in the state directory
        assert cert.issuer.rfc4514_string() == leaf(world.client).issuer.rfc4514_string()


PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def test_no_private_key_outside_the_processes(world: World) -> None:
    remember(world)
    leaf_keys = {
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for pem in world.leaves.values()
    }
    assert len(leaf_keys) >= 8  # every issue, renewal and re-issue above made a new key
    # The state directory: only the CAs' own keys and the token signing key; none of them
    # is a workload's.
    for path in sorted(p for p in world.state.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if not PEM_KEY.search(data):
            continue
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        key = serialization.load_pem_private_key(data, password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert public not in leaf_keys, f"{path} holds a workload's key"
    # The daemon's logs (both runs), its debug views and its metrics: no key at all.
    outputs: dict[str, bytes] = {p.name: p.read_bytes() for p in world.root.glob("xdsd-*.log")}
    assert len(outputs) == 2, outputs.keys()
    admin = f"http://127.0.0.1:{world.xdsd.admin_port}"
    for view in (
        "/debug/config_dump?node=client-sidecar",
        "/debug/config_dump?node=web-sidecar",
        "/debug/clients",
        "/metrics",
        "/",
    ):
        with urllib.request.urlopen(admin + view, timeout=5) as r:
            outputs[view] = r.read()
    for name, data in outputs.items():
        assert not PEM_KEY.search(data), f"a private key in {name}"
    # The config dump shows the class's secrets with their keys redacted and no
    # proxy's own key pair: that is per stream, not in the class snapshot.
    dump = world.xdsd.admin("/debug/config_dump?node=client-sidecar")
    for secret in dump["resources"].get("secrets", []):
        certificate = secret.get("tls_certificate")
        if certificate and "private_key" in certificate:
            assert certificate["private_key"] == {"inline_bytes": "[redacted]"}, secret["name"]
