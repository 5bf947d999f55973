"""systemd's notification protocol (``sd_notify``): tell the service manager how we are.

How this works: systemd passes the path of a datagram socket in ``$NOTIFY_SOCKET`` (a
name starting with ``@`` is in the abstract namespace). Each notification is one datagram
of newline-separated ``KEY=VALUE`` lines: ``READY=1`` once serving, ``RELOADING=1`` and
``READY=1`` around a reload, ``STOPPING=1`` when shutting down, ``WATCHDOG=1`` as a
keep-alive when ``$WATCHDOG_USEC`` asks for one, ``STATUS=...`` as a one-line summary
shown by ``systemctl status``.

This is a dozen lines of socket code, written here rather than taken from the ``sdnotify``
package: that package is unmaintained since 2017, does not support abstract socket names
and does not read ``WATCHDOG_USEC``; systemd documents the protocol as stable.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing. Sending never
raises: a service manager that went away must not take the daemon with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the socket named by ``NOTIFY_SOCKET``.

    ``watchdog_interval`` is how often systemd expects ``WATCHDOG=1`` (seconds), None when
    it expects none (``WATCHDOG_USEC`` unset, or meant for another process as
    ``WATCHDOG_PID`` says).
    """

    def __init__(self, address: str | None, *, watchdog_interval: float | None = None) -> None:
        self.address: str | bytes | None = None
        if address:
            # an abstract socket: '@' stands for the leading NUL byte
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_interval
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for what ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
        say (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 1_000_000
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval=interval)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification made of ``lines`` (``"READY=1"``, ...). Returns True when
        it was sent; False without a socket or when sending failed (logged once)."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as e:
            if not self._failed:
                log.warning("cannot notify the service manager at %s: %s", self.address, e)
                self._failed = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """The daemon is serving (``READY=1``, with a ``STATUS=`` line when given)."""
        return self.send("READY=1", *_status(status))

    def reloading(self) -> bool:
        """A reload begins (``RELOADING=1`` with ``MONOTONIC_USEC``, as systemd's
        notify-reload protocol wants; ``ready()`` ends it)."""
        return self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self, status: str = "") -> bool:
        """Shutdown begins (``STOPPING=1``)."""
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """Update the one-line status ``systemctl status`` shows."""
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        """The keep-alive ping (``WATCHDOG=1``)."""
        return self.send("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """``WATCHDOG=1`` every half ``watchdog_interval``, from the event loop, until
        cancelled (returns at once when systemd expects no pings): a loop stuck for longer
        than the watchdog timeout stops the pings, and systemd restarts the service."""
        if self.watchdog_interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_interval / 2)

    def close(self) -> None:
        """Close the socket (a later ``send`` opens it again)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str) -> tuple[str, ...]:
    return (f"STATUS={' '.join(text.split())}",) if text else ()
