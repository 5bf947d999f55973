"""A config directory → a cross-checked ``Mesh``, all or nothing.

How this works: every ``.toml``, ``.yaml``/``.yml`` and ``.json`` file under the directory
(dot-names skipped, symlinks followed, in sorted path order) is parsed into documents;
each document is dispatched on (apiVersion, kind) to the parser of its kind; then the
resources are checked against each other (duplicates, host names, subsets, ports). Every
problem is collected; if any is an error, ``ConfigError`` lists them all and nothing is
returned, so a caller keeps serving what it had. Files under ``envoy/`` are raw Envoy
resources (see ``envoy_raw``).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xdsd.errors import ConfigError, Problem, Severity
from xdsd.model import (
    DEFAULT_NAMESPACE,
    CertificateFile,
    CertificateRef,
    DestinationRule,
    Mesh,
    MeshObject,
    Origin,
    RawResource,
    ResourceKey,
    Service,
)
from xdsd.model.mesh_config import NO_MESH_TLS, MeshTLS
from xdsd.model.networking import ServiceEntry
from xdsd.sources.certificates import (
    istio_mutual_problems,
    mesh_certificate_refs,
    read_certificates,
)
from xdsd.sources.crosscheck import Change, CrossCheck, FileContents
from xdsd.sources.destination_rule import parse_destination_rule
from xdsd.sources.documents import Document, FieldPath, ParseFailure, parse_file
from xdsd.sources.envoy_filter import parse_envoy_filter
from xdsd.sources.envoy_raw import parse_raw_resource
from xdsd.sources.fields import Fields, Report
from xdsd.sources.gateway import parse_gateway, parse_sidecar
from xdsd.sources.limits import DEFAULT_LIMITS, ParseLimits, size_problem
from xdsd.sources.listing import Stamp, file_stamp, list_config_files, os_problem
from xdsd.sources.plain_readers import parse_plain_destination_rule, parse_plain_service
from xdsd.sources.service import parse_service
from xdsd.sources.service_entry import parse_service_entry, parse_workload_entry
from xdsd.sources.sidecars import sidecar_problems
from xdsd.sources.virtual_service import parse_virtual_service

log = logging.getLogger(__name__)

XDSD_API = "xdsd.io/v1"
ISTIO_NETWORKING = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
#: networking.istio.io kinds that later xdsd versions implement; ignored with a warning.
LATER_KINDS = frozenset({"WorkloadGroup", "ProxyConfig"})
#: Istio kinds parsed into the mesh besides VirtualService and DestinationRule.
OTHER_PARSERS = {
    "ServiceEntry": parse_service_entry,
    "WorkloadEntry": parse_workload_entry,
    "Gateway": parse_gateway,
    "Sidecar": parse_sidecar,
    "EnvoyFilter": parse_envoy_filter,
}
RAW_DIR = "envoy"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_METADATA_KEYS = ("name", "namespace", "labels", "annotations")
_K8S_METADATA = (
    "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
    "selfLink", "finalizers", "ownerReferences", "deletionTimestamp", "generateName",
)  # fmt: skip



@dataclass(frozen=True, slots=True)
class LoadResult:
    """A successfully loaded directory: the mesh, the warnings, and the files read.

    ``timings`` (seconds, by phase: ``list``, ``parse``, ``check``) and ``reread`` (how
    many files were read and parsed again) describe the work done, for logs and benchmarks.
    """

    mesh: Mesh
    warnings: tuple[Problem, ...]
    files: tuple[str, ...]
    timings: Mapping[str, float] = field(default_factory=dict, compare=False, repr=False)
    reread: int = field(default=0, compare=False, repr=False)


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
        stamp, data = _read(path, limits, budget)
    except _Refused as e:
        return FileResult(e.stamp, (), (), (e.problem,))
    except OSError as e:
        return FileResult(stamp, (), (), (os_problem(path, "read", e),))
    try:
        docs = parse_file(path, data, limits)
        is_raw = _first_part(root, path) == RAW_DIR
        for doc in docs:
            if is_raw:
                parsed = parse_raw_resource(doc)
                if isinstance(parsed, Problem):
                    problems.append(parsed)
                else:
                    raw.append(parsed)
            else:
                resource = _parse_document(doc, problems, root)
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
        path, 0, "",
        f"internal error ({type(error).__name__}: {error}); the load is refused and the "
        "log has the traceback",
    )  # fmt: skip


class _Refused(Exception):
    """A file that is not read: not a regular file, or over a size limit."""

    def __init__(self, stamp: Stamp | None, problem: Problem) -> None:
        self.stamp, self.problem = stamp, problem


def _read(path: str, limits: ParseLimits, budget: Budget | None) -> tuple[Stamp, bytes]:
    """The stamp and bytes of the file at ``path``, as ``open(path, "rb")``, ``os.fstat``
    and ``read()`` give them (and raising the same errors), with plain system calls: no
    file object per file (a fifth of the cost of reading 20,000 small files).

    The file is opened with ``O_NONBLOCK`` (a FIFO swapped in does not block the open)
    and read only when ``fstat`` says it is a regular file within ``max_file_bytes`` and
    ``budget``; else raises _Refused. A file growing while read is read up to the limit."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)  # of the file read, and cheaper than a stat by path
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(stamp, Problem(path, 0, "", "is not a regular file: not read"))
        if budget is not None:
            budget.left -= st.st_size
        too_large = size_problem(path, st.st_size, limits)
        if too_large is not None:
            raise _Refused(stamp, too_large)
        if budget is not None and budget.left < 0:
            raise _Refused(stamp, Problem(
                path, 0, "",
                f"the config files together are more than max_config_bytes "
                f"({budget.limit} bytes) with this one ({st.st_size} bytes): not read",
            ))  # fmt: skip
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


