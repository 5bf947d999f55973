"""Path normalization before AuthorizationPolicy, on real traffic through real Envoys:
a DENY on ``/admin*`` is not passed by dot segments or percent-encoded unreserved
characters (``/public/../admin``, ``/%61dmin``), and the application is handed the path
the policy judged. Istio's BASE normalization: escaped slashes (``%2F``) are kept as
sent and adjacent slashes are not merged. The request is sent as raw bytes, so that no
client library cleans the path first.
"""

from __future__ import annotations

import http.client

from tests.e2e.security.authz_world import WEB_HOST, World
from tests.e2e.security.test_authorization import policy

#: Every one of these is ``/admin/x`` once normalized.
BYPASSES = (
    "/admin/x",
    "/public/../admin/x",
    "/./admin/x",
    "/%61dmin/x",
    "/public/%2e%2e/admin/x",
    "/public/%2E%2E/admin/./x",
    "/admin/y/../x",
)


def raw_call(w: World, path: str) -> int:
    """The status of ``GET path`` (sent byte for byte) from the client's sidecar to web."""
    conn = http.client.HTTPConnection(w.client.outbound_ip, w.web.inbound_port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", WEB_HOST)
        conn.endheaders()
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def test_dot_segments_and_encodings_do_not_pass_a_deny(w: World) -> None:
    w.policies(policy("  action: DENY\n  rules:\n  - to:\n    - operation: {paths: ['/admin*']}\n"))
    w.until(lambda: w.call(w.client, "/admin/x") == 403, "DENY /admin*")
    for path in BYPASSES:
        before = len(w.app.seen)
        status = raw_call(w, path)
        reached = [s.path for s in w.app.seen[before:]]
        assert (status, reached) == (403, []), f"GET {path} -> {status}; app saw {reached}"


def test_the_application_gets_the_normalized_path(w: World) -> None:
    w.policies(policy("  action: DENY\n  rules:\n  - to:\n    - operation: {paths: ['/admin*']}\n"))
    w.until(lambda: w.call(w.client, "/admin/x") == 403, "DENY /admin*")
    cases = {
        "/public/../ok/x": "/ok/x",
        "/%6Fk/./x": "/ok/x",
        # BASE keeps escaped slashes and repeated slashes as they were sent.
        "/ok%2Fx": "/ok%2Fx",
        "/ok//x": "/ok//x",
    }
    for path, expected in cases.items():
        before = len(w.app.seen)
        status = raw_call(w, path)
        reached = [s.path for s in w.app.seen[before:]]
        assert (status, reached) == (200, [expected]), f"GET {path} -> {status}; app saw {reached}"
