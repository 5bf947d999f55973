"""``Snapshot``: an immutable, consistent, versioned set of resources for one node class.

How versions work: every ``Resource`` carries the hash of its deterministic encoding and a
64-bit ``token`` hashed from its name and that digest. The version of a type is the sum of
its resources' tokens (modulo 2**64, in hex), so it changes exactly when a resource of that
type is added, removed or changed (up to a 2**-64 chance of an accidental collision, as
with any 64-bit content hash), two processes (or replicas) that load the same files agree
on it, and it does not depend on any order. ``version_for`` does the same over a subset of
names, for clients that poll named resources one at a time (REST EDS/RDS).

How many classes stay cheap: the resources every class of a kind receives (all clusters
and their ClusterLoadAssignments: tens of thousands in a large mesh) are built into one
*base* snapshot, checked once. ``Snapshot.extend`` makes a class's snapshot from a base and
the class's own few resources: a type the class adds nothing to shares the base's mapping
and version outright; a type it adds to is copied once (a C-level copy; new names are
inserted in order, not re-sorted) and its version updated by adding and subtracting
tokens; only the added resources' references need checking, since the base was closed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from xdsd.errors import InconsistentSnapshotError
from xdsd.resources import PUSH_ORDER, SHORT_NAMES, Resource, TypeUrl, Version

T = TypeVar("T")
_MISSING: Any = object()
EMPTY_VERSION = Version("")
_MASK = (1 << 64) - 1


def _format(total: int) -> Version:
    return Version(f"{total & _MASK:016x}")


def _version_of(resources: Iterable[Resource]) -> Version:
    return _format(sum(r.token for r in resources))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Resources by type and name (each type's mapping in name order), with a content
    version per type.

    Built only through ``Snapshot.build`` or ``Snapshot.extend``, which check consistency:
    a snapshot that could make a client wait for a resource it will never get is never
    made.
    """

    resources: Mapping[TypeUrl, Mapping[str, Resource]]
    versions: Mapping[TypeUrl, Version]
    _name_versions: dict[tuple[TypeUrl, frozenset[str]], Version] = field(
        default_factory=dict, compare=False, repr=False
    )
    # Per type, the sum of the tokens (the version before formatting).
    _sums: Mapping[TypeUrl, int] = field(default_factory=dict, compare=False, repr=False)
    # The resources whose references ``check_consistency`` must look at: None for all;
    # for an extended snapshot, only what was added to a base that was already closed.
    _unchecked: tuple[Resource, ...] | None = field(default=None, compare=False, repr=False)
    _closed: bool = field(default=False, compare=False, repr=False)
    _derived: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, resources: Iterable[Resource], *, check: bool = True) -> Snapshot:
        """Group ``resources`` by type, compute versions and (unless ``check`` is False)
        verify consistency.

        Raises InconsistentSnapshotError when two resources of a type share a name, or when
        a resource references a name its snapshot lacks (see ``references_of``).
        """
        by_type = _group(resources, {t: {} for t in PUSH_ORDER})
        # Names sorted alone (strings compare faster than (name, resource) pairs).
        frozen = {
            t: MappingProxyType(dict(zip(names, map(bucket.__getitem__, names), strict=True)))
            for t, bucket in by_type.items()
            for names in (sorted(bucket),)
        }
        sums = {t: sum(r.token for r in bucket.values()) for t, bucket in frozen.items()}
        versions = {t: _format(total) for t, total in sums.items()}
        snap = cls(MappingProxyType(frozen), MappingProxyType(versions), _sums=sums)
        if check:
            snap.check_consistency()
        return snap

    @classmethod
    def extend(
        cls,
        base: Snapshot,
        added: Iterable[Resource],
        *,
        removed: Iterable[tuple[TypeUrl, str]] = (),
        check: bool = True,
    ) -> Snapshot:
        """``base`` with ``added`` (a resource named like one of ``base`` replaces it) and
        without the ``removed`` (type, name) pairs; versions as ``build`` would give them.

        Raises InconsistentSnapshotError when two added resources of a type share a name,
        or (``check``) when the result has a dangling reference.
        """
        extra = _group(added, {})
        gone: dict[TypeUrl, set[str]] = {}
        for type_url, name in removed:
            gone.setdefault(type_url, set()).add(name)
        resources = dict(base.resources)
        versions = dict(base.versions)
        sums = dict(base._sums)
        for type_url in {*extra, *gone}:
            merged, total = _merge(
                base.get(type_url),
                base._sums.get(type_url, 0),
                extra.get(type_url, {}),
                gone.get(type_url, set()),
            )
            resources[type_url] = MappingProxyType(merged)
            sums[type_url] = total
            versions[type_url] = _format(total)
        unchecked = None
        if base._closed and not gone:
            unchecked = tuple(r for bucket in extra.values() for r in bucket.values())
        snap = cls(
            MappingProxyType(resources),
            MappingProxyType(versions),
            _sums=sums,
            _unchecked=unchecked,
        )
        if check:
            snap.check_consistency()
        return snap

    def check_consistency(self, *, supplied: Collection[tuple[str, str]] = ()) -> None:
        """Raise InconsistentSnapshotError listing every dangling reference, except to
        the (type URL, name) pairs in ``supplied``: what every snapshot extending this
        one is given itself (a base's per-class secrets). The snapshot is then closed:
        only what is added to it is checked again."""
        if self._closed:
            return
        missing: list[str] = []
        if self._unchecked is not None:
            candidates: Iterable[Resource] = self._unchecked
        else:
            candidates = (r for bucket in self.resources.values() for r in bucket.values())
        buckets = cast("Mapping[str, Mapping[str, Resource]]", self.resources)  # TypeUrl: a str
        for r in candidates:
            for type_url, name in r.references:
                bucket = buckets.get(type_url)
                if (bucket is None or name not in bucket) and (
                    not supplied or (type_url, name) not in supplied
                ):
                    kind = SHORT_NAMES.get(TypeUrl(type_url), type_url)
                    missing.append(f"{r.name!r} references missing {kind} {name!r}")
        if missing:
            raise InconsistentSnapshotError("; ".join(sorted(missing)))
        object.__setattr__(self, "_closed", True)

    def get(self, type_url: TypeUrl) -> Mapping[str, Resource]:
        """All resources of a type, by name (empty when none)."""
        return self.resources.get(type_url, MappingProxyType({}))

    def version(self, type_url: TypeUrl) -> Version:
        """The version of a type: a hash of all its resources' names and digests."""
        found = self.versions.get(type_url)
        if found is None:
            return _version_of(())
        return found

    def version_for(self, type_url: TypeUrl, names: Iterable[str]) -> Version:
        """A version that depends only on the named resources of a type (missing names
        count as absent). Memoized per name set: pollers ask the same question often."""
        key = (type_url, frozenset(names))
        found = self._name_versions.get(key)
        if found is None:
            bucket = self.get(type_url)
            found = _version_of(bucket[n] for n in key[1] if n in bucket)
            self._name_versions[key] = found
        return found

    def derived(self, key: Hashable, compute: Callable[[Snapshot], T]) -> T:
        """``compute(self)``, computed once per snapshot and ``key`` (e.g. an index of
        its resources that every stream of the class reads). ``compute`` must depend on
        the snapshot alone."""
        found = self._derived.get(key, _MISSING)
        if found is _MISSING:
            found = self._derived[key] = compute(self)
        return found  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return sum(len(b) for b in self.resources.values())


