"""Watching the config directory: file events → debounced reload requests.

How this works: ``watchfiles`` (inotify on Linux) reports batches of changes under the
directory. A batch ends when no new event arrived for ``quiet_period`` (10 ms: watchfiles
checks every ``quiet_period`` and ends a batch after a check finds nothing new, so a lone save
is applied after 10-20 ms) or after ``max_delay`` during a long burst (a ``git checkout`` or an
rsync of many files becomes one rebuild). Editor temp and swap files are ignored; dot-names
are *not* ignored for triggering, because Kubernetes ConfigMap volumes and git-sync publish
a new version by renaming a ``..data`` symlink. When the config directory itself is a
symlink that is swapped to a new target, the watch is re-established on the new target
(its real path is checked every ``poll_interval``).

Certificate files the rules name may live outside the config directory (``/etc/ssl/...``).
``files()`` gives their current set (the last load's); their directories are watched too,
not recursively, and a batch of changes there is reported as the certificate files of the
directories it touched (a file replaced by a rename, a Kubernetes ``..data`` swap, a file
edited in place all count). The set is looked at every ``poll_interval``: a reload that
names other files moves the watch there within that time.

The watcher outlives whatever goes wrong: an exception from ``on_change`` is logged with
its traceback and the next batch is reported as usual; an error from the watch itself
(inotify out of descriptors or watches, a directory that cannot be read) is logged and
the watch is set up again after ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable

import watchfiles

from xdsd.plurals import counted

log = logging.getLogger(__name__)

# vim swap/backup and its 4913 probe, emacs locks and autosaves, generic temp and backups.
_EDITOR_TEMP = re.compile(
    r"(\.sw[a-p x]$)|(\.swpx$)|(~$)|(^4913$)|(^\.#)|(^#.*#$)|(\.tmp$)|(\.bak$)|(\.orig$)"
    r"|(\.kate-swp$)|(^\.goutputstream-)|(\.part$)"
)


def is_editor_temp(path: str) -> bool:
    """True for names editors use for swap, lock, backup and temporary files."""
    return bool(_EDITOR_TEMP.search(os.path.basename(path)))


class _Filter(watchfiles.DefaultFilter):
    """watchfiles' default ignores (VCS dirs, caches) plus editor temp files; keeps dot
    names such as ``..data`` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(ignore_dirs=("__pycache__", ".hg", ".svn", ".idea", "node_modules"))

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return not is_editor_temp(path) and bool(super().__call__(change, path))


class ConfigWatcher:
    """Calls ``on_change(paths)`` after each settled batch of relevant file events."""

    def __init__(
        self,
        config_dir: str,
        on_change: Callable[[set[str]], Awaitable[None]],
        *,
        quiet_period: float = 0.01,
        max_delay: float = 0.5,
        poll_interval: float = 1.0,
        files: Callable[[], Iterable[str]] = frozenset,
    ) -> None:
        self.config_dir = config_dir
        #: The certificate files to watch besides the directory (absolute paths).
        self.files = files
        self.on_change = on_change
        self.quiet_period = quiet_period
        self.max_delay = max_delay
        self.poll_interval = poll_interval

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set. Never raises for a missing directory: waits for it."""
        outside = asyncio.create_task(self._watch_files(stop))
        try:
            await self._watch_directory(stop)
        finally:
            outside.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await outside

    async def _watch_directory(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            target = os.path.realpath(self.config_dir)
            if not os.path.isdir(target):
                await _wait(stop, self.poll_interval)
                if os.path.isdir(os.path.realpath(self.config_dir)):
                    await self._report({self.config_dir})
                continue
            rewatch = asyncio.Event()
            poller = asyncio.create_task(self._poll_target(target, stop, rewatch))
            try:
                async for changes in watchfiles.awatch(
                    target,
                    watch_filter=_Filter(),
                    debounce=max(1, int(self.max_delay * 1000)),
                    step=max(1, int(self.quiet_period * 1000)),
                    stop_event=rewatch,
                    recursive=True,
                    ignore_permission_denied=True,
                ):
                    paths = {p for _, p in changes}
                    log.info(
                        "config change detected: %s, e.g. %s",
                        counted(len(paths), "path"),
                        min(paths),
                    )
                    await self._report(paths)
            except FileNotFoundError:
                log.warning("config directory %s disappeared; waiting for it", self.config_dir)
            except Exception:
                log.exception(
                    "watching %s failed; watching again in %.1f s",
                    self.config_dir,
                    self.poll_interval,
                )
                await _wait(stop, self.poll_interval)
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            if not stop.is_set():
                log.info(
                    "config directory %s now points at %s",
                    self.config_dir,
                    os.path.realpath(self.config_dir),
                )
                await self._report({self.config_dir})

    async def _report(self, paths: set[str]) -> None:
        """``on_change(paths)``; an exception from it is logged, not raised (the watch
        goes on: the next batch, or a SIGHUP, tries again)."""
        try:
            await self.on_change(paths)
        except Exception:
            log.exception("reloading after a change to %s failed", min(paths))

    async def _poll_target(self, target: str, stop: asyncio.Event, rewatch: asyncio.Event) -> None:
        while True:
            await _wait(stop, self.poll_interval)
            if stop.is_set() or os.path.realpath(self.config_dir) != target:
                rewatch.set()
                return

    def _outside(self) -> dict[str, frozenset[str]]:
        """The watched certificate files outside the config directory, by directory
        (existing directories only)."""
        root = os.path.join(os.path.realpath(self.config_dir), "")
        by_dir: dict[str, set[str]] = {}
        for path in self.files():
            directory = os.path.realpath(os.path.dirname(path))
            if os.path.join(directory, "").startswith(root) or not os.path.isdir(directory):
                continue
            by_dir.setdefault(directory, set()).add(path)
        return {d: frozenset(p) for d, p in by_dir.items()}

    async def _watch_files(self, stop: asyncio.Event) -> None:
        """Watch the directories of the certificate files outside the config directory
        (see the module docstring) until ``stop`` is set."""
        while not stop.is_set():
            watched = self._outside()
            if not watched:
                await _wait(stop, self.poll_interval)
                continue
            rewatch = asyncio.Event()
            poller = asyncio.create_task(self._poll_files(watched, stop, rewatch))
            try:
                async for changes in watchfiles.awatch(
                    *watched,
                    debounce=max(1, int(self.max_delay * 1000)),
                    step=max(1, int(self.quiet_period * 1000)),
                    stop_event=rewatch,
                    recursive=False,
                    ignore_permission_denied=True,
                ):
                    dirs = {os.path.dirname(p) for _, p in changes}
                    paths = {p for d in dirs for p in watched.get(d, ())}
                    if paths:
                        log.info("certificate change detected: %s", ", ".join(sorted(paths)))
                        await self._report(paths)
            except FileNotFoundError:
                log.warning("a certificate directory disappeared; watching again")
                await _wait(stop, self.poll_interval)
            except Exception:
                log.exception(
                    "watching certificate directories failed; watching again in %.1f s",
                    self.poll_interval,
                )
                await _wait(stop, self.poll_interval)
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller

    async def _poll_files(
        self, current: dict[str, frozenset[str]], stop: asyncio.Event, rewatch: asyncio.Event
    ) -> None:
        """Set ``rewatch`` once ``stop`` is set or the files to watch are no longer
        ``current``."""
        while not stop.is_set() and self._outside() == current:
            await _wait(stop, self.poll_interval)
        rewatch.set()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
