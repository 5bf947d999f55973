"""Sans-I/O xDS protocol cores: requests and snapshots in, events out.

This package holds what the transports (gRPC, REST) share: the events the protocol cores
emit and the error they raise when a client breaks the protocol. The cores themselves live
in ``sotw.py`` (State of the World streams, ADS and per-type), ``fetch.py`` (what a REST-JSON
poll is answered with) and ``rest_session.py`` (what each REST client holds, for
make-before-break across its pollers). Nothing here does I/O or knows about asyncio: a
transport feeds a core what it read, sends the ``Response`` events it gets back, and hands
every event to ``record_events`` so the cache's client status stays current.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xdsd.cache.cache import SnapshotCache
from xdsd.errors import XdsdError
from xdsd.resources import CLUSTER, PUSH_ORDER, VIRTUAL_HOST, Resource, TypeUrl, Version

K = TypeVar("K", bound=Hashable)

#: The explicit wildcard name.
WILDCARD = "*"

#: gRPC status code names a protocol core may end a stream with.
StatusCode = Literal["INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"]


class ProtocolError(XdsdError):
    """The client broke the xDS protocol; the transport ends the stream (or the REST
    request) with ``code``, a gRPC status code name, and ``message``."""

    def __init__(self, code: StatusCode, message: str) -> None:
        self.code: StatusCode = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class Response:
    """A response to send: ``resources`` of ``type_url`` at ``version``.

    ``nonce`` is empty for REST responses. ``resources`` are in name order and are shared,
    pre-encoded objects: ``to_proto`` builds the message from their cached bytes and never
    re-encodes a resource.
    """

    type_url: TypeUrl
    version: Version
    nonce: str
    resources: tuple[Resource, ...]

    def to_proto(self) -> discovery_pb2.DiscoveryResponse:
        """The ``DiscoveryResponse`` message for this response."""
        return discovery_pb2.DiscoveryResponse(
            version_info=self.version,
            resources=[r.to_any() for r in self.resources],
            type_url=self.type_url,
            nonce=self.nonce,
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the resources carried, in order."""
        return tuple(r.name for r in self.resources)


@dataclass(frozen=True, slots=True)
class Ack:
    """The client reports ``version`` of ``type_url`` applied.

    Over gRPC: the first request answering the response with ``nonce`` carried no
    ``error_detail`` (``version`` is the request's ``version_info``), or, with an empty
    nonce, a new stream's first request said which version the client already holds.
    Over REST: a poll's ``version_info`` advanced to the version last served.
    """

    type_url: TypeUrl
    version: Version
    nonce: str


@dataclass(frozen=True, slots=True)
class Nack:
    """The client rejected the response with ``nonce`` (which carried
    ``rejected_version``) and keeps using ``version``; ``code`` and ``message`` are its
    ``error_detail``. The rejected content is not sent again; see ``SotwStream``."""

    type_url: TypeUrl
    version: Version
    nonce: str
    rejected_version: Version
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class NotApplied:
    """A REST client polled again without advancing to ``served_version``, the version it
    was last served: it rejected it (REST carries no ``error_detail``, so why is unknown).
    ``version`` is what the client still holds."""

    type_url: TypeUrl
    version: Version
    served_version: Version


def resource_version(resource: Resource) -> str:
    """A resource's delta version: its content hash (the same for every client and every
    replica, so a reconnecting client's ``initial_resource_versions`` compare)."""
    return resource.digest[:32]


