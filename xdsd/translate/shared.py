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

import logging
import marshal
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, TranslationError
from xdsd.model import Mesh, ResourceKey
from xdsd.model.mesh_config import ROOT_CA_SECRET, WORKLOAD_SECRET
from xdsd.resources import CLUSTER, ENDPOINT, SECRET, Resource, TypeUrl
from xdsd.translate.clusters import ClusterFlavor, OutboundCluster, is_eds
from xdsd.translate.peer_authentication import CalleeModes
from xdsd.translate.reuse import ServiceParts

#: What a base's clusters may name without holding it: the mesh mutual TLS secrets, which
#: differ per class and are added to each class's snapshot (``MeshTranslation``).
CLASS_SECRETS = frozenset({(SECRET, WORKLOAD_SECRET), (SECRET, ROOT_CA_SECRET)})
_CLASS_SECRET_NAMES = frozenset(name for _, name in CLASS_SECRETS)

log = logging.getLogger(__name__)


class Delta(NamedTuple):
    """How a base differs from the previous translation's."""

    #: Resources put in.
    added: list[Resource]
    #: (type, name) of resources taken out.
    removed: list[tuple[TypeUrl, str]]


#: ``xdsd.forked.Split`` (the core does no I/O: it is handed one): work run elsewhere,
#: returning bytes; its collect, or None.
Split = Callable[[Callable[[], bytes]], Callable[[], bytes | None] | None]

#: Told of the assignments another process built, with their specs
#: (``SharedClusters.base``).
Adopt = Callable[[list[tuple[OutboundCluster, Resource]]], None]

