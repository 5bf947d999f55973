"""Gateways: the listeners and route configurations of a node with role ``gateway``.

How this works: a gateway node gets the servers of every ``Gateway`` whose ``selector``
is among its labels (an empty selector selects every gateway node; the Gateway's
namespace does not matter, as in Istio by default). ``plan_gateway`` merges those servers
into listener plans, one per (bind address, port), the way Istio's ``mergeGateways``
does, and the listeners and route configurations are built from the plans (values, so
equal plans share one resource):

- Plain HTTP servers (HTTP, HTTP2, GRPC, GRPC-WEB) on one port merge into one filter
  chain: an HTTP connection manager fetching the route configuration ``http.PORT`` (with
  ``.BIND`` when the server has a ``bind``) by RDS.
- HTTPS servers terminating TLS (SIMPLE, MUTUAL, OPTIONAL_MUTUAL; ISTIO_MUTUAL with
  mesh mutual TLS) get a filter chain each, matched by SNI = the server's hosts (none
  when a host is ``*``), with a ``DownstreamTlsContext`` naming the certificate files'
  SDS secrets (the mesh's ``default``/``ROOTCA`` for ISTIO_MUTUAL; ``secrets``),
  and a route configuration of their own, ``https.PORT.PORTNAME.GATEWAY.NAMESPACE``.
- TLS servers terminating TLS and TCP servers proxy connections by the ``tcp`` rules of
  the VirtualServices bound to the gateway (the first rule that applies, as Istio);
  PASSTHROUGH servers get a filter chain per applying ``tls`` match block, matched by its
  ``sniHosts``, each a TCP proxy (``l4.route_clusters``), TLS not terminated.
- UDP servers (only the Gateway API's conversion makes them: ``Server.datagrams_to``)
  get a UDP listener of their own, ``BIND_PORT_udp`` (a TCP listener may hold the same
  port number), running Envoy's UDP proxy to the backend's cluster; one UDP server per
  bind and port. Envoy's UDP proxy has no RBAC, so an AuthorizationPolicy (other than a
  dry-run one) that selects a gateway node with a UDP listener cannot be enforced there:
  that node's configuration is a translation error naming each such policy at its line
  (security fails closed: its datagrams are never let through unchecked).
- Servers that cannot share a listener are a translation error naming both (Istio drops
  the later one with a log line; xdsd refuses rather than serve half of what was
  written): on one port and bind, either every server is plain HTTP, or every server
  carries TLS with distinct SNI hosts, or there is a single TCP server
  (``networking.sharing_clashes``, which the Gateway API conversion applies to its
  listeners too). A listener with no filter chain (a TCP server no rule routes) is
  left out.

Route configurations (Istio's ``buildGatewayHTTPRouteConfig``): for each server, the
VirtualServices bound to its gateway (``gateways`` names it as ``name`` in the rule's
namespace, ``ns/name``, or Istio's legacy ``name.ns.svc.cluster.local``) whose hosts
intersect the server's hosts (``*`` and ``*.suffix`` wildcards both ways; a server host
``ns/host`` counts only for rules in namespace ``ns``, ``./host`` is the Gateway's
namespace, ``*/host`` any) give one virtual host per intersecting name (lower case,
domain = the name, name ``host:PORT``), holding the routes of their http rules; virtual
hosts with identical routes are collapsed into one with several domains; catch-all routes
move after the others; a server with ``httpsRedirect`` marks its virtual hosts (and adds
one per host of its own) ``require_tls: ALL``, which Envoy answers with a 301 to https;
no virtual host at all gives one ``*`` virtual host with no routes (404). Two xdsd
extensions, set only by the Gateway API's conversion, isolate its listeners: a
VirtualService with ``listener`` set is served only by the server of that name, and an
isolated server (``Server.listener_isolation``) leaves a name that the host of a more
specific isolated server of the same listener covers to that server (its
``RoutePlan.listener_hosts``), each of whose names (but ``*``) gets a virtual host even
without routes (404), in every route configuration of the listener. Hosts are
matched ignoring the port (``ignore_port_in_host_matching``), as Istio. A match block
applies on a gateway when its ``port`` is empty or the server's, and its ``gateways``
name the server's gateway, or, without ``gateways``, its ``sourceLabels`` and
``sourceNamespace`` are the node's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import route_pb2 as udp_route_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import udp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from xdsd.errors import Problem, TranslationError
from xdsd.model import (
    DOMAIN_SUFFIX,
    HTTPMatch,
    L4Match,
    Mesh,
    Port,
    Protocol,
    ResourceKey,
    Service,
    VirtualService,
)
from xdsd.model.networking import (
    HTTP_PROTOCOLS,
    TERMINATING_MODES,
    Gateway,
    Server,
    ServerTLS,
    ServerTLSMode,
    gateway_key,
    sharing_clashes,
    sni_hosts,
)
from xdsd.model.networking import server_kind as _kind
from xdsd.resources import pack
from xdsd.translate import authz, jwt_authn
from xdsd.translate.cluster_policy import san_matcher, set_tls_socket
from xdsd.translate.clusters import outbound_cluster_name
from xdsd.translate.endpoints import endpoint_weight, locality_groups, select_endpoints
from xdsd.translate.l4 import route_clusters
from xdsd.translate.listeners import (
    HCM_FILTER,
    RULE_FILTERS,
    TCP_PROXY_FILTER,
    TLS_INSPECTOR,
    http_connection_manager,
)
from xdsd.translate.node import ConfigSourceKind
from xdsd.translate.route_actions import MAX_DIRECT_RESPONSE_BODY
from xdsd.translate.route_matches import Caller
from xdsd.translate.secrets import add_certificate, add_mesh_identity, add_validation
from xdsd.translate.workload_security import NO_POLICIES, WorkloadPolicies

#: The listener filter of a UDP server's listener.
UDP_PROXY_FILTER = "envoy.filters.udp_listener.udp_proxy"
#: ALPN a TLS-terminating HTTPS server offers (Istio's).
HTTPS_ALPN = ("h2", "http/1.1")
_TERMINATING = TERMINATING_MODES
_VALIDATING = (ServerTLSMode.MUTUAL, ServerTLSMode.OPTIONAL_MUTUAL)
_TLS_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A route configuration of a gateway: its name, the port its servers listen on,
    the servers it serves (each with the key of its Gateway), and the hosts of every
    isolated server (``Server.listener_isolation``) on its listener, lower case, each
    once (those of servers whose route configuration is another, too)."""

    name: str
    port: int
    servers: tuple[tuple[ResourceKey, Server], ...]
    listener_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChainPlan:
    """One filter chain of a gateway listener: matched by ``server_names`` (SNI; empty =
    any), terminating TLS with ``tls`` when set (offering HTTP ALPN when ``http``), then
    an HTTP connection manager fetching ``route_name`` when set, else a TCP proxy to
    ``clusters`` ((name, relative weight))."""

    stat_prefix: str
    server_names: tuple[str, ...] = ()
    tls: ServerTLS | None = None
    http: bool = False
    route_name: str = ""
    clusters: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayListenerPlan:
    """The listener of a gateway on ``bind:port`` (named ``BIND_PORT``, as Istio)."""

    bind: str
    port: int
    chains: tuple[ChainPlan, ...]
    #: A UDP listener (one chain: its cluster), for a UDP server.
    udp: bool = False
    #: A UDP server's backends, (canonical host, port, weight) each
    #: (``Server.datagrams_to``); several: the cluster ``udp_cluster_name`` of them.
    datagrams: tuple[tuple[str, int, int], ...] = ()

    @property
    def name(self) -> str:
        """Istio's gateway listener name, ``BIND_PORT`` (``BIND_PORT_udp`` for UDP)."""
        return f"{self.bind}_{self.port}" + ("_udp" if self.udp else "")


