"""Cross-checks: resources of a whole directory checked against each other, incrementally.

Duplicates across files, host names claimed twice, rules for unknown hosts, destinations
naming unknown services, ports or subsets, two rules for one service. ServiceEntries
become services here (one per host, ``service_entry.entry_services``), with the
WorkloadEntries they select, and take part in every check like the services of files.

How this works: ``CrossCheck`` holds what the checks of the whole directory found, with
the indexes they were found with: every definition of every key (the first in file
order wins, later ones are duplicates), the owner of every host name, the service each
DestinationRule resolves to, and what each VirtualService looked up (host names, the
DestinationRules of services). ``update`` is given the files that changed (their old and
new contents); it recomputes the winners of the keys those files define, then only what
depends on a changed winner, a changed host owner or a changed DestinationRule (a changed
ServiceEntry, or a changed WorkloadEntry in the namespace of an entry with a
``workloadSelector``, derives that entry's services again: those that compare equal keep
their objects), and keeps
every problem filed under what it belongs to (a file, a key, a service, a rule). The
problems come out sorted the way one pass over the whole directory emits them, so a
directory gives the same mesh and the same problems, in the same order, whatever
sequence of updates led to it (``tests/sources/test_crosscheck.py`` holds the one-pass
reference). Everything not affected keeps its objects: a VirtualService that was not
checked again is the very same object in the next mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from xdsd.errors import Problem, Severity
from xdsd.model import (
    Destination,
    DestinationRule,
    HTTPRoute,
    L4Route,
    Mesh,
    MeshObject,
    Origin,
    RawResource,
    ResourceKey,
    Service,
    VirtualService,
)
from xdsd.model.mesh import OTHER_KINDS, qualify_host
from xdsd.model.networking import (
    EnvoyFilter,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    gateway_key,
)
from xdsd.sources.service_entry import entry_services

Other = Gateway | Sidecar | EnvoyFilter | ServiceEntry | WorkloadEntry
RawKey = tuple[str, str]
#: One definition of a key: (file, position in the file's list, what, where).
_Definition = tuple[str, int, MeshObject, Origin]
_RawDefinition = tuple[str, int, RawResource]

K = TypeVar("K", bound=tuple[str, ...])
V = TypeVar("V")
_NONE: frozenset[ResourceKey] = frozenset()


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


class Lookup(Protocol):
    """What a VirtualService check asks of the mesh (``Mesh`` answers it too)."""

    def service(self, host: str, namespace: str) -> Service | None: ...
    def destination_rule(self, service: Service) -> DestinationRule | None: ...


class CrossCheck:
    """The cross-checked state of one directory, updated file by file (see the module doc).

    Not thread-safe. After ``update`` raises (it does not for any file content), the
    state is undefined: make a new one.
    """

    def __init__(self) -> None:
        self._order: Mapping[str, int] = {}
        self._file_problems: dict[str, tuple[Problem, ...]] = {}
        # Definitions by key, and the winners (first in file order) by kind.
        self._defs: dict[ResourceKey, list[_Definition]] = {}
        self._duplicated: set[ResourceKey] = set()
        self._services: dict[ResourceKey, Service] = {}
        self._rules: dict[ResourceKey, DestinationRule] = {}
        self._virtual: dict[ResourceKey, VirtualService] = {}
        self._raw_defs: dict[RawKey, list[_RawDefinition]] = {}
        self._raw_duplicated: set[RawKey] = set()
        self._raw: dict[RawKey, RawResource] = {}
        # Host names: the services naming each, its owner (the first by key; what
        # ``Mesh.service`` finds) and the problems of services naming an owned host.
        self._claims: dict[str, set[ResourceKey]] = {}
        self._owners: dict[str, Service] = {}
        self._host_problems: dict[ResourceKey, list[Problem]] = {}
        # DestinationRules: the service each resolves to, by the host names it looked
        # up; the rules resolving to each service; the rule applied to each service.
        self._rule_target: dict[ResourceKey, ResourceKey | None] = {}
        self._rule_lookups: dict[ResourceKey, tuple[str, ...]] = {}
        self._rules_by_host: dict[str, set[ResourceKey]] = {}
        self._targeted: dict[ResourceKey, set[ResourceKey]] = {}
        self._applied: dict[ResourceKey, DestinationRule] = {}
        self._rule_problems: dict[ResourceKey, Problem] = {}
        # VirtualServices: checked objects, problems, what each looked up, the services
        # its hosts resolve to (rules that apply to sidecars only) and who routes each.
        self._checked: dict[ResourceKey, VirtualService] = {}
        self._vs_problems: dict[ResourceKey, list[Problem]] = {}
        self._vs_lookups: dict[ResourceKey, tuple[tuple[str, ...], tuple[ResourceKey, ...]]] = {}
        self._vs_by_host: dict[str, set[ResourceKey]] = {}
        self._vs_by_rule: dict[ResourceKey, set[ResourceKey]] = {}
        self._vs_targets: dict[ResourceKey, tuple[ResourceKey | None, ...]] = {}
        self._routed: dict[ResourceKey, set[ResourceKey]] = {}
        self._overlap_problems: dict[ResourceKey, list[Problem]] = {}
        # Gateways each VirtualService names (``gateways``), who names each, and the
        # warnings for names no Gateway answers to.
        self._vs_gateways: dict[ResourceKey, tuple[ResourceKey, ...]] = {}
        self._vs_by_gateway: dict[ResourceKey, set[ResourceKey]] = {}
        self._gateway_problems: dict[ResourceKey, list[Problem]] = {}
        # ServiceEntries: the services each derives, the problems of deriving them, and
        # the entries with a workloadSelector, by namespace.
        self._derived: dict[ResourceKey, tuple[Service, ...]] = {}
        self._entry_problems: dict[ResourceKey, list[Problem]] = {}
        self._selecting: dict[str, set[ResourceKey]] = {}
        # The kinds kept without indexes (``OTHER_KINDS``): winners by kind and key.
        self._others: dict[str, dict[ResourceKey, Other]] = {k: {} for k in OTHER_KINDS}
        self._sorted_others: dict[str, _Sorted[ResourceKey, Other]] = {
            k: _Sorted() for k in OTHER_KINDS
        }
        # The sorted tuples of the mesh.
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
        touched: set[ResourceKey] = set()
        raw_touched: set[RawKey] = set()
        for path, old, new in changes:
            if old is not None:
                for resource, _ in old.resources:
                    defs = self._defs[resource.key]
                    defs[:] = [d for d in defs if d[0] != path]
                    touched.add(resource.key)
                for r in old.raw:
                    raw_defs = self._raw_defs[_by_raw_key(r)]
                    raw_defs[:] = [d for d in raw_defs if d[0] != path]
                    raw_touched.add(_by_raw_key(r))
            if new is not None:
                for i, (resource, origin) in enumerate(new.resources):
                    self._defs.setdefault(resource.key, []).append((path, i, resource, origin))
                    touched.add(resource.key)
                for i, r in enumerate(new.raw):
                    self._raw_defs.setdefault(_by_raw_key(r), []).append((path, i, r))
                    raw_touched.add(_by_raw_key(r))
            if new is not None and new.problems:
                self._file_problems[path] = new.problems
            else:
                self._file_problems.pop(path, None)
        services: dict[ResourceKey, tuple[Service | None, Service | None]] = {}
        rules: set[ResourceKey] = set()
        virtual: set[ResourceKey] = set()
        others: set[ResourceKey] = set()
        for key in touched:
            winner = self._winner(key)
            if key.kind == "Service":
                assert winner is None or isinstance(winner, Service)
                old_service = self._services.get(key)
                if _replace(self._services, key, winner):
                    services[key] = (old_service, winner)
            elif key.kind == "DestinationRule":
                assert winner is None or isinstance(winner, DestinationRule)
                if _replace(self._rules, key, winner):
                    rules.add(key)
            elif key.kind in OTHER_KINDS:
                assert winner is None or not isinstance(
                    winner, Service | DestinationRule | VirtualService
                )
                if _replace(self._others[key.kind], key, winner):
                    others.add(key)
            else:
                assert winner is None or isinstance(winner, VirtualService)
                if _replace(self._virtual, key, winner):
                    virtual.add(key)
        for raw_key in raw_touched:
            self._raw_winner(raw_key)
        services.update(self._update_entries(others))
        hosts = self._update_hosts(services)
        applied = self._update_rules(rules, hosts)
        checked = self._update_virtual(virtual, hosts, applied)
        self._update_gateway_references(checked, {k for k in others if k.kind == "Gateway"})
        return self._mesh(set(services), rules, checked, raw_touched, others)

    def problems(self) -> list[Problem]:
        """Every problem of the directory (the files' own first, then the cross-checks'),
        in the order one pass over the whole directory finds them."""
        order = self._order
        out: list[Problem] = []
        for path in sorted(self._file_problems, key=order.__getitem__):
            out.extend(self._file_problems[path])
        dups: list[tuple[int, int, Problem]] = []
        for key in self._duplicated:
            defs = sorted(self._defs[key], key=lambda d: (order[d[0]], d[1]))
            first = defs[0][2]
            for path, i, resource, origin in defs[1:]:
                message = f"duplicate {resource.key}: also defined at {first.origin}"
                dups.append((order[path], i, Problem(origin.path, origin.line, "", message)))
        out.extend(p for _, _, p in sorted(dups, key=lambda d: (d[0], d[1])))
        for entry_key in sorted(self._entry_problems):
            out.extend(self._entry_problems[entry_key])
        for svc_key in sorted(self._host_problems):
            out.extend(self._host_problems[svc_key])
        out.extend(self._rule_problems[k] for k in sorted(self._rule_problems))
        for vs_key in sorted(self._vs_problems):
            out.extend(self._vs_problems[vs_key])
        for vs_key in sorted(self._overlap_problems):
            out.extend(self._overlap_problems[vs_key])
        for vs_key in sorted(self._gateway_problems):
            out.extend(self._gateway_problems[vs_key])
        raw_dups: list[tuple[int, int, Problem]] = []
        for raw_key in self._raw_duplicated:
            raw_defs = sorted(self._raw_defs[raw_key], key=lambda d: (order[d[0]], d[1]))
            first_raw = raw_defs[0][2]
            kind = raw_key[0].rsplit(".", 1)[-1]
            for path, i, r in raw_defs[1:]:
                message = f"duplicate raw {kind} {r.name!r}: also defined at {first_raw.origin}"
                raw_dups.append(
                    (order[path], i, Problem(r.origin.path, r.origin.line, "", message))
                )
        out.extend(p for _, _, p in sorted(raw_dups, key=lambda d: (d[0], d[1])))
        return out

    # -- winners --------------------------------------------------------------------

    def _winner(self, key: ResourceKey) -> MeshObject | None:
        defs = self._defs.get(key)
        if not defs:
            self._defs.pop(key, None)
            self._duplicated.discard(key)
            return None
        if len(defs) == 1:
            self._duplicated.discard(key)
            return defs[0][2]
        self._duplicated.add(key)
        order = self._order
        return min(defs, key=lambda d: (order[d[0]], d[1]))[2]

    def _raw_winner(self, key: RawKey) -> None:
        defs = self._raw_defs.get(key)
        if not defs:
            self._raw_defs.pop(key, None)
            self._raw_duplicated.discard(key)
            self._raw.pop(key, None)
            return
        if len(defs) == 1:
            self._raw_duplicated.discard(key)
        else:
            self._raw_duplicated.add(key)
        order = self._order
        self._raw[key] = min(defs, key=lambda d: (order[d[0]], d[1]))[2]

    # -- ServiceEntries -------------------------------------------------------------

    def _update_entries(
        self, others: set[ResourceKey]
    ) -> dict[ResourceKey, tuple[Service | None, Service | None]]:
        """Derive again the services of the changed ServiceEntries and of the entries
        selecting WorkloadEntries in a namespace where one changed; returns the services
        that changed (old, new) by key, after putting them in ``_services``."""
        entries = self._others["ServiceEntry"]
        rederive = {k for k in others if k.kind == "ServiceEntry"}
        namespaces = {k.namespace for k in others if k.kind == "WorkloadEntry"}
        for namespace in namespaces:
            rederive |= self._selecting.get(namespace, _NONE)
        workloads: dict[str, list[WorkloadEntry]] = {}
        changes: dict[ResourceKey, tuple[Service | None, Service | None]] = {}
        for key in rederive:
            before = {s.key: s for s in self._derived.pop(key, ())}
            entry = entries.get(key)
            found: tuple[Service, ...] = ()
            if entry is None:
                _unindex(self._selecting, key.namespace, key)
                self._entry_problems.pop(key, None)
            else:
                assert isinstance(entry, ServiceEntry)
                if entry.workload_selector:
                    self._selecting.setdefault(key.namespace, set()).add(key)
                else:
                    _unindex(self._selecting, key.namespace, key)
                if key.namespace not in workloads:
                    workloads[key.namespace] = self._workloads(key.namespace)
                found, problems = entry_services(entry, workloads[key.namespace])
                _file(self._entry_problems, key, problems)
            kept = []
            for svc in found:
                old = before.pop(svc.key, None)
                if old is not None and old == svc and old.origin == svc.origin:
                    svc = old
                else:
                    self._services[svc.key] = svc
                    changes[svc.key] = (old, svc)
                kept.append(svc)
            if entry is not None:
                self._derived[key] = tuple(kept)
            for svc_key, old in before.items():
                del self._services[svc_key]
                changes[svc_key] = (old, None)
        return changes

    def _workloads(self, namespace: str) -> list[WorkloadEntry]:
        """The WorkloadEntries of ``namespace``, in key order."""
        found = [
            w
            for k, w in self._others["WorkloadEntry"].items()
            if k.namespace == namespace and isinstance(w, WorkloadEntry)
        ]
        return sorted(found, key=lambda w: w.key)

    # -- host names -----------------------------------------------------------------

    def _update_hosts(
        self, services: Mapping[ResourceKey, tuple[Service | None, Service | None]]
    ) -> set[str]:
        """Re-own the host names of the changed services; returns the hosts whose owner
        (the object) changed."""
        hosts: set[str] = set()
        for key, (old, new) in services.items():
            if old is not None:
                for host in (old.fqdn, *old.hosts):
                    claims = self._claims[host]
                    claims.discard(key)
                    hosts.add(host)
            if new is not None:
                for host in (new.fqdn, *new.hosts):
                    self._claims.setdefault(host, set()).add(key)
                    hosts.add(host)
            else:
                self._host_problems.pop(key, None)
        changed: set[str] = set()
        recheck: set[ResourceKey] = {k for k, (_, new) in services.items() if new is not None}
        for host in hosts:
            claims = self._claims[host]
            if not claims:
                del self._claims[host]
                if self._owners.pop(host, None) is not None:
                    changed.add(host)
                continue
            owner = self._services[min(claims)]
            if self._owners.get(host) is not owner:
                self._owners[host] = owner
                changed.add(host)
            recheck |= claims
        for key in recheck:
            found = _host_problems(self._services[key], self._owners, self._others["ServiceEntry"])
            if found:
                self._host_problems[key] = found
            else:
                self._host_problems.pop(key, None)
        return changed

    # -- DestinationRules -----------------------------------------------------------

    def _update_rules(self, changed: set[ResourceKey], hosts: set[str]) -> set[ResourceKey]:
        """Resolve the changed rules and those that looked up a re-owned host; returns
        the services whose applied DestinationRule (the object) changed."""
        resolve = set(changed)
        for host in hosts:
            resolve |= self._rules_by_host.get(host, _NONE)
        affected: set[ResourceKey] = set()
        for key in resolve:
            old_target = self._rule_target.pop(key, None)
            if old_target is not None:
                self._targeted[old_target].discard(key)
                affected.add(old_target)
            for host in self._rule_lookups.pop(key, ()):
                _unindex(self._rules_by_host, host, key)
            rule = self._rules.get(key)
            if rule is None:
                self._rule_problems.pop(key, None)
                continue
            lookups: list[str] = []
            svc = _resolve(self._owners, rule.host, rule.namespace, lookups)
            self._rule_lookups[key] = tuple(lookups)
            for host in lookups:
                self._rules_by_host.setdefault(host, set()).add(key)
            target = svc.key if svc is not None else None
            self._rule_target[key] = target
            if target is None:
                self._rule_problems[key] = _at(
                    rule.origin, "host",
                    f"no service named {rule.host!r}: rule ignored until one is defined",
                    Severity.WARNING,
                )  # fmt: skip
            else:
                self._targeted.setdefault(target, set()).add(key)
                affected.add(target)
        applied_changed: set[ResourceKey] = set()
        for svc_key in affected:
            claimants = self._targeted.get(svc_key)
            if not claimants:
                self._targeted.pop(svc_key, None)
                if self._applied.pop(svc_key, None) is not None:
                    applied_changed.add(svc_key)
                continue
            ordered = sorted(claimants)
            first = self._rules[ordered[0]]
            same_namespace = [k for k in ordered if k.namespace == svc_key.namespace]
            rule = self._rules[same_namespace[0]] if same_namespace else first
            if self._applied.get(svc_key) is not rule:
                self._applied[svc_key] = rule
                applied_changed.add(svc_key)
            self._rule_problems.pop(ordered[0], None)
            for key in ordered[1:]:
                self._rule_problems[key] = _at(
                    self._rules[key].origin, "host",
                    f"{svc_key} already has DestinationRule {first.name!r} ({first.origin}); "
                    "merge them into one",
                )  # fmt: skip
        return applied_changed

    # -- VirtualServices ------------------------------------------------------------

    def _update_virtual(
        self, changed: set[ResourceKey], hosts: set[str], applied: set[ResourceKey]
    ) -> set[ResourceKey]:
        """Check again the changed VirtualServices and those that looked up a re-owned
        host or the DestinationRule of a service whose rule changed; then the overlaps
        of every VirtualService routing a service whose routers changed. Returns the
        VirtualServices checked again (or removed)."""
        recheck = set(changed)
        for host in hosts:
            recheck |= self._vs_by_host.get(host, _NONE)
        for svc_key in applied:
            recheck |= self._vs_by_rule.get(svc_key, _NONE)
        affected: set[ResourceKey] = set()
        for key in recheck:
            looked_up, rules_read = self._vs_lookups.pop(key, ((), ()))
            for host in looked_up:
                _unindex(self._vs_by_host, host, key)
            for svc_key in rules_read:
                _unindex(self._vs_by_rule, svc_key, key)
            for target in self._vs_targets.pop(key, ()):
                if target is not None:
                    self._routed[target].discard(key)
                    affected.add(target)
            vs = self._virtual.get(key)
            if vs is None:
                self._checked.pop(key, None)
                self._vs_problems.pop(key, None)
                self._overlap_problems.pop(key, None)
                continue
            lookup = _RecordingLookup(self._owners, self._applied)
            problems: list[Problem] = []
            self._checked[key] = check_virtual_service(lookup, vs, problems)
            _file(self._vs_problems, key, problems)
            if applies_to_mesh(vs):
                targets = tuple(
                    svc.key if svc is not None else None
                    for svc in (lookup.service(host, vs.namespace) for host in vs.hosts)
                )
                self._vs_targets[key] = targets
                for target in targets:
                    if target is not None:
                        self._routed.setdefault(target, set()).add(key)
                        affected.add(target)
            self._vs_lookups[key] = (tuple(lookup.hosts), tuple(lookup.rules))
            for host in lookup.hosts:
                self._vs_by_host.setdefault(host, set()).add(key)
            for svc_key in lookup.rules:
                self._vs_by_rule.setdefault(svc_key, set()).add(key)
        overlaps = {k for k in recheck if k in self._checked}
        for svc_key in affected:
            routers = self._routed.get(svc_key)
            if routers:
                overlaps |= routers
            else:
                self._routed.pop(svc_key, None)
        for key in overlaps:
            _file(self._overlap_problems, key, self._overlap(key))
        return recheck

    def _update_gateway_references(
        self, virtual: set[ResourceKey], gateways: set[ResourceKey]
    ) -> None:
        """Check again the ``gateways`` of the VirtualServices in ``virtual`` (checked
        again or removed) and of those naming a Gateway in ``gateways`` (added or
        removed): a name no Gateway answers to is a warning, as Istio accepts it."""
        recheck = set(virtual)
        for gw in gateways:
            recheck |= self._vs_by_gateway.get(gw, _NONE)
        defined = self._others["Gateway"]
        for key in recheck:
            for gw in self._vs_gateways.pop(key, ()):
                _unindex(self._vs_by_gateway, gw, key)
            vs = self._virtual.get(key)
            if vs is None:
                self._gateway_problems.pop(key, None)
                continue
            named, problems = gateway_problems(vs, defined)
            self._vs_gateways[key] = named
            for gw in named:
                self._vs_by_gateway.setdefault(gw, set()).add(key)
            _file(self._gateway_problems, key, problems)

    def _overlap(self, key: ResourceKey) -> list[Problem]:
        vs = self._virtual[key]
        problems: list[Problem] = []
        for i, target in enumerate(self._vs_targets.get(key, ())):
            if target is None:
                continue
            first = min(self._routed[target])
            if first != key:
                other = self._virtual[first]
                problems.append(
                    _at(vs.origin, f"hosts[{i}]",
                        f"{target} is already routed by VirtualService {other.name!r} "
                        f"({other.origin}); merge the two rules")
                )  # fmt: skip
        return problems

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
            ("virtual_services", self._sorted_virtual.update(self._checked, virtual)),
            ("destination_rules", self._sorted_rules.update(self._rules, rules)),
            ("raw_resources", self._sorted_raw.update(self._raw, raw)),
            ("_hosts", dict(self._owners)),
            ("_rules", dict(self._applied)),
            ("certificates", ()),  # read by the loader after the checks
            ("_by_path", {}),
        ]
        for kind, name in OTHER_KINDS.items():
            changed = [k for k in others if k.kind == kind]
            fields.append((name, self._sorted_others[kind].update(self._others[kind], changed)))
        for name, value in fields:
            object.__setattr__(mesh, name, value)
        return mesh


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
        self.values = tuple(table[k] for k in keys)
        self._positions = {k: i for i, k in enumerate(keys)}
        return self.values


class _RecordingLookup:
    """``Mesh``'s lookups over the kept indexes, remembering what was looked up."""

    __slots__ = ("_applied", "_owners", "hosts", "rules")

    def __init__(
        self, owners: Mapping[str, Service], applied: Mapping[ResourceKey, DestinationRule]
    ) -> None:
        self._owners = owners
        self._applied = applied
        self.hosts: list[str] = []
        self.rules: list[ResourceKey] = []

    def service(self, host: str, namespace: str) -> Service | None:
        return _resolve(self._owners, host, namespace, self.hosts)

    def destination_rule(self, service: Service) -> DestinationRule | None:
        self.rules.append(service.key)
        return self._applied.get(service.key)


