"""The supervisor of ``xdsd serve --workers N`` with workers spawned in this process:
readiness only once every worker is ready, SIGHUP forwarded with RELOADING/READY around
it, a worker that exits or stops answering restarted (and systemd's watchdog held back
meanwhile), a startup failure ending the supervisor with the worker's code, a stop
reaching every worker, and the settings refused in one line."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.harness import Inbox
from xdsd.errors import StartupError
from xdsd.model.registrations import EtcdSettings, RegistrySettings
from xdsd.notify import Notifier
from xdsd.settings import Settings
from xdsd.workers.supervisor import Supervisor, WorkerPlace, check_workers
from xdsd.workers.worker import fds_argument, parse_fds, worker_settings


class FakeWorker:
    """A worker process stand-in: notifies the supervisor through its place's socket,
    records the signals it gets, and ends when told (SIGTERM and SIGKILL end it)."""

    def __init__(self, place: WorkerPlace, pid: int) -> None:
        self.place = place
        self.pid = pid
        self.returncode: int | None = None
        self.signals: list[int] = []
        self.restarted = False
        self.notifier = Notifier(place.notify)
        self._ended = asyncio.Event()

    async def wait(self) -> int:
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        if signum in (signal.SIGTERM, signal.SIGKILL):
            self.end(-signum if signum == signal.SIGKILL else 0)

    def end(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._ended.set()


class Spawner:
    """Spawns ``FakeWorker``s, keeping every one made."""

    def __init__(self) -> None:
        self.made: list[FakeWorker] = []

    async def __call__(self, place: WorkerPlace, restarted: bool) -> FakeWorker:
        worker = FakeWorker(place, 1000 + len(self.made))
        worker.restarted = restarted
        self.made.append(worker)
        return worker

    def current(self, index: int) -> FakeWorker:
        return [w for w in self.made if w.place.index == index][-1]


async def until(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    box = Inbox(tmp_path / "systemd.sock")
    try:
        yield box
    finally:
        box.sock.close()


def supervising(
    tmp_path: Path,
    inbox: Inbox,
    body: Callable[[Supervisor, Spawner], Awaitable[None]],
    *,
    count: int = 2,
    watchdog: float | None = None,
    answer_within: float = 60.0,
) -> int:
    """Run a supervisor of ``count`` fake workers alongside ``body``; its exit code."""
    runtime = tmp_path / "run"
    runtime.mkdir()

    async def main() -> int:
        spawner = Spawner()
        supervisor = Supervisor(
            count,
            spawner,
            str(runtime),
            notifier=Notifier(str(tmp_path / "systemd.sock"), watchdog_interval=watchdog),
            grace=1.0,
            answer_within=answer_within,
            backoff=(0.01, 0.05),
        )
        run = asyncio.create_task(supervisor.run())
        try:
            await body(supervisor, spawner)
        finally:
            if not run.done():
                supervisor.request_stop("test over")
        return await run

    return asyncio.run(main())


def test_ready_once_every_worker_is_and_sighup_reaches_every_worker(
    tmp_path: Path, inbox: Inbox
) -> None:
    async def body(supervisor: Supervisor, spawner: Spawner) -> None:
        await until(lambda: len(spawner.made) == 2, "both workers")
        spawner.current(0).notifier.ready("serving 3 services from config")
        await until(lambda: supervisor.slots[0].ready, "worker 0 ready")
        await asyncio.sleep(0.1)
        assert inbox.count("READY=1") == 0  # worker 1 is not ready yet
        spawner.current(1).notifier.ready("serving 3 services from config")
        await until(lambda: inbox.count("READY=1") == 1, "READY=1")
        ready = next(m for m in inbox.read() if "READY=1" in m)
        assert "STATUS=2 of 2 workers ready; serving 3 services from config" in ready

        supervisor.request_reload()
        assert all(w.signals == [signal.SIGHUP] for w in spawner.made)
        await until(lambda: inbox.count("RELOADING=1") == 1, "RELOADING=1")
        spawner.current(0).notifier.ready("serving 4 services from config")
        await asyncio.sleep(0.1)
        assert inbox.count("READY=1") == 1  # worker 1 has not reloaded yet
        spawner.current(1).notifier.ready("serving 4 services from config")
        await until(lambda: inbox.count("READY=1") == 2, "READY=1 after the reload")

    assert supervising(tmp_path, inbox, body) == 0
    assert inbox.count("STOPPING=1") == 1


def test_a_sighup_reaches_a_starting_worker_only_once_it_is_ready(
    tmp_path: Path, inbox: Inbox
) -> None:
    """A worker still starting has no SIGHUP handler (the signal would end it): it gets
    the SIGHUP once it says READY=1, and a reload does not wait for it."""

    async def body(supervisor: Supervisor, spawner: Spawner) -> None:
        await until(lambda: len(spawner.made) == 2, "both workers")
        spawner.current(0).notifier.ready("serving")
        await until(lambda: supervisor.slots[0].ready, "worker 0 ready")
        supervisor.request_reload()  # before the daemon's READY=1: worker 1 is starting
        assert spawner.current(0).signals == [signal.SIGHUP]
        assert spawner.current(1).signals == []
        spawner.current(1).notifier.ready("serving")
        await until(lambda: spawner.current(1).signals == [signal.SIGHUP], "the late SIGHUP")
        spawner.current(0).notifier.ready("serving")
        await until(lambda: inbox.count("READY=1") == 1, "READY=1")

        # once announced: a restarted worker still starting gets it late too, and the
        # reload is over once the ready ones reloaded
        spawner.current(1).end(9)
        await until(lambda: len(spawner.made) == 3, "worker 1 restarted")
        assert spawner.current(1).restarted and not spawner.made[0].restarted
        supervisor.request_reload()
        assert spawner.current(1).signals == []
        await until(lambda: inbox.count("RELOADING=1") == 1, "RELOADING=1")
        spawner.current(0).notifier.ready("serving")
        await until(lambda: inbox.count("READY=1") == 2, "READY=1 after the reload")
        spawner.current(1).notifier.ready("serving")
        await until(lambda: spawner.current(1).signals == [signal.SIGHUP], "the late SIGHUP")

    assert supervising(tmp_path, inbox, body) == 0


def test_a_worker_that_ends_is_restarted_and_the_watchdog_waits_for_it(
    tmp_path: Path, inbox: Inbox
) -> None:
    async def body(supervisor: Supervisor, spawner: Spawner) -> None:
        await until(lambda: len(spawner.made) == 2, "both workers")
        for worker in spawner.made:
            worker.notifier.ready("serving")
        await until(lambda: inbox.count("READY=1") == 1, "READY=1")
        await until(lambda: inbox.count("WATCHDOG=1") >= 2, "watchdog pings")
        first = spawner.current(1)
        first.end(1)  # a crash
        await until(lambda: not supervisor.answering, "worker 1 seen gone")
        pings = inbox.count("WATCHDOG=1")
        await until(lambda: spawner.current(1) is not first, "worker 1 restarted")
        restarted = spawner.current(1)
        assert restarted.place == first.place and supervisor.slots[1].restarts == 1
        # pings again once the new worker lives (starting counts as answering)
        await until(lambda: inbox.count("WATCHDOG=1") > pings, "pings again")
        assert inbox.count("READY=1") == 1  # no second READY=1 for a restart
        restarted.notifier.ready("serving")
        await until(lambda: supervisor.slots[1].ready, "worker 1 ready again")

    assert supervising(tmp_path, inbox, body, watchdog=0.1) == 0


def test_a_ready_worker_that_stops_answering_is_killed_and_restarted(
    tmp_path: Path, inbox: Inbox
) -> None:
    async def body(supervisor: Supervisor, spawner: Spawner) -> None:
        await until(lambda: len(spawner.made) == 2, "both workers")
        await asyncio.sleep(1.5)  # silent while starting (a long load): given its time
        assert not any(signal.SIGKILL in w.signals for w in spawner.made)
        assert supervisor.answering
        for worker in spawner.made:
            worker.notifier.ready("serving")
        await until(lambda: inbox.count("READY=1") == 1, "READY=1")
        stuck = spawner.current(0)

        async def heartbeat() -> None:  # worker 1 keeps answering, worker 0 does not
            while True:
                spawner.current(1).notifier.watchdog()
                await asyncio.sleep(0.05)

        beats = asyncio.create_task(heartbeat())
        await until(lambda: signal.SIGKILL in stuck.signals, "the stuck worker killed", 15)
        await until(lambda: spawner.current(0) is not stuck, "worker 0 restarted")
        assert signal.SIGKILL not in spawner.current(1).signals
        beats.cancel()

    assert supervising(tmp_path, inbox, body, answer_within=0.5) == 0


def test_a_worker_failing_at_startup_ends_the_supervisor_with_its_code(
    tmp_path: Path, inbox: Inbox
) -> None:
    async def body(supervisor: Supervisor, spawner: Spawner) -> None:
        await until(lambda: len(spawner.made) == 2, "both workers")
        spawner.current(0).notifier.ready("serving")
        spawner.current(1).end(3)
        await until(lambda: supervisor.stopping, "the supervisor stopping")

    assert supervising(tmp_path, inbox, body) == 3
    assert inbox.count("READY=1") == 0


def test_stop_sends_sigterm_to_every_worker(tmp_path: Path, inbox: Inbox) -> None:
    made: list[FakeWorker] = []

    async def body(supervisor: Supervisor, spawner: Spawner) -> None:
        await until(lambda: len(spawner.made) == 3, "three workers")
        made.extend(spawner.made)
        supervisor.request_stop("SIGTERM")

    assert supervising(tmp_path, inbox, body, count=3) == 0
    assert [w.signals for w in made] == [[signal.SIGTERM]] * 3
    assert all(w.returncode == 0 for w in made)


def test_settings_workers_cannot_serve_are_refused_in_one_line(tmp_path: Path) -> None:
    etcd = RegistrySettings(etcd=EtcdSettings(endpoints=("http://127.0.0.1:2379",)))
    ok = Settings(config_dir=str(tmp_path), workers=2, registry=etcd)
    check_workers(ok)
    with pytest.raises(StartupError, match=r"set \[registry.etcd\] .* or workers = 1"):
        check_workers(replace(ok, registry=RegistrySettings()))
    with pytest.raises(StartupError, match="needs grpc_impl = grpclib"):
        check_workers(replace(ok, grpc_impl="grpcio"))
    with pytest.raises(StartupError, match=r"config directory .* does not exist"):
        check_workers(replace(ok, config_dir=str(tmp_path / "missing")))


def test_settings_and_flags_read_workers(tmp_path: Path) -> None:
    assert Settings().workers == 1
    assert Settings().merged({"workers": 3}, source="t").workers == 3
    assert Settings().merged({"workers": "auto"}, source="t").workers >= 1
    for wrong in (0, -1, "two", 1.5, True, 100_000):
        with pytest.raises(Exception, match="workers"):
            Settings().merged({"workers": wrong}, source="t")


def test_worker_fds_round_trip_and_hostile_values() -> None:
    a, b = socket.socketpair()
    try:
        text = fds_argument({"grpc": [a], "rest": [b]})
        assert parse_fds(text) == {"grpc": [a.fileno()], "rest": [b.fileno()]}
    finally:
        a.close()
        b.close()
    for wrong in ("admin=3", "grpc=x", "grpc=3;grpc=4", "grpc=", "=3"):
        with pytest.raises(Exception, match="--worker-fds"):
            parse_fds(wrong)


def test_worker_settings_name_each_replica_apart() -> None:
    named = Settings(workers=4, registry=RegistrySettings(replica="xdsd-a"))
    assert worker_settings(named, 2).registry.replica == "xdsd-a-worker2"
    assert worker_settings(named, 2).workers == 1
    assert worker_settings(Settings(workers=2), 0).registry.replica == ""