@dataclass(frozen=True, slots=True)
class GatewayPlan:
    """Everything a gateway node gets besides clusters: listeners and the route
    configurations their HTTP chains fetch."""

    listeners: tuple[GatewayListenerPlan, ...]
    routes: tuple[RoutePlan, ...]


def selects(gateway: Gateway, labels: Iterable[tuple[str, str]]) -> bool:
    """True when ``gateway``'s selector is among ``labels`` (an empty one selects all)."""
    return set(gateway.selector) <= set(labels)


def bound_virtual_services(mesh: Mesh) -> dict[ResourceKey, tuple[VirtualService, ...]]:
    """The VirtualServices bound to each Gateway key (by its ``gateways``), in key order;
    a Gateway that does not exist may have some."""
    bound: dict[ResourceKey, list[VirtualService]] = {}
    for vs in mesh.virtual_services:
        for reference in vs.gateways:
            key = gateway_key(reference, vs.namespace)
            if key is not None and vs not in bound.get(key, ()):
                bound.setdefault(key, []).append(vs)
    return {k: tuple(v) for k, v in bound.items()}


def http_route_name(server: Server, port: int, gateway: ResourceKey) -> str:
    """The RDS name of an HTTP server's routes (Istio's ``gatewayRDSRouteName``):
    ``http.PORT`` for plain HTTP, ``https.PORT.PORTNAME.GATEWAY.NAMESPACE`` for HTTPS
    terminating TLS; ``.BIND`` appended when the server binds an address."""
    bind = f".{server.bind}" if server.bind else ""
    if server.port.protocol_name in HTTP_PROTOCOLS:
        return f"http.{port}{bind}"
    return f"https.{port}.{server.port.name}.{gateway.name}.{gateway.namespace}{bind}"


