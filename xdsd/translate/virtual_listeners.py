"""Virtual-address listeners: a sidecar listening on ``VIP:PORT`` for each service port.

How this works: a sidecar whose node metadata names a block (``virtual_addresses``)
gets, for every port of every service its scope lets it see, a listener
``outbound|VIP|PORT`` on the service's virtual address (``virtual_addresses``: pinned by
its file, else its slot in the node's block). An application that resolved the service's
name to that address (the sidecar's DNS listener) connects there unchanged; since every
service has its own address, services that share a port number no longer share a
listener, so two TCP services on one port are both reachable.

- The listeners of a class are planned as values (``VirtualPlan``): the (VIP, port) pairs
  and the service ports on each (normally one; several services may pin one address for
  HTTP and TLS, never for plain TCP). A plan depends on the block and the scope only.
- HTTP ports: an HTTP connection manager fetching the per-port route configuration
  ``PORT`` by RDS (the one the per-port listener uses, or the explicit egress listener's
  that serves the service), so the Host header decides, as in Istio; a bare-VIP Host
  gets no special route. A pair holding a service of resolution NONE uses the HTTP
  proxy's route configuration ``http_proxy`` with the dynamic forward proxy filter
  instead (``forward_proxy``): the request's Host is resolved as through HTTP_PROXY.
- TCP ports: a TCP proxy planned by ``l4.plan_l4_listener`` for that one service (its
  ``tcp`` rules: port, sourceLabels/sourceNamespace, weights; ``destinationSubnets``
  match the connection's destination, which is the VIP itself). A service of resolution
  NONE with a concrete host gets a STRICT_DNS cluster ``outbound_dns|PORT|SUBSET|HOST``
  to its host (the application's name, resolved by the proxy); a NONE wildcard host on a
  TCP port has nothing to connect to and gets no listener (``reachable_by_address``).
- TLS ports: the TLS inspector, the chains of the ``tls`` rules of the services on the
  pair, then each service's own chain (by its names as SNI when several share the pair);
  a NONE service's chain is Envoy's ``sni_dynamic_forward_proxy`` network filter before a
  TCP proxy to its dynamic forward proxy cluster (``forward_cluster``, added with the
  listener), so the SNI names the destination (a wildcard host included).

The TCP and TLS ports of NONE services are served here (and by capture) only: the shared
clusters, per-port listeners and route destinations leave them out
(``Service.routed_ports``), so a class without virtual addresses gets what it got when the
sources dropped those ports.

Bind checks (``bind_problems``): pinned addresses can be anything, and a node's block
may hold its own addresses, so every VIP listener is checked against the node's other
sockets on its port: inbound listeners, the application's ``127.0.0.1:targetPort``, the
HTTP proxy, the per-port listeners and explicit egress listeners.

Builders here are pure functions of their arguments (memoized by the caller).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import (
    sni_dynamic_forward_proxy_pb2 as sni_dfp_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xdsd.errors import Problem
from xdsd.model import (
    DEFAULT_NAMESPACE,
    DestinationRule,
    Endpoint,
    Mesh,
    Port,
    Protocol,
    Resolution,
    Service,
)
from xdsd.resources import pack
from xdsd.translate.clusters import ClusterFlavor, OutboundCluster, build_outbound_cluster
from xdsd.translate.forward_proxy import FORWARD_PROXY_FILTER, dns_cache_config
from xdsd.translate.l4 import FilterChainPlan, L4ListenerPlan
from xdsd.translate.listeners import (
    HCM_FILTER,
    HTTP_PROXY_PORT,
    RULE_FILTERS,
    TCP_PROXY_FILTER,
    TLS_INSPECTOR,
    http_connection_manager,
    outbound_l4_listener,
    outbound_listener_name,
)
from xdsd.translate.node import NODE_PATH, ConfigSourceKind, is_wildcard
from xdsd.translate.placement import APPLICATION_IP, overlaps
from xdsd.translate.sidecar_scope import Scope
from xdsd.translate.virtual_addresses import AddressBlock, VirtualAddresses

SNI_FORWARD_PROXY_FILTER = "envoy.filters.network.sni_dynamic_forward_proxy"
#: The first field of the DNS clusters of resolution NONE services on TCP ports.
DNS_CLUSTER_PREFIX = "outbound_dns"


@dataclass(frozen=True, slots=True)
class VirtualPair:
    """One virtual-address listener: its address, port and the service ports it serves
    (services in key order; one unless several services pin the address)."""

    vip: str
    port: int
    members: tuple[tuple[Service, Port], ...]

    @property
    def name(self) -> str:
        """``outbound|VIP|PORT``."""
        return outbound_listener_name(self.vip, self.port)


@dataclass(frozen=True, slots=True)
class VirtualPlan:
    """Every virtual-address listener of a class, in (service, port) order, and the
    problems that stop some (a plain TCP port shared through one pinned address, HTTP
    next to TCP/TLS on one pair)."""

    pairs: tuple[VirtualPair, ...]
    problems: tuple[Problem, ...] = ()


def sees(scope: Scope, service: Service, port: Port) -> bool:
    """True when ``scope`` lets a sidecar reach ``port`` of ``service``: its catch-all
    egress imports the service, or an explicit egress listener serves it on that port."""
    reachable = scope.reachable
    if reachable is None or service.key in reachable:
        return True
    return any(e.port == port.number and service.key in e.services for e in scope.explicit)


def plan_virtual(
    services: Iterable[Service],
    scope: Scope,
    virtual: VirtualAddresses,
    block: AddressBlock,
) -> VirtualPlan:
    """The virtual-address listeners of a sidecar whose block is ``block`` and whose
    scope is ``scope`` (see the module doc)."""
    by_pair: dict[tuple[str, int], list[tuple[Service, Port]]] = {}
    for service in services:
        ports = [p for p in service.ports if sees(scope, service, p)]
        if not ports:
            continue
        addresses = virtual.addresses_of(service.key, block)
        for port in ports:
            if _unreachable(service, port):
                continue
            for vip in addresses:
                by_pair.setdefault((vip, port.number), []).append((service, port))
    pairs: list[VirtualPair] = []
    problems: list[Problem] = []
    for (vip, number), members in by_pair.items():
        problem = _sharing_problem(vip, number, members)
        if problem is not None:
            problems.append(problem)
            continue
        pairs.append(VirtualPair(vip, number, tuple(members)))
    return VirtualPlan(tuple(pairs), tuple(problems))


def _unreachable(service: Service, port: Port) -> bool:
    """A NONE wildcard host's TCP port: a connection carries no name to go by."""
    return (
        service.resolution is Resolution.NONE
        and service.name.startswith("*")
        and port.protocol is Protocol.TCP
    )