def _first_part(root: str, path: str) -> str:
    """The first component of ``path`` below ``root``: ``os.path.relpath``'s, without
    its cost for the paths the listing makes (``root`` joined with the rest)."""
    head = os.path.join(root, "")
    rest = path[len(head) :]
    if path.startswith(head) and not rest.startswith(".") and os.sep + "." not in rest:
        return rest.split(os.sep, 1)[0]
    return os.path.relpath(path, root).split(os.sep)[0]


def load_directory(
    root: str, *, mesh_tls: MeshTLS = NO_MESH_TLS, limits: ParseLimits = DEFAULT_LIMITS
) -> LoadResult:
    """Load every config file under ``root`` (and the files of ``mesh_tls``) under
    ``limits``.

    Raises ConfigError (listing every error, warnings excluded) when anything is wrong:
    ``root`` missing or not a directory, anything under it that cannot be listed, stat'ed
    or read, malformed files or files beyond ``limits``, invalid fields, dangling
    references, duplicates.
    """
    loader = DirectoryLoader(root, limits=limits)
    loader.mesh_tls = mesh_tls
    return loader.load()


class DirectoryLoader:
    """Loads one directory again and again, reading only the files that changed and
    checking again only what they affect.

    How this works: the result of parsing each file (``FileResult``: model objects and
    problems, not the documents) is kept by path, and the cross-checks' state
    (``CrossCheck``) is kept with it. When ``changed`` names only files of the last
    listing that are still regular files, the directory is not listed and nothing else
    is looked at: those files and the files that had an error (retried every time) are
    parsed again. Otherwise the directory is listed (names only: no stat per file) and
    parsed again are: files it has not seen, the files named, files that had an error,
    and, when ``changed`` is None (a forced reload, SIGHUP) or names something that is not
    a config file of the listing (a directory, a ``..data`` symlink swap, the directory
    itself), every file whose stamp (inode, size, times) differs from when it was read;
    files no longer listed are forgotten. Either way only the files parsed again (and
    the ones gone) are handed to the cross-checks, which re-check what they affect; the
    result (mesh, problems, their order) is exactly what a cold ``load_directory`` gives
    (``tests/sources/test_incremental.py``), and unchanged files contribute the very same
    model objects, which lets translation recognise them by identity. All or nothing still
    holds: a load with any error raises ConfigError and the caller keeps what it had.

    A load that raises anything but ConfigError (a bug, memory) forgets everything the
    loader kept, so the next load is a cold one and gives what a cold load gives (never
    a half-updated state: files counted twice, "duplicate ... also defined at" itself).

    Not thread-safe: one load at a time.
    """

    def __init__(self, root: str, *, limits: ParseLimits = DEFAULT_LIMITS) -> None:
        self.root = root
        #: What each load may read (``sources.limits``).
        self.limits = limits
        self._reset()
        #: The certificate and key files the last load's rules named (absolute paths).
        self.certificate_paths: frozenset[str] = frozenset()
        #: Mesh mutual TLS (the settings' ``[mesh.mtls]``): its files are looked for and
        #: read as ``_mesh_files`` says, and ISTIO_MUTUAL is refused while it is off.
        self.mesh_tls: MeshTLS = NO_MESH_TLS

    def _reset(self) -> None:
        """Forget every file, listing, check and memo: the next load is a cold one."""
        self._files: dict[str, FileResult] = {}
        self._failed: set[str] = set()
        self._check = CrossCheck()
        # The last listing, its problems and each file's position in it, kept while
        # only known files change.
        self._listing: tuple[tuple[str, ...], tuple[Problem, ...], dict[str, int]] | None = None
        # The bytes of the files kept (what counts against ``max_config_bytes``).
        self._bytes = 0
        self._mesh_seen: MeshTLS | None = None
        self._mesh_refs: list[CertificateRef] = []
        # What matching the templates met (directories that could not be listed): errors.
        self._mesh_errors: list[Problem] = []
        # The last reading of the mesh files: the matches, their bytes, the problems.
        self._mesh_read: (
            tuple[list[CertificateRef], tuple[CertificateFile, ...], list[Problem]] | None
        ) = None
        self._mesh_paths: frozenset[str] = frozenset()
        self._mesh_dirs: frozenset[str] = frozenset()
        # "DIR/." for each directory between the templates' fixed directory and the
        # matched files' (watched, so that a new service's directory is noticed).
        self._mesh_watch: frozenset[str] = frozenset()
        self._certificate_filter: frozenset[str] = frozenset()
        self._rule_memo: dict[
            ResourceKey,
            tuple[DestinationRule, tuple[CertificateRef, ...], tuple[tuple[str, Origin], ...]],
        ] = {}

    def load(self, changed: Iterable[str] | None = None) -> LoadResult:
        """Load the directory; ``changed`` names the paths known to have changed since the
        last load (None: unknown, check every file by stat). The certificate files the
        rules name are read again every time (``sources.certificates``; a changed path
        that is one of them needs nothing else re-read), and ``certificate_paths`` says
        which they were, even when the load fails.

        Raises ConfigError as ``load_directory`` does. Any other exception leaves the
        loader as a new one (see the class docstring) and is raised again.
        """
        try:
            return self._load(changed)
        except ConfigError:
            raise
        except BaseException:
            self._reset()
            raise

    def _load(self, changed: Iterable[str] | None) -> LoadResult:
        started = time.perf_counter()
        touched = None if changed is None else {os.path.normpath(p) for p in changed}
        if changed is not None:  # certificate files are read on every load anyway
            known = self._certificate_filter
            changed = [p for p in changed if os.path.normpath(p) not in known]
        named = None if changed is None else {self._as_listed(p) for p in changed}
        changes: list[Change] = []
        if named is not None and self._listing is not None and self._same_files(named):
            files, listing_problems, order = self._listing
            listed = time.perf_counter()
            again = named | self._failed
            budget = self._budget(self._bytes - sum(_size(self._files[p]) for p in again))
            for path in again:
                changes.append((path, self._files[path], self._parse(path, budget)))
        else:
            found: list[Problem] = []
            files = tuple(list_config_files(self.root, found))
            listing_problems = tuple(found)
            order = {path: i for i, path in enumerate(files)}
            self._listing = (files, listing_problems, order)
            listed = time.perf_counter()
            stale = self._stale(files, named) | self._failed
            old = self._files
            kept = sum(_size(e) for p, e in old.items() if p in order and p not in stale)
            budget = self._budget(kept)
            self._files = {}
            for path in files:
                entry = old.pop(path, None)
                if entry is None or path in stale:
                    changes.append((path, entry, self._parse(path, budget)))
                else:
                    self._files[path] = entry
            for path, entry in old.items():
                changes.append((path, entry, None))
                self._failed.discard(path)
        self._bytes = budget.limit - budget.left
        parsed = time.perf_counter()
        mesh = self._check.update(changes, order)
        rule_refs, istio_mutual = self._rule_tls(mesh)
        rule_files, certificate_problems = read_certificates(rule_refs)
        mesh_files, mesh_problems = self._mesh_certificates(touched, changes)
        certificate_problems.extend(mesh_problems)
        certificate_problems.extend(self._mesh_errors)
        by_path = {c.path: c for c in (*mesh_files, *rule_files)}
        mesh = mesh.with_certificates(tuple(by_path.values()))
        self.certificate_paths = (
            frozenset(r.path for r in rule_refs) | self._mesh_paths | self._mesh_watch
        )
        self._certificate_filter = frozenset(map(os.path.normpath, self.certificate_paths))
        problems = [*listing_problems, *self._check.problems(), *sidecar_problems(mesh.sidecars)]
        if not self.mesh_tls.enabled:
            problems.extend(istio_mutual_problems(istio_mutual))
        located = {(p.path, p.line, p.field) for p in problems}
        problems.extend(p for p in certificate_problems if (p.path, p.line, p.field) not in located)
        errors = [p for p in problems if p.severity is Severity.ERROR]
        warnings = tuple(p for p in problems if p.severity is Severity.WARNING)
        checked = time.perf_counter()
        if errors:
            raise ConfigError(errors, warnings)
        timings = {"list": listed - started, "parse": parsed - listed, "check": checked - parsed}
        reread = sum(1 for _, _, new in changes if new is not None)
        return LoadResult(mesh, warnings, files, timings, reread)

    def _budget(self, kept: int) -> Budget:
        """What the files read by this load may add to the ``kept`` bytes."""
        limit = self.limits.max_config_bytes
        return Budget(limit - kept, limit)

    def _parse(self, path: str, budget: Budget) -> FileResult:
        """Parse ``path`` again and keep the result (in listing order: a path already
        kept keeps its place)."""
        entry = parse_config_file(self.root, path, limits=self.limits, budget=budget)
        self._files[path] = entry
        if entry.problems and entry.failed:
            self._failed.add(path)
        else:
            self._failed.discard(path)
        return entry

    def _same_files(self, named: set[str]) -> bool:
        """True when changes to ``named`` cannot have changed the listing: each is a file
        already listed and still a regular file (no file added, removed or renamed)."""
        return all(p in self._files and _plain_file(p) for p in named)

    def _rule_tls(self, mesh: Mesh) -> tuple[list[CertificateRef], list[tuple[str, Origin]]]:
        """The certificate files the rules name, and where DestinationRules and Gateway
        servers ask for ISTIO_MUTUAL; what a DestinationRule holds is remembered while it
        is the same object (the cross-checks keep unchanged rules), so a large mesh costs
        a lookup per rule."""
        refs = mesh.gateway_certificate_refs()
        istio = [
            server.tls.mode_at for gateway in mesh.gateways for server in gateway.servers
            if server.tls is not None and server.tls.mode_at is not None
        ]  # fmt: skip
        memo, fresh = self._rule_memo, {}
        for rule in mesh.destination_rules:
            found = memo.get(rule.key)
            if found is None or found[0] is not rule:
                settings = rule.client_tls()
                found = (rule, tuple(r for tls in settings for r in tls.refs),
                         tuple(t.mode_at for t in settings if t.mode_at is not None))  # fmt: skip
            fresh[rule.key] = found
            refs.extend(found[1])
            istio.extend(found[2])
        self._rule_memo = fresh
        return refs, istio

    def _mesh_certificates(
        self, touched: set[str] | None, changes: list[Change]
    ) -> tuple[tuple[CertificateFile, ...], list[Problem]]:
        """The usable files of mesh mutual TLS with their bytes, and the problems reading
        them (the last load's when the same files were matched and nothing in their
        directories changed: a large mesh has two files per service).

        A proxy's file that cannot be read or is not PEM of its kind is left out with a
        warning: only the classes that need it fail (each keeps what it was last sent),
        instead of one renewal gone wrong refusing every edit of the mesh. The CA is
        everyone's: a problem with it is an error."""
        refs, cache, fresh = self._mesh_files(touched, changes)
        last = self._mesh_read
        if last is not None and last[0] is refs and not fresh:
            return last[1], last[2]
        unusable: set[str] = set()
        files, problems = read_certificates(refs, cache, unusable=unusable)
        problems = [p if p.field == "mesh.mtls.ca" else p.as_warning() for p in problems]
        self._mesh_read = (refs, files, problems)
        self._mesh_paths = frozenset(ref.path for ref in refs)
        self._mesh_dirs = frozenset(os.path.dirname(ref.path) for ref in refs)
        self._mesh_watch = _template_directories(self.mesh_tls, self._mesh_dirs)
        return files, problems

    def _mesh_files(
        self, touched: set[str] | None, changes: list[Change]
    ) -> tuple[list[CertificateRef], dict[str, bytes], bool]:
        """The files of mesh mutual TLS, the bytes that need not be read again, and
        whether anything must be (the matches changed, or something in their
        directories).

        The templates are matched on disk again (``mesh_certificate_refs``) when mesh
        mutual TLS changed, when a changed file holds other services than before (a new
        service may come with its files; with per-workload templates, on any change, since
        endpoints name the workloads), or when something changed under the templates'
        fixed directory; otherwise the last matches are kept. A file is read again when the load is
        forced (``touched`` is None: start, SIGHUP) or the watcher named it or its
        directory; the others cannot have changed unseen (their directories are
        watched), so their last bytes are used."""
        mtls = self.mesh_tls
        if touched is not None:  # both spellings: templates may use either
            touched = {os.path.normpath(p) for p in touched} | {
                self._as_listed(path) for path in touched
            }
        if (
            touched is None
            or self._mesh_errors  # a directory that could not be listed: try again
            or mtls != self._mesh_seen
            or any(mtls.per_workload or _services(old) != _services(new) for _, old, new in changes)
            or any(_under(path, mtls) for path in touched)
        ):
            self._mesh_seen = mtls
            self._mesh_errors = []
            self._mesh_refs = mesh_certificate_refs(mtls, self._mesh_errors)
            rescanned = True
        else:
            rescanned = False
        if touched is None:
            return self._mesh_refs, {}, True
        # A change in a file's directory drops its bytes too: a Kubernetes-style volume
        # swaps a ``..data`` link there and the file's own name is never reported.
        dirs = touched | {os.path.dirname(path) for path in touched}
        if not rescanned and not dirs & self._mesh_dirs:
            return self._mesh_refs, {}, False
        last = self._mesh_read[1] if self._mesh_read is not None else ()
        cache = {c.path: c.data for c in last if os.path.dirname(c.path) not in dirs}
        return self._mesh_refs, cache, True

    def _stale(self, files: tuple[str, ...], named: set[str] | None) -> set[str]:
        """The listed files that must be parsed again (besides new and failed ones)."""
        if named is not None:
            listed = set(files)
            if all(p in listed or p in self._files or _plain_file(p) for p in named):
                return named
        stale = set()
        for path in files:
            entry = self._files.get(path)
            if entry is None:
                continue
            try:
                if file_stamp(path) != entry.stamp:
                    stale.add(path)
            except OSError:  # read again: reading it reports why it cannot be
                stale.add(path)
        return stale

    def _as_listed(self, path: str) -> str:
        """``path`` as the listing spells it (the watcher reports real paths; the root may
        be a symbolic link)."""
        path = os.path.normpath(path)
        real_root = os.path.realpath(self.root)
        if real_root != os.path.normpath(self.root) and (
            path == real_root or path.startswith(real_root + os.sep)
        ):
            return os.path.normpath(self.root) + path[len(real_root) :]
        return path