def plan_gateway(
    mesh: Mesh,
    gateways: Iterable[Gateway],
    bound: Mapping[ResourceKey, tuple[VirtualService, ...]],
    address: str,
) -> GatewayPlan:
    """The listeners (on ``address`` unless a server has a ``bind``) and route
    configurations of a gateway node serving ``gateways`` (in key order).

    Raises TranslationError naming the Gateway's file for servers that cannot share a
    listener, and the VirtualService's for tcp/tls destinations that cannot be
    translated.
    """
    groups: dict[tuple[str, int, bool], list[tuple[Gateway, int, Server]]] = {}
    for gw in gateways:
        for i, server in enumerate(gw.servers):
            bind = server.bind or address
            udp = _kind(server) == "udp"
            groups.setdefault((bind, server.port.number, udp), []).append((gw, i, server))
    problems: list[Problem] = []
    listeners: list[GatewayListenerPlan] = []
    routes: dict[str, list[tuple[ResourceKey, Server]]] = {}
    isolated: dict[str, tuple[str, ...]] = {}
    for (bind, port, udp), members in groups.items():
        if not _compatible(members, problems):
            continue
        hosts = _isolated_hosts(server for _, _, server in members)
        chains: list[ChainPlan] = []
        first_kind = _kind(members[0][2])
        prefix = f"{bind}_{port}"
        if udp:
            targets = members[0][2].datagrams_to
            if targets:
                clusters = tuple((outbound_cluster_name(p, "", h), w) for h, p, w in targets)
                chains.append(ChainPlan(f"{prefix}_udp", clusters=clusters))
                plan = GatewayListenerPlan(bind, port, tuple(chains), True, targets)
                listeners.append(plan)
            continue
        if first_kind == "http":
            name = http_route_name(members[0][2], port, members[0][0].key)
            chains.append(ChainPlan(prefix, route_name=name))
            for gw, _, server in members:
                routes.setdefault(name, []).append((gw.key, server))
            isolated[name] = hosts
        others = [] if first_kind == "http" else members
        # Names of TLS-terminating servers, which passthrough rules may not take.
        claimed = {
            name
            for _, _, server in others
            if server.tls is not None and server.tls.mode in _TERMINATING
            for name in sni_hosts(server) or ("*",)
        }
        for gw, _, server in others:
            tls = server.tls
            names = sni_hosts(server)
            if _kind(server) == "https":
                name = http_route_name(server, port, gw.key)
                routes.setdefault(name, []).append((gw.key, server))
                isolated[name] = hosts
                chains.append(ChainPlan(server.name or prefix, names, tls, True, name))
            elif tls is not None and tls.mode is ServerTLSMode.PASSTHROUGH:
                chains.extend(
                    _passthrough_chains(
                        mesh, bound.get(gw.key, ()), gw.key, server, prefix, claimed, problems
                    )
                )
            else:
                clusters = _tcp_clusters(mesh, bound.get(gw.key, ()), gw.key, server, problems)
                if clusters:
                    chains.append(ChainPlan(prefix, names if tls else (), tls, False, "", clusters))
        if chains:
            listeners.append(GatewayListenerPlan(bind, port, tuple(chains)))
    if problems:
        raise TranslationError(problems)
    route_plans = tuple(
        RoutePlan(name, servers[0][1].port.number, tuple(servers), isolated.get(name, ()))
        for name, servers in routes.items()
    )
    return GatewayPlan(tuple(listeners), route_plans)


