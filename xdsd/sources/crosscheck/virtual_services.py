"""VirtualServices: each checked against the mesh, what it looked up, who routes what."""

from __future__ import annotations

from collections.abc import Mapping

from xdsd.errors import Problem
from xdsd.model import DestinationRule, ResourceKey, Service, VirtualService
from xdsd.model.mesh import is_wildcard, wildcard_matches
from xdsd.model.service import Origin, line_of
from xdsd.sources.crosscheck.hosts import host_hint, resolve
from xdsd.sources.crosscheck.index import NONE, file_under, problem_at, unindex
from xdsd.sources.crosscheck.routes import applies_to_mesh, check_virtual_service
from xdsd.sources.gateway_api.gamma import gamma_source


class VirtualServiceChecks:
    """The checked VirtualServices and their problems; what each looked up (host names,
    the DestinationRules of services), the services its hosts resolve to (rules that
    apply to sidecars only), who routes each service, and the problems of two rules
    routing one service."""

    def __init__(self) -> None:
        #: The checked VirtualServices (destination ports filled in), by key.
        self.checked: dict[ResourceKey, VirtualService] = {}
        self._problems: dict[ResourceKey, list[Problem]] = {}
        self._lookups: dict[ResourceKey, tuple[tuple[str, ...], tuple[ResourceKey, ...]]] = {}
        self._by_host: dict[str, set[ResourceKey]] = {}
        self._by_rule: dict[ResourceKey, set[ResourceKey]] = {}
        self._targets: dict[ResourceKey, tuple[ResourceKey | None, ...]] = {}
        self._routed: dict[ResourceKey, set[ResourceKey]] = {}
        self._overlap_problems: dict[ResourceKey, list[Problem]] = {}
        # The wildcard hosts of each rule that applies to sidecars, and the rules naming
        # each wildcard (lower case): two rules with one wildcard overlap like two rules
        # naming one service.
        self._wildcards: dict[ResourceKey, tuple[str, ...]] = {}
        self._wild_routed: dict[str, set[ResourceKey]] = {}
        # The VirtualServices that named an unknown host (and got a hint for it).
        self._hinted: set[ResourceKey] = set()

    def update(
        self,
        changed: set[ResourceKey],
        hosts: set[str],
        applied: set[ResourceKey],
        virtual: Mapping[ResourceKey, VirtualService],
        owners: Mapping[str, Service],
        rules: Mapping[ResourceKey, DestinationRule],
    ) -> set[ResourceKey]:
        """Check again the ``changed`` VirtualServices and those that looked up a
        re-owned host (``hosts``) or the DestinationRule of a service whose rule changed
        (``applied``); then the overlaps of every VirtualService routing a service whose
        routers changed. ``virtual`` are the VirtualServices by key, ``owners`` the
        services by host name, ``rules`` the applied DestinationRules by service key.
        Returns the VirtualServices checked again (or removed)."""
        recheck = set(changed)
        for host in hosts:
            recheck |= self._by_host.get(host, NONE)
        if hosts:
            recheck |= self._hinted  # their hints depend on every host name
        for svc_key in applied:
            recheck |= self._by_rule.get(svc_key, NONE)
        affected: set[ResourceKey] = set()
        wild: set[str] = set()
        for key in recheck:
            self._forget_lookups(key, affected, wild)
            self._hinted.discard(key)
            vs = virtual.get(key)
            if vs is None:
                self.checked.pop(key, None)
                self._problems.pop(key, None)
                self._overlap_problems.pop(key, None)
                continue
            lookup = RecordingLookup(owners, rules)
            problems: list[Problem] = []
            checked = check_virtual_service(lookup, vs, problems)
            before = self.checked.get(key)
            # Checked again only for what it looked up, and still the same: keep the object.
            self.checked[key] = before if before == checked and key not in changed else checked
            if lookup.hinted:
                self._hinted.add(key)
            file_under(self._problems, key, problems)
            if applies_to_mesh(vs):
                targets = tuple(
                    svc.key if svc is not None else None
                    for svc in (lookup.service(host, vs.namespace) for host in vs.hosts)
                )
                self._targets[key] = targets
                for target in targets:
                    if target is not None:
                        self._routed.setdefault(target, set()).add(key)
                        affected.add(target)
                patterns = tuple(h.lower() for h in vs.hosts if is_wildcard(h))
                if patterns:
                    self._wildcards[key] = patterns
                    for pattern in patterns:
                        self._wild_routed.setdefault(pattern, set()).add(key)
                        wild.add(pattern)
            self._lookups[key] = (tuple(lookup.hosts), tuple(lookup.rules))
            for host in lookup.hosts:
                self._by_host.setdefault(host, set()).add(key)
            for svc_key in lookup.rules:
                self._by_rule.setdefault(svc_key, set()).add(key)
        overlaps = {k for k in recheck if k in self.checked}
        for svc_key in affected:
            routers = self._routed.get(svc_key)
            if routers:
                overlaps |= routers
            else:
                self._routed.pop(svc_key, None)
        for pattern in wild:
            routers = self._wild_routed.get(pattern)
            if routers:
                overlaps |= routers
            else:
                self._wild_routed.pop(pattern, None)
        for key in overlaps:
            file_under(self._overlap_problems, key, self._overlap(key, virtual))
        return recheck

    def _forget_lookups(self, key: ResourceKey, affected: set[ResourceKey], wild: set[str]) -> None:
        """Take ``key`` out of the reverse indexes; the services it routed go to
        ``affected``, its wildcard hosts to ``wild``."""
        for pattern in self._wildcards.pop(key, ()):
            self._wild_routed[pattern].discard(key)
            wild.add(pattern)
        looked_up, rules_read = self._lookups.pop(key, ((), ()))
        for host in looked_up:
            unindex(self._by_host, host, key)
        for svc_key in rules_read:
            unindex(self._by_rule, svc_key, key)
        for target in self._targets.pop(key, ()):
            if target is not None:
                self._routed[target].discard(key)
                affected.add(target)

    def _overlap(
        self, key: ResourceKey, virtual: Mapping[ResourceKey, VirtualService]
    ) -> list[Problem]:
        vs = virtual[key]
        problems: list[Problem] = []
        for i, target in enumerate(self._targets.get(key, ())):
            if target is None:
                host = vs.hosts[i]
                if is_wildcard(host):
                    first = min(self._wild_routed[host.lower()])
                    if first != key:
                        other = virtual[first]
                        message = (
                            f"{host!r} is already routed by VirtualService {other.name!r} "
                            f"({other.origin}); merge the two rules"
                        )
                        problems.append(
                            problem_at(vs.origin, f"hosts[{i}]", message, lines=vs.lines)
                        )
                continue
            first = min(self._routed[target])
            if first != key:
                other = virtual[first]
                mine, theirs = gamma_source(vs), gamma_source(other)
                if mine or theirs:
                    # GAMMA routes and an Istio VirtualService (GAMMA routes alone make
                    # one VirtualService per service, never two).
                    where = other.origin
                    if theirs:  # at the parentRef naming the service
                        where = Origin(where.path, line_of(other.lines, "hosts[0]", where.line))
                    message = (
                        f"{target} is routed both by {theirs or f'VirtualService {other.name!r}'} "
                        f"({where}) and by {mine or f'VirtualService {vs.name!r}'}; "
                        "route a service with the Gateway API or with a VirtualService, "
                        "not both"
                    )
                else:
                    message = (
                        f"{target} is already routed by VirtualService {other.name!r} "
                        f"({other.origin}); merge the two rules"
                    )
                problems.append(problem_at(vs.origin, f"hosts[{i}]", message, lines=vs.lines))
        return problems

    def problems(self) -> list[Problem]:
        """The problems of the checks by VirtualService key, then those of overlaps."""
        out = [p for key in sorted(self._problems) for p in self._problems[key]]
        out.extend(p for key in sorted(self._overlap_problems) for p in self._overlap_problems[key])
        return out