def _resolve(
    owners: Mapping[str, Service], host: str, namespace: str, looked_up: list[str]
) -> Service | None:
    """``Mesh.service`` over ``owners``, appending the names it looked up."""
    looked_up.append(host)
    found = owners.get(host)
    if found is not None:
        return found
    qualified = qualify_host(host, namespace)
    looked_up.append(qualified)
    return owners.get(qualified)


def _unindex(index: dict[str, set[ResourceKey]] | dict[ResourceKey, set[ResourceKey]],
             at: object, key: ResourceKey) -> None:  # fmt: skip
    found = index.get(at)  # type: ignore[call-overload]
    if found is not None:
        found.discard(key)
        if not found:
            del index[at]  # type: ignore[arg-type]


def _replace(table: dict[ResourceKey, V], key: ResourceKey, value: V | None) -> bool:
    """Set or (None) remove ``table[key]``; True when that changed its object."""
    if table.get(key) is value:
        return False
    if value is None:
        del table[key]
    else:
        table[key] = value
    return True


def _file(table: dict[ResourceKey, list[Problem]], key: ResourceKey, found: list[Problem]) -> None:
    if found:
        table[key] = found
    else:
        table.pop(key, None)


def _at(origin: Origin, field: str, message: str, severity: Severity = Severity.ERROR) -> Problem:
    return Problem(origin.path, origin.line, field, message, severity)


