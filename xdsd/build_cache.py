"""The restart cache: the last good build, kept in the state directory, served at start.

What it holds (one file, ``STATE_DIR/restart-cache``): a header saying which format, xdsd
version and settings (``fingerprint``) wrote it; every config file of the load it was made
from, with its stamp (device, inode, size, mtime, ctime) and the SHA-256 of its bytes; the
certificate files and directories that load read or watched (files with stamp and hash, a
directory with its names, an absent path as absent); and the snapshot of every node class
held at the time, as resources (type URL, name, digest, token, references, bytes), each
resource stored once however many classes share it, with each class's versions. A keyed
hash (HMAC-SHA-256, key ``STATE_DIR/restart-cache.key``, 0600, generated once) ends the
file.

The layout (format 3): ``MAGIC``, then a small JSON header (format, byte order,
fingerprint, config directory, time written, counts, the type URLs, the certificate
paths' records, each class's key, versions and number of added resources), then the
``SECTIONS`` in order, each preceded by its length: the file and resource tables as
packed arrays (``array``: stamps, type indexes, tokens, lengths, reference counts, class
members) and joined texts (paths and names NUL-separated, digests at a fixed width), and
last every resource's bytes back to back. Reading it is a few C-level conversions per
table and one slice per resource, not a JSON document of 60,000 rows checked row by row
(format 2 spent ~0.3 s there at 10,000 services).

How a cache is accepted (``BuildCache.read`` then ``CachedBuild.check``): the file is at
most ``max_bytes`` (checked before reading it), ends with the right HMAC (checked before
anything in it is parsed: the header is JSON, the tables are numbers and text, the
resources are bytes that are never executed), has this format, byte order, xdsd version
and these settings, and parses into what it says (every table of the size its count
says, every index in range, the lengths summing to the bytes there are; every class's
versions recomputed from its resources' tokens and compared, every class's snapshot
checked consistent). Then the config directory is listed (names only, as the loader lists
it) and must list exactly the recorded files, in order; each file is stat'ed: a stamp
equal to the recorded one, taken long enough after the file's last change
(``RACY_SECONDS``: a file changed again within the timestamp granularity of its last
change could keep its stamp), counts as unchanged; any other stamp of the same size is
read and its hash compared; a different size is a change. The certificate paths are
checked the same way. Anything else is a reason, logged in one line, and the cache is not
used.

Why the resources' digests are not recomputed at start (format 2 did: 60,000 SHA-256,
~0.1 s at 10,000 services): the HMAC, checked over the whole file before anything is
parsed, already proves the bytes are the ones ``write`` wrote, and ``write`` takes each
resource's digest and bytes from the same ``Resource`` object, whose digest is its
payload's hash by construction (``Resource``'s contract, which serving relies on too).
A recomputation could only catch a key holder writing a cache by hand (outside what the
HMAC protects against, below) or a bug in the layout's offsets; the latter would shift
every resource, and the tests compare every resource read back with the one written. A
tampered resource is refused by the HMAC (``tests/test_restart_cache.py``). The tokens are
kept as written for the same reason (the versions, compared, are their sums).

What the HMAC protects against, and what not: a torn or truncated write, a flipped bit,
a file from another daemon or host (another key), and someone who can write the state
directory's cache file but cannot read the key. Not against someone running as xdsd's
user (who can read the key, and can edit the config directory anyway).

The writer (``BuildCache.write``) runs in a worker thread, after a load was published:
each file's hash is reused while its stamp is the one it was hashed at; a file whose
stamp is no longer the one the load read it at is a change on its way (the next load
writes the cache again), and nothing is written; likewise a certificate file whose
bytes are not those the build holds, or a watched path (a directory) changed since the
load began (``Capture``); nor is a build with a resource name
holding NUL (which no valid mesh makes: names are NUL-separated). The file is written to
a temporary file in the state directory, fsync'ed and renamed over the previous one (then
the directory fsync'ed): a reader sees the old cache or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import struct
import sys
import time
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from itertools import accumulate, pairwise
from typing import Any

from xdsd.ca.files import CAError, owned_directory, write_private_file
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import InconsistentSnapshotError, XdsdError
from xdsd.model.mesh_config import WORKLOAD_SECRET
from xdsd.resources import PUSH_ORDER, SECRET, Resource, TypeUrl
from xdsd.sources.listing import Stamp, list_config_files
from xdsd.translate import ConfigSourceKind, NodeClass
from xdsd.translate.node import ClientKind, Role

log = logging.getLogger(__name__)

#: The cache format; another one is ignored (a new xdsd version is too).
FORMAT = 3
CACHE_FILE = "restart-cache"
KEY_FILE = "restart-cache.key"
MAGIC = b"xdsd restart cache\n"
_LENGTH = struct.Struct(">Q")
_MAC_BYTES = 32
#: A file whose last change (mtime or ctime) is less than this before its hash was taken
#: may have changed again without its stamp changing (coarse timestamps): its bytes are
#: hashed again at start rather than trusted by stamp.
RACY_SECONDS = 2.0
#: The default bound on the cache file (settings ``max_restart_cache_bytes``).
DEFAULT_MAX_BYTES = 1 << 30


class CacheRefused(XdsdError):
    """The state directory or its cache cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A config or certificate path as the cached build saw it: ``kind`` ``file`` (with
    its stamp and the SHA-256 of its bytes), ``dir`` (with its entries' names) or
    ``absent``."""

    path: str
    kind: str
    stamp: Stamp | None = None
    digest: str = ""
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Capture:
    """What one write records: the load's listed files and their stamps as the loader
    read them, the certificate paths it read or watched, the classes' snapshots, the
    services count (for the status line) and the settings' ``fingerprint``.

    ``certificates`` are the bytes the load built from, by path, and ``loaded_ns`` the
    wall-clock time (ns) the load began: a certificate file whose bytes now differ from
    those, and any other watched path (a directory, a certificate file the load could
    not use) changed since the load began, is a change on its way, and nothing is
    written (0: not known, that check skipped)."""

    config_dir: str
    fingerprint: str
    files: tuple[str, ...]
    stamps: Mapping[str, Stamp | None]
    watched: frozenset[str]
    classes: Mapping[NodeClass, Snapshot]
    services: int
    certificates: Mapping[str, bytes] = field(default_factory=dict)
    loaded_ns: int = 0


@dataclass(frozen=True, slots=True)
class CachedBuild:
    """A cache read back, its integrity checked: the classes' snapshots to serve, and
    what must still be checked against the directory (``check``). The config files are
    kept as read (``paths``, their ``stamps``, their SHA-256s as one text of 64 hex
    digits each, ``newest_change`` the latest mtime or ctime among them), not as one
    object each (20,000 at 10,000 services); ``files`` gives them as ``FileRecord``s."""

    config_dir: str
    written_ns: int
    services: int
    paths: tuple[str, ...]
    stamps: tuple[Stamp, ...] = field(repr=False)
    file_digests: str = field(repr=False)
    newest_change: int
    watched: tuple[FileRecord, ...]
    classes: Mapping[NodeClass, Snapshot] = field(repr=False)

    @property
    def files(self) -> tuple[FileRecord, ...]:
        """The config files as records (path, stamp, SHA-256), in listing order."""
        return tuple(
            FileRecord(path, "file", stamp, self.file_digest(i))
            for i, (path, stamp) in enumerate(zip(self.paths, self.stamps, strict=True))
        )

    def file_digest(self, i: int) -> str:
        """The SHA-256 (hex) of the ``i``-th config file when the cache was written."""
        return self.file_digests[i * _FILE_DIGEST_LENGTH : (i + 1) * _FILE_DIGEST_LENGTH]

    def describe(self) -> str:
        """``N services, C classes, written at TIME`` for logs and the status line."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.written_ns / 1e9))
        services = f"{self.services} service" + ("" if self.services == 1 else "s")
        classes = f"{len(self.classes)} class" + ("" if len(self.classes) == 1 else "es")
        return f"{services}, {classes}, written {when}"

    def check(self) -> str:
        """Why the cached build is not what the directory holds now ("" when it is): a
        file added, removed, renamed or changed, a certificate path changed, the
        directory not listable."""
        problems: list[Any] = []
        listed = list_config_files(self.config_dir, problems)
        if problems:
            return f"the config directory cannot be listed ({problems[0]})"
        paths = self.paths
        if len(listed) != len(paths) or listed != list(paths):
            recorded = set(paths)
            added = sorted(set(listed) - recorded)
            removed = sorted(recorded - set(listed))
            if added:
                return f"{added[0]} was added since (and {len(added) - 1} more)"
            if removed:
                return f"{removed[0]} was removed since (and {len(removed) - 1} more)"
            return "the config files are listed in another order"
        racy_after = self.written_ns - int(RACY_SECONDS * 1e9)
        # The common case (20,000 files at 10,000 services): every file's last change
        # long enough before the cache was written (one comparison for all), and each
        # file's stamp now equal to the recorded one, compared as one tuple. Anything
        # else, or a stat that fails, is looked at closely by ``_changed``.
        trusted = self.newest_change < racy_after
        stat_ = os.stat
        regular = stat.S_IFREG
        for i, (path, kept) in enumerate(zip(paths, self.stamps, strict=True)):
            try:
                st = stat_(path)
            except OSError:
                st = None
            if (
                trusted
                and st is not None
                and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == kept
                and stat.S_IFMT(st.st_mode) == regular
            ):
                continue
            why = _changed(FileRecord(path, "file", kept, self.file_digest(i)), racy_after)
            if why:
                return f"{path} {why} since"
        for record in self.watched:
            why = _changed(record, racy_after)
            if why:
                return f"{record.path} {why} since"
        return ""


def _changed(record: FileRecord, racy_after: int) -> str:
    """How ``record``'s path differs from what was recorded ("" when it does not)."""
    try:
        st = os.stat(record.path)
    except FileNotFoundError:
        return "" if record.kind == "absent" else "was removed"
    except OSError as e:
        return f"cannot be stat'ed ({e.strerror})"
    if record.kind == "absent":
        return "appeared"
    if stat.S_ISDIR(st.st_mode):
        if record.kind != "dir":
            return "became a directory"
        try:
            names = tuple(sorted(os.listdir(record.path)))
        except OSError as e:
            return f"cannot be listed ({e.strerror})"
        return "" if names == record.names else "had files added or removed"
    if record.kind != "file" or record.stamp is None:
        return "became a file"
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if st.st_size != record.stamp[2]:
        return "changed size"
    recorded = record.stamp
    if stamp == recorded and max(recorded[3], recorded[4]) < racy_after:
        return ""
    try:
        digest, _ = _hash_file(record.path)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return "" if digest == record.digest else "changed"


def _hash_file(path: str) -> tuple[str, Stamp]:
    """The SHA-256 (hex) of the regular file ``path`` and its stamp when opened. Raises
    OSError (also for a file that is not regular)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest(), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fingerprint(*parts: object) -> str:
    """A digest of what a build depends on besides the files (the format, xdsd's
    version, the settings that reach translation): a cache made under another is
    ignored. ``parts`` must have deterministic ``repr``s (frozen dataclasses, tuples)."""
    return hashlib.sha256(repr((FORMAT, *parts)).encode()).hexdigest()


def state_directory(path: str) -> str:
    """``path`` (absolute), created 0700 when missing. Raises CacheRefused when it is
    not a directory, is not owned by this user, or is writable by group or others
    (someone else could replace the cache, or the key). A symbolic link is followed
    (systemd's ``StateDirectory=`` may be one)."""
    try:
        return owned_directory(
            os.path.abspath(path),
            what="the state directory",
            forbidden=0o022,
            opened="writable by group or others",
            fix="; chmod go-w it",
            follow_symlinks=True,
        )
    except CAError as e:
        raise CacheRefused(str(e)) from None


class BuildCache:
    """The restart cache of one daemon in ``directory`` (see the module docstring).

    Construction checks the directory (``state_directory``) and reads or creates the key;
    raises CacheRefused when either cannot be used. ``write`` and ``read`` may run in a
    worker thread, one at a time."""

    def __init__(self, directory: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = state_directory(directory)
        self.path = os.path.join(self.directory, CACHE_FILE)
        self.max_bytes = max_bytes
        self._key = _key(os.path.join(self.directory, KEY_FILE))
        # path → (stamp, digest, hashed at less RACY_SECONDS) of earlier writes' hashes
        self._hashes: dict[str, tuple[Stamp, str, int]] = {}
        #: Bytes and seconds of the last write (0 when none), for logs and benchmarks.
        self.last_write: tuple[int, float] = (0, 0.0)

    # -- writing -------------------------------------------------------------------------

    def adopt(self, found: CachedBuild) -> None:
        """Take the file hashes of ``found`` (a cached build ``check`` has just accepted)
        as this cache's known hashes, so the first write after a cached start hashes no
        file again whose stamp is unchanged. Only records that ``check`` trusted by stamp
        (their last change ``RACY_SECONDS`` before the cache was written) are taken, under
        the same rule ``write`` reuses its own hashes by."""
        racy_after = found.written_ns - int(RACY_SECONDS * 1e9)
        for i, (path, stamp) in enumerate(zip(found.paths, found.stamps, strict=True)):
            if max(stamp[3], stamp[4]) < racy_after:
                self._hashes[path] = (stamp, found.file_digest(i), racy_after)

    def write(self, capture: Capture) -> bool:
        """Write ``capture`` atomically; False (nothing written, logged at debug) when a
        file's stamp is no longer the one the load read it at. Raises OSError when the
        state directory cannot be written."""
        started = time.perf_counter()
        files: list[tuple[str, Stamp, str]] = []
        hashes: dict[str, tuple[Stamp, str, int]] = {}
        racy = int(RACY_SECONDS * 1e9)
        for path in capture.files:
            stamp = capture.stamps.get(path)
            known = self._hashes.get(path)
            if stamp is None:
                log.debug("restart cache not written: %s was not read", path)
                return False
            # a hash is reused only if it was taken long enough after the file's last
            # change (then the stamp unchanged since means the bytes are)
            if known is None or known[0] != stamp or max(stamp[3], stamp[4]) >= known[2]:
                hashed_at = time.time_ns() - racy
                try:
                    digest, now = _hash_file(path)
                except OSError:
                    return False
                if now != stamp:
                    log.debug("restart cache not written: %s changed since it was loaded", path)
                    return False
                known = (stamp, digest, hashed_at)
            hashes[path] = known
            files.append((path, stamp, known[1]))
        watched = []
        for path in sorted(capture.watched):
            record = _record(path)
            if _changed_since_load(record, capture):
                log.debug("restart cache not written: %s changed since it was loaded", path)
                return False
            watched.append(_record_json(record))
        # After every hash was taken: a file changed less than RACY_SECONDS before this
        # is hashed again at start, whichever write hashed it.
        written_ns = time.time_ns()
        types = list(PUSH_ORDER)
        type_index = {t: i for i, t in enumerate(types)}
        index: dict[int, int] = {}
        table = _Table()
        rows: list[tuple[NodeClass, Snapshot, dict[tuple[TypeUrl, str], int]]] = []
        try:
            for key, snapshot in capture.classes.items():
                members: dict[tuple[TypeUrl, str], int] = {}
                for type_url, bucket in snapshot.resources.items():
                    for r in bucket.values():
                        at = index.get(id(r))
                        if at is None:
                            at = index[id(r)] = table.add(r, types, type_index)
                        members[type_url, r.name] = at
                rows.append((key, snapshot, members))
        except _Unwritable as e:
            log.warning("restart cache not written: %s", e)
            return False
        # What every class holds (the same resource) is stored once as ``common``; each
        # class as what it adds to it.
        common: dict[tuple[TypeUrl, str], int] = dict(rows[0][2]) if rows else {}
        for _, _, members in rows[1:]:
            common = {k: i for k, i in common.items() if members.get(k) == i}
        member_indexes = array("I", common.values())
        classes = []
        for key, snapshot, members in rows:
            added = [i for k, i in members.items() if k not in common]
            member_indexes.extend(added)
            classes.append(
                {"key": _key_json(key), "versions": dict(snapshot.versions), "added": len(added)}
            )
        header = {
            "format": FORMAT,
            "byteorder": sys.byteorder,
            "fingerprint": capture.fingerprint,
            "config_dir": capture.config_dir,
            "written_ns": written_ns,
            "services": capture.services,
            "files": len(files),
            "watched": watched,
            "types": types,
            "resources": len(table.kinds),
            "references": len(table.reference_kinds),
            "common": len(common),
            "classes": classes,
        }
        sections = [
            _join_text(path for path, _, _ in files),
            array("Q", [n for _, stamp, _ in files for n in stamp[:3]]).tobytes(),
            array("q", [n for _, stamp, _ in files for n in stamp[3:]]).tobytes(),
            "".join(digest for _, _, digest in files).encode("ascii"),
            *table.sections(),
            member_indexes.tobytes(),
            b"".join(table.payloads),
        ]
        head = json.dumps(header, separators=(",", ":")).encode()
        parts = [MAGIC, _LENGTH.pack(len(head)), head]
        for section in sections:
            parts += (_LENGTH.pack(len(section)), section)
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        size = sum(map(len, parts)) + _MAC_BYTES
        if size > self.max_bytes:
            log.warning(
                "restart cache not written: %d bytes, over max_restart_cache_bytes (%d)",
                size,
                self.max_bytes,
            )
            return False
        _write_atomically(self.path, [*parts, mac.digest()])
        self._hashes = hashes
        self.last_write = (size, time.perf_counter() - started)
        return True

    # -- reading -------------------------------------------------------------------------

    def read(self, expected_fingerprint: str, *, max_classes: int = 10000) -> CachedBuild | str:
        """The cache, its integrity, format, version and settings checked (not yet the
        directory: ``CachedBuild.check``); else why it cannot be used (a missing cache
        says so too). Never raises."""
        try:
            data = _read_bounded(self.path, self.max_bytes)
        except FileNotFoundError:
            return "no restart cache yet"
        except _TooLarge as e:
            return str(e)
        except OSError as e:
            return f"cannot read {self.path}: {e.strerror}"
        if len(data) < len(MAGIC) + _LENGTH.size + _MAC_BYTES or not data.startswith(MAGIC):
            return "not a restart cache (or truncated)"
        size = len(data) - _MAC_BYTES
        mac = hmac.new(self._key, memoryview(data)[:size], hashlib.sha256).digest()
        if not hmac.compare_digest(mac, data[size:]):
            return "its integrity check fails (truncated, corrupt, tampered with, or not ours)"
        # Like a build (``state._building``): hundreds of thousands of objects that all
        # survive and form no cycles; a collection meanwhile would walk them again and
        # again, and later full ones too, so the collector waits and they are frozen.
        enabled = gc.isenabled()
        gc.disable()
        try:
            found = _decode(data, size, expected_fingerprint, max_classes)
            if enabled:
                gc.freeze()
            return found
        except _Refused as e:
            return str(e)
        except InconsistentSnapshotError as e:
            return f"its snapshots are inconsistent ({e})"
        except Exception as e:  # what the checks above did not foresee: still refused
            return f"malformed ({type(e).__name__})"
        finally:
            if enabled:
                gc.enable()


class _Refused(Exception):
    pass


class _TooLarge(OSError):
    pass


#: The sections that follow the header, in order, each preceded by its length
#: (``_LENGTH``); arrays are in the writer's byte order (the header's ``byteorder``).
SECTIONS = (
    "file paths",  # the config files' paths, NUL-separated (UTF-8, surrogates passed)
    "file ids",  # array Q: device, inode, size of each file
    "file times",  # array q: mtime_ns, ctime_ns of each file
    "file digests",  # ASCII: each file's SHA-256, 64 hex digits
    "names",  # the resources' names, NUL-separated (UTF-8, surrogates passed)
    "digests",  # ASCII: each resource's digest, DIGEST_LENGTH hex digits
    "kinds",  # array H: each resource's type, an index into the header's ``types``
    "tokens",  # array Q: each resource's token
    "lengths",  # array Q: each resource's payload length in bytes
    "reference counts",  # array I: how many references each resource has
    "reference kinds",  # array H: each reference's type (index into ``types``)
    "reference names",  # the references' names, NUL-separated
    "members",  # array I: the ``common`` resources' indexes, then each class's added
    "payloads",  # every resource's bytes, in order
)
#: The length of a resource's digest (``content_hash``: 16 hex digits).
DIGEST_LENGTH = 16
_FILE_DIGEST_LENGTH = 64


def _join_text(texts: Iterable[str]) -> bytes:
    """``texts`` (none holding NUL: paths cannot; resource names are checked by
    ``_Table.add``) as one NUL-separated UTF-8 text."""
    return "\0".join(texts).encode("utf-8", "surrogatepass")


class _Unwritable(Exception):
    """What the format cannot hold (a resource name with a NUL character)."""


class _Table:
    """The resource table being written: one row per distinct resource."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.digests: list[str] = []
        self.kinds = array("H")
        self.tokens = array("Q")
        self.lengths = array("Q")
        self.reference_counts = array("I")
        self.reference_kinds = array("H")
        self.reference_names: list[str] = []
        self.payloads: list[bytes] = []

    def add(self, r: Resource, types: list[TypeUrl], type_index: dict[TypeUrl, int]) -> int:
        """Add ``r`` (its type URL and its references' added to ``types``); its index."""
        if len(r.digest) != DIGEST_LENGTH or "\0" in r.name:
            raise _Unwritable(f"resource {r.name!r}: a NUL in its name, or a digest not of 16")
        at = len(self.kinds)
        self.kinds.append(_type_index(r.type_url, types, type_index))
        self.names.append(r.name)
        self.digests.append(r.digest)
        self.tokens.append(r.token)
        self.lengths.append(len(r.payload))
        self.payloads.append(r.payload)
        self.reference_counts.append(len(r.references))
        for type_url, name in r.references:
            if "\0" in name:
                raise _Unwritable(f"resource {r.name!r} references a name with a NUL")
            self.reference_kinds.append(_type_index(TypeUrl(type_url), types, type_index))
            self.reference_names.append(name)
        return at

    def sections(self) -> list[bytes]:
        """The sections from ``names`` to ``reference names``."""
        return [
            _join_text(self.names),
            "".join(self.digests).encode("ascii"),
            self.kinds.tobytes(),
            self.tokens.tobytes(),
            self.lengths.tobytes(),
            self.reference_counts.tobytes(),
            self.reference_kinds.tobytes(),
            _join_text(self.reference_names),
        ]


def _type_index(type_url: TypeUrl, types: list[TypeUrl], type_index: dict[TypeUrl, int]) -> int:
    at = type_index.get(type_url)
    if at is None:
        at = type_index[type_url] = len(types)
        types.append(type_url)
    return at


def _sections(view: memoryview, start: int) -> list[memoryview]:
    """``SECTIONS``' bytes from ``start`` of ``view``, which they must fill exactly."""
    out = []
    for name in SECTIONS:
        if start + _LENGTH.size > len(view):
            raise _Refused(f"malformed ({name}: truncated)")
        (length,) = _LENGTH.unpack_from(view, start)
        start += _LENGTH.size
        if length > len(view) - start:
            raise _Refused(f"malformed ({name}: length)")
        out.append(view[start : start + length])
        start += length
    if start != len(view):
        raise _Refused("malformed (bytes after the last section)")
    return out


def _array(code: str, data: memoryview, count: int, what: str) -> array[int]:
    """``count`` items of type ``code`` from ``data``, which they must fill."""
    out = array(code)
    if len(data) != count * out.itemsize:
        raise _Refused(f"malformed ({what}: {len(data)} bytes for {count} items)")
    out.frombytes(data)
    return out


def _split(data: memoryview, count: int, what: str) -> list[str]:
    """``count`` texts from ``data`` (``_join_text``'s)."""
    texts = str(data, "utf-8", "surrogatepass").split("\0") if count else []
    if len(texts) != count or (not count and len(data)):
        raise _Refused(f"malformed ({what})")
    return texts


def _fixed(data: memoryview, width: int, count: int, what: str) -> list[str]:
    """``count`` ASCII texts of ``width`` characters each from ``data``."""
    if len(data) != width * count:
        raise _Refused(f"malformed ({what})")
    text = str(data, "ascii")
    return [text[i : i + width] for i in range(0, width * count, width)]


def _decode(body: bytes, size: int, expected_fingerprint: str, max_classes: int) -> CachedBuild:
    """The build in ``body[:size]`` (the cache file up to its HMAC, which was checked).
    Raises _Refused (or any exception, for what the checks did not foresee)."""
    start = len(MAGIC)
    (head_length,) = _LENGTH.unpack_from(body, start)
    start += _LENGTH.size
    if head_length > size - start:
        raise _Refused("malformed (header length)")
    header = json.loads(memoryview(body)[start : start + head_length].tobytes())
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Refused("written in another cache format")
    if header.get("fingerprint") != expected_fingerprint:
        raise _Refused(
            "written by another xdsd version or under other settings (config_dir, [mesh], "
            "limits, root_namespace)"
        )
    if header.get("byteorder") != sys.byteorder:
        raise _Refused("written on a machine of another byte order")
    # What follows was written by this daemon (the HMAC holds): its shape is trusted,
    # every value is still checked where it is used (an index out of range, a wrong
    # type raise, and the caller says "malformed").
    config_dir = _text(header["config_dir"])
    written_ns = _int(header["written_ns"])
    services = _int(header["services"])
    watched = tuple(_record_from_json(row) for row in _list(header["watched"]))
    types = [TypeUrl(_text(t)) for t in _list(header["types"])]
    n_files = _int(header["files"])
    count = _int(header["resources"])
    n_refs = _int(header["references"])
    n_common = _int(header["common"])
    rows = _list(header["classes"])
    if len(rows) > max_classes:
        raise _Refused(f"{len(rows)} classes, over max_node_classes ({max_classes})")
    (
        s_paths,
        s_ids,
        s_times,
        s_file_digests,
        s_names,
        s_digests,
        s_kinds,
        s_tokens,
        s_lengths,
        s_ref_counts,
        s_ref_kinds,
        s_ref_names,
        s_members,
        s_payloads,
    ) = _sections(memoryview(body)[:size], start + head_length)
    # the config files
    paths = tuple(_split(s_paths, n_files, "file paths"))
    ids = _array("Q", s_ids, 3 * n_files, "file ids")
    times = _array("q", s_times, 2 * n_files, "file times")
    stamps = tuple(zip(ids[0::3], ids[1::3], ids[2::3], times[0::2], times[1::2], strict=True))
    file_digests = str(s_file_digests, "ascii")
    if len(file_digests) != _FILE_DIGEST_LENGTH * n_files:
        raise _Refused("malformed (file digests)")
    # the resources
    names = _split(s_names, count, "names")
    digests = _fixed(s_digests, DIGEST_LENGTH, count, "digests")
    kinds = _array("H", s_kinds, count, "kinds")
    tokens = _array("Q", s_tokens, count, "tokens")
    lengths = _array("Q", s_lengths, count, "lengths")
    ref_counts = _array("I", s_ref_counts, count, "reference counts")
    ref_kinds = _array("H", s_ref_kinds, n_refs, "reference kinds")
    ref_names = _split(s_ref_names, n_refs, "reference names")
    if (kinds and max(kinds) >= len(types)) or (ref_kinds and max(ref_kinds) >= len(types)):
        raise _Refused("malformed (a type index out of range)")
    if sum(ref_counts) != n_refs or sum(lengths) != len(s_payloads):
        raise _Refused("malformed (resource table)")
    references = tuple(zip(map(types.__getitem__, ref_kinds), ref_names, strict=True))
    offset = size - len(s_payloads)  # the payloads end the body
    ends = list(accumulate(lengths, initial=offset))
    ref_ends = list(accumulate(ref_counts, initial=0))
    # Digests are not recomputed: the HMAC, checked before anything was parsed, says
    # these are the bytes ``write`` wrote, which took each digest and payload from one
    # ``Resource`` (whose digest is its payload's: ``Resource``'s contract). Tokens
    # neither: the versions, compared below, are their sums.
    resources = Resource.restored_all(
        names,
        map(types.__getitem__, kinds),
        [body[a:b] for a, b in pairwise(ends)],
        digests,
        [references[a:b] for a, b in pairwise(ref_ends)],
        tokens,
    )
    # the classes
    members = _array("I", s_members, len(s_members) // array("I").itemsize, "members")
    if members and max(members) >= count:
        raise _Refused("malformed (a resource index out of range)")
    sizes = [n_common, *(_int(_dict(row)["added"]) for row in rows)]
    if sum(sizes) != len(members):
        raise _Refused("malformed (members)")
    ends = list(accumulate(sizes))
    chosen = [
        [resources[i] for i in members[a:b]] for a, b in zip([0, *ends[:-1]], ends, strict=True)
    ]
    added = chosen[1:]
    # ``common`` may name what every class adds (each its own), and a class the
    # per-connection ``default`` secret (xdsd's CA): both are supplied to it.
    supplied = (
        set.intersection(*({(r.type_url, r.name) for r in resources_of} for resources_of in added))
        if added
        else set()
    )
    common = Snapshot.build(chosen[0], check=False)
    common.check_consistency(supplied={*supplied, (SECRET, WORKLOAD_SECRET)})
    classes: dict[NodeClass, Snapshot] = {}
    for row, extra in zip(rows, added, strict=True):
        key = _key_from_json(row["key"])
        snapshot = Snapshot.extend(common, extra, check=False)
        snapshot.check_consistency(supplied={(SECRET, WORKLOAD_SECRET)})
        if dict(snapshot.versions) != row["versions"]:
            raise _Refused(f"class {key}'s versions do not match its resources")
        classes[key] = snapshot
    newest = max(times) if times else 0
    return CachedBuild(
        config_dir, written_ns, services, paths, stamps, file_digests, newest, watched, classes
    )


def _read_bounded(path: str, max_bytes: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        if st.st_size > max_bytes:
            raise _TooLarge(
                0, f"{st.st_size} bytes, over max_restart_cache_bytes ({max_bytes}): not read"
            )
        # one read of the size stat gave (and one more byte: the file may have grown)
        chunks = [os.read(fd, st.st_size + 1)]
        left = max_bytes + 1 - len(chunks[0])
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 24))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > max_bytes:
        raise _TooLarge(0, f"over max_restart_cache_bytes ({max_bytes}): not read")
    return data


def _write_atomically(path: str, parts: Iterable[bytes]) -> None:
    directory = os.path.dirname(path)
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _key(path: str) -> bytes:
    """The HMAC key at ``path`` (32 bytes, 0600, ours), generated when missing. Raises
    CacheRefused when it cannot be used. Creation is atomic (``write_private_file``:
    written aside, then linked in place only if absent), so processes sharing the state
    directory (workers) never read a half-written key."""
    if not os.path.lexists(path):
        try:
            write_private_file(path, secrets.token_bytes(32))
        except CAError as e:
            raise CacheRefused(f"cannot create the restart cache key: {e}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            key = os.read(fd, 65)
        finally:
            os.close(fd)
    except OSError as e:
        raise CacheRefused(f"{path}: cannot read the restart cache key: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise CacheRefused(
            f"{path}: the restart cache key must be a regular file of xdsd's user, mode 0600"
        )
    if len(key) != 32:
        raise CacheRefused(f"{path}: the restart cache key is not 32 bytes; remove it")
    return key


def _record(path: str) -> FileRecord:
    """What ``path`` (a certificate file or watched directory) is now."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileRecord(path, "absent")
    except OSError:
        return FileRecord(path, "absent", digest="unreadable")  # never equal to a check
    if stat.S_ISDIR(st.st_mode):
        try:
            return FileRecord(path, "dir", names=tuple(sorted(os.listdir(path))))
        except OSError:
            return FileRecord(path, "absent", digest="unreadable")
    try:
        digest, stamp = _hash_file(path)
    except OSError:
        return FileRecord(path, "absent", digest="unreadable")
    return FileRecord(path, "file", stamp, digest)


def _changed_since_load(record: FileRecord, capture: Capture) -> bool:
    """Whether the watched path of ``record`` (taken now) may differ from what the load
    of ``capture`` built from: a certificate file's bytes other than those the load
    held, or (a directory, a file the load did not hold) a change time at or after the
    load's start. An absent path is what it was unless the load held its bytes."""
    held = capture.certificates.get(record.path)
    if record.kind == "file" and held is not None:
        return hashlib.sha256(held).hexdigest() != record.digest
    if record.kind == "absent":
        return held is not None
    if not capture.loaded_ns:
        return False
    try:
        st = os.stat(record.path)
    except OSError:
        return True
    return max(st.st_mtime_ns, st.st_ctime_ns) >= capture.loaded_ns


def _record_json(record: FileRecord) -> list[Any]:
    return [record.path, record.kind, record.stamp, record.digest, list(record.names)]


def _record_from_json(row: object) -> FileRecord:
    path, kind, stamp, digest, names = _list(row, 5)
    if kind not in ("file", "dir", "absent"):
        raise _Refused("malformed (watched path)")
    if _text(digest) == "unreadable":
        raise _Refused(f"{path} could not be read when the cache was written")
    return FileRecord(
        _text(path),
        kind,
        _stamp(stamp) if stamp is not None else None,
        digest,
        tuple(_text(n) for n in _list(names)),
    )


def _stamp(values: object) -> Stamp:
    a, b, c, d, e = (_int(v) for v in _list(values, 5))
    return (a, b, c, d, e)


def _key_json(key: NodeClass) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(key):
        value = getattr(key, f.name)
        if isinstance(value, Enum):
            value = value.value
        elif f.name == "locality":
            value = [value.region, value.zone, value.sub_zone]
        out[f.name] = value
    return out


_ENUMS: dict[str, type[Enum]] = {
    "role": Role,
    "client": ClientKind,
    "config_source": ConfigSourceKind,
}


def _key_from_json(data: object) -> NodeClass:
    """A ``NodeClass`` from ``_key_json``'s form; raises _Refused for anything else."""
    if not isinstance(data, dict) or set(data) != {f.name for f in fields(NodeClass)}:
        raise _Refused("malformed (node class)")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _ENUMS:
            values[name] = _ENUMS[name](value)
        elif name == "locality":
            from xdsd.model import Locality

            region, zone, sub_zone = (_text(v) for v in _list(value, 3))
            values[name] = Locality(region, zone, sub_zone)
        elif name == "labels":
            values[name] = tuple((_text(k), _text(v)) for k, v in (_list(p, 2) for p in value))
        elif name == "dns_upstream":
            values[name] = tuple(_text(v) for v in _list(value))
        elif isinstance(value, bool | int | str):
            values[name] = value
        else:
            raise _Refused(f"malformed (node class field {name})")
    return NodeClass(**values)


def _list(value: object, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise _Refused("malformed (a list expected)")
    return value


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refused("malformed (a mapping expected)")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Refused("malformed (a string expected)")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Refused("malformed (a number expected)")
    return value
