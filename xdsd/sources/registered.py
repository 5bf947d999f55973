"""Registered workloads as a source: registrations → WorkloadEntries of their groups.

The second source beside the files. The loader (``DirectoryLoader``) merges what this
module makes as one synthetic file, ``REGISTRATIONS_PATH``, listed after every real
file, so registered entries go through the very objects, indexes and cross-checks file
WorkloadEntries do (ServiceEntries select them by labels, ``crosscheck.registered``
makes them endpoints of the xdsd Service their group serves). A registration change is
a change of that one file: the directory is not read again.

A registration becomes the WorkloadEntry ``GROUP-ADDRESS`` of its group's namespace
(Istio's name for an auto-registered entry) with: the group's entry labels
(``metadata.labels``, ``template.labels``) over the node's own labels (the registry
refused contradicting ones), the node's locality (else the template's), and the
template's ports, weight, network and service account; ``healthy`` false when its
probe's verdict is UNHEALTHY. A registration whose group is gone makes no entry; one
whose entry name a file already uses makes none either (a warning: the file wins).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from xdsd.errors import Problem, Severity
from xdsd.model import Origin, RawResource, ResourceKey
from xdsd.model.networking import WorkloadEndpoint, WorkloadEntry, WorkloadGroup
from xdsd.model.registrations import Health, Registration

#: The synthetic path registered entries are "read" from (sorted after every file).
REGISTRATIONS_PATH = "<registrations>"


@dataclass(frozen=True, slots=True)
class RegisteredEntries:
    """What the synthetic registrations file holds (``crosscheck.FileContents``)."""

    resources: tuple[tuple[WorkloadEntry, Origin], ...] = ()
    raw: tuple[RawResource, ...] = ()
    problems: tuple[Problem, ...] = ()


NO_ENTRIES = RegisteredEntries()


def entry_name(group: str, address: str) -> str:
    """The name of the WorkloadEntry a registration at ``address`` into ``group`` gets."""
    return f"{group}-{address}"


def registered_entries(
    groups: Iterable[WorkloadGroup],
    registrations: Iterable[Registration],
    taken: Iterable[ResourceKey],
    previous: RegisteredEntries = NO_ENTRIES,
) -> RegisteredEntries:
    """The entries of ``registrations`` into ``groups`` (see the module doc), in key
    order; ``taken`` are the keys of the files' WorkloadEntries. An entry equal to one of
    ``previous`` is that very object (translation recognises unchanged input by it)."""
    by_key = {g.key: g for g in groups}
    files = set(taken)
    before = {entry.key: entry for entry, _ in previous.resources}
    out: dict[ResourceKey, tuple[WorkloadEntry, Origin]] = {}
    problems: list[Problem] = []
    for registration in registrations:
        group = by_key.get(registration.group)
        if group is None:
            continue
        entry = registered_entry(group, registration)
        if entry.key in files:
            problems.append(
                Problem(
                    REGISTRATIONS_PATH,
                    0,
                    "",
                    f"registration {registration.key} (node {registration.node_id}) is not "
                    f"served: a file defines {entry.key}",
                    Severity.WARNING,
                )
            )
            continue
        if entry.key in out:
            continue  # two replicas' views of one address: the first by key wins
        old = before.get(entry.key)
        if old is not None and old == entry and old.origin == entry.origin:
            entry = old
        out[entry.key] = (entry, group.origin)
    resources = tuple(out[k] for k in sorted(out))
    return RegisteredEntries(resources, (), tuple(problems))


def registered_entry(group: WorkloadGroup, registration: Registration) -> WorkloadEntry:
    """The WorkloadEntry of ``registration`` into ``group``."""
    template = group.template
    labels = {**dict(registration.labels), **dict(group.entry_labels)}
    locality = registration.locality
    if not (locality.region or locality.zone or locality.sub_zone):
        locality = template.locality
    endpoint = WorkloadEndpoint(
        registration.address,
        tuple(sorted(labels.items())),
        template.ports,
        locality,
        template.weight,
        template.network,
        template.service_account,
        healthy=registration.health is not Health.UNHEALTHY,
    )
    return WorkloadEntry(
        entry_name(group.name, registration.address),
        group.namespace,
        endpoint,
        origin=group.origin,
        group=group.name,
        service=group.service,
    )
