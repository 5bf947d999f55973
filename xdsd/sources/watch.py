"""Watching the config directory: file events → speculative reloads.

How this works: on Linux the kernel's inotify events are read directly on the event loop
(``sources.inotify``: no polling thread, no batching), so a change is seen within the
loop's next turn. Once the files have been quiet for the change's hold (``wait_left``:
``quiet_period``, 1 ms, for one path; 2 ms more per further path, at most
``BURST_HOLD``, 50 ms, since a change to many files is likely still under way; and never
while a git command holds the index lock of the repository the directory is in, as ``git
checkout`` does while it writes the work tree, after which the hold is ``quiet_period``
again) the paths changed are handed to ``on_change``, which starts loading them. The
load is speculative: when it is done, ``on_change`` awaits ``settled()``, which judges
it the same way (a refused load is held ``FAILED_HOLD``, 100 ms: a file just created and
not yet written is empty, one half written does not parse) and says whether it may be
published. The events the kernel queued are read before each judgement, so a load that
read a file whose event the loop had not read yet is never taken for a quiet one. If
another event arrives first, the load is superseded: ``on_change`` discards its result
without a trace (nothing published, no error reported, no refused reload counted) and
returns False, and the watcher calls it again with the union of the paths, and so on. A
lone save is thus published as soon as its load is done, while a ``git checkout`` or an
rsync of many files becomes one publish of the final state, and a half-written state
seen along the way (even one that does not load) is not reported. ``max_delay`` (0.5 s,
from the oldest change not yet published) bounds all of this: past it a load is
published whatever happens meanwhile, so a stream of writes that never ends still gets
its changes out. Where inotify cannot be read directly, ``watchfiles`` batches (a 10 ms
quiet check) feed the same machinery.

Editor temp and swap files and VCS directories are ignored; dot-names are *not*
ignored for triggering, because Kubernetes ConfigMap volumes and git-sync publish a new
version by renaming a ``..data`` symlink. A full kernel queue (events lost) is reported
as the directory itself, which makes the loader check every file, and the watches are
set up again for the tree as it then is (``inotify.TreeWatch.rewatch``), so a directory
created while events were lost is watched from then on. When the config
directory itself is a symlink that is swapped to a new target, the watch is
re-established on the new target (its real path is checked every ``poll_interval``).

Certificate files the rules name may live outside the config directory (``/etc/ssl/...``).
``files()`` gives their current set (the last load's); their directories are watched too,
not recursively, and a batch of changes there is reported as the certificate files of the
directories it touched (a file replaced by a rename, a Kubernetes ``..data`` swap, a file
edited in place all count). The set is looked at every ``poll_interval``: a reload that
names other files moves the watch there within that time.

The watcher outlives whatever goes wrong: an exception from ``on_change`` is logged with
its traceback and the next batch is reported as usual; an error from the watch itself
(inotify out of descriptors or watches, a directory that cannot be watched or listed for
want of them) is logged and the watch is set up again after ``poll_interval``, followed
by a reload of every file. A directory the daemon may not read is watched once its mode
changes (``inotify.TreeWatch.pending``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable

import watchfiles

from xdsd.plurals import counted
from xdsd.sources import inotify

log = logging.getLogger(__name__)

# vim swap/backup and its 4913 probe, emacs locks and autosaves, generic temp and backups.
_EDITOR_TEMP = re.compile(
    r"(\.sw[a-p x]$)|(\.swpx$)|(~$)|(^4913$)|(^\.#)|(^#.*#$)|(\.tmp$)|(\.bak$)|(\.orig$)"
    r"|(\.kate-swp$)|(^\.goutputstream-)|(\.part$)"
)


def is_editor_temp(path: str) -> bool:
    """True for names editors use for swap, lock, backup and temporary files."""
    return bool(_EDITOR_TEMP.search(os.path.basename(path)))


#: Directories never watched (nor their contents).
_IGNORED_DIRS = frozenset({".git", "__pycache__", ".hg", ".svn", ".idea", "node_modules"})
#: The longest a load waits after the last event before it is published (a batch of
#: many paths: ``ConfigWatcher.hold``), how long a refused load waits before it is
#: reported, and the wait added per path a batch names beyond the first.
BURST_HOLD = 0.05
FAILED_HOLD = 0.1
HOLD_PER_PATH = 0.002
#: The quiet check of ``watchfiles`` where it is used (no inotify, certificate
#: directories): each check takes the GIL, so it is not made shorter.
FALLBACK_STEP = 0.01


class _Filter(watchfiles.DefaultFilter):
    """watchfiles' default ignores (VCS dirs, caches) plus editor temp files; keeps dot
    names such as ``..data`` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(ignore_dirs=tuple(sorted(_IGNORED_DIRS)))

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return not is_editor_temp(path) and bool(super().__call__(change, path))


