"""PeerAuthentication with real Envoys and real traffic, over ``[mesh.mtls]`` PERMISSIVE:
a client without a sidecar reaches web in plaintext until a policy saved into the config
directory (no SIGHUP) makes web STRICT, while the mesh caller keeps getting 200 through
its sidecar; a port-level PERMISSIVE lets plaintext in on that port only (a health
checker's); namespace-wide and mesh-wide policies and the precedence between them
(workload > namespace > mesh, UNSET inherits); DISABLE on web turns the caller's sidecar
to plaintext, and it still gets 200."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.security.test_mesh_mtls import WEB_RULE, identity, install, settings
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Upstream
from tests.harness import free_port, wait_until, write_atomically


@dataclass
class World:
    mesh: TrafficMesh
    ca: CertAuthority
    client: Sidecar
    web: Sidecar
    app: Upstream
    health: Upstream
    #: web's second inbound port (its health port, whose workload port is ``health.port``).
    health_inbound: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("peer-authn")
    pki = root / "pki"
    ca = CertAuthority(pki)
    for service in ("client", "web"):
        install(
            ca.issue(service, uris=[identity(service)], directory=root / "issued"),
            pki / "default" / service,
        )
    with TrafficMesh(root) as mesh:
        path = root / "settings.toml"
        path.write_text(settings(pki, "PERMISSIVE"))
        mesh.xdsd_args = ["--settings", str(path)]
        app = mesh.upstream("web-app", host="127.0.0.1", port=free_port())
        health = mesh.upstream("web-health", host="127.0.0.1", port=free_port())
        # A connection per request: a caller's sidecar keeps pooled connections (and
        # their transport) across an endpoint's change of mode; new ones follow it. The
        # rule has no tls, so the mesh's automatic mutual TLS still applies.
        mesh.rule("web", WEB_RULE)
        web = mesh.start("web", app_port=app.port, labels={"app": "web"})
        client = mesh.start("client")
        # web gets a second port, its health checker's (workload port: health.port).
        health_inbound = free_port(web.ip)
        write_atomically(
            mesh.config / "services" / "web.toml",
            f'kind = "Service"\nname = "web"\n\n'
            f'[[ports]]\nname = "http"\nnumber = {web.inbound_port}\nprotocol = "HTTP"\n'
            f"targetPort = {app.port}\n\n"
            f'[[ports]]\nname = "health"\nnumber = {health_inbound}\nprotocol = "HTTP"\n'
            f"targetPort = {health.port}\n\n"
            f'[[endpoints]]\naddress = "{web.ip}"\nlabels = {{ app = "web" }}\n',
        )
        world = World(mesh, ca, client, web, app, health, health_inbound)
        web.wait_for(lambda: plaintext_get(world, health_inbound) == 200, "web's health port")
        yield world


POLICY = "peer-authentication"


@pytest.fixture
def policies(world: World) -> Iterator[Callable[[str], None]]:
    """Saves PeerAuthentications (YAML) into the config directory; removes them after
    the test and waits for plaintext to be accepted again (the settings' PERMISSIVE)."""

    def save(text: str) -> None:
        world.mesh.rule(POLICY, text)

    yield save
    # Through a state that differs from the settings' (a test may end in one that acts as
    # they do), so that what is waited for below is the removal having been applied.
    save(peer(WEB_SELECTOR + "  mtls: {mode: STRICT}\n"))
    wait_until(lambda: refused(world), what="STRICT before the removal")
    (world.mesh.config / "rules" / f"{POLICY}.yaml").unlink()
    world.web.wait_for(lambda: plaintext_get(world) == 200, "PERMISSIVE again")


def peer(spec: str, name: str = "web", namespace: str = "default") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}---\n"
    )


WEB_SELECTOR = "  selector: {matchLabels: {app: web}}\n"


def plaintext_get(world: World, port: int = 0) -> int:
    """A plaintext request straight to web's inbound listener on ``port`` (default: its
    main port), as a client without a sidecar; raises when refused or closed."""
    conn = http.client.HTTPConnection(world.web.ip, port or world.web.inbound_port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "web"})
        return conn.getresponse().status
    finally:
        conn.close()


def refused(world: World, port: int = 0) -> bool:
    """True when a plaintext request to web's ``port`` gets no HTTP answer."""
    try:
        plaintext_get(world, port)
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return True
    return False


def through_sidecar(world: World) -> int:
    """The status the mesh caller gets from web through its own sidecar."""
    return world.client.request("web", port=world.web.inbound_port).status


def handshakes(world: World) -> int:
    """The TLS handshakes web's main inbound listener has made."""
    return world.web.stats().get(f"listener.inbound_{world.web.inbound_port}.ssl.handshake", 0)


def test_plaintext_gets_in_under_permissive_and_the_caller_speaks_mutual_tls(
    world: World,
) -> None:
    assert plaintext_get(world) == 200
    before = handshakes(world)
    world.client.wait_for(lambda: through_sidecar(world) == 200, "client → web")
    assert handshakes(world) > before  # the caller's sidecar spoke mesh mTLS


def test_a_workload_policy_makes_web_strict_for_plaintext_only(
    world: World, policies: Callable[[str], None]
) -> None:
    policies(peer(WEB_SELECTOR + "  mtls: {mode: STRICT}\n"))
    wait_until(lambda: refused(world), what="plaintext refused under STRICT")
    assert refused(world, world.health_inbound)
    world.client.wait_for(lambda: through_sidecar(world) == 200, "client → web under STRICT")


