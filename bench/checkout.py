"""Multi-file changes → how many pushes a real ADS client receives, and how soon.

A running xdsd serves a directory of 100 Service files that is a real git repository
with two branches, ``a`` (every service on port 9080) and ``b`` (9081). A real ADS
client (``tests/xds_clients.AdsClient``, subscribed to every cluster) records each
version it is sent. Three ways of changing many files are timed and counted:

- ``git``: ``git checkout`` between the branches (100 files rewritten: git unlinks and
  creates each file, then writes it);
- ``rsync``: each of the 100 files written to a dot temp name, then renamed over the
  old one (what rsync does);
- ``editor``: one file saved the way vim does (a ``4913`` probe, the old file renamed
  to a ``~`` backup, the new one written, the backup removed): the file is missing for
  a moment.

For each change: the versions the client got until the final state (all services on the
new port; 1 is coalesced, more means a half-applied state was pushed), the time from
the end of the change (the command returned, the last rename) to the final version
arriving, and whether a load was refused along the way ("config refused" in the log).

``--baseline DIR`` runs, alternately with this tree, the xdsd of DIR (a ``git worktree``
of another commit: ``PYTHONPATH=DIR``, ``PYTHONSAFEPATH=1``), for side-by-side figures.

Usage: ``python -m bench checkout [ROUNDS] [--baseline DIR]`` (ROUNDS, default 10: the
changes of each kind per tree).
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.serving.test_checkout import SERVICE, SERVICES, commit_branch, git
from tests.harness import Xdsd, wait_until
from tests.xds_clients import AdsClient

_CLUSTER = re.compile(r"^outbound\|(\d+)\|\|(s\d{3})\.")
PORTS = (9080, 9081)


def _text(i: int, port: int) -> str:
    return SERVICE.format(name=f"s{i:03d}", port=port, high=i // 200, low=i % 200 + 1)


def _repository(repo: Path) -> None:
    """``repo``: a git repository with branches ``a`` (port 9080) and ``b`` (9081),
    ``a`` checked out."""
    repo.mkdir()
    git(repo, "init", "-q")
    for branch, port in zip(("a", "b"), PORTS, strict=True):
        commit_branch(repo, branch, port)
    git(repo, "checkout", "-q", "a")


def _state(response: discovery_pb2.DiscoveryResponse) -> dict[str, int]:
    """Service → port of its outbound cluster, from a CDS response."""
    state = {}
    for resource in response.resources:
        cluster = cluster_pb2.Cluster()
        resource.Unpack(cluster)
        found = _CLUSTER.match(cluster.name)
        if found:
            state[found.group(2)] = int(found.group(1))
    return state


def _uniform(port: int) -> dict[str, int]:
    return {f"s{i:03d}": port for i in range(SERVICES)}


def _git_checkout(repo: Path, port: int) -> dict[str, int]:
    git(repo, "checkout", "-q", "a" if port == PORTS[0] else "b")
    return _uniform(port)


def _rsync(repo: Path, port: int) -> dict[str, int]:
    for i in range(SERVICES):
        final = repo / f"s{i:03d}.toml"
        temp = repo / f".s{i:03d}.toml.{os.getpid()}"
        temp.write_text(_text(i, port))
        os.replace(temp, final)
    return _uniform(port)


def _editor(repo: Path, port: int, current: dict[str, int]) -> dict[str, int]:
    path = repo / "s000.toml"
    probe = repo / "4913"
    probe.write_text("")
    probe.unlink()
    backup = repo / "s000.toml~"
    os.rename(path, backup)
    path.write_text(_text(0, port))
    backup.unlink()
    return {**current, "s000": port}


def _one(
    xdsd: Xdsd, client: AdsClient, change: Callable[[], dict[str, int]]
) -> tuple[int, float, bool]:
    """Run ``change``; (versions received until its final state, seconds from the end
    of the change to that version arriving, a refusal logged meanwhile)."""
    before = len(client.responses)
    refused_before = xdsd.log().count("config refused")
    target = change()
    ended = time.perf_counter()
    while not client.responses[before:] or _state(client.responses[-1]) != target:
        if time.perf_counter() - ended > 30:
            raise RuntimeError("the change did not reach the client within 30 s")
        time.sleep(0.0005)
    arrived = time.perf_counter()
    versions = len(client.responses) - before
    return versions, arrived - ended, xdsd.log().count("config refused") > refused_before


def _run_tree(label: str, rounds: int, env: dict[str, str] | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = root / "config"
        _repository(repo)
        xdsd = Xdsd(repo, root, env=env)
        client = AdsClient(xdsd.grpc_port, f"bench-{label}", "client")
        results: dict[str, Any] = {}
        try:
            wait_until(lambda: client.responses and _state(client.responses[-1]) == _uniform(9080))
            for kind in ("git", "rsync", "editor"):
                samples: list[tuple[int, float, bool]] = []
                for _ in range(rounds):
                    current = _state(client.responses[-1])
                    port = PORTS[1] if current["s000"] == PORTS[0] else PORTS[0]
                    if kind == "git":
                        samples.append(_one(xdsd, client, lambda p=port: _git_checkout(repo, p)))
                    elif kind == "rsync":
                        samples.append(_one(xdsd, client, lambda p=port: _rsync(repo, p)))
                    else:
                        samples.append(
                            _one(xdsd, client, lambda p=port, c=current: _editor(repo, p, c))
                        )
                results[kind] = {
                    "versions": [s[0] for s in samples],
                    "refused": sum(1 for s in samples if s[2]),
                    "latencies_ms": [s[1] * 1000 for s in samples],
                }
        finally:
            client.stop()
            xdsd.stop()
    return results


def main(argv: list[str]) -> dict[str, Any]:
    args = list(argv)
    baseline = None
    if "--baseline" in args:
        at = args.index("--baseline")
        baseline = os.path.abspath(args[at + 1])
        del args[at : at + 2]
    rounds = int(args[0]) if args else 10
    trees: list[tuple[str, dict[str, str] | None]] = [("this tree", None)]
    if baseline is not None:
        trees.insert(0, ("baseline", {"PYTHONPATH": baseline, "PYTHONSAFEPATH": "1"}))
    results: dict[str, Any] = {label: {} for label, _ in trees}
    per_round = max(1, rounds // 2)
    done = 0
    while done < rounds:  # alternate the trees, a few rounds at a time
        n = min(per_round, rounds - done)
        for label, env in trees:
            got = _run_tree(label, n, env)
            for kind, r in got.items():
                mine = results[label].setdefault(
                    kind, {"versions": [], "latencies": [], "refused": 0}
                )
                mine["versions"] += r["versions"]
                mine["refused"] += r["refused"]
                mine["latencies"] += r["latencies_ms"]
        done += n
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    print(
        f"{'tree':<11}{'change':<8}{'n':>4}{'1 version':>11}{'max vers':>10}{'refused':>9}"
        f"{'median':>10}{'p90':>10}{'p99':>10}{'max':>10}"
    )
    table: dict[str, Any] = {}
    for label, kinds in results.items():
        for kind, r in kinds.items():
            versions, lat = r["versions"], sorted(r["latencies"])
            row = {
                "changes": len(versions),
                "one_version": sum(1 for v in versions if v == 1),
                "max_versions": max(versions),
                "versions_per_change": statistics.mean(versions),
                "refused": r["refused"],
                "median_ms": statistics.median(lat),
                "p90_ms": lat[int(0.9 * (len(lat) - 1))],
                "p99_ms": lat[int(0.99 * (len(lat) - 1))],
                "max_ms": lat[-1],
            }
            table.setdefault(label, {})[kind] = row
            print(
                f"{label:<11}{kind:<8}{row['changes']:>4}{row['one_version']:>11}"
                f"{row['max_versions']:>10}{row['refused']:>9}{row['median_ms']:>8.1f}ms"
                f"{row['p90_ms']:>8.1f}ms{row['p99_ms']:>8.1f}ms{row['max_ms']:>8.1f}ms"
            )
    return table