class ConfigWatcher:
    """Calls ``on_change(paths)`` for the file events under the config directory (and
    the certificate files), loading speculatively: see the module docstring.

    ``on_change`` awaits ``settled()`` after its load and returns False when it
    discarded the load because that said so: it is called again with those paths and
    the newer ones. Anything else (None, True) means the batch was dealt with."""

    def __init__(
        self,
        config_dir: str,
        on_change: Callable[[set[str]], Awaitable[bool | None]],
        *,
        quiet_period: float = 0.001,
        max_delay: float = 0.5,
        poll_interval: float = 1.0,
        files: Callable[[], Iterable[str]] = frozenset,
        use_inotify: bool | None = None,
    ) -> None:
        self.config_dir = config_dir
        #: The certificate files to watch besides the directory (absolute paths).
        self.files = files
        self.on_change = on_change
        self.quiet_period = quiet_period
        self.max_delay = max_delay
        self.poll_interval = poll_interval
        #: Read inotify directly (None: where it is available); False: ``watchfiles``.
        self.use_inotify = inotify.available() if use_inotify is None else use_inotify
        # Paths changed and not yet handed to on_change; a count of the events noted
        # (``_generation``) and its value when the batch being reported was taken.
        self._pending: set[str] = set()
        self._generation = 0
        self._taken = 0
        # When the oldest change not yet dealt with was seen (monotonic; None: none),
        # and the first one seen since the batch being reported was taken.
        self._since: float | None = None
        self._next: float | None = None
        self._wake = asyncio.Event()
        # Reads the events queued for the inotify watch now (None: no such watch).
        self._drain: Callable[[], None] | None = None
        # When the last event was seen (monotonic), and how many paths the batch being
        # reported names.
        self._last = 0.0
        self._batch = 0
        # The index lock of the git repository the watched directory is in (None: none),
        # and whether it was seen held since the last publish.
        self._git_lock: str | None = None
        self._git_seen = False

    def superseded(self) -> bool:
        """True when the batch being reported is out of date and its load should be
        discarded: a change arrived since the batch was taken, and the oldest change it
        holds is younger than ``max_delay`` (older: publish anyway, so that a stream of
        writes that never ends still gets its changes out)."""
        if self._drain is not None:
            # Events the kernel queued but the loop has not read yet count too: the
            # load may have read the very files they are about (a file created, not yet
            # written), and the loop may turn to this task before it reads them.
            self._drain()
        return self._generation != self._taken and not self._overdue()

    def _overdue(self) -> bool:
        return self._since is not None and time.monotonic() - self._since >= self.max_delay

    async def settled(self, failed: bool = False) -> bool:
        """Wait until the load of the batch being reported may be published: True once
        the files have been quiet long enough (``wait_left``), or once the oldest change
        is ``max_delay`` old; False as soon as it is superseded (a newer event: discard
        the load). ``failed``: the load was refused, which is held longer."""
        while True:
            if self.superseded():
                return False
            if self._overdue():
                return True
            left = self.wait_left(self._batch, failed)
            if left <= 0:
                return True
            await asyncio.sleep(max(left, 0.001))

    def wait_left(self, paths: int, failed: bool = False) -> float:
        """Seconds until a change of ``paths`` paths may be loaded or published (0: now):
        the hold since the last event, which is ``quiet_period`` for one path and
        ``HOLD_PER_PATH`` more for each further one (a change to many files is likely
        still under way), at most ``BURST_HOLD``; ``FAILED_HOLD`` for a refused load (a
        file just created and not yet written is empty, one half written does not
        parse). While a git command holds the index lock of the repository the
        directory is in (a checkout writes the work tree under it), the wait goes on;
        once the lock was seen and is gone, the hold is ``quiet_period`` (the command
        is done)."""
        busy = self._git_busy()
        self._git_seen = self._git_seen or busy
        if busy:
            return max(self.quiet_period, 0.001)
        if failed:
            hold = max(FAILED_HOLD, self.quiet_period)
        elif self._git_seen:
            hold = self.quiet_period
        else:
            beyond = HOLD_PER_PATH * max(0, paths - 1)
            hold = max(self.quiet_period, min(beyond, BURST_HOLD))
        return max(0.0, hold - (time.monotonic() - self._last))

    def _git_busy(self) -> bool:
        """True while a git command holds the index lock of the repository the config
        directory is in (``git checkout`` writes the work tree holding it)."""
        return self._git_lock is not None and os.path.lexists(self._git_lock)

    def _note(self, paths: set[str]) -> None:
        """Changes to ``paths`` were seen: report them (and supersede a load running)."""
        if not paths:
            return
        now = time.monotonic()
        self._pending |= paths
        self._generation += 1
        if self._since is None:
            self._since = now
        if self._next is None:
            self._next = now
        self._last = now
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until ``stop`` is set. Never raises for a missing directory: waits for it."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._deliver(stop), name="config change delivery")
            tasks.create_task(self._watch_files(stop), name="certificate watch")
            await self._watch_directory(stop)

    async def _deliver(self, stop: asyncio.Event) -> None:
        """Hand each settled batch to ``on_change`` (see the module docstring) until
        ``stop``."""
        retry = False
        while True:
            await _either(self._wake, stop)
            if stop.is_set():
                return
            while not self._overdue():  # settle: quiet long enough for this many paths
                if self._drain is not None:
                    self._drain()
                left = self.wait_left(len(self._pending))
                if left <= 0:
                    break
                await asyncio.sleep(max(left, 0.001))
            self._wake.clear()
            paths, self._pending = self._pending, set()
            if not paths:
                continue
            self._taken, self._next, self._batch = self._generation, None, len(paths)
            if retry:
                log.debug("changes during the load: again with %s", counted(len(paths), "path"))
            else:
                log.info(
                    "config change detected: %s, e.g. %s", counted(len(paths), "path"), min(paths)
                )
            retry = await self._report(paths) is False
            if retry:
                self._pending |= paths
                self._wake.set()
            else:
                self._since, self._git_seen = self._next, False

    async def _watch_directory(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            target = os.path.realpath(self.config_dir)
            if not os.path.isdir(target):
                await _wait(stop, self.poll_interval)
                if os.path.isdir(os.path.realpath(self.config_dir)):
                    self._note({self.config_dir})
                continue
            rewatch = asyncio.Event()
            poller = asyncio.create_task(self._poll_target(target, stop, rewatch))
            self._git_lock = git_index_lock(target)
            try:
                if self.use_inotify:
                    await self._inotify(target, rewatch)
                else:
                    await self._watchfiles(target, rewatch)
            except FileNotFoundError:
                log.warning("config directory %s disappeared; waiting for it", self.config_dir)
                await _wait(stop, self.poll_interval)
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
                self._note({self.config_dir})

    async def _inotify(self, target: str, rewatch: asyncio.Event) -> None:
        """Note every change under ``target`` as the kernel reports it, until ``rewatch``
        is set; raises what reading the events raises (``inotify.TreeWatch``)."""
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[None] = loop.create_future()
        with inotify.TreeWatch(target, skip=_skipped) as tree:
            fd = tree.fileno()

            def readable() -> None:
                if failed.done():
                    return
                try:
                    self._note(tree.read())
                except Exception as e:
                    loop.remove_reader(fd)
                    if not failed.done():
                        failed.set_exception(e)

            loop.add_reader(fd, readable)
            self._drain = readable
            waiter = asyncio.ensure_future(rewatch.wait())
            try:
                await asyncio.wait((failed, waiter), return_when=asyncio.FIRST_COMPLETED)
                if failed.done():
                    failed.result()
            finally:
                self._drain = None
                loop.remove_reader(fd)
                waiter.cancel()
                if not failed.done():
                    failed.cancel()

    async def _watchfiles(self, target: str, rewatch: asyncio.Event) -> None:
        """Where inotify cannot be read directly: ``watchfiles``' batches, noted as they
        come (each ends after a quiet check of ``FALLBACK_STEP``)."""
        async for changes in watchfiles.awatch(
            target,
            watch_filter=_Filter(),
            debounce=max(1, int(self.max_delay * 1000)),
            step=max(1, int(FALLBACK_STEP * 1000)),
            stop_event=rewatch,
            recursive=True,
            ignore_permission_denied=True,
        ):
            self._note({p for _, p in changes})

    async def _report(self, paths: set[str]) -> bool | None:
        """``on_change(paths)``; an exception from it is logged, not raised (the watch
        goes on: the next batch, or a SIGHUP, tries again), and counts as dealt with."""
        try:
            return await self.on_change(paths)
        except Exception:
            log.exception("reloading after a change to %s failed", min(paths))
            return None

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
                    step=max(1, int(FALLBACK_STEP * 1000)),
                    stop_event=rewatch,
                    recursive=False,
                    ignore_permission_denied=True,
                ):
                    dirs = {os.path.dirname(p) for _, p in changes}
                    paths = {p for d in dirs for p in watched.get(d, ())}
                    if paths:
                        log.info("certificate change detected: %s", ", ".join(sorted(paths)))
                        self._note(paths)
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


def git_index_lock(directory: str) -> str | None:
    """The index lock file of the git work tree ``directory`` is in (``.git/index.lock``,
    or the one of the git directory a ``.git`` file names: a linked worktree); None
    outside git work trees or when that cannot be read."""
    current = directory
    while True:
        dot_git = os.path.join(current, ".git")
        if os.path.isdir(dot_git):
            return os.path.join(dot_git, "index.lock")
        if os.path.isfile(dot_git):
            try:
                with open(dot_git, encoding="utf-8") as f:
                    lines = f.read(4096).splitlines()
            except (OSError, UnicodeDecodeError):
                return None
            first = lines[0] if lines else ""
            if not first.startswith("gitdir:"):
                return None
            gitdir = os.path.join(current, first.removeprefix("gitdir:").strip())
            return os.path.join(gitdir, "index.lock")
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _skipped(name: str) -> bool:
    """Names whose events and subtrees the inotify watch leaves out: editor litter and
    version-control and tool directories (never config: the loader skips dot-names)."""
    return name in _IGNORED_DIRS or is_editor_temp(name)


async def _either(event: asyncio.Event, other: asyncio.Event) -> None:
    """Wait until ``event`` or ``other`` is set."""
    if event.is_set() or other.is_set():
        return
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(other.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
