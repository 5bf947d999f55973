"""The admin server of a running xdsd with a real Envoy connected: /debug/clients,
/debug/config_dump, /debug/errors, /metrics and the status page (also in headless
Chromium), including a NACK carrying Envoy's own error text and a refused reload."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import Xdsd, wait_until, write_atomically
from tests.xds_clients import AdsClient

NODE = "client-sidecar"
TYPES = ("clusters", "endpoints", "listeners", "routes")

#: A raw Envoy cluster that is a valid proto (xdsd accepts it) but that Envoy refuses:
#: a STATIC cluster cannot name a host.
BAD_CLUSTER = {
    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "name": "raw-bad",
    "type": "STATIC",
    "connect_timeout": "1s",
    "load_assignment": {
        "cluster_name": "raw-bad",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "not-an-ip-address", "port_value": 1}
                            }
                        }
                    }
                ]
            }
        ],
    },
}


class World:
    def __init__(self, root: Path) -> None:
        self.mesh = TrafficMesh(root)
        self.web = self.mesh.upstream("web-v1", version="v1")
        self.mesh.service("web", [self.web])
        self.client: Sidecar = self.mesh.start("client")
        assert self.mesh.xdsd is not None
        self.xdsd: Xdsd = self.mesh.xdsd

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.xdsd.admin_port}{path}"

    def get(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) of an admin GET, errors included."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=10) as r:
                return r.status, r.headers["Content-Type"], r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read().decode()

    def node(self) -> dict[str, Any]:
        """The connected client of the sidecar, from /debug/clients?node=."""
        found = [c for c in self.xdsd.admin(f"/debug/clients?node={NODE}") if c["connected"]]
        assert len(found) == 1, found
        return found[0]  # type: ignore[no-any-return]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, content_type, text = self.get("/metrics")
        assert status == 200 and content_type.startswith("text/plain"), content_type
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def in_sync(self) -> dict[str, Any] | None:
        node = self.node()
        ok = all(node["types"].get(t, {}).get("state") == "in_sync" for t in TYPES)
        return node if ok else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("admin"))
    try:
        yield w
    finally:
        w.mesh.stop()


def _envoy_versions(world: World) -> dict[str, str]:
    """The version of each type Envoy says it runs (its own /config_dump)."""
    dump = world.client.envoy.admin_json("/config_dump")
    out = {}
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            out["clusters"] = config["version_info"]
        elif kind == "ListenersConfigDump":
            out["listeners"] = config["version_info"]
    return out


def test_a_connected_envoy_shows_with_the_versions_it_acked(world: World) -> None:
    assert world.client.request("web").backend == "web-v1"
    node = wait_until(world.in_sync, what="every type ACKed")
    assert node["transport"] == "ads"
    assert node["class"].startswith("sidecar client.default envoy/v3/ads in="), node["class"]
    for t in TYPES:
        status = node["types"][t]
        assert status["acked_version"] == status["sent_version"], (t, status)
        assert status["nack"] is None and status["acked_at"] >= status["sent_at"]
    # what xdsd says Envoy ACKed is what Envoy says it runs
    envoy = _envoy_versions(world)
    assert envoy == {t: node["types"][t]["acked_version"] for t in ("clusters", "listeners")}
    # and it is the current version of the node's class
    dump = world.xdsd.admin(f"/debug/config_dump?node={NODE}")
    assert dump["versions"]["clusters"] == envoy["clusters"]
    assert dump["versions"]["listeners"] == envoy["listeners"]


def test_config_dump_is_what_the_node_runs(world: World) -> None:
    wait_until(world.in_sync, what="every type ACKed")
    dump = world.xdsd.admin(f"/debug/config_dump?node={NODE}")
    assert dump["node_id"] == NODE and dump["connected"] and dump["class"]
    assert set(dump["resources"]) >= set(TYPES)
    envoy = world.client.envoy.admin_json("/config_dump")
    envoy_clusters = {
        c["cluster"]["name"]
        for config in envoy["configs"]
        for c in config.get("dynamic_active_clusters", [])
    }
    envoy_listeners = {
        entry["name"]
        for config in envoy["configs"]
        for entry in config.get("dynamic_listeners", [])
        if "active_state" in entry
    }
    assert {c["name"] for c in dump["resources"]["clusters"]} == envoy_clusters
    assert {x["name"] for x in dump["resources"]["listeners"]} == envoy_listeners
    web = next(c for c in dump["resources"]["clusters"] if "|web." in c["name"])
    assert web["@type"].endswith("envoy.config.cluster.v3.Cluster") and web["type"] == "EDS"
    endpoints = {a["cluster_name"]: a for a in dump["resources"]["endpoints"]}[web["name"]]
    address = endpoints["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["address"] == world.web.host


def test_config_dump_of_an_unknown_node_is_404_naming_it(world: World) -> None:
    status, content_type, body = world.get("/debug/config_dump?node=nobody%3Chere%3E")
    assert status == 404 and content_type.startswith("application/json")
    assert "'nobody<here>'" in json.loads(body)["error"]
    status, _, body = world.get("/debug/config_dump")
    assert status == 400 and "node=ID" in json.loads(body)["error"]


def test_metrics_of_a_connected_envoy(world: World) -> None:
    node = wait_until(world.in_sync, what="every type ACKed")
    m = world.metrics()
    ads_clusters = (("transport", "ads"), ("type", "clusters"))
    assert m["xdsd_connected_clients", (("transport", "ads"),)] == 1
    for t in TYPES:
        labels = (("transport", "ads"), ("type", t))
        assert m["xdsd_connected_clients_by_type", labels] == 1
        assert m["xdsd_responses_total", labels] >= 1
        assert m["xdsd_acks_total", labels] >= 1
        assert m["xdsd_push_ack_seconds_count", (("type", t),)] >= 1
        assert m["xdsd_client_sync", (("state", "in_sync"), ("type", t))] == 1
    assert ("xdsd_nacks_total", ads_clusters) not in m
    assert m["xdsd_config_errors", ()] == 0 and m["xdsd_config_loaded", ()] == 1
    assert m["xdsd_reload_duration_seconds_count", (("outcome", "applied"),)] >= 1
    assert m["xdsd_build_info", (("version", "0.1.0"),)] == 1
    versions = {
        labels: v for (name, labels), v in m.items() if name == "xdsd_snapshot_version_info"
    }
    want = (
        ("class", node["class"]),
        ("type", "clusters"),
        ("version", node["types"]["clusters"]["acked_version"]),
    )
    assert versions.get(want) == 1, sorted(versions)[:5]


def test_status_page_shows_the_proxy_in_sync(world: World) -> None:
    wait_until(world.in_sync, what="every type ACKed")
    status, content_type, page = world.get("/")
    assert status == 200 and content_type.startswith("text/html")
    doc = Dom(page)
    row = doc.row(NODE)
    assert row["class"] == "proxy in_sync", row
    assert [doc.cell_class(NODE, t) for t in TYPES] == ["state in_sync"] * 4
    assert "1 proxy connected" in doc.text and "No errors or warnings." in doc.text


def test_a_nack_shows_with_envoys_error_text_everywhere(world: World) -> None:
    stats = world.client.envoy.stats
    rejected = stats().get("cluster_manager.cds.update_rejected", 0)
    raw = world.mesh.config / "envoy" / "bad.json"
    write_atomically(raw, json.dumps(BAD_CLUSTER))
    try:
        wait_until(
            lambda: stats().get("cluster_manager.cds.update_rejected", 0) > rejected,
            what="Envoy to reject the clusters",
        )
        nack = wait_until(
            lambda: world.node()["types"]["clusters"]["nack"], what="the NACK in /debug/clients"
        )
        # the text is Envoy's own: what it logs when it rejects the update
        assert "not-an-ip-address" in nack["message"], nack
        assert nack["message"] in world.client.envoy.log()
        assert world.node()["types"]["clusters"]["state"] == "nacked"
        assert nack["version"] == world.node()["types"]["clusters"]["sent_version"]

        m = world.metrics()
        assert m["xdsd_nacks_total", (("transport", "ads"), ("type", "clusters"))] >= 1
        assert m["xdsd_client_sync", (("state", "nacked"), ("type", "clusters"))] == 1

        doc = Dom(world.get("/")[2])
        assert doc.row(NODE)["class"] == "proxy nacked"
        assert doc.cell_class(NODE, "clusters") == "state nacked"
        assert nack["message"] in doc.text
        assert "1 NACKed" in doc.text
    finally:
        raw.unlink()
    # removing the bad cluster is the next change: sent, ACKed, the NACK cleared
    wait_until(world.in_sync, what="back in sync after the fix")
    assert world.node()["types"]["clusters"]["nack"] is None


def test_a_refused_reload_shows_with_file_and_line(world: World) -> None:
    rule = world.mesh.rule("web", BROKEN_RULE)
    try:
        errors = wait_until(lambda: world.xdsd.admin("/debug/errors"), what="the error")
        assert errors[0]["severity"] == "error" and errors[0]["path"].endswith("web.yaml")
        assert errors[0]["line"] == 9 and errors[0]["field"] == "http[0].route[0].weight"
        m = world.metrics()
        assert m["xdsd_config_errors", ()] == len([e for e in errors if e["severity"] == "error"])
        assert m["xdsd_config_reloads_refused_total", ()] >= 1
        assert m["xdsd_reload_duration_seconds_count", (("outcome", "refused"),)] >= 1
        assert m["xdsd_config_loaded", ()] == 1  # the last good configuration stays
        doc = Dom(world.get("/")[2])
        assert errors[0]["text"] in doc.text
        assert "last reload refused" in doc.text
        assert world.client.request("web").backend == "web-v1"  # still served
    finally:
        rule.unlink()
    wait_until(lambda: world.xdsd.admin("/debug/errors") == [], what="the error cleared")
    assert world.metrics()["xdsd_config_errors", ()] == 0


BROKEN_RULE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web}
      weight: -5
"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    return found


def test_status_page_in_headless_chromium(world: World, tmp_path: Path) -> None:
    """The page as a real browser builds it: the connected proxy's row, in sync."""
    chromium = _chromium()
    wait_until(world.in_sync, what="every type ACKed")
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*argv, "--dump-dom", world.url("/")], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    doc = Dom(dom.stdout)
    # the web service's endpoint has no sidecar: absent, one problem
    assert doc.title == "(1) xdsd status: 1 proxy", doc.title
    assert doc.row(NODE)["class"] == "proxy in_sync"
    assert [doc.cell_class(NODE, t) for t in TYPES] == ["state in_sync"] * 4
    assert doc.refresh == "5"
    shot = tmp_path / "status.png"
    done = subprocess.run(
        [*argv, f"--screenshot={shot}", "--window-size=1280,900", world.url("/")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000  # a rendered page, not a blank


GAMMA_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-route}}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: web}}
  - {{group: "", kind: Service, name: nope}}
  rules:
  - backendRefs: [{{name: web, port: {port}}}]
