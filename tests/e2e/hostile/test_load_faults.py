"""A load is all or nothing, against a real ``xdsd serve`` with a real grpcio ADS client
connected: hostile files (too deep, too long a number, an alias bomb, a FIFO, too large,
too many documents), a directory the daemon cannot list, and a process out of file
descriptors each refuse the load with the file and the reason in ``/debug/errors``; the
client keeps every cluster it had (no empty or partial CDS is ever pushed), the daemon
lives, and the next good edit (and a SIGHUP) loads as a cold load would; a refusal for a
fault of the machine (out of descriptors) is tried again by itself once it clears."""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.harness import Process, Xdsd, free_port, port_open, wait_until
from tests.xds_clients import make_node

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SETTINGS = """\
max_file_bytes = 262144
max_documents_per_file = 50
"""


def service(name: str, port: int) -> str:
    return (
        f'kind = "Service"\nname = "{name}"\n\n[[ports]]\nname = "http"\nnumber = {port}\n'
        'protocol = "http"\n\n[[endpoints]]\naddress = "127.0.0.1"\n'
    )


class GrpcioAds:
    """One grpcio ADS stream subscribing to clusters (wildcard), ACKing every response;
    ``pushes`` holds the cluster names of every response, in order."""

    def __init__(self, port: int, node_id: str, service: str) -> None:
        self.pushes: list[set[str]] = []
        self.ended: str | None = None
        self._requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self._requests.put(
            discovery_pb2.DiscoveryRequest(node=make_node(node_id, service), type_url=CDS)
        )
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = self._channel.stream_stream(
            ADS,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        self._call = call(iter(self._requests.get, None))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for response in self._call:
                names = {cluster_pb2.Cluster.FromString(r.value).name for r in response.resources}
                self.pushes.append(names)
                self._requests.put(
                    discovery_pb2.DiscoveryRequest(
                        type_url=CDS,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                    )
                )
        except grpc.RpcError as e:
            self.ended = e.code().name

    def has(self, service: str) -> bool:
        """True when the last push has a cluster of ``service``."""
        return bool(self.pushes) and any(_of(service, c) for c in self.pushes[-1])

    def stop(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._channel.close()
        self._thread.join(10)


def _of(service: str, cluster: str) -> bool:
    """True when ``cluster`` (``outbound|PORT||HOST``) is one of ``service``'s."""
    return cluster.split("|")[-1].startswith(f"{service}.")


def errors_of(xdsd: Xdsd) -> list[str]:
    return [e["text"] for e in xdsd.admin("/debug/errors") if e["severity"] == "error"]


def refused_with(xdsd: Xdsd, *words: str) -> Callable[[], bool]:
    """A condition: ``/debug/errors`` has an error holding every one of ``words``."""
    return lambda: any(all(w in text for w in words) for text in errors_of(xdsd))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Xdsd, GrpcioAds, Path]]:
    root = tmp_path_factory.mktemp("load-faults")
    config = root / "config"
    (config / "services").mkdir(parents=True)
    for name in ("a", "b"):
        (config / "services" / f"{name}.toml").write_text(service(name, 8080))
    (root / "settings.toml").write_text(SETTINGS)
    xdsd = Xdsd(config, root, extra=["--settings", str(root / "settings.toml")])
    client = GrpcioAds(xdsd.grpc_port, "faults-1", "outsider")
    try:
        wait_until(lambda: client.has("b"), what="the client's clusters")
        yield xdsd, client, config
    finally:
        client.stop()
        xdsd.stop()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


HOSTILE: list[tuple[str, Callable[[Path], object], tuple[str, ...]]] = [
    (
        "deep.toml",
        lambda p: p.write_text("a = " + "[" * 8000 + "]" * 8000 + "\n"),
        ("deep.toml:1", "max_nesting_depth"),
    ),
    (
        "deep.json",
        lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
        ("deep.json:1", "max_nesting_depth"),
    ),
    (
        "digits.yaml",
        lambda p: p.write_text("kind: Service\nname: x\nn: " + "7" * 5000 + "\n"),
        ("digits.yaml:3", "max_integer_digits"),
    ),
    (
        "digits.json",
        lambda p: p.write_text('{"n": ' + "7" * 5000 + "}"),
        ("digits.json:1", "max_integer_digits"),
    ),
    (
        "bomb.yaml",
        lambda p: p.write_text(
            'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
            + "".join(
                f"{k}: &{k} [{', '.join([f'*{j}'] * 9)}]\n"
                for j, k in zip("abcdefgh", "bcdefghi", strict=True)
            )
        ),
        ("bomb.yaml", "max_yaml_alias_nodes"),
    ),
    ("fifo.yaml", _fifo, ("fifo.yaml", "not a regular file")),
    (
        "huge.yaml",
        lambda p: p.write_text("# padding\n" * 30_000),
        ("huge.yaml", "max_file_bytes (262144)"),
    ),
    (
        "many.yaml",
        lambda p: p.write_text("".join(f"---\nkind: Service\nname: m{i}\n" for i in range(51))),
        ("many.yaml:152", "max_documents_per_file (50)"),
    ),
]


