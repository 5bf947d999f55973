"""Fuzzing the protocol cores: random request sequences, snapshot changes, random bytes.

Each Hypothesis example drives one core (``SotwStream`` ADS or per-type, ``DeltaStream``,
``RestSessions``) with a random sequence of operations: requests of random types (unknown
ones and the empty one included), random names (``*``, unknown names), nonces that are
current, stale, from the future or garbage, versions that are current, old or garbage,
NACKs with ``error_detail``, subscribe/unsubscribe and ``initial_resource_versions``,
interleaved with snapshot changes. A model of the client checks after every step what
docs/protocol.md and the modules' docstrings promise:

- the only exception is ``ProtocolError``, exactly when the request breaks rule 1 (no node
  on the first request, a missing or unknown type, another type on a per-type stream) or
  names an unknown REST type; the transport then ends the stream;
- a stale SotW request (rule 3) gets no events at all;
- every response's resources come from the current snapshot (CDS may also keep clusters
  this client was sent before, make-before-break) and from what the client subscribed to;
- at most one response per type is outstanding (a response of a type waits for the
  client's answer to the previous one);
- NACKed content is never sent again until it changes (rule 4, rule 18), besides what
  newly subscribing and Envoy's cluster warming require;
- after the random phase, a well-behaved client that answers every response converges on
  a fresh snapshot (nothing livelocks, nothing is lost).

Random bytes are also parsed as ``DiscoveryRequest``/``DeltaDiscoveryRequest`` (the
transports' decode step) and fed to fresh streams, and random nodes are classified.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.protocol.test_sotw import NODE, cluster, endpoints, listener, secret
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import TranslationError
from xdsd.protocol import (
    SERVED_TYPES,
    Ack,
    DeltaResponse,
    Nack,
    NotApplied,
    ProtocolError,
    Response,
    clusters_referenced,
    resource_version,
)
from xdsd.protocol.delta import DeltaStream
from xdsd.protocol.fetch import NotModified, select
from xdsd.protocol.rest_session import RestSessions
from xdsd.protocol.sotw import SotwStream
from xdsd.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SECRET,
    WILDCARD_TYPES,
    Resource,
    TypeUrl,
)
from xdsd.translate.node import ConfigSourceKind, node_class_from_node

UNKNOWN_TYPE = TypeUrl("type.googleapis.com/envoy.config.core.v3.Unknown")
TYPES = (*PUSH_ORDER, UNKNOWN_TYPE, TypeUrl(""))
CLUSTER_NAMES = ("a", "b", "c")
NAMES = (*CLUSTER_NAMES, "r", "r2", "http", "alt", "s", "*", "zz", "")
FINAL = 9  # the generation of the converging snapshot: content no random step had

# -- snapshots ---------------------------------------------------------------------------


def route(name: str, clusters: Sequence[str], generation: int) -> Resource:
    """A route configuration ``name`` routing to ``clusters``; ``generation`` changes its
    content and nothing else."""
    return Resource.of(
        name,
        route_pb2.RouteConfiguration(
            name=name,
            internal_only_headers=[f"x-generation-{generation}"],
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=c,
                    domains=[c],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            route=route_components_pb2.RouteAction(cluster=c),
                        )
                    ],
                )
                for c in clusters
            ],
        ),
    )


@st.composite
def snapshots(draw: st.DrawFn, final: bool = False) -> Snapshot:
    """A consistent snapshot over a small name pool, so that content repeats across
    snapshots (NACKed content comes back) and names appear and disappear; ``final``: every
    resource at generation ``FINAL``."""

    def gen() -> int:
        return FINAL if final else draw(st.integers(0, 2))

    present = sorted(draw(st.sets(st.sampled_from(CLUSTER_NAMES))))
    resources: list[Resource] = []
    for name in present:
        g = gen()
        resources += [cluster(name, timeout=1 + g), endpoints(name, f"10.0.{g}.1")]
    for lname, rname, port in (("http", "r", 15001), ("alt", "r2", 15002)):
        if draw(st.booleans()):
            routed = draw(st.sets(st.sampled_from(present))) if present else set()
            resources += [listener(lname, rname, port), route(rname, sorted(routed), gen())]
    if draw(st.booleans()):
        resources.append(secret("s", f"secret-{gen()}"))
    return Snapshot.build(resources)


# -- SotW --------------------------------------------------------------------------------

NONCES = st.sampled_from(["current", "current", "current", "stale", "future", "", "junk"])


#: How a request names its type: mostly right ("plain": the type on ADS, the stream's own
#: on a per-type stream), sometimes empty, unknown or another type (the stream ends).
FORMS = st.sampled_from(["plain"] * 12 + ["empty", "unknown", "other"])


def wire_type(form: str, type_url: TypeUrl, stream_type: TypeUrl | None) -> TypeUrl:
    """The ``type_url`` a request of ``form`` carries."""
    if form == "empty":
        return TypeUrl("")
    if form == "unknown":
        return UNKNOWN_TYPE
    if stream_type is None:
        return type_url
    if form == "other":
        return next(t for t in PUSH_ORDER if t != stream_type)
    return stream_type


@st.composite
def sotw_steps(draw: st.DrawFn) -> tuple[object, ...]:
    kind = draw(st.sampled_from(["answer"] * 4 + ["request"] * 3 + ["snapshot"] * 2))
    if kind == "snapshot":
        return ("snapshot", draw(snapshots()))
    if kind == "answer":  # answer the last response of a type: ACK or NACK, same names
        return ("answer", draw(st.sampled_from(PUSH_ORDER)), draw(st.booleans()))
    return (
        "request",
        draw(FORMS),
        draw(st.sampled_from(PUSH_ORDER)),
        draw(st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=4))),
        draw(NONCES),
        draw(st.sampled_from(["acked", "", "junk", "current"])),
        draw(st.one_of(st.none(), st.text(max_size=20))),
        draw(st.sampled_from([True, False, False, False])),  # carry the node (again)
    )


def nonce_of(nonce: str, last: str) -> str:
    """The nonce a request carries: ``last`` (the last one received), a stale or future
    one, none, junk, or ``nonce`` as drawn."""
    return {
        "current": last,
        "stale": str(int(last) - 1) if last else "0",
        "future": "999999",
        "": "",
        "junk": "n\x00\u202e",
    }.get(nonce, nonce)


def deliver(
    stream: SotwStream | DeltaStream,
    req: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest,
    error: str | None,
    with_node: bool,
    node_sent: bool,
    stream_type: TypeUrl | None,
) -> list[Any] | None:
    """Complete ``req`` (the node, a NACK's ``error_detail``) and hand it to ``stream``:
    its events, or None when the stream ended with ProtocolError — which must happen
    exactly when rule 1 says (no node yet, or a type the stream does not serve)."""
    if with_node:
        req.node.CopyFrom(NODE)
    if error is not None:
        req.error_detail.code = 3
        req.error_detail.message = error
    expect_error = (not node_sent and not with_node) or (
        req.type_url not in SERVED_TYPES
        if stream_type is None
        else req.type_url not in ("", stream_type)
    )
    try:
        events = stream.on_request(req)
    except ProtocolError:
        assert expect_error, req
        return None
    assert not expect_error, req
    return list(events)


@dataclass
class SotwModel:
    """The client side of one SotW stream, and the checks of what the server sends."""

    stream: SotwStream
    stream_type: TypeUrl | None
    snapshot: Snapshot | None = None
    node_sent: bool = False
    last_nonce: dict[TypeUrl, str] = field(default_factory=dict)  # last nonce received
    version: dict[TypeUrl, str] = field(default_factory=dict)  # last version received
    acked: dict[TypeUrl, str] = field(default_factory=dict)
    names: dict[TypeUrl, list[str]] = field(default_factory=dict)
    named_ever: set[TypeUrl] = field(default_factory=set)  # LDS/CDS: no legacy wildcard
    outstanding: dict[TypeUrl, str] = field(default_factory=dict)
    nonces: list[int] = field(default_factory=list)
    received: dict[TypeUrl, dict[str, Resource]] = field(default_factory=dict)
    cds_ever: dict[str, set[str]] = field(default_factory=dict)  # name → digests sent
    rejected_named: dict[TypeUrl, dict[str, str]] = field(default_factory=dict)
    rejected_full: dict[TypeUrl, frozenset[tuple[str, str]]] = field(default_factory=dict)
    responses: dict[str, Response] = field(default_factory=dict)  # by nonce
    #: assignments a CDS response made due again (Envoy warms a cluster until it gets one,
    #: even an unchanged or NACKed one): exempt from the NACK rule until sent once
    warming: set[str] = field(default_factory=set)
    dead: bool = False

    def request(
        self,
        form: str,
        type_url: TypeUrl,
        names: list[str] | None,
        nonce: str,
        version: str,
        error: str | None,
        with_node: bool,
    ) -> None:
        type_url = wire_type(form, type_url, self.stream_type)
        with_node = with_node or not self.node_sent
        served = self.stream_type if type_url == "" and self.stream_type else type_url
        asked = list(names) if names is not None else self.names.get(served, [])
        last = self.last_nonce.get(served, "")
        nonce_text = nonce_of(nonce, last)
        version_text = {
            "acked": self.acked.get(served, ""),
            "": "",
            "junk": "v?",
            "current": self.version.get(served, ""),
        }[version]
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=asked,
            version_info=version_text,
            response_nonce=nonce_text,
        )
        events = deliver(self.stream, req, error, with_node, self.node_sent, self.stream_type)
        if events is None:
            self.dead = True
            return
        self.node_sent = True
        if last and nonce_text != last:  # stale: ignored, subscription and all
            assert events == [], (req, events)
            return
        self.names[served] = asked
        if asked:
            self.named_ever.add(served)
        if self.outstanding.get(served) == nonce_text:
            del self.outstanding[served]
            answered = self.responses[nonce_text]
            if error is not None:
                self._rejected(answered)
            else:
                self.acked[served] = version_text
        if names is not None:  # a subscription change may make rejected content due
            self.rejected_named.pop(served, None)
            self.rejected_full.pop(served, None)
        for ev in events:
            assert isinstance(ev, Ack | Nack | Response), ev
            if isinstance(ev, Nack):
                assert error is not None
            if isinstance(ev, Response):
                self.response(ev)

    def answer(self, type_url: TypeUrl, nack: bool) -> None:
        if type_url not in self.outstanding:
            return
        response = self.responses[self.outstanding[type_url]]
        self.version[type_url] = response.version
        self.request(
            "plain",
            type_url,
            None,
            "current",
            "acked" if nack else "current",
            "rejected" if nack else None,
            False,
        )

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        for response in self.stream.on_snapshot(snapshot):
            self.response(response)

    def _rejected(self, response: Response) -> None:
        t = response.type_url
        if t in WILDCARD_TYPES:
            self.rejected_full[t] = frozenset((r.name, r.digest) for r in response.resources)
        else:
            self.rejected_named.setdefault(t, {}).update(
                (r.name, r.digest) for r in response.resources
            )

    def response(self, response: Response) -> None:
        """Check one response against everything promised; record it."""
        t = response.type_url
        assert t in SERVED_TYPES and self.snapshot is not None
        if self.stream_type is not None:
            assert t == self.stream_type
        assert t not in self.outstanding, f"a second {t} response before the first's answer"
        nonce = int(response.nonce)
        assert not self.nonces or nonce > self.nonces[-1]
        self.nonces.append(nonce)
        bucket = self.snapshot.get(t)
        names = set(self.names.get(t, []))
        wildcard = t in WILDCARD_TYPES and ("*" in names or t not in self.named_ever)
        for r in response.resources:
            current = bucket.get(r.name)
            if current is None or current.digest != r.digest:
                # only CDS on ADS keeps removed clusters, as they were sent before
                assert t == CLUSTER and self.stream_type is None, (t, r.name)
                assert r.digest in self.cds_ever.get(r.name, set()), r.name
                assert "+" in response.version
            if not wildcard:
                assert r.name in names, (t, r.name, names)
        # NACKed content is not sent again until it changes
        if t in WILDCARD_TYPES:
            assert self.rejected_full.get(t) != frozenset(
                (r.name, r.digest) for r in response.resources
            ), f"NACKed {t} content sent again"
            self.rejected_full.pop(t, None)
        else:
            rejected = self.rejected_named.get(t, {})
            for r in response.resources:
                if not (t == ENDPOINT and r.name in self.warming):
                    assert rejected.get(r.name) != r.digest, f"NACKed {t} {r.name} sent again"
                rejected.pop(r.name, None)
                self.warming.discard(r.name)
        if t == CLUSTER:  # a CDS response makes its clusters' assignments due (warming)
            self.rejected_named.pop(ENDPOINT, None)
            self.warming |= {
                n for r in response.resources for u, n in r.references if u == ENDPOINT
            }
            for r in response.resources:
                self.cds_ever.setdefault(r.name, set()).add(r.digest)
        self.outstanding[t] = response.nonce
        self.last_nonce[t] = response.nonce
        self.responses[response.nonce] = response
        held = self.received.setdefault(t, {})
        if t in WILDCARD_TYPES:
            held.clear()
        held.update((r.name, r) for r in response.resources)

    def converge(self, final: Snapshot) -> None:
        """A well-behaved client ACKs everything until nothing is outstanding; then it
        holds the final snapshot's content of everything it subscribed to."""
        self.on_snapshot(final)
        for _ in range(40):
            if not self.outstanding:
                break
            for t in [t for t in PUSH_ORDER if t in self.outstanding]:
                self.answer(t, nack=False)
        assert not self.outstanding, "the stream never settles"
        for t, held in self.received.items():
            bucket = final.get(t)
            names = self.names.get(t) or []
            wildcard = t in WILDCARD_TYPES and ("*" in names or t not in self.named_ever)
            wanted = set(bucket) if wildcard else {n for n in names if n in bucket}
            for n in wanted:
                assert n in held and held[n].digest == bucket[n].digest, (t, n)
            if t == CLUSTER:
                keepers = clusters_referenced(
                    r for other in (LISTENER, ROUTE) for r in self.received.get(other, {}).values()
                )
                assert set(held) - set(bucket) <= keepers


def run_sotw(
    stream_type: TypeUrl | None,
    first: Snapshot,
    opening: list[tuple[TypeUrl, list[str]]],
    steps: list[tuple[object, ...]],
    final: Snapshot,
) -> None:
    model = SotwModel(SotwStream(stream_type), stream_type)
    model.on_snapshot(first)
    for type_url, names in opening:
        model.request("plain", type_url, names, "", "", None, False)
    for step in steps:
        if step[0] == "snapshot":
            assert isinstance(step[1], Snapshot)
            model.on_snapshot(step[1])
        elif step[0] == "answer":
            model.answer(step[1], step[2])  # type: ignore[arg-type]
        else:
            model.request(*step[1:])  # type: ignore[arg-type]
        if model.dead:
            return
    if model.node_sent:
        model.converge(final)


#: A client's first requests: each type once, with names (None: a wildcard's none).
OPENINGS = st.lists(
    st.tuples(st.sampled_from(PUSH_ORDER), st.lists(st.sampled_from(NAMES), max_size=3)),
    min_size=1,
    max_size=5,
    unique_by=lambda o: o[0],
)


@fuzz_settings(2)
@given(
    st.sampled_from([None, None, *PUSH_ORDER]),
    snapshots(),
    OPENINGS,
    st.lists(sotw_steps(), min_size=5, max_size=40),
    snapshots(final=True),
)
def test_sotw_streams_keep_their_promises(
    stream_type: TypeUrl | None,
    first: Snapshot,
    opening: list[tuple[TypeUrl, list[str]]],
    steps: list[tuple[object, ...]],
    final: Snapshot,
) -> None:
    if stream_type is not None:
        opening = [(stream_type, opening[0][1])]
    with deadline("protocol.sotw"):
        run_sotw(stream_type, first, opening, steps, final)


# -- delta -------------------------------------------------------------------------------


@st.composite
def delta_steps(draw: st.DrawFn) -> tuple[object, ...]:
    kind = draw(st.sampled_from(["answer"] * 4 + ["request"] * 3 + ["snapshot"] * 2))
    if kind == "snapshot":
        return ("snapshot", draw(snapshots()))
    if kind == "answer":
        return ("answer", draw(st.sampled_from(PUSH_ORDER)), draw(st.booleans()))
    names = st.lists(st.sampled_from(NAMES), max_size=3)
    return (
        "request",
        draw(FORMS),
        draw(st.sampled_from(PUSH_ORDER)),
        draw(names),  # subscribe
        draw(names),  # unsubscribe
        draw(NONCES),
        draw(st.one_of(st.none(), st.text(max_size=20))),
        draw(st.sampled_from([True, False, False, False])),  # carry the node (again)
        draw(
            st.dictionaries(
                st.sampled_from(NAMES), st.sampled_from(["", "junk", "real"]), max_size=3
            )
        ),
    )


@dataclass
class DeltaModel:
    """The client side of one delta stream (what the server believes it holds)."""

    stream: DeltaStream
    stream_type: TypeUrl | None
    snapshot: Snapshot | None = None
    node_sent: bool = False
    requested: set[TypeUrl] = field(default_factory=set)
    wildcard: dict[TypeUrl, bool] = field(default_factory=dict)
    names: dict[TypeUrl, set[str]] = field(default_factory=dict)
    last_nonce: dict[TypeUrl, str] = field(default_factory=dict)
    outstanding: dict[TypeUrl, str] = field(default_factory=dict)
    responses: dict[str, DeltaResponse] = field(default_factory=dict)
    held: dict[TypeUrl, dict[str, tuple[str, Resource | None]]] = field(default_factory=dict)
    rejected: dict[TypeUrl, dict[str, str]] = field(default_factory=dict)
    #: assignments a CDS response made due again (Envoy warms a cluster until it gets one,
    #: even an unchanged or NACKed one): exempt from the NACK rule until sent once
    warming: set[str] = field(default_factory=set)
    dead: bool = False

    def request(
        self,
        form: str,
        type_url: TypeUrl,
        subscribe: list[str],
        unsubscribe: list[str],
        nonce: str,
        error: str | None,
        with_node: bool,
        initial: dict[str, str],
    ) -> None:
        type_url = wire_type(form, type_url, self.stream_type)
        with_node = with_node or not self.node_sent
        served = self.stream_type if type_url == "" and self.stream_type else type_url
        last = self.last_nonce.get(served, "")
        nonce_text = nonce_of(nonce, last)
        versions = {}
        if self.snapshot is not None and served in SERVED_TYPES:
            bucket = self.snapshot.get(served)
            for n, how in initial.items():
                real = resource_version(bucket[n]) if n in bucket else "gone"
                versions[n] = {"": "", "junk": "junk", "real": real}[how]
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe,
            resource_names_unsubscribe=unsubscribe,
            response_nonce=nonce_text,
            initial_resource_versions=versions,
        )
        events = deliver(self.stream, req, error, with_node, self.node_sent, self.stream_type)
        if events is None:
            self.dead = True
            return
        self.node_sent = True
        held = self.held.setdefault(served, {})
        if served not in self.requested:
            self.requested.add(served)
            held.update((n, (v, None)) for n, v in versions.items())
            self.wildcard[served] = served in WILDCARD_TYPES and not subscribe
        if nonce_text and self.outstanding.get(served) == nonce_text:
            del self.outstanding[served]
            if error is not None:
                self.rejected.setdefault(served, {}).update(
                    (r.name, resource_version(r)) for r in self.responses[nonce_text].resources
                )
        names = self.names.setdefault(served, set())
        for n in subscribe:
            if n == "*":
                self.wildcard[served] = True
            else:
                names.add(n)
        for n in unsubscribe:
            if n == "*":
                self.wildcard[served] = False
            else:
                names.discard(n)
                self.rejected.get(served, {}).pop(n, None)  # re-subscribing sends it again
        for ev in events:
            assert isinstance(ev, Ack | Nack | DeltaResponse), ev
            if isinstance(ev, DeltaResponse):
                self.response(ev)

    def answer(self, type_url: TypeUrl, nack: bool) -> None:
        if type_url in self.outstanding:
            self.request(
                "plain", type_url, [], [], "current", "rejected" if nack else None, False, {}
            )

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        for response in self.stream.on_snapshot(snapshot):
            self.response(response)

    def response(self, response: DeltaResponse) -> None:
        t = response.type_url
        assert t in SERVED_TYPES and self.snapshot is not None
        if self.stream_type is not None:
            assert t == self.stream_type
        assert t not in self.outstanding, f"a second {t} response before the first's answer"
        assert t in self.requested
        bucket = self.snapshot.get(t)
        names = self.names.get(t, set())
        carried = {r.name for r in response.resources}
        assert not carried & set(response.removed)
        rejected = self.rejected.setdefault(t, {})
        for r in response.resources:
            assert bucket.get(r.name) is not None and bucket[r.name].digest == r.digest
            assert self.wildcard.get(t) or r.name in names, (t, r.name)
            if not (t == ENDPOINT and r.name in self.warming):
                assert rejected.get(r.name) != resource_version(r), f"NACKed {t} {r.name} again"
            rejected.pop(r.name, None)
            self.warming.discard(r.name)
        held = self.held.setdefault(t, {})
        for n in response.removed:
            held.pop(n, None)
            rejected.pop(n, None)
        held.update((r.name, (resource_version(r), r)) for r in response.resources)
        if t == CLUSTER and response.resources:  # warming makes assignments due again
            self.rejected.pop(ENDPOINT, None)
            self.warming |= {
                n for r in response.resources for u, n in r.references if u == ENDPOINT
            }
        self.outstanding[t] = response.nonce
        self.last_nonce[t] = response.nonce
        self.responses[response.nonce] = response

    def converge(self, final: Snapshot) -> None:
        self.on_snapshot(final)
        for _ in range(40):
            if not self.outstanding:
                break
            for t in [t for t in PUSH_ORDER if t in self.outstanding]:
                self.answer(t, nack=False)
        assert not self.outstanding, "the stream never settles"
        for t in self.requested:
            bucket = final.get(t)
            held = self.held.get(t, {})
            wanted = (set(bucket) if self.wildcard.get(t) else set()) | self.names.get(t, set())
            for n in wanted & set(bucket):
                assert held.get(n, ("", None))[0] == resource_version(bucket[n]), (t, n)
            extra = set(held) - (wanted & set(bucket))
            if t == CLUSTER and self.stream_type is None:
                extra -= clusters_referenced(
                    r
                    for other in (LISTENER, ROUTE)
                    for _, r in self.held.get(other, {}).values()
                    if r is not None
                )
            assert not extra, (t, extra)


