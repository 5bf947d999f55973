"""Work done on a second core: a function run in a forked child, its bytes collected.

A cold build of a large mesh is CPU-bound Python, one core's worth. ``ForkSplit`` lets the
loader and the translation hand a share of it to a child process made by ``os.fork``:
the child sees the parent's objects as they were at the fork (copy on write, nothing
pickled on the way in), runs ``work()``, and writes the bytes it returns to a pipe; the
parent, having done its own share meanwhile, collects them. The bytes are all that
crosses, so ``work`` must return the cheapest form of its result (encoded resources,
pickled model objects).

Contract (``ForkSplit.__call__``): ``split(work)`` returns a *collect* callable, or None
when no child can be made (forking is off, the machine has one core, no core is free at
that moment, ``fork`` failed);
the caller then does the work itself. ``collect()`` returns ``work()``'s bytes, or None
when the child failed in any way (raised, was killed, exited early, wrote less than it
said, or did not finish within ``timeout`` seconds of the fork, when it is killed); it
always reaps the child, and may be called once. A caller that does not call it (it
raised) leaves a child that ends itself at the same deadline (``SIGALRM``, default
action) and is reaped by the next ``collect`` of this ``ForkSplit`` or at exit. So a
caller is correct whatever the child does: None means "do it yourself", and bytes are
exactly what ``work()`` returned in the child.

What the child does first: it closes every inherited descriptor but its pipe's end and
the standard three (client connections and listening sockets stay the parent's alone:
a connection the parent closes is not held open by the child), detaches from the
parent's signal wake-up descriptor and restores the default action of the signals the
daemon handles (a SIGTERM to the process group ends the child, and never reaches the
parent's event loop through a shared descriptor), and turns logging off (another thread
of the parent may have held the log writer's lock at the fork). It never returns into
the parent's code: it leaves with ``os._exit``, so no ``atexit`` handler, buffered
output or finalizer of the parent runs twice.

What it costs: the fork itself (page tables: a few milliseconds for a few hundred MB) and
the pages the child writes to (reference counts of the objects it reads: its resident
memory grows towards what it touches, until it exits). ``docs/performance.md``, "Cold
build over two cores", has the figures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import struct
import time
from collections.abc import Callable

from xdsd.settings import cores

#: What a split is handed: the work, run in the child, returning its result as bytes.
Work = Callable[[], bytes]
#: What a split returns: collect the child's bytes (None: do the work yourself).
Collect = Callable[[], bytes | None]
#: ``ForkSplit``'s type as the loader and the translation take it.
Split = Callable[[Work], Collect | None]

#: Seconds a child may take from its fork to its last byte (then it is killed and the
#: caller does the work itself): far beyond any cold build's share.
DEFAULT_TIMEOUT = 120.0
#: The signals whose handlers the child drops (the daemon's, and Ctrl-C's).
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!Q")
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def spare_core() -> bool:
    """True when a core looks free for the child right now: fewer processes running or
    waiting to run than the machine has cores (``/proc/loadavg``'s fourth field counts
    them, this process included); True when that cannot be read. A second process on a
    busy machine only shares the same core: measured on a shared 2-core machine, the
    split load is then 0.3-0.4 s slower than the serial one at 10,000 services."""
    try:
        fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 256)
        finally:
            os.close(fd)
    except OSError:
        return True
    return spare_core_in(text, cores())


def spare_core_in(loadavg: bytes, cpus: int) -> bool:
    """``spare_core`` for the text of ``/proc/loadavg`` and ``cpus`` cores (True when
    the text is not what Linux writes)."""
    try:
        running = int(loadavg.split()[3].split(b"/")[0])
    except (IndexError, ValueError):
        return True
    return running < cpus


class ForkSplit:
    """Runs work in forked children (see the module docstring). Not thread-safe: one
    thread starts and collects its children."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, when_idle: bool = True) -> None:
        """``when_idle``: fork only when a core looks free (``spare_core``); a child on
        a busy machine shares the parent's core and makes the build slower."""
        self.timeout = timeout
        self.when_idle = when_idle
        # Children started and not reaped yet (a collect never called).
        self._children: set[int] = set()

    @classmethod
    def for_machine(cls, enabled: bool = True) -> ForkSplit | None:
        """A split when ``enabled``, ``os.fork`` exists and this process may use two
        cores or more; else None (everything is built in the process)."""
        if not enabled or not hasattr(os, "fork") or cores() < 2:
            return None
        return cls()

    def __call__(self, work: Work) -> Collect | None:
        """Fork a child running ``work``; its collect, or None when it cannot fork or
        (``when_idle``) no core is free."""
        self._reap_finished()
        if self.when_idle and not spare_core():
            return None
        try:
            read_end, write_end = os.pipe()
        except OSError as e:
            log.debug("no pipe for a build child: %s", e)
            return None
        try:
            pid = os.fork()
        except OSError as e:
            os.close(read_end)
            os.close(write_end)
            log.debug("cannot fork a build child: %s", e)
            return None
        if pid == 0:  # the child: never returns
            _child(work, write_end, self.timeout)
        os.close(write_end)
        self._children.add(pid)
        started = time.monotonic()
        done = False

        def collect() -> bytes | None:
            nonlocal done
            if done:
                raise RuntimeError("collected twice")
            done = True
            try:
                data = _read_all(read_end, started + self.timeout)
            finally:
                os.close(read_end)
                self._end(pid, kill=True)
            if data is None or len(data) < _HEADER.size:
                return None
            (size,) = _HEADER.unpack_from(data)
            if size != len(data) - _HEADER.size:
                return None
            return data[_HEADER.size :]

        return collect

    def _end(self, pid: int, *, kill: bool) -> None:
        """Reap ``pid`` (killed first when ``kill``: it wrote everything or failed)."""
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        self._children.discard(pid)

    def _reap_finished(self) -> None:
        """Reap the children of collects never called that have ended."""
        for pid in list(self._children):
            try:
                ended, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                ended = pid
            if ended:
                self._children.discard(pid)


def _read_all(fd: int, deadline: float) -> bytes | None:
    """Everything the child writes up to its end of the pipe closing; None at the
    deadline."""
    chunks: list[bytes] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(left * 1000):
            continue
        try:
            chunk = os.read(fd, _CHUNK)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _child(work: Work, fd: int, timeout: float) -> None:
    """The child's whole life (see the module docstring); ends the process."""
    status = 1
    try:
        _detach(fd, timeout)
        data = work()
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            written = os.write(fd, view[:_CHUNK])
            view = view[written:]
        status = 0
    except BaseException:  # any failure: the parent does the work
        status = 1
    finally:
        os._exit(status)


def _detach(fd: int, timeout: float) -> None:
    """Leave the parent's descriptors, signals and logging alone; end at ``timeout``."""
    with contextlib.suppress(ValueError):  # not the main thread: it had none
        signal.set_wakeup_fd(-1)
    for signum in _RESET_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, int(timeout + 0.999)))
    os.closerange(3, fd)
    os.closerange(fd + 1, _max_fd())
    logging.disable(logging.CRITICAL)


def _max_fd() -> int:
    """One past the highest descriptor this process may have open."""
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 1 << 16
