"""Behaviour of VirtualService HTTP rules, proven by real requests through real Envoy
sidecars configured by xdsd (one mesh for the module; each test its own host).

Two client sidecars run: ``client`` (no labels) and ``canary`` (``track: canary``), so
that ``sourceLabels`` can be seen to give different proxies different routes.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Reply, Upstream

BINARY = b"\x00\x01\xfe\xffbinary"


def subsets(host: str, names: str) -> str:
    """A DestinationRule giving ``host`` one subset per letter (label ``version``)."""
    items = "".join(f"  - {{name: {n}, labels: {{version: {n}}}}}\n" for n in names)
    return (
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {host}}}\nspec:\n  host: {host}\n  subsets:\n{items}"
    )


def to(host: str, subset: str) -> str:
    return f"[{{destination: {{host: {host}, subset: {subset}}}}}]"


RULES = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hdr}}
spec:
  hosts: [hdr]
  http:
  - match: [{{headers: {{x-p: {{}}}}}}]
    route: {to("hdr", "a")}
  - match: [{{headers: {{x-pre: {{prefix: ab}}}}}}]
    route: {to("hdr", "b")}
  - match: [{{uri: {{prefix: /w}}, withoutHeaders: {{x-user: {{exact: admin}}}}}}]
    route: {to("hdr", "c")}
  - match: [{{headers: {{x-re: {{regex: "v[0-9]+"}}}}}}]
    route: {to("hdr", "e")}
  - route: {to("hdr", "d")}
{subsets("hdr", "abcde")}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: req}}
spec:
  hosts: [req]
  http:
  - match: [{{uri: {{exact: /Case}}, ignoreUriCase: true}}]
    route: {to("req", "a")}
  - match: [{{queryParams: {{mode: {{exact: fast}}}}}}, {{queryParams: {{id: {{regex: "[0-9]+"}}}}}}]
    route: {to("req", "b")}
  - match: [{{method: {{exact: DELETE}}}}]
    route: {to("req", "c")}
  - match: [{{authority: {{prefix: req.default.svc}}}}]
    route: {to("req", "d")}
  - match: [{{uri: {{prefix: /scheme}}, scheme: {{exact: https}}}}]
    route: {to("req", "a")}
  - match: [{{uri: {{prefix: /scheme}}, scheme: {{exact: http}}}}]
    route: {to("req", "e")}
  - route: {to("req", "z")}
{subsets("req", "abcdez")}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: src}}
spec:
  hosts: [src]
  http:
  - match: [{{sourceLabels: {{track: canary}}}}]
    route: {to("src", "b")}
  - match: [{{gateways: [edge-gateway]}}]
    route: {to("src", "c")}
  - match: [{{gateways: [mesh], headers: {{x-gw: {{exact: "1"}}}}}}]
    route: {to("src", "d")}
  - route: {to("src", "a")}
{subsets("src", "abcd")}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: redir}}
spec:
  hosts: [redir]
  http:
  - match: [{{uri: {{exact: /old}}}}]
    redirect: {{uri: /new, redirectCode: 308}}
  - match: [{{uri: {{exact: /away}}}}]
    redirect: {{authority: elsewhere.example, port: 8443, scheme: https}}
  - match: [{{uri: {{exact: /see}}}}]
    redirect: {{uri: /other, redirectCode: 303, derivePort: FROM_REQUEST_PORT}}
  - route: [{{destination: {{host: redir}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: rw}}
spec:
  hosts: [rw]
  http:
  - match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /v2/, authority: backend.internal}}
    route: [{{destination: {{host: rw}}}}]
  - match: [{{uri: {{prefix: /re/}}}}]
    rewrite: {{uriRegexRewrite: {{match: "^/re/([a-z]+)/(.*)$", rewrite: "/\\\\2/\\\\1"}}}}
    route: [{{destination: {{host: rw}}}}]
  - route: [{{destination: {{host: rw}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct}}
spec:
  hosts: [direct]
  http:
  - match: [{{uri: {{exact: /teapot}}}}]
    directResponse: {{status: 418, body: {{string: short and stout}}}}
  - match: [{{uri: {{exact: /bin}}}}]
    directResponse: {{status: 200, body: {{bytes: "{base64.b64encode(BINARY).decode()}"}}}}
  - match: [{{uri: {{exact: /empty}}}}]
    directResponse: {{status: 204}}
  - route: [{{destination: {{host: direct}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: abort}}
spec:
  hosts: [abort]
  http:
  - match: [{{headers: {{x-all: {{exact: "1"}}}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: abort}}}}]
  - fault: {{abort: {{httpStatus: 418, percentage: {{value: 30}}}}}}
    route: [{{destination: {{host: abort}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: delay}}
spec:
  hosts: [delay]
  http:
  - match: [{{uri: {{prefix: /slow}}}}]
    fault: {{delay: {{fixedDelay: 0.4s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: delay}}}}]
  - route: [{{destination: {{host: delay}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mirrored}}
spec:
  hosts: [mirrored]
  http:
  - match: [{{uri: {{prefix: /many}}}}]
    route: [{{destination: {{host: mirrored}}}}]
    mirrors:
    - destination: {{host: shadow}}
    - destination: {{host: shadow2}}
      percentage: {{value: 0}}
  - route: [{{destination: {{host: mirrored}}}}]
    mirror: {{host: shadow}}
    mirrorPercentage: {{value: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cors}}
spec:
  hosts: [cors]
  http:
  - route: [{{destination: {{host: cors}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "https://app.example"}}, {{regex: "https://[a-z]+[.]trusted[.]example"}}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-backend]
      maxAge: 1h
      allowCredentials: true
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hdrops}}
spec:
  hosts: [hdrops]
  http:
  - match: [{{uri: {{prefix: /split}}}}]
    route:
    - destination: {{host: hdrops, subset: a}}
      weight: 50
      headers:
        request: {{set: {{x-dest: a}}}}
        response: {{add: {{x-from: a}}}}
    - destination: {{host: hdrops, subset: b}}
      weight: 50
      headers:
        request: {{set: {{x-dest: b}}}}
        response: {{add: {{x-from: b}}}}
  - headers:
      request:
        set: {{x-set: one}}
        add: {{x-add: two}}
        remove: [x-drop]
      response:
        set: {{x-resp-set: one}}
        add: {{x-resp-add: two}}
        remove: [x-gone]
    route:
    - destination: {{host: hdrops, subset: a}}
      headers:
        request: {{set: {{host: renamed.example}}}}
{subsets("hdrops", "ab")}
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = TrafficMesh(tmp)
        m = self.mesh
        self.ups: dict[str, dict[str, Upstream]] = {}
        for host, names in (
            ("hdr", "abcde"),
            ("req", "abcdez"),
            ("src", "abcd"),
            ("hdrops", "ab"),
        ):
            self.ups[host] = {n: m.upstream(f"{host}-{n}", version=n) for n in names}
            m.service(host, self.ups[host].values())
        for host in (
            "redir",
            "rw",
            "direct",
            "abort",
            "delay",
            "mirrored",
            "shadow",
            "shadow2",
            "cors",
        ):
            self.ups[host] = {"": m.upstream(host)}
            m.service(host, self.ups[host].values())
        m.rule("rules", RULES)
        self.client: Sidecar = m.start()
        self.canary: Sidecar = m.start("canary", labels={"track": "canary"})

    def one(self, host: str) -> Upstream:
        return self.ups[host][""]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("rules-http"))
    try:
        yield w
    finally:
        w.mesh.stop()


def ok(reply: Reply) -> Reply:
    assert reply.status == 200, (reply.status, reply.body[:300])
    return reply


def backend(
    client: Sidecar,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> str:
    """The upstream that answered ``method path`` (which must succeed)."""
    return ok(client.request(host, path, method=method, headers=headers)).backend


def ready(client: Sidecar, host: str, expected: str, path: str = "/") -> None:
    """Wait until ``host`` is routed (to ``expected``) by ``client``'s sidecar."""
    client.wait_for(lambda: backend(client, host, path) == expected, f"{host} routes")


