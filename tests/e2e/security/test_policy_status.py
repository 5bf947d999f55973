"""Which security policies apply to a proxy, as operators see it: a real Envoy sidecar
whose node labels some policies select (and another does not), then
``/debug/config_dump``, ``/debug/clients``, the status page (parsed, and as headless
Chromium builds it) and ``xdsd status`` (table and JSON) name exactly those; removing a
policy's file takes it off everywhere, like any edit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.traffic_mesh import TrafficMesh
from tests.harness import Xdsd, wait_until, write_atomically

NODE = "reviews-sidecar"
LABELS = {"app": "reviews", "version": "v2"}

ALLOW = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-productpage, namespace: default}
spec:
  selector: {matchLabels: {app: reviews, version: v2}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
"""

OTHERS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-v1, namespace: default}
spec:
  selector: {matchLabels: {version: v1}}
  rules: [{}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: plaintext, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: DISABLE}
"""

#: What the sidecar's class is shown, while both files are there.
EXPECTED = [
    "AuthorizationPolicy default/allow-productpage (ALLOW)",
    "AuthorizationPolicy istio-system/deny-admin (DENY)",
    "PeerAuthentication default/plaintext",
]


class World:
    def __init__(self, root: Path) -> None:
        self.mesh = TrafficMesh(root)
        self.allow = self.mesh.config / "security" / "allow.yaml"
        self.allow.parent.mkdir()
        self.allow.write_text(ALLOW)
        (self.allow.parent / "others.yaml").write_text(OTHERS)
        self.sidecar = self.mesh.start("reviews", labels=LABELS)
        assert self.mesh.xdsd is not None
        self.xdsd: Xdsd = self.mesh.xdsd
        self.admin = f"127.0.0.1:{self.xdsd.admin_port}"

    def page(self) -> str:
        with urllib.request.urlopen(f"http://{self.admin}/", timeout=10) as r:
            return str(r.read().decode())

    def status(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "xdsd.cli", "status", "--admin", self.admin, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode in (0, 1), proc.stderr
        return proc.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("policy-status"))
    try:
        yield w
    finally:
        w.mesh.stop()


def _names(policies: dict[str, Any]) -> list[str]:
    kinds = {
        "authorization_policies": "AuthorizationPolicy",
        "peer_authentications": "PeerAuthentication",
        "request_authentications": "RequestAuthentication",
    }
    out = []
    for key, kind in kinds.items():
        for p in policies[key]:
            action = f" ({p['action']})" if "action" in p else ""
            out.append(f"{kind} {p['namespace']}/{p['name']}{action}")
    return out


class Page(HTMLParser):
    """The text of the sidecar's row in the proxies table and of each row of the
    policies section (by class)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.proxy = ""
        self.classes: dict[str, str] = {}
        self._where: tuple[str, str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and a.get("data-node") == NODE:
            self._where = ("proxy", "")
        elif tag == "tr" and "data-class" in a:
            self._where = ("class", a["data-class"])
            self.classes[a["data-class"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._where = None

    def handle_data(self, data: str) -> None:
        if self._where == ("proxy", ""):
            self.proxy += data
        elif self._where is not None:
            self.classes[self._where[1]] += data + " "


def _class_of(world: World) -> str:
    (client,) = [c for c in world.xdsd.admin(f"/debug/clients?node={NODE}") if c["connected"]]
    return str(client["class"])


def test_config_dump_and_clients_name_the_policies_that_select_the_proxy(world: World) -> None:
    dump = world.xdsd.admin(f"/debug/config_dump?node={NODE}")
    assert _names(dump["policies"]) == EXPECTED
    (port,) = (x for x in dump["resources"]["listeners"] if x["name"].startswith("inbound|"))
    number = str(port["address"]["socket_address"]["port_value"])
    assert dump["policies"]["mtls"] == {number: "DISABLE"}
    allow = dump["policies"]["authorization_policies"][0]
    assert allow["origin"] == f"{world.allow}:1"
    (client,) = [c for c in dump["clients"] if c["connected"]]
    assert client["policies"] == dump["policies"]
    assert "only-v1" not in json.dumps(world.xdsd.admin("/debug/clients"))


def test_status_page_names_them_per_proxy_and_per_class(world: World) -> None:
    page = Page(world.page())
    for name in EXPECTED:
        assert name in page.proxy, page.proxy
    shown = page.classes[_class_of(world)]
    assert "default/allow-productpage (ALLOW)" in shown and "default/plaintext" in shown
    assert "only-v1" not in world.page()


def test_xdsd_status_lists_them(world: World) -> None:
    table = world.status()
    below = table.split("security policies:\n", 1)[1]
    assert f"  {NODE}: {', '.join(EXPECTED)}\n" in below, table
    (proxy,) = [p for p in json.loads(world.status("--json"))["proxies"] if p["node_id"] == NODE]
    assert proxy["policies"] == EXPECTED


def test_status_page_in_headless_chromium(world: World, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"http://{world.admin}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    assert ", ".join(EXPECTED) in page.proxy, page.proxy
    assert "istio-system/deny-admin (DENY)" in page.classes[_class_of(world)]


def test_removing_a_policy_takes_it_off_everywhere(world: World) -> None:
    """Last in the module: it changes the mesh."""
    world.allow.unlink()
    wait_until(
        lambda: (
            _names(world.xdsd.admin(f"/debug/config_dump?node={NODE}")["policies"]) == EXPECTED[1:]
        ),
        what="the removed policy gone from the config dump",
    )
    assert "allow-productpage" not in world.page()
    assert "allow-productpage" not in world.status()
    write_atomically(world.allow, ALLOW.replace("allow-productpage", "allow-again"))
    wait_until(
        lambda: "AuthorizationPolicy default/allow-again (ALLOW)" in world.status(),
        what="the new policy in xdsd status",
    )
