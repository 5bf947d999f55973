"""The certificate and key files a mesh needs: found, read on every load, watched.

Two kinds of files: those the rules name (DestinationRule ``tls`` and Gateway server
certificates, by path), and those of mesh mutual TLS, matched on disk from the settings'
path templates (``[mesh.mtls]``: a certificate and key per service or workload, and the
CA). ``CertificateFiles`` keeps what finding them costs across loads: the templates'
matches (matched again only when mesh TLS, the services or the templates' directories
change), the bytes of mesh files whose directories did not change, and what each
DestinationRule asks for (while it is the same object). It also says which paths are
certificate files (``paths``: the files and the directories to watch), so that a change
to one is not taken for a config file's. Reading itself is ``certificates``'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xdsd.errors import Problem
from xdsd.model import CertificateFile, CertificateRef, DestinationRule, Mesh, Origin, ResourceKey
from xdsd.model.mesh_config import NO_MESH_TLS, MeshTLS
from xdsd.model.networking import ServiceEntry
from xdsd.model.service import Service
from xdsd.sources.certificates import (
    istio_mutual_problems,
    mesh_certificate_refs,
    read_certificates,
)
from xdsd.sources.crosscheck.directory import Change, FileContents
from xdsd.sources.gateway_api.refs import SECRET_PATH_PREFIX, secret_files
from xdsd.sources.listing import as_listed


@dataclass(frozen=True, slots=True)
class CertificateReading:
    """What one load found: the mesh with the files' bytes, and the problems (reading
    the files, and ISTIO_MUTUAL asked for while mesh mutual TLS is off)."""

    mesh: Mesh
    problems: list[Problem]
    istio_mutual: list[Problem]


class CertificateFiles:
    """The certificate files of one config directory, across its loads (see the module
    doc). Not thread-safe; a new one knows nothing (the next read is a cold one)."""

    def __init__(self, root: str) -> None:
        self._root = root
        #: The certificate and key files the last read found, and the directories
        #: (``DIR/.``) where new mesh files may appear: what the watcher watches.
        self.paths: frozenset[str] = frozenset()
        self._normalized: frozenset[str] = frozenset()
        self._mesh_tls: MeshTLS = NO_MESH_TLS
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
        self._rule_memo: dict[
            ResourceKey,
            tuple[DestinationRule, tuple[CertificateRef, ...], tuple[tuple[str, Origin], ...]],
        ] = {}

    def holds(self, path: str) -> bool:
        """True when ``path`` is one of the last read's ``paths`` (a certificate file or a
        directory watched for them), not a config file."""
        return os.path.normpath(path) in self._normalized

    def read(
        self, mesh: Mesh, mesh_tls: MeshTLS, touched: set[str] | None, changes: list[Change]
    ) -> CertificateReading:
        """Read the files ``mesh``'s rules and ``mesh_tls`` name; ``touched`` are the paths
        the watcher reported (None: unknown, read everything again), ``changes`` the config
        files parsed again. Updates ``paths``. Raises nothing for what the files hold:
        each problem is in the result."""
        self._mesh_tls = mesh_tls
        rule_refs, istio_mutual = self._rule_tls(mesh)
        # A Gateway API Secret's bytes are in the mesh already (its own config file).
        secrets = secret_files(mesh.gateway_api, (r.path for r in rule_refs))
        rule_refs = [r for r in rule_refs if not r.path.startswith(SECRET_PATH_PREFIX + "/")]
        rule_files, problems = read_certificates(rule_refs)
        rule_files = (*rule_files, *secrets)
        mesh_files, mesh_problems = self._mesh_certificates(touched, changes)
        problems.extend(mesh_problems)
        problems.extend(self._mesh_errors)
        by_path = {c.path: c for c in (*mesh_files, *rule_files)}
        self.paths = frozenset(r.path for r in rule_refs) | self._mesh_paths | self._mesh_watch
        self._normalized = frozenset(map(os.path.normpath, self.paths))
        refused = [] if mesh_tls.enabled else istio_mutual_problems(istio_mutual)
        return CertificateReading(
            mesh.with_certificates(tuple(by_path.values())), problems, refused
        )

    def _rule_tls(self, mesh: Mesh) -> tuple[list[CertificateRef], list[tuple[str, Origin]]]:
        """The certificate files the rules name, and where DestinationRules and Gateway
        servers ask for ISTIO_MUTUAL; what a DestinationRule holds is remembered while it
        is the same object (the cross-checks keep unchanged rules), so a large mesh costs
        a lookup per rule."""
        refs = mesh.gateway_certificate_refs()
        istio = [
            server.tls.mode_at
            for gateway in mesh.gateways
            for server in gateway.servers
            if server.tls is not None and server.tls.mode_at is not None
        ]
        memo, fresh = self._rule_memo, {}
        for rule in mesh.destination_rules:
            found = memo.get(rule.key)
            if found is None or found[0] is not rule:
                settings = rule.client_tls()
                found = (
                    (rule, (), ())  # the common rule: no TLS settings
                    if not settings
                    else (
                        rule,
                        tuple(r for tls in settings for r in tls.refs),
                        tuple(t.mode_at for t in settings if t.mode_at is not None),
                    )
                )
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
        self._mesh_watch = _template_directories(self._mesh_tls, self._mesh_dirs)
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
        mtls = self._mesh_tls
        if touched is not None:  # both spellings: templates may use either
            touched = {os.path.normpath(p) for p in touched} | {
                as_listed(self._root, path) for path in touched
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