def test_header_present_prefix_regex_and_without_headers(world: World) -> None:
    """http[].match[].headers present ({}), prefix, regex; withoutHeaders (a missing
    header does not match the excluded value)."""
    c = world.client
    ready(c, "hdr", "hdr-d")
    assert backend(c, "hdr", headers={"x-p": "anything"}) == "hdr-a"
    assert backend(c, "hdr", headers={"x-pre": "abc"}) == "hdr-b"
    assert backend(c, "hdr", headers={"x-pre": "xab"}) == "hdr-d"
    assert backend(c, "hdr", headers={"x-re": "v12"}) == "hdr-e"
    assert backend(c, "hdr", headers={"x-re": "v12x"}) == "hdr-d"  # regex matches whole
    assert backend(c, "hdr", "/w") == "hdr-c"
    assert backend(c, "hdr", "/w", headers={"x-user": "bob"}) == "hdr-c"
    assert backend(c, "hdr", "/w", headers={"x-user": "admin"}) == "hdr-d"


def test_query_method_authority_scheme_and_ignore_uri_case(world: World) -> None:
    """http[].match[].queryParams exact and regex, method, authority, scheme,
    ignoreUriCase."""
    c = world.client
    ready(c, "req", "req-z")
    assert backend(c, "req", "/CASE") == "req-a"
    assert backend(c, "req", "/case") == "req-a"
    assert backend(c, "req", "/cases") == "req-z"
    assert backend(c, "req", "/x?mode=fast") == "req-b"
    assert backend(c, "req", "/x?mode=slow") == "req-z"
    assert backend(c, "req", "/x?id=42") == "req-b"
    assert backend(c, "req", "/x?id=4x") == "req-z"
    assert backend(c, "req", "/x", method="DELETE") == "req-c"
    assert backend(c, "req.default.svc.cluster.local", "/x") == "req-d"
    assert backend(c, "req.default", "/x") == "req-z"
    assert backend(c, "req", "/scheme") == "req-e"  # plain HTTP: :scheme is http