def test_a_port_level_mode_lets_the_health_checker_in_on_its_port_only(
    world: World, policies: Callable[[str], None]
) -> None:
    policies(
        peer(
            WEB_SELECTOR + "  mtls: {mode: STRICT}\n"
            f"  portLevelMtls:\n    {world.health.port}: {{mode: PERMISSIVE}}\n"
        )
    )
    wait_until(lambda: refused(world), what="plaintext refused on web's main port")
    world.web.wait_for(
        lambda: plaintext_get(world, world.health_inbound) == 200, "the health port open"
    )
    world.health.reset()
    assert plaintext_get(world, world.health_inbound) == 200
    assert world.health.seen  # the health checker reached its application
    world.client.wait_for(lambda: through_sidecar(world) == 200, "client → web")


def test_namespace_and_mesh_policies_in_istios_precedence(
    world: World, policies: Callable[[str], None]
) -> None:
    mesh_strict = peer("  mtls: {mode: STRICT}\n", "mesh", "istio-system")
    # Mesh-wide STRICT: web refuses plaintext.
    policies(mesh_strict)
    wait_until(lambda: refused(world), what="mesh-wide STRICT")
    # Its namespace says PERMISSIVE: the namespace's wins.
    policies(mesh_strict + peer("  mtls: {mode: PERMISSIVE}\n", "ns"))
    world.web.wait_for(lambda: plaintext_get(world) == 200, "namespace PERMISSIVE over mesh")
    # The namespace's UNSET inherits the mesh's STRICT.
    policies(mesh_strict + peer("  mtls: {mode: UNSET}\n", "ns"))
    wait_until(lambda: refused(world), what="namespace UNSET inherits STRICT")
    # The namespace STRICT, the workload PERMISSIVE: the workload's wins.
    policies(
        peer("  mtls: {mode: STRICT}\n", "ns") + peer(WEB_SELECTOR + "  mtls: {mode: PERMISSIVE}\n")
    )
    world.web.wait_for(lambda: plaintext_get(world) == 200, "workload PERMISSIVE over namespace")
    world.client.wait_for(lambda: through_sidecar(world) == 200, "client → web")


def test_disable_turns_the_callers_sidecar_to_plaintext(
    world: World, policies: Callable[[str], None], tmp_path: Path
) -> None:
    policies(peer(WEB_SELECTOR + "  mtls: {mode: DISABLE}\n"))
    member = world.ca.issue("member", uris=[identity("member")], directory=tmp_path)

    def mutual_tls_refused() -> bool:
        ctx = ssl.create_default_context(cafile=str(world.ca.ca_path))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(member.cert), str(member.key))
        conn = http.client.HTTPConnection(world.web.ip, world.web.inbound_port, timeout=5)
        try:
            raw = socket.create_connection((world.web.ip, world.web.inbound_port), timeout=5)
            conn.sock = ctx.wrap_socket(raw)
            conn.request("GET", "/", headers={"Host": "web"})
            conn.getresponse()
        except (OSError, http.client.HTTPException, ssl.SSLError):
            return True
        finally:
            conn.close()
        return False

    # web's inbound listener takes plaintext only now ...
    wait_until(mutual_tls_refused, what="web to take plaintext only")
    assert plaintext_get(world) == 200
    # ... and the caller's sidecar reaches it in plaintext (web's plaintext chain tells
    # the application of no client certificate).
    world.client.wait_for(lambda: through_sidecar(world) == 200, "client → web in plaintext")
    world.app.reset()
    for _ in range(3):
        assert through_sidecar(world) == 200
    assert len(world.app.seen) == 3
    assert all("x-forwarded-client-cert" not in seen.headers for seen in world.app.seen)


def test_port_level_mode_of_a_sidecar_ingress_port_is_keyed_by_its_number(
    world: World, policies: Callable[[str], None]
) -> None:
    """A Sidecar ingress listener's workload port is its own number (as in Istio), not the
    port of the ``defaultEndpoint`` it forwards to: a port-level STRICT keyed by the
    number refuses plaintext, one keyed by the endpoint's port names no port of web."""
    port, app = world.web.inbound_port, world.app.port
    sidecar = world.mesh.rule(
        "sidecar",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
        "metadata: {name: web, namespace: default}\nspec:\n"
        "  workloadSelector: {labels: {app: web}}\n"
        f"  ingress:\n  - port: {{number: {port}, protocol: HTTP, name: http}}\n"
        f"    defaultEndpoint: 127.0.0.1:{app}\n",
    )
    try:
        policies(peer(WEB_SELECTOR + f"  portLevelMtls:\n    {port}: {{mode: STRICT}}\n"))
        wait_until(lambda: refused(world), what="STRICT on the ingress port's number")
        world.client.wait_for(lambda: through_sidecar(world) == 200, "client → web under STRICT")
        policies(peer(WEB_SELECTOR + f"  portLevelMtls:\n    {app}: {{mode: STRICT}}\n"))
        world.web.wait_for(lambda: plaintext_get(world) == 200, "the endpoint's port: no port")
    finally:
        sidecar.unlink()
        world.web.wait_for(
            lambda: plaintext_get(world, world.health_inbound) == 200, "web's own ports again"
        )
