"""``xdsd serve --workers 2`` for real: one process tree, two workers on one accept queue,
real grpcio ADS clients on both workers and a real Envoy, registrations in a real etcd
(``[registry.etcd]``, which workers > 1 need), systemd notifications on a datagram socket.

Clients land on both workers and get the same versions after an edit; the merged admin
lists them all; Envoy routes as the files say; REST polls get one version from whichever
worker; SIGHUP reaches every worker (RELOADING=1, then one READY=1); the worker holding
Envoy's stream SIGKILLed is restarted, Envoy reconnects and still follows edits; SIGTERM
ends every stream with UNAVAILABLE and the shutdown message, STOPPING=1, exit 0, and the
private runtime directory is gone. Refusals (no etcd, a port in use) are one line."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, struct_pb2

from tests.e2e.mesh import EchoMesh, route_to, vs
from tests.etcd import Etcd, etcd_binary
from tests.harness import free_port, wait_until, write_atomically
from xdsd.listeners import SHUTDOWN_MESSAGE

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def node(node_id: str, ip: str) -> base_pb2.Node:
    """The client service's sidecar at ``ip``."""
    metadata = struct_pb2.Struct()
    metadata.update({"instance_ip": ip})
    return base_pb2.Node(id=node_id, cluster="client", metadata=metadata, user_agent_name="envoy")


