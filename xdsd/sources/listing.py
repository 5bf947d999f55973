"""Which files of a config directory are config files, and whether one has changed.

``list_config_files`` walks the directory with ``os.scandir`` and asks the kernel for no
``stat`` of a regular file (the directory entry's type is enough), so listing a large
directory costs a small fraction of a stat per file (``docs/performance.md``).
``file_stamp`` is what an unchanged file is recognised by when a reload must check every
file (a forced reload): device, inode, size, modification and change times.

Anything the kernel refuses while listing (a directory that cannot be opened or read:
``EACCES``, ``EMFILE``/``ENFILE`` when the process is out of descriptors, ``ENOMEM``,
``EIO``; an entry whose type or link cannot be read) is a problem naming the path and
the error, never a directory taken as empty or an entry skipped: the whole load is then
refused, and what is served stays as it was. ``environment_fault`` tells such a failure
of the machine (it may clear with no edit: the daemon tries the load again) from a
problem of the files.
"""

from __future__ import annotations

import errno
import os
import stat

from xdsd.errors import Problem

#: The names of config files (``xdsd.sources.documents`` parses each by its suffix).
SUFFIXES = (".yaml", ".yml", ".json", ".toml")

#: (device, inode, size, mtime_ns, ctime_ns) of a file, following symbolic links.
Stamp = tuple[int, int, int, int, int]


def file_stamp(path: str) -> Stamp | None:
    """The stamp of ``path``; None when it does not exist (any more). Raises OSError
    for any other failure to stat it (the caller cannot tell whether it changed)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def os_problem(path: str, what: str, error: OSError) -> Problem:
    """The error for a failed system call on ``path``: what was attempted, the error's
    symbol (``EMFILE``) and its text."""
    name = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
    text = error.strerror or str(error)
    message = f"cannot {what}: {f'{name}: ' if name else ''}{text}"
    return Problem(path, 0, "", message, os_error=name)


#: The OS errors that say something about the machine, not the files: out of
#: descriptors or memory, an I/O error, a permission the daemon lacks (a directory mode
#: or owner being changed), a stale network file system handle. A load refused for one
#: of them is tried again once it may have cleared (``environment_fault``).
ENVIRONMENT_ERRORS = frozenset(
    {"EMFILE", "ENFILE", "ENOMEM", "ENOBUFS", "EIO", "EACCES", "EPERM", "EAGAIN", "EBUSY"}
    | {"ESTALE", "ETIMEDOUT", "EINTR"}
)


def environment_fault(problem: Problem) -> str:
    """The symbol of the OS error behind ``problem`` (``EMFILE``, its ``os_error``) when
    it is one of ``ENVIRONMENT_ERRORS`` (a failure of the machine, not of the files: it
    may clear with no edit); "" otherwise (a problem of the files themselves, or an OS
    error such as ``ELOOP`` that only an edit mends)."""
    return problem.os_error if problem.os_error in ENVIRONMENT_ERRORS else ""


def list_config_files(root: str, problems: list[Problem]) -> list[str]:
    """Every ``.toml``, ``.yaml``/``.yml`` and ``.json`` file under ``root``, as ``os.walk``
    would find them (each directory's files sorted, then its subdirectories sorted;
    dot-names skipped; symbolic links followed).

    Appends a problem for: ``root`` missing or not a directory, a symbolic link loop, a
    directory named like a config file, a dangling symbolic link, a config name that is
    not a regular file, and any directory or entry that cannot be read (the OS error
    named).
    """
    try:
        st = os.stat(root)
    except FileNotFoundError:
        problems.append(Problem(root, 0, "", "config directory does not exist"))
        return []
    except OSError as e:
        problems.append(os_problem(root, "stat the config directory", e))
        return []
    if not stat.S_ISDIR(st.st_mode):
        problems.append(
            Problem(root, 0, "", "is not a directory: give the directory holding the config files")
        )
        return []
    found: list[str] = []
    _walk(root, found, set(), problems)
    return found


def _walk(dirpath: str, found: list[str], seen: set[str], problems: list[Problem]) -> None:
    try:
        real = os.path.realpath(dirpath, strict=True)
    except OSError as e:
        problems.append(os_problem(dirpath, "resolve the directory", e))
        return
    if real in seen:
        problems.append(Problem(dirpath, 0, "", "symbolic link loop: directory visited twice"))
        return
    seen.add(real)
    try:
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        problems.append(os_problem(dirpath, "list the directory", e))
        return
    subdirs: list[str] = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        try:
            _entry(entry, found, subdirs, problems)
        except OSError as e:
            problems.append(os_problem(entry.path, "read the directory entry", e))
    for sub in subdirs:
        _walk(sub, found, seen, problems)


def _entry(
    entry: os.DirEntry[str], found: list[str], subdirs: list[str], problems: list[Problem]
) -> None:
    """Sort one directory entry: a subdirectory to walk, a config file, or a problem.
    Raises OSError when the entry cannot be looked at (a dangling symbolic link is not
    such a failure: it is a problem of its own)."""
    name = entry.name
    try:
        is_dir = entry.is_dir()
    except FileNotFoundError:
        is_dir = False
    if is_dir:
        if name.endswith(SUFFIXES):
            problems.append(
                Problem(
                    entry.path,
                    0,
                    "",
                    "is a directory but named like a config file (a bind mount of a "
                    "missing file creates one); remove it or mount the file",
                )
            )
        else:
            subdirs.append(entry.path)
        return
    if not name.endswith(SUFFIXES):
        return
    if entry.is_symlink():
        try:
            os.stat(entry.path)
        except FileNotFoundError:
            target = os.readlink(entry.path)
            problems.append(Problem(entry.path, 0, "", f"dangling symbolic link to {target!r}"))
            return
    if not entry.is_file():
        problems.append(Problem(entry.path, 0, "", "is not a regular file"))
        return
    found.append(entry.path)


def as_listed(root: str, path: str) -> str:
    """``path`` as the listing of ``root`` spells it (the watcher reports real paths; the
    root may be a symbolic link)."""
    path = os.path.normpath(path)
    real_root = os.path.realpath(root)
    if real_root != os.path.normpath(root) and (
        path == real_root or path.startswith(real_root + os.sep)
    ):
        return os.path.normpath(root) + path[len(real_root) :]
    return path