def test_source_labels_and_match_gateways_decide_per_proxy(world: World) -> None:
    """http[].match[].sourceLabels: the canary sidecar (track=canary) and the plain
    client get different routes for one host; match gateways: a block bound to another
    gateway is not for sidecars, one bound to ``mesh`` is."""
    ready(world.client, "src", "src-a")
    ready(world.canary, "src", "src-b")
    assert {backend(world.client, "src") for _ in range(5)} == {"src-a"}
    assert {backend(world.canary, "src") for _ in range(5)} == {"src-b"}
    assert backend(world.client, "src", headers={"x-gw": "1"}) == "src-d"
    assert world.ups["src"]["c"].hits == 0


def test_redirect_status_and_location(world: World) -> None:
    """http[].redirect uri, authority, port, scheme, redirectCode (301 default, 303,
    308) and derivePort FROM_REQUEST_PORT."""
    c = world.client
    c.wait_for(lambda: c.request("redir", "/old").status == 308, "redirects")
    reply = c.request("redir", "/old?q=1")
    assert reply.status == 308 and reply.headers["location"] == "http://redir/new?q=1"
    reply = c.request("redir", "/away")
    assert reply.status == 301
    assert reply.headers["location"] == "https://elsewhere.example:8443/away"
    reply = c.request("redir", "/see")
    assert reply.status == 303
    assert reply.headers["location"] == f"http://redir:{world.mesh.port}/other"
    assert world.one("redir").hits == 0
    assert backend(c, "redir", "/else") == "redir"


def test_rewrite_seen_by_the_backend(world: World) -> None:
    """http[].rewrite uri (replaces the matched prefix), authority (Host), and
    uriRegexRewrite."""
    c = world.client
    c.wait_for(lambda: ok(c.request("rw", "/api/items")).json()["path"] == "/v2/items", "rw")
    seen = world.one("rw").seen[-1]
    assert seen.path == "/v2/items" and seen.headers["host"] == "backend.internal"
    ok(c.request("rw", "/re/abc/rest/of/it"))
    assert world.one("rw").seen[-1].path == "/rest/of/it/abc"
    ok(c.request("rw", "/plain"))
    seen = world.one("rw").seen[-1]
    assert seen.path == "/plain" and seen.headers["host"] == "rw"


def test_direct_response_status_and_body(world: World) -> None:
    """http[].directResponse status with body string and bytes, and without body."""
    c = world.client
    c.wait_for(lambda: c.request("direct", "/teapot").status == 418, "direct responses")
    reply = c.request("direct", "/teapot")
    assert reply.body == b"short and stout" and reply.backend == ""
    reply = c.request("direct", "/bin")
    assert reply.status == 200 and reply.body == BINARY
    reply = c.request("direct", "/empty")
    assert reply.status == 204 and reply.body == b""
    assert world.one("direct").hits == 0


def test_fault_abort_at_its_percentage(world: World) -> None:
    """http[].fault.abort httpStatus with percentage: 100 % always, 30 % roughly."""
    c = world.client
    c.wait_for(lambda: c.request("abort", headers={"x-all": "1"}).status == 503, "faults")
    assert c.request("abort", headers={"x-all": "1"}).backend == ""
    before = world.one("abort").hits
    counts = Counter(c.request("abort").status for _ in range(300))
    # 90 expected: binomial sd 7.9; ±40 is over 5 sd
    assert 50 <= counts[418] <= 130, counts
    assert counts[418] + counts[200] == 300, counts
    assert world.one("abort").hits - before == counts[200]


