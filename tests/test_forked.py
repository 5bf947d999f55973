"""``xdsd.forked``: work run in a forked child, its bytes collected, every failure None."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from xdsd import forked
from xdsd.forked import ForkSplit, spare_core_in


def _wait_gone(pid: int, deadline: float = 10.0) -> bool:
    """True once ``pid`` is no child of ours (reaped) or no process at all."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            ended, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if ended:
            return True
        time.sleep(0.02)
    return False


def test_returns_what_the_work_returned_however_large() -> None:
    split = ForkSplit(when_idle=False)
    payload = os.urandom(3 << 20)  # beyond any pipe buffer: read while written
    collect = split(lambda: payload[::-1])
    assert collect is not None
    assert collect() == payload[::-1]


def test_the_child_sees_the_parent_objects_as_at_the_fork() -> None:
    table = {i: str(i) * 3 for i in range(1000)}
    collect = ForkSplit(when_idle=False)(
        lambda: "".join(table[i] for i in range(0, 1000, 7)).encode()
    )
    table.clear()  # the parent's change after the fork is not the child's
    assert collect is not None
    assert collect() == "".join(str(i) * 3 for i in range(0, 1000, 7)).encode()


def test_a_work_that_raises_gives_none() -> None:
    def work() -> bytes:
        raise ValueError("boom")

    collect = ForkSplit(when_idle=False)(work)
    assert collect is not None
    assert collect() is None


def test_a_child_killed_gives_none() -> None:
    def work() -> bytes:
        os.kill(os.getpid(), signal.SIGKILL)
        return b"never"

    collect = ForkSplit(when_idle=False)(work)
    assert collect is not None
    assert collect() is None


def test_a_child_that_exits_early_gives_none() -> None:
    def work() -> bytes:
        os._exit(0)

    collect = ForkSplit(when_idle=False)(work)
    assert collect is not None
    assert collect() is None


