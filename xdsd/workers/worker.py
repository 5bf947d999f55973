"""One worker of ``xdsd serve --workers N``: a ``Daemon`` on inherited listening sockets.

How this works: the supervisor (``xdsd.workers.supervisor``) starts each worker as
``xdsd serve ... --worker I --worker-fds grpc=3,4;rest=5 --admin-socket PATH
--supervisor-pid PID`` (and ``--restarted`` when it replaces one that ended), with those
descriptors inherited (``pass_fds``), ``NOTIFY_SOCKET`` naming the supervisor's datagram
socket for this worker (not systemd's) and ``WATCHDOG_USEC`` asking for a heartbeat. The
worker then runs the daemon exactly as a single process does (its own snapshots built
from the same directory, its own registry, SIGHUP and SIGTERM as today) except that its
gRPC and REST listeners accept on the inherited sockets and its admin server listens on
the private unix socket ``PATH``, which the supervisor's merged admin server reads. Its
``READY=1``, ``RELOADING=1``, ``STATUS=``, ``WATCHDOG=1`` and ``STOPPING=1`` notifications
go to the supervisor, which tells systemd once for all workers.

Every log line of a worker carries the field ``worker=I``. A worker ends when the
supervisor does (Linux ``PR_SET_PDEATHSIG``: SIGTERM), so a supervisor killed with
SIGKILL leaves no worker serving behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace

from xdsd.app import Daemon
from xdsd.errors import UsageError
from xdsd.notify import Notifier
from xdsd.settings import Settings
from xdsd.transports.connections import raise_descriptor_limit

log = logging.getLogger(__name__)

#: The listeners a worker inherits, by settings key.
INHERITED_KEYS = ("grpc", "rest")
#: ``prctl`` option: the signal this process gets when its parent ends.
_PR_SET_PDEATHSIG = 1


def fds_argument(sockets: Mapping[str, Sequence[socket.socket]]) -> str:
    """The ``--worker-fds`` value that names ``sockets`` (``grpc=3,4;rest=5``)."""
    return ";".join(
        f"{key}={','.join(str(s.fileno()) for s in socks)}" for key, socks in sockets.items()
    )


def parse_fds(text: str) -> dict[str, list[int]]:
    """The descriptors ``--worker-fds`` names, by listener key. Raises UsageError when the
    text is not what ``fds_argument`` makes."""
    found: dict[str, list[int]] = {}
    for part in filter(None, text.split(";")):
        key, _, numbers = part.partition("=")
        fds = numbers.split(",")
        if key not in INHERITED_KEYS or key in found or not all(n.isdigit() for n in fds):
            raise UsageError(f"--worker-fds: cannot read {part!r}")
        found[key] = [int(n) for n in fds]
    return found


def adopt(fds: Mapping[str, Sequence[int]]) -> dict[str, list[socket.socket]]:
    """Listening sockets for the inherited descriptors ``fds``. Raises UsageError when
    one is not a listening stream socket."""
    adopted: dict[str, list[socket.socket]] = {}
    for key, numbers in fds.items():
        for fd in numbers:
            try:
                sock = socket.socket(fileno=fd)
            except OSError as e:
                raise UsageError(f"--worker-fds: descriptor {fd} is not a socket ({e})") from None
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if sock.type != socket.SOCK_STREAM or not listening:
                sock.detach()
                raise UsageError(f"--worker-fds: descriptor {fd} is not a listening socket")
            adopted.setdefault(key, []).append(sock)
    return adopted


def worker_settings(settings: Settings, index: int) -> Settings:
    """``settings`` as worker ``index`` runs them: one process, and its registry replica
    named apart from its siblings' when ``[registry] replica`` names the daemon (each
    worker is a replica of its own)."""
    registry = settings.registry
    if registry.replica:
        registry = replace(registry, replica=f"{registry.replica}-worker{index}")
    return replace(settings, workers=1, registry=registry)


def label_logs(index: int) -> None:
    """Give every log line of this process the structured field ``worker=INDEX`` (text:
    ``worker=1:`` before the message; JSON: ``"worker": 1``), so the lines of the
    workers, which share one stream, say whose they are."""

    def label(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(label)


def end_with_parent(supervisor: int | None) -> None:
    """Ask Linux to send this process SIGTERM when its parent ends (nothing elsewhere);
    SIGTERM at once when the parent is already gone: when the parent is no longer
    ``supervisor`` (the pid the supervisor gave on the command line: a worker starts
    ~0.2 s before it gets here, and a supervisor killed meanwhile left it to a reaper),
    or, without ``supervisor``, when it changed during the call."""
    parent = os.getppid() if supervisor is None else supervisor
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """``xdsd serve --worker I``: serve as worker ``I`` on the inherited sockets of
    ``--worker-fds`` until stopped (see the module docstring). Raises UsageError when
    those descriptors cannot be used.

    With ``--restarted`` (the supervisor restarting a worker that ended while its
    siblings serve), the gRPC and REST listeners accept only once a configuration is
    loaded (``Daemon``'s ``hold_until_loaded``): a worker whose directory holds a refused
    edit would otherwise take its share of new clients and give them nothing, while
    its siblings serve the last good build."""
    end_with_parent(args.supervisor_pid)
    index: int = args.worker
    label_logs(index)
    inherited = adopt(parse_fds(args.worker_fds))
    raise_descriptor_limit()
    settings = worker_settings(settings, index)
    log.info("worker %d (pid %d) starting", index, os.getpid())

    async def serve() -> None:
        daemon = Daemon(
            settings,
            notifier=Notifier.from_environment(),
            settings_path=args.settings,
            backstop=True,
            inherited=inherited,
            admin_socket=args.admin_socket,
            writes_cache=index == 0,
            hold_until_loaded=bool(args.restarted),
        )
        await daemon.run()

    asyncio.run(serve())
    return 0
