"""The status page's HTML: states per proxy and type, problems, versions; everything a
client or a config file controls is escaped."""

from __future__ import annotations

import html.parser
from datetime import UTC, datetime

from envoy.config.cluster.v3 import cluster_pb2

from xdsd.admin.status_page import StatusView, render_status_page
from xdsd.cache.cache import ClientIdentity, SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, Severity
from xdsd.resources import CLUSTER, ENDPOINT, Resource, Version

EVIL = '<script>alert("x")</script>&'


class Elements(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


def view(cache: SnapshotCache[str], **kw: object) -> StatusView:
    args: dict[str, object] = dict(
        version="1.2.3",
        started_at=1000.0,
        now=1000.0 + 3725,
        config_dir="/etc/xdsd",
        loaded=True,
        errors=(),
        warnings=(),
        clients=cache.clients(),
        snapshots={k: s for k in cache.keys() if (s := cache.get(k)) is not None},  # noqa: SIM118
    )
    args.update(kw)
    return StatusView(**args)  # type: ignore[arg-type]


def fleet() -> SnapshotCache[str]:
    cache: SnapshotCache[str] = SnapshotCache(clock=lambda: 4000.0)
    cluster = cluster_pb2.Cluster(name="a", type=cluster_pb2.Cluster.STATIC)
    cache.set(EVIL, Snapshot.build([Resource.of("a", cluster)]))
    cache.open_client("c1", node_id="good", key=EVIL, transport="ads")
    cache.record_sent("c1", CLUSTER, Version("v1"), "1")
    cache.record_ack("c1", CLUSTER, Version("v1"), "1")
    cache.open_client("c2", node_id=EVIL, key=EVIL, transport="ads")
    cache.record_sent("c2", CLUSTER, Version("v1"), "1")
    cache.record_ack("c2", CLUSTER, Version("v1"), "1")
    cache.record_sent("c2", CLUSTER, Version("v2"), "2")
    cache.record_nack("c2", CLUSTER, Version("v2"), "2", 13, f"rejected: {EVIL}")
    cache.record_sent("c2", ENDPOINT, Version("e1"), "3")
    cache.open_client("c3", node_id="gone", key=EVIL, transport="rest")
    cache.close_client("c3")
    return cache


def test_rows_per_proxy_worst_first_with_the_nack_text() -> None:
    page = render_status_page(view(fleet()))
    doc = parse(page)
    rows = [a for tag, a in doc.tags if tag == "tr" and "proxy" in (a.get("class") or "")]
    assert [(r["data-node"], r["class"]) for r in rows] == [
        (EVIL, "proxy nacked"),
        ("good", "proxy in_sync"),
    ]
    cells = [
        (a["data-type"], a["class"]) for tag, a in doc.tags if tag == "td" and "data-type" in a
    ]
    assert cells == [
        ("clusters", "state nacked"),
        ("endpoints", "state stale"),  # sent 725 s ago, no answer
        ("clusters", "state in_sync"),
        ("endpoints", "state none"),
    ]
    text = "".join(doc.text)
    assert f"rejected: {EVIL}" in text  # shown as text...
    assert "<script>alert" not in page  # ...never as markup (the page's own script aside)
    assert "1 NACKed" in text and "1 synced" in text and "2 proxies connected" in text
    assert "up 1 h 2 min" in text and "version 1.2.3" in text
    assert "Recently disconnected (1)" in text
    links = [a["href"] for tag, a in doc.tags if tag == "a" and "config_dump" in (a["href"] or "")]
    assert "/debug/config_dump?node=good" in links
    assert ("refresh", "5") in [
        (a.get("http-equiv"), a.get("content")) for tag, a in doc.tags if tag == "meta"
    ]


def test_problems_and_an_empty_fleet() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    error = Problem(f"rules/{EVIL}.yaml", 12, "http[0]", "must not be negative")
    warning = Problem("rules/b.yaml", 3, "", "no service defines host x", Severity.WARNING)
    page = render_status_page(view(cache, errors=(error,), warnings=(warning,)))
    doc = parse(page)
    text = "".join(doc.text)
    assert f"rules/{EVIL}.yaml:12: http[0]: must not be negative" in text
    assert "rules/b.yaml:3: warning: no service defines host x" in text
    assert "<script>alert" not in page
    assert "1 errors: last reload refused" in text
    assert "No proxy is connected." in text
    classes = [a.get("class") for tag, a in doc.tags if tag == "li"]
    assert classes == ["error", "warning"]
    assert "no configuration loaded" in "".join(
        parse(render_status_page(view(cache, loaded=False))).text
    )


def test_policies_per_class_and_under_each_proxy_escaped() -> None:
    policies = {
        EVIL: {
            "authorization_policies": [
                {"namespace": "default", "name": "allow-get", "action": "ALLOW", "origin": "a:3"},
                {"namespace": "default", "name": EVIL, "action": "DENY", "origin": EVIL},
            ],
            "peer_authentications": [{"namespace": "istio-system", "name": "mesh", "origin": ""}],
            "request_authentications": [],
            "mtls": {"9080": "STRICT"},
        }
    }
    page = render_status_page(view(fleet(), policies=policies))
    assert "<script>alert" not in page
    doc = parse(page)
    text = "".join(doc.text)
    assert (
        f"AuthorizationPolicy default/allow-get (ALLOW), AuthorizationPolicy default/{EVIL}" in text
    )
    rows = [a for tag, a in doc.tags if tag == "tr" and a.get("class") == "policies"]
    assert [r["data-class"] for r in rows] == [EVIL]
    cells = [a["data-kind"] for tag, a in doc.tags if tag == "td" and a.get("class") == "policy"]
    assert cells == ["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"]
    assert "istio-system/mesh" in text and "9080 STRICT" in text
    assert ("li", {"title": "a:3"}) in doc.tags


def test_no_policies_says_so() -> None:
    page = render_status_page(view(fleet(), policies={EVIL: {"mtls": {}}}))
    assert "No security policy applies to any node class." in "".join(parse(page).text)


def _identity(serial: str, not_before: float, not_after: float, token: str = "") -> ClientIdentity:
    return ClientIdentity(
        f"spiffe://mesh.test/ns/shop/sa/{EVIL}",
        serial,
        datetime.fromtimestamp(not_before, UTC),
        datetime.fromtimestamp(not_after, UTC),
        "token" if token else "certificate",
        token_id=token,
    )


def test_identity_and_expiry_per_proxy_with_the_ones_expiring_soon_flagged() -> None:
    cache = fleet()
    now = 1000.0 + 3725
    # 24 h life: fresh (2 h in), late (22 h in: past 3/4 of its life), none for c2.
    cache.record_identity("c1", _identity("0a1b", now - 7200, now + 79200, token=EVIL))
    cache.open_client("c4", node_id="late", key=EVIL, transport="ads")
    cache.record_identity("c4", _identity("0c2d", now - 79200, now + 7200))
    page = render_status_page(view(cache, clients=cache.clients(), now=now))
    assert EVIL not in page  # the token id and SPIFFE id are escaped too
    doc = parse(page)
    cells = {a.get("data-serial"): a for tag, a in doc.tags if tag == "td" and "data-serial" in a}
    assert set(cells) == {"0a1b", "0c2d"}
    assert cells["0a1b"]["class"] == "identity"
    assert cells["0c2d"]["class"] == "identity expiring"
    assert cells["0a1b"]["data-spiffe"] == f"spiffe://mesh.test/ns/shop/sa/{EVIL}"
    text = "".join(doc.text)
    assert "expires in 22 h 0 min" in text and "expires in 2 h 0 min · expiring soon" in text
    assert "2 with an identity" in text and "1 expiring soon" in text
    # With renewal set at 95 % of the life, two hours left of 24 is not late yet.
    page = render_status_page(view(cache, clients=cache.clients(), now=now, renew_fraction=0.95))
    assert "0 expiring soon" in page and "identity expiring" not in page


def test_no_identity_column_without_a_ca() -> None:
    page = render_status_page(view(fleet()))
    assert "<th>Identity</th>" not in page and "with an identity" not in page


def test_gateway_api_conditions_failing_first_escaped() -> None:
    cache: SnapshotCache[str] = SnapshotCache()
    conditions = (
        {
            "object": "Gateway shop/web",
            "scope": "",
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "",
            "holds": True,
            "path": "gw.yaml",
            "line": 3,
        },
        {
            "object": f"HTTPRoute shop/{EVIL}",
            "scope": "parentRefs[0]",
            "type": "Accepted",
            "status": "False",
            "reason": "NotAllowedByListeners",
            "message": EVIL,
            "holds": False,
            "path": "r.yaml",
            "line": 9,
        },
    )
    page = render_status_page(view(cache, conditions=conditions))
    assert "<script>alert" not in page
    doc = parse(page)
    text = "".join(doc.text)
    assert "Gateway API status" in text
    assert "2 objects, 2 conditions" in text and "1 not met" in text
    rows = [
        a.get("class")
        for tag, a in doc.tags
        if tag == "tr" and "condition" in (a.get("class") or "")
    ]
    assert rows == ["condition error", "condition in_sync"]
    assert "NotAllowedByListeners" in text and "r.yaml:9" in text
    assert "Gateway API status" not in "".join(parse(render_status_page(view(cache))).text)
