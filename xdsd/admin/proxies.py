"""Proxy states and expected proxies: one vocabulary for the status page,
``/debug/clients``, ``/debug/expected`` and ``xdsd status``.

How this works: the cache records what each client was sent and answered
(``TypeStatus.state``: in sync, pending, NACKed, not applied); ``type_state`` adds time:
a version sent and neither acknowledged nor rejected for longer than ``stale_after``
seconds (the ``stale_after`` setting) is *stale*. The daemon decides this once, here;
``/debug/clients`` carries the result as each type's ``state``, the page shows its word
(``STATE_WORDS``) and ``xdsd status`` the same word upper-cased.

``absent`` compares the proxies xdsd expects (every endpoint of a Service file and every
WorkloadEntry: ``ExpectedProxy``, listed by the daemon) with the connected clients
(each placed by its node class: ``Workload``). The rule:

- a connected sidecar covers the expected endpoint with its namespace, service (or
  another Service with an endpoint at that address: ``ExpectedProxy.also``) and
  address (its node's ``instance_ip``); a WorkloadEntry names no service, so any
  sidecar of its namespace at its address covers it;
- a sidecar that reports no ``instance_ip`` (or the any-address) cannot be placed at an
  address: it covers one endpoint of its namespace and service that nothing else
  covers (the lowest address), so the counts stay right although which address it
  stands for is a guess (give it ``instance_ip``: ``xdsd bootstrap --instance-ip``);
- gateways cover nothing (they are not endpoints of a service);
- every expected endpoint left is *absent*; the most recently disconnected client that
  would have covered it is its ``last_seen``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from xdsd.cache.cache import ClientStatus, TypeStatus
from xdsd.settings import DEFAULT_STALE_AFTER as DEFAULT_STALE_AFTER

#: A type's state as the admin server reports it (``/debug/clients`` ``state``).
ProxyState = Literal["nacked", "not_applied", "stale", "pending", "in_sync"]
#: Every ``ProxyState``, worst first.
PROXY_STATES: tuple[ProxyState, ...] = ("nacked", "not_applied", "stale", "pending", "in_sync")
#: The word for each state: the page shows it, ``xdsd status`` shows it upper-cased.
STATE_WORDS: Mapping[ProxyState, str] = {
    "nacked": "NACKed",
    "not_applied": "not applied",
    "stale": "stale",
    "pending": "pending",
    "in_sync": "synced",
}
#: The states that make a proxy a problem (``xdsd status`` exits 1).
FAILING_STATES: frozenset[ProxyState] = frozenset({"nacked", "not_applied", "stale"})


def type_state(status: TypeStatus, now: float, stale_after: float) -> ProxyState:
    """The state of one type at ``now``: the cache's state, except that a version sent
    more than ``stale_after`` seconds ago and neither acknowledged nor rejected is
    ``stale``."""
    state = status.state
    if (
        state == "pending"
        and status.sent_version is not None
        and status.sent_at is not None
        and now - status.sent_at > stale_after
    ):
        return "stale"
    return state


def client_state(client: ClientStatus, now: float, stale_after: float) -> ProxyState:
    """The worst state of a client's types (``pending`` while it has none)."""
    states = {type_state(t, now, stale_after) for t in client.types.values()}
    return next((s for s in PROXY_STATES if s in states), "pending")


@dataclass(frozen=True, slots=True)
class Workload:
    """Where a client's node class puts it: namespace, service, role (``sidecar``,
    ``gateway``) and address (its ``instance_ip``; "" when it reports none)."""

    namespace: str
    service: str
    role: str = "sidecar"
    address: str = ""

    @property
    def name(self) -> str:
        """``namespace/service``, as the page and ``xdsd status`` name a service."""
        return f"{self.namespace}/{self.service}"


@dataclass(frozen=True, slots=True)
class ExpectedProxy:
    """An endpoint the configuration says a proxy runs at: ``service`` in ``namespace``
    at ``address`` ("" service: a WorkloadEntry, whichever service selects it);
    ``origin`` names where it comes from (``Service default/web (path:line)``)."""

    namespace: str
    service: str
    address: str
    origin: str
    #: The other Services of the namespace with an endpoint at this address (one
    #: workload behind several Services, e.g. ``reviews`` and ``reviews-v1`` for the
    #: Gateway API's per-version backends): a sidecar of any of them covers it.
    also: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``namespace/service`` (``namespace/*`` for a WorkloadEntry)."""
        return f"{self.namespace}/{self.service or '*'}"


@dataclass(frozen=True, slots=True)
class Absence:
    """An expected proxy with no connected client; ``last_seen`` is the most recently
    disconnected client that would have covered it (None: never seen since the
    daemon started, or forgotten)."""

    expected: ExpectedProxy
    last_seen: ClientStatus | None = None


def absent(
    expected: Iterable[ExpectedProxy],
    clients: Iterable[ClientStatus],
    workloads: Mapping[Hashable, Workload],
) -> list[Absence]:
    """The expected proxies no connected client covers (the rule is in the module's
    docstring), sorted by namespace, service and address; ``workloads`` places each
    client's node class (a class it lacks covers nothing)."""
    wanted = sorted(set(expected), key=lambda e: (e.namespace, e.service, _ip_order(e.address)))
    connected = [c for c in clients if c.connected]
    gone = sorted(
        (c for c in clients if not c.connected), key=lambda c: -(c.disconnected_at or 0.0)
    )
    exact: set[tuple[str, str, str]] = set()
    anywhere: set[tuple[str, str]] = set()
    unplaced: dict[tuple[str, str], int] = {}
    for client in connected:
        w = workloads.get(client.key)
        if w is None or w.role != "sidecar":
            continue
        if _placed(w.address):
            exact.add((w.namespace, w.service, w.address))
            anywhere.add((w.namespace, w.address))
        else:
            unplaced[w.namespace, w.service] = unplaced.get((w.namespace, w.service), 0) + 1
    left = []
    for e in wanted:
        if e.service and any((e.namespace, s, e.address) in exact for s in (e.service, *e.also)):
            continue
        if not e.service and (e.namespace, e.address) in anywhere:
            continue
        if e.service and unplaced.get((e.namespace, e.service), 0) > 0:
            unplaced[e.namespace, e.service] -= 1
            continue
        left.append(e)
    return [Absence(e, _last_seen(e, gone, workloads)) for e in left]


def _last_seen(
    e: ExpectedProxy, gone: Sequence[ClientStatus], workloads: Mapping[Hashable, Workload]
) -> ClientStatus | None:
    for client in gone:  # the most recent first
        w = workloads.get(client.key)
        if w is None or w.role != "sidecar" or w.namespace != e.namespace:
            continue
        if e.service and w.service != e.service:
            continue
        if w.address == e.address or (e.service and not _placed(w.address)):
            return client
    return None


def _placed(address: str) -> bool:
    """True for an address a proxy can be matched by (not empty, not the any-address)."""
    if not address:
        return False
    try:
        return not ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return True


def _ip_order(address: str) -> tuple[int, int, str]:
    """Addresses in numeric order (IPv4 before IPv6), names after them."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (2, 0, address)
    return (ip.version // 6, int(ip), "")