def _size(entry: FileResult) -> int:
    """The bytes of the file ``entry`` was read from (0 when it could not be)."""
    return entry.stamp[2] if entry.stamp is not None else 0


def _plain_file(path: str) -> bool:
    """True for an existing regular file (not a directory, not a symbolic link): one that
    is not listed is not a config file, and its change changes nothing."""
    return os.path.isfile(path) and not os.path.islink(path)


def _parse_document(doc: Document, problems: list[Problem], root: str) -> MeshObject | None:
    """One document → a resource (None when it has an error or is not for xdsd); paths
    the document names (certificate files) are relative to the config directory ``root``."""
    value = doc.value
    if not isinstance(value, dict):
        problems.append(
            Problem(doc.path, doc.line, "", "a resource must be a mapping with kind and name")
        )
        return None
    fast = _parse_plain_document(doc, value, problems, root)
    if fast is not None:
        return fast
    top = Fields(Report(doc, ()), (), value)
    kind = top.string("kind", required=True)
    api_version = top.string("apiVersion")
    istio_shaped = "spec" in value or "metadata" in value
    result: MeshObject | None = None
    if kind and not top.report.failed:
        parser = _parser_for(top, api_version, kind)
        if parser is parse_destination_rule:
            parser = functools.partial(parse_destination_rule, config_dir=root)
        elif parser is parse_gateway:
            parser = functools.partial(parse_gateway, config_dir=root)
        if parser is not None:
            if istio_shaped:
                name, namespace = _read_metadata(top)
                spec_value = value.get("spec")
                top.read.add("spec")
                if spec_value is None:
                    spec_value = {}
                report = Report(doc, ("spec",))
                if not isinstance(spec_value, dict):
                    top.error("spec", "must be a mapping")
                    spec_value = {}
                top.finish()
                spec = Fields(report, (), spec_value)
            else:
                name = top.string("name", required=True)
                namespace = top.string("namespace") or DEFAULT_NAMESPACE
                for key in ("name", "namespace", "kind", "apiVersion"):
                    top.read.add(key)
                report = Report(doc, ())
                spec = Fields(report, (), {k: v for k, v in value.items() if k not in top.read})
            if name and kind == "Service" and not _DNS_LABEL.match(name):
                top.error(
                    "metadata.name" if istio_shaped else "name",
                    f"must be a DNS label (lower-case letters, digits, '-'): got {name!r}",
                )
            result = parser(spec, name, namespace, Origin(doc.path, doc.line))
            problems.extend(report.problems)
    problems.extend(top.report.problems)
    if top.report.failed:
        return None
    return result


