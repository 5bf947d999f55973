"""Linux inotify, read directly: a directory tree's changes as paths, the moment the
kernel has them.

How this works: ``inotify_init1`` gives a descriptor the event loop reads when it is
readable (no polling thread, no batching: an event reaches the caller within the loop's
next turn). Every directory of the tree gets a watch (symbolic links to directories are
followed, each directory watched once); a directory created or moved in gets watches
for its whole subtree and is reported itself, so whatever was written in it before its
watch was in place is found by listing it. A directory moved out or deleted loses its
watches. ``read`` turns what the kernel queued into the paths that changed.

Faults: a full kernel queue (``IN_Q_OVERFLOW``: events were lost) is reported as the
root itself, which the loader treats as "anything may have changed" (a listing and a
stat of every file); the lost events may also have been directories created, renamed or
moved out, so once the queue is read the watch set is built again from the tree as it
now is (``TreeWatch.rewatch``: a directory created during the overflow is watched from
then on, one renamed is reported under its new path, one moved out no more). The root
deleted, moved or unmounted raises ``FileNotFoundError`` from ``read`` (also when that
was among the events lost); running out of watches or descriptors raises ``OSError``
from ``__init__`` or ``read``, as does any other failure to watch or list a directory of
the tree but two: one gone meanwhile (nothing to watch), and one the process may not
read (``EACCES``, ``EPERM``: a directory created ``0700`` and opened up later, as rsync
does). The caller sets the watch up again (after a pause: what ran out may be freed by
then) and treats the whole tree as changed. A directory that may not be read is kept
aside and watched (its subtree too) as soon as an event says its mode or owner changed
(``IN_ATTRIB``, which its parent's watch reports; the root's own watch for the root):
no event could say when a descriptor is freed, but a permission only changes with one.
A change of the root's own mode or owner is reported as the root (the loader then checks
every file: a directory it could not list may be readable now).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import struct
from collections.abc import Callable

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

_WATCHED = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_NONBLOCK = os.O_NONBLOCK
_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")
#: Bytes read at a time (the kernel never splits an event across reads).
_READ_SIZE = 64 * 1024
#: A directory that is gone or no directory: nothing to watch (the listing says what).
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
#: A directory the process may not read: watched once its mode or owner changes.
_DENIED = frozenset({errno.EACCES, errno.EPERM})
#: The most directories watched under one root: a tree beyond it is refused (OSError),
#: so a runaway directory cannot use up the user's watches.
MAX_DIRECTORIES = 10000


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, when it has inotify (Linux), else None (looked up once: finding it
    runs ``ldconfig``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "inotify_init1") else None


def available() -> bool:
    """True where inotify can be used (Linux's C library)."""
    return _libc() is not None


class TreeWatch:
    """The inotify watches of one directory tree; ``fileno`` for the event loop,
    ``read`` for what changed. Close it when done (``close``; a context manager too)."""

    def __init__(self, root: str, *, skip: Callable[[str], bool]) -> None:
        """Watch every directory under ``root`` (a real directory path) except those
        whose name ``skip`` is true for. Raises OSError (FileNotFoundError for a missing
        root) when the watches cannot be set up."""
        libc = _libc()
        if libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        self._libc = libc
        self.root = root
        self._skip = skip
        fd = libc.inotify_init1(_NONBLOCK | _CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1", root)
        self._fd: int = fd
        #: watch descriptor → the directory it watches (as reached from ``root``)
        self._dirs: dict[int, str] = {}
        #: directories the process may not read or list (``_DENIED``): watched, with
        #: what is under them, when an event says their mode or owner changed
        self.pending: set[str] = set()
        self._root_wd = -1
        try:
            self._root_wd = self._add_tree(root)
            if self._root_wd < 0:
                raise FileNotFoundError(errno.ENOENT, "no such directory", root)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        """The descriptor to wait on for readability."""
        return self._fd

    def close(self) -> None:
        """Drop every watch (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TreeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_tree(self, top: str) -> int:
        """Watch ``top`` and the directories under it; the watch descriptor of ``top``
        (-1 when it is gone already: a directory that vanished is not an error, or when
        it may not be read: it is then kept in ``pending``). A directory that may not be
        read or listed is kept in ``pending`` (``_DENIED``).

        Raises OSError for any other failure to watch or list a directory (out of
        descriptors, memory or watches; an I/O error): never a subtree left unwatched
        in silence."""
        first = -1
        stack = [top]
        while stack:
            path = stack.pop()
            if len(self._dirs) >= MAX_DIRECTORIES:
                raise OSError(
                    errno.ENOSPC, f"more than {MAX_DIRECTORIES} directories to watch", top
                )
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _WATCHED)
            if wd < 0:
                code = ctypes.get_errno()
                if code in _GONE:
                    continue  # gone, or replaced by a file: nothing to watch
                if code in _DENIED and path != self.root:
                    self.pending.add(path)
                    continue
                raise _os_error("inotify_add_watch", path, code)
            if path == top:
                first = wd
            if wd in self._dirs:  # the same directory reached twice (links): watched once
                continue
            self._dirs[wd] = path
            self.pending.discard(path)
            try:
                entries = list(os.scandir(path))
            except OSError as e:
                if e.errno in _GONE:
                    continue
                if e.errno in _DENIED:
                    self.pending.add(path)
                    continue
                raise
            for entry in entries:
                # the entry's type first: it is known from the listing (no system call
                # but for a symbolic link), and a directory holding 20,000 config files
                # then costs no call of ``skip`` per file
                try:
                    if entry.is_dir(follow_symlinks=True) and not self._skip(entry.name):
                        stack.append(entry.path)
                except OSError as e:
                    if e.errno in _DENIED:
                        self.pending.add(path)  # its entries cannot be looked at
                    elif e.errno not in _GONE:
                        raise
        return first

    def _retry(self, top: str) -> None:
        """Watch the directories of ``pending`` that are ``top`` or under it (and their
        subtrees) again: the mode or owner of ``top`` changed, so they may be readable
        now. Raises OSError as ``_add_tree`` does."""
        prefix = os.path.join(top, "")
        again = sorted(p for p in self.pending if p == top or p.startswith(prefix))
        if not again:
            return
        self.pending.difference_update(again)
        for path in again:
            for wd, watched in list(self._dirs.items()):
                if watched == path:  # watched, but not listed: list it this time
                    del self._dirs[wd]
            self._add_tree(path)

    def _drop_tree(self, top: str) -> None:
        """Forget the watches of ``top`` and everything under it (moved away)."""
        prefix = os.path.join(top, "")
        self.pending = {p for p in self.pending if p != top and not p.startswith(prefix)}
        for wd, path in list(self._dirs.items()):
            if path == top or path.startswith(prefix):
                del self._dirs[wd]
                self._libc.inotify_rm_watch(self._fd, wd)

    def read(self) -> set[str]:
        """The paths changed since the last call (empty when nothing is queued).

        After a full queue (events were lost) the root is among them, and once the
        queue is read the watches are set up again from the tree as it now is
        (``rewatch``).

        Raises FileNotFoundError once the root is deleted, moved or unmounted, OSError
        when a new directory cannot be watched."""
        changed: set[str] = set()
        overflowed = False
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            overflowed = self._parse(data, changed) or overflowed
        if overflowed:
            self.rewatch()
        return changed

    def rewatch(self) -> None:
        """Build the watch set again from the tree as it is now: after events were lost
        the watches no longer match it (a directory created meanwhile unwatched, one
        renamed watched under its old path, one moved out still watched). Every
        directory under the root is watched again (a directory already watched keeps
        its watch descriptor, now under the path it has today); the watches of those no
        longer under the root are dropped.

        Raises FileNotFoundError when the root is gone, OSError as ``__init__`` does
        (the watch is then unusable: close it and set it up again)."""
        old, self._dirs = self._dirs, {}
        self.pending = set()
        root_wd = self._add_tree(self.root)
        if root_wd < 0 or root_wd != self._root_wd:
            raise self._gone()  # deleted, or another directory now has the root's name
        for wd in old.keys() - self._dirs.keys():
            self._libc.inotify_rm_watch(self._fd, wd)  # an error: gone already

    def _gone(self) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, "the watched directory is gone", self.root)

    def _parse(self, data: bytes, changed: set[str]) -> bool:
        """Add the paths the events in ``data`` name to ``changed``; True when the
        kernel's queue overflowed (``read`` then calls ``rewatch``)."""
        overflowed = False
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, size = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw = data[offset : offset + size].split(b"\0", 1)[0]
            offset += size
            if mask & IN_Q_OVERFLOW:
                changed.add(self.root)
                overflowed = True
                continue
            if wd == self._root_wd and mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                raise self._gone()
            directory = self._dirs.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:
                del self._dirs[wd]
                if wd == self._root_wd:
                    raise self._gone()
                continue
            if not raw:  # about the directory itself: its parent reports it, but for the root
                if mask & IN_ATTRIB and self.pending:
                    self._retry(directory)  # the root, or one it could not list
                if mask & IN_ATTRIB and wd == self._root_wd:
                    changed.add(self.root)
                continue
            name = os.fsdecode(raw)
            if self._skip(name):
                continue
            path = os.path.join(directory, name)
            if mask & IN_ATTRIB and self.pending:
                self._retry(path)  # its mode or owner changed: it may be readable now
            if mask & IN_ISDIR and mask & IN_MOVED_FROM:
                self._drop_tree(path)
            elif mask & (IN_CREATE | IN_MOVED_TO) and (mask & IN_ISDIR or os.path.isdir(path)):
                self._add_tree(path)  # a directory, or a link to one, came in
            changed.add(path)
        return overflowed


def _os_error(call: str, path: str, code: int | None = None) -> OSError:
    code = ctypes.get_errno() if code is None else code
    return OSError(code, f"{call}: {os.strerror(code)}", path)
