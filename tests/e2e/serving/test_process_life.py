"""Process life of a real ``xdsd serve`` with real signals: SIGTERM ends every stream with
UNAVAILABLE and exits 0 within the grace, a second SIGTERM exits at once, SIGHUP reloads
every file (seeing an edit the watcher could not)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh import EchoMesh, route_to, vs
from tests.harness import wait_until, write_atomically
from tests.xds_clients import AdsClient, UnreadingClient
from xdsd.app import SHUTDOWN_MESSAGE


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def _exit_code(proc: subprocess.Popen[bytes], what: str) -> int:
    wait_until(lambda: proc.poll() is not None, timeout=60, what=what)
    return int(proc.returncode)


def test_sigterm_ends_every_stream_with_unavailable_and_exits_0(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd()
    # Envoy logs a stream closed with UNAVAILABLE at debug level (it retries at once)
    envoy = mesh.start_envoy("grpc", extra=("--component-log-level", "config:debug"))
    mesh.wait_for("v1")
    client = AdsClient(xdsd.grpc_port, "sim-1", "sim")
    try:
        wait_until(lambda: client.responses, what="the simulated client's clusters")
        xdsd.proc.send_signal(signal.SIGTERM)
        assert _exit_code(xdsd.proc, "xdsd to exit") == 0, xdsd.log()[-3000:]
        wait_until(lambda: client.ended is not None, what="the stream to end")
        assert client.ended == ("UNAVAILABLE", SHUTDOWN_MESSAGE)
    finally:
        client.stop()
    log = xdsd.log()
    assert "SIGTERM: shutting down" in log
    assert "ended 2 streams with UNAVAILABLE" in log, log[-3000:]
    assert "stopped" in log.splitlines()[-1]
    # Envoy saw the status: gRPC code 14 (UNAVAILABLE) with xdsd's message
    wait_until(lambda: f"14, {SHUTDOWN_MESSAGE}" in envoy.log(), what="Envoy to log the status")
    assert envoy.alive()  # and keeps serving its last configuration
    assert mesh.ask() == "v1"


def test_shutdown_is_bounded_and_a_second_sigterm_exits_at_once(mesh: EchoMesh) -> None:
    # A client that never reads holds its stream open: the grace bounds the shutdown.
    xdsd = mesh.start_xdsd(extra=["--shutdown-grace", "1"])
    stuck = UnreadingClient(xdsd.grpc_port, "stuck-1", "sim")
    try:
        wait_until(lambda: "stream opened" in xdsd.log(), what="the stuck stream to open")
        xdsd.proc.send_signal(signal.SIGTERM)
        assert _exit_code(xdsd.proc, "xdsd to exit after the grace") == 0
    finally:
        stuck.stop()
    assert "1 stream still open after 1.0 s (clients not reading): cut" in xdsd.log()
    xdsd.stop()

    # With a grace far longer than the test waits, only the second signal can end it.
    mesh.xdsd = xdsd = mesh.start_xdsd(extra=["--shutdown-grace", "3600"])
    stuck = UnreadingClient(xdsd.grpc_port, "stuck-2", "sim")
    try:
        wait_until(lambda: "stream opened" in xdsd.log(), what="the stuck stream to open")
        xdsd.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "open streams get 3600.0 s" in xdsd.log(), what="shutdown to begin")
        assert xdsd.alive()
        xdsd.proc.send_signal(signal.SIGTERM)
        assert _exit_code(xdsd.proc, "xdsd to exit at once") == 128 + signal.SIGTERM
    finally:
        stuck.stop()
    assert "SIGTERM during shutdown: exiting now" in xdsd.log()


def test_sighup_rereads_every_file(mesh: EchoMesh) -> None:
    """The rules file is a symlink to a file outside the config directory: editing the
    target makes no event in the watched directory, so only SIGHUP's full check sees it."""
    outside = mesh.root / "outside"
    outside.mkdir()
    target = outside / "echo-vs.yaml"
    target.write_text(vs(route_to({"v1": 100})))
    mesh.rules.unlink()
    mesh.rules.symlink_to(target)
    xdsd = mesh.start_xdsd()
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")

    def routes_acked() -> str:
        (client,) = [c for c in xdsd.admin("/debug/clients") if c["connected"]]
        status = client["types"]["routes"]
        assert status["acked_version"] == status["sent_version"]
        return str(status["acked_version"])

    before = wait_until(routes_acked, what="routes ACKed")
    target.write_text(vs(route_to({"v2": 100})))  # invisible to the watcher
    # a visible edit (same content) makes a reload that reads only the file it names
    loads = xdsd.log().count("config reloaded: no change")
    write_atomically(
        mesh.config / "rules" / "echo-dr.yaml", (mesh.config / "rules" / "echo-dr.yaml").read_text()
    )
    wait_until(lambda: xdsd.log().count("config reloaded: no change") > loads, what="reload")
    assert [mesh.ask() for _ in range(5)] == ["v1"] * 5  # the symlinked edit is unseen

    os.kill(xdsd.proc.pid, signal.SIGHUP)
    wait_until(lambda: "SIGHUP: reloading" in xdsd.log(), what="the SIGHUP log line")
    mesh.wait_for("v2")
    after = wait_until(lambda: (v := routes_acked()) != before and v, what="new routes ACKed")
    assert after != before
    assert "(1 file read)" in xdsd.log().split("SIGHUP: reloading")[-1]
    assert xdsd.alive()
