"""The registry: which connected sidecars are workloads of a WorkloadGroup, and for how
long after they leave.

How this works: a sidecar stream whose node names a group (``node.metadata.
workload_group``, its address ``instance_ip``) is admitted by ``attach`` — synchronously,
on the event loop, so two streams racing for one address are decided in order — into a
``Registration`` keyed ``NAMESPACE/GROUP/ADDRESS``. The registration is written to the
``RegistrationStore`` by one writer task (``run``), in order and coalesced by key (a
key's latest state wins; at most one pending write per key, so the queue is bounded by
the registrations held plus those being removed). While any stream of the registration
is open it stays; when the last closes (``Attachment.close``) it is marked disconnected
and removed ``grace`` later unless a stream reattaches meanwhile, which keeps it as it
was (the same entry, so no version change: no flap). ``expire`` removes what is due;
``run`` calls it at each deadline, tests call it with an injected clock.

Admission (see ``docs/operations.md``, "Registered workloads"): the group must exist in
the node's namespace (``groups``); its entries' ``app`` label (the group's
``metadata.labels`` or ``template.labels``) must be the node's service (``node.cluster``),
and a ``template.serviceAccount``, when set, the node's service too (its identity's
service account, as Istio checks); the address must be an IP literal and not held by a
connected registration other than this node's own in this group (a node id is the
client's word: a copied one takes no other group's address; one whose node has left
may be taken over); the registry holds at most
``max_registrations``. The credential check is the stream's own (``NodeAuthorizer`` and
identities judge the node's service, namespace and labels before it is attached), so a
node can only ever register into a group of a service its credential speaks for.

Every refusal raises ``RegistrationRefused`` (its gRPC status, a reason word and a
message) and is counted by reason; nothing here raises anything else for what a node
sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from xdsd.model.networking import WorkloadGroup
from xdsd.model.registrations import Health, Registration, RegistrySettings
from xdsd.model.service import Locality, ResourceKey
from xdsd.registry.store import MemoryStore, RegistrationStore, StoreUnavailable
from xdsd.registry.views import registrations_json

log = logging.getLogger(__name__)

_NOWHERE = Locality()
#: Store writes at once (of different keys) when flushing.
WRITES_AT_ONCE = 32
#: The label whose value names the service a group's workloads serve.
SERVICE_LABEL = "app"


@dataclass(frozen=True, slots=True)
class Claim:
    """What a connecting node asks for: to be a workload of ``group`` (a name in
    ``namespace``) at ``address``, as the node ``node_id`` of ``service`` with its own
    ``labels`` and ``locality``."""

    node_id: str
    service: str
    namespace: str
    group: str
    address: str
    labels: tuple[tuple[str, str], ...] = ()
    locality: Locality = _NOWHERE


class RegistrationRefused(Exception):
    """A refused registration: ``code`` (a gRPC status name), ``reason`` (one word, the
    metrics' label) and ``message`` (for the node's operator)."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


#: Refusal reasons (the ``reason`` label of the refusals counter).
REASONS = (
    "unknown_group",
    "other_service",
    "label_conflict",
    "bad_address",
    "address_in_use",
    "registry_full",
)


class Attachment:
    """One stream's hold on a registration; ``close`` when the stream ends (idempotent)."""

    __slots__ = ("_closed", "_registry", "key")

    def __init__(self, registry: Registry, key: str) -> None:
        self._registry, self.key, self._closed = registry, key, False

    def close(self) -> None:
        """The stream ended: the registration starts its grace when no other stream of
        it is open."""
        if not self._closed:
            self._closed = True
            self._registry._detach(self.key)


