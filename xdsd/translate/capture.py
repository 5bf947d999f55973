"""Capture: the listeners that take a sidecar's redirected outbound TCP (``xdsd capture``).

How this works: ``xdsd capture apply`` makes the kernel redirect the VM's outbound TCP to
the sidecar's capture port (node metadata ``capture``). The listener there,
``outbound_capture`` on ``outbound_ip:PORT``, has ``use_original_dst``: Envoy reads the
address the application dialled and hands the connection to the listener bound to it —
exactly, else ``0.0.0.0`` on its port — or keeps it when there is none. As Istio does,
the listeners that take those connections are *virtual*: ``capture|PORT`` on
``0.0.0.0:PORT`` with ``bind_to_port: false``, one per destination port a reachable
service is dialled on, so a connection to a service's endpoint address (not only to a
virtual address) goes through the mesh:

- a service is dialled at each IP endpoint's address on the port the endpoint serves
  (``Endpoint.port_for``: its target port) and at each address its file pins
  (``Service.addresses``, IPs or CIDRs) on the service port;
- an HTTP service port: a filter chain matched by those addresses (one for all the
  HTTP services of the port), an HTTP connection manager with the per-port route
  configuration (RDS, named like the service port): the Host header decides, as on the
  per-port listener;
- a TCP/TLS service port: the chains of the service's own outbound listener (``l4``: its
  tcp/tls rules as the caller sees them; a TLS service's own chain after its SNI rules'
  chains, as on a virtual-address listener), each catch-all chain matched by the
  service's addresses instead; chains a rule's ``destinationSubnets`` matches keep their
  subnets (on the service port). Services sharing a port are told apart by address;
- everything else — a destination no reachable service has — goes to the default chain:
  ``PassthroughCluster`` (an ORIGINAL_DST cluster, connecting where the application
  dialled) under ALLOW_ANY, ``BlackHoleCluster`` (no endpoints: the connection is closed)
  under REGISTRY_ONLY, on the virtual listeners as on ``outbound_capture``.

``outbound_capture`` sends a connection dialled to itself (its own address and port) to
the black hole: passed through, it would come back to it forever. Services are those the
node's default per-port listeners serve (the Sidecar scope's reachable services; those an
explicit egress listener serves are not captured). Two chains never match the same
(address, server name): the first service, in key order, keeps it. Connections the rules
leave alone (loopback, where the per-port and virtual-address listeners already are, the
sidecar's own) never reach these listeners. With a wildcard ``outbound_ip`` the sidecar's
per-port listeners are bound on ``0.0.0.0:PORT`` and take the handed-off connections
themselves, so there are no virtual listeners. Pure: plans are values, listeners are
built from them (memoized by the caller).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xdsd.errors import Problem
from xdsd.located import is_ip
from xdsd.model import Mesh, Port, ResourceKey, Service, VirtualService
from xdsd.resources import pack
from xdsd.translate.cluster_policy import CONNECT_TIMEOUT
from xdsd.translate.config_sources import duration
from xdsd.translate.l4 import FilterChainPlan, L4Caller, cidr_range, plan_l4_listener
from xdsd.translate.listeners import (
    HCM_FILTER,
    RULE_FILTERS,
    TCP_PROXY_FILTER,
    TLS_INSPECTOR,
    http_connection_manager,
    port_route_name,
)
from xdsd.translate.node import NODE_PATH, ConfigSourceKind, is_wildcard
from xdsd.translate.placement import PortGroup, overlaps

#: The original-destination listener the capture rules redirect to.
CAPTURE_LISTENER = "outbound_capture"
#: Where unknown destinations go under ALLOW_ANY (Istio's name): where they were dialled.
PASSTHROUGH_CLUSTER = "PassthroughCluster"
#: Where unknown destinations go under REGISTRY_ONLY (Istio's name): nowhere.
BLACKHOLE_CLUSTER = "BlackHoleCluster"


def virtual_listener_name(port: int) -> str:
    """``capture|PORT``: the virtual listener of destination port ``PORT``."""
    return f"capture|{port}"


@dataclass(frozen=True, slots=True)
class CaptureChain:
    """One filter chain of a virtual listener: the destinations it matches (normalized
    CIDRs, never empty) and either the HTTP route configuration it routes by (``routes``)
    or the TCP proxy chain it ends in (``tcp``, whose own ``prefix_ranges`` are unused)."""

    prefix_ranges: tuple[str, ...]
    routes: str = ""
    tcp: FilterChainPlan | None = None

    @property
    def server_names(self) -> tuple[str, ...]:
        return self.tcp.server_names if self.tcp is not None else ()


@dataclass(frozen=True, slots=True)
class VirtualListenerPlan:
    """The virtual listener of one destination port: its chains in order, and where the
    rest goes (``registry_only``: the black hole, else passed through)."""

    port: int
    chains: tuple[CaptureChain, ...]
    registry_only: bool

    @property
    def inspects_tls(self) -> bool:
        """True when a chain matches by SNI, so the listener needs the TLS inspector."""
        return any(c.server_names for c in self.chains)


def destinations(service: Service, port: Port) -> dict[int, tuple[str, ...]]:
    """Where a connection to ``service``'s ``port`` is dialled: normalized CIDRs by
    destination port — each IP endpoint (a /32 or /128) on the port it serves, each
    pinned address on ``port.number``. Hostname endpoints are left out (no address)."""
    out: dict[int, list[str]] = {}
    for endpoint in service.endpoints:
        if is_ip(endpoint.address):
            cidr = str(ipaddress.ip_network(endpoint.address))
            found = out.setdefault(endpoint.port_for(port), [])
            if cidr not in found:
                found.append(cidr)
    for address in service.addresses:
        cidr = str(ipaddress.ip_network(address, strict=False))
        found = out.setdefault(port.number, [])
        if cidr not in found:
            found.append(cidr)
    return {number: tuple(cidrs) for number, cidrs in out.items()}


def plan_virtual_listeners(
    mesh: Mesh,
    rules: Mapping[ResourceKey, VirtualService],
    groups: Iterable[PortGroup],
    caller: L4Caller,
    registry_only: bool,
) -> tuple[VirtualListenerPlan, ...]:
    """The virtual listeners of the service ports in ``groups`` (see the module doc),
    ascending by destination port. ``rules`` is the VirtualService of each service.

    Raises TranslationError as ``l4.plan_l4_listener`` does for the rules of a TCP/TLS
    service that cannot be translated."""
    by_port: dict[int, list[CaptureChain]] = {}
    for group in groups:
        for service, port in group.http:
            routes = port_route_name(group.number)
            for number, cidrs in destinations(service, port).items():
                by_port.setdefault(number, []).append(CaptureChain(cidrs, routes=routes))
        # TCP/TLS services each by their own destinations, even where several share the
        # port (which a per-port listener cannot tell apart)
        for service, port in group.tcp:
            own = PortGroup(group.number, ((service, port),))
            plan = plan_l4_listener(mesh, rules, own, caller, own_default=True)
            where = destinations(service, port)
            for chain in plan.chains:
                if chain.prefix_ranges:
                    by_port.setdefault(group.number, []).append(
                        CaptureChain(chain.prefix_ranges, tcp=chain)
                    )
                    continue
                for number, cidrs in where.items():
                    by_port.setdefault(number, []).append(CaptureChain(cidrs, tcp=chain))
    out = []
    for number in sorted(by_port):
        chains = _merged(_unshadowed(by_port[number]))
        if chains:
            out.append(VirtualListenerPlan(number, chains, registry_only))
    return tuple(out)


def _unshadowed(chains: Sequence[CaptureChain]) -> tuple[CaptureChain, ...]:
    """``chains`` with every (destination, server name) pair an earlier chain matches
    taken out (Envoy refuses two chains with equal matches); a chain left with nothing
    is dropped, one left with part of its destinations keeps those."""
    claimed: set[tuple[str, str]] = set()
    out: list[CaptureChain] = []
    for chain in chains:
        names = chain.server_names or ("",)
        kept = tuple(
            cidr for cidr in chain.prefix_ranges if not any((cidr, n) in claimed for n in names)
        )
        claimed.update((cidr, n) for cidr in chain.prefix_ranges for n in names)
        if kept == chain.prefix_ranges:
            out.append(chain)
        elif kept:
            out.append(CaptureChain(kept, chain.routes, chain.tcp))
    return tuple(out)


def _merged(chains: Sequence[CaptureChain]) -> tuple[CaptureChain, ...]:
    """``chains`` with those that do the same (same routes, same TCP chain) made one, at
    the first one's place, matching all their destinations: every HTTP service of a port
    shares one chain and one connection manager (their matches are disjoint, so order
    among them does not matter)."""
    order: list[tuple[str, FilterChainPlan | None]] = []
    cidrs: dict[tuple[str, FilterChainPlan | None], list[str]] = {}
    for chain in chains:
        key = (chain.routes, chain.tcp)
        if key not in cidrs:
            order.append(key)
            cidrs[key] = []
        cidrs[key].extend(chain.prefix_ranges)
    return tuple(CaptureChain(tuple(cidrs[k]), k[0], k[1]) for k in order)


def capture_problems(
    capture: int,
    outbound_ip: str,
    instance_ip: str,
    outbound_ports: Iterable[int],
    inbound_ports: Iterable[int],
    proxy_port: int,
) -> list[Problem]:
    """Why a sidecar cannot bind its capture listener on ``outbound_ip:capture`` (empty
    when it can): the port is the HTTP proxy's, a per-port outbound listener's, or an
    inbound listener's on an overlapping address."""
    where = f"{outbound_ip}:{capture}"
    fix = "choose another capture port in the bootstrap's metadata"
    if capture == proxy_port:
        return [Problem(NODE_PATH, 0, "capture", f"{where} is the HTTP proxy listener's: {fix}")]
    if capture in set(outbound_ports):
        return [
            Problem(
                NODE_PATH,
                0,
                "capture",
                f"{where} is the outbound listener of service port {capture}: {fix}",
            )
        ]
    if capture in set(inbound_ports) and overlaps(instance_ip, outbound_ip):
        return [
            Problem(
                NODE_PATH,
                0,
                "capture",
                f"{where} and the inbound listener {instance_ip}:{capture} would bind the "
                f"same port: {fix}",
            )
        ]
    return []