def _host_problems(
    svc: Service, owners: Mapping[str, Service], entries: Mapping[ResourceKey, Other]
) -> list[Problem]:
    """Names of ``svc`` that belong to another service (one that comes first by key);
    ``entries`` are the ServiceEntries by key (a service of an entry is its host)."""
    problems = []
    for i, host in enumerate((svc.fqdn, *svc.hosts)):
        other = owners[host]
        if other.key != svc.key:
            problems.append(
                _at(svc.origin, host_field(svc, i, entries),
                    f"host {host!r} is already a name of {other.key} ({other.origin})")
            )  # fmt: skip
    return problems


def gateway_problems(
    vs: VirtualService, defined: Collection[ResourceKey]
) -> tuple[tuple[ResourceKey, ...], list[Problem]]:
    """The Gateways ``vs`` names in ``gateways`` (``mesh`` left out), and a warning for
    each that is not in ``defined``."""
    named: list[ResourceKey] = []
    problems: list[Problem] = []
    for i, reference in enumerate(vs.gateways):
        gw = gateway_key(reference, vs.namespace)
        if gw is None:
            continue
        named.append(gw)
        if gw not in defined:
            problems.append(
                _at(vs.origin, f"gateways[{i}]",
                    f"no Gateway {gw.namespace}/{gw.name}: the rule applies to it once one "
                    "is defined", Severity.WARNING)
            )  # fmt: skip
    return tuple(named), problems


