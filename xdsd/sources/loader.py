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

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xdsd.errors import ConfigError, Problem, Severity
from xdsd.model import (
    Mesh,
)
from xdsd.model.mesh_config import NO_MESH_TLS, ExtensionProvider, MeshTLS
from xdsd.model.registrations import Registration
from xdsd.sources.certificate_files import CertificateFiles
from xdsd.sources.config_file import Budget, FileResult, parse_config_file
from xdsd.sources.crosscheck.directory import Change, CrossCheck
from xdsd.sources.crosscheck.providers import provider_problems
from xdsd.sources.gateway_api.convert import CONVERTED_PATH
from xdsd.sources.gateway_api.merge import NO_CONVERSION, ConvertedFile, converted_file
from xdsd.sources.limits import DEFAULT_LIMITS, ParseLimits
from xdsd.sources.listing import Stamp, as_listed, file_stamp, list_config_files
from xdsd.sources.peer_authentication import peer_authentication_problems
from xdsd.sources.registered import (
    NO_ENTRIES,
    REGISTRATIONS_PATH,
    RegisteredEntries,
    registered_entries,
)
from xdsd.sources.sidecars import sidecar_problems

log = logging.getLogger(__name__)


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


def load_directory(
    root: str,
    *,
    mesh_tls: MeshTLS = NO_MESH_TLS,
    limits: ParseLimits = DEFAULT_LIMITS,
    extension_providers: tuple[ExtensionProvider, ...] = (),
) -> LoadResult:
    """Load every config file under ``root`` (and the files of ``mesh_tls``) under
    ``limits``; CUSTOM AuthorizationPolicies are checked against the settings'
    ``extension_providers`` (``crosscheck.providers``).

    Raises ConfigError (listing every error, warnings excluded) when anything is wrong:
    ``root`` missing or not a directory, anything under it that cannot be listed, stat'ed
    or read, malformed files or files beyond ``limits``, invalid fields, dangling
    references, duplicates.
    """
    loader = DirectoryLoader(root, limits=limits)
    loader.mesh_tls = mesh_tls
    loader.extension_providers = extension_providers
    return loader.load()


class DirectoryLoader:
    """Loads one directory again and again, reading only the files that changed and
    checking again only what they affect.

    How this works: the result of parsing each file (``FileResult``: model objects and
    problems, not the documents) is kept by path, and the cross-checks' state
    (``CrossCheck``) is kept with it. When ``changed`` names only files of the last listing
    that are still regular files, and that listing found no problem (a dangling link or an
    unreadable directory may have been mended since with no event under the directory), the
    directory is not listed and nothing else is looked at: those files and the files that
    had an error (retried every time) are parsed again. Otherwise the directory is listed
    (names only: no stat per file) and parsed again are: files it has not seen, the files
    named, files that had an error, and, when ``changed`` is None (a forced reload, SIGHUP)
    or names something that is not a config file of the listing (a directory, a ``..data``
    symlink swap, the directory itself), every file whose stamp (inode, size, times) differs
    from when it was read; files no longer listed are forgotten. Either way only the files
    parsed again (and the ones gone) are handed to the cross-checks, which re-check what
    they affect; the result (mesh, problems, their order) is exactly what a cold
    ``load_directory`` gives (``tests/sources/test_incremental.py``), and unchanged files
    contribute the very same model objects, which lets translation recognise them by
    identity. All or nothing still holds: a load with any error raises ConfigError and the
    caller keeps what it had.

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
        #: The certificate and key files the last load's rules and mesh mutual TLS named
        #: (absolute paths), with the directories watched for new ones
        #: (``CertificateFiles.paths``).
        self.certificate_paths: frozenset[str] = frozenset()
        #: Mesh mutual TLS (the settings' ``[mesh.mtls]``): its files are looked for and
        #: read as ``CertificateFiles`` says, and ISTIO_MUTUAL (and a PeerAuthentication
        #: asking for PERMISSIVE or STRICT) is refused while it is off.
        self.mesh_tls: MeshTLS = NO_MESH_TLS
        #: The settings' ``[[mesh.extension_providers]]``: what CUSTOM
        #: AuthorizationPolicies may name (``crosscheck.providers``).
        self.extension_providers: tuple[ExtensionProvider, ...] = ()
        #: The registered workloads merged into every load (``sources.registered``: a
        #: synthetic file after the real ones); set it, then ``load([])`` merges a
        #: change without reading the directory again.
        self.registrations: tuple[Registration, ...] = ()

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
        self._certificates = CertificateFiles(self.root)
        # What the synthetic registrations file held at the last load.
        self._registered: RegisteredEntries = NO_ENTRIES
        # What the synthetic Gateway API file held at the last load (and its inputs).
        self._converted: ConvertedFile = NO_CONVERSION

    def load(self, changed: Iterable[str] | None = None) -> LoadResult:
        """Load the directory; ``changed`` names the paths known to have changed since the
        last load (None: unknown, check every file by stat). The certificate files the
        rules name are read again every time (``sources.certificate_files``; a changed path
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
            changed = [p for p in changed if not self._certificates.holds(p)]
        named = None if changed is None else {as_listed(self.root, p) for p in changed}
        changes: list[Change] = []
        # the last listing is reused only when it found no problem: a dangling link or a
        # directory that could not be read may have been mended since with no event under
        # the directory (a link's target outside it appeared, a descriptor was freed)
        listing = self._listing
        if named is not None and listing is not None and not listing[1] and self._same_files(named):
            files, listing_problems, order = listing
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
        order = {**order, REGISTRATIONS_PATH: len(order), CONVERTED_PATH: len(order) + 1}
        mesh = self._check.update(changes, order)
        registered = registered_entries(
            mesh.workload_groups,
            self.registrations,
            (e.key for e in mesh.workload_entries if not e.group),
            self._registered,
        )
        if registered != self._registered:
            change: Change = (REGISTRATIONS_PATH, self._registered, registered)
            mesh = self._check.update([change], order)
            self._registered = registered
        converted = converted_file(mesh.gateway_api, mesh.services, self._converted, root=self.root)
        if converted is not self._converted:
            change = (CONVERTED_PATH, self._converted, converted)
            mesh = self._check.update([change], order)
            self._converted = converted
        if converted.conditions:
            mesh = mesh.with_gateway_conditions(converted.conditions)
        certificates = self._certificates.read(mesh, self.mesh_tls, touched, changes)
        mesh = certificates.mesh
        self.certificate_paths = self._certificates.paths
        problems = [*listing_problems, *self._check.problems(), *sidecar_problems(mesh.sidecars)]
        problems.extend(peer_authentication_problems(mesh.peer_authentications, self.mesh_tls))
        problems.extend(certificates.istio_mutual)
        problems.extend(provider_problems(mesh, self.extension_providers))
        certificate_problems = certificates.problems
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

    def stamps(self) -> dict[str, Stamp | None]:
        """The stamp of every file the last load kept, as it was when read (the restart
        cache records them: ``xdsd.build_cache``)."""
        return {path: entry.stamp for path, entry in self._files.items()}

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


def _size(entry: FileResult) -> int:
    """The bytes of the file ``entry`` was read from (0 when it could not be)."""
    return entry.stamp[2] if entry.stamp is not None else 0


def _plain_file(path: str) -> bool:
    """True for an existing regular file (not a directory, not a symbolic link): one that
    is not listed is not a config file, and its change changes nothing."""
    return os.path.isfile(path) and not os.path.islink(path)
