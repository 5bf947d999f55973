"""One config file → a ``FileResult``: read under the limits, parsed, dispatched.

The file is read with plain system calls (``read_config_bytes``: opened ``O_NONBLOCK``,
``fstat``, one ``read``), refused unread when it is not a regular file or is over a size
limit, parsed into documents (``documents.parse_file``), and each document becomes a
model object (``dispatch.parse_document``) or, under ``envoy/``, a raw Envoy resource
(``envoy_raw``). Whatever the file holds, the result says it: nothing here raises for it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from dataclasses import dataclass

from xdsd.errors import Problem, Severity
from xdsd.model import MeshObject, Origin, RawResource
from xdsd.sources.dispatch import parse_document
from xdsd.sources.documents import ParseFailure, parse_file
from xdsd.sources.envoy_raw import parse_raw_resource
from xdsd.sources.limits import DEFAULT_LIMITS, ParseLimits, size_problem
from xdsd.sources.listing import Stamp, os_problem

log = logging.getLogger(__name__)

#: The directory (under the config directory) of raw Envoy resources.
RAW_DIR = "envoy"


@dataclass(frozen=True, slots=True)
class FileResult:
    """What one config file holds: its resources, raw resources and problems.

    A function of the file's bytes and path alone, so it stays valid for as long as the
    file does not change, whatever happens to the other files.
    """

    stamp: Stamp | None
    resources: tuple[tuple[MeshObject, Origin], ...]
    raw: tuple[RawResource, ...]
    problems: tuple[Problem, ...]

    @property
    def failed(self) -> bool:
        """True when the file has an error (it is read again on every reload)."""
        return any(p.severity is Severity.ERROR for p in self.problems)


class Budget:
    """The bytes a load may still read (``max_config_bytes`` less what it keeps)."""

    __slots__ = ("left", "limit")

    def __init__(self, left: int, limit: int) -> None:
        self.left, self.limit = left, limit


def parse_config_file(
    root: str, path: str, *, limits: ParseLimits = DEFAULT_LIMITS, budget: Budget | None = None
) -> FileResult:
    """Read and parse one config file of the directory ``root`` under ``limits`` (never
    raises for what the file holds or for what reading it meets: every problem is in the
    result, an unexpected exception too, as an internal error logged with its
    traceback). ``budget``, when given, is charged the file's size before it is read, and
    a file beyond it is not read (the directory is over ``max_config_bytes``)."""
    problems: list[Problem] = []
    resources: list[tuple[MeshObject, Origin]] = []
    raw: list[RawResource] = []
    stamp = None
    try:
        stamp, data = read_config_bytes(path, limits, budget)
    except NotRead as e:
        return FileResult(e.stamp, (), (), (e.problem,))
    except OSError as e:
        return FileResult(stamp, (), (), (os_problem(path, "read", e),))
    try:
        docs = parse_file(path, data, limits)
        is_raw = first_part(root, path) == RAW_DIR
        for doc in docs:
            if is_raw:
                parsed = parse_raw_resource(doc)
                if isinstance(parsed, Problem):
                    problems.append(parsed)
                else:
                    raw.append(parsed)
            else:
                resource = parse_document(
                    doc, problems, root, refuse_unknown=limits.refuse_unknown_kinds
                )
                if resource is not None:
                    resources.append((resource, Origin(doc.path, doc.line)))
    except ParseFailure as e:
        return FileResult(stamp, (), (), (e.problem,))
    except Exception as e:  # a bug, or memory: this file fails, the loader lives on
        log.exception("internal error reading %s", path)
        return FileResult(stamp, (), (), (internal_problem(path, e),))
    return FileResult(stamp, tuple(resources), tuple(raw), tuple(problems))


def internal_problem(path: str, error: BaseException) -> Problem:
    """The error shown for an unexpected exception while loading ``path``."""
    return Problem(
        path,
        0,
        "",
        f"internal error ({type(error).__name__}: {error}); the load is refused and the "
        "log has the traceback",
    )


class NotRead(Exception):
    """A file that is not read: not a regular file, or over a size limit."""

    def __init__(self, stamp: Stamp | None, problem: Problem) -> None:
        self.stamp, self.problem = stamp, problem


def read_config_bytes(path: str, limits: ParseLimits, budget: Budget | None) -> tuple[Stamp, bytes]:
    """The stamp and bytes of the file at ``path``, as ``open(path, "rb")``, ``os.fstat``
    and ``read()`` give them (and raising the same errors), with plain system calls: no
    file object per file (``docs/performance.md``).

    The file is opened with ``O_NONBLOCK`` (a FIFO swapped in does not block the open)
    and read only when ``fstat`` says it is a regular file within ``max_file_bytes`` and
    ``budget``; else raises NotRead. A file growing while read is read up to the limit."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)  # of the file read, and cheaper than a stat by path
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise NotRead(stamp, Problem(path, 0, "", "is not a regular file: not read"))
        if budget is not None:
            budget.left -= st.st_size
        too_large = size_problem(path, st.st_size, limits)
        if too_large is not None:
            raise NotRead(stamp, too_large)
        if budget is not None and budget.left < 0:
            raise NotRead(
                stamp,
                Problem(
                    path,
                    0,
                    "",
                    f"the config files together are more than max_config_bytes "
                    f"({budget.limit} bytes) with this one ({st.st_size} bytes): not read",
                ),
            )
        data = os.read(fd, st.st_size + 1)
        if len(data) != st.st_size:  # changed since the stat, or a short read: to the end
            chunks = [data]
            size = len(data)
            while size <= limits.max_file_bytes and (chunk := os.read(fd, 1 << 16)):
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return stamp, data


def first_part(root: str, path: str) -> str:
    """The first component of ``path`` below ``root``: ``os.path.relpath``'s, without
    its cost for the paths the listing makes (``root`` joined with the rest)."""
    head = _directory_prefix(root)
    rest = path[len(head) :]
    if path.startswith(head) and not rest.startswith(".") and os.sep + "." not in rest:
        return rest.split(os.sep, 1)[0]
    return os.path.relpath(path, root).split(os.sep)[0]


@functools.lru_cache(maxsize=16)
def _directory_prefix(root: str) -> str:
    """``os.path.join(root, "")``: once per config directory, not once per file."""
    return os.path.join(root, "")
