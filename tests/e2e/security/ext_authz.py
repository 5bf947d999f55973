"""Small real external authorization servers for CUSTOM AuthorizationPolicies: one that
answers Envoy's HTTP checks, one that implements Envoy's gRPC ``Authorization`` service.

Both allow a request whose header ``x-ext-authz`` is ``allow`` and deny any other (403,
with ``x-ext-authz-check: denied`` on the HTTP one), and record the path of every check
they were asked, so a test can tell which requests reached them.
"""

from __future__ import annotations

import http.server
import threading
from concurrent import futures
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

ALLOW_HEADER = "x-ext-authz"


class HttpAuthz:
    """An HTTP ext_authz server on ``host:port`` (0: a free port)."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.checked: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.checked.append(self.path)
                allowed = self.headers.get(ALLOW_HEADER) == "allow"
                self.send_response(200 if allowed else 403)
                if not allowed:
                    self.send_header("x-ext-authz-check", "denied")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = host, int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, checked: list[str]) -> None:
        self.checked = checked

    def Check(self, request: Any, context: Any) -> Any:  # the proto names it
        http_request = request.attributes.request.http
        self.checked.append(http_request.path)
        if http_request.headers.get(ALLOW_HEADER) == "allow":
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.OK),
                ok_response=external_auth_pb2.OkHttpResponse(),
            )
        denied = external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
            body="denied by the gRPC authorization server",
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED), denied_response=denied
        )


class GrpcAuthz:
    """A gRPC ``envoy.service.auth.v3.Authorization`` server on ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.checked: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            _Servicer(self.checked), self.server
        )
        self.host = host
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)
