"""Where registrations are kept: the protocol every store follows, and the embedded one.

A store holds every replica's registrations (``current``), accepts this replica's
writes (``put``, ``delete``) and tells its listener when what it holds changed. A store
that cannot reach its backend keeps what it last knew (``state``) and resynchronises on
its own when the backend returns; it never raises from ``current`` or ``state``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from xdsd.model.registrations import Registration


@dataclass(frozen=True, slots=True)
class StoreState:
    """Whether the store reaches its backend, and why not (``detail``, for logs and the
    readiness detail)."""

    connected: bool = True
    detail: str = ""


class RegistrationStore(Protocol):
    """What the registry needs of a store (see the module doc)."""

    async def start(self, on_change: Callable[[], None]) -> None:
        """Begin (connect, load what the backend holds); ``on_change`` is called, on the
        event loop, after every change of ``current()``."""

    async def close(self) -> None:
        """Stop. The embedded store forgets its registrations; a shared one leaves this
        replica's to the other replicas for the grace (an etcd store hands them to a
        lease that lapses), so that a graceful stop is no endpoint flap."""

    async def put(self, registration: Registration) -> None:
        """Add or replace a registration held by this replica. Raises StoreUnavailable
        when it cannot be written now (it is written on resync)."""

    async def delete(self, key: str) -> None:
        """Remove this replica's registration ``key``."""

    def current(self) -> Mapping[str, Registration]:
        """Every replica's registrations, by key, as last known."""

    def state(self) -> StoreState:
        """Whether the backend is reachable."""


class StoreUnavailable(Exception):
    """A write that could not reach the store's backend."""


class MemoryStore:
    """The embedded store: registrations live in this daemon only."""

    def __init__(self) -> None:
        self._held: dict[str, Registration] = {}
        self._on_change: Callable[[], None] = lambda: None

    async def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    async def close(self) -> None:
        self._held.clear()

    async def put(self, registration: Registration) -> None:
        if self._held.get(registration.key) != registration:
            self._held[registration.key] = registration
            self._on_change()

    async def delete(self, key: str) -> None:
        if self._held.pop(key, None) is not None:
            self._on_change()

    def current(self) -> Mapping[str, Registration]:
        return dict(self._held)

    def state(self) -> StoreState:
        return StoreState()