def _isolated_hosts(servers: Iterable[Server]) -> tuple[str, ...]:
    """The hosts of the isolated servers among ``servers`` (those of one listener),
    without namespace, lower case, each once, in order."""
    found: dict[str, None] = {}
    for server in servers:
        if server.listener_isolation:
            for host in server.hosts:
                found.setdefault(host.rpartition("/")[2].lower(), None)
    return tuple(found)


def _compatible(members: list[tuple[Gateway, int, Server]], problems: list[Problem]) -> bool:
    """Check that the servers of one bind and port can share a listener
    (``networking.sharing_clashes``, see the module doc); a problem names each server
    that cannot."""
    clashes = sharing_clashes(tuple(server for _, _, server in members))
    for clash in clashes:
        gw, i, _ = members[clash.index]
        other, j, _ = members[clash.other]
        problems.append(
            Problem(
                gw.origin.path,
                gw.origin.line,
                f"servers[{i}]",
                f"{clash.message} (by servers[{j}] of Gateway {other.namespace}/{other.name}, "
                f"{other.origin}): give it another port or bind address, or select "
                "the gateways on different nodes",
            )
        )
    return not clashes


def common_hosts(server: Server, gateway: ResourceKey, vs: VirtualService) -> list[str]:
    """The host names ``server`` (of ``gateway``) and ``vs`` have in common (Istio's
    ``Names.Intersection`` over the server hosts that apply to the rule's namespace and
    the rule's hosts, short names qualified), lower case, in order, each once."""
    server_hosts = []
    for host in server.hosts:
        ns, sep, name = host.rpartition("/")
        if sep:
            ns = gateway.namespace if ns == "." else ns
            if ns not in ("*", vs.namespace):
                continue
        server_hosts.append(name.lower())
    found: list[str] = []
    for own in server_hosts:
        for other in (_qualified(h, vs.namespace) for h in vs.hosts):
            common = own if _within(own, other) else other if _within(other, own) else ""
            if common and common not in found:
                found.append(common)
    return found


def _qualified(host: str, namespace: str) -> str:
    """A VirtualService host as Istio resolves it: a name without a dot (and not ``*``
    or an address) is ``name.NAMESPACE.svc.cluster.local``."""
    host = host.lower()
    if host == "*" or "." in host or ":" in host:
        return host
    return f"{host}.{namespace}.{DOMAIN_SUFFIX}"


def _within(name: str, other: str) -> bool:
    """True when every name ``name`` covers is covered by ``other`` (Istio's
    ``SubsetOf``: ``*.suffix`` covers names ending in ``.suffix``; ``*`` covers all)."""
    if name == other:
        return True
    if not other.startswith("*"):
        return False
    suffix = other[1:]
    return (name[1:] if name.startswith("*") else name).endswith(suffix)


def _l4_applies(match: L4Match, port: int, gateway: ResourceKey, namespace: str) -> bool:
    """Istio's gateway L4 match: ``port`` empty or the server's, ``gateways`` empty or
    naming this gateway (source labels and subnets are not looked at on gateways)."""
    if match.port and match.port != port:
        return False
    return not match.gateways or any(gateway_key(g, namespace) == gateway for g in match.gateways)


