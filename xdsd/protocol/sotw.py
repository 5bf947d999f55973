"""``SotwStream``: the State-of-the-World xDS protocol for one stream, without I/O.

How this works: a transport makes one ``SotwStream`` per gRPC stream (ADS, or a per-type
service with its ``type_url``) and feeds it every ``DiscoveryRequest`` it reads
(``on_request``) and every new snapshot of the client's node class (``on_snapshot``). Both
return the events to act on, in order: ``Ack``/``Nack`` to record, ``Response``s to send.
Client protocol errors raise ``ProtocolError``; the transport ends the stream with its code.

Per type the stream keeps the subscription (wildcard flag and explicit names), the last
nonce sent, and the resources it sent (what the client holds). A type is *ready* when the
client has a request outstanding for it: after its first request, and after it answered
(ACK or NACK) the last response. Only a ready type is sent anything, at most one response
per request; a request answering an older nonce is stale and ignored. Whenever something
may have changed, every ready type is compared with what it was sent:

- LDS and CDS carry their full subscribed set; they are sent when that set (names or
  content) differs from what was sent, or when the client newly named a resource.
- EDS, RDS and SDS carry only the subscribed resources whose content differs from what this
  stream sent; a newly subscribed name counts as never sent. Unknown names are left out
  and sent when they appear.
- The first response of a type is sent even when empty, except that a new stream whose
  wildcard LDS/CDS request already carries the version it would be sent gets nothing.
- A NACK leaves the rejected content recorded as sent, so it is never resent; the next
  change is. Holding is therefore the same rule as "nothing changed, nothing sent".

Versions: every response carries the snapshot's version of its type, including EDS/RDS
responses that carry only the changed resources (the version names the snapshot state the
stream is in sync with, as Envoy uses it). A CDS response that still carries removed
clusters (below) gets that version plus a suffix naming what it keeps.

Ordering on ADS (make-before-break): ready types are answered in ``PUSH_ORDER`` (CDS, EDS,
LDS, RDS, SDS). A CDS response that adds or changes clusters holds LDS and RDS until the
client answers it, and makes the ClusterLoadAssignments of those clusters due again even
when unchanged: Envoy finishes warming a cluster only on an EDS response for it, and
answers the CDS response only then. EDS is never held, so this cannot deadlock, and a
change reaches the client as CDS, EDS, LDS, RDS. Removals go the other way: a removed
cluster stays in CDS responses for as long as a listener or route configuration this
stream last sent references it; once the new LDS/RDS have been sent, the next CDS response
drops it. Per-type streams cannot see the other types: they send as the snapshot has it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import (
    SERVED_TYPES,
    WILDCARD,
    Ack,
    Event,
    Nack,
    ProtocolError,
    Response,
    clusters_referenced,
    kept_version,
    requested_type,
    trim_node,
)
from xdsd.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    WILDCARD_TYPES,
    Resource,
    TypeUrl,
    Version,
)


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a client asked for, for one type: everything (``wildcard``) and/or ``names``."""

    wildcard: bool
    names: frozenset[str]


@dataclass(slots=True)
class _TypeState:
    """Everything a stream knows about one type (mutable, private)."""

    wildcard: bool = False
    names: frozenset[str] = frozenset()
    ordered: tuple[str, ...] = ()  # names, sorted (kept with names by _subscribe)
    named_ever: bool = False  # a non-empty resource_names was seen: no legacy wildcard
    client_version: str = ""  # version_info of the latest request
    ready: bool = False  # the client has a request outstanding
    responded: bool = False  # a first response was sent (or skipped on resume)
    nonce: str = ""  # last nonce sent
    answered: str = ""  # last nonce the client answered (ACK or NACK)
    version: str = ""  # version of the last response sent
    sent: dict[str, Resource] = field(default_factory=dict)  # what the client holds
    must_send: set[str] = field(default_factory=set)  # newly named, not sent since
    force: bool = False  # the client newly subscribed to the wildcard
    updates_in_flight: bool = False  # CDS: the last response added or changed clusters
    generation: int = 0  # bumped on each subscription change
    checked: tuple[object, ...] | None = None  # inputs of the last "nothing to send"
    keeps: bool = True  # CDS: removed clusters were pending at the last check


