"""A simulated Envoy speaking delta ADS (``DeltaAggregatedResources``), for the load
generator's ``--delta`` mode.

``DeltaXdsClient`` follows the server as a delta Envoy sidecar does: CDS and LDS as
wildcard subscriptions, EDS for the EDS clusters it received, RDS for the route
configurations its listeners name, and, with ``vhds`` (node metadata ``vhds``, what
``xdsd bootstrap --transport delta`` writes), VHDS: the route configurations' namespaces
and, as an application calling a few services would make Envoy do on demand, the aliases
of the virtual hosts of the services in ``calls`` (``ROUTE_CONFIG/HOST``: the HTTP
proxy's ``svc-NNNNN:PORT`` and the port's ``svc-NNNNN``). Every response is parsed and
ACKed; per type it records the system version, the receive and ACK times, and the bytes
received (``received_bytes``, every response's encoded size). It has the attributes the
load generator's worker reads of ``XdsClient``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.service.discovery.v3 import discovery_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality

from bench._xdsclient import CDS, EDS, LDS, MESSAGES, RDS, TypeRecord, _route_names, follow

DELTA_ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
VHDS = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
DELTA_TYPES = (CDS, EDS, LDS, RDS)


@dataclass(slots=True)
class DeltaXdsClient:
    """One simulated delta Envoy (module docstring). ``calls``: (service name, port) of
    the services its application calls."""

    node: base_pb2.Node
    on_ack: Callable[[DeltaXdsClient], None] = lambda _c: None
    vhds: bool = True
    calls: tuple[tuple[str, int], ...] = ()
    types: dict[str, TypeRecord] = field(
        default_factory=lambda: {t: TypeRecord() for t in (*DELTA_TYPES, VHDS)}
    )
    resources: dict[str, int] = field(default_factory=dict)
    received_bytes: int = 0
    certificates: int = 0
    connected: bool = False
    failures: int = 0
    ends: int = 0
    error: str = ""
    session_acks: set[str] = field(default_factory=set)
    synced_at: float = 0.0
    _opened: bool = False

    def synced(self) -> bool:
        """Every type (and, with ``vhds``, the virtual hosts) ACKed on this stream."""
        need = (*DELTA_TYPES, VHDS) if self.vhds else DELTA_TYPES
        return all(t in self.session_acks for t in need)

    async def run(
        self, host: str, port: int, *, retry_until: float = 0.0, retry_delay: float = 0.05
    ) -> None:
        """Connect and follow the server until cancelled (a failed connection retried
        until ``retry_until``, time.monotonic())."""
        await follow(self, host, port, retry_until=retry_until, retry_delay=retry_delay)

    def _aliases(self, route_configs: tuple[str, ...]) -> list[str]:
        out = list(route_configs)
        for name, port in self.calls:
            if "http_proxy" in route_configs:
                out.append(f"http_proxy/{name}:{port}")
            if str(port) in route_configs:
                out.append(f"{port}/{name}")
        return out

    async def _session(self, host: str, port: int) -> None:
        channel = Channel(host, port)
        try:
            async with channel.request(
                DELTA_ADS_PATH,
                Cardinality.STREAM_STREAM,
                discovery_pb2.DeltaDiscoveryRequest,
                discovery_pb2.DeltaDiscoveryResponse,
            ) as stream:
                self.session_acks = set()
                self.synced_at = 0.0
                first = discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, node=self.node)
                await stream.send_message(first)
                self.connected = self._opened = True
                asked_lds = asked_vhds = False
                while True:
                    resp = await stream.recv_message()
                    if resp is None:
                        return
                    now = time.time()
                    self.received_bytes += resp.ByteSize()
                    type_url = resp.type_url
                    message = MESSAGES.get(type_url, route_components_pb2.VirtualHost)
                    parsed = [
                        message.FromString(r.resource.value)
                        for r in resp.resources
                        if r.HasField("resource")
                    ]
                    record = self.types[type_url]
                    record.version, record.nonce = resp.system_version_info, resp.nonce
                    record.received_at = now
                    record.responses += 1
                    follow: list[discovery_pb2.DeltaDiscoveryRequest] = []
                    if type_url == CDS:
                        eds = tuple(
                            sorted(
                                c.eds_cluster_config.service_name or c.name
                                for c in parsed
                                if c.type == cluster_pb2.Cluster.EDS
                            )
                        )
                        new = sorted(set(eds) - set(self.types[EDS].names))
                        if new:
                            self.types[EDS].names = tuple(sorted({*self.types[EDS].names, *eds}))
                            follow.append(_subscribe(EDS, new))
                        if not asked_lds:
                            asked_lds = True
                            follow.append(discovery_pb2.DeltaDiscoveryRequest(type_url=LDS))
                    elif type_url == LDS:
                        rds = _route_names(parsed)
                        new = sorted(set(rds) - set(self.types[RDS].names))
                        if new:
                            self.types[RDS].names = tuple(sorted({*self.types[RDS].names, *rds}))
                            follow.append(_subscribe(RDS, new))
                    elif type_url == RDS and self.vhds and not asked_vhds:
                        asked_vhds = True
                        follow.append(_subscribe(VHDS, self._aliases(self.types[RDS].names)))
                    self.resources[type_url] = self.resources.get(type_url, 0) + len(parsed)
                    ack = discovery_pb2.DeltaDiscoveryRequest(
                        type_url=type_url, response_nonce=resp.nonce
                    )
                    for request in (ack, *follow):
                        await stream.send_message(request)
                    record.acked_at = time.time()
                    del resp, parsed
                    self.session_acks.add(type_url)
                    if not self.synced_at and self.synced():
                        self.synced_at = record.acked_at
                    self.on_ack(self)
        finally:
            self.connected = False
            channel.close()


def _subscribe(type_url: str, names: list[str]) -> discovery_pb2.DeltaDiscoveryRequest:
    return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=names)
