"""The demo's application: a tiny HTTP service that names itself and calls its downstreams.

``python -m xdsd.demo.app --name reviews --version v2 --listen 127.0.0.1:9183
--call http://ratings:9080/ --proxy http://127.0.0.1:15001``

Every GET answers JSON ``{"service", "version", "calls": [...]}`` where each entry of
``calls`` is what a downstream answered (or ``{"url", "error"}``). Downstreams are fetched
through ``--proxy`` (the sidecar's outbound HTTP proxy listener; default: the
``HTTP_PROXY`` environment variable), so the sidecar routes them by the mesh's rules. The
``end-user`` and ``x-request-id`` headers are passed on, as Istio's bookinfo does. The
answer is 502 when a downstream call fails. SIGTERM and SIGINT stop the server cleanly.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

#: Request headers passed on to downstream calls.
PROPAGATED = ("end-user", "x-request-id")


def call(opener: urllib.request.OpenerDirector, url: str, headers: dict[str, str]) -> Any:
    """GET ``url`` through ``opener``; the downstream's JSON, or ``{"url", "error"}``."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(request, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return {"url": url, "error": f"HTTP {e.code}: {e.read(200).decode(errors='replace')}"}
    except (OSError, ValueError) as e:
        return {"url": url, "error": str(e)}


def make_server(
    name: str, version: str, host: str, port: int, calls: Sequence[str], proxy: str
) -> http.server.ThreadingHTTPServer:
    """The HTTP server of one demo workload, bound and ready for ``serve_forever``."""
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler({"http": proxy} if proxy else {})
    ]
    opener = urllib.request.build_opener(*handlers)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            passed = {h: v for h in PROPAGATED if (v := self.headers.get(h)) is not None}
            answers = [call(opener, url, passed) for url in calls]
            failed = any("error" in a for a in answers)
            body = json.dumps({"service": name, "version": version, "calls": answers})
            data = (body + "\n").encode()
            self.send_response(502 if failed else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{name}-{version}: {format % args}\n")

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    """Run one demo workload until SIGTERM or SIGINT; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m xdsd.demo.app", description=__doc__)
    parser.add_argument("--name", required=True, help="the service name it answers with")
    parser.add_argument("--version", required=True, help="the version it answers with")
    parser.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    parser.add_argument(
        "--call",
        action="append",
        default=[],
        metavar="URL",
        help="a downstream to call on each request (repeatable)",
    )
    parser.add_argument(
        "--proxy",
        default=os.environ.get("HTTP_PROXY", os.environ.get("http_proxy", "")),
        help="the HTTP proxy for downstream calls (default: $HTTP_PROXY)",
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = make_server(args.name, args.version, host, int(port), args.call, args.proxy)

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return: call it from another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{args.name}-{args.version} listening on {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