"""


def test_gateway_api_conditions_on_the_page_in_headless_chromium(
    world: World, tmp_path: Path
) -> None:
    """A GAMMA route with one parent that does not exist: its conditions are on
    /debug/errors and on the status page as a browser builds it, the one not met first,
    with the API's reason and the file; gone with the file."""
    chromium = _chromium()
    rule = world.mesh.rule("web-route", GAMMA_ROUTE.format(port=world.mesh.port))
    try:
        conditions = wait_until(
            lambda: [e for e in world.xdsd.admin("/debug/errors") if e["severity"] == "condition"],
            what="the route's conditions",
        )
        failing = [c for c in conditions if not c["holds"]]
        assert [(c["scope"], c["type"], c["reason"]) for c in failing] == [
            ("parentRefs[1]", "Accepted", "NoMatchingParent")
        ]
        assert failing[0]["path"] == str(rule) and failing[0]["status"] == "False"
        doc = _dump_dom(chromium, tmp_path / "profile", world.url("/"))
        assert "Gateway API status" in doc.text and "1 not met" in doc.text
        assert doc.conditions == ["condition error"] + ["condition in_sync"] * 2
        assert "NoMatchingParent" in doc.text and f"{rule}:" in doc.text
        assert world.client.request("web").backend == "web-v1"  # routed by the route
    finally:
        rule.unlink()
    wait_until(
        lambda: not [e for e in world.xdsd.admin("/debug/errors") if e["severity"] == "condition"],
        what="the conditions gone with the file",
    )