def _group(
    resources: Iterable[Resource], by_type: dict[TypeUrl, dict[str, Resource]]
) -> dict[TypeUrl, dict[str, Resource]]:
    """``by_type`` with ``resources`` added by type and name. Raises
    InconsistentSnapshotError when two different resources of a type share a name."""
    for r in resources:
        bucket = by_type.setdefault(r.type_url, {})
        if r.name in bucket and bucket[r.name] is not r:
            raise InconsistentSnapshotError(
                f"two {SHORT_NAMES.get(r.type_url, r.type_url)} named {r.name!r}"
            )
        bucket[r.name] = r
    return by_type


def _merge(
    bucket: Mapping[str, Resource], total: int, added: Mapping[str, Resource], gone: set[str]
) -> tuple[dict[str, Resource], int]:
    """``bucket`` (in name order) with ``added`` and without ``gone``, still in name order,
    and its token sum updated from ``total``."""
    # A mapping proxy's copy() is its dict's C-level copy; dict(proxy) would go key by key.
    merged: dict[str, Resource] = (
        bucket.copy() if isinstance(bucket, MappingProxyType) else dict(bucket)
    )
    for name in gone:
        old = merged.pop(name, None)
        if old is not None:
            total -= old.token
    new_names: list[str] = []
    for name, r in added.items():
        old = merged.get(name)
        if old is None:
            new_names.append(name)
        else:
            total -= old.token
        merged[name] = r
        total += r.token
    if new_names:
        # New names were appended after the others, which are still in order.
        names = list(merged)[: len(merged) - len(new_names)]
        for name in sorted(new_names):
            bisect.insort(names, name)
        merged = dict(zip(names, map(merged.__getitem__, names), strict=True))
    return merged, total