def host_field(svc: Service, i: int, entries: Mapping[ResourceKey, Other]) -> str:
    """Where name ``i`` of ``svc`` (its canonical name, then its ``hosts``) is written:
    ``name``, ``hosts[N]``, or for a service of a ServiceEntry the entry's ``hosts[N]``."""
    if svc.entry:
        entry = entries.get(ResourceKey("ServiceEntry", svc.namespace, svc.entry))
        if isinstance(entry, ServiceEntry) and svc.name in entry.hosts:
            return f"hosts[{entry.hosts.index(svc.name)}]"
        return "hosts"
    return f"hosts[{i - 1}]" if i else "name"


def applies_to_mesh(vs: VirtualService) -> bool:
    """True for a rule that applies to sidecars (no gateways, or the ``mesh`` gateway)."""
    return not vs.gateways or "mesh" in vs.gateways


def check_virtual_service(
    mesh: Lookup, vs: VirtualService, problems: list[Problem]
) -> VirtualService:
    """Check a VirtualService's references; returns it with destination ports filled in
    where the destination service has a single port (``vs`` itself when nothing is).
    Hosts are looked up only for rules that apply to sidecars: a gateway's hosts are the
    names clients outside use, not services."""
    for i, host in enumerate(vs.hosts):
        if "*" in host or not applies_to_mesh(vs):
            continue
        if mesh.service(host, vs.namespace) is None:
            problems.append(
                _at(vs.origin, f"hosts[{i}]",
                    f"no service named {host!r}: this host is ignored until one is defined",
                    Severity.WARNING)
            )  # fmt: skip
    routes = []
    for i, http in enumerate(vs.http):
        destinations = []
        for j, rd in enumerate(http.route):
            dest = _check_destination(
                mesh, vs, f"http[{i}].route[{j}].destination", rd.destination, problems
            )
            destinations.append(
                rd if dest is rd.destination else dataclasses.replace(rd, destination=dest)
            )
        mirrors = []
        for j, mirror in enumerate(http.mirrors):
            dest = _check_destination(
                mesh, vs, _mirror_field(http, i, j), mirror.destination, problems
            )
            mirrors.append(
                mirror
                if dest is mirror.destination
                else dataclasses.replace(mirror, destination=dest)
            )
        routes.append(dataclasses.replace(http, route=tuple(destinations), mirrors=tuple(mirrors)))
    tcp = _check_l4(mesh, vs, "tcp", vs.tcp, problems)
    tls = _check_l4(mesh, vs, "tls", vs.tls, problems)
    return dataclasses.replace(vs, http=tuple(routes), tcp=tcp, tls=tls)


