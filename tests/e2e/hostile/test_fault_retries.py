"""After a fault of the machine clears, a real ``xdsd serve`` publishes what the files
say, with no edit and no SIGHUP: a load refused for one (out of descriptors, a directory
the daemon, running as nobody, may not read) is tried again by itself, and a directory
the watch could not list or watch then is watched, so later edits in it are seen. A load
refused for the files themselves (bad TOML) is not tried again: the next edit is."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.hostile.test_load_faults import (
    GrpcioAds,
    LogTail,
    NobodyXdsd,
    _open_descriptors,
    errors_of,
    service,
)
from tests.harness import Xdsd, wait_until

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run xdsd as nobody")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A config directory every user can reach (``tmp_path`` is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="xdsd-retries-"))
    base.chmod(0o755)
    config = base / "config"
    config.mkdir()
    config.chmod(0o755)
    try:
        yield config
    finally:
        for sub in base.rglob("*"):
            with contextlib.suppress(OSError):
                sub.chmod(0o755)
        shutil.rmtree(base)


@contextlib.contextmanager
def exhausted(xdsd: Xdsd) -> Iterator[None]:
    """The daemon out of descriptors while inside: a low RLIMIT_NOFILE and idle
    connections to its gRPC port taking what is left."""
    limit = _open_descriptors(xdsd.proc.pid) + 16
    resource.prlimit(xdsd.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
    hogs = [socket.create_connection(("127.0.0.1", xdsd.grpc_port), timeout=5) for _ in range(64)]
    try:
        wait_until(
            lambda: _open_descriptors(xdsd.proc.pid) >= limit - 1, what="descriptors exhausted"
        )
        yield
    finally:
        for hog in hogs:
            hog.close()
    wait_until(lambda: _open_descriptors(xdsd.proc.pid) < limit - 8, what="connections closed")


def refusals(log: LogTail) -> int:
    """How many refused loads the log has told of so far."""
    log.has()  # reads what was written since
    return sum("config refused" in line for line in log.kept)


def readyz(xdsd: Xdsd | NobodyXdsd) -> dict[str, object]:
    body = xdsd.admin("/readyz")
    assert isinstance(body, dict)
    return body


def test_a_tree_moved_in_while_out_of_descriptors_is_loaded_and_watched(tmp_path: Path) -> None:
    config, staging = tmp_path / "config", tmp_path / "staging"
    config.mkdir()
    (staging / "team" / "sub").mkdir(parents=True)
    (config / "a.toml").write_text(service("a", 8080))
    (staging / "team" / "sub" / "s.toml").write_text(service("s", 8080))
    xdsd = Xdsd(config, tmp_path)
    client = GrpcioAds(xdsd.grpc_port, "retry-1", "outsider")
    try:
        wait_until(lambda: client.has("a"), what="a served")
        # one reload first, as a daemon that has been running has done
        (config / "w.toml").write_text(service("w", 8080))
        wait_until(lambda: client.has("w"), what="a first reload")
        log = LogTail(xdsd.log_path)
        with exhausted(xdsd):
            os.rename(staging / "team", config / "team")
            wait_until(lambda: log.has("config refused"), what="the load refused for EMFILE")
        # no edit, no SIGHUP: the retry loads the tree, and the watch covers it
        wait_until(lambda: client.has("s"), what="s served once descriptors are free")
        assert errors_of(xdsd) == []
        assert "degraded" not in readyz(xdsd)
        (config / "team" / "sub" / "s.toml").write_text(service("s2", 8080))
        wait_until(lambda: client.has("s2") and not client.has("s"), what="the edit in team/sub")
    finally:
        client.stop()
        xdsd.stop()


@as_root
def test_a_config_dir_the_daemon_could_not_list_is_loaded_once_it_can(
    open_dir: Path, tmp_path: Path
) -> None:
    config = open_dir
    (config / "a.toml").write_text(service("a", 8080))
    xdsd = NobodyXdsd(config, tmp_path)
    client = GrpcioAds(xdsd.grpc_port, "retry-2", "outsider")
    try:
        wait_until(lambda: client.has("a"), what="a served")
        config.chmod(0o311)  # searchable, not listable (a bad deploy step)
        (config / "c.toml").write_text(service("c", 8080))
        wait_until(lambda: any("EACCES" in e for e in errors_of(xdsd)), what="refused: EACCES")
        # the last good build serves: ready, and degraded says why and that it retries
        body = readyz(xdsd)
        assert body["ready"] is True, body
        assert "EACCES" in str(body.get("degraded")), body
        assert "loading again" in str(body.get("degraded")), body
        assert client.has("a") and not client.has("c")
        config.chmod(0o755)  # fixed; no edit follows
        wait_until(lambda: client.has("c") and client.has("a"), what="c served after the fix")
        assert errors_of(xdsd) == []
        assert readyz(xdsd) == {"ready": True}
    finally:
        client.stop()
        xdsd.stop()


@as_root
def test_a_directory_created_unreadable_then_opened_is_watched(
    open_dir: Path, tmp_path: Path
) -> None:
    # rsync creates a directory 0700, fills it, and sets its mode at the end
    config = open_dir
    (config / "a.toml").write_text(service("a", 8080))
    xdsd = NobodyXdsd(config, tmp_path)
    client = GrpcioAds(xdsd.grpc_port, "retry-3", "outsider")
    try:
        wait_until(lambda: client.has("a"), what="a served")
        team = config / "team"
        team.mkdir(mode=0o700)
        wait_until(
            lambda: any(str(team) in e and "EACCES" in e for e in errors_of(xdsd)),
            what="the daemon saw the directory it may not read",
        )
        (team / "t.toml").write_text(service("t", 8080))
        team.chmod(0o755)
        wait_until(lambda: client.has("t"), what="t served once the directory is readable")
        (team / "t.toml").write_text(service("t2", 8080))  # a later edit in it
        wait_until(lambda: client.has("t2") and not client.has("t"), what="the edit in team")
        assert errors_of(xdsd) == []
    finally:
        client.stop()
        xdsd.stop()


def test_a_refusal_for_the_files_themselves_is_not_tried_again(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "a.toml").write_text(service("a", 8080))
    xdsd = Xdsd(config, tmp_path)
    client = GrpcioAds(xdsd.grpc_port, "retry-4", "outsider")
    try:
        wait_until(lambda: client.has("a"), what="a served")
        log = LogTail(xdsd.log_path)
        (config / "bad.toml").write_text('kind = "Service"\nname = \n')
        wait_until(lambda: log.has("config refused"), what="bad.toml refused")
        # no retry is scheduled: /readyz (set with the refusal) says nothing degraded
        assert readyz(xdsd) == {"ready": True}
        (config / "b.toml").write_text(service("b", 8080))  # another edit: refused too
        wait_until(lambda: refusals(log) == 2, what="b refused")
        (config / "bad.toml").unlink()
        wait_until(lambda: client.has("b"), what="b served once bad.toml is gone")
        assert refusals(log) == 2, log.kept  # one per edit: none between them
        assert not any("fault of the machine" in line for line in log.kept)
    finally:
        client.stop()
        xdsd.stop()