def run_delta(
    stream_type: TypeUrl | None,
    first: Snapshot,
    opening: list[tuple[TypeUrl, list[str], dict[str, str]]],
    steps: list[tuple[object, ...]],
    final: Snapshot,
) -> None:
    model = DeltaModel(DeltaStream(stream_type), stream_type)
    model.on_snapshot(first)
    for type_url, names, initial in opening:
        model.request("plain", type_url, names, [], "", None, False, initial)
    for step in steps:
        if step[0] == "snapshot":
            assert isinstance(step[1], Snapshot)
            model.on_snapshot(step[1])
        elif step[0] == "answer":
            model.answer(step[1], step[2])  # type: ignore[arg-type]
        else:
            model.request(*step[1:])  # type: ignore[arg-type]
        if model.dead:
            return
    if model.node_sent:
        model.converge(final)


#: A delta client's first requests: names and what it says it holds (a reconnect).
DELTA_OPENINGS = st.lists(
    st.tuples(
        st.sampled_from(PUSH_ORDER),
        st.lists(st.sampled_from(NAMES), max_size=3),
        st.dictionaries(st.sampled_from(NAMES), st.sampled_from(["", "junk", "real"]), max_size=3),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda o: o[0],
)


@fuzz_settings(2)
@given(
    st.sampled_from([None, None, *PUSH_ORDER]),
    snapshots(),
    DELTA_OPENINGS,
    st.lists(delta_steps(), min_size=5, max_size=40),
    snapshots(final=True),
)
def test_delta_streams_keep_their_promises(
    stream_type: TypeUrl | None,
    first: Snapshot,
    opening: list[tuple[TypeUrl, list[str], dict[str, str]]],
    steps: list[tuple[object, ...]],
    final: Snapshot,
) -> None:
    if stream_type is not None:
        opening = [(stream_type, *opening[0][1:])]
    with deadline("protocol.delta"):
        run_delta(stream_type, first, opening, steps, final)


# -- REST --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@st.composite
def rest_steps(draw: st.DrawFn) -> tuple[object, ...]:
    kind = draw(st.sampled_from(["poll", "poll", "poll", "snapshot", "wait"]))
    if kind == "snapshot":
        return ("snapshot", draw(snapshots()))
    if kind == "wait":
        return ("wait", draw(st.floats(0, 40)))
    return (
        "poll",
        draw(st.sampled_from(["envoy-1", "envoy-2", "envoy-3", "envoy-4"])),
        draw(st.sampled_from([*PUSH_ORDER, UNKNOWN_TYPE, TypeUrl("")])),
        tuple(draw(st.lists(st.sampled_from(NAMES), max_size=3))),
        draw(st.sampled_from(["last", "last", "", "junk", "current"])),
    )


@dataclass
class RestModel:
    sessions: RestSessions
    clock: Clock
    snapshot: Snapshot
    served: dict[tuple[str, TypeUrl, frozenset[str]], str] = field(default_factory=dict)
    cds_ever: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # client → sent

    def poll(
        self, client: str, type_url: TypeUrl, names: tuple[str, ...], version: str
    ) -> Response | NotModified | None:
        key = (client, type_url, frozenset(names))
        version_info = {"last": self.served.get(key, ""), "": "", "junk": "junk"}.get(version, "")
        if version == "current" and type_url in PUSH_ORDER:
            version_info = select(self.snapshot, type_url, names).version
        try:
            poll = self.sessions.on_poll(client, self.snapshot, type_url, names, version_info)
        except ProtocolError as e:
            assert type_url not in PUSH_ORDER and e.code == "NOT_FOUND"
            return None
        assert type_url in PUSH_ORDER
        assert len(self.sessions) <= 3
        answer = poll.answer
        if isinstance(poll.report, NotApplied):
            assert poll.report.version == version_info
            if isinstance(answer, Response):
                assert answer.version != poll.report.served_version, "not applied, sent again"
        if isinstance(poll.report, Ack):
            assert poll.report.version == version_info
        if isinstance(answer, NotModified):
            return answer
        assert answer.version != version_info, "sent the version the poller holds"
        assert answer.type_url == type_url and not answer.nonce
        bucket = self.snapshot.get(type_url)
        wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
        ever = self.cds_ever.setdefault(client, set())
        for r in answer.resources:
            if r.name not in bucket or bucket[r.name].digest != r.digest:
                assert type_url == CLUSTER and (r.name, r.digest) in ever, r.name
            elif not wildcard:
                assert r.name in names
        if type_url == CLUSTER:
            ever.update((r.name, r.digest) for r in answer.resources)
        self.served[key] = answer.version
        return answer

    def converge(self, final: Snapshot) -> None:
        """A well-behaved Envoy polls CDS, EDS per cluster, LDS and RDS per route
        configuration, applying what it gets; within a few rounds every poll is 304 and
        it holds the final snapshot (stale pollers age out)."""
        self.snapshot = final
        quiet = 0
        for _ in range(12):
            self.clock.now += 20.0
            answers = [self.poll("envoy-1", CLUSTER, (), "last")]
            answers += [self.poll("envoy-1", ENDPOINT, (n,), "last") for n in final.get(CLUSTER)]
            answers.append(self.poll("envoy-1", LISTENER, (), "last"))
            routes = {
                n for r in final.get(LISTENER).values() for t, n in r.references if t == ROUTE
            }
            answers += [self.poll("envoy-1", ROUTE, (n,), "last") for n in sorted(routes)]
            answers += [self.poll("envoy-1", SECRET, ("s",), "last")]
            quiet = quiet + 1 if all(isinstance(a, NotModified) for a in answers) else 0
            if quiet == 2:
                break
        assert quiet == 2, "REST polling never settles"
        assert self.served.get(("envoy-1", CLUSTER, frozenset())) == final.version(CLUSTER)
        assert self.served.get(("envoy-1", LISTENER, frozenset())) == final.version(LISTENER)


@fuzz_settings(2)
@given(snapshots(), st.lists(rest_steps(), max_size=40), snapshots(final=True))
def test_rest_sessions_keep_their_promises(
    first: Snapshot, steps: list[tuple[object, ...]], final: Snapshot
) -> None:
    clock = Clock()
    sessions = RestSessions(
        clock=clock, idle_timeout=30.0, max_clients=3, max_pollers=3, max_versions=2, max_contents=4
    )
    model = RestModel(sessions, clock, first)
    with deadline("protocol.rest"):
        for step in steps:
            if step[0] == "snapshot":
                assert isinstance(step[1], Snapshot)
                model.snapshot = step[1]
            elif step[0] == "wait":
                clock.now += float(step[1])  # type: ignore[arg-type]
            else:
                model.poll(*step[1:])  # type: ignore[arg-type]
        model.converge(final)


# -- bytes and nodes ---------------------------------------------------------------------


def _valid_request() -> bytes:
    return discovery_pb2.DiscoveryRequest(
        node=NODE, type_url=CLUSTER, resource_names=["a"], version_info="1", response_nonce="1"
    ).SerializeToString()


@st.composite
def request_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid request's bytes with a few bytes changed."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    buf = bytearray(_valid_request())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(buf) - 1))
        buf[at] = draw(st.integers(0, 255))
    return bytes(buf)


@fuzz_settings(3)
@given(request_bytes(), st.sampled_from([None, *PUSH_ORDER]), snapshots())
@example(b"\x12\x00", None, Snapshot.build([]))
def test_random_bytes_as_requests_end_the_stream_or_are_served(
    data: bytes, stream_type: TypeUrl | None, snapshot: Snapshot
) -> None:
    """What the transports decode (grpc: ``FromString``) goes to a fresh stream: either
    the bytes are no message (DecodeError, the transport's INVALID_ARGUMENT/INTERNAL), or
    the stream serves it or ends with ProtocolError."""
    with deadline("protocol.bytes"):
        for message, core in (
            (discovery_pb2.DiscoveryRequest, SotwStream(stream_type, snapshot)),
            (discovery_pb2.DeltaDiscoveryRequest, DeltaStream(stream_type, snapshot)),
        ):
            try:
                request = message.FromString(data)
            except DecodeError:
                continue
            try:
                events = core.on_request(request)  # type: ignore[arg-type]
            except ProtocolError:
                continue
            for ev in events:
                if isinstance(ev, Response | DeltaResponse):
                    bucket = snapshot.get(ev.type_url)
                    assert all(bucket[r.name] is r for r in ev.resources)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
METADATA_KEYS = ("namespace", "labels", "role", "instance_ip", "outbound_ip", "client", "mesh_tls")


@fuzz_settings(2)
@given(
    st.text(max_size=10),
    st.text(max_size=10),
    st.dictionaries(st.sampled_from(METADATA_KEYS) | st.text(max_size=5), JSON, max_size=4),
    st.sampled_from(list(ConfigSourceKind)),
)
# found by this test: MessageToDict raised ValueError on a NaN or infinite number
@example("reviews", "", {"namespace": math.nan}, ConfigSourceKind.ADS)
@example("reviews", "", {"labels": {"version": math.inf}}, ConfigSourceKind.REST)
@example("reviews", "", {"mesh_tls": -math.inf, "role": [math.nan]}, ConfigSourceKind.DELTA)
def test_any_node_is_classified_or_refused(
    cluster_name: str, agent: str, metadata: dict[str, object], source: ConfigSourceKind
) -> None:
    """A client's node (metadata of any shape) becomes a NodeClass or a TranslationError."""
    node = base_pb2.Node(id="fuzz", cluster=cluster_name, user_agent_name=agent)
    try:
        node.metadata.CopyFrom(json_format.ParseDict(metadata, struct_pb2.Struct()))
    except json_format.ParseError:
        return  # not a Struct: the transport's decode step already refused it
    with deadline("protocol.node"), contextlib.suppress(TranslationError):
        node_class_from_node(node, config_source=source)


# -- regressions found by the fuzzing ----------------------------------------------------


def test_delta_unsubscribing_a_name_the_wildcard_still_wants_removes_nothing() -> None:
    """Found by ``test_delta_streams_keep_their_promises``: with a wildcard subscription, an
    unsubscribed name was announced in ``removed_resources``, in the same response that
    carried its new content when it had changed."""
    before = Snapshot.build([cluster("a", timeout=1), endpoints("a", "10.0.0.1")])
    after = Snapshot.build([cluster("a", timeout=2), endpoints("a", "10.0.0.1")])
    stream = DeltaStream(snapshot=before)
    node_request = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=NODE)
    [first] = stream.on_request(node_request)
    assert isinstance(first, DeltaResponse) and first.names == ("a",)
    assert stream.on_snapshot(after) == []  # the first response is outstanding
    unsubscribe = discovery_pb2.DeltaDiscoveryRequest(
        type_url=CLUSTER, resource_names_unsubscribe=["a"]
    )
    assert stream.on_request(unsubscribe) == []
    ack = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce)
    [_, changed] = stream.on_request(ack)
    assert isinstance(changed, DeltaResponse)
    assert (changed.names, changed.removed) == (("a",), ())
    ack.response_nonce = changed.nonce
    stream.on_request(ack)
    assert stream.on_request(unsubscribe) == []  # unchanged and still wanted: nothing
    assert stream.held(CLUSTER) == {"a": resource_version(after.get(CLUSTER)["a"])}