@dataclass(frozen=True, slots=True)
class DeltaResponse:
    """A delta response to send: ``resources`` (changed, in name order) and ``removed``
    names of ``type_url``; ``version`` is the snapshot's version of the type (the
    ``system_version_info``, for status and debugging only).

    VHDS only: ``aliases``, when not empty, holds per resource (same order) the aliases
    it answers; ``unresolved`` are aliases that name no virtual host, each sent as a
    resource of that name and alias with no content (how Envoy learns its on-demand
    request has no answer)."""

    type_url: TypeUrl
    version: Version
    nonce: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...]
    aliases: tuple[tuple[str, ...], ...] = ()
    unresolved: tuple[str, ...] = ()

    def to_proto(self) -> discovery_pb2.DeltaDiscoveryResponse:
        """The ``DeltaDiscoveryResponse`` message for this response."""
        aliases = self.aliases or ((),) * len(self.resources)
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=self.version,
            type_url=self.type_url,
            nonce=self.nonce,
            resources=[
                *(
                    discovery_pb2.Resource(
                        name=r.name, version=resource_version(r), resource=r.to_any(), aliases=a
                    )
                    for r, a in zip(self.resources, aliases, strict=True)
                ),
                *(discovery_pb2.Resource(name=n, aliases=[n]) for n in self.unresolved),
            ],
            removed_resources=list(self.removed),
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the resources carried, in order."""
        return tuple(r.name for r in self.resources)


#: Everything a protocol core emits.
Event = Response | DeltaResponse | Ack | Nack | NotApplied


#: The types the protocol cores serve.
SERVED_TYPES: frozenset[TypeUrl] = frozenset(PUSH_ORDER)
#: The types a delta ADS stream serves: those and VHDS's virtual hosts.
DELTA_ADS_TYPES: frozenset[TypeUrl] = SERVED_TYPES | {VIRTUAL_HOST}


def clusters_referenced(resources: Iterable[Resource]) -> set[str]:
    """The clusters ``resources`` (listeners, route configurations, virtual hosts)
    reference."""
    return {name for r in resources for t, name in r.references if t == CLUSTER}


def trim_node(node: base_pb2.Node) -> base_pb2.Node:
    """The identifying part of ``node``: Envoy sends tens of KB of extension names."""
    kept = base_pb2.Node(
        id=node.id,
        cluster=node.cluster,
        user_agent_name=node.user_agent_name,
        client_features=node.client_features,
    )
    if node.HasField("metadata"):
        kept.metadata.CopyFrom(node.metadata)
    if node.HasField("locality"):
        kept.locality.CopyFrom(node.locality)
    which = node.WhichOneof("user_agent_version_type")
    if which == "user_agent_version":
        kept.user_agent_version = node.user_agent_version
    elif which == "user_agent_build_version":
        kept.user_agent_build_version.CopyFrom(node.user_agent_build_version)
    return kept


def user_agent(node: base_pb2.Node) -> str:
    """What a node says it is: ``user_agent_name`` and its version (``envoy 1.36.2``, from
    ``user_agent_build_version``'s semantic version, or ``user_agent_version``), at most
    100 characters of text a client chose; "" when it says nothing."""
    name = node.user_agent_name.strip()
    which = node.WhichOneof("user_agent_version_type")
    version = ""
    if which == "user_agent_build_version":
        v = node.user_agent_build_version.version
        version = f"{v.major_number}.{v.minor_number}.{v.patch}"
    elif which == "user_agent_version":
        version = node.user_agent_version.strip()
    text = " ".join(part for part in (name, version) if part)
    return "".join(c if c.isprintable() else "?" for c in text[:100])


def requested_type(asked: str, stream_type: TypeUrl | None, known: Collection[TypeUrl]) -> TypeUrl:
    """The type a request is for: ``asked`` (its ``type_url``) on an ADS stream
    (``stream_type`` None), where it is required; on a per-type stream, the stream's own
    type, which ``asked`` may repeat or leave empty.

    Raises ProtocolError (INVALID_ARGUMENT) for a missing ADS type, another type than a
    per-type stream's, or a type not in ``known``.
    """
    type_url = TypeUrl(asked)
    if stream_type is None:
        if not type_url:
            raise ProtocolError("INVALID_ARGUMENT", "an ADS request must carry type_url")
    elif not type_url:
        type_url = stream_type
    elif type_url != stream_type:
        raise ProtocolError(
            "INVALID_ARGUMENT", f"{type_url} requested on the {stream_type} service"
        )
    if type_url not in known:
        raise ProtocolError("INVALID_ARGUMENT", f"unknown type_url {type_url!r}")
    return type_url


def kept_version(version: Version, kept: Mapping[str, Resource]) -> Version:
    """The version of a CDS response that carries, besides the snapshot's clusters at
    ``version``, the removed clusters ``kept``: ``<version>+<hash of the kept names and
    contents>``, which differs from the snapshot's and names what is kept."""
    h = hashlib.sha256()
    for name in sorted(kept):
        h.update(f"{name}\0{kept[name].digest}\n".encode())
    return Version(f"{version}+{h.hexdigest()[:8]}")


def record_events(
    cache: SnapshotCache[K], client_id: str, events: Iterable[Event]
) -> list[Nack | NotApplied]:
    """Record ``events`` of client ``client_id`` in ``cache``'s client status.

    Returns the NACKs and not-applied reports that are news (not the same rejection of the
    same version seen before), so the caller logs each rejection once. Events of a client
    with no open record are ignored.
    """
    news: list[Nack | NotApplied] = []
    for ev in events:
        if isinstance(ev, Response | DeltaResponse):
            cache.record_sent(client_id, ev.type_url, ev.version, ev.nonce)
        elif isinstance(ev, Ack):
            cache.record_ack(client_id, ev.type_url, ev.version, ev.nonce)
        elif isinstance(ev, Nack):
            if cache.record_nack(
                client_id, ev.type_url, ev.rejected_version, ev.nonce, ev.code, ev.message
            ):
                news.append(ev)
        elif cache.record_not_applied(client_id, ev.type_url, ev.served_version):
            news.append(ev)
    return news


__all__ = [
    "DELTA_ADS_TYPES",
    "SERVED_TYPES",
    "WILDCARD",
    "Ack",
    "DeltaResponse",
    "Event",
    "Nack",
    "NotApplied",
    "ProtocolError",
    "Response",
    "StatusCode",
    "clusters_referenced",
    "kept_version",
    "record_events",
    "requested_type",
    "resource_version",
    "trim_node",
]
