"""Endpoints: services with none, and DestinationRule subsets whose labels select none.

Both load, and both answer requests with 503 (``no healthy upstream``): the warnings
say so, on the line that causes it. A service needs no endpoints of its own when it is
a ServiceEntry host resolved by DNS (the host is its endpoint) or one with resolution
NONE (requests go where they were addressed); every other service without endpoints,
and every subset of an applied DestinationRule that no endpoint of its service carries
the labels of, gets a warning (an error under ``xdsd validate --strict``).
"""

from __future__ import annotations

from collections.abc import Mapping

from xdsd.errors import Problem, Severity
from xdsd.model import DestinationRule, Resolution, ResourceKey, Service
from xdsd.model.networking import ServiceEntry
from xdsd.sources.crosscheck.index import file_under, problem_at

_UNAVAILABLE = "requests to it fail with 503 (no healthy upstream)"


class EndpointWarnings:
    """The warnings of each service (by key): no endpoints, or subsets of its applied
    DestinationRule that select none of its endpoints."""

    def __init__(self) -> None:
        self._problems: dict[ResourceKey, list[Problem]] = {}

    def update(
        self,
        changed: set[ResourceKey],
        services: Mapping[ResourceKey, Service],
        applied: Mapping[ResourceKey, DestinationRule],
        entries: Mapping[ResourceKey, object],
    ) -> None:
        """Check again the services in ``changed`` (added, removed, changed, or whose
        applied DestinationRule changed); ``services`` are the services by key,
        ``applied`` the DestinationRule applied to each, ``entries`` the ServiceEntries
        by key."""
        for key in changed:
            svc = services.get(key)
            found = endpoint_problems(svc, applied.get(key), entries) if svc is not None else []
            file_under(self._problems, key, found)

    def problems(self) -> list[Problem]:
        """The warnings, by service key."""
        return [p for key in sorted(self._problems) for p in self._problems[key]]


def endpoint_problems(
    svc: Service, rule: DestinationRule | None, entries: Mapping[ResourceKey, object]
) -> list[Problem]:
    """The warnings of ``svc`` with the DestinationRule ``rule`` applied to it
    (``entries``: the ServiceEntries by key, for a service of an entry)."""
    if not svc.endpoints:
        if svc.resolution is Resolution.NONE or not svc.ports:
            return []
        if svc.entry:
            entry = entries.get(ResourceKey("ServiceEntry", svc.namespace, svc.entry))
            if isinstance(entry, ServiceEntry) and entry.workload_selector:
                field, why = "workloadSelector", "its workloadSelector selects no WorkloadEntry"
            else:
                field, why = "endpoints", "the entry lists none"
            return [
                problem_at(
                    svc.origin,
                    field,
                    f"host {svc.name!r} has no endpoints ({why}): {_UNAVAILABLE}",
                    Severity.WARNING,
                    svc.lines,
                )
            ]
        return [
            problem_at(
                svc.origin,
                "endpoints",
                f"{svc.key} has no endpoints: {_UNAVAILABLE}; list where it runs (a "
                "service outside the mesh can be a ServiceEntry with resolution DNS)",
                Severity.WARNING,
                svc.lines,
            )
        ]
    if rule is None:
        return []
    problems = []
    endpoints = svc.endpoints
    for i, subset in enumerate(rule.subsets):
        if not subset.labels:
            continue  # selects every endpoint
        # stops at the first endpoint selected: nearly always one of the first
        # (``Endpoint.matches`` written out: a call per endpoint costs more than the test)
        selector = subset.labels
        for e in endpoints:
            labels = e.labels
            for pair in selector:
                if pair not in labels:
                    break
            else:
                break
        else:
            field = f"subsets[{i}]"
            shown = ", ".join(f"{k}={v}" for k, v in subset.labels)
            problems.append(
                problem_at(
                    rule.origin,
                    field,
                    f"subset {subset.name!r} selects no endpoint of {svc.key} (none is "
                    f"labelled {shown}): traffic routed to it fails with 503 (no healthy "
                    "upstream)",
                    Severity.WARNING,
                    rule.lines,
                )
            )
    return problems