class RecordingLookup:
    """``Mesh``'s lookups over the kept indexes, remembering what was looked up."""

    __slots__ = ("_applied", "_owners", "hinted", "hosts", "rules")

    def __init__(
        self, owners: Mapping[str, Service], applied: Mapping[ResourceKey, DestinationRule]
    ) -> None:
        self._owners = owners
        self._applied = applied
        self.hosts: list[str] = []
        self.rules: list[ResourceKey] = []
        #: True once a hint or a wildcard match was asked for (it depends on every host
        #: name).
        self.hinted = False

    def service(self, host: str, namespace: str) -> Service | None:
        """The service ``host`` names from ``namespace`` (``Mesh.service``)."""
        return resolve(self._owners, host, namespace, self.hosts)

    def matches(self, pattern: str) -> bool:
        """True when the wildcard host ``pattern`` matches a known host name (which
        depends on every host name, as a hint does)."""
        self.hinted = True
        return any(wildcard_matches(pattern, name) for name in self._owners)

    def destination_rule(self, service: Service) -> DestinationRule | None:
        """The DestinationRule applied to ``service``."""
        self.rules.append(service.key)
        return self._applied.get(service.key)

    def hint(self, host: str, namespace: str) -> str:
        """A near name for ``host`` (``hosts.host_hint``)."""
        self.hinted = True
        return host_hint(self._owners, host, namespace)
