"""``Snapshot``: an immutable, consistent, versioned set of resources for one node class.

How versions work: every ``Resource`` carries the hash of its deterministic encoding. The
version of a type is a hash over the sorted (name, digest) pairs of that type, so it changes
exactly when a resource of that type is added, removed or changed, and two processes (or
replicas) that load the same files agree on it. ``version_for`` does the same over a subset
of names, for clients that poll named resources one at a time (REST EDS/RDS).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from xdsd.errors import InconsistentSnapshotError
from xdsd.resources import PUSH_ORDER, SHORT_NAMES, Resource, TypeUrl, Version

EMPTY_VERSION = Version("")


def _version_of(resources: Iterable[Resource]) -> Version:
    h = hashlib.sha256()
    for r in resources:
        h.update(r.name.encode())
        h.update(b"\0")
        h.update(r.digest.encode())
        h.update(b"\n")
    return Version(h.hexdigest()[:16])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Resources by type and name, with a content version per type.

    Built only through ``Snapshot.build``, which checks consistency: a snapshot that could
    make a client wait for a resource it will never get is never made.
    """

    resources: Mapping[TypeUrl, Mapping[str, Resource]]
    versions: Mapping[TypeUrl, Version]
    _name_versions: dict[tuple[TypeUrl, frozenset[str]], Version] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, resources: Iterable[Resource], *, check: bool = True) -> Snapshot:
        """Group ``resources`` by type, compute versions and (unless ``check`` is False)
        verify consistency.

        Raises InconsistentSnapshotError when two resources of a type share a name, or when
        a resource references a name its snapshot lacks (see ``references_of``).
        """
        by_type: dict[TypeUrl, dict[str, Resource]] = {t: {} for t in PUSH_ORDER}
        for r in resources:
            bucket = by_type.setdefault(r.type_url, {})
            if r.name in bucket and bucket[r.name] is not r:
                raise InconsistentSnapshotError(
                    f"two {SHORT_NAMES.get(r.type_url, r.type_url)} named {r.name!r}"
                )
            bucket[r.name] = r
        frozen = {
            t: MappingProxyType(dict(sorted(bucket.items()))) for t, bucket in by_type.items()
        }
        versions = {t: _version_of(bucket.values()) for t, bucket in frozen.items()}
        snap = cls(MappingProxyType(frozen), MappingProxyType(versions))
        if check:
            snap.check_consistency()
        return snap

    def check_consistency(self) -> None:
        """Raise InconsistentSnapshotError listing every dangling reference."""
        missing: list[str] = []
        for bucket in self.resources.values():
            for r in bucket.values():
                for type_url, name in r.references:
                    if name not in self.resources.get(TypeUrl(type_url), {}):
                        kind = SHORT_NAMES.get(TypeUrl(type_url), type_url)
                        missing.append(f"{r.name!r} references missing {kind} {name!r}")
        if missing:
            raise InconsistentSnapshotError("; ".join(sorted(missing)))

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
            found = _version_of(bucket[n] for n in sorted(key[1]) if n in bucket)
            self._name_versions[key] = found
        return found

    def __len__(self) -> int:
        return sum(len(b) for b in self.resources.values())
