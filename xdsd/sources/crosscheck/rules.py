"""DestinationRules: the service each resolves to, and the rule applied to each service."""

from __future__ import annotations

from collections.abc import Mapping

from xdsd.errors import Problem, Severity
from xdsd.model import DestinationRule, ResourceKey, Service
from xdsd.sources.crosscheck.hosts import host_hint, resolve
from xdsd.sources.crosscheck.index import NONE, problem_at, unindex


class RuleTargets:
    """The service each DestinationRule resolves to (by the host names it looked up),
    the rules resolving to each service, the rule applied to each service (the first by
    key, preferring the service's namespace) and the problems (a rule for no service, a
    second rule for one)."""

    def __init__(self) -> None:
        self._target: dict[ResourceKey, ResourceKey | None] = {}
        self._lookups: dict[ResourceKey, tuple[str, ...]] = {}
        self._by_host: dict[str, set[ResourceKey]] = {}
        self._targeted: dict[ResourceKey, set[ResourceKey]] = {}
        #: The DestinationRule applied to each service, by service key.
        self.applied: dict[ResourceKey, DestinationRule] = {}
        self._problems: dict[ResourceKey, Problem] = {}

    def update(
        self,
        changed: set[ResourceKey],
        hosts: set[str],
        rules: Mapping[ResourceKey, DestinationRule],
        owners: Mapping[str, Service],
    ) -> set[ResourceKey]:
        """Resolve the ``changed`` rules and those that looked up a re-owned host in
        ``hosts`` (``rules``: every rule by key; ``owners``: host name → service);
        returns the services whose applied DestinationRule (the object) changed."""
        resolve_again = set(changed)
        for host in hosts:
            resolve_again |= self._by_host.get(host, NONE)
        if hosts:  # the hints of rules for no service depend on every host name
            resolve_again |= {k for k, target in self._target.items() if target is None}
        affected: set[ResourceKey] = set()
        for key in resolve_again:
            old_target = self._target.pop(key, None)
            if old_target is not None:
                self._targeted[old_target].discard(key)
                affected.add(old_target)
            for host in self._lookups.pop(key, ()):
                unindex(self._by_host, host, key)
            rule = rules.get(key)
            if rule is None:
                self._problems.pop(key, None)
                continue
            lookups: list[str] = []
            svc = resolve(owners, rule.host, rule.namespace, lookups)
            self._lookups[key] = tuple(lookups)
            by_host = self._by_host
            for host in lookups:
                keys = by_host.get(host)
                if keys is None:
                    by_host[host] = {key}
                else:
                    keys.add(key)
            target = svc.key if svc is not None else None
            self._target[key] = target
            if target is None:
                self._problems[key] = problem_at(
                    rule.origin,
                    "host",
                    f"no service named {rule.host!r}: rule ignored until one is defined"
                    + host_hint(owners, rule.host, rule.namespace),
                    Severity.WARNING,
                    rule.lines,
                )
            else:
                targeted = self._targeted.get(target)
                if targeted is None:
                    self._targeted[target] = {key}
                else:
                    targeted.add(key)
                affected.add(target)
        return self._apply(affected, rules)

    def _apply(
        self, affected: set[ResourceKey], rules: Mapping[ResourceKey, DestinationRule]
    ) -> set[ResourceKey]:
        """Choose again the rule applied to each ``affected`` service; returns the
        services whose rule (the object) changed."""
        applied_changed: set[ResourceKey] = set()
        for svc_key in affected:
            claimants = self._targeted.get(svc_key)
            if not claimants:
                self._targeted.pop(svc_key, None)
                if self.applied.pop(svc_key, None) is not None:
                    applied_changed.add(svc_key)
                continue
            if len(claimants) == 1:  # what the general case below gives for one
                (only,) = claimants
                rule = rules[only]
                if self.applied.get(svc_key) is not rule:
                    self.applied[svc_key] = rule
                    applied_changed.add(svc_key)
                self._problems.pop(only, None)
                continue
            ordered = sorted(claimants)
            first = rules[ordered[0]]
            same_namespace = [k for k in ordered if k.namespace == svc_key.namespace]
            rule = rules[same_namespace[0]] if same_namespace else first
            if self.applied.get(svc_key) is not rule:
                self.applied[svc_key] = rule
                applied_changed.add(svc_key)
            self._problems.pop(ordered[0], None)
            for key in ordered[1:]:
                self._problems[key] = problem_at(
                    rules[key].origin,
                    "host",
                    f"{svc_key} already has DestinationRule {first.name!r} ({first.origin}); "
                    "merge them into one",
                    lines=rules[key].lines,
                )
        return applied_changed

    def problems(self) -> list[Problem]:
        """The problems of the rules, by rule key."""
        return [self._problems[k] for k in sorted(self._problems)]