def _sharing_problem(vip: str, number: int, members: list[tuple[Service, Port]]) -> Problem | None:
    """Why services sharing ``vip:number`` cannot share its listener (None when they
    can: all HTTP, or all TLS)."""
    if len(members) < 2:
        return None
    http = [m for m in members if m[1].protocol.is_http]
    plain = [m for m in members if m[1].protocol is Protocol.TCP]
    if not plain and (not http or len(http) == len(members)):
        return None
    first, second = members[0][0], members[1][0]
    return _problem(
        second,
        f"{second.fqdn} and {first.fqdn} both have the virtual address {vip} and port "
        f"{number}, which only HTTP services (told apart by Host) or only TLS services (by "
        "SNI) may share: give one of them its own address",
    )


def is_forward(pair: VirtualPair) -> bool:
    """True when a service of resolution NONE is on the pair (served through the
    dynamic forward proxy)."""
    return any(s.resolution is Resolution.NONE for s, _ in pair.members)


def virtual_http_listener(
    vip: str,
    port: int,
    route_name: str,
    source: ConfigSourceKind,
    forward: bool = False,
    on_demand: bool = False,
) -> Any:
    """The listener ``outbound|VIP|PORT`` of HTTP services: routes by Host from the route
    configuration ``route_name`` (fetched the way ``source`` says); with ``forward``, the
    dynamic forward proxy filter runs before the router (resolution NONE); with
    ``on_demand`` (a VHDS class), the on-demand filter runs first (``translate.vhds``)."""
    stat_prefix = f"outbound_{vip}_{port}"
    listener = _listener(vip, port, stat_prefix)
    filters = (*RULE_FILTERS, FORWARD_PROXY_FILTER) if forward else RULE_FILTERS
    config = http_connection_manager(
        stat_prefix, rds=(route_name, source), filters=filters, on_demand=on_demand
    )
    chain = listener.filter_chains.add()
    chain.filters.add(name=HCM_FILTER).typed_config.CopyFrom(pack(config))
    return listener


