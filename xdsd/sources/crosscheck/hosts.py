"""Host names: which service owns each name, and names claimed twice."""

from __future__ import annotations

from collections.abc import Mapping

from xdsd.errors import Problem
from xdsd.located import closest
from xdsd.model import ResourceKey, Service
from xdsd.model.mesh import qualify_host
from xdsd.model.networking import ServiceEntry
from xdsd.sources.crosscheck.index import problem_at

#: A service's change: (before, after), None for absent.
ServiceChange = tuple[Service | None, Service | None]


class HostOwners:
    """The services naming each host name, its owner (the first by key: what
    ``Mesh.service`` finds) and the problems of services naming an owned host."""

    def __init__(self) -> None:
        self._claims: dict[str, set[ResourceKey]] = {}
        #: The owner of each host name.
        self.owners: dict[str, Service] = {}
        self._problems: dict[ResourceKey, list[Problem]] = {}

    def update(
        self,
        changed: Mapping[ResourceKey, ServiceChange],
        services: Mapping[ResourceKey, Service],
        entries: Mapping[ResourceKey, object],
    ) -> set[str]:
        """Re-own the host names of the ``changed`` services (``services``: every service
        by key, as it now is; ``entries``: the ServiceEntries by key); returns the hosts
        whose owner (the object) changed."""
        hosts: set[str] = set()
        for key, (old, new) in changed.items():
            if old is not None:
                for host in (old.fqdn, *old.hosts):
                    claims = self._claims[host]
                    claims.discard(key)
                    hosts.add(host)
            if new is not None:
                for host in (new.fqdn, *new.hosts):
                    claimed = self._claims.get(host)
                    if claimed is None:
                        self._claims[host] = {key}
                    else:
                        claimed.add(key)
                    hosts.add(host)
            else:
                self._problems.pop(key, None)
        owners_changed: set[str] = set()
        recheck: set[ResourceKey] = {k for k, (_, new) in changed.items() if new is not None}
        for host in hosts:
            claims = self._claims[host]
            if not claims:
                del self._claims[host]
                if self.owners.pop(host, None) is not None:
                    owners_changed.add(host)
                continue
            owner = services[min(claims)]
            if self.owners.get(host) is not owner:
                self.owners[host] = owner
                owners_changed.add(host)
            recheck |= claims
        owners = self.owners
        for key in recheck:
            svc = services[key]
            if all(owners[host] is svc for host in (svc.fqdn, *svc.hosts)):
                # owner of every name it claims: nothing for ``_host_problems`` to find
                self._problems.pop(key, None)
                continue
            found = _host_problems(svc, owners, entries)
            if found:
                self._problems[key] = found
            else:
                self._problems.pop(key, None)
        return owners_changed

    def problems(self) -> list[Problem]:
        """The problems of names claimed twice, by service key."""
        return [p for key in sorted(self._problems) for p in self._problems[key]]


def resolve(
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


def host_hint(owners: Mapping[str, Service], host: str, namespace: str) -> str:
    """``"; did you mean 'reviews'?"`` for a ``host`` no service answers to from
    ``namespace`` when a known name differs from it only by a misspelled first label
    (compared in the form written: ``reveiws`` finds ``reviews`` of the namespace,
    ``reveiws.prod`` finds ``reviews`` of ``prod``); "" when none is near."""
    first, _, rest = qualify_host(host, namespace).partition(".")
    candidates = set()
    for name in owners:
        label, _, tail = name.partition(".")
        if tail == rest and label != first:
            candidates.add(label)
    near = closest(first, candidates)
    return f"; did you mean {near + host[len(first) :]!r}?" if near else ""


def _host_problems(
    svc: Service, owners: Mapping[str, Service], entries: Mapping[ResourceKey, object]
) -> list[Problem]:
    """Names of ``svc`` that belong to another service (one that comes first by key);
    ``entries`` are the ServiceEntries by key (a service of an entry is its host)."""
    problems = []
    for i, host in enumerate((svc.fqdn, *svc.hosts)):
        other = owners[host]
        if other.key != svc.key:
            problems.append(
                problem_at(
                    svc.origin,
                    host_field(svc, i, entries),
                    f"host {host!r} is already a name of {other.key} ({other.origin})",
                    lines=svc.lines,
                )
            )
    return problems


def host_field(svc: Service, i: int, entries: Mapping[ResourceKey, object]) -> str:
    """Where name ``i`` of ``svc`` (its canonical name, then its ``hosts``) is written:
    ``name``, ``hosts[N]``, or for a service of a ServiceEntry the entry's ``hosts[N]``."""
    if svc.entry:
        entry = entries.get(ResourceKey("ServiceEntry", svc.namespace, svc.entry))
        if isinstance(entry, ServiceEntry) and svc.name in entry.hosts:
            return f"hosts[{entry.hosts.index(svc.name)}]"
        return "hosts"
    return f"hosts[{i - 1}]" if i else "name"