@pytest.mark.parametrize(("name", "write", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_file_is_refused_and_the_next_edit_applies(
    daemon: tuple[Xdsd, GrpcioAds, Path],
    name: str,
    write: Callable[[Path], object],
    words: tuple[str, ...],
) -> None:
    xdsd, client, config = daemon
    pushes = len(client.pushes)
    hostile = config / name
    write(hostile)
    try:
        wait_until(refused_with(xdsd, *words), what=f"{name} refused: {words}")
        assert xdsd.alive()
        assert client.has("b") and client.ended is None
    finally:
        hostile.unlink()
    assert all(any(_of("b", c) for c in push) for push in client.pushes[pushes:])
    # the next good edit applies: a new service reaches the client, the errors clear
    extra = config / "services" / f"after-{name.split('.')[0]}.toml"
    extra.write_text(service(f"after-{name.split('.')[0]}", 8081))
    wait_until(lambda: client.has(f"after-{name.split('.')[0]}"), what="the next edit applied")
    assert errors_of(xdsd) == []
    extra.unlink()
    wait_until(
        lambda: not client.has(f"after-{name.split('.')[0]}"), what="the extra service removed"
    )


def test_sighup_after_the_refusals_loads_the_directory_as_it_is(
    daemon: tuple[Xdsd, GrpcioAds, Path],
) -> None:
    xdsd, client, config = daemon
    (config / "services" / "c.toml").write_text(service("c", 8080))
    wait_until(lambda: client.has("c"), what="c served")
    xdsd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: reloading" in xdsd.log(), what="the SIGHUP reload")
    (config / "services" / "c.toml").unlink()
    wait_until(lambda: not client.has("c") and client.has("b"), what="c removed, b kept")
    assert errors_of(xdsd) == []
    assert xdsd.admin("/readyz") == {"ready": True}


def test_validate_refuses_deep_toml_without_crashing(tmp_path: Path) -> None:
    (tmp_path / "deep.toml").write_text("a = " + "[" * 8000 + "]" * 8000 + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert f"{tmp_path / 'deep.toml'}:1: nested deeper than max_nesting_depth" in done.stderr


# --- a directory the daemon cannot list ------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (``tmp_path`` is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="xdsd-faults-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.rglob("*"):
            with contextlib.suppress(OSError):
                sub.chmod(0o755)
        shutil.rmtree(path)


class NobodyXdsd(Process):
    """``xdsd serve`` as the user nobody (without root's permission override)."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.grpc_port, self.admin_port = free_port(), free_port()
        argv = [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-m",
            "xdsd.cli",
            "--log-level",
            "debug",
            "serve",
            "--config-dir",
            str(config),
            "--grpc",
            f"127.0.0.1:{self.grpc_port}",
            "--rest",
            "",
            "--admin",
            f"127.0.0.1:{self.admin_port}",
        ]
        super().__init__(argv, log_dir / f"xdsd-nobody-{self.grpc_port}.log")
        wait_until(
            lambda: not self.alive() or port_open("127.0.0.1", self.grpc_port),
            what="xdsd to listen",
        )
        assert self.alive(), self.log()

    def admin(self, path: str) -> Any:
        return Xdsd.admin(self, path)  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run xdsd as nobody")
def test_an_unreadable_subdirectory_refuses_the_load(open_dir: Path, tmp_path: Path) -> None:
    config = open_dir / "config"
    (config / "team").mkdir(parents=True)
    (config / "a.toml").write_text(service("a", 8080))
    (config / "team" / "b.toml").write_text(service("b", 8080))
    for path in (config, config / "team"):
        path.chmod(0o755)
    xdsd = NobodyXdsd(config, tmp_path)
    client = GrpcioAds(xdsd.grpc_port, "nobody-1", "outsider")
    try:
        wait_until(lambda: client.has("b"), what="the client's clusters")
        pushes = len(client.pushes)
        (config / "team").chmod(0)
        (config / "c.toml").write_text(service("c", 8080))  # an edit: a reload
        team = str(config / "team")
        wait_until(
            refused_with(xdsd, team, "cannot list the directory", "EACCES"),  # type: ignore[arg-type]
            what="the load refused, naming the directory",
        )
        assert not client.has("c") and client.has("b")
        assert all(any(_of("b", c) for c in push) for push in client.pushes[pushes:])
        (config / "team").chmod(0o755)
        (config / "c.toml").write_text(service("c", 8081))
        wait_until(lambda: client.has("c") and client.has("b"), what="the next edit applied")
        assert errors_of(xdsd) == []  # type: ignore[arg-type]
    finally:
        client.stop()
        xdsd.stop()


# --- out of file descriptors -----------------------------------------------------------


class LogTail:
    """Reads a growing log from where it was last read (an accept loop out of
    descriptors may log a lot), remembering the lines that matter."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._file.seek(0, os.SEEK_END)
        self.kept: list[str] = []

    def has(self, *words: str) -> bool:
        """True when a line read so far holds every one of ``words``."""
        for raw in self._file.read().splitlines():
            line = raw.decode(errors="replace")
            if "xdsd." in line:
                self.kept.append(line)
        return any(all(w in line for w in words) for line in self.kept)


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_out_of_descriptors_a_reload_publishes_nothing(tmp_path: Path) -> None:
    """Idle TCP connections to the gRPC port eat the descriptors left under a low
    RLIMIT_NOFILE; an edit then cannot be loaded (the listing or the read fails with
    EMFILE): the load is refused, the client keeps its clusters. Once the connections
    close, the load is tried again by itself (a fault of the machine, not of the files:
    no edit is needed) and the errors clear; the next edit loads too."""
    config = tmp_path / "config"
    config.mkdir()
    for name in ("a", "b"):
        (config / f"{name}.toml").write_text(service(name, 8080))
    xdsd = Xdsd(config, tmp_path)
    client = GrpcioAds(xdsd.grpc_port, "fd-1", "outsider")
    hogs: list[socket.socket] = []
    try:
        wait_until(lambda: client.has("b"), what="the client's clusters")
        # one reload first, as a daemon that has been running has done (its worker thread
        # started, its modules imported: those need descriptors too)
        (config / "w.toml").write_text(service("w", 8080))
        wait_until(lambda: client.has("w"), what="a first reload")
        pushes = len(client.pushes)
        # A few descriptors to spare beyond what is open: fewer than any sane
        # per-address connection limit, so the connections below exhaust them.
        limit = _open_descriptors(xdsd.proc.pid) + 16
        resource.prlimit(xdsd.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
        for _ in range(64):
            hogs.append(socket.create_connection(("127.0.0.1", xdsd.grpc_port), timeout=5))
        wait_until(
            lambda: _open_descriptors(xdsd.proc.pid) >= limit - 1,
            what="the daemon's descriptors exhausted",
        )
        (config / "c.toml").write_text(service("c", 8080))
        log = LogTail(xdsd.log_path)
        wait_until(
            lambda: log.has(f"{config}", "EMFILE") and log.has("config refused"),
            what="the reload refused for EMFILE",
        )
        assert xdsd.alive() and client.ended is None
        assert not client.has("c") and client.has("b")
        assert all(any(_of("b", c) for c in push) for push in client.pushes[pushes:])
    finally:
        for hog in hogs:
            hog.close()
    try:
        wait_until(
            lambda: _open_descriptors(xdsd.proc.pid) < limit - 8, what="the connections closed"
        )
        # the refusal was a fault of the machine: the load is tried again by itself, no
        # edit or SIGHUP needed, and the log says so once (not at every try)
        wait_until(lambda: client.has("c") and client.has("b"), what="c loaded by a retry")
        assert errors_of(xdsd) == []
        wait_until(lambda: log.has("the fault (", "has cleared"), what="the end of the fault")
        assert sum("fault of the machine" in line for line in log.kept) == 1, log.kept
        assert xdsd.admin("/readyz") == {"ready": True}
        (config / "c.toml").write_text(service("c", 8081))
        wait_until(lambda: client.has("c") and client.has("b"), what="the next edit applied")
        assert errors_of(xdsd) == []
    finally:
        client.stop()
        xdsd.stop()