def virtual_l4_listener(
    vip: str, plan: L4ListenerPlan, tls: bool, forward: tuple[str, ...] = ()
) -> Any:
    """The listener ``outbound|VIP|PORT`` of a TCP/TLS pair: ``plan``'s chains (as the
    per-port listener's), with the TLS inspector on TLS ports, then for each cluster in
    ``forward`` (a NONE service's dynamic forward proxy cluster) a chain resolving the
    SNI (``sni_dynamic_forward_proxy``) before a TCP proxy to it."""
    listener = outbound_l4_listener(vip, plan)
    listener.stat_prefix = f"outbound_{vip}_{plan.port}"
    if (tls or forward) and not plan.inspects_tls:
        inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
        inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    for cluster in forward:
        chain = listener.filter_chains.add()
        config = sni_dfp_pb2.FilterConfig(dns_cache_config=dns_cache_config(), port_value=plan.port)
        chain.filters.add(name=SNI_FORWARD_PROXY_FILTER).typed_config.CopyFrom(pack(config))
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=f"outbound_{plan.port}", cluster=cluster)
        chain.filters.add(name=TCP_PROXY_FILTER).typed_config.CopyFrom(pack(proxy))
    return listener


def _listener(vip: str, port: int, stat_prefix: str) -> Any:
    listener = listener_pb2.Listener(
        name=outbound_listener_name(vip, port),
        stat_prefix=stat_prefix,
        traffic_direction=base_pb2.OUTBOUND,
    )
    sock = listener.address.socket_address
    sock.address = vip
    sock.port_value = port
    listener.enable_reuse_port.value = False
    return listener


def dns_cluster_name(port: int, subset: str, host: str) -> str:
    """``outbound_dns|PORT|SUBSET|HOST``: the DNS cluster of a NONE service's TCP port."""
    return f"{DNS_CLUSTER_PREFIX}|{port}|{subset}|{host}"


def dns_cluster(
    service: Service, port: Port, subset: str, rule: DestinationRule | None, rest: bool
) -> Any:
    """A STRICT_DNS cluster to ``service``'s host (resolution NONE, a concrete name) on
    ``port``: connections to its virtual address go to the address the host resolves to,
    under the DestinationRule's policy for ``subset`` (fetched the REST way with
    ``rest``)."""
    resolved = dataclasses.replace(
        service, resolution=Resolution.DNS, endpoints=(Endpoint(service.name),)
    )
    # The subset's policy, not its labels: the host is the one endpoint.
    policy = rule.policy_for(subset, port.number) if rule is not None else None
    spec = OutboundCluster(resolved, port, None, policy, rule)
    flavor = ClusterFlavor.ENVOY_REST if rest else ClusterFlavor.ENVOY_ADS
    cluster = build_outbound_cluster(spec, flavor)
    name = dns_cluster_name(port.number, subset, service.name)
    cluster.name = name
    cluster.load_assignment.cluster_name = name
    return cluster


def forward_cluster(service: Service, port: Port, rule: DestinationRule | None, rest: bool) -> Any:
    """The dynamic forward proxy cluster ``outbound|PORT||HOST`` of a NONE service's TLS
    ``port``, under the DestinationRule's policy for the port (fetched the REST way with
    ``rest``). A class resource of the sidecars with virtual addresses: the shared
    clusters leave a NONE service's TCP/TLS ports out (``Service.routed_ports``)."""
    policy = rule.policy_for("", port.number) if rule is not None else None
    spec = OutboundCluster(service, port, None, policy, rule)
    return build_outbound_cluster(
        spec, ClusterFlavor.ENVOY_REST if rest else ClusterFlavor.ENVOY_ADS
    )


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """A cluster of a NONE service with a concrete host on a TCP port, and the DNS
    cluster that replaces it on virtual-address listeners."""

    service: Service
    port: Port
    subset: str

    @property
    def name(self) -> str:
        """The DNS cluster's name."""
        return dns_cluster_name(self.port.number, self.subset, self.service.name)