def _tcp_clusters(
    mesh: Mesh,
    rules: tuple[VirtualService, ...],
    gateway: ResourceKey,
    server: Server,
    problems: list[Problem],
) -> tuple[tuple[str, int], ...]:
    """The destinations of the first ``tcp`` rule that applies to ``server``, among the
    rules bound to its gateway whose hosts meet the server's (empty when none does)."""
    port = server.port.number
    for vs in rules:
        if not common_hosts(server, gateway, vs):
            continue
        for i, rule in enumerate(vs.tcp):
            if not rule.route:
                continue
            if not rule.match or any(
                _l4_applies(m, port, gateway, vs.namespace) for m in rule.match
            ):
                return route_clusters(mesh, vs, f"tcp[{i}]", rule, port, problems)
    return ()


def _passthrough_chains(
    mesh: Mesh,
    rules: tuple[VirtualService, ...],
    gateway: ResourceKey,
    server: Server,
    prefix: str,
    claimed: set[str],
    problems: list[Problem],
) -> list[ChainPlan]:
    """A chain per applying ``tls`` match block of the rules bound to ``server``'s gateway
    whose hosts meet the server's, matched by its ``sniHosts``; a block naming an SNI
    host an earlier chain of the listener has is left out (Envoy refuses two chains with
    one match), as Istio does."""
    port = server.port.number
    out: list[ChainPlan] = []
    for vs in rules:
        if not common_hosts(server, gateway, vs):
            continue
        for i, rule in enumerate(vs.tls):
            if not rule.route:
                continue
            clusters: tuple[tuple[str, int], ...] | None = None
            for match in rule.match:
                if not _l4_applies(match, port, gateway, vs.namespace):
                    continue
                names = tuple(h.lower() for h in match.sni_hosts)
                if "*" in names:
                    names = ()
                if any(n in claimed for n in names or ("*",)):
                    continue
                if clusters is None:
                    clusters = route_clusters(mesh, vs, f"tls[{i}]", rule, port, problems)
                if clusters:
                    claimed.update(names or ("*",))
                    out.append(ChainPlan(prefix, names, None, False, "", clusters))
    return out


# -- route configurations ------------------------------------------------------------


def gateway_match_applies(
    block: HTTPMatch, gateway: ResourceKey, namespace: str, caller: Caller
) -> bool:
    """Istio's per-proxy check of a match block on a gateway: with ``gateways`` it
    applies when they name ``gateway`` (as written in ``namespace``, the rule's);
    otherwise its ``sourceLabels`` must be among the caller's labels and its
    ``sourceNamespace`` (if any) the caller's namespace."""
    if block.gateways:
        return any(gateway_key(g, namespace) == gateway for g in block.gateways)
    if block.source_labels and not set(block.source_labels) <= set(caller.labels):
        return False
    return not block.source_namespace or block.source_namespace == caller.namespace


#: Builds the routes of a VirtualService for (port, gateway): ``RouteBuilder``'s.
RoutesOf = Callable[[VirtualService, int, ResourceKey], list[Any]]


