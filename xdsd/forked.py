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
raised) leaves a child that ``abandon`` ends (the daemon's state calls it after every
load and translation), and that would end itself at the same deadline anyway
(``SIGALRM``, default action). So a
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
#: The most a child may send (bytes): a cold build's share is a fraction of the config
#: files' bytes (``max_config_bytes``, 256 MiB by default) or of the encoded resources.
DEFAULT_MAX_BYTES = 2 << 30
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

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        when_idle: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """``when_idle``: fork only when a core looks free (``spare_core``); a child on
        a busy machine shares the parent's core and makes the build slower.
        ``max_bytes``: the most a child may send (more: it failed)."""
        self.timeout = timeout
        self.when_idle = when_idle
        self.max_bytes = max_bytes
        # The children whose collect has not been called: pid → the pipe's read end.
        self._pending: dict[int, int] = {}

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
        self._pending[pid] = read_end
        deadline = time.monotonic() + self.timeout

        def collect() -> bytes | None:
            if self._pending.pop(pid, None) is None:
                raise RuntimeError("collected twice, or after abandon()")
            try:
                data = _read_all(read_end, deadline, _HEADER.size + self.max_bytes)
            finally:
                _end(pid, read_end)
            if data is None or len(data) < _HEADER.size:
                return None
            (size,) = _HEADER.unpack_from(data)
            if size != len(data) - _HEADER.size:
                return None
            return data[_HEADER.size :]

        return collect

    def abandon(self) -> int:
        """End every child whose collect was not called (its caller raised): killed,
        reaped, its pipe closed; their collects may no longer be called. Returns how
        many there were. The daemon's state calls it after every load and translation,
        so a failure between a fork and its collect leaks nothing."""
        pending, self._pending = self._pending, {}
        for pid, read_end in pending.items():
            _end(pid, read_end)
        return len(pending)


def _end(pid: int, read_end: int) -> None:
    """Close the pipe of ``pid``, kill it (it wrote everything, failed or is abandoned)
    and reap it: a pid is killed only while it is still our unreaped child."""
    os.close(read_end)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _read_all(fd: int, deadline: float, most: int) -> bytes | None:
    """Everything the child writes up to its end of the pipe closing; None at the
    deadline or beyond ``most`` bytes."""
    chunks: list[bytes] = []
    size = 0
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
        size += len(chunk)
        if size > most:
            return None
        chunks.append(chunk)


def _child(work: Work, fd: int, timeout: float) -> None:
    """The child's whole life (see the module docstring); ends the process."""
    status = 1
    try:
        _detach(fd, timeout)
        data = work()
        for part in (_HEADER.pack(len(data)), data):
            view = memoryview(part)
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
    _close_inherited(fd)
    logging.disable(logging.CRITICAL)


def _close_inherited(keep: int) -> None:
    """Close every descriptor above the standard three but ``keep``: those
    ``/proc/self/fd`` lists (a loop over every possible number would take minutes under a
    huge descriptor limit without ``close_range``), else up to the limit."""
    try:
        listed = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        os.closerange(3, keep)
        os.closerange(keep + 1, _max_fd())
        return
    for fd in listed:
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):  # the listing's own, already closed
                os.close(fd)


def _max_fd() -> int:
    """One past the highest descriptor this process may have open."""
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 1 << 16