def with_dns_clusters(
    mesh: Mesh, plan: L4ListenerPlan
) -> tuple[L4ListenerPlan, tuple[DnsTarget, ...]]:
    """``plan`` with every cluster of a NONE service (concrete host, TCP port) replaced by
    its DNS cluster, and those DNS clusters."""
    targets: dict[str, DnsTarget] = {}
    chains: list[FilterChainPlan] = []
    for chain in plan.chains:
        clusters: list[tuple[str, int]] = []
        for name, weight in chain.clusters:
            target = _dns_target(mesh, name)
            if target is not None:
                targets[target.name] = target
                name = target.name
            clusters.append((name, weight))
        chains.append(dataclasses.replace(chain, clusters=tuple(clusters)))
    if not targets:
        return plan, ()
    return L4ListenerPlan(plan.port, tuple(chains)), tuple(targets.values())


def _dns_target(mesh: Mesh, cluster: str) -> DnsTarget | None:
    _, number, subset, host = cluster.split("|", 3)
    service = mesh.service(host, DEFAULT_NAMESPACE)  # an FQDN: found as written
    if service is None or service.resolution is not Resolution.NONE or service.name.startswith("*"):
        return None
    port = service.port(int(number))
    if port is None or port.protocol is not Protocol.TCP:
        return None
    return DnsTarget(service, port, subset)


# -- bind checks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Socket:
    """One of a sidecar's other sockets a VIP listener may collide with: what it is (for
    the message), its address and port."""

    what: str
    ip: str
    port: int


def node_sockets(
    own: Service | None,
    instance_ip: str,
    outbound_ip: str,
    per_port: Iterable[int],
    explicit: Iterable[tuple[str, int]],
) -> tuple[Socket, ...]:
    """The sockets of a sidecar besides its VIP listeners: the inbound listeners and the
    application behind them (ports of ``own``), the HTTP proxy, the per-port listeners
    on ``outbound_ip`` (``per_port`` numbers) and the explicit egress listeners (bind
    address, empty for ``outbound_ip``, and port)."""
    out: list[Socket] = [Socket("the outbound HTTP proxy", outbound_ip, HTTP_PROXY_PORT)]
    for port in own.ports if own is not None else ():
        out.append(Socket("the inbound listener", instance_ip, port.number))
        out.append(Socket("the application", APPLICATION_IP, port.effective_target_port))
    out.extend(Socket("the per-port outbound listener", outbound_ip, n) for n in per_port)
    out.extend(Socket("the explicit egress listener", b or outbound_ip, n) for b, n in explicit)
    return tuple(out)


def bind_problems(
    pairs: Sequence[VirtualPair], sockets: Sequence[Socket], outbound_ip: str
) -> list[Problem]:
    """Every VIP listener of ``pairs`` that would collide with one of ``sockets`` (same
    port, overlapping addresses), as problems saying what to change. A wildcard
    ``outbound_ip`` overlaps every address: one problem on the node says so."""
    if pairs and is_wildcard(outbound_ip):
        return [
            Problem(
                NODE_PATH,
                0,
                "outbound_ip",
                f"outbound_ip {outbound_ip} takes every address, where the virtual-address "
                "listeners bind theirs: give the sidecar a concrete outbound_ip "
                "(127.0.0.1), or drop virtual_addresses from its metadata",
            )
        ]
    by_port: dict[int, list[Socket]] = {}
    for socket in sockets:
        by_port.setdefault(socket.port, []).append(socket)
    problems: list[Problem] = []
    for pair in pairs:
        for socket in by_port.get(pair.port, ()):
            if not overlaps(pair.vip, socket.ip):
                continue
            service = pair.members[0][0]
            message = (
                f"the virtual-address listener {pair.vip}:{pair.port} of {service.fqdn} "
                f"would bind the port of {socket.what} {socket.ip}:{socket.port}: "
            )
            if is_wildcard(socket.ip):
                problems.append(
                    _node_problem("instance_ip", message + "set instance_ip to a concrete address")
                )
            elif service.addresses:
                problems.append(_problem(service, message + "pin another address for the service"))
            else:
                problems.append(
                    _node_problem(
                        "virtual_addresses",
                        message + "give the sidecar a virtual_addresses block that does not "
                        "hold its own addresses",
                    )
                )
    return list(dict.fromkeys(problems))


def _node_problem(field: str, message: str) -> Problem:
    return Problem(NODE_PATH, 0, field, message)


def _problem(service: Service, message: str) -> Problem:
    return Problem(service.origin.path, service.origin.line, "address", message)
