"""ServiceEntries: the services each derives, with the WorkloadEntries it selects."""

from __future__ import annotations

from collections.abc import Mapping

from xdsd.errors import Problem
from xdsd.model import ResourceKey, Service
from xdsd.model.networking import ServiceEntry, WorkloadEntry
from xdsd.sources.crosscheck.hosts import ServiceChange
from xdsd.sources.crosscheck.index import NONE, file_under, unindex
from xdsd.sources.service_entry import entry_services


class EntryServices:
    """The services each ServiceEntry derives (``service_entry.entry_services``), the
    problems of deriving them, and the entries with a ``workloadSelector`` by namespace
    (derived again when a WorkloadEntry of their namespace changes)."""

    def __init__(self) -> None:
        self._derived: dict[ResourceKey, tuple[Service, ...]] = {}
        self._problems: dict[ResourceKey, list[Problem]] = {}
        self._selecting: dict[str, set[ResourceKey]] = {}

    def update(
        self,
        others: set[ResourceKey],
        entries: Mapping[ResourceKey, object],
        workload_entries: Mapping[ResourceKey, object],
        services: dict[ResourceKey, Service],
    ) -> dict[ResourceKey, ServiceChange]:
        """Derive again the services of the changed ServiceEntries in ``others`` and of
        the entries selecting WorkloadEntries in a namespace where one changed
        (``entries``, ``workload_entries``: the winners by key); returns the services
        that changed (old, new) by key, after putting them in ``services``. A derived
        service equal to the one before (origin included) keeps its object."""
        rederive = {k for k in others if k.kind == "ServiceEntry"}
        namespaces = {k.namespace for k in others if k.kind == "WorkloadEntry"}
        for namespace in namespaces:
            rederive |= self._selecting.get(namespace, NONE)
        workloads: dict[str, list[WorkloadEntry]] = {}
        changes: dict[ResourceKey, ServiceChange] = {}
        for key in rederive:
            before = {s.key: s for s in self._derived.pop(key, ())}
            entry = entries.get(key)
            found: tuple[Service, ...] = ()
            if entry is None:
                unindex(self._selecting, key.namespace, key)
                self._problems.pop(key, None)
            else:
                assert isinstance(entry, ServiceEntry)
                if entry.workload_selector:
                    self._selecting.setdefault(key.namespace, set()).add(key)
                else:
                    unindex(self._selecting, key.namespace, key)
                if key.namespace not in workloads:
                    workloads[key.namespace] = _workloads(workload_entries, key.namespace)
                found, problems = entry_services(entry, workloads[key.namespace])
                file_under(self._problems, key, problems)
            kept = []
            for svc in found:
                old = before.pop(svc.key, None)
                if (
                    old is not None
                    and old == svc
                    and old.origin == svc.origin
                    and old.lines == svc.lines
                ):
                    svc = old
                else:
                    services[svc.key] = svc
                    changes[svc.key] = (old, svc)
                kept.append(svc)
            if entry is not None:
                self._derived[key] = tuple(kept)
            for svc_key, old in before.items():
                del services[svc_key]
                changes[svc_key] = (old, None)
        return changes

    def problems(self) -> list[Problem]:
        """The problems of deriving services, by entry key."""
        return [p for key in sorted(self._problems) for p in self._problems[key]]


def _workloads(
    workload_entries: Mapping[ResourceKey, object], namespace: str
) -> list[WorkloadEntry]:
    """The WorkloadEntries of ``namespace``, in key order."""
    found = [
        w
        for k, w in workload_entries.items()
        if k.namespace == namespace and isinstance(w, WorkloadEntry)
    ]
    return sorted(found, key=lambda w: w.key)
