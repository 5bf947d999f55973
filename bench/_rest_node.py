"""The node block a real Envoy sends on every REST poll, captured once per benchmark run.

A throwaway HTTP server on loopback records the first ``POST /v3/discovery:clusters`` of an
Envoy whose bootstrap polls it over REST; the Envoy is stopped as soon as the body is in.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

from tests.harness import Envoy, free_port, wait_until


def capture_envoy_node(workdir: Path) -> dict[str, Any]:
    """The ``node`` of a real Envoy's REST DiscoveryRequest (proto3 JSON, ~61 KB in 1.40)."""
    bodies: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    admin_port = free_port()
    rest = {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": ["xds"],
            "refresh_delay": "1s",
        },
    }
    endpoint = {
        "endpoint": {
            "address": {
                "socket_address": {"address": "127.0.0.1", "port_value": server.server_port}
            }
        }
    }
    bootstrap = {
        "node": {"id": "capture", "cluster": "capture"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [{"lb_endpoints": [endpoint]}],
                    },
                }
            ]
        },
        "dynamic_resources": {"cds_config": rest},
    }
    path = workdir / "capture-envoy.json"
    path.write_text(json.dumps(bootstrap))
    envoy = Envoy(path, admin_port, workdir)
    try:
        wait_until(lambda: bodies, timeout=60, what="Envoy's first REST poll")
    finally:
        envoy.stop()
        server.shutdown()
        server.server_close()
    node: dict[str, Any] = json.loads(bodies[0])["node"]
    return node
