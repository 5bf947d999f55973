"""The load generator: simulated xDS clients in separate processes, pinned apart from the
daemon, and the daemon itself started for a benchmark.

``LoadGen(...)`` forks ``procs`` processes, each running its share of ``XdsClient``s on
one asyncio loop, pinned to the CPUs in ``cpus`` (``os.sched_setaffinity``, what
``taskset`` does; ignored where unsupported). The parent talks to them over pipes:

- ``start()``: connect every client; returns when all are synced (every type ACKed once).
- ``arm(types)``: remember each client's current version of ``types``; then, after the
  caller's edit, ``wait_done()`` returns when every client ACKed a new version of every
  armed type, with per-client receive/ACK times and each process's CPU seconds.

``Daemon`` runs ``xdsd serve`` at ``--log-level info`` pinned to CPU 0, reads its log for
the timestamps of "config change detected" and "config loaded ... in X ms", its RSS and CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._xdsclient import CDS, EDS, LDS, RDS, SHORT, XdsClient, make_node

TYPE_BY_SHORT = {v: k for k, v in SHORT.items()}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def pin(cpus: set[int]) -> bool:
    """Pin this process to ``cpus`` if the machine has them; True when pinned."""
    try:
        available = os.sched_getaffinity(0)
        wanted = cpus & available
        if not wanted or wanted == available:
            return False
        os.sched_setaffinity(0, wanted)
        return True
    except (AttributeError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- daemon ------------------------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_LOADED = re.compile(r"config loaded: .*?([\d.]+) ms")


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    if m is None:
        return None
    when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return when.timestamp()  # asctime is local time, as is strptime's naive result


class Daemon:
    """``xdsd serve`` on free loopback ports, pinned to ``cpus``; from the checkout
    ``tree`` when given (default: the ``xdsd`` this Python imports)."""

    def __init__(
        self,
        config_dir: Path,
        log_path: Path,
        *,
        cpus: set[int] | None = None,
        port: int | None = None,
        profile: str | None = None,
        tree: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.log_path = log_path
        self.grpc_port = port or free_port()
        self.admin_port = free_port()
        self.cpus = cpus if cpus is not None else {0}
        argv = [
            sys.executable,
            "-m",
            "xdsd.cli",
            "--log-level",
            "info",
            "serve",
            "--config-dir",
            str(config_dir),
            "--grpc",
            f"127.0.0.1:{self.grpc_port}",
            "--admin",
            f"127.0.0.1:{self.admin_port}",
            "--rest",  # not the default port: other daemons may run on this machine
            f"127.0.0.1:{free_port()}",
            *(extra or []),
        ]
        impl = os.environ.get("XDSD_GRPC_IMPL")  # A/B the gRPC server implementation
        if impl:
            argv += ["--grpc-impl", impl]
        if profile:
            argv = [sys.executable, "-m", "cProfile", "-o", profile, *argv[1:]]
        self._log = log_path.open("ab")
        self._offset = log_path.stat().st_size
        env = dict(os.environ)
        if tree:  # serve xdsd from another checkout (e.g. a git worktree of a baseline)
            env["PYTHONPATH"] = tree
        self.proc = subprocess.Popen(
            argv,
            cwd=tree or None,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: pin(self.cpus) and None,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xdsd exited: {log_path.read_text()[-2000:]}")
            try:
                if self.admin("/readyz").get("ready"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("xdsd did not become ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def admin(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu(self) -> float:
        """User + system CPU seconds so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def mark(self) -> None:
        """Start looking for log lines from here."""
        self._offset = self.log_path.stat().st_size

    def events(self) -> tuple[float | None, float | None, float | None]:
        """(detected_at, loaded_at, rebuild_ms) from the log since ``mark()``."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            text = f.read().decode(errors="replace")
        detected = loaded = ms = None
        for line in text.splitlines():
            if detected is None and "config change detected" in line:
                detected = _stamp(line)
            elif "config loaded:" in line:
                m = _LOADED.search(line)
                if m:
                    loaded, ms = _stamp(line), float(m.group(1))
        return detected, loaded, ms

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- load processes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """Who the clients are: ``classes`` distinct node classes among ``services`` (client i
    gets service ``svc-{i % classes:05d}`` and an instance_ip of its class)."""

    host: str
    port: int
    classes: int = 10
    fat: int = 0  # node size in bytes sent on every request (0: node only once)
    #: One xdsd token per class (``svc-{c:05d}`` in namespace default), carried by each of
    #: its clients, which then get a workload certificate; empty: no tokens.
    tokens: tuple[str, ...] = ()
    #: Delta clients (``_deltaclient``) instead of SotW; with ``vhds``, each calls
    #: ``calls`` services (``svc-00000`` and the ones after its own class's), of the
    #: mesh's ``services``, on ports ``8000 + i % 20`` (``meshgen``).
    delta: bool = False
    vhds: bool = True
    calls: int = 5
    services: int = 0


def _node(i: int, spec: ClientSpec) -> Any:
    c = i % spec.classes
    return make_node(
        f"sidecar-{i}",
        f"svc-{c:05d}",
        f"127.{1 + c // 250}.{c % 250}.1",
        fat=spec.fat,
    )


def _delta_client(i: int, spec: ClientSpec, on_ack: Any) -> Any:
    """Client ``i`` of a ``--delta`` load (see ``ClientSpec.delta``)."""
    from bench._deltaclient import DeltaXdsClient

    node = _node(i, spec)
    if spec.vhds:
        node.metadata.update({"vhds": "true"})
    mesh = max(spec.services, 1)
    picked = [0] + [(i % spec.classes + k) % mesh for k in range(1, spec.calls)]
    calls = tuple(dict.fromkeys((f"svc-{j:05d}", 8000 + j % 20) for j in picked))
    return DeltaXdsClient(node, on_ack=on_ack, vhds=spec.vhds, calls=calls)


class _Worker:
    """Runs in a load process: its clients and the pipe to the parent."""

    def __init__(
        self, conn: multiprocessing.connection.Connection, ids: list[int], spec: ClientSpec
    ) -> None:
        self.conn = conn
        self.spec = spec
        self.clients: list[Any] = (
            [_delta_client(i, spec, self._on_ack) for i in ids]
            if spec.delta
            else [
                XdsClient(
                    _node(i, spec),
                    on_ack=self._on_ack,
                    fat_node=spec.fat > 0,
                    token=spec.tokens[i % spec.classes] if spec.tokens else "",
                )
                for i in ids
            ]
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.armed: list[str] = []
        self.baseline: dict[int, tuple[str, ...]] = {}
        self.done: set[int] = set()
        self.cpu0 = 0.0
        self.bytes0 = 0

    def _versions(self, client: XdsClient) -> tuple[str, ...]:
        return tuple(client.types[t].version for t in self.armed)

    def _on_ack(self, client: XdsClient) -> None:
        if self.armed:
            key = id(client)
            if key not in self.done:
                now = self._versions(client)
                if all(a != b for a, b in zip(now, self.baseline[key], strict=True)):
                    self.done.add(key)
                    if len(self.done) == len(self.clients):
                        self._report()

    def _report(self) -> None:
        per_client = [
            {SHORT[t]: [c.types[t].received_at, c.types[t].acked_at] for t in self.armed}
            for c in self.clients
        ]
        self.armed = []
        received = sum(getattr(c, "received_bytes", 0) for c in self.clients) - self.bytes0
        self.conn.send(
            ("done", {"clients": per_client, "cpu": _cpu() - self.cpu0, "bytes": received})
        )

    def _on_command(self) -> None:
        cmd, arg = self.conn.recv()
        if cmd == "arm":
            self.armed = [TYPE_BY_SHORT[t] for t in arg]
            self.baseline = {id(c): self._versions(c) for c in self.clients}
            self.done = set()
            self.cpu0 = _cpu()
            self.bytes0 = sum(getattr(c, "received_bytes", 0) for c in self.clients)
            self.conn.send(("armed", None))
        elif cmd == "status":
            self.conn.send(("status", self._status()))
        elif cmd == "stop":
            for t in self.tasks:
                t.cancel()

    def _status(self) -> dict[str, Any]:
        return {
            "synced": sum(c.synced() for c in self.clients),
            "connected": sum(c.connected for c in self.clients),
            "failures": sum(c.failures for c in self.clients),
            "ends": sum(c.ends for c in self.clients),
            "resources": sum(sum(c.resources.values()) for c in self.clients),
            "certificates": sum(c.certificates for c in self.clients),
            "errors": sorted({c.error for c in self.clients if c.error})[:5],
            "synced_at": [c.synced_at if c.synced() else None for c in self.clients],
            "cpu": _cpu(),
        }

    async def main(self, retry_for: float) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_command)
        self.conn.recv()  # "go": every process starts connecting together
        retry_until = time.monotonic() + retry_for
        self.tasks = [
            asyncio.create_task(c.run(self.spec.host, self.spec.port, retry_until=retry_until))
            for c in self.clients
        ]
        self.conn.send(("started", time.time()))
        await asyncio.gather(*self.tasks, return_exceptions=True)
        loop.remove_reader(self.conn.fileno())
        self.conn.send(("stopped", self._status()))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker_main(
    conn: Any, ids: list[int], spec: ClientSpec, cpus: set[int], retry_for: float
) -> None:
    pin(cpus)
    gc.disable()  # the clients make no cycles worth collecting; full scans of big heaps
    worker = _Worker(conn, ids, spec)
    asyncio.run(worker.main(retry_for))


class LoadGen:
    """``clients`` simulated Envoys (numbered from ``first``) in ``procs`` processes pinned
    to ``cpus``; a client whose connection fails retries for ``retry_for`` seconds."""

    def __init__(
        self,
        clients: int,
        spec: ClientSpec,
        *,
        procs: int = 2,
        cpus: set[int] | None = None,
        retry_for: float = 30.0,
        first: int = 0,
    ) -> None:
        self.clients = clients
        procs = max(1, min(procs, clients))
        ctx = multiprocessing.get_context("fork")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for p in range(procs):
            parent, child = ctx.Pipe()
            ids = list(range(first + p, first + clients, procs))
            proc = ctx.Process(
                target=_worker_main,
                args=(child, ids, spec, cpus if cpus is not None else {1}, retry_for),
                daemon=True,
            )
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def _all(self, cmd: str, arg: Any = None) -> list[Any]:
        for c in self.conns:
            c.send((cmd, arg))
        return [self._recv(c, cmd) for c in self.conns]

    @staticmethod
    def _recv(
        conn: multiprocessing.connection.Connection, expect: str, timeout: float = 120.0
    ) -> Any:
        if not conn.poll(timeout):
            raise TimeoutError(f"load process did not answer {expect!r} in {timeout}s")
        _kind, value = conn.recv()
        return value

    def go(self) -> float:
        """Let every process start connecting; returns the time.time() of the go."""
        started = time.time()
        for c in self.conns:
            c.send(("go", None))
        for c in self.conns:
            self._recv(c, "started")
        return started

    def status(self) -> dict[str, Any]:
        """Summed status of every process (synced_at: per client, None if not synced)."""
        parts = self._all("status")
        return {
            "synced": sum(p["synced"] for p in parts),
            "connected": sum(p["connected"] for p in parts),
            "failures": sum(p["failures"] for p in parts),
            "ends": sum(p["ends"] for p in parts),
            "resources": sum(p["resources"] for p in parts),
            "certificates": sum(p["certificates"] for p in parts),
            "errors": sorted({e for p in parts for e in p["errors"]})[:5],
            "synced_at": [t for p in parts for t in p["synced_at"]],
            "cpu": sum(p["cpu"] for p in parts),
            "bytes": sum(p.get("bytes", 0) for p in parts),
        }

    def wait_synced(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st["synced"] == self.clients:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {st['synced']}/{self.clients} clients synced: {st}")
            time.sleep(0.05)

    def arm(self, types: list[str]) -> None:
        self._all("arm", types)

    def wait_done(self, timeout: float = 60.0) -> dict[str, Any]:
        """Per-client [received_at, acked_at] of each armed type, and the load CPU."""
        parts = [self._recv(c, "done", timeout) for c in self.conns]
        return {
            "clients": [c for p in parts for c in p["clients"]],
            "cpu": sum(p["cpu"] for p in parts),
            "bytes": sum(p.get("bytes", 0) for p in parts),
        }

    def stop(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(("stop", None))
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


__all__ = ["CDS", "EDS", "LDS", "RDS", "ClientSpec", "Daemon", "LoadGen", "cpu_count", "pin"]
