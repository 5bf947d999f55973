"""``xdsd serve --workers 2`` at its awkward moments, for real (a real etcd, real worker
processes, REST polls through the shared socket):

- the supervisor SIGKILLed while a worker is still starting (before that worker could
  ask for a parent-death signal): the worker ends anyway, and the ports are free again;
- a SIGHUP while workers are starting (before their handlers exist): no worker dies of
  it, the daemon becomes ready, every worker reloads once ready, SIGTERM exits 0;
- a worker restarted while the directory holds a refused edit: it holds its listeners
  until a load succeeds, so every poll through the shared socket is still answered with
  the last good build; once the file is mended it serves again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from tests.e2e.mesh import EchoMesh
from tests.e2e.serving.test_workers import children, etcd, gone, node, settings_file
from tests.etcd import Etcd
from tests.harness import wait_until, write_atomically

__all__ = ["etcd"]  # the fixture, used by name


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_supervisor_killed_while_a_worker_starts_leaves_no_worker(
    tmp_path: Path, etcd: Etcd
) -> None:
    mesh = EchoMesh(tmp_path)
    flags = ["--workers", "2", "--settings", str(settings_file(tmp_path, etcd))]
    workers: list[int] = []
    try:
        xdsd = mesh.start_xdsd(extra=flags)
        # the moment the second worker is spawned: it has not reached its prctl yet
        wait_until(lambda: "worker 1 started (pid" in xdsd.log(), what="worker 1 spawned")
        workers = children(xdsd.proc.pid)
        xdsd.proc.kill()
        xdsd.proc.wait(10)
        assert len(workers) == 2
        wait_until(lambda: all(gone(w) for w in workers), timeout=30, what="the workers to end")
        wait_until(
            lambda: _bindable(xdsd.grpc_port) and _bindable(xdsd.rest_port),
            what="the shared ports free again",
        )
    finally:
        _kill_all(workers)
        mesh.stop()


def test_a_sighup_while_workers_start_ends_none_of_them(tmp_path: Path, etcd: Etcd) -> None:
    mesh = EchoMesh(tmp_path)
    flags = ["--workers", "2", "--settings", str(settings_file(tmp_path, etcd))]
    workers: list[int] = []
    try:
        xdsd = mesh.start_xdsd(extra=flags)
        wait_until(lambda: "worker 1 started (pid" in xdsd.log(), what="worker 1 spawned")
        workers = children(xdsd.proc.pid)
        os.kill(xdsd.proc.pid, signal.SIGHUP)
        wait_until(lambda: xdsd.admin("/readyz")["ready"], timeout=60, what="ready")
        assert "ended at startup" not in xdsd.log()
        assert children(xdsd.proc.pid) == workers  # none died and was replaced
        # each worker got the SIGHUP once it could take it
        wait_until(
            lambda: xdsd.log().count("SIGHUP: reloading") == 2, what="both workers reloading"
        )
        xdsd.proc.send_signal(signal.SIGTERM)
        assert xdsd.proc.wait(30) == 0
    finally:
        _kill_all(workers)
        mesh.stop()


def _poll(rest_port: int, node_id: str, ip: str) -> tuple[int, int]:
    """A REST cluster poll on a new connection (whichever worker accepts it): the status
    and how many clusters came."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}/v3/discovery:clusters",
        data=json_format.MessageToJson(
            discovery_pb2.DiscoveryRequest(node=node(node_id, ip))
        ).encode(),
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, len(json.loads(answer.read()).get("resources", []))
    except urllib.error.HTTPError as e:
        return e.code, 0


def test_a_worker_restarted_over_a_refused_edit_takes_no_clients_until_mended(
    tmp_path: Path, etcd: Etcd
) -> None:
    mesh = EchoMesh(tmp_path)
    flags = ["--workers", "2", "--settings", str(settings_file(tmp_path, etcd))]
    workers: list[int] = []
    try:
        xdsd = mesh.start_xdsd(extra=flags)
        wait_until(lambda: xdsd.admin("/readyz")["ready"], timeout=60, what="ready")
        workers = children(xdsd.proc.pid)
        good = _poll(xdsd.rest_port, "poller", mesh.client_ip)
        assert good[0] == 200 and good[1] > 0
        service = mesh.config / "services" / "echo.toml"
        mended = service.read_text()
        write_atomically(service, "this is [not toml\n")
        wait_until(
            lambda: xdsd.log().count("still serving the last good configuration") >= 2,
            what="both workers refuse",
        )
        os.kill(workers[1], signal.SIGKILL)
        wait_until(
            lambda: (
                "nothing loaded yet" in xdsd.log()
                and "admin listening" in xdsd.log()[xdsd.log().index("nothing loaded yet") :]
            ),
            what="the new worker started over the refused edit",
        )
        workers = children(xdsd.proc.pid)
        polls = [_poll(xdsd.rest_port, f"poller-{i}", mesh.client_ip) for i in range(12)]
        assert polls == [good] * 12, polls  # every new connection served the last good build
        assert "REST xDS held: no configuration loaded" in xdsd.log()
        assert xdsd.admin("/healthz") is not None
        write_atomically(service, mended)
        wait_until(lambda: "ready again (restart 1)" in xdsd.log(), timeout=60, what="mended")
        wait_until(lambda: xdsd.admin("/readyz")["ready"], what="ready again")
        polls = [_poll(xdsd.rest_port, f"poller-{i}", mesh.client_ip) for i in range(12)]
        assert polls == [good] * 12, polls
    finally:
        _kill_all(workers)
        mesh.stop()