#: A flavor's build hands a share to ``split`` when at least this many services need
#: their resources built (a cold translation of a large mesh; tests lower it).
SPLIT_THRESHOLD = 1000
#: The share of those services the child builds when it starts before the class's other
#: parts are built (``prepare``: they are built here meanwhile), and when it starts with
#: the base (the two processes build the services only). Measured: the child also pays
#: for the fork and for the pages it touches, and this process for taking its
#: resources over (docs/performance.md, "Cold build over two cores").
CHILD_SHARE = 0.75
SOLO_SHARE = 0.5

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
        split: Split | None = None,
    ) -> None:
        """``callee``: which endpoints callers reach in plaintext (what a service's
        assignments read besides the service and its rule; None: none). ``split``: how
        a cold build hands a share of the services to another process (None: none)."""
        self.mesh = mesh
        self._split = split
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
        # Per flavor value: a share of its cold build handed to ``split`` (``prepare``).
        self._pending: dict[str, _Pending] = {}
        # The flavor values whose build ``prepare`` has considered handing on.
        self._asked: set[str] = set()

    def base(
        self,
        flavor: ClusterFlavor,
        cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
        assignment: Callable[[OutboundCluster], Resource],
        scope: frozenset[ResourceKey] | None = None,
        secret: Callable[[str], Resource | None] = lambda name: None,
        adopt: Adopt | None = None,
    ) -> Snapshot:
        """The outbound clusters of ``flavor`` and the assignments of the EDS ones, of
        every service or only of the services ``scope`` names, and the SDS secrets those
        clusters name; ``cluster(spec, flavor)``, ``assignment(spec)`` and
        ``secret(name)`` build one resource each; ``adopt(spec, assignment)`` is told
        of every assignment another process built (``prepare``), to remember it as
        ``assignment`` would have.

        Raises TranslationError (remembered, raised again on every call) when a
        cluster cannot be built.
        """
        key: BaseKey = (flavor, scope)
        found = self._bases.get(key)
        if found is None:
            changed = self._changed.get(flavor)
            if changed is None:
                try:
                    changed = self._build_parts(flavor, cluster, assignment, adopt)
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

    def prepare(
        self,
        flavor: ClusterFlavor,
        cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
        assignment: Callable[[OutboundCluster], Resource],
        adopt: Adopt | None = None,
    ) -> bool:
        """Start handing a share of ``flavor``'s cold build to ``split`` now, so that it
        runs while the caller builds something else before calling ``base`` (which
        collects it; ``cluster``, ``assignment`` and ``adopt`` must be the ones given
        to ``base``). True when a share was handed on; False when there is nothing to
        hand (no split, the parts are built or being built, fewer than
        ``SPLIT_THRESHOLD`` services to build, no child could be made). Raises nothing:
        what cannot be built is left to ``base``, which reports it."""
        tag = flavor.value
        if self._split is None or flavor in self._changed or tag in self._asked:
            return False
        self._asked.add(tag)
        pending = self._start(flavor, cluster, assignment, CHILD_SHARE)
        if pending is None:
            return False
        self._pending[tag] = pending
        return True

    def _start(
        self,
        flavor: ClusterFlavor,
        cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
        assignment: Callable[[OutboundCluster], Resource],
        share: float,
    ) -> _Pending | None:
        """Every service's parts bound, and a child building the last ``share`` of the
        services whose ``flavor`` resources are missing, when there are at least
        ``SPLIT_THRESHOLD`` of them; else None."""
        split = self._split
        if split is None:
            return None
        try:
            bound = self._bind()
        except TranslationError:
            return None  # ``_build_parts`` meets it again and reports it
        tag = flavor.value
        todo = [i for i, (_, parts) in enumerate(bound) if tag not in parts.clusters]
        if len(todo) < SPLIT_THRESHOLD:
            return None
        start = todo[min(len(todo) - 1, int(len(todo) * (1.0 - share)))]

        def work() -> bytes:
            return _built_share(bound, start, flavor, cluster, assignment)

        collect = split(work)
        if collect is None:
            return None
        return _Pending(bound, start, collect)

    def _bind(self) -> list[tuple[ResourceKey, ServiceParts]]:
        """Every service with its parts, in the mesh's order: taken over from the
        previous translation when its inputs are the same, else new (nothing built)."""
        mine, previous = self._parts, self._prev_parts
        rule_of = self.mesh.destination_rule
        callee = self._callee
        bound: list[tuple[ResourceKey, ServiceParts]] = []
        for service in self.mesh.services:
            key = service.key
            parts = mine.get(key)
            if parts is None:
                rule = rule_of(service)
                peer = callee.inputs(service.namespace) if callee is not None else ()
                old = previous.get(key)
                if old is not None and old.reusable_for(service, rule, peer):
                    parts = old.rebound(service, rule, peer)
                else:
                    parts = ServiceParts.of(service, rule, peer)
                mine[key] = parts
            bound.append((key, parts))
        return bound

    def _build_parts(
        self,
        flavor: ClusterFlavor,
        cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
        assignment: Callable[[OutboundCluster], Resource],
        adopt: Adopt | None = None,
    ) -> list[ResourceKey]:
        """Build what is missing of every service's ``flavor`` resources; returns the
        services whose resources differ from the previous translation's (one pass: this
        runs on every reload, over every service).

        A cold build of many services hands its last services to ``split`` (started by
        ``prepare``, or here) and builds the others meanwhile; it then takes the child's
        resources over and builds, in order, whatever the child did not give (a service
        whose cluster failed, or all of them when the child failed): so every problem
        comes from this process, in the serial order, and the result is the serial one.
        """
        tag = flavor.value
        pending = self._pending.pop(tag, None)
        if pending is None and self._split is not None and tag not in self._asked:
            pending = self._start(flavor, cluster, assignment, SOLO_SHARE)
        bound = pending.bound if pending is not None else self._bind()
        problems: list[Problem] = []
        changed: list[ResourceKey] = []
        if pending is None:
            self._build_range(bound, flavor, cluster, assignment, problems, changed)
        else:
            self._build_range(
                bound[: pending.start], flavor, cluster, assignment, problems, changed
            )
            self._adopt(pending, flavor, adopt)
            self._build_range(
                bound[pending.start :], flavor, cluster, assignment, problems, changed
            )
        if problems:
            raise TranslationError(problems)
        return changed

    def _build_range(
        self,
        bound: list[tuple[ResourceKey, ServiceParts]],
        flavor: ClusterFlavor,
        cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
        assignment: Callable[[OutboundCluster], Resource],
        problems: list[Problem],
        changed: list[ResourceKey],
    ) -> None:
        """``_build_parts`` over ``bound``, in order: the problems and changed services
        are appended."""
        previous = self._prev_parts
        tag = flavor.value  # a str key: enum members hash in Python
        for key, parts in bound:
            old = previous.get(key)
            if parts is old and tag in parts.clusters and tag in parts.assignments:
                continue  # the very same parts, already built for this flavor
            clusters = parts.clusters.get(tag)
            if clusters is None:
                try:
                    clusters = _clusters_of(parts, flavor, cluster)
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
                    continue
                parts.clusters[tag] = clusters
            assignments = parts.assignments.get(tag)
            if assignments is None:
                assignments = _assignments_of(parts, flavor, assignment)
                parts.assignments[tag] = assignments
            if (
                old is None
                or old.clusters.get(tag) is not clusters
                or old.assignments.get(tag) is not assignments
            ):
                changed.append(key)

    def _adopt(self, pending: _Pending, flavor: ClusterFlavor, adopt: Adopt | None) -> None:
        """Take over the resources the child built (nothing when it failed or what it
        gave is not exactly a subset of the services it was asked for, each with the
        resources the serial build makes: the build then does them here)."""
        data = pending.collect()
        if data is None:
            log.debug("a build child gave nothing: building its share here")
            return
        tag = flavor.value
        found = _decoded(data, pending, tag)
        if found is None:
            log.debug("a build child's resources do not fit: building its share here")
            return
        indices, counts, resources = found
        bound = pending.bound
        at = 0
        adopted: list[
            tuple[ServiceParts, tuple[Resource, ...], tuple[Resource, ...], list[OutboundCluster]]
        ] = []
        for index, (n_clusters, n_assignments) in zip(indices, counts, strict=True):
            parts = bound[index][1]
            eds = [spec for spec in parts.specs if is_eds(spec, flavor)]
            if n_clusters != len(parts.specs) or n_assignments != len(eds):
                log.debug("a build child's resources do not fit: building its share here")
                return
            clusters = tuple(resources[at : at + n_clusters])
            at += n_clusters
            assignments = tuple(resources[at : at + n_assignments])
            at += n_assignments
            if any(r.name != spec.name for r, spec in zip(assignments, eds, strict=True)):
                log.debug("a build child's resources do not fit: building its share here")
                return
            adopted.append((parts, clusters, assignments, eds))
        made: list[tuple[OutboundCluster, Resource]] = []
        for parts, clusters, assignments, eds in adopted:
            parts.clusters[tag] = clusters
            parts.assignments[tag] = assignments
            made += zip(eds, assignments, strict=True)
        if adopt is not None:
            adopt(made)

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