class GrpcioAds:
    """A grpcio ADS client on a connection of its own, ACKing every cluster response;
    ``versions`` in order, ``ended`` the status and details the server ended it with."""

    def __init__(self, port: int, node_id: str, ip: str) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self.requests.put(discovery_pb2.DiscoveryRequest(node=node(node_id, ip), type_url=CDS))
        self.versions: list[str] = []
        self.ended: tuple[grpc.StatusCode, str] | None = None
        self.call = self.channel.stream_stream(
            ADS,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(iter(self.requests.get, None))
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        try:
            for response in self.call:
                self.versions.append(response.version_info)
                self.requests.put(
                    discovery_pb2.DiscoveryRequest(
                        type_url=CDS,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                    )
                )
        except grpc.RpcError as e:
            self.ended = (e.code(), e.details() or "")
        else:
            self.ended = (grpc.StatusCode.OK, "")

    @property
    def version(self) -> str:
        return self.versions[-1] if self.versions else ""

    def stop(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.thread.join(10)
        self.channel.close()


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the workers of a supervisor)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def accepted_by(port: int) -> dict[int, set[int]]:
    """Process id → the peer ports of the established TCP connections it holds that were
    accepted on local ``port`` (read from /proc: the kernel's view, not ours)."""
    inode_peer: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    inode_peer[inode] = int(remote.rsplit(":", 1)[1], 16)
    holders: dict[int, set[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            found = re.fullmatch(r"socket:\[(\d+)\]", target)
            if found and found.group(1) in inode_peer:
                holders.setdefault(int(entry), set()).add(inode_peer[found.group(1)])
    return holders


def envoy_peer_ports(envoy_pid: int, port: int) -> set[int]:
    """The local ports of Envoy's connections to xdsd's ``port``."""
    held = set()
    inodes = set()
    for fd in os.listdir(f"/proc/{envoy_pid}/fd"):
        try:
            target = os.readlink(f"/proc/{envoy_pid}/fd/{fd}")
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        if found:
            inodes.add(found.group(1))
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                held.add(int(fields[1].rsplit(":", 1)[1], 16))
    return held


class Inbox:
    """systemd's side: every notification received, in order (read by a thread, so the
    socket's small queue never fills while the test waits on something else)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._open = True
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while self._open:
            try:
                self.messages.append(self.sock.recv(65536).decode().split("\n"))
            except TimeoutError:
                continue
            except OSError:
                return

    def read(self) -> list[list[str]]:
        return list(self.messages)

    def count(self, line: str) -> int:
        return sum(line in m for m in self.read())

    def close(self) -> None:
        self._open = False
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd is not installed (Debian: etcd-server)")
    server = Etcd(tmp_path, binary)
    try:
        yield server
    finally:
        server.stop()


def settings_file(tmp_path: Path, etcd: Etcd) -> Path:
    path = tmp_path / "xdsd.toml"
    path.write_text(
        f'shutdown_grace = 3\n[registry.etcd]\nendpoints = ["{etcd.url}"]\nprefix = "/w{os.getpid()}"\n'
    )
    return path


def test_two_workers_serve_as_one_daemon(tmp_path: Path, etcd: Etcd) -> None:
    mesh = EchoMesh(tmp_path)
    inbox = Inbox(tmp_path / "notify.sock")
    clients: list[GrpcioAds] = []
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    try:
        xdsd = mesh.start_xdsd(
            extra=["--workers", "2", "--settings", str(settings_file(tmp_path, etcd))], env=env
        )
        wait_until(lambda: inbox.count("READY=1") == 1, what="READY=1 from the supervisor")
        ready = next(m for m in inbox.read() if "READY=1" in m)
        assert any(line.startswith("STATUS=2 of 2 workers ready") for line in ready)
        wait_until(lambda: inbox.count("WATCHDOG=1") >= 2, what="watchdog pings")
        workers = children(xdsd.proc.pid)
        assert len(workers) == 2
        for index in (0, 1):  # each worker's lines say whose they are
            assert f"INFO xdsd.app: worker={index}: gRPC xDS listening on" in xdsd.log()
        runtime = re.search(r"admin listening on (/\S+)/worker-0\.sock", xdsd.log())
        assert runtime is not None
        assert oct(os.stat(runtime.group(1)).st_mode & 0o777) == "0o700"

        # clients on both workers (one accept queue: whichever worker accepts first)
        def spread() -> bool:
            clients.append(GrpcioAds(xdsd.grpc_port, f"client-{len(clients)}", mesh.client_ip))
            held = accepted_by(xdsd.grpc_port)
            return all(held.get(w) for w in workers)

        wait_until(spread, timeout=60, interval=0.1, what="clients on both workers")
        wait_until(lambda: all(c.version for c in clients), what="every client's clusters")
        # the admin server sees every worker's clients as one daemon's
        assert xdsd.admin("/readyz")["ready"] is True
        listed = {c["node_id"] for c in xdsd.admin("/debug/clients") if c["connected"]}
        assert {f"client-{i}" for i in range(len(clients))} <= listed, listed
        status = subprocess.run(
            [sys.executable, "-m", "xdsd.cli", "status", "--admin", f"127.0.0.1:{xdsd.admin_port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        before = {c.version for c in clients}
        assert len(before) == 1  # the same files, the same version on both workers
        mesh.set_subsets("v1", "v2", "v3")
        wait_until(
            lambda: all(c.version and c.version not in before for c in clients),
            what="every client's new clusters",
        )
        assert len({c.version for c in clients}) == 1

        # REST pollers reach a worker through the shared REST socket: one version
        polled = set()
        for i in range(6):  # a new connection each: whichever worker accepts it
            request = urllib.request.Request(
                f"http://127.0.0.1:{xdsd.rest_port}/v3/discovery:clusters",
                data=json_format.MessageToJson(
                    discovery_pb2.DiscoveryRequest(node=node(f"poller-{i}", mesh.client_ip))
                ).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                polled.add(json.loads(answer.read())["version_info"])
        assert len(polled) == 1 and "" not in polled, polled

        # a real Envoy routes as the files say
        envoy = mesh.start_envoy()
        mesh.wait_for("v1")
        write_atomically(mesh.rules, vs(route_to({"v2": 100})))
        mesh.wait_for("v2")

        # SIGHUP: every worker reloads, then one READY=1
        os.kill(xdsd.proc.pid, signal.SIGHUP)
        wait_until(lambda: inbox.count("READY=1") == 2, what="READY=1 after the reload")
        assert inbox.count("RELOADING=1") == 1
        assert xdsd.log().count("SIGHUP: reloading") == 2

        # SIGKILL the worker holding Envoy's stream: restarted; Envoy reconnects
        ports = wait_until(
            lambda: envoy_peer_ports(envoy.proc.pid, xdsd.grpc_port), what="envoy's connection"
        )
        holders = accepted_by(xdsd.grpc_port)
        victim = next(pid for pid in workers if holders.get(pid, set()) & ports)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(children(xdsd.proc.pid)) == 2 and victim not in children(xdsd.proc.pid),
            what="the worker restarted",
        )
        assert re.search(r"worker \d ended \(code -9\)", xdsd.log())
        wait_until(lambda: "ready again (restart 1)" in xdsd.log(), what="the new worker ready")
        write_atomically(mesh.rules, vs(route_to({"v3": 100})))
        mesh.wait_for("v3", timeout=60)
        assert envoy_peer_ports(envoy.proc.pid, xdsd.grpc_port)  # reconnected
        assert xdsd.alive() and inbox.count("READY=1") == 2

        # SIGTERM: every stream ends with UNAVAILABLE and the message, exit 0
        survivors = [c for c in clients if c.ended is None]
        assert survivors
        xdsd.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: xdsd.proc.poll() is not None, timeout=60, what="xdsd to exit")
        assert xdsd.proc.returncode == 0
        assert inbox.count("STOPPING=1") == 1
        wait_until(lambda: all(c.ended is not None for c in survivors), what="streams ended")
        assert all(
            c.ended is not None
            and c.ended[0] == grpc.StatusCode.UNAVAILABLE
            and SHUTDOWN_MESSAGE in c.ended[1]
            for c in survivors
        ), [c.ended for c in survivors]
        assert not os.path.exists(runtime.group(1))
        assert not any(Path(f"/proc/{w}").exists() for w in workers if w != victim)
    finally:
        for client in clients:
            client.stop()
        mesh.stop()
        inbox.close()


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "serve", "--config-dir", str(config), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_workers_without_shared_registrations_are_refused_in_one_line(tmp_path: Path) -> None:
    done = serve(tmp_path, "--workers", "2", "--grpc", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "set [registry.etcd]" in lines[0] and "workers = 1" in lines[0]


def test_a_port_in_use_is_one_line_from_the_supervisor(tmp_path: Path, etcd: Etcd) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(
            tmp_path,
            "--workers",
            "2",
            "--settings",
            str(settings_file(tmp_path, etcd)),
            "--grpc",
            f"127.0.0.1:{port}",
        )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port} for gRPC xDS" in lines[0]
    assert "started (pid" not in done.stderr  # refused before any worker started


def gone(pid: int) -> bool:
    """``pid`` has ended (no process, or a zombie left for its parent to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_stuck_worker_is_replaced_and_stops_are_bounded(tmp_path: Path, etcd: Etcd) -> None:
    """A worker stopped (SIGSTOP: its loop sends no heartbeat) is killed and restarted;
    with a worker stuck, a second SIGTERM exits at once (143) and kills it; a single
    SIGTERM ends at the backstop (exit 1), also killing it; a supervisor SIGKILLed takes
    its workers with it."""
    mesh = EchoMesh(tmp_path)
    flags = ["--workers", "2", "--settings", str(settings_file(tmp_path, etcd))]
    try:
        xdsd = mesh.start_xdsd(extra=flags)
        wait_until(lambda: xdsd.admin("/readyz")["ready"], what="ready")
        stuck = children(xdsd.proc.pid)[0]
        os.kill(stuck, signal.SIGSTOP)
        wait_until(
            lambda: f"(pid {stuck}) not answering" in xdsd.log(), timeout=60, what="the kill"
        )
        wait_until(lambda: "ready again (restart 1)" in xdsd.log(), timeout=60, what="restart")
        assert stuck not in children(xdsd.proc.pid) and len(children(xdsd.proc.pid)) == 2
        wait_until(lambda: xdsd.admin("/readyz")["ready"], what="ready again")

        # a worker stuck during shutdown: the second SIGTERM exits at once
        stuck = children(xdsd.proc.pid)[0]
        os.kill(stuck, signal.SIGSTOP)
        xdsd.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping 2 workers" in xdsd.log(), what="the shutdown")
        xdsd.proc.send_signal(signal.SIGTERM)
        assert xdsd.proc.wait(10) == 128 + signal.SIGTERM
        wait_until(lambda: gone(stuck), what="the stuck worker killed")
        xdsd.stop()

        # a single SIGTERM with a worker stuck: the backstop (grace 3 s + 6 s), exit 1
        xdsd = mesh.start_xdsd(extra=flags)
        wait_until(lambda: xdsd.admin("/readyz")["ready"], what="ready")
        stuck = children(xdsd.proc.pid)[1]
        os.kill(stuck, signal.SIGSTOP)
        xdsd.proc.send_signal(signal.SIGTERM)
        assert xdsd.proc.wait(30) == 1
        assert "a worker overran its shutdown" in xdsd.log()
        wait_until(lambda: gone(stuck), what="the stuck worker killed")
        xdsd.stop()

        # the supervisor SIGKILLed: its workers end too (parent-death signal)
        xdsd = mesh.start_xdsd(extra=flags)
        wait_until(lambda: xdsd.admin("/readyz")["ready"], what="ready")
        workers = children(xdsd.proc.pid)
        xdsd.proc.kill()
        xdsd.proc.wait(10)
        wait_until(lambda: all(gone(w) for w in workers), what="the workers to end")
    finally:
        mesh.stop()
