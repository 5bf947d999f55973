"""``xdsd demo`` as a newcomer runs it: a real process tree (xdsd, five Envoys, four
applications), requests through its gateway, an edit of the canary file it names, and a
stop that leaves nothing behind — on Ctrl-C, when a child dies, and when the demo itself is
killed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import http_get, loopback_block, port_open, wait_until, write_atomically

CANARY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"""

GATEWAY_API_CANARY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews}}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: reviews, port: 9080}}
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: {v1}
    - name: reviews-v2
      port: 9080
      weight: {v2}
"""


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    out: Path
    gateway: tuple[str, int]
    canary: Path
    pids: list[int]
    pgid: int
    banner: str = ""

    def reviews_version(self) -> str:
        """The reviews version that answered one request through the gateway."""
        status, _, body = http_get(*self.gateway, "/")
        assert status == 200, body
        page = json.loads(body)
        assert page["service"] == "productpage"
        (reviews,) = page["calls"]
        assert reviews["service"] == "reviews"
        if reviews["version"] == "v2":  # v2 calls ratings through its own sidecar
            assert [c["service"] for c in reviews["calls"]] == ["ratings"]
        return str(reviews["version"])


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Every live process whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    found.append(int(entry.name))
    return found


def assert_nothing_left(demo: Demo, *, reaped: bool = True) -> None:
    """No process the demo printed is alive, nor any process in its children's group;
    ``reaped``: not even a zombie (the demo waited for them)."""
    wait_until(
        lambda: not any(alive(p) for p in demo.pids) and not group_members(demo.pgid),
        timeout=30,
        what="every process of the demo to be gone",
    )
    if reaped:
        with pytest.raises(ProcessLookupError):
            os.killpg(demo.pgid, 0)
    assert not port_open(*demo.gateway)


@contextlib.contextmanager
def running_demo(tmp_path: Path, *args: str) -> Iterator[Demo]:
    """``xdsd demo`` (with ``args``) until its banner; stopped, its group killed, after."""
    out = tmp_path / "demo.out"
    block = loopback_block()
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "demo",
                "--dir",
                str(tmp_path / "demo"),
                "--block",
                block,
                *args,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Demo(proc, out, ("", 0), Path(), [], 0)
    try:

        def banner() -> str | None:
            text = out.read_text()
            done = "Ctrl-C stops everything" in text or proc.poll() is not None
            return text if done else None

        text = wait_until(banner, timeout=180, what="the demo to print its banner")
        url = re.search(r"curl http://([\d.]+):(\d+)/", text)
        canary = re.search(r"edit (\S+reviews\.yaml)", text)
        group = re.search(r"process group (\d+)", text)
        assert url and canary and group, text
        started.gateway = (url[1], int(url[2]))
        started.canary = Path(canary[1])
        started.pgid = int(group[1])
        started.pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        started.banner = text
        assert url[1].startswith(block + ".")
        assert len(started.pids) == 10, text  # xdsd, five Envoys, four applications
        yield started
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        for pgid in (proc.pid, started.pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pgid:
                    os.killpg(pgid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with running_demo(tmp_path) as started:
        yield started


@pytest.fixture
def gateway_demo(tmp_path: Path) -> Iterator[Demo]:
    with running_demo(tmp_path, "--api", "gateway") as started:
        yield started


def test_demo_serves_shifts_traffic_and_stops_on_ctrl_c(demo: Demo) -> None:
    assert demo.canary.read_text().count("weight:") == 2
    assert {demo.reviews_version() for _ in range(10)} == {"v1"}

    write_atomically(demo.canary, CANARY.format(v1=0, v2=100))
    wait_until(lambda: demo.reviews_version() == "v2", what="reviews v2 to get the traffic")
    assert {demo.reviews_version() for _ in range(10)} == {"v2"}

    write_atomically(demo.canary, CANARY.format(v1=50, v2=50))
    seen: set[str] = set()
    wait_until(
        lambda: seen.add(demo.reviews_version()) or seen == {"v1", "v2"},
        what="both versions to answer under 50/50",
    )

    demo.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert demo.proc.wait(60) == 0
    assert_nothing_left(demo)
    assert "xdsd demo: stopped." in demo.out.read_text()


def test_the_banner_leads_to_the_status_page_status_and_a_mistake(demo: Demo) -> None:
    """The banner's steps in order, as printed: the status page opens, the `xdsd status`
    command it prints works as written (plain `xdsd status` would ask 127.0.0.1:19001),
    and the deliberate mistake shows up there with file and line."""
    text = demo.banner
    page = re.search(r"1\. look: +open http://([\d.]+):(\d+)/ ", text)
    command = re.search(r"^ +(.+ status --admin [\d.]+:\d+)$", text, re.MULTILINE)
    assert page and command, text
    assert text.index("1. look:") < text.index("2. try:") < text.index("3. by name:")
    assert text.index("3. by name:") < text.index("5. mistake:") < text.index("6. your own:")
    status, _, body = http_get(page[1], int(page[2]), "/")
    assert status == 200 and b"<html" in body.lower()

    def status_output() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shlex.split(command[1]), capture_output=True, text=True, timeout=60, check=False
        )

    names = ("ingressgateway", "productpage-v1", "reviews-v1", "reviews-v2", "ratings-v1")
    wait_until(
        lambda: (done := status_output()).returncode == 0 and all(n in done.stdout for n in names),
        what="the printed xdsd status to show every proxy in sync",
    )
    write_atomically(demo.canary, CANARY.format(v1=100, v2=-1))
    done = wait_until(
        lambda: (done := status_output()).stdout.count("config error:") and done,
        what="xdsd status to show the mistake",
    )
    assert f"config error: {demo.canary}:11: http[0].route[1].weight" in done.stdout
    assert "the last good configuration is being served" in done.stdout
    assert {demo.reviews_version() for _ in range(5)} == {"v1"}


def test_services_answer_by_name_as_the_banner_says(demo: Demo) -> None:
    """Step 3 of the banner: the printed ``curl --resolve`` reaches productpage on its
    virtual address; as root, the printed shell's /etc/resolv.conf names productpage's
    sidecar, whose DNS answers, so ``curl http://productpage:9080/`` and
    ``http://reviews:9080/`` work unchanged in it (and the canary applies to them)."""
    text = demo.banner
    resolve = re.search(r"3\. by name: +(curl --resolve \S+ \S+)$", text, re.MULTILINE)
    assert resolve, text
    vip = resolve[1].split()[2].rsplit(":", 1)[1]
    assert not vip.startswith(demo.gateway[0].rsplit(".", 1)[0] + ".")  # a block of its own
    page = json.loads(curl(shlex.split(resolve[1])))
    assert page["service"] == "productpage" and page["calls"][0]["service"] == "reviews"
    if os.geteuid() != 0:
        assert "as root the demo's DNS is on port 53" in text
        return
    shell = re.search(r"unshare --mount sh -c 'mount --bind (\S+) /etc/resolv\.conf", text)
    assert shell, text
    resolv_conf = shell[1]
    assert Path(resolv_conf).read_text().count("nameserver") >= 1

    def by_name(url: str) -> dict[str, object]:
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        argv = ["unshare", "--mount", "sh", "-c", script, resolv_conf, "curl", "-sS", url]
        return dict(json.loads(curl(argv)))

    assert by_name("http://productpage:9080/")["service"] == "productpage"
    assert by_name("http://reviews:9080/") == {"service": "reviews", "version": "v1", "calls": []}
    write_atomically(demo.canary, CANARY.format(v1=0, v2=100))
    wait_until(
        lambda: by_name("http://reviews.default:9080/")["version"] == "v2",
        what="reviews v2 by name after the canary edit",
    )