class SotwStream:
    """The protocol state of one SotW stream: ADS when ``type_url`` is None, else the
    per-type stream of ``type_url``. ``snapshot`` is the node class's current snapshot if
    already known (it usually is not: the node arrives with the first request).

    Not thread-safe; one stream, one task.
    """

    def __init__(self, type_url: TypeUrl | None = None, snapshot: Snapshot | None = None) -> None:
        if type_url is not None and type_url not in SERVED_TYPES:
            raise ValueError(f"no SotW service for type {type_url!r}")
        self._type_url = type_url
        self._snapshot = snapshot
        self._node: base_pb2.Node | None = None
        self._types: dict[TypeUrl, _TypeState] = {}
        self._counter = 0
        self._held_generation = 0  # bumped when what LDS/RDS hold may have changed

    @property
    def ads(self) -> bool:
        """True for an aggregated stream carrying every type."""
        return self._type_url is None

    @property
    def node(self) -> base_pb2.Node | None:
        """The client's node from its first request, trimmed to the identifying fields
        (the ``extensions`` list Envoy sends is dropped); None before the first request."""
        return self._node

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot the stream serves from."""
        return self._snapshot

    def subscription(self, type_url: TypeUrl) -> Subscription | None:
        """The client's current subscription to ``type_url`` (None if never requested)."""
        state = self._types.get(type_url)
        if state is None:
            return None
        return Subscription(state.wildcard, state.names)

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[Event]:
        """Process one request: its ACK/NACK, its subscription, and what to send now.

        Raises ProtocolError (INVALID_ARGUMENT) when the first request has no node, when an
        ADS request has no type URL, when a per-type stream is asked for another type, or
        when the type is not one this server serves. A stale request returns [].
        """
        if self._node is None:
            if not request.HasField("node"):
                raise ProtocolError("INVALID_ARGUMENT", "the first request must carry node")
            self._node = trim_node(request.node)
        type_url = self._type_of(request)
        state = self._types.get(type_url)
        events: list[Event] = []
        if state is None:
            state = self._types[type_url] = _TypeState()
            if request.version_info:
                events.append(Ack(type_url, Version(request.version_info), ""))
        elif state.nonce and request.response_nonce != state.nonce:
            return []
        if state.nonce and state.answered != state.nonce:
            state.answered = state.nonce
            events.append(_answer(type_url, state, request))
        state.client_version = request.version_info
        state.ready = True
        if _subscribe(type_url, state, request.resource_names) and type_url == ROUTE:
            self._held_generation += 1  # route configurations dropped: clusters released
        events.extend(self._push())
        return events

    def on_snapshot(self, snapshot: Snapshot) -> list[Response]:
        """Serve from ``snapshot`` from now on; returns the responses it makes due."""
        self._snapshot = snapshot
        return self._push()

    def _type_of(self, request: discovery_pb2.DiscoveryRequest) -> TypeUrl:
        return requested_type(request.type_url, self._type_url, SERVED_TYPES)

    def _push(self) -> list[Response]:
        """Answer every ready type that has something to send, in push order; then CDS
        once more, for removals the LDS/RDS just sent released."""
        snap = self._snapshot
        if snap is None:
            return []
        out: list[Response] = []
        for type_url in (*PUSH_ORDER, CLUSTER):
            state = self._types.get(type_url)
            if state is None or not state.ready:
                continue
            if type_url in (LISTENER, ROUTE) and self._clusters_warming(snap):
                continue
            response = self._respond(type_url, state, snap)
            if response is not None:
                out.append(response)
        return out

    def _respond(self, type_url: TypeUrl, state: _TypeState, snap: Snapshot) -> Response | None:
        """The response ``type_url`` needs now, recorded as sent; None when none is due."""
        # What LDS/RDS hold matters to CDS only while removed clusters are pending: when
        # the last check found none, the sent set equals the subscribed snapshot set and
        # stays so until the snapshot or the subscription changes.
        inputs = (
            snap.version(type_url),
            state.generation,
            self._held_generation if type_url == CLUSTER and state.keeps else 0,
        )
        if state.responded and state.checked == inputs:
            return None
        if type_url in WILDCARD_TYPES:
            due = self._full_state_due(type_url, state, snap)
        else:
            due = _changed_due(type_url, state, snap)
        state.checked = inputs
        if due is None:
            return None
        resources, version = due
        if type_url == CLUSTER:
            self._note_cluster_updates(state, resources)
        if type_url in WILDCARD_TYPES:
            state.sent = {r.name: r for r in resources}
        else:
            state.sent.update((r.name, r) for r in resources)
        if type_url in (LISTENER, ROUTE):
            self._held_generation += 1
        self._counter += 1
        state.nonce = str(self._counter)
        state.version = version
        state.ready = False
        state.responded = True
        state.force = False
        state.must_send.clear()
        return Response(type_url, version, state.nonce, resources)

    def _full_state_due(
        self, type_url: TypeUrl, state: _TypeState, snap: Snapshot
    ) -> tuple[tuple[Resource, ...], Version] | None:
        """LDS/CDS: the whole subscribed set and its version, if the client must get it."""
        bucket = snap.get(type_url)
        if state.wildcard:
            carried = dict(bucket)
        else:
            carried = {n: bucket[n] for n in state.ordered if n in bucket}
        version = snap.version(type_url)
        if type_url == CLUSTER and self.ads:
            kept = self._kept_clusters(state, carried)
            if kept:
                carried = dict(sorted({**carried, **kept}.items()))
                version = kept_version(version, kept)
        if not state.responded:
            if state.wildcard and not state.names and state.client_version == version:
                # A reconnecting client already holds exactly this: nothing to send.
                state.responded = True
                state.version = version
                state.sent = carried
                return None
        elif not (
            state.force
            or state.must_send & carried.keys()
            or _digests(carried) != _digests(state.sent)
        ):
            return None
        return tuple(carried.values()), version

    def _kept_clusters(
        self, state: _TypeState, carried: Mapping[str, Resource]
    ) -> dict[str, Resource]:
        """Clusters sent, gone from the snapshot, still subscribed and still referenced by
        a listener or route configuration this stream last sent."""
        gone = {
            n: r
            for n, r in state.sent.items()
            if n not in carried and (state.wildcard or n in state.names)
        }
        state.keeps = bool(gone)
        if not gone:
            return {}
        held = clusters_referenced(
            r
            for type_url in (LISTENER, ROUTE)
            if (other := self._types.get(type_url)) is not None
            for r in other.sent.values()
        )
        return {n: r for n, r in gone.items() if n in held}

    def _note_cluster_updates(self, state: _TypeState, resources: Iterable[Resource]) -> None:
        """Before sending CDS: note whether it adds or changes clusters (ADS holds LDS/RDS
        until it is answered), and make the endpoints of each such cluster due again.

        Envoy warms a new or changed cluster until it receives a ClusterLoadAssignment
        for it, even an unchanged one; until then it also withholds its CDS ACK.
        """
        updated = [r for r in resources if _digest(state.sent.get(r.name)) != r.digest]
        state.updates_in_flight = bool(updated)
        endpoints = self._types.get(ENDPOINT)
        if not self.ads or endpoints is None:
            return
        for r in updated:
            for type_url, name in r.references:
                if type_url == ENDPOINT and name in endpoints.names:
                    endpoints.must_send.add(name)
                    endpoints.checked = None

    def _clusters_warming(self, snap: Snapshot) -> bool:
        """ADS only: LDS and RDS wait while new or changed clusters are unsent, or sent
        and not yet answered, so that no route names a cluster the client lacks."""
        state = self._types.get(CLUSTER)
        if not self.ads or state is None or state.ready or not state.responded:
            return False
        if state.updates_in_flight:
            return True
        bucket = snap.get(CLUSTER)
        names: Iterable[str] = bucket if state.wildcard else state.names & bucket.keys()
        return any(_digest(state.sent.get(n)) != bucket[n].digest for n in names)