def test_fault_delay_adds_the_delay(world: World) -> None:
    """http[].fault.delay fixedDelay with percentage 100: the answer takes at least the
    delay (no upper bound: the machine is shared)."""
    c = world.client
    ready(c, "delay", "delay", "/slow")
    started = time.monotonic()
    assert backend(c, "delay", "/slow") == "delay"
    # Envoy's timers tick in whole milliseconds and can fire just under the delay as
    # measured here: allow 10 ms (a request without the fault takes ~1 ms)
    assert time.monotonic() - started >= 0.39


def test_mirror_reaches_the_shadow(world: World) -> None:
    """http[].mirror with mirrorPercentage, and mirrors[] with percentage (0 = never):
    the caller gets the primary's answer, the shadow gets a copy (Host ``-shadow``)."""
    c = world.client
    shadow, shadow2 = world.one("shadow"), world.one("shadow2")
    ready(c, "mirrored", "mirrored", "/warm")
    assert backend(c, "mirrored", "/one-copy") == "mirrored"
    c.wait_for(lambda: any(s.path == "/one-copy" for s in shadow.seen), "the mirrored copy")
    copy = next(s for s in shadow.seen if s.path == "/one-copy")
    assert copy.headers["host"].startswith("mirrored") and "-shadow" in copy.headers["host"]
    assert backend(c, "mirrored", "/many") == "mirrored"
    c.wait_for(lambda: any(s.path == "/many" for s in shadow.seen), "the mirrors[] copy")
    assert shadow2.hits == 0


def test_cors_preflight_answered(world: World) -> None:
    """http[].corsPolicy allowOrigins (exact, regex), allowMethods, allowHeaders,
    exposeHeaders, maxAge, allowCredentials: Envoy answers the preflight itself."""
    c = world.client
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}

    def answered() -> bool:
        reply = c.request("cors", method="OPTIONS", headers=preflight)
        return reply.headers.get("access-control-allow-origin") == "https://app.example"

    c.wait_for(answered, "CORS preflights")
    before = world.one("cors").hits
    reply = c.request("cors", method="OPTIONS", headers=preflight)
    assert reply.status == 200 and reply.backend == ""
    assert reply.headers["access-control-allow-methods"] == "GET,POST"
    assert reply.headers["access-control-allow-headers"] == "x-custom"
    assert reply.headers["access-control-max-age"] == "3600"
    assert reply.headers["access-control-allow-credentials"] == "true"
    regex = {**preflight, "Origin": "https://shop.trusted.example"}
    reply = c.request("cors", method="OPTIONS", headers=regex)
    assert reply.headers["access-control-allow-origin"] == "https://shop.trusted.example"
    assert world.one("cors").hits == before
    evil = {**preflight, "Origin": "https://evil.example"}
    reply = c.request("cors", method="OPTIONS", headers=evil)
    assert "access-control-allow-origin" not in reply.headers
    reply = ok(c.request("cors", headers={"Origin": "https://app.example"}))
    assert reply.headers["access-control-allow-origin"] == "https://app.example"
    assert reply.headers["access-control-expose-headers"] == "x-backend"


def test_header_operations_seen_by_backend_and_client(world: World) -> None:
    """http[].headers request/response set, add, remove; route[].headers per
    destination (request set, response add), and ``host`` set as an authority rewrite."""
    c = world.client
    a = world.ups["hdrops"]["a"]
    ready(c, "hdrops", "hdrops-a")
    sent = {"x-set": "zero", "x-add": "zero", "x-drop": "bye", "x-echo-header": "x-gone=1"}
    reply = ok(c.request("hdrops", "/ops", headers=sent))
    seen = a.seen[-1]
    assert seen.headers["x-set"] == "one"
    assert [v for k, v in seen.raw_headers if k == "x-set"] == ["one"]
    assert [v for k, v in seen.raw_headers if k == "x-add"] == ["zero", "two"]
    assert "x-drop" not in seen.headers
    assert seen.headers["host"] == "renamed.example"
    assert reply.headers["x-resp-set"] == "one"
    assert [v for k, v in reply.raw_headers if k == "x-resp-add"] == ["two"]
    assert "x-gone" not in reply.headers
    for _ in range(40):
        reply = ok(c.request("hdrops", "/split"))
        letter = reply.backend[-1]
        assert reply.headers["x-from"] == letter
        assert world.ups["hdrops"][letter].seen[-1].headers["x-dest"] == letter