def test_a_child_past_its_timeout_is_killed_and_reaped(tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def work() -> bytes:
        marker.write_text(str(os.getpid()))
        time.sleep(30)
        return b"late"

    collect = ForkSplit(timeout=1.0, when_idle=False)(work)
    assert collect is not None
    started = time.monotonic()
    assert collect() is None
    assert time.monotonic() - started < 20  # the deadline, not the work's 30 s
    pid = int(marker.read_text())
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped by collect


def test_a_collect_never_called_leaves_a_child_that_ends_itself(tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def work() -> bytes:
        marker.write_text(str(os.getpid()))
        return b"x" * (4 << 20)  # blocks on the full pipe: nobody reads

    split = ForkSplit(timeout=1.0, when_idle=False)
    collect = split(work)
    assert collect is not None
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = int(marker.read_text())
    assert _wait_gone(pid)  # SIGALRM at its deadline ended it


def test_the_child_holds_none_of_the_parent_descriptors() -> None:
    left, right = socket.socketpair()
    try:

        def work() -> bytes:
            try:
                os.fstat(left.fileno())
            except OSError:
                return b"closed"
            return b"open"

        collect = ForkSplit(when_idle=False)(work)
        assert collect is not None
        assert collect() == b"closed"
        # and the parent's end works, and closing it is seen at once by the peer
        left.close()
        right.settimeout(5)
        assert right.recv(1) == b""
    finally:
        left.close()
        right.close()


def test_the_child_logs_nothing_and_drops_the_daemons_signal_handlers() -> None:
    handled: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: handled.append(signum))
    try:

        def work() -> bytes:
            logging.getLogger("xdsd").error("from the child")
            return f"{logging.root.manager.disable}:{signal.getsignal(signal.SIGTERM)}".encode()

        collect = ForkSplit(when_idle=False)(work)
        assert collect is not None
        assert collect() == f"{logging.CRITICAL}:{signal.SIG_DFL}".encode()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handled == []


def test_sigterm_ends_the_child_and_the_parent_does_the_work(tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def work() -> bytes:
        marker.write_text(str(os.getpid()))
        time.sleep(30)
        return b"late"

    collect = ForkSplit(timeout=60, when_idle=False)(work)
    assert collect is not None
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(int(marker.read_text()), signal.SIGTERM)
    assert collect() is None


def test_collect_twice_is_a_bug() -> None:
    collect = ForkSplit(when_idle=False)(lambda: b"once")
    assert collect is not None
    assert collect() == b"once"
    with pytest.raises(RuntimeError):
        collect()


def test_for_machine_is_none_when_turned_off() -> None:
    assert ForkSplit.for_machine(enabled=False) is None


def test_no_core_to_spare_no_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "spare_core", lambda: False)
    assert ForkSplit()(lambda: b"never run") is None
    collect = ForkSplit(when_idle=False)(lambda: b"run")
    assert collect is not None
    assert collect() == b"run"


@pytest.mark.parametrize(
    ("text", "cpus", "spare"),
    [
        (b"0.52 0.40 0.33 1/78 2642\n", 2, True),  # only this process runs
        (b"1.52 1.40 1.33 2/78 2642\n", 2, False),  # another one runs too
        (b"1.52 1.40 1.33 2/78 2642\n", 4, True),
        (b"3.0 3.0 3.0 4/90 1\n", 4, False),
        (b"", 2, True),  # not Linux's text: assume a core is free
        (b"0.1 0.1 0.1 x/78 1\n", 2, True),
    ],
)
def test_a_spare_core_is_read_from_the_running_count(text: bytes, cpus: int, spare: bool) -> None:
    assert spare_core_in(text, cpus) is spare


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_abandon_ends_every_child_whose_collect_was_not_called(tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def work() -> bytes:
        marker.write_text(str(os.getpid()))
        return b"x" * (4 << 20)  # blocks on the full pipe: nobody reads

    split = ForkSplit(when_idle=False)
    before = _open_descriptors()
    collect = split(work)
    assert collect is not None
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert split.abandon() == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(int(marker.read_text()), os.WNOHANG)  # killed and reaped
    assert _open_descriptors() == before  # its pipe closed
    with pytest.raises(RuntimeError):
        collect()
    assert split.abandon() == 0


def test_a_child_sending_more_than_max_bytes_failed() -> None:
    split = ForkSplit(when_idle=False, max_bytes=1000)
    collect = split(lambda: b"y" * 5000)
    assert collect is not None
    assert collect() is None
    collect = split(lambda: b"y" * 1000)
    assert collect is not None
    assert collect() == b"y" * 1000


def test_a_build_that_raises_between_fork_and_collect_leaves_no_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's state ends what a failed build left: the class parts raising (a bug)
    after the translation's child was made."""
    from bench.meshgen import write_mesh
    from xdsd.state import MeshState
    from xdsd.translate import NodeClass, mesh, shared

    config = write_mesh(tmp_path, 40, endpoints=2)
    monkeypatch.setattr(shared, "SPLIT_THRESHOLD", 2)
    split = ForkSplit(when_idle=False)
    state = MeshState(str(config), split=split)
    assert state.reload()
    started: list[object] = []
    real_call = ForkSplit.__call__

    def counting(self: ForkSplit, work: object) -> object:
        found = real_call(self, work)  # type: ignore[arg-type]
        started.append(found)
        return found

    def boom(*args: object) -> list[object]:
        raise ValueError("a bug in a listener builder")

    monkeypatch.setattr(ForkSplit, "__call__", counting)
    monkeypatch.setattr(mesh.MeshTranslation, "_build_parts", boom)
    before = _open_descriptors()
    with pytest.raises(ValueError):
        state.snapshot(NodeClass(service="svc-00001"))
    assert started and started[0] is not None  # a child was made
    assert split._pending == {}
    assert _open_descriptors() == before