def gateway_route_configuration(
    plan: RoutePlan,
    bound: Mapping[ResourceKey, tuple[VirtualService, ...]],
    routes_of: RoutesOf,
) -> Any:
    """The ``RouteConfiguration`` of ``plan`` (see the module doc); ``routes_of`` gives
    the routes of a VirtualService on a port for a gateway.

    Raises TranslationError listing every rule that cannot be translated.
    """
    vhosts: dict[str, Any] = {}
    problems: list[Problem] = []
    for gw, server in plan.servers:
        redirect = server.tls is not None and server.tls.https_redirect
        port = server.port.number
        for vs in bound.get(gw, ()):
            if vs.listener and vs.listener != server.name:
                continue
            names = common_hosts(server, gw, vs)
            if server.listener_isolation:
                names = [n for n in names if not _shadowed(n, server, plan.listener_hosts)]
            if not names:
                continue
            try:
                routes = routes_of(vs, port, gw)
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
                continue
            for name in names:
                vhost = vhosts.get(name)
                if vhost is None:
                    vhost = vhosts[name] = route_components_pb2.VirtualHost(name=f"{name}:{port}")
                    vhost.domains.append(name)
                vhost.routes.extend(routes)
                if redirect:
                    vhost.require_tls = route_components_pb2.VirtualHost.ALL
        if redirect:
            for host in server.hosts:
                name = host.rpartition("/")[2].lower()
                vhost = vhosts.get(name)
                if vhost is None:
                    vhost = vhosts[name] = route_components_pb2.VirtualHost(name=f"{name}:{port}")
                    vhost.domains.append(name)
                vhost.require_tls = route_components_pb2.VirtualHost.ALL
    for name in plan.listener_hosts:
        # an isolated server's own name answers 404 without routes, never by the
        # routes of a less specific one ("*" is the least specific: nothing to guard)
        if name != "*" and name not in vhosts:
            vhost = vhosts[name] = route_components_pb2.VirtualHost(name=f"{name}:{plan.port}")
            vhost.domains.append(name)
    if problems:
        raise TranslationError(problems)
    config = route_pb2.RouteConfiguration(name=plan.name)
    config.max_direct_response_body_size_bytes.value = MAX_DIRECT_RESPONSE_BODY
    config.ignore_port_in_host_matching = True
    if not vhosts:
        blackhole = config.virtual_hosts.add(name=f"blackhole:{plan.port}")
        blackhole.domains.append("*")
        return config
    for vhost in _collapsed(vhosts):
        _catch_all_last(vhost)
        config.virtual_hosts.append(vhost)
    return config


def _shadowed(name: str, server: Server, listener_hosts: tuple[str, ...]) -> bool:
    """True when ``name`` (of isolated ``server``) is covered by the host of a more
    specific isolated server on the same listener: a host within one of ``server``'s
    own hosts but none of them (listener isolation: that server's routes alone serve
    it)."""
    own = [h.rpartition("/")[2].lower() for h in server.hosts]
    return any(
        host not in own and _within(name, host) and any(_within(host, o) for o in own)
        for host in listener_hosts
    )


def _collapsed(vhosts: Mapping[str, Any]) -> list[Any]:
    """Virtual hosts with equal routes and TLS requirement merged into the first by
    Istio's host order (longest name first, wildcards last), in name order."""
    merged: dict[bytes, Any] = {}
    for name in sorted(vhosts, key=lambda n: (n.startswith("*"), -len(n), n)):
        vhost = vhosts[name]
        key = vhost.require_tls.to_bytes(1, "big") + b"".join(
            r.SerializeToString(deterministic=True) for r in vhost.routes
        )
        first = merged.get(key)
        if first is None:
            merged[key] = vhost
        else:
            first.domains.extend(vhost.domains)
    return sorted(merged.values(), key=lambda v: str(v.name))


def _catch_all_last(vhost: Any) -> None:
    """Move routes matching every request (prefix ``/`` and nothing else) after the
    others, keeping order within each group (Istio's ``SortVHostRoutes``): rules of a
    later VirtualService are not shadowed by an earlier one's catch-all."""
    routes = list(vhost.routes)
    rest = [r for r in routes if not _catch_all(r)]
    if len(rest) in (0, len(routes)):
        return
    del vhost.routes[:]
    vhost.routes.extend([*rest, *(r for r in routes if _catch_all(r))])


def _catch_all(route: Any) -> bool:
    match = route.match
    return (
        match.WhichOneof("path_specifier") == "prefix"
        and match.prefix == "/"
        and not match.headers
        and not match.query_parameters
    )


# -- listeners ------------------------------------------------------------------------


