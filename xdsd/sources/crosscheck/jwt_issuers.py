"""RequestAuthentications: one issuer accepted by two of them for one workload is an error
at the later one's ``issuer`` line, found when the directory loads (so ``xdsd validate``
reports it).

Which policy would judge a token of that issuer would otherwise depend on the order of
the providers. Translation refuses the same thing per node (``translate.jwt_authn``,
a ``TranslationError``), which stays the backstop for a node whose labels no file shows.

The workloads are those of the files, as for ``authorization``'s warning: each service's
endpoints (an endpoint of the file, or a WorkloadEntry a ServiceEntry selects), by their
labels; a service without endpoints counts as one workload without labels. A policy
applies to a workload in its namespace (any namespace for the root namespace
``istio-system``) whose labels its selector selects (every one, without a selector). In
each workload's policies (by key) the first rule for an issuer is kept, every later one
is a conflict; a conflict is reported once, naming the first service (by key) where it
occurs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xdsd.errors import Problem
from xdsd.model import ResourceKey, Service
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.model.security import RequestAuthentication, line_of
from xdsd.sources.crosscheck.hosts import ServiceChange

KIND = "RequestAuthentication"

#: (later policy, its rule index, first policy, its rule index, issuer).
Conflict = tuple[ResourceKey, int, ResourceKey, int, str]


def _reaches(policy: RequestAuthentication, svc: Service) -> bool:
    """True when ``policy`` applies to a workload of ``svc`` (see the module doc)."""
    if policy.namespace not in (ROOT_NAMESPACE, svc.namespace):
        return False
    selector = policy.selector
    if selector is None:
        return True
    return any(selector.selects(labels) for labels in _label_sets(svc))


def _label_sets(svc: Service) -> set[tuple[tuple[str, str], ...]]:
    """The labels of each workload of ``svc`` (one without labels when it has no
    endpoints)."""
    return {ep.labels for ep in svc.endpoints} or {()}


def service_conflicts(
    svc: Service, policies: Iterable[RequestAuthentication]
) -> frozenset[Conflict]:
    """The issuer conflicts among ``policies`` on the workloads of ``svc`` (see the
    module doc)."""
    applying = sorted(
        (p for p in policies if p.namespace in (ROOT_NAMESPACE, svc.namespace) and p.jwt_rules),
        key=lambda p: p.key,
    )
    if len(applying) < 2:
        return frozenset()
    label_sets = _label_sets(svc)
    found: set[Conflict] = set()
    for labels in label_sets:
        seen: dict[str, tuple[ResourceKey, int]] = {}
        for policy in applying:
            if policy.selector is not None and not policy.selector.selects(labels):
                continue
            for index, rule in enumerate(policy.jwt_rules):
                first = seen.setdefault(rule.issuer, (policy.key, index))
                if first[0] != policy.key:
                    found.add((policy.key, index, first[0], first[1], rule.issuer))
    return frozenset(found)


def conflict_problems(
    conflicts: Mapping[ResourceKey, frozenset[Conflict]],
    policies: Mapping[ResourceKey, object],
) -> list[Problem]:
    """An error per conflict of ``conflicts`` (by service key), at the later policy's
    ``jwtRules[N].issuer`` line, naming the first service it occurs on; sorted by
    conflict."""
    where: dict[Conflict, ResourceKey] = {}
    for svc_key in sorted(conflicts):
        for conflict in conflicts[svc_key]:
            where.setdefault(conflict, svc_key)
    out: list[Problem] = []
    for conflict in sorted(where):
        key, index, first_key, first_index, issuer = conflict
        policy, first = policies[key], policies[first_key]
        assert isinstance(policy, RequestAuthentication)
        assert isinstance(first, RequestAuthentication)
        field = f"jwtRules[{index}].issuer"
        svc = where[conflict]
        out.append(
            Problem(
                policy.origin.path,
                line_of(policy.lines, field, policy.origin.line),
                field,
                f"issuer {issuer!r} is also accepted by RequestAuthentication "
                f"{first.namespace}/{first.name} (jwtRules[{first_index}], {first.origin}), "
                f"which applies to the same workloads (of {svc.namespace}/{svc.name}): "
                "one rule per issuer",
            )
        )
    return out


class IssuerConflicts:
    """The issuer conflicts of each service's workloads, with the indexes that keep them
    current: every service by namespace, and the RequestAuthentications by namespace (a
    service is checked again when it changes or a policy of its namespace or the root
    namespace does)."""

    def __init__(self) -> None:
        self._services: dict[str, dict[ResourceKey, Service]] = {}
        self._policies: dict[str, dict[ResourceKey, RequestAuthentication]] = {}
        self._conflicts: dict[ResourceKey, frozenset[Conflict]] = {}
        self._table: Mapping[ResourceKey, object] = {}

    def update(
        self,
        changed: Iterable[ResourceKey],
        services: Mapping[ResourceKey, ServiceChange],
        policies: Mapping[ResourceKey, object],
    ) -> None:
        """Check again the services of ``services`` (the changed ones: old, new) and
        those a changed RequestAuthentication among ``changed`` may apply to
        (``policies``: every RequestAuthentication by key, kept for ``problems``)."""
        self._table = policies
        recheck: set[ResourceKey] = set()
        for key, (_, new) in services.items():
            table = self._services.setdefault(key.namespace, {})
            if new is None:
                table.pop(key, None)
                if not table:
                    del self._services[key.namespace]
            else:
                table[key] = new
            recheck.add(key)
        for key in changed:
            if key.kind != KIND:
                continue
            policy = policies.get(key)
            by_key = self._policies.setdefault(key.namespace, {})
            old = by_key.get(key)
            if isinstance(policy, RequestAuthentication):
                by_key[key] = policy
            else:
                by_key.pop(key, None)
                if not by_key:
                    del self._policies[key.namespace]
            # Only the services the policy applied to before or applies to now can see
            # their conflicts change.
            tables = (
                self._services.values()
                if key.namespace == ROOT_NAMESPACE
                else [self._services.get(key.namespace, {})]
            )
            reached = [p for p in (old, policy) if isinstance(p, RequestAuthentication)]
            for table in tables:
                if recheck.issuperset(table):  # a cold load: every service already
                    continue
                recheck.update(
                    k
                    for k, svc in table.items()
                    if k not in recheck and any(_reaches(p, svc) for p in reached)
                )
        if not self._policies:
            # No RequestAuthentication at all: no service has two to conflict (what the
            # loop below finds, without a lookup per service of a large mesh).
            for key in recheck:
                self._conflicts.pop(key, None)
            return
        for key in recheck:
            svc = self._services.get(key.namespace, {}).get(key)
            if svc is None:
                self._conflicts.pop(key, None)
                continue
            candidates = [
                *self._policies.get(svc.namespace, {}).values(),
                *(
                    self._policies.get(ROOT_NAMESPACE, {}).values()
                    if svc.namespace != ROOT_NAMESPACE
                    else ()
                ),
            ]
            found = service_conflicts(svc, candidates) if len(candidates) > 1 else frozenset()
            if found:
                self._conflicts[key] = found
            else:
                self._conflicts.pop(key, None)

    def problems(self) -> list[Problem]:
        """The errors, by conflict."""
        if not self._conflicts:
            return []
        return conflict_problems(self._conflicts, self._table)
