"""The parent of ``xdsd serve --workers N``: binds once, runs N workers, speaks for them.

How this works: ``run_supervisor`` checks what would make every worker fail alike (a
missing config directory, ``grpc_impl = grpcio``, registrations kept in memory), binds
the gRPC and REST listening sockets once (a bind error is today's one-line StartupError)
and starts the merged admin server (``xdsd.workers.admin.MergedAdmin``) on the public
admin address. ``Supervisor`` then starts N workers (``xdsd.workers.worker``), each
inheriting the listening sockets, so the kernel hands each new connection to whichever
worker accepts first from the one accept queue; each gets a private unix socket for its
admin server and a datagram socket for its notifications, both in a private runtime
directory (0700, removed at exit).

systemd is told by the supervisor alone (``NotifyAccess=main``): ``READY=1`` once every
worker said ``READY=1``; ``RELOADING=1`` on SIGHUP (forwarded to every ready
worker, and to one still starting once it is ready) and ``READY=1`` once every worker
that was ready reloaded; ``STOPPING=1`` on SIGTERM or SIGINT (forwarded as
SIGTERM: each worker ends its streams with UNAVAILABLE within ``shutdown_grace``);
``WATCHDOG=1`` only while every worker is alive and answering (its own ``WATCHDOG=1``
heartbeat, sent from its event loop, arrived within ``ANSWER_WITHIN`` seconds; a worker
still starting — loading the directory on its loop, seconds for a large mesh — counts
as answering while it lives: ``/readyz`` names it as not ready meanwhile). A worker
that exits is restarted after a backoff that doubles from ``MIN_BACKOFF`` to
``MAX_BACKOFF`` seconds (reset once it served for ``STEADY_AFTER`` seconds); one that
stops answering is killed and restarted the same way; either is logged. Its clients
reconnect, and the accept queue gives them to the other workers. A restarted worker
accepts only once it has loaded a configuration (``--restarted``), so a refused edit
in the directory meanwhile does not give its share of new clients nothing.

A worker that exits before every worker was ready ends the supervisor with its exit code
(the worker has printed why): what fails one worker at startup fails them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from xdsd.app import SHUTDOWN_BACKSTOP, listen_error
from xdsd.errors import StartupError
from xdsd.listeners import Deadline
from xdsd.notify import Notifier
from xdsd.plurals import counted
from xdsd.settings import Address, Settings
from xdsd.transports.connections import (
    ConnectionGate,
    ConnectionLimits,
    bind,
    raise_descriptor_limit,
)
from xdsd.workers.worker import fds_argument

if TYPE_CHECKING:
    from xdsd.workers.admin import MergedAdmin

log = logging.getLogger(__name__)

#: Seconds between a worker's heartbeats (``WATCHDOG=1`` to the supervisor).
HEARTBEAT = 1.0
#: A worker that was ready and is not heard from for this many seconds is not answering:
#: killed and restarted.
ANSWER_WITHIN = 10.0
#: The backoff before restarting a worker that exited: doubles from the first to the last.
MIN_BACKOFF = 0.1
MAX_BACKOFF = 10.0
#: A worker that served this many seconds before it exited is restarted after
#: ``MIN_BACKOFF`` again.
STEADY_AFTER = 30.0
#: The longest notification datagram read from a worker.
MAX_NOTIFICATION = 4096


class WorkerProcess(Protocol):
    """A running worker, as ``asyncio.subprocess.Process`` is one."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, signum: int) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """Where worker ``index`` is reached: its admin server's unix socket (``admin``) and
    the datagram socket its notifications go to (``notify``)."""

    index: int
    admin: str
    notify: str


#: Starts one worker (``Supervisor``'s ``spawn``): given its place and whether it replaces
#: one that ended (``restarted``), the running process.
Spawn = Callable[[WorkerPlace, bool], Awaitable[WorkerProcess]]


@dataclass(slots=True)
class _Slot:
    """One worker's place and what the supervisor knows of the process in it."""

    place: WorkerPlace
    inbox: socket.socket
    process: WorkerProcess | None = None
    ready: bool = False
    reloading: bool = False
    #: A SIGHUP came while this worker was starting: sent once it is ready.
    hup_pending: bool = False
    heard: float = 0.0
    started: float = 0.0
    status: str = ""
    backoff: float = MIN_BACKOFF
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass(slots=True)
class _Outcome:
    """How the supervisor ends: an exit code once decided."""

    code: int | None = None
    reason: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, code: int, reason: str) -> None:
        if self.code is None:
            self.code, self.reason = code, reason
        self.done.set()


