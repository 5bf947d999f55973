"""``DeltaStream``: the incremental (delta) xDS protocol for one stream, without I/O.

How this works: a transport makes one ``DeltaStream`` per delta gRPC stream (ADS, or a
per-type service with its ``type_url``) and feeds it every ``DeltaDiscoveryRequest`` it
reads (``on_request``) and every new snapshot of the client's node class
(``on_snapshot``); both return the events to act on, in order (``Ack``/``Nack`` to
record, ``DeltaResponse``s to send). Client protocol errors raise ``ProtocolError``.

Per type the stream keeps the subscription (wildcard flag and names) and what the client
holds, by name, as far as the stream knows: the per-resource version it was last sent
(a content hash: ``resource_version``), or what the first request's
``initial_resource_versions`` said it had after a reconnect. Rules
(``docs/protocol.md``, rules 14-19):

- Every request's subscribe and unsubscribe lists are applied; there is no stale-nonce
  drop. A request whose ``response_nonce`` is the outstanding response's is its ACK (or
  NACK, with ``error_detail``); other nonces only carry subscription changes.
- A response carries the subscribed resources whose version differs from what the client
  holds, and in ``removed_resources`` the names the client holds that are gone or no longer
  subscribed, and the subscribed names that do not exist (once each, so the client stops
  waiting for them). No name is both added and removed in one response (Envoy rejects
  such a response whole); ``disjoint`` guards every response.
- A NACKed response leaves its content recorded as held, so it is not sent again until it
  changes; its resources are recorded as rejected, by name (``rejected``, and named in the
  NACK event's message), until a later version of each is ACKed.
- The first response to a wildcard subscription is sent even when empty, unless the
  client resumed (said what it holds) and holds exactly what it would be sent.
- One response per type is outstanding at a time. On ADS, types are answered in push order
  (CDS, EDS, LDS, RDS, SDS); a CDS response that adds or changes clusters holds LDS and RDS
  until it is answered and makes those clusters' assignments due again (Envoy warms a
  cluster until it gets one). A removed cluster is announced removed only once no listener
  or route configuration the client holds references it.
- A type whose snapshot version is the one what was due was last worked out for, with no
  subscription change since, has nothing due and is not looked at again (a route edit
  costs no pass over every cluster per client).
- VHDS (``VirtualHost``, ADS only, after RDS and held like it while clusters warm): each
  subscribed name is an alias ``ROUTE_CONFIG/HOST`` resolved against the snapshot
  (``vhosts.VirtualHostIndex``; a virtual host's own name resolves to itself) and kept
  by alias: the virtual host it resolves to is sent, with the aliases now due, when the
  client does not hold its version under that alias; an alias that resolves to nothing
  is answered once as a resource of that name with no content, unless that name is
  announced removed in the same response (an alias ``CONFIG/FQDN:PORT`` is also the
  name of the virtual host it resolves to: when that virtual host leaves, its removal
  answers the alias, which stays counted as absent); a name without ``/``
  (Envoy's subscription to a route configuration's namespace) gets a response, empty if
  nothing else is due, so that Envoy's VHDS starts. Subscribing again to a name already
  subscribed (Envoy asks again when a host still has no virtual host) answers it again.
  Envoy does not send those namespace names, though: its VHDS subscription for a route
  configuration matches by namespace locally and waits (its listeners warming, 15 s by
  default) until a response carries a name in that namespace. So every route
  configuration with a ``vhds`` source the client is sent (or holds after a reconnect)
  is *started* once, by the next VHDS response after the RDS one: it announces
  ``ROUTE_CONFIG/`` removed (a name no virtual host has; removing it changes nothing in
  Envoy but completes that subscription's first fetch). A configuration that leaves
  and comes back is started again.
  On a reconnect, an alias whose virtual host the client says it holds at the current
  version (``initial_resource_versions``, by the virtual host's name) is not sent again.
  A virtual host no held alias resolves to any more is announced removed by its name
  (one the client said it holds on a reconnect too).
  Envoy subscribes an alias per distinct Host header and never unsubscribes, so the
  aliases are a memory bound, not a failure: the stream keeps them in ask order (asking
  again makes an alias the most recent) and beyond ``MAX_VIRTUAL_HOST_NAMES`` forgets
  the least recently asked ones, first those that resolve to no virtual host, then
  the others. A forgotten alias is as if never asked: a virtual host no remaining alias
  resolves to is announced removed (Envoy asks again at its next request for that host),
  and asking again is answered like a new alias. Names without ``/`` are never
  forgotten. Unsubscribing forgets an alias at once. A name longer than
  ``MAX_ALIAS_LENGTH`` characters is malformed (INVALID_ARGUMENT).
- Every type (VHDS's names without ``/`` included): more than ``MAX_SUBSCRIBED_NAMES``
  names subscribed, or said to be held on a reconnect, ends the stream with
  RESOURCE_EXHAUSTED (a hostile client: real meshes stay far below).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import islice

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import (
    DELTA_ADS_TYPES,
    SERVED_TYPES,
    WILDCARD,
    Ack,
    DeltaResponse,
    Nack,
    ProtocolError,
    clusters_referenced,
    requested_type,
    resource_version,
    trim_node,
)
from xdsd.protocol.vhosts import (
    MAX_ALIAS_LENGTH,
    MAX_VIRTUAL_HOST_NAMES,
    index_of,
    vhds_configs,
)
from xdsd.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    VIRTUAL_HOST,
    WILDCARD_TYPES,
    Resource,
    TypeUrl,
    Version,
)

DeltaEvent = DeltaResponse | Ack | Nack
#: How many names of one type a stream may be subscribed to (or say it holds when it
#: reconnects). A mesh of 10,000 services with subsets subscribes some 30,000 EDS names;
#: 2**18 leaves room for ten times that (names of real meshes are under 256 characters:
#: some 50 MB per type at most) and stops a client that would hold millions.
MAX_SUBSCRIBED_NAMES = 1 << 18
#: The order a delta ADS stream answers types in: RDS's virtual hosts right after it.
_AFTER_ROUTE = PUSH_ORDER.index(ROUTE) + 1
_DELTA_ORDER = (*PUSH_ORDER[:_AFTER_ROUTE], VIRTUAL_HOST, *PUSH_ORDER[_AFTER_ROUTE:])
#: Types that wait while clusters warm (they name clusters).
_NAMING_CLUSTERS = (LISTENER, ROUTE, VIRTUAL_HOST)


@dataclass(slots=True)
class _DeltaType:
    """Everything a delta stream knows about one type (mutable, private)."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # name → version the client holds
    sent: dict[str, Resource] = field(default_factory=dict)  # what was sent, by name
    dropped: set[str] = field(default_factory=set)  # unsubscribed: announce removed
    absent: set[str] = field(default_factory=set)  # announced as not existing
    responded: bool = False
    resumed: bool = False  # the first request said what the client holds (a reconnect)
    confirmed: bool = False  # that holding was reported as acknowledged
    nonce: str = ""  # the outstanding response's nonce ("": none outstanding)
    in_flight: dict[str, str] = field(default_factory=dict)  # its resources: name → version
    rejected: dict[str, str] = field(default_factory=dict)  # NACKed: name → version
    version: str = ""  # its system version
    updates_in_flight: bool = False  # CDS: the outstanding response adds or changes clusters
    vhosts: set[str] = field(default_factory=set)  # VHDS: virtual hosts the client holds
    asked: set[str] = field(default_factory=set)  # VHDS: aliases asked for after the first
    # VHDS: the aliases (names with "/") in ask order, least recently asked first
    order: dict[str, None] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)  # VHDS: route configurations started
    # The type's snapshot version when what is due was last worked out, and nothing that
    # decides it (subscription, holding) changed since: nothing is due while the version
    # stays ("": work it out). Saves a pass over every resource per client per push.
    clean: str = ""
    keeping: bool = False  # CDS: removed clusters not yet announced (still referenced)