def test_a_rest_client_shows_with_its_transport(world: World) -> None:
    """A second sidecar polling over REST: listed, in sync, counted under ``rest``."""
    rest = world.mesh.start("poller", transport="rest")
    assert rest.request("web").backend == "web-v1"

    def synced() -> dict[str, Any] | None:
        found = [
            c for c in world.xdsd.admin("/debug/clients?node=poller-sidecar") if c["connected"]
        ]
        ok = found and all(found[0]["types"].get(t, {}).get("state") == "in_sync" for t in TYPES)
        return found[0] if ok else None

    client = wait_until(synced, what="the REST client in sync")
    assert client["transport"] == "rest"
    assert "/rest in=" in client["class"], client["class"]
    m = world.metrics()
    assert m["xdsd_connected_clients", (("transport", "rest"),)] == 1
    assert m["xdsd_connected_clients", (("transport", "ads"),)] == 1
    assert m["xdsd_acks_total", (("transport", "rest"), ("type", "clusters"))] >= 1
    doc = Dom(world.get("/")[2])
    assert doc.row("poller-sidecar")["class"] == "proxy in_sync"
    assert "2 proxies connected" in doc.text


def _dump_dom(chromium: str, profile: Path, url: str) -> Dom:
    """The page at ``url`` as headless Chromium builds it (its script run)."""
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "--dump-dom",
        url,
    ]
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return Dom(dom.stdout)