class Supervisor:
    """Runs ``count`` workers started by ``spawn`` in places under ``runtime_dir`` and
    tells ``notifier`` (systemd) about them as one daemon (see the module docstring).

    ``answer_within`` and the backoffs are the module's constants unless given (tests);
    ``clock`` is ``time.monotonic``'s kind. ``run`` returns the exit code."""

    def __init__(
        self,
        count: int,
        spawn: Spawn,
        runtime_dir: str,
        *,
        notifier: Notifier,
        grace: float,
        answer_within: float = ANSWER_WITHIN,
        backoff: tuple[float, float] = (MIN_BACKOFF, MAX_BACKOFF),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.count = count
        self.spawn = spawn
        self.runtime_dir = runtime_dir
        self.notifier = notifier
        self.grace = grace
        self.answer_within = answer_within
        self.backoff = backoff
        self.clock = clock
        self.slots: list[_Slot] = []
        self.announced = False
        self.reloading = False
        self.stopping = False
        self._outcome = _Outcome()

    def admin_sockets(self) -> list[str]:
        """The admin socket of every worker, in worker order (the merged admin server's
        sources; a worker being restarted keeps its place, unusable until it listens)."""
        return [slot.place.admin for slot in self.slots]

    @property
    def answering(self) -> bool:
        """Every worker is alive and, once ready, was heard from within
        ``answer_within`` seconds (one still starting counts as answering)."""
        now = self.clock()
        return all(
            s.alive and (not s.ready or now - s.heard <= self.answer_within) for s in self.slots
        )

    async def run(self) -> int:
        """Start every worker and keep them running until ``stop`` (or a worker fails at
        startup); then stop them all. Returns the exit code: 0 after a stop, the failed
        worker's code after a startup failure, 1 after a shutdown that overran its
        bound."""
        loop = asyncio.get_running_loop()
        for index in range(self.count):
            place = WorkerPlace(
                index,
                os.path.join(self.runtime_dir, f"worker-{index}.sock"),
                os.path.join(self.runtime_dir, f"worker-{index}.notify"),
            )
            inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            inbox.bind(place.notify)
            inbox.setblocking(False)
            slot = _Slot(place, inbox)
            self.slots.append(slot)
            loop.add_reader(inbox.fileno(), self._read, slot)
        try:
            async with asyncio.TaskGroup() as tasks:
                keepers = [
                    tasks.create_task(self._keep(slot), name=f"worker {slot.place.index}")
                    for slot in self.slots
                ]
                watch = tasks.create_task(self._watch(), name="worker heartbeats")
                await self._outcome.done.wait()
                watch.cancel()
                await self._stop_all()
                for keeper in keepers:
                    keeper.cancel()
        finally:
            for slot in self.slots:
                loop.remove_reader(slot.inbox.fileno())
                slot.inbox.close()
            self.notifier.close()
        code = self._outcome.code or 0
        log.info("stopped (%s)", self._outcome.reason)
        return code

    def request_stop(self, reason: str) -> None:
        """Stop every worker (SIGTERM: a graceful shutdown each) and end ``run``."""
        self.stopping = True
        self._outcome.end(0, reason)

    def request_reload(self) -> None:
        """SIGHUP: RELOADING=1, then SIGHUP to every ready worker; READY=1 once each
        reloaded. A worker still starting has no SIGHUP handler yet (the signal would
        end it): it gets its SIGHUP once it says READY=1, and the reload does not wait
        for it (it may be held for long, e.g. a restarted worker waiting for a good
        load)."""
        log.info("SIGHUP: every worker reloads")
        if self.announced:
            self.reloading = True
            self.notifier.reloading()
        for slot in self.slots:
            if not slot.alive:
                continue
            if slot.ready:
                slot.reloading = True
                self._signal(slot, signal.SIGHUP)
            else:
                slot.hup_pending = True
        self._check_reloaded()

    async def _keep(self, slot: _Slot) -> None:
        """Run the worker of ``slot``, restarting it with backoff whenever it ends."""
        index = slot.place.index
        while not self._outcome.done.is_set():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(slot.place.admin)
            slot.ready = slot.reloading = slot.hup_pending = False
            slot.heard = slot.started = self.clock()
            try:
                slot.process = await self.spawn(slot.place, slot.restarts > 0)
            except OSError as e:
                log.error("cannot start worker %d: %s", index, e)
                code = 1
            else:
                log.info("worker %d started (pid %d)", index, slot.process.pid)
                code = await slot.process.wait()
            if self._outcome.done.is_set():
                return
            if not self.announced:
                self._outcome.end(code or 1, f"worker {index} ended at startup (code {code})")
                return
            served = self.clock() - slot.started
            if served >= STEADY_AFTER:
                slot.backoff = self.backoff[0]
            slot.restarts += 1
            log.error(
                "worker %d ended (code %s) after %.1f s: restarting it in %.1f s",
                index,
                code,
                served,
                slot.backoff,
            )
            await asyncio.sleep(slot.backoff)
            slot.backoff = min(self.backoff[1], slot.backoff * 2)

    async def _watch(self) -> None:
        """Every second: kill a ready worker that stopped answering (its keeper restarts
        it; one still starting is given its time, as a single daemon's start is);
        WATCHDOG=1 to systemd every half watchdog interval while every worker answers."""
        interval = self.notifier.watchdog_interval
        last_ping = -float("inf")
        while True:
            now = self.clock()
            for slot in self.slots:
                process = slot.process
                silent = now - slot.heard > self.answer_within
                if slot.alive and slot.ready and process is not None and silent:
                    log.error(
                        "worker %d (pid %d) not answering for %.1f s: killing it",
                        slot.place.index,
                        process.pid,
                        now - slot.heard,
                    )
                    slot.heard = now  # once: its keeper restarts it when it is gone
                    self._signal(slot, signal.SIGKILL)
            if interval is not None and now - last_ping >= interval / 2 and self.answering:
                self.notifier.watchdog()
                last_ping = now
            await asyncio.sleep(min(HEARTBEAT, interval / 2) if interval else HEARTBEAT)

    def _read(self, slot: _Slot) -> None:
        """The notifications waiting on ``slot``'s socket (each a datagram of
        ``KEY=VALUE`` lines, ``xdsd.notify``)."""
        while True:
            try:
                data = slot.inbox.recv(MAX_NOTIFICATION)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("reading worker %d's notifications: %s", slot.place.index, e)
                return
            self._heard(slot, data)

    def _heard(self, slot: _Slot, data: bytes) -> None:
        slot.heard = self.clock()
        lines = dict(line.partition("=")[::2] for line in data.decode(errors="replace").split("\n"))
        if "STATUS" in lines:
            slot.status = lines["STATUS"]
        if lines.get("READY") == "1":
            first = not slot.ready
            slot.ready = True
            slot.reloading = False
            if first and slot.restarts:
                log.info("worker %d ready again (restart %d)", slot.place.index, slot.restarts)
            if slot.hup_pending:
                slot.hup_pending = False
                self._signal(slot, signal.SIGHUP)
            self._check_ready()
            self._check_reloaded()
        elif "STATUS" in lines and not self.reloading:
            self.notifier.status(self._status())

    def _check_ready(self) -> None:
        if self.announced or not all(slot.ready for slot in self.slots):
            return
        self.announced = True
        status = self._status()
        self.notifier.ready(status)
        log.info("ready: %s", status)

    def _check_reloaded(self) -> None:
        if self.reloading and not any(slot.reloading and slot.alive for slot in self.slots):
            self.reloading = False
            self.notifier.ready(self._status())

    def _status(self) -> str:
        first = self.slots[0].status if self.slots else ""
        ready = sum(1 for slot in self.slots if slot.ready and slot.alive)
        return f"{ready} of {counted(self.count, 'worker')} ready; {first}".rstrip("; ")

    async def _stop_all(self) -> None:
        """STOPPING=1, SIGTERM to every worker, then wait for them: each has
        ``grace`` seconds for its streams and its own backstop after that; one still
        running ``SHUTDOWN_BACKSTOP`` seconds later is killed (exit code 1)."""
        self.stopping = True
        self.notifier.stopping("shutting down")
        live = [slot for slot in self.slots if slot.alive]
        log.info(
            "stopping %s: open streams get %.1f s to end", counted(len(live), "worker"), self.grace
        )
        for slot in live:
            self._signal(slot, signal.SIGTERM)
        waits = [slot.process.wait() for slot in live if slot.process is not None]
        if not waits:
            return
        deadline = Deadline.after(self.grace + SHUTDOWN_BACKSTOP + 1.0)
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(w) for w in waits], timeout=deadline.left()
        )
        if pending:
            for slot in live:
                self._signal(slot, signal.SIGKILL)
            log.error("a worker still running after its shutdown's bound: killed")
            self._outcome.code, self._outcome.reason = 1, "a worker overran its shutdown"
            await asyncio.wait(pending, timeout=1.0)

    def kill_all(self) -> None:
        """SIGKILL every worker (a second stop signal: exit at once)."""
        for slot in self.slots:
            self._signal(slot, signal.SIGKILL)

    def _signal(self, slot: _Slot, signum: int) -> None:
        if slot.process is not None and slot.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                slot.process.send_signal(signum)