def _tcp_proxy(stat_prefix: str, cluster: str) -> tcp_proxy_pb2.TcpProxy:
    return tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)


def _unknown_cluster(registry_only: bool) -> str:
    return BLACKHOLE_CLUSTER if registry_only else PASSTHROUGH_CLUSTER


def _listener(name: str, ip: str, port: int) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=name, stat_prefix=name.replace("|", "_"), traffic_direction=base_pb2.OUTBOUND
    )
    listener.address.socket_address.address = ip
    listener.address.socket_address.port_value = port
    listener.enable_reuse_port.value = False
    return listener


def capture_listener(ip: str, port: int, registry_only: bool) -> listener_pb2.Listener:
    """``outbound_capture`` on ``ip:port``: hands each redirected connection to the
    listener of its original destination (``use_original_dst``), and what none takes to
    the passthrough (the black hole with ``registry_only``); a connection dialled to the
    listener itself to the black hole."""
    listener = _listener(CAPTURE_LISTENER, ip, port)
    listener.use_original_dst.value = True
    loop = listener.filter_chains.add(name="self")
    loop.filter_chain_match.destination_port.value = port
    if not is_wildcard(ip):
        address, length = cidr_range(ip)
        loop.filter_chain_match.prefix_ranges.add(address_prefix=address).prefix_len.value = length
    proxy = _tcp_proxy(CAPTURE_LISTENER, BLACKHOLE_CLUSTER)
    loop.filters.add(name=TCP_PROXY_FILTER).typed_config.CopyFrom(pack(proxy))
    _default_chain(listener, CAPTURE_LISTENER, registry_only)
    return listener