class DeltaStream:
    """The protocol state of one delta stream: ADS when ``type_url`` is None, else the
    per-type stream of ``type_url``. Not thread-safe; one stream, one task."""

    def __init__(self, type_url: TypeUrl | None = None, snapshot: Snapshot | None = None) -> None:
        if type_url is not None and type_url not in SERVED_TYPES:
            raise ValueError(f"no delta service for type {type_url!r}")
        self._type_url = type_url
        self._snapshot = snapshot
        self._node: base_pb2.Node | None = None
        self._types: dict[TypeUrl, _DeltaType] = {}
        self._counter = 0

    @property
    def ads(self) -> bool:
        """True for an aggregated stream carrying every type."""
        return self._type_url is None

    @property
    def node(self) -> base_pb2.Node | None:
        """The client's node from its first request, trimmed to the identifying fields
        (``trim_node``); None before the first request."""
        return self._node

    def rejected(self, type_url: TypeUrl) -> dict[str, str]:
        """The resources of ``type_url`` the client NACKed and that were not sent again
        since (name → the rejected version); a resource leaves when its next version is
        ACKed."""
        state = self._types.get(type_url)
        return dict(state.rejected) if state is not None else {}

    def held(self, type_url: TypeUrl) -> dict[str, str]:
        """What the client holds of ``type_url``, by name: the version (a copy)."""
        state = self._types.get(type_url)
        return dict(state.held) if state is not None else {}

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaEvent]:
        """Process one request: its ACK/NACK, its subscription changes, what to send now.

        Raises ProtocolError (INVALID_ARGUMENT) when the first request has no node, when an
        ADS request has no type URL, when a per-type stream is asked for another type, or
        when the type is not one this server serves.
        """
        if self._node is None:
            if not request.HasField("node"):
                raise ProtocolError("INVALID_ARGUMENT", "the first request must carry node")
            self._node = trim_node(request.node)
        type_url = self._type_of(request)
        events: list[DeltaEvent] = []
        state = self._types.get(type_url)
        again = state is not None  # a later request: VHDS names subscribed again are due
        vhds = type_url == VIRTUAL_HOST
        if state is None:
            _check_count(type_url, len(request.initial_resource_versions))
            state = self._types[type_url] = _DeltaType()
            state.held.update(request.initial_resource_versions)
            state.resumed = bool(request.initial_resource_versions)
            if vhds:
                # what it holds and no remaining alias resolves to is announced removed
                state.vhosts = set(request.initial_resource_versions)
            if type_url in WILDCARD_TYPES and not request.resource_names_subscribe:
                state.wildcard = True  # the legacy wildcard: a first request naming nothing
        elif state.nonce and request.response_nonce == state.nonce:
            events.append(_answer(type_url, state, request))
            if request.HasField("error_detail"):
                state.rejected.update(state.in_flight)
            else:
                for name in state.in_flight:
                    state.rejected.pop(name, None)
            state.nonce = ""
            state.updates_in_flight = False
        if request.resource_names_subscribe or request.resource_names_unsubscribe:
            state.clean = ""
        for name in request.resource_names_subscribe:
            if name == WILDCARD and not vhds:
                state.wildcard = True
            else:
                if vhds:
                    _check_alias(name)
                    if again:
                        state.absent.discard(name)
                        state.held.pop(name, None)
                        state.asked.add(name)
                    if "/" in name:
                        state.order.pop(name, None)  # asked again: the most recent
                        state.order[name] = None
                state.names.add(name)
                state.dropped.discard(name)
        if vhds and len(state.order) > MAX_VIRTUAL_HOST_NAMES:
            self._forget_aliases(state, len(state.order) - MAX_VIRTUAL_HOST_NAMES)
        _check_count(type_url, len(state.names))
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
                continue
            state.names.discard(name)
            state.absent.discard(name)
            if name in state.held or name in state.sent:
                state.dropped.add(name)
            if vhds:
                state.asked.discard(name)
                state.order.pop(name, None)
        events.extend(self._push())
        snap = self._snapshot
        if state.resumed and not state.responded and not state.confirmed and snap is not None:
            # A reconnect holding exactly what it would be sent: nothing goes out, and
            # what it holds counts as acknowledged (its status is in sync, not pending).
            state.confirmed = True
            events.append(Ack(type_url, snap.version(type_url), ""))
        return events

    def on_snapshot(self, snapshot: Snapshot) -> list[DeltaResponse]:
        """Serve from ``snapshot`` from now on; returns the responses it makes due."""
        self._snapshot = snapshot
        return self._push()

    def _type_of(self, request: discovery_pb2.DeltaDiscoveryRequest) -> TypeUrl:
        served = DELTA_ADS_TYPES if self._type_url is None else SERVED_TYPES
        return requested_type(request.type_url, self._type_url, served)

    def _push(self) -> list[DeltaResponse]:
        snap = self._snapshot
        if snap is None:
            return []
        out: list[DeltaResponse] = []
        # CDS once more at the end: removals that the LDS/RDS just sent released.
        for type_url in (*_DELTA_ORDER, CLUSTER):
            state = self._types.get(type_url)
            if state is None or state.nonce or state.clean == snap.version(type_url):
                continue
            if type_url in _NAMING_CLUSTERS and self._clusters_warming(snap):
                continue
            if type_url == VIRTUAL_HOST:
                response = self._respond_vhosts(state, snap)
            else:
                response = self._respond(type_url, state, snap)
            state.clean = snap.version(type_url)
            if response is not None and type_url == ROUTE:
                vhosts = self._types.get(VIRTUAL_HOST)
                if vhosts is not None:
                    vhosts.clean = ""  # a route configuration VHDS must start may be new
            if response is not None and type_url in _NAMING_CLUSTERS:
                # what they reference decides whether CDS still keeps removed clusters
                clusters = self._types.get(CLUSTER)
                if clusters is not None and clusters.keeping:
                    clusters.clean = ""
            if response is not None:
                out.append(disjoint(response))
        return out

    def _wanted(self, state: _DeltaType, snap: Snapshot, type_url: TypeUrl) -> set[str]:
        bucket = snap.get(type_url)
        if state.wildcard:
            return set(bucket) | state.names
        return set(state.names)

    def _respond(
        self, type_url: TypeUrl, state: _DeltaType, snap: Snapshot
    ) -> DeltaResponse | None:
        bucket = snap.get(type_url)
        wanted = self._wanted(state, snap, type_url)
        changed = [
            bucket[n]
            for n in sorted(wanted)
            if n in bucket and state.held.get(n) != resource_version(bucket[n])
        ]
        # An unsubscribed name the wildcard still wants is kept, not announced removed.
        removed = {n for n in state.dropped if n not in wanted or n not in bucket}
        removed.update(n for n in state.held if n not in bucket or n not in wanted)
        if type_url == CLUSTER and self.ads:
            kept = removed & self._clusters_still_used()
            removed -= kept
            state.keeping = bool(kept)
        missing = {n for n in state.names if n not in bucket and n not in state.held}
        removed.update(missing - state.absent)
        first_wildcard = not state.responded and state.wildcard and not state.resumed
        if not changed and not removed and not first_wildcard:
            return None
        if type_url == CLUSTER:
            self._note_cluster_updates(state, changed)
        state.in_flight = {r.name: resource_version(r) for r in changed}
        for r in changed:
            state.held[r.name] = resource_version(r)
            state.sent[r.name] = r
            state.absent.discard(r.name)
        for n in removed:
            state.held.pop(n, None)
            state.sent.pop(n, None)
        state.absent |= missing
        state.dropped.clear()
        self._counter += 1
        state.nonce = str(self._counter)
        state.version = snap.version(type_url)
        state.responded = True
        return DeltaResponse(
            type_url, snap.version(type_url), state.nonce, tuple(changed), tuple(sorted(removed))
        )

    def _respond_vhosts(self, state: _DeltaType, snap: Snapshot) -> DeltaResponse | None:
        """The VHDS response due (see the module docstring), or None."""
        bucket = snap.get(VIRTUAL_HOST)
        index = index_of(snap)
        due: dict[str, list[str]] = {}
        unresolved: list[str] = []
        namespaces = False
        gone: set[str] = set()  # held since a reconnect, by a name that no longer exists
        for name in [n for n in state.held if n not in state.names and n not in bucket]:
            if name not in state.sent:
                state.held.pop(name)
                gone.add(name)
        for alias in sorted(state.names):
            if "/" not in alias:
                namespaces = namespaces or alias not in state.absent
                state.absent.add(alias)
                continue
            target = alias if alias in bucket else index.resolve(alias)
            if target is None:
                if state.held.pop(alias, None) is not None and alias not in state.sent:
                    gone.add(alias)
                state.sent.pop(alias, None)
                if alias not in state.absent:
                    unresolved.append(alias)
                    state.absent.add(alias)
                continue
            resource = bucket[target]
            version = resource_version(resource)
            old = state.sent.get(alias)
            held_before = state.held.get(alias) == version or (
                alias not in state.asked and state.held.get(target) == version
            )
            if old is None and held_before:
                # held since before a reconnect (by its name or under this alias)
                state.held[alias] = version
                state.sent[alias] = resource
                continue
            state.asked.discard(alias)
            if state.held.get(alias) != version or old is None or old.name != target:
                due.setdefault(target, []).append(alias)
                state.held[alias] = version
                state.sent[alias] = resource
                state.absent.discard(alias)
        for alias in state.dropped:
            state.held.pop(alias, None)
            state.sent.pop(alias, None)
            state.asked.discard(alias)
        state.dropped.clear()
        for alias in [a for a in state.sent if a not in state.names]:
            state.held.pop(alias, None)
            state.sent.pop(alias, None)
        still = {r.name for r in state.sent.values()}
        starters = self._vhds_starters(state, snap)
        removed = tuple(sorted((state.vhosts - still) | gone | starters))
        state.vhosts = still
        # An alias that is also the name of a virtual host now gone (``CONFIG/FQDN:PORT``
        # is both): its removal answers it; it stays absent, so a re-ask is answered.
        unresolved = [a for a in unresolved if a not in removed]
        if not due and not unresolved and not removed and not namespaces:
            return None
        changed = tuple(bucket[n] for n in sorted(due))
        state.in_flight = {r.name: resource_version(r) for r in changed}
        self._counter += 1
        state.nonce = str(self._counter)
        state.version = snap.version(VIRTUAL_HOST)
        state.responded = True
        return DeltaResponse(
            VIRTUAL_HOST,
            state.version,
            state.nonce,
            changed,
            removed,
            aliases=tuple(tuple(due[r.name]) for r in changed),
            unresolved=tuple(unresolved),
        )

    def _forget_aliases(self, state: _DeltaType, count: int) -> None:
        """Forget ``count`` VHDS aliases, least recently asked first: those that resolve to
        no virtual host of the current snapshot, then those that do (see the module
        docstring). A forgotten alias is no longer held or sent: the next VHDS response
        announces removed each virtual host no remaining alias resolves to."""
        snap = self._snapshot
        bucket = snap.get(VIRTUAL_HOST) if snap is not None else {}
        index = index_of(snap) if snap is not None else None

        def resolves(alias: str) -> bool:
            return alias in bucket or (index is not None and index.resolve(alias) is not None)

        victims = list(islice((a for a in state.order if not resolves(a)), count))
        if len(victims) < count:
            chosen = set(victims)
            rest = (a for a in state.order if a not in chosen)
            victims.extend(islice(rest, count - len(victims)))
        for alias in victims:
            del state.order[alias]
            state.names.discard(alias)
            state.absent.discard(alias)
            state.asked.discard(alias)
            state.dropped.discard(alias)
            state.held.pop(alias, None)
            state.sent.pop(alias, None)

    def _vhds_starters(self, state: _DeltaType, snap: Snapshot) -> set[str]:
        """The names ``ROUTE_CONFIG/`` that start the VHDS route configurations the client
        holds and that were not started yet (see the module docstring); notes them as
        started, and forgets those it no longer holds."""
        routes = self._types.get(ROUTE)
        holding = vhds_configs(snap).intersection(routes.held) if routes is not None else set()
        new = holding - state.started
        state.started = set(holding)
        return {f"{config}/" for config in new}

    def _clusters_still_used(self) -> set[str]:
        """Clusters a listener, route configuration or virtual host the client holds
        references."""
        return clusters_referenced(
            r
            for type_url in _NAMING_CLUSTERS
            if (state := self._types.get(type_url)) is not None
            for r in state.sent.values()
        )

    def _note_cluster_updates(self, state: _DeltaType, changed: Iterable[Resource]) -> None:
        """Before sending CDS: note whether it adds or changes clusters (ADS holds LDS/RDS
        until it is answered), and make each such cluster's assignment due again."""
        changed = list(changed)
        state.updates_in_flight = bool(changed)
        endpoints = self._types.get(ENDPOINT)
        if not self.ads or endpoints is None:
            return
        for r in changed:
            for type_url, name in r.references:
                if type_url == ENDPOINT:
                    endpoints.held.pop(name, None)
                    endpoints.clean = ""

    def _clusters_warming(self, snap: Snapshot) -> bool:
        """ADS only: LDS and RDS wait while a CDS response that adds or changes clusters
        is outstanding, or while CDS has changes not yet sent."""
        state = self._types.get(CLUSTER)
        if not self.ads or state is None:
            return False
        if state.nonce and state.updates_in_flight:
            return True
        if state.clean == snap.version(CLUSTER):
            return False  # everything due was sent
        bucket = snap.get(CLUSTER)
        wanted = self._wanted(state, snap, CLUSTER)
        return any(n in bucket and state.held.get(n) != resource_version(bucket[n]) for n in wanted)