class _Pending(NamedTuple):
    """A share of a flavor's cold build handed to another process."""

    #: Every service with its parts, in the mesh's order (``SharedClusters._bind``).
    bound: list[tuple[ResourceKey, ServiceParts]]
    #: The child builds the services of ``bound[start:]`` that were not built.
    start: int
    collect: Callable[[], bytes | None]


def _clusters_of(
    parts: ServiceParts,
    flavor: ClusterFlavor,
    cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
) -> tuple[Resource, ...]:
    """The ``flavor`` clusters of ``parts``' specs. Raises TranslationError."""
    return tuple(cluster(spec, flavor) for spec in parts.specs)


def _assignments_of(
    parts: ServiceParts,
    flavor: ClusterFlavor,
    assignment: Callable[[OutboundCluster], Resource],
) -> tuple[Resource, ...]:
    """The assignments of ``parts``' EDS clusters in ``flavor``."""
    return tuple(assignment(spec) for spec in parts.specs if is_eds(spec, flavor))


def _built_share(
    bound: list[tuple[ResourceKey, ServiceParts]],
    start: int,
    flavor: ClusterFlavor,
    cluster: Callable[[OutboundCluster, ClusterFlavor], Resource],
    assignment: Callable[[OutboundCluster], Resource],
) -> bytes:
    """What a child builds (run in it): the ``flavor`` resources of the services of
    ``bound[start:]`` that lack them, built as ``_build_range`` builds them, encoded for
    ``_decoded``; a service whose clusters raise TranslationError is left out (the
    parent builds it and reports its problems)."""
    tag = flavor.value
    indices: list[int] = []
    counts: list[int] = []  # per service: clusters, assignments
    names: list[str] = []
    payloads: list[bytes] = []
    digests: list[str] = []
    references: list[tuple[tuple[str, str], ...]] = []
    tokens: list[int] = []
    for index in range(start, len(bound)):
        parts = bound[index][1]
        if tag in parts.clusters:
            continue
        try:
            clusters = _clusters_of(parts, flavor, cluster)
        except TranslationError:
            continue
        assignments = _assignments_of(parts, flavor, assignment)
        if any(r.type_url != CLUSTER for r in clusters) or any(
            r.type_url != ENDPOINT for r in assignments
        ):
            raise ValueError("a built share holds clusters, then assignments")
        indices.append(index)
        counts += (len(clusters), len(assignments))
        for r in (*clusters, *assignments):
            names.append(r.name)
            payloads.append(r.payload)
            digests.append(r.digest)
            references.append(r.references)
            tokens.append(r.token)
    return marshal.dumps((indices, counts, names, payloads, digests, references, tokens))


def _decoded(
    data: bytes, pending: _Pending, tag: str
) -> tuple[list[int], list[tuple[int, int]], list[Resource]] | None:
    """The services a child built (their indices in ``pending.bound``, ascending, each
    unbuilt and at or past ``pending.start``), their numbers of clusters and assignments
    and those resources in order, from what ``_built_share`` encoded; None when ``data``
    is not such an encoding."""
    try:
        decoded = marshal.loads(data)
        indices, counts, names, payloads, digests, references, tokens = decoded
    except (EOFError, ValueError, TypeError):
        return None
    lists = (indices, counts, names, payloads, digests, references, tokens)
    if any(type(x) is not list for x in lists):
        return None
    total = len(names)
    if len(counts) != 2 * len(indices) or any(len(x) != total for x in lists[3:]):
        return None
    bound, last = pending.bound, pending.start - 1
    for index in indices:
        if type(index) is not int or not last < index < len(bound):
            return None
        if tag in bound[index][1].clusters:
            return None
        last = index
    if not _all_of(int, counts) or min(counts, default=0) < 0 or sum(counts) != total:
        return None
    if not (
        _all_of(str, names)
        and _all_of(str, digests)
        and _all_of(bytes, payloads)
        and _all_of(tuple, references)
        and _all_of(int, tokens)
    ):
        return None
    types: list[TypeUrl] = []
    for n_clusters, n_assignments in zip(counts[::2], counts[1::2], strict=True):
        types += [CLUSTER] * n_clusters
        types += [ENDPOINT] * n_assignments
    resources = Resource.restored_all(names, types, payloads, digests, references, tokens)
    pairs = list(zip(counts[::2], counts[1::2], strict=True))
    return indices, pairs, resources


def _all_of(kind: type, values: list[Any]) -> bool:
    """True when every item of ``values`` is exactly of type ``kind`` (or none is)."""
    return set(map(type, values)) <= {kind}


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
