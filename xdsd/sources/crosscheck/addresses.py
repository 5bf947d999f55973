"""Pinned virtual addresses: one address pinned by two services that a connection to it
cannot tell apart.

A file may pin a service's virtual address (an xdsd Service's ``address``, a
ServiceEntry's ``addresses``, which every host of the entry gets). Sidecars listen on
``ADDRESS:PORT`` for each port of the service (``translate/virtual_addresses.py``). Two
services may share one address when every port number they share is told apart inside
the connection — HTTP by its Host header, TLS by SNI — but not when either of them has
a plain TCP port of that number: nothing in such a connection says which service it is
for. That is an error at the later service's (by key) address field, naming the first
one's file and line. Only single addresses count (an IP, a /32, a /128:
``pinned_addresses``); a CIDR range of a ServiceEntry is no virtual address. An address
pinned inside the settings' block needs no check here: allocation never hands out a
pinned address's slot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from xdsd.errors import Problem
from xdsd.model import Protocol, ResourceKey, Service, line_of
from xdsd.sources.crosscheck.hosts import ServiceChange
from xdsd.sources.crosscheck.index import problem_at, unindex


def pinned(svc: Service) -> tuple[tuple[str, str], ...]:
    """The single addresses ``svc`` pins, each once, as (normalized address, the field it
    is written at: ``address`` or the entry's ``addresses[N]``), in the order written.
    CIDR ranges of more than one address, and what does not parse, are left out."""
    out: dict[str, str] = {}
    for i, text in enumerate(svc.addresses):
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.num_addresses == 1:
            out.setdefault(
                str(network.network_address), f"addresses[{i}]" if svc.entry else "address"
            )
    return tuple(out.items())


def clashing_port(a: Service, b: Service) -> int | None:
    """The first port number (in ``a``'s order) both services have where either port is
    TCP; None when every shared number is HTTP-family or TLS on both sides."""
    for port in a.ports:
        other = b.port(port.number)
        if other is not None and Protocol.TCP in (port.protocol, other.protocol):
            return port.number
    return None


def clash_problem(
    svc: Service, field: str, address: str, first: Service, first_field: str, port: int
) -> Problem:
    """The error of ``svc`` pinning ``address`` (at ``field``) that ``first`` pins too
    (at ``first_field``), both with port ``port``, one of them TCP."""
    where = f"{first.origin.path}:{line_of(first.lines, first_field, first.origin.line)}"
    return problem_at(
        svc.origin,
        field,
        f"address {address} is also pinned by {first.key} ({where}) and both have port "
        f"{port}, TCP on at least one side: a connection to {address}:{port} cannot say "
        "which service it is for (HTTP ports may share an address, told apart by Host; "
        "TLS ports by SNI); give one of them another address, or none",
        lines=svc.lines,
    )


def service_clashes(svc: Service, claimants: Mapping[str, list[Service]]) -> list[Problem]:
    """The errors of ``svc``: for each address it pins, the first service before it (by
    key) among ``claimants[address]`` (every service pinning it, in key order) that it
    clashes with."""
    out = []
    for address, field in pinned(svc):
        for other in claimants.get(address, ()):
            if other.key >= svc.key:
                break
            port = clashing_port(svc, other)
            if port is not None:
                other_field = dict(pinned(other))[address]
                out.append(clash_problem(svc, field, address, other, other_field, port))
                break
    return out


class PinnedAddresses:
    """The services pinning each single address, and the errors of those that clash with
    an earlier one (see the module doc). A changed service re-checks every service
    pinning an address it pinned before or pins now."""

    def __init__(self) -> None:
        self._pins: dict[str, set[ResourceKey]] = {}
        self._problems: dict[ResourceKey, list[Problem]] = {}

    def update(
        self,
        changed: Mapping[ResourceKey, ServiceChange],
        services: Mapping[ResourceKey, Service],
    ) -> None:
        """Take in the ``changed`` services (old, new) and check again what they may
        clash with (``services``: every service by key, as it now is)."""
        touched: set[str] = set()
        recheck: set[ResourceKey] = set()
        # A service without ``addresses`` pins nothing (``pinned`` gives none): most of a
        # large mesh's, skipped without a call.
        for key, (old, new) in changed.items():
            if old is not None and old.addresses:
                for address, _ in pinned(old):
                    unindex(self._pins, address, key)
                    touched.add(address)
            if new is not None:
                if new.addresses:
                    for address, _ in pinned(new):
                        self._pins.setdefault(address, set()).add(key)
                        touched.add(address)
                recheck.add(key)
            else:
                self._problems.pop(key, None)
        claimants: dict[str, list[Service]] = {}
        for address in touched:
            keys = self._pins.get(address)
            if keys:
                recheck |= keys
        for key in recheck:
            svc = services[key]
            if not svc.addresses:  # no clash to find (``service_clashes`` finds none)
                self._problems.pop(key, None)
                continue
            for address, _ in pinned(svc):
                if address not in claimants:
                    claimants[address] = [services[k] for k in sorted(self._pins[address])]
            found = service_clashes(svc, claimants)
            if found:
                self._problems[key] = found
            else:
                self._problems.pop(key, None)

    def problems(self) -> list[Problem]:
        """The errors, by service key."""
        return [p for key in sorted(self._problems) for p in self._problems[key]]
