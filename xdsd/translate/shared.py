"""``SharedClusters``: the clusters and endpoints every class of a flavor receives.

How this works: per cluster flavor (ADS Envoy, REST Envoy, proxyless gRPC), every node
class gets every service's outbound clusters and the ClusterLoadAssignment of each EDS
one: in a large mesh, tens of thousands of resources. They are built per service
(``ServiceParts``, taken over from the previous translation for every service whose
objects are unchanged) and gathered into one *base* snapshot per flavor, checked once.
The base of the next translation is the previous base with the resources of the services
that changed put in and those of removed services taken out (``Snapshot.extend``), and
that difference (``delta``) lets each class's own snapshot be brought up to date the same
way instead of being merged again from the base.

A node that a Sidecar limits to some services gets a *scoped* base instead: the resources
of those services only, built from the same per-service parts, one per (flavor, set of
services) and carried across reloads the same way, so nodes that see the same set share
it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, TranslationError
from xdsd.model import Mesh, ResourceKey
from xdsd.model.mesh_config import ROOT_CA_SECRET, WORKLOAD_SECRET
from xdsd.resources import CLUSTER, SECRET, Resource, TypeUrl
from xdsd.translate.clusters import ClusterFlavor, OutboundCluster, is_eds
from xdsd.translate.peer_authentication import CalleeModes
from xdsd.translate.reuse import ServiceParts

#: What a base's clusters may name without holding it: the mesh mutual TLS secrets, which
#: differ per class and are added to each class's snapshot (``MeshTranslation``).
CLASS_SECRETS = frozenset({(SECRET, WORKLOAD_SECRET), (SECRET, ROOT_CA_SECRET)})
_CLASS_SECRET_NAMES = frozenset(name for _, name in CLASS_SECRETS)


class Delta(NamedTuple):
    """How a base differs from the previous translation's."""

    #: Resources put in.
    added: list[Resource]
    #: (type, name) of resources taken out.
    removed: list[tuple[TypeUrl, str]]


#: Which base: the flavor, and the services of a scoped base (None: every service).
BaseKey = tuple[ClusterFlavor, frozenset[ResourceKey] | None]