_ISTIO_API_VERSIONS = frozenset(f"{ISTIO_NETWORKING}/{v}" for v in ISTIO_VERSIONS)
_FLAT_KEYS = frozenset({"name", "namespace", "kind", "apiVersion"})
_ISTIO_KEYS = frozenset({"kind", "apiVersion", "metadata", "spec"})
_PLAIN_METADATA = frozenset({*_METADATA_KEYS, *_K8S_METADATA})


def _parse_plain_document(
    doc: Document, value: dict[str, Any], problems: list[Problem], root: str
) -> MeshObject | None:
    """``_parse_document``'s result for a plainly well-formed document of a Service, a
    VirtualService or a DestinationRule, read without ``Fields`` for its top level and
    metadata (and without them at all for a Service or a plain DestinationRule, see
    ``parse_plain_service`` and ``parse_plain_destination_rule``); None for anything else
    or at the first doubt, and the caller then reads the document the careful way, which
    reports every problem (tested equal, in ``tests/sources/test_fast_parsing.py``)."""
    kind = value.get("kind")
    api_version = value.get("apiVersion")
    if api_version is None:
        api_version = ""
    if type(kind) is not str or type(api_version) is not str:
        return None
    if "spec" in value or "metadata" in value:
        if not _ISTIO_KEYS.issuperset(value):
            return None
        meta = value.get("metadata")
        if type(meta) is not dict or not _PLAIN_METADATA.issuperset(meta):
            return None
        name = meta.get("name")
        namespace = meta.get("namespace")
        labels = meta.get("labels")
        if labels is not None and (
            type(labels) is not dict or any(type(v) is not str for v in labels.values())
        ):
            return None
        annotations = meta.get("annotations")
        if annotations is not None and type(annotations) is not dict:
            return None
        spec = value.get("spec")
        if spec is None:
            spec = {}
        elif type(spec) is not dict:
            return None
        base: FieldPath = ("spec",)
    else:
        name = value.get("name")
        namespace = value.get("namespace")
        spec = {k: v for k, v in value.items() if k not in _FLAT_KEYS}
        base = ()
    if type(name) is not str or not name:
        return None
    if namespace is not None and type(namespace) is not str:
        return None
    namespace = namespace or DEFAULT_NAMESPACE
    origin = Origin(doc.path, doc.line)
    if kind == "Service" and api_version in ("", XDSD_API):
        if not _DNS_LABEL.match(name):
            return None
        return parse_plain_service(spec, name, namespace, origin)
    if kind not in ("VirtualService", "DestinationRule") or (
        api_version and api_version not in _ISTIO_API_VERSIONS
    ):
        return None
    if kind == "DestinationRule":
        rule = parse_plain_destination_rule(spec, name, namespace, origin)
        if rule is not None:
            return rule
    report = Report(doc, base)
    fields = Fields(report, (), spec)
    result: MeshObject
    if kind == "VirtualService":
        result = parse_virtual_service(fields, name, namespace, origin)
    else:
        result = parse_destination_rule(fields, name, namespace, origin, config_dir=root)
    problems.extend(report.problems)
    return result


