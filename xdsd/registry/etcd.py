"""Registrations shared by replicas through etcd (``[registry.etcd]``).

``EtcdStore`` is a ``RegistrationStore`` over a real etcd v3 (3.4 and later), spoken
through etcd's own JSON gateway (``POST /v3/kv/range``, ``/v3/watch`` ...) over aiohttp:
no protobuf stubs, no extra dependency.

Keys and leases. Each registration is the key ``PREFIX/registrations/NS/GROUP/ADDRESS``
with the registration as JSON (``codec``) under this replica's one lease, granted at
start and kept alive every third of its TTL for as long as a session lasts (the read of
the view included, however long it takes). A replica that dies stops keeping it alive:
etcd deletes its registrations one TTL later. A lease found lost (expired while this
replica could not reach etcd) is granted again and this replica's registrations written
again — each only if no other replica took its key meanwhile (a workload that moved).
``delete`` removes a key only while it is under this replica's lease, so a replica whose
workload moved never deletes the new holder's registration, and a disconnected
registration (a workload that left, perhaps for another replica) is written only where no
other replica holds its key. A graceful stop (``close``) does not delete this replica's
registrations — that would take its workloads out of every caller's endpoints until they
register elsewhere, a flap — but hands them, marked disconnected, to a lease of the
grace period, and revokes its own: other replicas keep them until their workloads
register there (taking the keys over) or the grace runs out (the lease lapses).
Two replicas may admit one address at once (each checks what it has seen); the last
write wins; the other keeps its node connected and writes its registration again as soon
as the key is free (deleted, or left disconnected by the winner: ``_reclaim``).

What every replica sees (``current``) is one range of the prefix (in pages, at one
revision) followed by a watch from that revision; a broken watch, a compacted revision
or a watch message beyond the bound starts again from a fresh range. This replica's own
writes are seen at once (an overlay, dropped when the watch has delivered them).

etcd unreachable. The store keeps serving what it last knew plus this replica's own
writes, ``state()`` says since when and why (``/readyz``'s ``degraded`` detail, the
status line, the log; the daemon stays ready: every replica losing etcd at once must
not take the whole mesh's control plane out of its load balancer), ``put`` raises
``StoreUnavailable`` (the registration is kept and written when etcd returns), and the
background task retries with a backoff, then writes what waited and resynchronises.

Bounds: ``max_keys`` registrations read (the first by key; beyond, skipped and said in
``state``) and ``max_keys + max(max_keys, SKIP_MARGIN)`` keys scanned by a range,
``max_value_bytes`` per value (a bigger or malformed value is skipped, logged
and counted), one watch message (``MAX_WATCH_MESSAGE_BYTES``; beyond, a resync), one
response (``MAX_RESPONSE_BYTES``; a range page beyond it is asked again with fewer keys,
a single key beyond it skipped), and a timeout on every request (the settings'
``timeout``; the watch stream has it for connecting, its liveness is the keep-alive's).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import aiohttp

from xdsd.model.registrations import EtcdSettings, Registration
from xdsd.registry import codec
from xdsd.registry.store import StoreState, StoreUnavailable

log = logging.getLogger(__name__)

#: The largest registration value read or written.
MAX_VALUE_BYTES = 64 * 1024
#: Keys per page of the initial range.
RANGE_PAGE = 100
#: The largest response read (a page of the largest values, base64, with room).
MAX_RESPONSE_BYTES = RANGE_PAGE * (MAX_VALUE_BYTES * 4 // 3 + 1024) + 65536
#: Malformed or too big values a range reads past, beyond ``max_keys`` registrations:
#: ``max(max_keys, SKIP_MARGIN)``. Then it stops: the rest is not read (``state`` says so).
SKIP_MARGIN = 1000
#: The largest single watch message (events of one revision batch); beyond: a resync.
MAX_WATCH_MESSAGE_BYTES = 32 << 20
#: Writes at once when this replica's registrations are written again.
FLUSH_CONCURRENCY = 16
#: Requests in flight at once (more wait their turn; the timeout counts from sending).
MAX_IN_FLIGHT = 32
#: Retry backoff after a failure: first and longest wait (seconds).
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
#: The counters ``counts`` keeps (the metric's ``event`` label).
EVENTS = (
    "unreachable",
    "resync",
    "lease_granted",
    "lease_lost",
    "value_skipped",
    "key_skipped",
    "error",
    "handed_over",
    "lease_left",
)
#: The longest a graceful stop spends handing registrations over (``close``).
HANDOVER_SECONDS = 3.0


class EtcdError(Exception):
    """A request etcd did not answer (unreachable, timed out) or answered with an error."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class AnswerTooBig(EtcdError):
    """An answer over ``MAX_RESPONSE_BYTES`` (etcd reachable; the request asked too much)."""


