"""Programmable upstreams for behaviour tests: an HTTP/1.1 server that echoes each request
as JSON and names itself, and a TCP (optionally TLS) echo server, with what a client saw of
an answer (``Reply``) and what an upstream saw of a request (``Seen``).

Upstreams answer every method with JSON naming themselves and echoing the request (method,
path, headers, body); request headers steer one answer (``x-echo-status``,
``x-echo-delay-ms``) and attributes steer all of them (``status``, ``delay``,
``fail_next``), so each rule's effect can be read from what the client and the upstream saw.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Seen:
    """One request as an upstream received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    #: Every header line as received, in order (repeated names kept).
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Reply:
    """One answer as the client received it (header names lower-cased)."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: Every header line as received, in order (repeated names kept).
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def backend(self) -> str:
        """The upstream that answered ("" when Envoy answered itself)."""
        return self.headers.get("x-backend", "")

    def json(self) -> Any:
        return json.loads(self.body)


class Upstream:
    """An HTTP/1.1 server on ``host:port`` (TLS when ``tls`` is given).

    Every answer carries ``X-Backend: name`` and a JSON body echoing the request. Steering:
    request header ``x-echo-status: N`` answers N, ``x-echo-delay-ms: N`` waits first,
    ``x-echo-header: NAME=VALUE`` (repeatable) adds that response header; the
    attributes ``status`` and ``delay`` do the same for every request, and ``fail_next = N``
    answers the next N requests with 503. ``labels`` and ``locality`` are what the service
    file gives its endpoint.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        labels: dict[str, str] | None = None,
        locality: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.labels = labels or {}
        self.locality = locality
        self.status = 200
        self.delay = 0.0
        self.fail_next = 0
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                raw = [(k.lower(), v) for k, v in self.headers.items()]
                with upstream._lock:
                    upstream.seen.append(Seen(self.command, self.path, headers, body, raw))
                    status = upstream.status
                    if upstream.fail_next > 0:
                        upstream.fail_next -= 1
                        status = 503
                delay = upstream.delay + int(headers.get("x-echo-delay-ms", "0")) / 1000
                if delay:
                    time.sleep(delay)
                status = int(headers.get("x-echo-status", status))
                payload = json.dumps(
                    {
                        "backend": upstream.name,
                        "method": self.command,
                        "path": self.path,
                        "headers": headers,
                        "body": body.decode(errors="replace"),
                    }
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Backend", upstream.name)
                for line in self.headers.get_all("x-echo-header") or ():
                    name, _, value = line.partition("=")
                    self.send_header(name.strip(), value.strip())
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return len(self.seen)

    def reset(self) -> None:
        """Forget what was seen and go back to answering 200 at once."""
        with self._lock:
            self.seen.clear()
            self.status, self.delay, self.fail_next = 200, 0.0, 0

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpEcho:
    """A TCP server that answers each chunk it reads with ``name:`` + the chunk; with
    ``tls``, it first completes a TLS handshake as that server context (and echoes what
    it reads inside TLS)."""

    def __init__(
        self, name: str, host: str, port: int, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.labels: dict[str, str] = {}
        self.locality = ""
        prefix = f"{name}:".encode()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                if tls is not None:
                    try:
                        conn = tls.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                while data := conn.recv(65536):
                    conn.sendall(prefix + data)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.host, self.port = host, int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