def downstream_tls_context(
    tls: ServerTLS, *, http: bool, source: ConfigSourceKind = ConfigSourceKind.ADS
) -> Any:
    """The ``DownstreamTlsContext`` of a server terminating TLS with certificate files
    (Istio's ``BuildListenerTLSContext``): the server certificate and key, by SDS
    (``secrets``: fetched like the class's other resources, ``source``); for MUTUAL
    and OPTIONAL_MUTUAL the CA (by SDS, and subject alt names) client certificates are
    checked against, a client certificate required for MUTUAL; protocol versions and
    cipher suites; ALPN ``h2``, ``http/1.1`` for HTTPS. ISTIO_MUTUAL uses the mesh's
    certificates instead (secrets ``default`` and ``ROOTCA``, see ``secrets``) and
    requires a client certificate of the mesh CA."""
    ctx = tls_pb2.DownstreamTlsContext()
    common = ctx.common_tls_context
    if http:
        common.alpn_protocols.extend(HTTPS_ALPN)
    matchers = [san_matcher(name) for name in tls.subject_alt_names]
    if tls.mode is ServerTLSMode.ISTIO_MUTUAL:
        add_mesh_identity(common, matchers, source)
    else:
        add_certificate(common, tls.server_certificate, tls.private_key, source)
        if tls.mode in _VALIDATING:
            add_validation(common, tls.ca_certificates, matchers, source)
    ctx.require_client_certificate.value = tls.mode in (
        ServerTLSMode.MUTUAL,
        ServerTLSMode.ISTIO_MUTUAL,
    )
    params = common_pb2.TlsParameters()
    if tls.min_protocol_version and tls.min_protocol_version != "TLS_AUTO":
        params.tls_minimum_protocol_version = _TLS_VERSIONS[tls.min_protocol_version]
    if tls.max_protocol_version and tls.max_protocol_version != "TLS_AUTO":
        params.tls_maximum_protocol_version = _TLS_VERSIONS[tls.max_protocol_version]
    params.cipher_suites.extend(tls.cipher_suites)
    if params.ByteSize():
        common.tls_params.CopyFrom(params)
    return ctx


def gateway_listener(
    plan: GatewayListenerPlan,
    source: ConfigSourceKind,
    policies: WorkloadPolicies = NO_POLICIES,
) -> Any:
    """The listener of ``plan``: ``enable_reuse_port: false``, the TLS inspector when a
    chain matches SNI, a filter chain per chain plan in order. ``policies`` (those that
    select the gateway node) put the security filters of a sidecar's inbound side in
    every chain: ``jwt_authn`` then the authorization filters before the router, the
    authorization network filters before the TCP proxy. Raises TranslationError for a
    UDP listener when ``policies`` hold an AuthorizationPolicy to enforce
    (``udp_policy_problems``)."""
    if plan.udp:
        problems = udp_policy_problems(plan, policies)
        if problems:
            raise TranslationError(problems)
        return _udp_listener(plan)
    listener = listener_pb2.Listener(name=plan.name, stat_prefix=plan.name)
    sock = listener.address.socket_address
    sock.address = plan.bind
    sock.port_value = plan.port
    listener.enable_reuse_port.value = False
    if any(c.server_names for c in plan.chains):
        inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
        inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    for spec in plan.chains:
        chain = listener.filter_chains.add()
        chain.filter_chain_match.server_names.extend(spec.server_names)
        if spec.tls is not None and spec.tls.mode in _TERMINATING:
            context = downstream_tls_context(spec.tls, http=spec.http, source=source)
            set_tls_socket(chain.transport_socket, context)
        if spec.route_name:
            port = Port(plan.port, Protocol.HTTP)
            configured = jwt_authn.http_filters(policies) + authz.http_filters(policies, port)
            hcm = http_connection_manager(
                spec.stat_prefix,
                rds=(spec.route_name, source),
                filters=RULE_FILTERS,
                configured=configured,
            )
            hcm.use_remote_address.value = True
            chain.filters.add(name=HCM_FILTER).typed_config.CopyFrom(pack(hcm))
            continue
        for name, typed in authz.network_filters(policies, Port(plan.port, Protocol.TCP)):
            chain.filters.add(name=name).typed_config.CopyFrom(pack(typed))
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=spec.stat_prefix)
        if len(spec.clusters) == 1:
            proxy.cluster = spec.clusters[0][0]
        else:
            for name, weight in spec.clusters:
                proxy.weighted_clusters.clusters.add(name=name, weight=weight)
        chain.filters.add(name=TCP_PROXY_FILTER).typed_config.CopyFrom(pack(proxy))
    return listener