def curl(argv: list[str]) -> str:
    """What ``argv`` (a curl command) prints; AssertionError with its stderr if it fails."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def test_demo_stops_everything_when_a_child_dies(demo: Demo) -> None:
    envoy = demo.pids[1]  # the gateway's Envoy
    os.kill(envoy, signal.SIGKILL)
    assert demo.proc.wait(60) == 1
    assert_nothing_left(demo)
    assert "envoy-ingressgateway exited" in demo.out.read_text()


def test_children_die_with_the_demo_when_it_is_killed(demo: Demo) -> None:
    demo.proc.kill()  # no chance to clean up: the children's parent-death signal does
    demo.proc.wait(10)
    assert_nothing_left(demo, reaped=False)  # orphans are reaped by init, not by us


def test_gateway_api_demo_serves_by_its_gateway_and_the_canary_moves_weights(
    gateway_demo: Demo,
) -> None:
    """``xdsd demo --api gateway``: the gateway proxy is the Gateway's by its
    ``gateway-name`` label (requests through it reach productpage by the ingress
    HTTPRoute), the canary is a GAMMA HTTPRoute whose weights move the callers' traffic,
    the conditions are on /debug/errors, and a bad weight is named at its file."""
    demo = gateway_demo
    text = demo.canary.read_text()
    assert "kind: HTTPRoute" in text and "kind: Service, name: reviews" in text
    assert text.count("weight:") == 2 and "an HTTPRoute's" in demo.banner
    assert {demo.reviews_version() for _ in range(10)} == {"v1"}
    admin = re.search(r"1\. look: +open http://([\d.]+):(\d+)/ ", demo.banner)
    assert admin, demo.banner

    def debug_errors() -> list[dict[str, object]]:
        status, _, body = http_get(admin[1], int(admin[2]), "/debug/errors")
        assert status == 200
        return list(json.loads(body))

    shown = {
        (e["object"], e["type"], e["status"])
        for e in debug_errors()
        if e["severity"] == "condition"
    }
    assert ("Gateway default/demo-gateway", "Programmed", "True") in shown
    assert ("HTTPRoute default/productpage-ingress", "Accepted", "True") in shown
    assert ("HTTPRoute default/reviews", "Accepted", "True") in shown
    status, _, page = http_get(admin[1], int(admin[2]), "/")
    assert status == 200 and b"Gateway API status" in page

    def absent() -> list[object]:
        status, _, body = http_get(admin[1], int(admin[2]), "/debug/expected")
        assert status == 200
        return list(json.loads(body)["absent"])

    # reviews-v1 and reviews-v2 (the backends' Services) share the reviews workloads'
    # addresses: their sidecars cover them, nothing is absent
    wait_until(lambda: absent() == [], what="no proxy absent")

    write_atomically(demo.canary, GATEWAY_API_CANARY.format(v1=0, v2=100))
    wait_until(lambda: demo.reviews_version() == "v2", what="reviews v2 to get the traffic")
    assert {demo.reviews_version() for _ in range(10)} == {"v2"}
    write_atomically(demo.canary, GATEWAY_API_CANARY.format(v1=50, v2=50))
    seen: set[str] = set()
    wait_until(
        lambda: seen.add(demo.reviews_version()) or seen == {"v1", "v2"},
        what="both versions to answer under 50/50",
    )

    write_atomically(demo.canary, GATEWAY_API_CANARY.format(v1=100, v2=-1))
    errors = wait_until(
        lambda: [e for e in debug_errors() if e["severity"] == "error"],
        what="the mistake to be reported",
    )
    (error,) = errors
    assert (error["path"], error["line"], error["field"]) == (
        str(demo.canary),
        14,
        "rules[0].backendRefs[1].weight",
    )
    assert demo.reviews_version() in ("v1", "v2")  # the last good configuration

    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(60) == 0
    assert_nothing_left(demo)
