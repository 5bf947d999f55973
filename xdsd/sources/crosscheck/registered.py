"""Registered workloads as endpoints of the xdsd Service their group serves.

A registered WorkloadEntry (``WorkloadEntry.service`` set: its group's ``app`` label,
see ``sources.registered``) is an endpoint of the xdsd Service of that name in its
namespace, after the Service file's own endpoints (in entry key order), as a Kubernetes
Service selecting ``app: NAME`` would pick the group's workloads. It serves each port on
the port's own number: a registered workload has a sidecar (it registered by
connecting), whose inbound listener binds that number and forwards to the port's
``targetPort`` (the template's ``ports`` map is for the ServiceEntries that select the
entry, Istio's meaning). A group serving no xdsd Service (only ServiceEntries select
it, or none) adds nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from xdsd.model import Endpoint, ResourceKey, Service
from xdsd.model.networking import WorkloadEntry
from xdsd.sources.crosscheck.hosts import ServiceChange


class RegisteredEndpoints:
    """The registered entries of each xdsd Service, and each augmented Service's file
    version (``_base``), so the endpoints are laid on again when either changes."""

    def __init__(self) -> None:
        self._entries: dict[ResourceKey, dict[ResourceKey, WorkloadEntry]] = {}
        self._serves: dict[ResourceKey, ResourceKey] = {}
        self._base: dict[ResourceKey, Service] = {}

    def update(
        self,
        others: set[ResourceKey],
        workload_entries: Mapping[ResourceKey, object],
        services: dict[ResourceKey, Service],
        changes: dict[ResourceKey, ServiceChange],
    ) -> None:
        """Apply the changed WorkloadEntries in ``others`` and the changed services of
        ``changes`` (whose new objects in ``services`` are the files' own): the xdsd
        Services with registered endpoints are replaced in ``services`` and their
        changes recorded (or amended) in ``changes``."""
        affected: set[ResourceKey] = set()
        for key in others:
            if key.kind != "WorkloadEntry":
                continue
            served = self._serves.pop(key, None)
            if served is not None:
                held = self._entries.get(served, {})
                held.pop(key, None)
                if not held:
                    self._entries.pop(served, None)
                affected.add(served)
            entry = workload_entries.get(key)
            if isinstance(entry, WorkloadEntry) and entry.service:
                served = ResourceKey("Service", key.namespace, entry.service)
                self._serves[key] = served
                self._entries.setdefault(served, {})[key] = entry
                affected.add(served)
        for key in changes:
            if key.kind != "Service":
                continue
            current = services.get(key)
            if current is None:
                self._base.pop(key, None)
            elif key in self._base or key in self._entries:
                self._base[key] = current
            affected.add(key)
        for key in affected:
            self._lay(key, services, changes)

    def _lay(
        self,
        key: ResourceKey,
        services: dict[ResourceKey, Service],
        changes: dict[ResourceKey, ServiceChange],
    ) -> None:
        current = services.get(key)
        if current is None:
            return
        base = self._base.get(key, current)
        entries = self._entries.get(key)
        if not entries:
            self._base.pop(key, None)
            wanted = base
        else:
            self._base[key] = base
            added = tuple(_endpoint(entries[k]) for k in sorted(entries))
            wanted = replace(base, endpoints=(*base.endpoints, *added))
            if wanted == current and wanted.origin == current.origin:
                wanted = current
        if wanted is current:
            return
        old = changes[key][0] if key in changes else current
        services[key] = wanted
        changes[key] = (old, wanted)


def _endpoint(entry: WorkloadEntry) -> Endpoint:
    workload = entry.endpoint
    return Endpoint(
        workload.address,
        workload.labels,
        workload.locality,
        workload.weight,
        healthy=workload.healthy,
    )