class SharedClusters:
    """Per flavor, the base snapshot of one mesh (see the module docstring).

    ``timings["snapshot"]`` gets the seconds spent assembling bases. Not thread-safe.
    Holds no reference to the translation (the builders are passed to ``base``), so a
    translation is freed by reference counting alone.
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        previous: SharedClusters | None,
        timings: dict[str, float],
        callee: CalleeModes | None = None,
    ) -> None:
        """``callee``: which endpoints callers reach in plaintext (what a service's
        assignments read besides the service and its rule; None: none)."""
        self.mesh = mesh
        self._callee = callee
        self._timings = timings
        # Only what this translation used is handed on: no chain of translations is kept.
        self._parts: dict[ResourceKey, ServiceParts] = {}
        self._bases: dict[BaseKey, Snapshot | TranslationError] = {}
        self._deltas: dict[BaseKey, Delta] = {}
        # Per base: whether its clusters name a secret of a file (not a class secret).
        self._file_secrets: dict[BaseKey, bool] = {}
        # Per flavor: the services whose parts differ from the previous translation's.
        self._changed: dict[ClusterFlavor, list[ResourceKey] | TranslationError] = {}
        self._prev_parts = previous._parts if previous is not None else {}
        self._prev_bases = previous._bases if previous is not None else {}
        self._prev_file_secrets = previous._file_secrets if previous is not None else {}

    def base(
        self,
        flavor: ClusterFlavor,
        cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
        assignment: Callable[[OutboundCluster], Resource],
        scope: frozenset[ResourceKey] | None = None,
        secret: Callable[[str], Resource | None] = lambda name: None,
    ) -> Snapshot:
        """The outbound clusters of ``flavor`` and the assignments of the EDS ones, of
        every service or only of the services ``scope`` names, and the SDS secrets those
        clusters name; ``cluster(spec, flavor)``, ``assignment(spec)`` and
        ``secret(name)`` build one resource each.

        Raises TranslationError (remembered, raised again on every call) when a
        cluster cannot be built.
        """
        key: BaseKey = (flavor, scope)
        found = self._bases.get(key)
        if found is None:
            changed = self._changed.get(flavor)
            if changed is None:
                try:
                    changed = self._build_parts(flavor, cluster, assignment)
                except TranslationError as err:
                    changed = TranslationError(err.problems)  # without its traceback
                self._changed[flavor] = changed
            if isinstance(changed, TranslationError):
                found = TranslationError(changed.problems)
            else:
                started = time.perf_counter()
                found = self._assemble(key, changed, secret)
                self._timings["snapshot"] += time.perf_counter() - started
            self._bases[key] = found
        if isinstance(found, TranslationError):
            raise TranslationError(found.problems)
        return found

    def _assemble(
        self, key: BaseKey, changed: list[ResourceKey], secret: Callable[[str], Resource | None]
    ) -> Snapshot:
        """The base ``key`` names: the previous translation's with the changes applied,
        else built from the parts; with the secrets its clusters name (built again on
        every translation: a certificate file may have changed while no rule did)."""
        flavor, scope = key
        tag = flavor.value
        previous = self._prev_bases.get(key)
        if isinstance(previous, Snapshot):
            if scope is None:
                delta = self._changes(flavor, changed)
            else:  # an equal scope names services that exist in both meshes
                delta = self._changes(flavor, [k for k in changed if k in scope], gone=False)
            base = Snapshot.extend(previous, delta.added, removed=delta.removed, check=False)
            named = self._prev_file_secrets.get(key, True) or _names_file_secrets(delta.added)
            if named:  # else no cluster names a file's secret, before or now: none to change
                added, removed = _secret_changes(base, secret)
                if added or removed:
                    delta = Delta([*delta.added, *added], [*delta.removed, *removed])
                    base = Snapshot.extend(
                        previous, delta.added, removed=delta.removed, check=False
                    )
                named = _names_file_secrets(base.get(CLUSTER).values())
            self._file_secrets[key] = named
            self._deltas[key] = delta
            base.check_consistency(supplied=CLASS_SECRETS)
            return base
        chosen: Iterable[ServiceParts]
        if scope is None:
            chosen = self._parts.values()
        else:
            chosen = [self._parts[k] for k in sorted(scope) if k in self._parts]
        resources = [r for parts in chosen for r in (*parts.clusters[tag], *parts.assignments[tag])]
        names = {n for r in resources for t, n in r.references if t == SECRET}
        self._file_secrets[key] = bool(names - _CLASS_SECRET_NAMES)
        resources.extend(s for s in map(secret, sorted(names)) if s is not None)
        base = Snapshot.build(resources, check=False)
        base.check_consistency(supplied=CLASS_SECRETS)
        return base

    def delta(
        self, flavor: ClusterFlavor, scope: frozenset[ResourceKey] | None = None
    ) -> Delta | None:
        """How ``base(flavor, scope=scope)`` differs from the previous translation's
        (None when it was built from scratch)."""
        return self._deltas.get((flavor, scope))

    def _build_parts(
        self,
        flavor: ClusterFlavor,
        cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
        assignment: Callable[[OutboundCluster], Resource],
    ) -> list[ResourceKey]:
        """Build what is missing of every service's ``flavor`` resources; returns the
        services whose resources differ from the previous translation's (one pass: this
        runs on every reload, over every service)."""
        problems: list[Problem] = []
        changed: list[ResourceKey] = []
        mine, previous = self._parts, self._prev_parts
        rule_of = self.mesh.destination_rule
        tag = flavor.value  # a str key: enum members hash in Python
        callee = self._callee
        for service in self.mesh.services:
            key = service.key
            parts = mine.get(key)
            old = previous.get(key)
            if parts is None:
                rule = rule_of(service)
                peer = callee.inputs(service.namespace) if callee is not None else ()
                if old is not None and old.reusable_for(service, rule, peer):
                    parts = old.rebound(service, rule, peer)
                else:
                    parts = ServiceParts.of(service, rule, peer)
                mine[key] = parts
            if parts is old and tag in parts.clusters and tag in parts.assignments:
                continue  # the very same parts, already built for this flavor
            clusters = parts.clusters.get(tag)
            if clusters is None:
                try:
                    clusters = tuple(cluster(spec, flavor) for spec in parts.specs)
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
                    continue
                parts.clusters[tag] = clusters
            assignments = parts.assignments.get(tag)
            if assignments is None:
                assignments = tuple(
                    assignment(spec) for spec in parts.specs if is_eds(spec, flavor)
                )
                parts.assignments[tag] = assignments
            if (
                old is None
                or old.clusters.get(tag) is not clusters
                or old.assignments.get(tag) is not assignments
            ):
                changed.append(key)
        if problems:
            raise TranslationError(problems)
        return changed

    def _changes(
        self, flavor: ClusterFlavor, changed: list[ResourceKey], *, gone: bool = True
    ) -> Delta:
        """The resources of the ``changed`` services, and the names of those they no
        longer have (and, with ``gone``, of services that are gone)."""
        tag = flavor.value
        added: list[Resource] = []
        removed: list[tuple[TypeUrl, str]] = []
        for key in changed:
            parts = self._parts[key]
            old = self._prev_parts.get(key)
            new = (*parts.clusters[tag], *parts.assignments[tag])
            if old is not None:
                names = {(r.type_url, r.name) for r in new}
                removed.extend(
                    (r.type_url, r.name)
                    for r in (*old.clusters.get(tag, ()), *old.assignments.get(tag, ()))
                    if (r.type_url, r.name) not in names
                )
            added.extend(new)
        for key in self._prev_parts.keys() - self._parts.keys() if gone else ():
            old = self._prev_parts[key]
            removed.extend(
                (r.type_url, r.name)
                for r in (*old.clusters.get(tag, ()), *old.assignments.get(tag, ()))
            )
        return Delta(added, removed)


def _names_file_secrets(resources: Iterable[Resource]) -> bool:
    """True when some of ``resources`` names a secret that is not a class secret."""
    return any(
        t == SECRET and n not in _CLASS_SECRET_NAMES for r in resources for t, n in r.references
    )


def _secret_changes(
    base: Snapshot, secret: Callable[[str], Resource | None]
) -> tuple[list[Resource], list[tuple[TypeUrl, str]]]:
    """The secrets ``base``'s clusters name that it lacks or holds with other content,
    and the ones it holds that no cluster names."""
    names = {n for r in base.get(CLUSTER).values() for t, n in r.references if t == SECRET}
    held = base.get(SECRET)
    added = []
    for name in sorted(names):
        found = secret(name)
        old = held.get(name)
        if found is not None and (old is None or old.digest != found.digest):
            added.append(found)
    removed = [(SECRET, n) for n in held if n not in names]
    return added, removed