class _Resync(Exception):
    """The view must be read again by a fresh range (etcd is reachable)."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: Any) -> bytes:
    return base64.b64decode(text) if isinstance(text, str) else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class Gateway:
    """etcd's JSON gateway over one aiohttp session: requests go to one endpoint at a
    time, the next one after a failure to reach it."""

    def __init__(self, endpoints: Iterable[str], timeout: float, session: aiohttp.ClientSession):
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self.session = session
        self._at = 0
        self._turns = asyncio.Semaphore(MAX_IN_FLIGHT)

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._at]

    def _failed(self) -> None:
        self._at = (self._at + 1) % len(self.endpoints)

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``; the answer's JSON. Raises EtcdError."""
        async with self._turns:
            return await self._call(path, body)

    async def _call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        endpoint = self.endpoint
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self.session.post(endpoint + path, json=body, timeout=timeout) as resp:
                raw = bytearray()
                async for chunk in resp.content.iter_any():
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        break
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self._failed()
            raise EtcdError(f"{endpoint}: {_reason(e)}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise AnswerTooBig(f"{endpoint}{path}: answer over {MAX_RESPONSE_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._failed()
            raise EtcdError(f"{endpoint}{path}: HTTP {status}, not JSON") from None
        if not isinstance(data, dict):
            raise EtcdError(f"{endpoint}{path}: HTTP {status}, not an object")
        if status != 200 or "error" in data:
            message = data.get("message") or data.get("error") or f"HTTP {status}"
            raise EtcdError(f"{endpoint}{path}: {message}", int(data.get("code", 0) or 0))
        return data

    async def watch(self, body: Mapping[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The messages of one watch stream (``/v3/watch``), each a parsed JSON line.
        Ends by raising: EtcdError when the stream breaks or ends, _Resync when a message
        is over ``MAX_WATCH_MESSAGE_BYTES``."""
        endpoint = self.endpoint
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_connect=self.timeout)
        try:
            async with self.session.post(
                endpoint + "/v3/watch", json=body, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    raise EtcdError(f"{endpoint}/v3/watch: HTTP {resp.status}")
                buffer = bytearray()
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while (end := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:end])
                        del buffer[: end + 1]
                        if line.strip():
                            yield _message(line)
                    if len(buffer) > MAX_WATCH_MESSAGE_BYTES:
                        raise _Resync(f"a watch message over {MAX_WATCH_MESSAGE_BYTES} bytes")
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self._failed()
            raise EtcdError(f"{endpoint}/v3/watch: {_reason(e)}") from None
        raise EtcdError(f"{endpoint}/v3/watch: the stream ended")


def _message(line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EtcdError("watch: a message that is not JSON") from None
    if not isinstance(data, dict):
        raise EtcdError("watch: a message that is not an object")
    return data


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


class EtcdStore:
    """The shared store (see the module doc). ``replica`` is this daemon's name among
    replicas (written in each registration it holds); ``max_keys`` bounds what is read
    and what this replica may hold; ``handover`` is how long a graceful stop leaves its
    registrations to the others (the registry's grace, seconds; 0: they leave at once);
    ``clock`` gives wall-clock seconds (``state``, the handover's ``disconnected``)."""

    def __init__(
        self,
        settings: EtcdSettings,
        replica: str,
        *,
        max_keys: int = 10_000,
        max_value_bytes: int = MAX_VALUE_BYTES,
        handover: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.endpoints:
            raise ValueError("etcd settings without endpoints")
        self.settings = settings
        self.replica = replica
        self.max_keys = max_keys
        self.max_value_bytes = max_value_bytes
        self.clock = clock
        #: Seconds a graceful stop leaves this replica's registrations to the others
        #: (the registry's grace; ``close``).
        self.handover = handover
        base = settings.prefix.rstrip("/") + "/registrations/"
        self._prefix = base.encode()
        self._end = prefix_end(self._prefix)
        self._ttl = max(1, round(settings.lease_ttl.total_seconds()))
        self._timeout = settings.timeout.total_seconds()
        #: Events since start (``EVENTS``), for the metrics.
        self.counts: Counter[str] = Counter()
        self._gateway: Gateway | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_change: Callable[[], None] = lambda: None
        self._closed = False
        self._lease = 0
        self._connected = False
        self._reason = "not started"
        self._since = clock()
        self._notice = ""
        self._synced = asyncio.Event()
        self._in_sync = False  # this session has read the view
        self._trouble = asyncio.Event()
        self._wake = asyncio.Event()  # the writer has something to do
        # what etcd holds, as last read: key → (mod revision, registration)
        self._view: dict[str, tuple[int, Registration]] = {}
        self._revision = 0
        # this replica's writes not yet seen in the view: key → (revision or None while
        # unwritten, registration or None for a delete)
        self._overlay: dict[str, tuple[int | None, Registration | None]] = {}
        self._own: dict[str, Registration] = {}
        self._unsynced: set[str] = set()  # own puts etcd has not taken yet
        self._restoring: set[str] = set()  # own keys to write again after a lost lease
        self._doomed: set[str] = set()  # own deletes etcd has not taken yet
        self._reclaiming: set[str] = set()  # own connected keys to write again (_reclaim)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._merged: Mapping[str, Registration] | None = None
        self._delivered: Mapping[str, Registration] = MappingProxyType({})
        self._notify_pending = False

    # -- the protocol --------------------------------------------------------------------

    async def start(self, on_change: Callable[[], None]) -> None:
        """Connect and read what etcd holds, waiting at most the request timeout (twice)
        for it; etcd unreachable is not an error: the background task keeps trying and
        ``state`` says so."""
        self._on_change = on_change
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT + 4)
        )
        self._gateway = Gateway(self.settings.endpoints, self._timeout, self._session)
        self._task = asyncio.create_task(self._run(), name="etcd-store")
        self._task.add_done_callback(self._ended)
        try:
            await asyncio.wait_for(self._synced.wait(), 2 * self._timeout)
        except TimeoutError:
            log.warning("registrations: etcd not reached yet: %s", self._reason)

    async def close(self) -> None:
        """Stop the background task and hand this replica's registrations over (a graceful
        stop, see ``_hand_over``): they stay for the other replicas until their workloads
        register again elsewhere or ``handover`` seconds pass, then etcd deletes them with
        the handover lease. Without registrations, or with ``handover`` 0, the lease is
        revoked (they leave at once). etcd unreachable, or the handover not finished in
        ``HANDOVER_SECONDS``: the lease is left to lapse one TTL later. No lease outlives
        its TTL: none is leaked."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease and self._gateway is not None:
            try:
                async with asyncio.timeout(HANDOVER_SECONDS):
                    handed = await self._hand_over()
                    if handed:
                        await self._gateway.call("/v3/lease/revoke", {"ID": str(self._lease)})
            except (EtcdError, TimeoutError) as e:
                handed = False
                log.warning(
                    "registrations: lease %x left to expire in %ss: %s",
                    self._lease,
                    self._ttl,
                    _reason(e),
                )
            if not handed:
                self.counts["lease_left"] += 1
            self._lease = 0
        if self._session is not None:
            await self._session.close()

    async def _hand_over(self) -> bool:
        """Move this replica's registrations to a lease of ``handover`` seconds, each marked
        disconnected and only while it is under this replica's lease (one another replica
        took is its now); True when every one was moved or taken (the old lease can go).
        Raises EtcdError."""
        own = dict(self._own)
        if not own or self.handover <= 0:
            return True
        ttl = max(1, math.ceil(self.handover))
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = int(answer.get("ID", 0))
        if not lease:
            raise EtcdError(f"handover lease not granted: {answer.get('error', answer)}")
        now = self.clock()

        async def move(key: str, registration: Registration) -> bool:
            if not registration.disconnected:
                registration = replace(registration, disconnected=now)
            raw = _b64(self._etcd_key(key))
            value = _b64(codec.encode(registration))
            mine = {"key": raw, "target": "LEASE", "result": "EQUAL", "lease": str(self._lease)}
            put = {"request_put": {"key": raw, "value": value, "lease": str(lease)}}
            moved = await self._call("/v3/kv/txn", {"compare": [mine], "success": [put]})
            return bool(moved.get("succeeded"))

        moved = 0
        items = sorted(own.items())
        while items:
            batch, items = items[:MAX_IN_FLIGHT], items[MAX_IN_FLIGHT:]
            moved += sum(await asyncio.gather(*(move(k, r) for k, r in batch)))
        self.counts["handed_over"] += moved
        log.info(
            "registrations: %d of this replica's %d registrations handed to lease %x: kept "
            "%ss for the other replicas unless their workloads register there",
            moved,
            len(own),
            lease,
            ttl,
        )
        return True

    async def put(self, registration: Registration) -> None:
        """Write ``registration`` under this replica's lease: a connected one always (it
        holds it from now on, even if another replica did), a disconnected one only
        unless another replica holds the key now (its workload moved there: this replica
        lets it go, ``_put_unless_taken``). Raises StoreUnavailable when etcd cannot take it
        now: it is kept (and seen by this replica) and written when etcd returns — or,
        without keeping it, when this replica already holds ``max_keys`` registrations.
        Raises ValueError for a registration whose value is over ``max_value_bytes``."""
        key = registration.key
        value = codec.encode(registration)
        if len(value) > self.max_value_bytes:
            raise ValueError(f"registration {key}: over {self.max_value_bytes} bytes")
        if key not in self._own and len(self._own) >= self.max_keys:
            raise StoreUnavailable(f"this replica holds {self.max_keys} registrations already")
        if self._closed:
            raise StoreUnavailable("the store is closed")
        self._own[key] = registration
        self._restoring.discard(key)
        self._doomed.discard(key)
        async with self._locked(key):
            if self._own.get(key) is not registration:
                return  # superseded while waiting: the newer write carries on
            if not (self._connected and self._lease):
                self._unsynced.add(key)
                self._overlaid(key, None, registration)
                raise StoreUnavailable(self._unreachable_text())
            try:
                if registration.disconnected:
                    # a workload that left takes no key over: it may have moved
                    await self._put_unless_taken(key, registration)
                    self._unsynced.discard(key)
                    return
                revision = await self._write(key, value)
            except EtcdError as e:
                self._unsynced.add(key)
                self._overlaid(key, None, registration)
                self._troubled()
                raise StoreUnavailable(str(e)) from None
            self._unsynced.discard(key)
            self._overlaid(key, revision, registration)

    async def delete(self, key: str) -> None:
        """Remove this replica's registration ``key`` — from etcd only while it is under
        this replica's lease (another replica that took it keeps it). etcd unreachable:
        it goes when etcd returns (or with the lease)."""
        if self._own.pop(key, None) is None:
            return
        self._unsynced.discard(key)
        self._restoring.discard(key)
        async with self._locked(key):
            if key in self._own:
                return  # put again while waiting
            if not (self._connected and self._lease):
                self._doom(key)
                return
            try:
                revision = await self._delete_if_held(key)
            except EtcdError:
                self._doom(key)
                self._troubled()
                return
            self._doomed.discard(key)
            if revision:
                self._overlaid(key, revision, None)
            else:
                self._unlaid(key)

    def current(self) -> Mapping[str, Registration]:
        """Every replica's registrations, as last read from etcd, with this replica's own
        writes over them (a read-only mapping)."""
        if self._merged is None:
            merged = {key: registration for key, (_, registration) in self._view.items()}
            for key, (_, registration) in self._overlay.items():
                if registration is None:
                    merged.pop(key, None)
                else:
                    merged[key] = registration
            self._merged = MappingProxyType(merged)
        return self._merged

    def state(self) -> StoreState:
        """Connected (with a notice when registrations were skipped), or why not and
        since when."""
        if self._connected:
            return StoreState(True, self._notice)
        return StoreState(False, self._unreachable_text())

    def held(self) -> Mapping[str, Registration]:
        """The registrations this replica holds (its own writes)."""
        return MappingProxyType(dict(self._own))

    def bookkeeping(self) -> dict[str, int]:
        """How many entries the store's own maps hold (the view aside): this replica's
        registrations (``own``), writes not yet seen through the watch (``overlay``),
        per-key locks (``locks``) and writes waiting for etcd (``waiting``)."""
        return {
            "own": len(self._own),
            "overlay": len(self._overlay),
            "locks": len(self._locks),
            "waiting": len(self._unsynced) + len(self._doomed) + len(self._restoring),
        }

    @property
    def lease(self) -> int:
        """This replica's lease id (0 while it has none)."""
        return self._lease

    # -- the background task -------------------------------------------------------------

    async def _run(self) -> None:
        """Sessions, one after another: the lease checked (or granted again), then, with
        the lease kept alive all along, what waits written, the view read, and the watch
        and the writer run until a failure; then wait (backoff) and start again. Never
        ends but by cancellation."""
        backoff = BACKOFF_MIN
        while True:
            self._in_sync = False
            try:
                await self._lease_checked()
                await self._session_tasks()
            except asyncio.CancelledError:
                raise
            except _Resync as e:
                self.counts["resync"] += 1
                log.info("registrations: reading etcd again: %s", e)
                await asyncio.sleep(BACKOFF_MIN)
                continue
            except EtcdError as e:
                self._unreachable(str(e))
            except Exception as e:
                self.counts["error"] += 1
                log.exception("registrations: the etcd store failed; trying again")
                self._unreachable(f"internal error: {e!r}")
            if self._in_sync:
                backoff = BACKOFF_MIN
            delay = backoff * random.uniform(0.5, 1.0)
            backoff = min(backoff * 2, BACKOFF_MAX)
            await asyncio.sleep(delay)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("registrations: the etcd store stopped", exc_info=task.exception())

    async def _lease_checked(self) -> None:
        """The lease kept, or granted again (this replica's keys then to be written
        again)."""
        self._trouble.clear()
        if self._lease and await self._keep_alive_once() <= 0:
            self.counts["lease_lost"] += 1
            log.warning(
                "registrations: etcd lease %x lost; writing this replica's %d again",
                self._lease,
                len(self._own),
            )
            self._lease = 0
        if not self._lease:
            self._lease = await self._grant()
            self._restoring |= set(self._own) - self._unsynced

    async def _connect(self) -> None:
        """What waited written, the view read (the lease kept alive meanwhile by the
        session's keep-alive: a read longer than the TTL must not let etcd delete this
        replica's registrations)."""
        await self._flush()
        await self._read_all()
        if not self._connected:
            if self._reason != "not started":
                log.warning(
                    "registrations: etcd reachable again at %s (%d registrations)",
                    self._gateway_endpoint(),
                    len(self.current()),
                )
            self._connected = True
            self._reason = ""
        self._in_sync = True
        self._synced.set()
        self._wake.set()  # writes refused while the view was read: the writer takes them

    async def _synced_then_watch(self) -> None:
        await self._connect()
        await self._watch()

    async def _session_tasks(self) -> None:
        """Run the keep-alive, the read then the watch, and the writer until one of them
        fails."""
        tasks = [
            asyncio.create_task(self._keep_alive()),
            asyncio.create_task(self._synced_then_watch()),
            asyncio.create_task(self._writer()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
        raise EtcdError("a session task ended")

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            if await self._keep_alive_once() <= 0:
                raise _Resync(f"lease {self._lease:x} lost")

    async def _writer(self) -> None:
        """Write what waits when woken (``_wake``): writes made while the view was being
        read, keys to reclaim (``_reclaim``); end the session when a write could not
        reach etcd (``_trouble``): the next one checks the lease and writes what waits."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._trouble.is_set():
                raise EtcdError("a write failed")
            await self._flush()

    def _troubled(self) -> None:
        self._trouble.set()
        self._wake.set()

    async def _watch(self) -> None:
        body = {
            "create_request": {
                "key": _b64(self._prefix),
                "range_end": _b64(self._end),
                "start_revision": str(self._revision + 1),
            }
        }
        assert self._gateway is not None
        async with contextlib.aclosing(self._gateway.watch(body)) as messages:
            async for message in messages:
                if "error" in message:
                    raise EtcdError(f"watch: {message['error']}")
                result = message.get("result")
                if not isinstance(result, dict):
                    continue
                if result.get("compact_revision") or result.get("canceled"):
                    compacted = result.get("compact_revision")
                    why = f"compacted to {compacted}" if compacted else "canceled"
                    raise _Resync(f"watch {why}: {result.get('cancel_reason', '')}".rstrip(": "))
                events = result.get("events")
                if isinstance(events, list) and events:
                    self._apply(events)

    # -- requests ------------------------------------------------------------------------

    def _gateway_endpoint(self) -> str:
        return self._gateway.endpoint if self._gateway is not None else ""

    async def _call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._gateway is None:
            raise EtcdError("not started")
        return await self._gateway.call(path, body)

    async def _grant(self) -> int:
        answer = await self._call("/v3/lease/grant", {"TTL": str(self._ttl)})
        lease = int(answer.get("ID", 0))
        if not lease:
            raise EtcdError(f"lease not granted: {answer.get('error', answer)}")
        self.counts["lease_granted"] += 1
        log.info("registrations: etcd lease %x granted (TTL %ss)", lease, self._ttl)
        return lease

    async def _keep_alive_once(self) -> int:
        """The lease's TTL after one keep-alive (0: etcd no longer has it)."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(self._lease)})
        result = answer.get("result", {})
        return int(result.get("TTL", 0)) if isinstance(result, dict) else 0

    def _etcd_key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    async def _write(self, key: str, value: bytes) -> int:
        """Put ``key`` under the lease; its revision."""
        answer = await self._call(
            "/v3/kv/put",
            {"key": _b64(self._etcd_key(key)), "value": _b64(value), "lease": str(self._lease)},
        )
        return _revision(answer)

    async def _delete_if_held(self, key: str) -> int:
        """Delete ``key`` if it is under this replica's lease; the revision of the delete
        (0: nothing deleted)."""
        raw = _b64(self._etcd_key(key))
        answer = await self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": raw, "target": "LEASE", "result": "EQUAL", "lease": str(self._lease)}
                ],
                "success": [{"request_delete_range": {"key": raw}}],
            },
        )
        if not answer.get("succeeded"):
            return 0
        responses = answer.get("responses") or [{}]
        deleted = responses[0].get("response_delete_range", {}).get("deleted", 0)
        return _revision(answer) if int(deleted) else 0

    async def _restore(self, key: str) -> None:
        """Write this replica's ``key`` again after a lost lease, unless another replica
        holds it now (then it is no longer this replica's)."""
        registration = self._own.get(key)
        if registration is not None:
            await self._put_unless_taken(key, registration)

    async def _put_unless_taken(self, key: str, registration: Registration) -> bool:
        """Write ``registration`` under this replica's lease if the key is under it, absent,
        or holds this replica's own registration (written under a lease since lost);
        else another replica holds it now: this replica lets the key go (no longer its
        own, its overlay dropped) and False. Raises EtcdError."""
        raw = _b64(self._etcd_key(key))
        value = _b64(codec.encode(registration))
        put = {"request_put": {"key": raw, "value": value, "lease": str(self._lease)}}
        mine = {"key": raw, "target": "LEASE", "result": "EQUAL", "lease": str(self._lease)}
        answer = await self._call(
            "/v3/kv/txn",
            {"compare": [mine], "success": [put], "failure": [{"request_range": {"key": raw}}]},
        )
        if not answer.get("succeeded"):
            responses = answer.get("responses") or [{}]
            kvs = responses[0].get("response_range", {}).get("kvs") or []
            if not kvs:
                absent = {"key": raw, "target": "VERSION", "result": "EQUAL", "version": "0"}
                answer = await self._call("/v3/kv/txn", {"compare": [absent], "success": [put]})
                holder = None
            else:
                holder = self._decode(key, kvs[0].get("value"), log_skip=False)
                if holder is not None and holder.replica == self.replica:
                    mod = str(kvs[0].get("mod_revision", "0"))
                    same = {"key": raw, "target": "MOD", "result": "EQUAL", "mod_revision": mod}
                    answer = await self._call("/v3/kv/txn", {"compare": [same], "success": [put]})
            if not answer.get("succeeded"):
                log.info(
                    "registrations: %s is held by replica %s now; this replica lets it go",
                    key,
                    holder.replica if holder else "(another)",
                )
                if self._own.get(key) is registration:
                    self._own.pop(key, None)
                self._unlaid(key)
                return False
        self._overlaid(key, _revision(answer), registration)
        return True

    async def _flush(self) -> None:
        """Write what waits: deletes, then puts etcd did not take, then the keys of a lost
        lease, then the keys to reclaim (each under its key's lock, ``FLUSH_CONCURRENCY``
        at a time)."""
        await self._each(self._doomed, self._flush_delete)
        await self._each(self._unsynced, self._flush_put)
        await self._each(self._restoring, self._flush_restore)
        await self._each(self._reclaiming, self._flush_reclaim)

    async def _each(self, keys: set[str], write: Callable[[str], Awaitable[None]]) -> None:
        pending = sorted(keys)
        while pending:
            batch, pending = pending[:FLUSH_CONCURRENCY], pending[FLUSH_CONCURRENCY:]
            results = await asyncio.gather(*(write(k) for k in batch), return_exceptions=True)
            for key, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                keys.discard(key)

    async def _flush_delete(self, key: str) -> None:
        async with self._locked(key):
            if key in self._own:
                return
            revision = await self._delete_if_held(key)
            if revision:
                self._overlaid(key, revision, None)
            else:
                self._unlaid(key)

    async def _flush_put(self, key: str) -> None:
        async with self._locked(key):
            registration = self._own.get(key)
            if registration is not None and registration.disconnected:
                await self._put_unless_taken(key, registration)
            elif registration is not None:
                revision = await self._write(key, codec.encode(registration))
                self._overlaid(key, revision, registration)

    async def _flush_reclaim(self, key: str) -> None:
        async with self._locked(key):
            registration = self._own.get(key)
            if registration is None or registration.disconnected:
                return
            entry = self._view.get(key)
            if entry is not None and not self._free(entry[1]):
                return  # held by a live node again meanwhile (or already this one's)
            revision = await self._write(key, codec.encode(registration))
            log.info("registrations: %s written again: its node is still connected here", key)
            self._overlaid(key, revision, registration)

    def _free(self, there: Registration | None) -> bool:
        """Whether a key holding ``there`` (None: absent or malformed) is free for this
        replica's connected registration of it: nothing there, or another replica's
        disconnected one (a node that left; this replica's is connected)."""
        return there is None or (there.replica != self.replica and bool(there.disconnected))

    def _reclaim(self, key: str, there: Registration | None, at: int) -> None:
        """etcd holds ``there`` at ``key`` as of revision ``at``: when this replica holds
        a connected registration of it and the key is free (``_free``), write it again
        (the writer task). Two replicas may admit one address at once (each checks what
        it has seen); the last write wins in etcd, and the other replica's node, still
        connected, would be published nowhere once the winner's left: it is written again
        as soon as the key is free."""
        mine = self._own.get(key)
        if mine is None or mine.disconnected or not self._free(there):
            return
        written, value = self._overlay.get(key, (0, None))
        if value is not None and (written is None or written > at):
            return  # this replica's own write is on its way, or later than ``there``
        self._reclaiming.add(key)
        self._wake.set()

    async def _flush_restore(self, key: str) -> None:
        async with self._locked(key):
            await self._restore(key)

    # -- the view ------------------------------------------------------------------------

    async def _read_all(self) -> None:
        """Read every registration under the prefix (pages at one revision) as the new
        view. A page whose answer is over ``MAX_RESPONSE_BYTES`` (big values: etcd takes
        values up to 1.5 MiB by default) is asked again with half the keys, down to one;
        a single key whose answer is still too big is skipped (counted ``value_skipped``)
        by reading its name alone. At most ``max_keys`` registrations are read and
        ``max_keys + max(max_keys, SKIP_MARGIN)`` keys scanned (skipped values count, so a
        flood of junk keys cannot make a read unbounded): beyond, the rest is not read and
        ``state`` says so."""
        revision = total = scanned = skipped = 0
        view: dict[str, tuple[int, Registration]] = {}
        start = self._prefix
        limit = RANGE_PAGE
        most = self.max_keys + max(self.max_keys, SKIP_MARGIN)
        while len(view) < self.max_keys and scanned < most:
            body: dict[str, Any] = {
                "key": _b64(start),
                "range_end": _b64(self._end),
                "limit": str(min(limit, most - scanned)),
            }
            if revision:
                body["revision"] = str(revision)
            try:
                answer = await self._call("/v3/kv/range", body)
            except AnswerTooBig:
                if limit > 1:
                    limit //= 2
                    continue
                answer = await self._call("/v3/kv/range", {**body, "keys_only": True})
                kvs = answer.get("kvs") or []
                if not revision:
                    revision, total = _revision(answer), int(answer.get("count", 0))
                if kvs:
                    raw = _unb64(kvs[0].get("key"))
                    self.counts["value_skipped"] += 1
                    log.warning(
                        "registrations: etcd key %s skipped: its value is over %d bytes",
                        raw[len(self._prefix) :].decode(errors="replace")[:200],
                        MAX_RESPONSE_BYTES,
                    )
                    scanned += 1
                    skipped += 1
                    start = raw + b"\x00"
                if not answer.get("more") or not kvs:
                    break
                continue
            limit = min(RANGE_PAGE, limit * 2)
            if not revision:
                revision, total = _revision(answer), int(answer.get("count", 0))
            kvs = answer.get("kvs") or []
            for kv in kvs:
                if len(view) >= self.max_keys:
                    break
                scanned += 1
                raw = _unb64(kv.get("key"))
                key = raw[len(self._prefix) :].decode(errors="replace")
                registration = self._decode(key, kv.get("value"))
                if registration is not None:
                    view[key] = (int(kv.get("mod_revision", 0)), registration)
                else:
                    skipped += 1
                start = raw + b"\x00"
            if not answer.get("more") or not kvs:
                break
        self._notice = ""
        if total > scanned and (len(view) >= self.max_keys or scanned >= most):
            self.counts["key_skipped"] += total - scanned
            self._notice = (
                f"etcd holds {total} keys under the prefix, more than max_registrations "
                f"({self.max_keys}) allows: {len(view)} registrations read, {skipped} "
                f"values skipped, {total - scanned} keys not read"
            )
            log.error("registrations: %s", self._notice)
        self._view = view
        self._revision = revision
        self._overlay = {
            key: entry
            for key, entry in self._overlay.items()
            if entry[0] is None or entry[0] > revision
        }
        for key in list(self._own) if not self._notice else ():  # a whole view only
            entry = view.get(key)
            self._reclaim(key, entry[1] if entry else None, revision)
        self._changed()

    def _apply(self, events: list[Any]) -> None:
        """Apply watch events (in revision order) to the view."""
        last = self._revision
        for event in events:
            kv = event.get("kv") if isinstance(event, dict) else None
            if not isinstance(kv, dict):
                continue
            raw = _unb64(kv.get("key"))
            if not raw.startswith(self._prefix):
                continue
            key = raw[len(self._prefix) :].decode(errors="replace")
            revision = int(kv.get("mod_revision", 0))
            last = max(last, revision)
            if event.get("type") == "DELETE":
                self._view.pop(key, None)
                self._reclaim(key, None, revision)
                continue
            if key not in self._view and len(self._view) >= self.max_keys:
                self.counts["key_skipped"] += 1
                self._notice = (
                    f"etcd holds more registrations than max_registrations ({self.max_keys})"
                )
                log.error("registrations: %s: %s not read", self._notice, key)
                continue
            registration = self._decode(key, kv.get("value"))
            if registration is None:
                self._view.pop(key, None)
            else:
                self._view[key] = (revision, registration)
            self._reclaim(key, registration, revision)
        self._revision = last
        for key in [k for k, (r, _) in self._overlay.items() if r is not None and r <= last]:
            del self._overlay[key]
        self._changed()

    def _decode(self, key: str, value: Any, *, log_skip: bool = True) -> Registration | None:
        """The registration of ``key``'s value, or None (skipped: logged and counted)."""
        try:
            raw = _unb64(value)
            if len(raw) > self.max_value_bytes:
                raise ValueError(f"over {self.max_value_bytes} bytes")
            registration = codec.decode(raw)
            if registration.key != key:
                raise ValueError(f"the value is registration {registration.key}")
        except ValueError as e:
            if log_skip:
                self.counts["value_skipped"] += 1
                log.warning("registrations: etcd key %s skipped: %s", key[:200], e)
            return None
        return registration

    def _overlaid(self, key: str, revision: int | None, value: Registration | None) -> None:
        """This replica wrote ``value`` for ``key`` at ``revision`` (None: not yet)."""
        if revision is not None and revision <= self._revision:
            self._overlay.pop(key, None)  # the view has it already (or newer)
        else:
            self._overlay[key] = (revision, value)
        self._changed()

    def _unlaid(self, key: str) -> None:
        if self._overlay.pop(key, None) is not None:
            self._changed()

    def _doom(self, key: str) -> None:
        if len(self._doomed) < self.max_keys:  # beyond: the lease takes it
            self._doomed.add(key)
        self._overlaid(key, None, None)

    def _changed(self) -> None:
        """The view or the overlay changed: tell the listener once, soon, if ``current``
        differs from what it was last told."""
        self._merged = None
        if not self._notify_pending:
            self._notify_pending = True
            asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._notify_pending = False
        now = self.current()
        if now == self._delivered:
            return
        self._delivered = now
        try:
            self._on_change()
        except Exception:
            self.counts["error"] += 1
            log.exception("registrations: the store's listener failed")

    # -- state ---------------------------------------------------------------------------

    def _unreachable(self, reason: str) -> None:
        if self._connected or self._reason == "not started":
            self.counts["unreachable"] += 1
            self._since = self.clock()
            log.warning(
                "registrations: etcd unreachable (%s): serving the last known %d registrations",
                reason,
                len(self.current()),
            )
        self._connected = False
        self._reason = reason

    def _unreachable_text(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since))
        return (
            f"etcd unreachable since {since} ({self._reason}): serving the last known "
            f"{len(self.current())} registrations"
        )

    @contextlib.asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        """One write at a time per key (the lock dropped when nobody waits on it)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users > 1:
                self._locks[key] = (lock, users - 1)
            else:
                del self._locks[key]


def _revision(answer: Mapping[str, Any]) -> int:
    header = answer.get("header")
    return int(header.get("revision", 0)) if isinstance(header, dict) else 0
