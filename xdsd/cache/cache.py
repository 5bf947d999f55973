"""``SnapshotCache``: the current snapshot per node class, who watches it, and client status.

How this works: the app translates the mesh once per node class and calls ``set(key,
snapshot)``; the cache keeps the newest snapshot per key and, when its content changed
(some type's version differs), calls every watcher subscribed to that key, synchronously,
with the new snapshot. Watchers are plain callables; a transport's watcher only hands the
snapshot to its stream task (e.g. ``queue.put_nowait``) and must neither block nor raise.
There are no locks, threads or awaits here, so nothing can wait while holding the cache.

Beside the snapshots the cache keeps one ``ClientStatus`` per connected client (and a
bounded number of recently disconnected ones): which node class it belongs to, what it was
sent and what it acknowledged or rejected, per type. Records are frozen; each update
replaces the record, so a reader (the admin server) always sees a consistent one. Time
comes from an injectable ``clock``. An optional ``ClientObserver`` is told of each
response, ACK and rejection as it is recorded (the admin server's metrics count them).

A key is *held* while it has a watcher or a connected client record; when its last holder
lets go, its snapshot is forgotten, so the classes of clients that left (a REST poller
forgotten, a stream closed) cost nothing and show in no metric (``evict_unheld`` forgets
every unheld one at once, for a cap on classes).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Generic, Literal, Protocol, TypeVar

from xdsd.cache.snapshot import Snapshot
from xdsd.resources import TypeUrl, Version

K = TypeVar("K", bound=Hashable)

#: A client's sync state for one type (see ``TypeStatus.state``).
SyncState = Literal["in_sync", "pending", "nacked", "not_applied"]
#: Every ``SyncState``, worst first.
SYNC_STATES: tuple[SyncState, ...] = ("nacked", "not_applied", "pending", "in_sync")

#: Called with the new snapshot of a key it subscribed to.
Watcher = Callable[[Snapshot], None]

_NO_TYPES: Mapping[TypeUrl, TypeStatus] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class NackInfo:
    """The last rejection of a type: which version and nonce, the client's error."""

    version: Version
    nonce: str
    code: int
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """What one client was sent and reported for one type.

    ``nack`` is the last rejection and stays until a newer version is acknowledged.
    ``not_applied`` is set when a REST client did not advance to ``sent_version`` (REST
    cannot carry an error, see ``NotApplied``); it clears on the next acknowledgement.
    """

    sent_version: Version | None = None
    sent_nonce: str = ""
    sent_at: float | None = None
    acked_version: Version | None = None
    acked_at: float | None = None
    nack: NackInfo | None = None
    not_applied: bool = False

    @property
    def state(self) -> SyncState:
        """Where the client stands: ``nacked`` (the last rejection stands),
        ``not_applied`` (REST: the last version served was not taken up), ``in_sync``
        (it acknowledged the last version sent) or ``pending`` (nothing sent yet, or the
        answer to the last response not in yet)."""
        if self.nack is not None:
            return "nacked"
        if self.not_applied:
            return "not_applied"
        if self.sent_version is not None and self.acked_version == self.sent_version:
            return "in_sync"
        return "pending"


_EMPTY_TYPE = TypeStatus()