def _parser_for(top: Fields, api_version: str, kind: str):  # type: ignore[no-untyped-def]
    group, _, version = api_version.rpartition("/") if "/" in api_version else ("", "", api_version)
    if kind == "Service" and api_version in ("", XDSD_API):
        return parse_service
    if kind == "Service" and api_version == "v1":
        top.warn(
            "apiVersion",
            "a Kubernetes v1 Service is not an xdsd Service: ignored "
            f"(use apiVersion {XDSD_API} and list its ports and endpoints)",
        )
        return None
    if group == ISTIO_NETWORKING or (
        not api_version and kind in ("VirtualService", "DestinationRule")
    ):
        if api_version and version not in ISTIO_VERSIONS:
            top.error("apiVersion", f"unsupported version of {ISTIO_NETWORKING}: {version!r}")
            return None
        if kind == "VirtualService":
            return parse_virtual_service
        if kind in OTHER_PARSERS:
            return OTHER_PARSERS[kind]
        if kind == "DestinationRule":
            return parse_destination_rule
        if kind in LATER_KINDS:
            top.warn("kind", f"{kind} is not supported by xdsd yet: ignored")
            return None
        top.error("kind", f"unknown {ISTIO_NETWORKING} kind {kind!r}")
        return None
    if api_version in ("", XDSD_API):
        top.error(
            "kind", f"unknown kind {kind!r} (xdsd kinds: Service, VirtualService, DestinationRule)"
        )
        return None
    top.warn("kind", f"{kind} ({api_version}) is not supported by xdsd: ignored")
    return None


