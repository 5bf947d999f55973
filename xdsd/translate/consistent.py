"""``Assembly``: a class's consistent snapshot from its base and its own resources (stage
*consistent*).

How this works: a class's snapshot is its base with what the class chose laid over it
(its parts, after the defaults, EnvoyFilters and raw resources), without what patches
removed. When neither this translation's nor the previous one's choice for the class
replaces a base resource, the previous translation's snapshot of the class is brought up
to date with the base's delta and the class's own changes instead (one copy of each
changed type's mapping rather than a merge per class). Either way the result is checked:
a dangling reference from a raw or patched resource, or to one a patch removed, is the
user's to fix (TranslationError naming the file); any other is a bug
(InconsistentSnapshotError).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import NamedTuple

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, TranslationError
from xdsd.model import ResourceKey
from xdsd.resources import CLUSTER, ENDPOINT, SHORT_NAMES, Resource, TypeUrl
from xdsd.translate.clusters import ClusterFlavor
from xdsd.translate.filters import Patched, Slot
from xdsd.translate.node import NodeClass
from xdsd.translate.raw import RawResources, dangling_references
from xdsd.translate.shared import SharedClusters

_BASE_TYPES = (CLUSTER, ENDPOINT)


class Chosen(NamedTuple):
    """What a class chose besides its base, for the next translation's ``Assembly``."""

    resources: dict[Slot, Resource]
    #: Whether some of ``resources`` replaces (or a patch removed) a base resource.
    overlaps: bool
    #: The services the class's base holds (None: all).
    base_scope: frozenset[ResourceKey] | None


class Assembly:
    """The snapshots of one translation, per class, and what each class chose (handed to
    the next translation); a class's snapshot may name the ``supplied`` (type URL, name)
    pairs without holding them (each client's own ``default`` secret, when xdsd's CA
    issues it). Not thread-safe."""

    def __init__(
        self,
        *,
        bases: SharedClusters,
        raw: RawResources,
        timings: dict[str, float],
        previous: Assembly | None,
        supplied: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self._bases = bases
        #: What a class's snapshot may name without holding (``mesh_tls.issued_secrets``).
        self._supplied = supplied
        self._raw = raw
        self._timings = timings
        #: The snapshot of each class built so far.
        self.snapshots: dict[NodeClass, Snapshot] = {}
        self._chosen: dict[NodeClass, Chosen] = {}
        self._prev_chosen = previous._chosen if previous is not None else {}
        self._prev_snapshots = previous.snapshots if previous is not None else {}

    def consistent(
        self,
        node: NodeClass,
        flavor: ClusterFlavor,
        base: Snapshot,
        chosen: dict[Slot, Resource],
        changes: Mapping[Slot, Patched] | None = None,
        base_scope: frozenset[ResourceKey] | None = None,
    ) -> Snapshot:
        """The snapshot of ``base`` with the class's ``chosen`` resources, without those
        EnvoyFilter patches removed (``changes``: what the patches did, by slot). A
        generated cluster replaced by a raw or patched one, or removed, takes its
        ClusterLoadAssignment with it unless something chosen still needs it. A dangling
        reference from a raw or patched resource, or to a resource a patch removed, is
        the user's to fix (TranslationError naming the file); any other one is a bug
        (InconsistentSnapshotError)."""
        started = time.perf_counter()
        changes = changes or {}
        gone = [slot for slot, change in changes.items() if change.resource is None]
        overlaps = bool(gone) or any(
            n in base.get(TypeUrl(t)) for t, n in chosen if t in _BASE_TYPES
        )
        self._chosen[node] = Chosen(chosen, overlaps, base_scope)
        snapshot = None if overlaps else self._updated(node, flavor, chosen, base_scope)
        if snapshot is None:
            removed: list[tuple[TypeUrl, str]] = [(TypeUrl(t), n) for t, n in gone]
            clusters = base.get(CLUSTER)
            replaced = [clusters[n] for t, n in [*chosen, *gone] if t == CLUSTER and n in clusters]
            if replaced:
                needed = {ref for r in chosen.values() for ref in r.references}
                for old in replaced:
                    for type_url, name in old.references:
                        if (type_url, name) not in needed and (type_url, name) not in chosen:
                            removed.append((TypeUrl(type_url), name))
            snapshot = Snapshot.extend(base, chosen.values(), removed=removed, check=False)
        problems = dangling_references(snapshot, self._raw.resources(), self._raw.origins)
        if changes:
            problems.extend(_patch_problems(snapshot, chosen, changes))
        if problems:
            raise TranslationError(problems)
        snapshot.check_consistency(supplied=self._supplied)
        self._timings["snapshot"] += time.perf_counter() - started
        return snapshot

    def _updated(
        self,
        node: NodeClass,
        flavor: ClusterFlavor,
        chosen: dict[Slot, Resource],
        base_scope: frozenset[ResourceKey] | None,
    ) -> Snapshot | None:
        """``node``'s snapshot of the previous translation brought up to date with what
        changed in the base and in the class's own resources, when neither translation's
        own resources replace a base resource (None otherwise: build from the base).
        Costs one copy of each changed type's mapping instead of a merge per class."""
        delta = self._bases.delta(flavor, base_scope)
        previous = self._prev_snapshots.get(node)
        before = self._prev_chosen.get(node)
        if delta is None or previous is None or before is None or before.overlaps:
            return None
        if before.base_scope != base_scope:  # built on another base: the delta does not apply
            return None
        old = before.resources
        added = [*delta.added, *(r for k, r in chosen.items() if old.get(k) is not r)]
        removed = [
            *(k for k in delta.removed if k not in chosen),  # a secret the class names itself
            *((TypeUrl(k[0]), k[1]) for k in old if k not in chosen),
        ]
        if not added and not removed:
            return previous
        return Snapshot.extend(previous, added, removed=removed, check=False)


def _patch_problems(
    snapshot: Snapshot, chosen: Mapping[Slot, Resource], changes: Mapping[Slot, Patched]
) -> list[Problem]:
    """A problem, at the patch to blame, for each reference left dangling by EnvoyFilter
    patches: one a patched or added resource makes to something the snapshot lacks, and
    one a class's resource makes to something a patch removed."""
    problems: list[Problem] = []

    def kind(type_url: str) -> str:
        return SHORT_NAMES.get(TypeUrl(type_url), type_url).removesuffix("s")

    for (type_url, name), (new, applied) in changes.items():
        if new is None or not applied:
            continue
        for ref_type, ref in new.references:
            if ref in snapshot.get(TypeUrl(ref_type)):
                continue
            problems.append(
                applied[-1].problem(
                    f"after this patch {kind(type_url)} {name!r} references {kind(ref_type)} "
                    f"{ref!r}, which the node does not have: add it (a CLUSTER ADD patch, a "
                    "service or a raw resource) or change the reference",
                    ".patch.value",
                )
            )
    removed = {slot: applied for slot, (new, applied) in changes.items() if new is None}
    if removed:
        for resource in chosen.values():
            for ref_type, ref in resource.references:
                blamed = removed.get((ref_type, ref))
                if blamed and ref not in snapshot.get(TypeUrl(ref_type)):
                    problems.append(
                        blamed[-1].problem(
                            f"removes {kind(ref_type)} {ref!r}, which {kind(resource.type_url)} "
                            f"{resource.name!r} still references",
                            ".patch.operation",
                        )
                    )
    return problems