#: How a client proved who it is (``ClientIdentity.credential``).
CredentialKind = Literal["token", "certificate"]


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The mesh identity xdsd's CA issued to one connected client (``[mesh.ca]``), for
    the operator's views (``/debug/clients``, the status page, ``xdsd status``,
    ``/metrics``): the certificate's SPIFFE id, ``serial`` (hex), ``not_before`` and
    ``not_after`` (aware UTC), how the client proved it (``credential``: an xdsd token
    or its xDS client certificate), the token's id (empty for a certificate), and how
    many certificates this client has been issued on this stream (1 at first, one more
    per renewal or re-issue). Never a key or a token: nothing here is secret."""

    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    credential: CredentialKind
    token_id: str = ""
    issued: int = 1
    #: When the certificate was made (``not_before`` is backdated for clock skew); None:
    #: unknown, ``not_before`` stands in. Its renewal is timed from here.
    issued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """One client (a gRPC stream or a REST poller) as the admin server shows it;
    ``identity`` is the certificate xdsd's CA issued it, if any (``ClientIdentity``)."""

    client_id: str
    node_id: str
    key: Hashable
    transport: str
    connected: bool
    connected_at: float
    disconnected_at: float | None = None
    types: Mapping[TypeUrl, TypeStatus] = field(default_factory=lambda: _NO_TYPES)
    identity: ClientIdentity | None = None
    #: What the client says it is, from its node when the stream opened (e.g. ``envoy
    #: 1.36.2``: ``user_agent_name`` and ``user_agent_build_version``); "" when it says
    #: nothing.
    agent: str = ""

    def type_status(self, type_url: TypeUrl) -> TypeStatus:
        """The status of one type (all empty when nothing happened yet)."""
        return self.types.get(type_url, TypeStatus())


class ClientObserver(Protocol):
    """Told of client events as the cache records them (on the serving thread, once per
    response, ACK or rejection of every client: each call must be cheap and must not
    raise)."""

    def on_sent(self, transport: str, type_url: TypeUrl) -> None:
        """A response of ``type_url`` was sent to a client of ``transport``."""

    def on_ack(self, transport: str, type_url: TypeUrl, latency: float | None) -> None:
        """A client acknowledged ``type_url``; ``latency`` is the seconds since the
        response it answers was sent (None when the ACK answers no response recorded
        here, e.g. a reconnecting client reporting the version it holds)."""

    def on_rejected(self, transport: str, type_url: TypeUrl) -> None:
        """A client rejected a response of ``type_url`` (a NACK; over REST, a version
        it did not apply, counted once per version)."""