def disjoint(response: DeltaResponse) -> DeltaResponse:
    """``response`` with no name both added and removed (Envoy rejects such a response
    whole): a resource sent with content is not also removed, and a name removed is not
    also sent as unresolved. The protocol never builds such a response; this is the
    final guard of every delta response."""
    if not response.removed and not response.unresolved:
        return response  # the usual push: nothing removed, nothing unresolved
    taken = set(response.removed).union(response.unresolved)
    if taken.isdisjoint(response.names) and (
        not response.unresolved or set(response.unresolved).isdisjoint(response.removed)
    ):
        return response
    added = set(response.names)
    removed = tuple(n for n in response.removed if n not in added)
    gone = added.union(removed)
    unresolved = tuple(n for n in response.unresolved if n not in gone)
    if removed == response.removed and unresolved == response.unresolved:
        return response
    return replace(response, removed=removed, unresolved=unresolved)


def _check_count(type_url: TypeUrl, count: int) -> None:
    """Refuse (ProtocolError RESOURCE_EXHAUSTED) ``count`` names of one type, subscribed
    or said to be held, beyond ``MAX_SUBSCRIBED_NAMES``."""
    if count > MAX_SUBSCRIBED_NAMES:
        raise ProtocolError(
            "RESOURCE_EXHAUSTED",
            f"more than {MAX_SUBSCRIBED_NAMES} names of {type_url.rpartition('.')[2]}",
        )


def _check_alias(name: str) -> None:
    """Refuse a VHDS name longer than ``MAX_ALIAS_LENGTH`` (ProtocolError)."""
    if len(name) > MAX_ALIAS_LENGTH:
        raise ProtocolError(
            "INVALID_ARGUMENT", f"a virtual host name longer than {MAX_ALIAS_LENGTH} characters"
        )


def _answer(
    type_url: TypeUrl, state: _DeltaType, request: discovery_pb2.DeltaDiscoveryRequest
) -> Ack | Nack:
    """The ACK or NACK ``request`` is of the outstanding response (delta requests carry no
    version: a NACK's kept version is unknown, so empty)."""
    version = Version(state.version)
    if request.HasField("error_detail"):
        detail = request.error_detail
        names = ", ".join(sorted(state.in_flight)) or "(removals only)"
        message = f"{detail.message} [rejected resources: {names}]"
        return Nack(type_url, Version(""), state.nonce, version, detail.code, message)
    return Ack(type_url, version, state.nonce)