def default_replica() -> str:
    """This daemon's name among replicas when the settings give none: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Registry:
    """The registrations this replica admits (see the module doc). ``groups(namespace,
    name)`` looks a WorkloadGroup up in the current mesh; ``clock`` gives seconds since
    the epoch (injectable for tests)."""

    def __init__(
        self,
        settings: RegistrySettings,
        store: RegistrationStore | None = None,
        *,
        groups: Callable[[str, str], WorkloadGroup | None] = lambda ns, name: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store: RegistrationStore = store if store is not None else MemoryStore()
        self.groups = groups
        self.clock = clock
        self.replica = settings.replica or default_replica()
        self.grace = settings.grace.total_seconds()
        #: This replica's registrations, by key (what it writes to the store).
        self._held: dict[str, Registration] = {}
        #: Open streams per held key.
        self._streams: dict[str, int] = {}
        #: (deadline, key) of disconnected registrations; stale entries are skipped.
        self._deadlines: list[tuple[float, str]] = []
        #: Writes waiting for the writer: key → the registration to put (None: delete).
        self._pending: dict[str, Registration | None] = {}
        self._wake = asyncio.Event()
        self._on_change: Callable[[], None] = lambda: None
        #: Counters (the metrics read them at scrape time).
        self.registered_total = 0
        self.expired_total = 0
        self.refused: Counter[str] = Counter()
        #: Writes the store could not take (each attempt; retried every 0.5 s).
        self.store_failures = 0
        #: Errors of the background task (logged; it kept going).
        self.internal_errors = 0
        #: When the store last became unable to take writes (None: it takes them), and
        #: the failed attempts since: one warning on entering that state, one summary
        #: on leaving it (``flush``), however long it lasts.
        self._failing_since: float | None = None
        self._failing_attempts = 0

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, on_change: Callable[[], None] = lambda: None) -> None:
        """Start the store; ``on_change`` hears of every change of ``current()``."""
        self._on_change = on_change
        await self.store.start(on_change)

    async def close(self) -> None:
        """Write what is pending (best effort) and close the store."""
        try:
            await self.flush()
        finally:
            await self.store.close()

    async def run(self) -> None:
        """The registry's background task: write pending changes to the store and expire
        registrations at their deadline, until cancelled. Never ends on an error: each is
        logged and counted, and the work is retried at the next wake-up."""
        while True:
            try:
                await self.flush()
                self.expire()
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.internal_errors += 1
                log.exception("registry: internal error (kept going)")
            timeout = self._next_deadline()
            self._wake.clear()
            if self._pending:
                await asyncio.sleep(0.5)  # a failed write: try again soon
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _next_deadline(self) -> float | None:
        while self._deadlines:
            deadline, key = self._deadlines[0]
            held = self._held.get(key)
            if held is None or not held.disconnected or self._streams.get(key):
                heapq.heappop(self._deadlines)  # reattached or gone
                continue
            return max(0.0, deadline - self.clock())
        return None

    async def flush(self) -> None:
        """Write every pending change to the store, in order of arrival, up to
        ``WRITES_AT_ONCE`` keys at a time (a key has one pending write, so each key's
        writes stay in order; etcd's latency is paid once per batch, not per write). A
        write the store cannot take now stays pending (StoreUnavailable: the next
        wake-up retries)."""
        while self._pending:
            batch = list(itertools.islice(self._pending.items(), WRITES_AT_ONCE))
            results = await asyncio.gather(
                *(self._store_write(key, registration) for key, registration in batch),
                return_exceptions=True,
            )
            failed: tuple[str, StoreUnavailable] | None = None
            error: BaseException | None = None
            for (key, registration), result in zip(batch, results, strict=True):
                if isinstance(result, StoreUnavailable):
                    failed = failed or (key, result)
                elif isinstance(result, BaseException):
                    error = error or result
                elif self._pending.get(key) is registration:
                    del self._pending[key]
            if error is not None:
                raise error
            if failed is not None:
                self._write_failed(*failed)
                return
        if self._failing_since is not None:
            log.warning(
                "registry: the store takes writes again after %.1f s (%d attempts failed "
                "meanwhile); every waiting write is written",
                max(0.0, self.clock() - self._failing_since),
                self._failing_attempts,
            )
            self._failing_since = None
            self._failing_attempts = 0

    async def _store_write(self, key: str, registration: Registration | None) -> None:
        if registration is None:
            await self.store.delete(key)
        else:
            await self.store.put(registration)

    def _write_failed(self, key: str, error: StoreUnavailable) -> None:
        """Count a failed write; warn only on the first of a run of them."""
        self.store_failures += 1
        self._failing_attempts += 1
        if self._failing_since is None:
            self._failing_since = self.clock()
            log.warning(
                "registry: the store cannot take writes (%s): %d kept pending (%s first), "
                "retried every 0.5 s; one line more when they are written",
                error,
                len(self._pending),
                key,
            )

    def _write(self, key: str, registration: Registration | None) -> None:
        self._pending.pop(key, None)  # to the end: writes keep their order
        self._pending[key] = registration
        self._wake.set()

    # -- admission ------------------------------------------------------------------

    def attach(self, claim: Claim) -> Attachment:
        """Admit ``claim`` (see the module doc) and hold its registration while the
        returned attachment is open. Raises RegistrationRefused."""
        try:
            registration = self._admit(claim)
        except RegistrationRefused as e:
            self.refused[e.reason] += 1
            raise
        key = registration.key
        self._streams[key] = self._streams.get(key, 0) + 1
        if self._held.get(key) != registration:
            self._held[key] = registration
            self._write(key, registration)
        return Attachment(self, key)

    def _admit(self, claim: Claim) -> Registration:
        if not _is_ip(claim.address):
            raise RegistrationRefused(
                "INVALID_ARGUMENT",
                "bad_address",
                f"instance_ip {claim.address!r} is not an IP address: a workload registers "
                "at its own address (xdsd bootstrap --instance-ip IP)",
            )
        group = self.groups(claim.namespace, claim.group)
        if group is None:
            raise RegistrationRefused(
                "NOT_FOUND",
                "unknown_group",
                f"no WorkloadGroup {claim.namespace}/{claim.group} in the configuration",
            )
        serves = group.service
        if serves != claim.service:
            what = f"serves {serves!r}" if serves else f"has no {SERVICE_LABEL!r} label"
            raise RegistrationRefused(
                "PERMISSION_DENIED",
                "other_service",
                f"WorkloadGroup {claim.namespace}/{claim.group} {what}: a node of service "
                f"{claim.service!r} registers only into a group whose {SERVICE_LABEL} "
                "label names its service",
            )
        account = group.template.service_account
        if account and account != claim.service:
            # Istio refuses a proxy whose verified service account is not the template's;
            # a node's identity here is its service (``spiffe://TD/ns/NS/sa/SERVICE``)
            raise RegistrationRefused(
                "PERMISSION_DENIED",
                "service_account",
                f"WorkloadGroup {claim.namespace}/{claim.group}'s template.serviceAccount is "
                f"{account!r}: a node of service {claim.service!r} (identity "
                f"sa/{claim.service}) does not register into it",
            )
        given = dict(group.entry_labels)
        for name, value in claim.labels:
            if given.get(name, value) != value:
                raise RegistrationRefused(
                    "INVALID_ARGUMENT",
                    "label_conflict",
                    f"the node's label {name}={value!r} contradicts WorkloadGroup "
                    f"{claim.namespace}/{claim.group}'s {name}={given[name]!r}: a group's "
                    "labels are not overridden by its workloads",
                )
        key = f"{claim.namespace}/{claim.group}/{claim.address}"
        held = self._held.get(key)
        known = {**self.store.current(), **self._held}
        for other_key, other in known.items():
            # Only the same registration of the same node id is the claimant's own (a
            # reconnect): a node id is whatever a client sends, so a copied one must not
            # take an address another group's connected node holds.
            if other.address != claim.address or (
                other_key == key and other.node_id == claim.node_id
            ):
                continue
            if other_key in self._held:
                live = bool(self._streams.get(other_key))
            else:
                live = not other.disconnected
            if live:
                raise RegistrationRefused(
                    "ALREADY_EXISTS",
                    "address_in_use",
                    f"address {claim.address} is registered by node {other.node_id!r} "
                    f"(group {other.group.namespace}/{other.group.name}), still connected",
                )
        if held is None and len(self._held) >= self.settings.max_registrations:
            raise RegistrationRefused(
                "RESOURCE_EXHAUSTED",
                "registry_full",
                f"{self.settings.max_registrations} workloads are registered, the limit "
                "([registry] max_registrations)",
            )
        if held is not None and held.node_id == claim.node_id:
            # A reconnect (or another stream of the node): the same registration, so the
            # same entry; only ``disconnected`` is cleared.
            fresh = replace(
                held,
                labels=claim.labels,
                locality=claim.locality,
                replica=self.replica,
                disconnected=0.0,
            )
            if held.disconnected:
                log.info("registry: %s reattached within the grace", key)
            return fresh
        self.registered_total += 1
        log.info(
            "registry: %s registered by node %s", key, claim.node_id, extra={"node": claim.node_id}
        )
        return Registration(
            group=group.key,
            address=claim.address,
            node_id=claim.node_id,
            labels=claim.labels,
            locality=claim.locality,
            replica=self.replica,
            since=self.clock(),
        )

    def _detach(self, key: str) -> None:
        count = self._streams.get(key, 0) - 1
        if count > 0:
            self._streams[key] = count
            return
        self._streams.pop(key, None)
        held = self._held.get(key)
        if held is None:
            return
        now = self.clock()
        left = replace(held, disconnected=now)
        self._held[key] = left
        self._write(key, left)
        heapq.heappush(self._deadlines, (now + self.grace, key))
        if len(self._deadlines) > 2 * len(self._held) + 16:
            # reconnects leave stale deadlines behind: keep the heap bounded by the keys
            self._deadlines = [
                (r.disconnected + self.grace, k)
                for k, r in self._held.items()
                if r.disconnected and not self._streams.get(k)
            ]
            heapq.heapify(self._deadlines)
        log.info("registry: %s disconnected; removed in %.1f s unless it returns", key, self.grace)

    def expire(self, now: float | None = None) -> int:
        """Remove the disconnected registrations whose grace ended by ``now`` (default:
        the clock); returns how many."""
        now = self.clock() if now is None else now
        expired = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key = heapq.heappop(self._deadlines)
            held = self._held.get(key)
            if held is None or not held.disconnected or self._streams.get(key):
                continue
            if held.disconnected + self.grace > now:
                continue  # an older deadline of a later disconnection
            del self._held[key]
            self._write(key, None)
            self.expired_total += 1
            expired += 1
            log.info("registry: %s expired (disconnected %.1f s ago)", key, now - held.disconnected)
        return expired

    # -- health -----------------------------------------------------------------------

    def set_health(self, key: str, health: Health) -> bool:
        """Record the probe's verdict on the registration ``key`` held by this replica;
        False (nothing done) when this replica does not hold it. A change is written to
        the store (and so reaches the model: an UNHEALTHY workload's endpoints are sent
        as UNHEALTHY)."""
        held = self._held.get(key)
        if held is None:
            return False
        if held.health is not health:
            updated = replace(held, health=health)
            self._held[key] = updated
            self._write(key, updated)
            log.info("registry: %s is %s", key, health.value)
        return True

    # -- views ------------------------------------------------------------------------

    def current(self) -> Mapping[str, Registration]:
        """Every registration the store holds (every replica's), by key."""
        return self.store.current()

    def held(self) -> Mapping[str, Registration]:
        """This replica's registrations, by key (pending writes included)."""
        return dict(self._held)

    def counts(self) -> dict[str, Any]:
        """What the metrics export: ``registered``, ``expired``, ``refused`` (by
        reason), ``current`` (the store's), ``held`` (this replica's),
        ``store_failures`` (write attempts the store refused), ``pending`` (writes
        waiting for the store)."""
        return {
            "pending": len(self._pending),
            "registered": self.registered_total,
            "expired": self.expired_total,
            "refused": dict(self.refused),
            "current": len(self.store.current()),
            "held": len(self._held),
            "store_failures": self.store_failures,
        }

    def view(self) -> dict[str, Any]:
        """``/debug/registrations`` (``views.registrations_json``), with ``bookkeeping``."""
        view = registrations_json(self.replica, self.store.current().values(), self.connected)
        view["bookkeeping"] = self.bookkeeping()
        return view

    def bookkeeping(self) -> dict[str, int]:
        """How many entries the registry's internal maps hold (``held``, ``streams``,
        ``deadlines``, ``pending``), its store's (``store_*``, when the store tells) and
        the event loop's tasks (``tasks``, when called on it): all bounded by what is
        registered and connected now, so a flood of connections that ended leaves them
        as they were before it."""
        sizes = {
            "held": len(self._held),
            "streams": len(self._streams),
            "deadlines": len(self._deadlines),
            "pending": len(self._pending),
        }
        store_sizes = getattr(self.store, "bookkeeping", None)
        if callable(store_sizes):
            sizes.update({f"store_{k}": int(v) for k, v in store_sizes().items()})
        with contextlib.suppress(RuntimeError):  # no running loop
            sizes["tasks"] = len(asyncio.all_tasks())
        return sizes

    def connected(self, key: str) -> bool:
        """True while a stream of this replica holds ``key``."""
        return bool(self._streams.get(key))


def group_key(namespace: str, name: str) -> ResourceKey:
    """The key of WorkloadGroup ``namespace/name``."""
    return ResourceKey("WorkloadGroup", namespace, name)


def _is_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (address.is_unspecified or address.is_multicast)