def _changed_due(
    type_url: TypeUrl, state: _TypeState, snap: Snapshot
) -> tuple[tuple[Resource, ...], Version] | None:
    """EDS/RDS/SDS: the subscribed resources whose content this stream has not sent (or
    must send again), if there are any or this is the first response."""
    bucket = snap.get(type_url)
    sent, must_send = state.sent, state.must_send
    changed: list[Resource] = []
    for n in state.ordered:  # runs per client per snapshot: keep it lean
        r = bucket.get(n)
        if r is None:
            continue
        held = sent.get(n)
        if held is r and n not in must_send:
            continue  # the same shared object: unchanged
        if held is None or n in must_send or held.digest != r.digest:
            changed.append(r)
    if state.responded and not changed:
        return None
    return tuple(changed), snap.version(type_url)


def _answer(type_url: TypeUrl, state: _TypeState, request: discovery_pb2.DiscoveryRequest) -> Event:
    """The ACK or NACK that ``request`` is of the last response sent."""
    version = Version(request.version_info)
    if request.HasField("error_detail"):
        detail = request.error_detail
        return Nack(
            type_url, version, state.nonce, Version(state.version), detail.code, detail.message
        )
    return Ack(type_url, version, state.nonce)


def _subscribe(type_url: TypeUrl, state: _TypeState, resource_names: Iterable[str]) -> bool:
    """Replace the subscription with ``resource_names``, noting what is newly asked for.
    Returns whether it changed."""
    names = set(resource_names)
    if type_url in WILDCARD_TYPES:
        explicit = WILDCARD in names
        names.discard(WILDCARD)
        state.named_ever = state.named_ever or explicit or bool(names)
        wildcard = explicit or not state.named_ever
    else:
        wildcard = False
    new_names = frozenset(names)
    if (wildcard, new_names) == (state.wildcard, state.names):
        return False
    if type_url in WILDCARD_TYPES:
        state.must_send |= new_names - state.names
        state.force = state.force or (wildcard and not state.wildcard and state.responded)
    else:
        for gone in state.names - new_names:
            state.sent.pop(gone, None)  # the client drops it; send it again if re-named
    state.must_send &= new_names
    state.wildcard, state.names = wildcard, new_names
    state.ordered = tuple(sorted(new_names))
    state.generation += 1
    return True


def _digest(resource: Resource | None) -> str | None:
    return None if resource is None else resource.digest


def _digests(resources: Mapping[str, Resource]) -> dict[str, str]:
    return {n: r.digest for n, r in resources.items()}
