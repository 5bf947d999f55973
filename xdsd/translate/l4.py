"""TCP and TLS services: what the per-port outbound listener of their port does.

How this works: a port carrying TCP or TLS services has one outbound listener; its filter
chains are planned here as values (``L4ListenerPlan``), from the VirtualServices of the
services on the port and the caller's namespace and labels, and built by
``listeners.outbound_l4_listener``. A plan is a value, so equal plans share one listener.

Semantics follow Istio's sidecar translation (``buildSidecarOutboundTCPFilterChainOpts``
and ``buildSidecarOutboundTLSFilterChainOpts``), except that a sidecar here has no service
VIPs to match connections by: the listener on ``outbound_ip:PORT`` is the service's
address.

- A match block *applies* to a caller when its ``port`` is 0 or the listener's port, its
  ``sourceLabels`` are among the caller's labels, its ``sourceNamespace`` is empty or the
  caller's, and its ``gateways`` are empty or hold ``mesh``; blocks that do not apply are
  left out of that caller's listener.
- TCP port (one TCP service): the ``tcp`` rules in order; the first rule without match
  blocks, or with an applying block without ``destinationSubnets``, is the catch-all chain
  and ends the list; applying blocks with subnets gather into a chain matched by those
  destination addresses. Without a catch-all, the service's own cluster is one.
- TLS port (one or more TLS services): for each service, a chain per applying ``tls``
  block, matched by its ``sniHosts`` (``*`` means any name) and ``destinationSubnets``;
  a later block with the same ``sniHosts`` and subnets is unreachable and left out. A
  service with no applying block gets a chain to its own cluster, matched by its names as
  SNI when other services share the port (with the port to itself, by anything).
- Every chain ends in a TCP proxy to the rule's destinations, weighted (relative weights;
  destinations of weight 0 are left out). Two chains can only have equal matches across
  services; the first (services in key order) keeps each (subnet, server name) pair.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from xdsd.errors import Problem, TranslationError
from xdsd.model import (
    DEFAULT_NAMESPACE,
    L4Match,
    L4Route,
    Mesh,
    Port,
    Protocol,
    ResourceKey,
    RouteDestination,
    Service,
    VirtualService,
)
from xdsd.model.networking import MESH_GATEWAY_NAME
from xdsd.translate.clusters import outbound_cluster_name
from xdsd.translate.placement import PortGroup


@dataclass(frozen=True, slots=True)
class L4Caller:
    """What of a sidecar decides which L4 match blocks apply to it."""

    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()


#: The caller to plan for when no L4 rule of the mesh looks at the caller.
ANY_CALLER = L4Caller()


@dataclass(frozen=True, slots=True)
class FilterChainPlan:
    """One filter chain: what it matches (empty = anything) and where it proxies to.

    ``clusters`` are (cluster name, weight) with weights > 0, in rule order;
    ``prefix_ranges`` are normalized CIDRs (``10.0.0.0/8``) of the connection's destination
    address; ``server_names`` are SNI values (``*.`` prefixes are wildcards).
    """

    clusters: tuple[tuple[str, int], ...]
    server_names: tuple[str, ...] = ()
    prefix_ranges: tuple[str, ...] = ()
    #: The TCP proxy's idle timeout: the shortest ``connectionPool.tcp.idleTimeout`` of
    #: the chain's destinations (None: Envoy's default, 1 hour).
    idle_timeout: timedelta | None = None


@dataclass(frozen=True, slots=True)
class L4ListenerPlan:
    """The filter chains of the outbound listener of one TCP/TLS port, in order."""

    port: int
    chains: tuple[FilterChainPlan, ...]

    @property
    def inspects_tls(self) -> bool:
        """True when a chain matches by SNI, so the listener needs the TLS inspector."""
        return any(c.server_names for c in self.chains)


def caller_dependent(mesh: Mesh) -> bool:
    """True when some tcp/tls match block looks at the caller's labels or namespace (so
    L4 listeners may differ between node classes)."""
    return any(
        m.source_labels or m.source_namespace
        for vs in mesh.virtual_services
        for rule in (*vs.tcp, *vs.tls)
        for m in rule.match
    )


def plan_l4_listener(
    mesh: Mesh,
    rules: Mapping[ResourceKey, VirtualService],
    group: PortGroup,
    caller: L4Caller,
    *,
    own_default: bool = False,
) -> L4ListenerPlan:
    """The plan of ``group``'s outbound listener for ``caller`` (see the module doc);
    ``rules`` is the VirtualService of each service (``routes.virtual_service_index``).
    ``own_default`` gives each TLS service its own chain after its rules' chains even
    when some of them apply (a virtual-address listener: a connection to the service's
    address whose SNI no rule names still belongs to the service).

    Raises TranslationError naming the rule's file for every destination of the rules of
    the port's services that cannot be translated (unknown service, port or subset, or an
    ambiguous port), whether or not its match applies to ``caller``.
    """
    problems: list[Problem] = []
    chains: list[FilterChainPlan] = []
    several = len(group.tcp) > 1
    for service, port in group.tcp:
        vs = rules.get(service.key)
        if port.protocol is Protocol.TLS:
            chains.extend(
                _tls_chains(mesh, vs, service, port, caller, several, problems, own_default)
            )
        else:
            chains.extend(_tcp_chains(mesh, vs, service, port, caller, problems))
    if problems:
        raise TranslationError(problems)
    return L4ListenerPlan(group.number, _with_idle_timeouts(mesh, _without_shadowed(chains)))


def _with_idle_timeouts(
    mesh: Mesh, chains: tuple[FilterChainPlan, ...]
) -> tuple[FilterChainPlan, ...]:
    """``chains`` with the idle timeout their destinations' DestinationRules ask for
    (``connectionPool.tcp.idleTimeout`` of the policy merged for the subset and port)."""
    out = []
    for chain in chains:
        found = [t for name, _ in chain.clusters if (t := _idle_timeout(mesh, name)) is not None]
        out.append(dataclasses.replace(chain, idle_timeout=min(found)) if found else chain)
    return tuple(out)


def _idle_timeout(mesh: Mesh, cluster: str) -> timedelta | None:
    _, port, subset, host = cluster.split("|", 3)
    service = mesh.service(host, DEFAULT_NAMESPACE)  # an FQDN: found as written
    rule = mesh.destination_rule(service) if service is not None else None
    policy = rule.policy_for(subset, int(port)) if rule is not None else None
    pool = policy.connection_pool if policy is not None else None
    return pool.tcp.idle_timeout if pool is not None and pool.tcp is not None else None


def _applies(match: L4Match, caller: L4Caller, port: int) -> bool:
    return (
        (not match.port or match.port == port)
        and (not match.gateways or MESH_GATEWAY_NAME in match.gateways)
        and (not match.source_namespace or match.source_namespace == caller.namespace)
        and set(match.source_labels) <= set(caller.labels)
    )


def _own(service: Service, port: Port) -> tuple[tuple[str, int], ...]:
    return ((outbound_cluster_name(port.number, "", service.fqdn), 1),)


def _tcp_chains(
    mesh: Mesh,
    vs: VirtualService | None,
    service: Service,
    port: Port,
    caller: L4Caller,
    problems: list[Problem],
) -> list[FilterChainPlan]:
    own = FilterChainPlan(_own(service, port))
    if vs is None:
        return [own]
    # Every rule's destinations are checked, even past the catch-all.
    targets = [
        route_clusters(mesh, vs, f"tcp[{i}]", rule, port.number, problems)
        for i, rule in enumerate(vs.tcp)
    ]
    out: list[FilterChainPlan] = []
    for rule, clusters in zip(vs.tcp, targets, strict=True):
        if not clusters:
            continue
        if not rule.match:
            return [*out, FilterChainPlan(clusters)]
        subnets: list[str] = []
        for match in rule.match:
            if not _applies(match, caller, port.number):
                continue
            if not match.destination_subnets:
                return [*out, FilterChainPlan(clusters)]
            subnets.extend(s for s in match.destination_subnets if s not in subnets)
        if subnets:
            out.append(FilterChainPlan(clusters, prefix_ranges=tuple(subnets)))
    return [*out, own]


def _tls_chains(
    mesh: Mesh,
    vs: VirtualService | None,
    service: Service,
    port: Port,
    caller: L4Caller,
    several: bool,
    problems: list[Problem],
    own_default: bool = False,
) -> list[FilterChainPlan]:
    out: list[FilterChainPlan] = []
    handled: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for i, rule in enumerate(vs.tls if vs is not None else ()):
        assert vs is not None
        clusters = route_clusters(mesh, vs, f"tls[{i}]", rule, port.number, problems)
        if not clusters:
            continue
        for match in rule.match:
            if not _applies(match, caller, port.number):
                continue
            key = (match.sni_hosts, match.destination_subnets)
            if key in handled:
                continue
            handled.add(key)
            names = () if "*" in match.sni_hosts else match.sni_hosts
            out.append(FilterChainPlan(clusters, names, match.destination_subnets))
    if not out or own_default:
        names = tuple(service.host_names) if several else ()
        out.append(FilterChainPlan(_own(service, port), names))
    return out


def route_clusters(
    mesh: Mesh,
    vs: VirtualService,
    field: str,
    rule: L4Route,
    listener_port: int,
    problems: list[Problem],
) -> tuple[tuple[str, int], ...]:
    """The weighted clusters of ``rule``'s destinations (weights summed per cluster,
    zero weights left out); a destination that cannot be translated is a problem."""
    weighted: dict[str, int] = {}
    for j, rd in enumerate(rule.route):
        name = _cluster_of(mesh, vs, f"{field}.route[{j}].destination", rd, listener_port, problems)
        if name is not None:
            weighted[name] = weighted.get(name, 0) + rd.weight
    return tuple((name, w) for name, w in weighted.items() if w > 0)


def _cluster_of(
    mesh: Mesh,
    vs: VirtualService,
    field: str,
    rd: RouteDestination,
    listener_port: int,
    problems: list[Problem],
) -> str | None:
    dest = rd.destination
    target = mesh.service(dest.host, vs.namespace)
    if target is None:
        problems.append(_problem(vs, f"{field}.host", f"no service named {dest.host!r}"))
        return None
    ports = ", ".join(str(p.number) for p in target.routed_ports) or "(none)"
    if dest.port:
        if target.routed_port(dest.port) is None:
            problems.append(
                _problem(
                    vs,
                    f"{field}.port.number",
                    f"{target.fqdn} has no port {dest.port}: use one of {ports}",
                )
            )
            return None
        number = dest.port
    elif target.routed_port(listener_port) is not None:
        number = listener_port
    elif len(target.routed_ports) == 1:
        number = target.routed_ports[0].number
    else:
        problems.append(
            _problem(
                vs,
                f"{field}.port.number",
                f"{target.fqdn} has several ports and none is {listener_port}: set "
                f"destination.port to one of {ports}",
            )
        )
        return None
    if dest.subset:
        rule = mesh.destination_rule(target)
        if rule is None or rule.subset(dest.subset) is None:
            problems.append(
                _problem(
                    vs,
                    f"{field}.subset",
                    f"subset {dest.subset!r} of {target.fqdn} is not defined by any "
                    "DestinationRule: define it or remove it from the route",
                )
            )
            return None
    return outbound_cluster_name(number, dest.subset, target.fqdn)


def _without_shadowed(chains: list[FilterChainPlan]) -> tuple[FilterChainPlan, ...]:
    """``chains`` with every (subnet, server name) pair that an earlier chain already
    matches taken out (Envoy refuses two chains with equal matches); a chain left with
    nothing to match is dropped, one left with part of its pairs is split by subnet."""
    claimed: set[tuple[str, str]] = set()
    out: list[FilterChainPlan] = []
    for chain in chains:
        subnets = chain.prefix_ranges or ("",)
        names = chain.server_names or ("",)
        kept = {s: tuple(n for n in names if (s, n) not in claimed) for s in subnets}
        claimed.update((s, n) for s in subnets for n in names)
        if all(k == names for k in kept.values()):
            out.append(chain)
            continue
        by_names: dict[tuple[str, ...], list[str]] = {}
        for subnet, left in kept.items():
            if left:
                by_names.setdefault(left, []).append(subnet)
        for left, where in by_names.items():
            out.append(
                FilterChainPlan(
                    chain.clusters,
                    tuple(n for n in left if n),
                    tuple(s for s in where if s),
                )
            )
    return tuple(out)


def cidr_range(cidr: str) -> tuple[str, int]:
    """(address prefix, prefix length) of a normalized CIDR."""
    network = ipaddress.ip_network(cidr, strict=False)
    return str(network.network_address), network.prefixlen


def _problem(vs: VirtualService, field: str, message: str) -> Problem:
    return Problem(vs.origin.path, vs.origin.line, field, message)