def _check_l4(
    mesh: Lookup,
    vs: VirtualService,
    kind: str,
    rules: tuple[L4Route, ...],
    problems: list[Problem],
) -> tuple[L4Route, ...]:
    """Check the destinations of ``vs``'s tcp or tls rules (``kind``); a destination
    without a port may name a service with several ports (the listener's port is taken)."""
    out = []
    for i, rule in enumerate(rules):
        destinations = []
        for j, rd in enumerate(rule.route):
            field = f"{kind}[{i}].route[{j}].destination"
            dest = _check_destination(mesh, vs, field, rd.destination, problems, any_port=True)
            destinations.append(
                rd if dest is rd.destination else dataclasses.replace(rd, destination=dest)
            )
        changed = any(a is not b for a, b in zip(destinations, rule.route, strict=True))
        out.append(dataclasses.replace(rule, route=tuple(destinations)) if changed else rule)
    return tuple(out)


def _mirror_field(http: HTTPRoute, i: int, j: int) -> str:
    """Where mirror ``j`` of rule ``i`` was written (``mirror`` or ``mirrors[j]``)."""
    return (
        f"http[{i}].mirrors[{j}].destination" if len(http.mirrors) > 1 or j else f"http[{i}].mirror"
    )


def _check_destination(
    mesh: Lookup,
    vs: VirtualService,
    field: str,
    dest: Destination,
    problems: list[Problem],
    *,
    any_port: bool = False,
) -> Destination:
    """Check one destination of ``vs`` (written at ``field``); returns it with its port
    filled in when the service has a single port (``dest`` itself otherwise). Without
    ``any_port``, a service with several ports needs the port named."""
    svc = mesh.service(dest.host, vs.namespace)
    if svc is None:
        # A rule only gateways use routes there with 503, as Istio does.
        severity = Severity.ERROR if applies_to_mesh(vs) else Severity.WARNING
        problems.append(
            _at(vs.origin, f"{field}.host", f"no service named {dest.host!r}", severity)
        )
        return dest
    if dest.port and svc.port(dest.port) is None:
        numbers = ", ".join(str(p.number) for p in svc.ports)
        problems.append(
            _at(vs.origin, f"{field}.port.number",
                f"{svc.key} has no port {dest.port} (ports: {numbers})")
        )  # fmt: skip
    elif not dest.port and len(svc.ports) == 1:
        dest = dataclasses.replace(dest, port=svc.ports[0].number)
    elif not dest.port and not any_port:
        problems.append(
            _at(vs.origin, f"{field}.port.number",
                f"is required: {svc.key} has several ports")
        )  # fmt: skip
    if dest.subset:
        rule = mesh.destination_rule(svc)
        if rule is None or rule.subset(dest.subset) is None:
            where = (
                f"DestinationRule {rule.name!r} ({rule.origin}) defines "
                + (", ".join(repr(s.name) for s in rule.subsets) or "no subsets")
                if rule is not None
                else "no DestinationRule defines subsets for it"
            )
            problems.append(
                _at(vs.origin, f"{field}.subset",
                    f"subset {dest.subset!r} of {svc.key} is not defined: {where}")
            )  # fmt: skip
    return dest