class SnapshotCache(Generic[K]):
    """Snapshots by node-class key, watchers per key, and per-client status.

    ``max_disconnected`` bounds how many disconnected client records are kept for
    inspection (oldest dropped first). ``observer`` is told of every response, ACK and
    rejection recorded.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_disconnected: int = 1000,
        observer: ClientObserver | None = None,
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._max_disconnected = max_disconnected
        self._snapshots: dict[K, Snapshot] = {}
        self._watchers: dict[K, list[Watcher]] = {}
        self._clients: dict[str, ClientStatus] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._holders: dict[K, int] = {}  # connected client records per key

    # -- snapshots ---------------------------------------------------------------------

    def set(self, key: K, snapshot: Snapshot) -> bool:
        """Make ``snapshot`` the current one of ``key`` and notify the key's watchers.

        Returns False, keeping the current snapshot and notifying nobody, when the new one
        has the same version for every type (same content). Exceptions raised by a watcher
        propagate: watchers must not raise.
        """
        old = self._snapshots.get(key)
        if old is not None and dict(old.versions) == dict(snapshot.versions):
            return False
        self._snapshots[key] = snapshot
        for watcher in tuple(self._watchers.get(key, ())):
            watcher(snapshot)
        return True

    def get(self, key: K) -> Snapshot | None:
        """The current snapshot of ``key``, None when it has none yet."""
        return self._snapshots.get(key)

    def keys(self) -> tuple[K, ...]:
        """Every key that has a snapshot."""
        return tuple(self._snapshots)

    def held_keys(self) -> tuple[K, ...]:
        """Every key a client holds (``held``), with a snapshot or still waiting for
        one."""
        return tuple(dict.fromkeys([*self._watchers, *self._holders]))

    def discard(self, key: K) -> None:
        """Forget the snapshot of ``key`` (watchers stay and see the next ``set``)."""
        self._snapshots.pop(key, None)

    def held(self, key: K) -> bool:
        """True while a client holds ``key``: a watcher (a stream) or a connected client
        record (a REST poller the transport still remembers)."""
        return key in self._watchers or key in self._holders

    def evict_unheld(self) -> int:
        """Forget the snapshot of every key no client holds (see ``held``); returns how
        many were forgotten."""
        gone = [key for key in self._snapshots if not self.held(key)]
        for key in gone:
            del self._snapshots[key]
        return len(gone)

    def _release(self, key: K) -> None:
        """One holder of ``key`` let go: when it was the last, the key's snapshot is
        forgotten (the next client of the class builds it again), so classes made by
        departed clients do not accumulate."""
        if not self.held(key):
            self._snapshots.pop(key, None)

    def subscribe(self, key: K, watcher: Watcher) -> Snapshot | None:
        """Call ``watcher`` with each new snapshot of ``key`` from now on.

        Returns the current snapshot (None when the key has none yet), so the caller can
        start from it without a window in which a change is missed. A key needs no
        snapshot to be watched.
        """
        self._watchers.setdefault(key, []).append(watcher)
        return self._snapshots.get(key)

    def unsubscribe(self, key: K, watcher: Watcher) -> None:
        """Stop calling ``watcher`` for ``key`` (a watcher that was not subscribed is
        ignored, so this is safe in a ``finally``)."""
        watchers = self._watchers.get(key)
        if watchers is None:
            return
        try:
            watchers.remove(watcher)
        except ValueError:
            return
        if not watchers:
            del self._watchers[key]
            self._release(key)

    def watcher_count(self, key: K | None = None) -> int:
        """How many watchers ``key`` has (all keys when None): leaks show here."""
        if key is not None:
            return len(self._watchers.get(key, ()))
        return sum(len(w) for w in self._watchers.values())

    # -- client status -----------------------------------------------------------------

    def open_client(
        self, client_id: str, *, node_id: str, key: K, transport: str, agent: str = ""
    ) -> None:
        """Start the record of a connected client (replacing any old one of that id); it
        holds ``key`` until closed or replaced. ``agent`` is what the client says it is
        (``ClientStatus.agent``)."""
        self._gone.pop(client_id, None)
        old = self._clients.get(client_id)
        self._clients[client_id] = ClientStatus(
            client_id, node_id, key, transport, True, self._clock(), agent=agent
        )
        self._holders[key] = self._holders.get(key, 0) + 1
        if old is not None and old.connected:
            self._let_go(old.key)  # type: ignore[arg-type]

    def close_client(self, client_id: str) -> None:
        """Mark a client disconnected; its record is kept for a while, then dropped."""
        status = self._clients.get(client_id)
        if status is None or not status.connected:
            return
        self._clients[client_id] = replace(status, connected=False, disconnected_at=self._clock())
        self._let_go(status.key)  # type: ignore[arg-type]
        self._gone[client_id] = None
        while len(self._gone) > self._max_disconnected:
            oldest, _ = self._gone.popitem(last=False)
            self._clients.pop(oldest, None)

    def _let_go(self, key: K) -> None:
        count = self._holders.get(key, 0) - 1
        if count > 0:
            self._holders[key] = count
            return
        self._holders.pop(key, None)
        self._release(key)

    def record_identity(self, client_id: str, identity: ClientIdentity | None) -> None:
        """The client now holds ``identity`` (issued, renewed or re-issued; None: none).
        A client not recorded (or no longer connected) is ignored."""
        status = self._clients.get(client_id)
        if status is None or not status.connected:
            return
        self._clients[client_id] = replace(status, identity=identity)

    def client(self, client_id: str) -> ClientStatus | None:
        """The record of one client."""
        return self._clients.get(client_id)

    def clients(self) -> tuple[ClientStatus, ...]:
        """Every record, connected and recently disconnected, in the order opened."""
        return tuple(self._clients.values())

    def record_sent(self, client_id: str, type_url: TypeUrl, version: Version, nonce: str) -> None:
        """A response of ``version`` with ``nonce`` was sent to the client."""
        status = self._clients.get(client_id)
        if status is None:
            return
        t = status.types.get(type_url) or _EMPTY_TYPE
        self._put(
            status,
            type_url,
            TypeStatus(
                version, nonce, self._clock(), t.acked_version, t.acked_at, t.nack, t.not_applied
            ),
        )
        if self._observer is not None:
            self._observer.on_sent(status.transport, type_url)

    def record_ack(self, client_id: str, type_url: TypeUrl, version: Version, nonce: str) -> None:
        """The client applied ``version``. Clears ``not_applied``, and the last NACK when
        ``version`` is not the rejected one. With no ``nonce`` and nothing sent yet (a
        client saying on a new stream, or a new poller, what it already holds, as after
        xdsd restarted), ``version`` also counts as sent: the client is in sync with it
        until a response that follows (when it is not the current version) replaces it."""

        status = self._clients.get(client_id)
        if status is None:
            return
        t = status.types.get(type_url) or _EMPTY_TYPE
        nack = t.nack if t.nack is not None and t.nack.version == version else None
        now = self._clock()
        sent = t.sent_version
        if sent is None and not nonce:
            sent = version
        self._put(
            status,
            type_url,
            TypeStatus(sent, t.sent_nonce, t.sent_at, version, now, nack),
        )
        if self._observer is not None:
            sent_at = t.sent_at
            answers = sent_at is not None and t.sent_nonce == nonce and t.sent_version == version
            latency = now - sent_at if answers and sent_at is not None else None
            self._observer.on_ack(status.transport, type_url, latency)

    def record_nack(
        self,
        client_id: str,
        type_url: TypeUrl,
        version: Version,
        nonce: str,
        code: int,
        message: str,
    ) -> bool:
        """The client rejected ``version`` (sent with ``nonce``) with ``code``/``message``.

        Returns True when this is news: not the same rejection of the same version as the
        last one recorded (so the caller logs each rejection once).
        """
        status = self._clients.get(client_id)
        if status is None:
            return False
        last = status.type_status(type_url).nack
        news = last is None or (last.version, last.message) != (version, message)
        self._update(
            client_id,
            type_url,
            lambda t, now: replace(t, nack=NackInfo(version, nonce, code, message, now)),
        )
        if self._observer is not None:
            self._observer.on_rejected(status.transport, type_url)
        return news

    def record_not_applied(self, client_id: str, type_url: TypeUrl, version: Version) -> bool:
        """A REST client did not advance to ``version``, which it was served. Returns True
        when the flag was not already set."""
        status = self._clients.get(client_id)
        if status is None:
            return False
        news = not status.type_status(type_url).not_applied
        self._update(client_id, type_url, lambda t, _now: replace(t, not_applied=True))
        if news and self._observer is not None:
            self._observer.on_rejected(status.transport, type_url)
        return news

    def _update(
        self,
        client_id: str,
        type_url: TypeUrl,
        change: Callable[[TypeStatus, float], TypeStatus],
    ) -> None:
        status = self._clients.get(client_id)
        if status is None:
            return
        self._put(status, type_url, change(status.type_status(type_url), self._clock()))

    def _put(self, status: ClientStatus, type_url: TypeUrl, new: TypeStatus) -> None:
        """Replace ``status`` with a copy whose ``type_url`` entry is ``new``.

        Runs for every response and every ACK of every client, so it builds the record
        directly rather than through ``dataclasses.replace`` (about 4x cheaper).
        """
        types = dict(status.types)
        types[type_url] = new
        self._clients[status.client_id] = ClientStatus(
            status.client_id,
            status.node_id,
            status.key,
            status.transport,
            status.connected,
            status.connected_at,
            status.disconnected_at,
            MappingProxyType(types),
            status.identity,
            status.agent,
        )
