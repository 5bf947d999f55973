"""A running xdsd whose inotify queue overflowed (the daemon stopped while more files
changed than the kernel queues) still sees changes in a directory created while events
were being lost: the watch set is built again after the overflow
(``sources/inotify.py``, ``TreeWatch.rewatch``), not only the config reloaded."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.harness import Xdsd, wait_until
from tests.xds_clients import AdsClient
from xdsd.sources import inotify

pytestmark = pytest.mark.skipif(not inotify.available(), reason="needs Linux inotify")

SERVICE = """kind = "Service"
name = "{name}"

[[ports]]
name = "http"
number = 9080
protocol = "HTTP"

[[endpoints]]
address = "10.1.0.{n}"
"""
_NAME = re.compile(r"^outbound\|\d+\|\|([a-z]+)\.")


def _services(client: AdsClient) -> set[str]:
    """The services of the outbound clusters in the client's last response."""
    if not client.responses:
        return set()
    response: discovery_pb2.DiscoveryResponse = client.responses[-1]
    names = set()
    for resource in response.resources:
        cluster = cluster_pb2.Cluster()
        resource.Unpack(cluster)
        found = _NAME.match(cluster.name)
        if found:
            names.add(found.group(1))
    return names


def test_a_directory_created_during_a_queue_overflow_is_watched(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 50000:
        pytest.skip(f"max_queued_events is {limit}: too many files to write")
    config = tmp_path / "config"
    (config / "services").mkdir(parents=True)
    (config / "services" / "a.toml").write_text(SERVICE.format(name="a", n=1))
    (config / ".scratch").mkdir()  # dot-names are watched but never loaded
    root = os.path.realpath(config)
    xdsd = Xdsd(config, tmp_path)
    client = AdsClient(xdsd.grpc_port, "client-1", "client")
    try:
        wait_until(lambda: "a" in _services(client), what="service a at the client")
        os.kill(xdsd.proc.pid, signal.SIGSTOP)  # reads nothing while the queue fills
        try:
            for i in range(limit // 2 + 100):  # each file: IN_CREATE and IN_CLOSE_WRITE
                (config / ".scratch" / f"f{i}").write_bytes(b"")
            (config / "more").mkdir()  # its IN_CREATE is lost
        finally:
            os.kill(xdsd.proc.pid, signal.SIGCONT)
        mark = len(xdsd.log())

        def overflow_reloaded() -> bool:
            """The overflow was read (the root reported) and its reload is done."""
            log = xdsd.log()[mark:]
            detected = log.find(f"e.g. {root}\n")
            return detected >= 0 and "config reloaded: no change" in log[detected:]

        wait_until(overflow_reloaded, what="the reload of the whole directory")
        (config / "more" / "b.toml").write_text(SERVICE.format(name="b", n=2))
        wait_until(
            lambda: _services(client) == {"a", "b"},
            what="service b, written in the directory created during the overflow",
        )
    finally:
        client.stop()
        xdsd.stop()