def _read_metadata(top: Fields) -> tuple[str, str]:
    meta = top.obj("metadata", required=True)
    if meta is None:
        return "", DEFAULT_NAMESPACE
    name = meta.string("name", required=True)
    namespace = meta.string("namespace") or DEFAULT_NAMESPACE
    meta.labels("labels")
    meta.obj("annotations")
    for key in _K8S_METADATA:
        meta.read.add(key)
    meta.finish()
    return name, namespace


def _under(path: str, mtls: MeshTLS) -> bool:
    """True when ``path`` is in the fixed directory of a mesh certificate template."""
    for template in (mtls.certificate, mtls.private_key, mtls.ca):
        fixed = _fixed_directory(template)
        if fixed and (path == fixed or path.startswith(fixed + os.sep)):
            return True
    return False


def _fixed_directory(template: str) -> str:
    """The directory of a path template before its first placeholder ("" for none)."""
    return os.path.dirname(template.split("{", 1)[0])


def _template_directories(mtls: MeshTLS, dirs: Iterable[str]) -> frozenset[str]:
    """``DIR/.`` for the templates' fixed directories and every directory between them
    and ``dirs`` (where matched files are): what the certificate watcher watches (it
    watches the directory of each path it is given) so that a new ``{service}``
    directory shows up as a change there."""
    roots = {_fixed_directory(t) for t in (mtls.certificate, mtls.private_key)} - {""}
    out: set[str] = {os.path.join(root, ".") for root in roots}
    for directory in dirs:
        parent = os.path.dirname(directory)
        while any(parent.startswith(root + os.sep) for root in roots):
            out.add(os.path.join(parent, "."))
            parent = os.path.dirname(parent)
    return frozenset(out)


def _services(contents: FileContents | None) -> frozenset[tuple[Any, ...]]:
    """The services a file defines (Services, and ServiceEntries with their hosts)."""
    if contents is None:
        return frozenset()
    return frozenset(
        (r.key, r.hosts if isinstance(r, ServiceEntry) else ())
        for r, _ in contents.resources
        if isinstance(r, Service | ServiceEntry)
    )