def test_stale_absent_filter_and_envoy_version_in_headless_chromium(
    world: World, tmp_path: Path
) -> None:
    """A client that never answers is *stale* (as in ``xdsd status``) after the
    daemon's ``stale_after``; the web endpoint, which has no sidecar, is listed as
    absent; the tab title counts both; the real Envoy's version is shown; the filter
    hides rows by state and service, with the script (``#state=``) and without it
    (``?state=``, the server)."""
    chromium = _chromium()
    wait_until(world.in_sync, what="every type ACKed")
    silent = AdsClient(world.xdsd.grpc_port, "sim-silent", "sim", mode="silent")
    try:

        def stale() -> bool:
            found = world.xdsd.admin("/debug/clients?node=sim-silent")
            return any(c["types"].get("clusters", {}).get("state") == "stale" for c in found)

        wait_until(stale, timeout=60, what="the silent client stale after stale_after (10 s)")
        web = world.xdsd.admin("/debug/expected")["absent"]
        assert [(a["namespace"], a["service"]) for a in web] == [("default", "web")], web

        doc = _dump_dom(chromium, tmp_path / "p1", world.url("/#state=stale"))
        # one stale proxy and one absent endpoint (the REST poller, if connected, is in sync)
        assert doc.title.startswith("(2) xdsd status: "), doc.title
        assert doc.row("sim-silent")["data-state"] == "stale"
        assert "hidden" not in doc.row("sim-silent")
        assert "hidden" in doc.row(NODE)  # hidden by the script: the server sent it all
        assert doc.cell_class("sim-silent", "clusters") == "state stale"
        assert "1 stale" in doc.text and "pending" not in doc.cells.values()
        assert doc.agents[NODE].startswith("envoy 1."), doc.agents  # the real Envoy's
        assert doc.agents["sim-silent"] == "envoy"
        (absent,) = doc.absent
        assert absent["data-service"] == "default/web" and "hidden" in absent
        assert absent["data-address"] == web[0]["address"]

        doc = _dump_dom(chromium, tmp_path / "p2", world.url("/#service=default/web"))
        assert "hidden" not in doc.absent[0] and "hidden" in doc.row("sim-silent")

        # without script: the form's GET, filtered on the server
        server = Dom(world.get("/?state=absent")[2])
        assert "hidden" in server.row(NODE) and "hidden" in server.row("sim-silent")
        assert "hidden" not in server.absent[0]
    finally:
        silent.stop()


class Dom(HTMLParser):
    """The parts of the status page the tests read: rows by node, cells by type."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.cells: dict[tuple[str, str], str] = {}
        self.refresh = ""
        self.title = ""
        #: The agent (Envoy version) cell of each proxy row, by node.
        self.agents: dict[str, str] = {}
        #: The attributes of each expected-but-absent row.
        self.absent: list[dict[str, str]] = []
        #: The class of each Gateway API condition row, in page order.
        self.conditions: list[str] = []
        self._agent = False
        self._row = ""
        self._in_title = False
        self._text: list[str] = []
        self.feed(page)
        self.text = "".join(self._text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-node" in a:
            self._row = a["data-node"]
            self.rows[self._row] = a
        elif tag == "tr" and a.get("data-state") == "absent":
            self.absent.append(a)
        elif tag == "tr" and a.get("class", "").startswith("condition"):
            self.conditions.append(a["class"])
        elif tag == "td" and "data-type" in a and self._row:
            self.cells[self._row, a["data-type"]] = a["class"]
        elif tag == "td" and a.get("class") == "agent" and self._row:
            self._agent = True
            self.agents[self._row] = ""
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a["content"]
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = ""
        elif tag == "title":
            self._in_title = False
        elif tag == "td":
            self._agent = False

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        if self._in_title:
            self.title += data
        if self._agent:
            self.agents[self._row] += data

    def row(self, node: str) -> dict[str, str]:
        assert node in self.rows, sorted(self.rows)
        return self.rows[node]

    def cell_class(self, node: str, type_name: str) -> str:
        return self.cells[node, type_name]