def check_workers(settings: Settings) -> None:
    """Refuse, in one line naming the fix, what ``workers`` > 1 cannot serve correctly:
    grpcio (it binds its own port) and registrations kept in each worker's memory (a
    caller of one worker would not see what registered with another: set
    ``[registry.etcd]``, shared by every worker as by replicas). Raises StartupError."""
    if settings.grpc_impl != "grpclib":
        raise StartupError(
            f"workers = {settings.workers} needs grpc_impl = grpclib (grpcio binds its own "
            "port); set grpc_impl = grpclib or workers = 1"
        )
    if settings.registry.etcd is None:
        raise StartupError(
            f"workers = {settings.workers} would keep registered workloads apart in each "
            "worker's memory; set [registry.etcd] (shared by every worker) or workers = 1"
        )
    if not os.path.isdir(settings.config_dir):
        raise StartupError(
            f"config directory {settings.config_dir} does not exist (or is not a directory): "
            "create it, or give --config-dir DIR (settings key config_dir)"
        )


async def bind_listeners(settings: Settings) -> dict[str, list[socket.socket]]:
    """The gRPC and REST listening sockets of ``settings``, bound once for every worker,
    by settings key. Raises StartupError (one line, as a single daemon says it) when one
    cannot be bound, leaving nothing open."""
    bound: dict[str, list[socket.socket]] = {}
    named: list[tuple[str, str, Address | None]] = [
        ("grpc", "gRPC xDS", settings.grpc),
        ("rest", "REST xDS", settings.rest),
    ]
    for key, name, address in named:
        if address is None:
            continue
        try:
            backlog = settings.grpc_backlog if key == "grpc" else 1024
            bound[key] = await bind(address.host, address.port, backlog=backlog)
        except OSError as e:
            for socks in bound.values():
                for sock in socks:
                    sock.close()
            raise listen_error(name, address, e) from None
        port = bound[key][0].getsockname()[1]
        log.info("%s listening on %s (every worker)", name, Address(address.host, port))
    return bound


