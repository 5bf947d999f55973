"""Which files of a config directory are config files, and whether one has changed.

``list_config_files`` walks the directory with ``os.scandir`` and asks the kernel for no
``stat`` of a regular file (the directory entry's type is enough), so listing 20,000 files
costs a few milliseconds where a stat of each costs a hundred or more on a busy machine.
``file_stamp`` is what an unchanged file is recognised by when a reload must check every
file (a forced reload): device, inode, size, modification and change times.
"""

from __future__ import annotations

import os

from xdsd.errors import Problem
from xdsd.sources.documents import SUFFIXES

#: (device, inode, size, mtime_ns, ctime_ns) of a file, following symbolic links.
Stamp = tuple[int, int, int, int, int]


def file_stamp(path: str) -> Stamp | None:
    """The stamp of ``path`` (None when it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def list_config_files(root: str, problems: list[Problem]) -> list[str]:
    """Every ``.toml``, ``.yaml``/``.yml`` and ``.json`` file under ``root``, as ``os.walk``
    would find them (each directory's files sorted, then its subdirectories sorted;
    dot-names skipped; symbolic links followed).

    Appends a problem for: ``root`` missing or not a directory, a symbolic link loop, a
    directory named like a config file, a dangling symbolic link, a config name that is
    not a regular file.
    """
    if not os.path.exists(root):
        problems.append(Problem(root, 0, "", "config directory does not exist"))
        return []
    if not os.path.isdir(root):
        problems.append(
            Problem(root, 0, "", "is not a directory: give the directory holding the config files")
        )
        return []
    found: list[str] = []
    _walk(root, found, set(), problems)
    return found


def _walk(dirpath: str, found: list[str], seen: set[str], problems: list[Problem]) -> None:
    real = os.path.realpath(dirpath)
    if real in seen:
        problems.append(Problem(dirpath, 0, "", "symbolic link loop: directory visited twice"))
        return
    seen.add(real)
    try:
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # as os.walk: an unreadable directory is skipped
    subdirs: list[str] = []
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
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
            continue
        if not name.endswith(SUFFIXES):
            continue
        if entry.is_symlink() and not os.path.exists(entry.path):
            problems.append(
                Problem(entry.path, 0, "", f"dangling symbolic link to {os.readlink(entry.path)!r}")
            )
            continue
        if not entry.is_file():
            problems.append(Problem(entry.path, 0, "", "is not a regular file"))
            continue
        found.append(entry.path)
    for sub in subdirs:
        _walk(sub, found, seen, problems)
