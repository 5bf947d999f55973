"""A simulated Envoy speaking SotW ADS over gRPC (grpclib), for the load generator.

``XdsClient.run`` opens one HTTP/2 connection and one ADS stream, like an Envoy sidecar:
CDS wildcard first (with the node), EDS for the EDS clusters it received, LDS wildcard
once clusters arrived, RDS for the route configurations its listeners name. Every response
is parsed (``DiscoveryResponse`` and every resource's ``Any``) and ACKed with its
``version_info`` and ``response_nonce``; the receive time and version of each type are
recorded (``time.time()``, comparable with other processes on the machine).

With a ``token`` (``xdsd token``), the client carries it as Envoy does with a bootstrap of
``xdsd bootstrap --token-file`` (``authorization: Bearer TOKEN`` metadata on the stream)
and, once clusters arrived, subscribes to its SDS ``default`` secret, the workload
certificate and key xdsd's CA issues it; it is synced only once that secret (a certificate
chain and a key) arrived and was ACKed.

Simplification: a CDS response is ACKed as soon as its new EDS subscription is sent, where
Envoy ACKs it after the EDS response warmed the clusters; the server holds LDS/RDS a little
less long than it would for Envoy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality

ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
PREFIX = "type.googleapis.com/"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = PREFIX + "envoy.config.listener.v3.Listener"
RDS = PREFIX + "envoy.config.route.v3.RouteConfiguration"
SDS = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
TYPES = (CDS, EDS, LDS, RDS)
#: VHDS's virtual hosts (delta clients only, ``_deltaclient``).
VHDS_TYPE = PREFIX + "envoy.config.route.v3.VirtualHost"
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds", SDS: "sds", VHDS_TYPE: "vhds"}
MESSAGES = {
    CDS: cluster_pb2.Cluster,
    EDS: endpoint_pb2.ClusterLoadAssignment,
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
    SDS: secret_pb2.Secret,
}
#: The SDS secret of a proxy's own certificate and key.
WORKLOAD_SECRET = "default"
HCM_TYPE = PREFIX + (
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def make_node(node_id: str, service: str, instance_ip: str, *, fat: int = 0) -> base_pb2.Node:
    """A sidecar's node: ``cluster`` = the service, ``metadata.instance_ip``. ``fat`` adds
    that many bytes of extension entries, like the block Envoy sends."""
    metadata = struct_pb2.Struct()
    metadata.update({"instance_ip": instance_ip})
    node = base_pb2.Node(id=node_id, cluster=service, metadata=metadata, user_agent_name="envoy")
    i = 0
    while fat > 0 and node.ByteSize() < fat:
        node.extensions.add(
            name=f"envoy.extension.number.{i:05d}.with.a.long.name", category="envoy.filters"
        )
        i += 1
    return node


@dataclass(slots=True)
class TypeRecord:
    """What a client holds of one type."""

    version: str = ""
    nonce: str = ""
    received_at: float = 0.0  # time.time() the last response arrived
    acked_at: float = 0.0  # time.time() its ACK was written
    responses: int = 0
    names: tuple[str, ...] = ()  # EDS/RDS subscription


@dataclass(slots=True)
class XdsClient:
    """One simulated Envoy. ``on_ack(client)`` is called after every ACK is written.

    ``fat_node``: send the node on every request (as Envoy does without
    ``set_node_on_first_message_only``) instead of only on the first. ``token``: prove
    the node's service with it and get a workload certificate (module docstring).
    """

    node: base_pb2.Node
    on_ack: Callable[[XdsClient], None] = lambda _c: None
    fat_node: bool = False
    token: str = field(default="", repr=False)
    types: dict[str, TypeRecord] = field(
        default_factory=lambda: {t: TypeRecord() for t in (*TYPES, SDS)}
    )
    certificates: int = 0  # workload certificates received (first one and renewals)
    received_bytes: int = 0  # the encoded size of every response received
    resources: dict[str, int] = field(default_factory=dict)  # type → count held
    connected: bool = False
    failures: int = 0  # connections or streams that failed to open
    ends: int = 0  # streams that ended after opening
    error: str = ""
    resumed: bool = False  # the current stream started from a held configuration
    session_acks: set[str] = field(default_factory=set)
    synced_at: float = 0.0  # time.time() the current stream became synced
    _sent_first: bool = False
    _opened: bool = False  # the current attempt opened its stream

    def synced(self) -> bool:
        """True once the current stream delivered a full configuration: every type ACKed
        on it, or, on a stream resumed after a reconnect (where the server rightly resends
        no unchanged CDS/LDS), EDS and RDS ACKed on it (RDS comes last in push order)."""
        need: tuple[str, ...] = (EDS, RDS) if self.resumed else TYPES
        if self.token:
            need += (SDS,)
        return all(t in self.session_acks for t in need)

    def _request(
        self,
        type_url: str,
        names: tuple[str, ...] = (),
        *,
        ack: bool = True,
        held: bool = False,
    ) -> discovery_pb2.DiscoveryRequest:
        """A request for ``type_url``: an ACK of the last response (``ack``), or a first
        request of a stream carrying the version held (``held``) or none."""
        record = self.types[type_url]
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=names,
            version_info=record.version if ack or held else "",
            response_nonce=record.nonce if ack else "",
        )
        if not self._sent_first or self.fat_node:
            req.node.CopyFrom(self.node)
            self._sent_first = True
        return req

    async def run(
        self, host: str, port: int, *, retry_until: float = 0.0, retry_delay: float = 0.05
    ) -> None:
        """Connect and follow the server until cancelled. A stream that ends is reopened
        at once (resuming: every subscription re-sent with the versions held, as Envoy
        does); a connection that fails is counted and retried after ``retry_delay`` (with
        jitter) until ``retry_until`` (time.monotonic())."""
        await follow(self, host, port, retry_until=retry_until, retry_delay=retry_delay)

    async def _session(self, host: str, port: int) -> None:
        channel = Channel(host, port)
        metadata = {"authorization": f"Bearer {self.token}"} if self.token else None
        try:
            async with channel.request(
                ADS_PATH,
                Cardinality.STREAM_STREAM,
                discovery_pb2.DiscoveryRequest,
                discovery_pb2.DiscoveryResponse,
                metadata=metadata,
            ) as stream:
                self._sent_first = False
                self.session_acks = set()
                self.synced_at = 0.0
                self.resumed = bool(self.types[CDS].version)
                await stream.send_message(self._request(CDS, ack=False, held=True))
                self.connected = self._opened = True
                requested_lds = self.resumed
                if self.resumed:
                    for t in (EDS, LDS, RDS, *((SDS,) if self.token else ())):
                        held = self._request(t, self.types[t].names, ack=False, held=True)
                        await stream.send_message(held)
                while True:
                    resp = await stream.recv_message()
                    if resp is None:
                        return
                    now = time.time()
                    self.received_bytes += resp.ByteSize()
                    type_url = resp.type_url
                    message = MESSAGES[type_url]
                    parsed = [message.FromString(a.value) for a in resp.resources]
                    record = self.types[type_url]
                    record.version, record.nonce = resp.version_info, resp.nonce
                    record.received_at = now
                    record.responses += 1
                    follow: list[discovery_pb2.DiscoveryRequest] = []
                    if type_url == CDS:
                        self.resources[CDS] = len(parsed)
                        eds = tuple(
                            sorted(
                                c.eds_cluster_config.service_name or c.name
                                for c in parsed
                                if c.type == cluster_pb2.Cluster.EDS
                            )
                        )
                        if eds != self.types[EDS].names:
                            self.types[EDS].names = eds
                            follow.append(self._request(EDS, eds))
                        if not requested_lds:
                            requested_lds = True
                            follow.append(self._request(LDS, ack=False))
                            if self.token:
                                self.types[SDS].names = (WORKLOAD_SECRET,)
                                follow.append(self._request(SDS, (WORKLOAD_SECRET,), ack=False))
                    elif type_url == LDS:
                        self.resources[LDS] = len(parsed)
                        rds = _route_names(parsed)
                        if rds != self.types[RDS].names:
                            self.types[RDS].names = rds
                            follow.append(self._request(RDS, rds))
                    elif type_url == SDS:
                        own = [
                            p
                            for p in parsed
                            if p.name == WORKLOAD_SECRET
                            and p.tls_certificate.certificate_chain.inline_bytes
                            and p.tls_certificate.private_key.inline_bytes
                        ]
                        if not own:
                            raise RuntimeError("an SDS response without the workload secret")
                        self.certificates += 1
                        self.resources[SDS] = len(parsed)
                    else:
                        self.resources[type_url] = self.resources.get(type_url, 0) + len(parsed)
                    ack = self._request(type_url, record.names)
                    for request in (*follow[:1], ack, *follow[1:]):
                        await stream.send_message(request)
                    record.acked_at = time.time()
                    del resp, parsed  # do not hold a response while waiting for the next
                    self.session_acks.add(type_url)
                    if not self.synced_at and self.synced():
                        self.synced_at = record.acked_at
                    self.on_ack(self)
        finally:
            self.connected = False
            channel.close()


class Follower(Protocol):
    """A simulated client ``follow`` keeps connected: its session and its counters."""

    _opened: bool
    ends: int
    failures: int
    error: str
    connected: bool

    async def _session(self, host: str, port: int) -> None: ...


async def follow(
    client: Follower, host: str, port: int, *, retry_until: float, retry_delay: float
) -> None:
    """Run ``client``'s sessions until cancelled: a stream that ends is reopened at once;
    a connection that fails is counted (``failures`` before the stream opened, else
    ``ends``) and retried after ``retry_delay`` (with jitter) until ``retry_until``
    (time.monotonic())."""
    while True:
        client._opened = False
        try:
            await client._session(host, port)
            client.ends += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:  # connection refused, reset, stream error
            if client._opened:
                client.ends += 1
            else:
                client.failures += 1
            client.error = repr(e)
            client.connected = False
            if time.monotonic() >= retry_until:
                return
            await asyncio.sleep(retry_delay * (0.5 + random.random()))


def _route_names(listeners: list[listener_pb2.Listener]) -> tuple[str, ...]:
    names: set[str] = set()
    for listener in listeners:
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.typed_config.type_url == HCM_TYPE:
                    hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        names.add(hcm.rds.route_config_name)
    return tuple(sorted(names))
