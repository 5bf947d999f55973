"""Logging never blocks the event loop (issue 14 #12): ``xdsd serve`` with its stdout and
stderr a pipe nobody reads keeps serving gRPC and REST through thousands of log lines
(beyond the pipe's 64 KB and the log queue), counts the lines it dropped in ``/metrics``,
and once the pipe is read again writes a line saying how many were dropped."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.harness import free_port, port_open, wait_until
from tests.paths import EXAMPLE_CONFIG
from tests.xds_clients import ADS_PATH, CDS


def _poll(port: int, node: str) -> int:
    body = json.dumps({"node": {"id": node, "cluster": "productpage"}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v3/discovery:clusters", data=body)
    with urllib.request.urlopen(request, timeout=10) as r:
        return int(r.status)


def _ads(port: int) -> discovery_pb2.DiscoveryResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="after", cluster="productpage"), type_url=CDS
        )
        call = channel.stream_stream(ADS_PATH)(iter([request.SerializeToString()]), timeout=10)
        first = discovery_pb2.DiscoveryResponse.FromString(next(call))
        call.cancel()
        return first


def test_a_pipe_nobody_reads_does_not_stop_serving(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    (tmp_path / "settings.toml").write_text("log_queue_lines = 100\n")
    grpc_port, rest_port, admin_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "--log-level",
            "debug",
            "serve",
            "--settings",
            str(tmp_path / "settings.toml"),
            "--config-dir",
            str(config),
            "--grpc",
            f"127.0.0.1:{grpc_port}",
            "--rest",
            f"127.0.0.1:{rest_port}",
            "--admin",
            f"127.0.0.1:{admin_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        wait_until(lambda: port_open("127.0.0.1", rest_port), what="xdsd to listen")
        # one DEBUG line (~200 bytes) per poll: far beyond the pipe's 64 KB and the queue
        for n in range(2000):
            assert _poll(rest_port, f"poller-{n % 10}") == 200
        assert _ads(grpc_port).type_url == CDS  # gRPC is served too
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        found = re.search(r"^xdsd_log_records_dropped_total (\S+)$", metrics, re.M)
        assert found is not None and float(found.group(1)) > 0, metrics[-2000:]
        # read the pipe at last: the backlog, then the line that counts the dropped ones
        seen: list[bytes] = []
        reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, b"")))
        reader.start()
        wait_until(
            lambda: any(b"log lines dropped" in line for line in seen),
            what="the dropped lines counted in the log",
        )
        assert _poll(rest_port, "poller-last") == 200
    finally:
        proc.terminate()
        proc.wait(10)
    reader.join(10)
    # shutdown wrote what was queued: the last lines of the log are about stopping
    assert any(b"stopp" in line.lower() or b"shut" in line.lower() for line in seen[-20:]), seen[
        -20:
    ]