def udp_policy_problems(plan: GatewayListenerPlan, policies: WorkloadPolicies) -> list[Problem]:
    """An error at each AuthorizationPolicy of ``policies`` that enforces something
    (dry-run ones enforce nothing) when ``plan`` is a UDP listener: Envoy's UDP proxy
    has no RBAC, so nothing could enforce it there. Empty otherwise."""
    if not plan.udp:
        return []
    return [
        Problem(
            policy.origin.path,
            policy.origin.line,
            "",
            f"AuthorizationPolicy {policy.namespace}/{policy.name} selects a gateway node "
            f"with the UDP listener {plan.bind}:{plan.port}, where it cannot be enforced "
            "(Envoy's UDP proxy has no RBAC): that node gets no configuration until no "
            "AuthorizationPolicy selects it or it serves no UDP",
        )
        for policy in policies.authorization
        if not policy.dry_run
    ]


def _udp_listener(plan: GatewayListenerPlan) -> Any:
    """The UDP listener of a UDP server's plan: Envoy's UDP proxy sending every
    datagram, one session per client address and port, to the plan's one cluster (its
    backend's, or ``udp_cluster_name`` for several weighted backends).
    ``SO_REUSEPORT`` is on: Envoy refuses a UDP listener without it when it runs more
    than one worker."""
    listener = listener_pb2.Listener(name=plan.name, stat_prefix=plan.name)
    sock = listener.address.socket_address
    sock.protocol = sock.UDP
    sock.address = plan.bind
    sock.port_value = plan.port
    listener.enable_reuse_port.value = True
    (chain,) = plan.chains
    config = udp_proxy_pb2.UdpProxyConfig(stat_prefix=chain.stat_prefix)
    action = config.matcher.on_no_match.action
    action.name = "route"
    cluster = chain.clusters[0][0] if len(chain.clusters) == 1 else udp_cluster_name(plan)
    action.typed_config.CopyFrom(pack(udp_route_pb2.Route(cluster=cluster)))
    listener.listener_filters.add(name=UDP_PROXY_FILTER).typed_config.CopyFrom(pack(config))
    return listener


def udp_cluster_name(plan: GatewayListenerPlan) -> str:
    """The cluster of a UDP listener with several weighted backends:
    ``udp|BIND_PORT``."""
    return f"udp|{plan.bind}_{plan.port}"


def udp_weighted_cluster(plan: GatewayListenerPlan, services: tuple[Service, ...]) -> Any:
    """The cluster ``udp_cluster_name(plan)`` of a UDP listener with several backends
    (Envoy's UDP proxy has no weighted clusters): STATIC, the endpoints of every
    backend, each backend a locality of its own (``sub_zone`` ``udp-backend-N``: Envoy
    refuses two entries of one locality) whose ``load_balancing_weight`` is the
    backend's weight spread over its localities in proportion to their endpoint weights
    (times 1000, at least 1), balanced by locality weights. ``services`` are the
    backends' services, in ``plan.datagrams`` order (STATIC resolution: the conversion
    refuses others; ``ValueError`` when they are not one per backend)."""
    cluster = cluster_pb2.Cluster(name=udp_cluster_name(plan))
    cluster.type = cluster_pb2.Cluster.STATIC
    cluster.connect_timeout.FromSeconds(5)
    cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    assignment = cluster.load_assignment
    assignment.cluster_name = cluster.name
    for index, ((_, number, weight), service) in enumerate(
        zip(plan.datagrams, services, strict=True)
    ):
        port = next((p for p in service.datagram_ports if p.number == number), None)
        if port is None:  # the conversion names UDP ports only: never
            continue
        groups = locality_groups(port, select_endpoints(service, port))
        total = sum(g.weight for g in groups) or 1
        for group in groups:
            entry = assignment.endpoints.add()
            entry.locality.region = group.locality.region
            entry.locality.zone = group.locality.zone
            entry.locality.sub_zone = f"udp-backend-{index}"
            entry.load_balancing_weight.value = max(1, weight * group.weight * 1000 // total)
            for endpoint in group.members:
                lb = entry.lb_endpoints.add()
                lb.load_balancing_weight.value = endpoint_weight(endpoint)
                sock = lb.endpoint.address.socket_address
                sock.protocol = sock.UDP
                sock.address = endpoint.address
                sock.port_value = endpoint.port_for(port) if endpoint.ports else number
    return cluster
