"""A ``git checkout`` that rewrites many files under the config directory of a running
xdsd reaches a connected client as one new version of its clusters, never as a mix of
the two branches (the watcher's speculative loads: ``sources/watch.py``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.harness import Xdsd, wait_until
from tests.xds_clients import AdsClient

SERVICES = 100
SERVICE = """kind = "Service"
name = "{name}"

[[ports]]
name = "http"
number = {port}
protocol = "HTTP"

[[endpoints]]
address = "10.1.{high}.{low}"
"""
_PORT = re.compile(r"^outbound\|(\d+)\|\|s\d{3}\.")


def git(repo: Path, *args: str) -> None:
    """Run git in ``repo`` (an author of its own, output captured; raises on failure)."""
    subprocess.run(
        ["git", "-c", "user.name=xdsd", "-c", "user.email=xdsd@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


def commit_branch(repo: Path, name: str, port: int) -> None:
    """Commit on branch ``name`` every service at ``port``."""
    git(repo, "checkout", "-q", "-B", name)
    for i in range(SERVICES):
        text = SERVICE.format(name=f"s{i:03d}", port=port, high=i // 200, low=i % 200 + 1)
        (repo / f"s{i:03d}.toml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name)


def _ports(response: discovery_pb2.DiscoveryResponse) -> set[int]:
    """The ports of the ``sNNN`` services' outbound clusters in ``response``."""
    ports = set()
    for resource in response.resources:
        cluster = cluster_pb2.Cluster()
        resource.Unpack(cluster)
        found = _PORT.match(cluster.name)
        if found:
            ports.add(int(found.group(1)))
    return ports


def test_a_checkout_of_a_hundred_files_is_one_new_version(tmp_path: Path) -> None:
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "-q")
    commit_branch(repo, "a", 9080)
    commit_branch(repo, "b", 9081)
    git(repo, "checkout", "-q", "a")
    xdsd = Xdsd(repo, tmp_path)
    client = AdsClient(xdsd.grpc_port, "client-1", "client")  # a class outside the mesh
    try:
        wait_until(lambda: client.responses and _ports(client.responses[-1]) == {9080})
        for i, (branch, port) in enumerate([("b", 9081), ("a", 9080)] * 3):
            before = len(client.responses)
            git(repo, "checkout", "-q", branch)
            wait_until(
                lambda port=port: _ports(client.responses[-1]) == {port},  # type: ignore[misc]
                what=f"checkout {i} of {branch} to reach the client",
            )
            got = [_ports(r) for r in client.responses[before:]]
            assert got == [{port}], f"checkout {i} of {branch}: versions seen {got}"
        assert "config refused" not in xdsd.log()
    finally:
        client.stop()
        xdsd.stop()