def process_spawner(
    argv: Sequence[str], sockets: Mapping[str, Sequence[socket.socket]], heartbeat: float
) -> Spawn:
    """Starts a worker as ``python -m xdsd.cli ARGV --worker I ...`` (``argv`` is the
    supervisor's own command line after the program name) inheriting ``sockets``, its
    notifications and ``heartbeat``-second watchdog pings sent to its place's socket, in
    a session of its own (a terminal's Ctrl-C reaches the supervisor, which stops it),
    told this process's pid (it ends when this process is no longer its parent) and, when
    it replaces one that ended, ``--restarted``."""
    fds = [sock.fileno() for socks in sockets.values() for sock in socks]
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "LISTEN_FDS")}

    supervisor = str(os.getpid())

    async def spawn(place: WorkerPlace, restarted: bool) -> WorkerProcess:
        worker_env = {
            **env,
            "NOTIFY_SOCKET": place.notify,
            "WATCHDOG_USEC": str(int(heartbeat * 2_000_000)),
        }
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "xdsd.cli",
            *argv,
            "--worker",
            str(place.index),
            "--worker-fds",
            fds_argument(sockets),
            "--admin-socket",
            place.admin,
            "--supervisor-pid",
            supervisor,
            *(["--restarted"] if restarted else []),
            pass_fds=fds,
            env=worker_env,
            start_new_session=True,
        )

    return spawn


