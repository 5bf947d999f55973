"""``CrossCheck``: the cross-checked state of one directory, composed of one index per
concern (see the package doc), and the mesh built around those indexes."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from xdsd.errors import Problem
from xdsd.model import (
    DestinationRule,
    Mesh,
    MeshObject,
    Origin,
    RawResource,
    ResourceKey,
    Service,
    VirtualService,
)
from xdsd.model.gateway_api import (
    GATEWAY_API_KINDS,
    GATEWAY_API_TYPES,
    NO_GATEWAY_API,
    GatewayAPI,
    GatewayAPIObject,
)
from xdsd.model.mesh import OTHER_KINDS
from xdsd.sources.crosscheck.addresses import PinnedAddresses
from xdsd.sources.crosscheck.authorization import HttpOnlyWarnings
from xdsd.sources.crosscheck.definitions import Definitions
from xdsd.sources.crosscheck.endpoints import EndpointWarnings
from xdsd.sources.crosscheck.entries import EntryServices
from xdsd.sources.crosscheck.gateways import GatewayReferences
from xdsd.sources.crosscheck.hosts import HostOwners, ServiceChange
from xdsd.sources.crosscheck.index import replace_entry
from xdsd.sources.crosscheck.jwt_issuers import IssuerConflicts
from xdsd.sources.crosscheck.registered import RegisteredEndpoints
from xdsd.sources.crosscheck.rules import RuleTargets
from xdsd.sources.crosscheck.virtual_services import VirtualServiceChecks

#: A raw Envoy resource's key: (type URL, name).
RawKey = tuple[str, str]
K = TypeVar("K", bound=tuple[str, ...])
V = TypeVar("V")


def _by_raw_key(r: RawResource) -> RawKey:
    return (r.type_url, r.name)


class FileContents(Protocol):
    """What the cross-checks need of one parsed config file."""

    @property
    def resources(self) -> tuple[tuple[MeshObject, Origin], ...]: ...
    @property
    def raw(self) -> tuple[RawResource, ...]: ...
    @property
    def problems(self) -> tuple[Problem, ...]: ...


#: A changed file: its path, what it held before (None: new) and holds now (None: gone).
Change = tuple[str, FileContents | None, FileContents | None]


class CrossCheck:
    """The cross-checked state of one directory, updated file by file (see the package
    doc).

    Not thread-safe. After ``update`` raises (it does not for any file content), the
    state is undefined: make a new one.
    """

    def __init__(self) -> None:
        self._order: Mapping[str, int] = {}
        self._file_problems: dict[str, tuple[Problem, ...]] = {}
        # Definitions by key, and the winners (first in file order) by kind.
        self._defs: Definitions[ResourceKey, tuple[MeshObject, Origin]] = Definitions()
        self._raw_defs: Definitions[RawKey, RawResource] = Definitions()
        self._services: dict[ResourceKey, Service] = {}
        self._rules: dict[ResourceKey, DestinationRule] = {}
        self._virtual: dict[ResourceKey, VirtualService] = {}
        self._raw: dict[RawKey, RawResource] = {}
        # The kinds kept without indexes (``OTHER_KINDS``): winners by kind and key.
        self._others: dict[str, dict[ResourceKey, MeshObject]] = {k: {} for k in OTHER_KINDS}
        # The Gateway API objects (winners by key), and what the mesh holds of them.
        self._api: dict[ResourceKey, GatewayAPIObject] = {}
        self._api_value: GatewayAPI = NO_GATEWAY_API
        # One index per concern.
        self._entries = EntryServices()
        self._registered = RegisteredEndpoints()
        self._hosts = HostOwners()
        self._targets = RuleTargets()
        self._endpoints = EndpointWarnings()
        self._pinned = PinnedAddresses()
        self._checks = VirtualServiceChecks()
        self._gateways = GatewayReferences()
        self._http_only = HttpOnlyWarnings()
        self._issuers = IssuerConflicts()
        # The sorted tuples of the mesh.
        self._sorted_others: dict[str, _Sorted[ResourceKey, MeshObject]] = {
            k: _Sorted() for k in OTHER_KINDS
        }
        self._sorted_services: _Sorted[ResourceKey, Service] = _Sorted()
        self._sorted_rules: _Sorted[ResourceKey, DestinationRule] = _Sorted()
        self._sorted_virtual: _Sorted[ResourceKey, VirtualService] = _Sorted()
        self._sorted_raw: _Sorted[RawKey, RawResource] = _Sorted()

    # -- public ---------------------------------------------------------------------

    def update(self, changes: Iterable[Change], order: Mapping[str, int]) -> Mesh:
        """Apply ``changes`` and return the mesh of the directory as it now is.

        ``order`` maps every listed file to its position in the listing (the walk
        order); a file's old contents must be what the previous update was given for it.
        The mesh is meaningful only when ``problems()`` holds no error.
        """
        self._order = order
        touched, raw_touched = self._define(changes)
        services: dict[ResourceKey, ServiceChange] = {}
        rules: set[ResourceKey] = set()
        virtual: set[ResourceKey] = set()
        others: set[ResourceKey] = set()
        api_changed = False
        for key in touched:
            found = self._defs.winner(key, order)
            winner = found[0] if found is not None else None
            if key.kind in GATEWAY_API_KINDS:
                assert winner is None or isinstance(winner, GATEWAY_API_TYPES)
                api_changed |= replace_entry(self._api, key, winner)
            elif key.kind == "Service":
                assert winner is None or isinstance(winner, Service)
                old_service = self._services.get(key)
                if replace_entry(self._services, key, winner):
                    services[key] = (old_service, winner)
            elif key.kind == "DestinationRule":
                assert winner is None or isinstance(winner, DestinationRule)
                if replace_entry(self._rules, key, winner):
                    rules.add(key)
            elif key.kind in OTHER_KINDS:
                assert winner is None or not isinstance(
                    winner, Service | DestinationRule | VirtualService
                )
                if replace_entry(self._others[key.kind], key, winner):
                    others.add(key)
            else:
                assert winner is None or isinstance(winner, VirtualService)
                if replace_entry(self._virtual, key, winner):
                    virtual.add(key)
        for raw_key in raw_touched:
            replace_entry(self._raw, raw_key, self._raw_defs.winner(raw_key, order))
        services.update(
            self._entries.update(
                others, self._others["ServiceEntry"], self._others["WorkloadEntry"], self._services
            )
        )
        self._registered.update(others, self._others["WorkloadEntry"], self._services, services)
        hosts = self._hosts.update(services, self._services, self._others["ServiceEntry"])
        owners = self._hosts.owners
        applied = self._targets.update(rules, hosts, self._rules, owners)
        self._endpoints.update(
            set(services) | applied,
            self._services,
            self._targets.applied,
            self._others["ServiceEntry"],
        )
        self._pinned.update(services, self._services)
        checked = self._checks.update(
            virtual, hosts, applied, self._virtual, owners, self._targets.applied
        )
        gateways = {k for k in others if k.kind == "Gateway"}
        self._gateways.update(checked, gateways, self._virtual, self._others["Gateway"])
        self._http_only.update(others, services, self._others["AuthorizationPolicy"])
        self._issuers.update(others, services, self._others["RequestAuthentication"])
        if api_changed:
            self._api_value = _gateway_api(self._api)
        return self._mesh(set(services), rules, checked, raw_touched, others)

    def problems(self) -> list[Problem]:
        """Every problem of the directory (the files' own first, then the cross-checks'),
        in the order one pass over the whole directory finds them."""
        order = self._order
        out: list[Problem] = []
        for path in sorted(self._file_problems, key=order.__getitem__):
            out.extend(self._file_problems[path])
        for (first, _), (resource, origin) in self._defs.duplicates(order):
            message = f"duplicate {resource.key}: also defined at {first.origin}"
            out.append(Problem(origin.path, origin.line, "", message))
        out.extend(self._entries.problems())
        out.extend(self._hosts.problems())
        out.extend(self._targets.problems())
        out.extend(self._endpoints.problems())
        out.extend(self._pinned.problems())
        out.extend(self._checks.problems())
        out.extend(self._gateways.problems())
        out.extend(self._http_only.problems())
        out.extend(self._issuers.problems())
        for first_raw, r in self._raw_defs.duplicates(order):
            kind = r.type_url.rsplit(".", 1)[-1]
            message = f"duplicate raw {kind} {r.name!r}: also defined at {first_raw.origin}"
            out.append(Problem(r.origin.path, r.origin.line, "", message))
        return out

    # -- definitions ----------------------------------------------------------------

    def _define(self, changes: Iterable[Change]) -> tuple[set[ResourceKey], set[RawKey]]:
        """Record what the changed files define now instead of what they defined; returns
        the keys and raw keys whose definitions changed."""
        touched: set[ResourceKey] = set()
        raw_touched: set[RawKey] = set()
        for path, old, new in changes:
            if old is not None:
                for resource, _ in old.resources:
                    self._defs.remove(resource.key, path)
                    touched.add(resource.key)
                for r in old.raw:
                    self._raw_defs.remove(_by_raw_key(r), path)
                    raw_touched.add(_by_raw_key(r))
            if new is not None:
                for i, (resource, origin) in enumerate(new.resources):
                    self._defs.add(resource.key, path, i, (resource, origin))
                    touched.add(resource.key)
                for i, r in enumerate(new.raw):
                    self._raw_defs.add(_by_raw_key(r), path, i, r)
                    raw_touched.add(_by_raw_key(r))
            if new is not None and new.problems:
                self._file_problems[path] = new.problems
            else:
                self._file_problems.pop(path, None)
        return touched, raw_touched

    # -- the mesh -------------------------------------------------------------------

    def _mesh(
        self,
        services: Collection[ResourceKey],
        rules: Collection[ResourceKey],
        virtual: Collection[ResourceKey],
        raw: Collection[RawKey],
        others: Collection[ResourceKey] = (),
    ) -> Mesh:
        """The mesh of the current winners (the arguments: the keys whose winner or
        checked object changed). Built around the indexes kept here (copied: an earlier
        mesh stays as it was) instead of by ``Mesh()``, which would index every service
        and rule again; equal to ``Mesh(...)`` of the same resources, indexes included
        (tested)."""
        mesh = object.__new__(Mesh)
        fields: list[tuple[str, object]] = [
            ("services", self._sorted_services.update(self._services, services)),
            ("virtual_services", self._sorted_virtual.update(self._checks.checked, virtual)),
            ("destination_rules", self._sorted_rules.update(self._rules, rules)),
            ("raw_resources", self._sorted_raw.update(self._raw, raw)),
            ("_hosts", dict(self._hosts.owners)),
            ("_rules", dict(self._targets.applied)),
            ("gateway_api", self._api_value),
            ("gateway_conditions", ()),  # the loader's, after the conversion
            ("certificates", ()),  # read by the loader after the checks
            ("_by_path", {}),
        ]
        for kind, name in OTHER_KINDS.items():
            changed = [k for k in others if k.kind == kind]
            fields.append((name, self._sorted_others[kind].update(self._others[kind], changed)))
        for name, value in fields:
            object.__setattr__(mesh, name, value)
        return mesh


def _gateway_api(objects: Mapping[ResourceKey, GatewayAPIObject]) -> GatewayAPI:
    """The ``GatewayAPI`` of ``objects``, each field's tuple in key order."""
    by_field: dict[str, list[GatewayAPIObject]] = {name: [] for name in GATEWAY_API_KINDS.values()}
    for key in sorted(objects):
        by_field[GATEWAY_API_KINDS[key.kind]].append(objects[key])
    return GatewayAPI(**{name: tuple(found) for name, found in by_field.items()})  # type: ignore[arg-type]


class _Sorted(Generic[K, V]):
    """A table's values in key order, as a tuple, patched in place while its keys stay
    the same (sorted again when one is added or removed)."""

    def __init__(self) -> None:
        self.values: tuple[V, ...] = ()
        self._positions: dict[K, int] = {}

    def update(self, table: Mapping[K, V], changed: Collection[K]) -> tuple[V, ...]:
        """The values of ``table``; ``changed`` must hold every key added, removed or
        given a new value since the last call."""
        positions = self._positions
        if len(positions) == len(table) and all(k in positions and k in table for k in changed):
            if changed:
                values = list(self.values)
                for k in changed:
                    values[positions[k]] = table[k]
                self.values = tuple(values)
            return self.values
        keys = sorted(table)
        self.values = tuple(map(table.__getitem__, keys))
        self._positions = dict(zip(keys, range(len(keys)), strict=True))
        return self.values