def _default_chain(listener: listener_pb2.Listener, stat_prefix: str, registry_only: bool) -> None:
    chain = listener.default_filter_chain
    chain.name = "unknown"
    proxy = _tcp_proxy(stat_prefix, _unknown_cluster(registry_only))
    chain.filters.add(name=TCP_PROXY_FILTER).typed_config.CopyFrom(pack(proxy))


def virtual_listener(
    plan: VirtualListenerPlan, source: ConfigSourceKind, on_demand: bool = False
) -> listener_pb2.Listener:
    """``capture|PORT`` on ``0.0.0.0:PORT``, not bound: a chain per chain of ``plan``
    matched by destination address (and SNI, with the TLS inspector when a chain looks at
    it), HTTP chains routing by the route configuration they name (fetched the way
    ``source`` says; with ``on_demand``, a VHDS class, the on-demand filter first), TCP
    chains proxying to their clusters; the default chain for the rest."""
    name = virtual_listener_name(plan.port)
    stat_prefix = name.replace("|", "_")
    listener = _listener(name, "0.0.0.0", plan.port)
    listener.bind_to_port.value = False
    if plan.inspects_tls:
        inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
        inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    for spec in plan.chains:
        chain = listener.filter_chains.add()
        match = chain.filter_chain_match
        for cidr in spec.prefix_ranges:
            address, length = cidr_range(cidr)
            match.prefix_ranges.add(address_prefix=address).prefix_len.value = length
        if spec.tcp is None:
            hcm = http_connection_manager(
                f"{stat_prefix}_{spec.routes}",
                rds=(spec.routes, source),
                filters=RULE_FILTERS,
                on_demand=on_demand,
            )
            chain.filters.add(name=HCM_FILTER).typed_config.CopyFrom(pack(hcm))
            continue
        match.server_names.extend(spec.tcp.server_names)
        clusters = spec.tcp.clusters
        if len(clusters) == 1:
            proxy = _tcp_proxy(stat_prefix, clusters[0][0])
        else:
            proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
            for cluster, weight in clusters:
                proxy.weighted_clusters.clusters.add(name=cluster, weight=weight)
        if spec.tcp.idle_timeout is not None:
            proxy.idle_timeout.CopyFrom(duration(spec.tcp.idle_timeout))
        chain.filters.add(name=TCP_PROXY_FILTER).typed_config.CopyFrom(pack(proxy))
    _default_chain(listener, stat_prefix, plan.registry_only)
    return listener


def passthrough_cluster() -> cluster_pb2.Cluster:
    """``PassthroughCluster``: connects to the connection's original destination."""
    cluster = cluster_pb2.Cluster(
        name=PASSTHROUGH_CLUSTER,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
    )
    cluster.connect_timeout.CopyFrom(duration(CONNECT_TIMEOUT))
    return cluster


def blackhole_cluster() -> cluster_pb2.Cluster:
    """``BlackHoleCluster``: no endpoints; a TCP proxy to it closes the connection."""
    cluster = cluster_pb2.Cluster(name=BLACKHOLE_CLUSTER, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.CopyFrom(duration(CONNECT_TIMEOUT))
    return cluster