def run_supervisor(args: argparse.Namespace, settings: Settings) -> int:
    """``xdsd serve --workers N`` (N > 1): check, bind, then supervise until stopped
    (see the module docstring). Raises StartupError when it cannot start."""
    check_workers(settings)
    raise_descriptor_limit()
    argv: list[str] = list(getattr(args, "argv", sys.argv[1:]))
    return asyncio.run(_supervise(settings, argv))


async def _supervise(settings: Settings, argv: Sequence[str]) -> int:
    from xdsd.workers.admin import MergedAdmin

    sockets = await bind_listeners(settings)
    runtime_dir = tempfile.mkdtemp(prefix="xdsd-workers-")  # 0700
    supervisor = Supervisor(
        settings.workers,
        process_spawner(argv, sockets, HEARTBEAT),
        runtime_dir,
        notifier=Notifier.from_environment(),
        grace=settings.shutdown_grace,
    )
    admin = None
    try:
        if settings.admin is not None:
            gate = ConnectionGate(ConnectionLimits.from_settings(settings))
            admin = MergedAdmin(settings, supervisor.admin_sockets, gate)
            try:
                bound = await admin.start()
            except OSError as e:
                raise listen_error("admin", settings.admin, e) from None
            log.info("admin listening on %s (every worker's view)", bound)
        _handle_signals(supervisor, admin)
        log.info("starting %s", counted(settings.workers, "worker"))
        return await supervisor.run()
    finally:
        if admin is not None:
            await admin.close(Deadline.after(1.0))
        for socks in sockets.values():
            for sock in socks:
                sock.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _handle_signals(supervisor: Supervisor, admin: MergedAdmin | None) -> None:
    """SIGHUP reloads every worker and the merged admin's certificate; SIGTERM/SIGINT
    stop the workers (a second one kills them and exits at once, code 128 + signal)."""
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        supervisor.request_reload()
        if admin is not None:
            admin.reload_certificates()

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    def on_stop(signum: signal.Signals) -> None:
        if supervisor.stopping:
            log.warning("%s during shutdown: killing the workers, exiting now", signum.name)
            supervisor.kill_all()
            for handler in logging.getLogger().handlers:
                with contextlib.suppress(Exception):
                    handler.flush()
            os._exit(128 + signum)
        log.info("%s: shutting down every worker", signum.name)
        supervisor.request_stop(signum.name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
