"""Listeners: inbound, per-port outbound, the outbound HTTP proxy, and gRPC API listeners.

Every socket listener binds a concrete address with ``enable_reuse_port: false`` (two
proxies binding one address fail loudly instead of sharing connections), sets a
``stat_prefix``, and ends its HTTP filter chain with the typed router filter. Outbound
HTTP listeners fetch their routes by RDS, from the ``ConfigSource`` of the client's class,
and run the fault and CORS filters before the router (as Istio does), which do nothing
unless a route carries their per-route configuration; gRPC API listeners run the fault
filter only (gRPC has no CORS filter). Inbound HTTP listeners carry their one route
inline. Builders here are pure functions of
their arguments, so a caller may memoize them by those arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from xdsd.model import Port
from xdsd.model.mesh_config import MESH_TCP_ALPN, MTLSMode
from xdsd.resources import pack
from xdsd.translate import authz, jwt_authn
from xdsd.translate.cluster_policy import set_tls_socket
from xdsd.translate.clusters import inbound_cluster_name
from xdsd.translate.config_sources import config_source, duration
from xdsd.translate.forward_proxy import FORWARD_PROXY_FILTER, forward_proxy_filter_config
from xdsd.translate.l4 import L4ListenerPlan, cidr_range
from xdsd.translate.node import ConfigSourceKind
from xdsd.translate.peer_authentication import effective_mode
from xdsd.translate.route_actions import CORS_FILTER, FAULT_FILTER
from xdsd.translate.routes import inbound_route_configuration
from xdsd.translate.secrets import add_mesh_identity
from xdsd.translate.vhds import ON_DEMAND_FILTER, on_demand_filter_config
from xdsd.translate.workload_security import NO_POLICIES, NamedFilter, WorkloadPolicies

ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
#: The port of the outbound HTTP proxy listener (the application's HTTP_PROXY).
HTTP_PROXY_PORT = 15001
HTTP_PROXY_LISTENER = "outbound_http_proxy"
#: The route configuration of the outbound HTTP proxy listener.
HTTP_PROXY_ROUTES = "http_proxy"
#: The filters before the router that VirtualService rules configure per route.
RULE_FILTERS = (FAULT_FILTER, CORS_FILTER)
_FILTER_CONFIGS: dict[str, Callable[[], Any]] = {
    FAULT_FILTER: fault_pb2.HTTPFault,
    CORS_FILTER: cors_pb2.Cors,
    FORWARD_PROXY_FILTER: forward_proxy_filter_config,
}


def inbound_listener_name(ip: str, port: int) -> str:
    """``inbound|IP|PORT``."""
    return f"inbound|{ip}|{port}"


def outbound_listener_name(ip: str, port: int) -> str:
    """``outbound|IP|PORT``."""
    return f"outbound|{ip}|{port}"


def port_route_name(port: int) -> str:
    """The RDS name of the per-port outbound route configuration: the port number."""
    return str(port)


def http_connection_manager(
    stat_prefix: str,
    *,
    rds: tuple[str, ConfigSourceKind] | None = None,
    route_config: Any | None = None,
    allow_absolute_url: bool = False,
    filters: tuple[str, ...] = (),
    websocket: bool = True,
    configured: Sequence[NamedFilter] = (),
    on_demand: bool = False,
    normalize_paths: bool = True,
) -> Any:
    """An HTTP connection manager (codec AUTO, router filter last) whose routes come by
    RDS (``rds`` = (route configuration name, how the client fetches it)) or inline
    (``route_config``). ``allow_absolute_url`` lets it act as an HTTP_PROXY; ``filters``
    (names from ``RULE_FILTERS``, and the dynamic forward proxy) run before the router
    with their default configuration, after the ``configured`` filters (name, typed
    config: the security filters of an inbound listener). ``websocket`` lets requests
    upgrade to WebSocket, as Istio's listeners do (off for proxyless gRPC, which has no
    upgrades). ``on_demand`` (a VHDS class) runs the on-demand filter first, so that a
    virtual host is fetched before any filter reads the route.

    ``normalize_paths`` (the default) sets ``set_base_path_normalization``: every filter
    (an AuthorizationPolicy's RBAC filter above all), the route match and the upstream
    see the path the application will resolve, so a policy on ``/admin*`` cannot be
    passed by ``/public/../admin`` or ``/%61dmin``. Off only for a proxyless gRPC
    client's API listener, which has no filter that reads the path and does not
    normalize."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix, codec_type=hcm_pb2.HttpConnectionManager.AUTO
    )
    if normalize_paths:
        set_base_path_normalization(hcm)
    if rds is not None:
        name, kind = rds
        hcm.rds.route_config_name = name
        hcm.rds.config_source.CopyFrom(config_source(kind))
    elif route_config is not None:
        hcm.route_config.CopyFrom(route_config)
    if allow_absolute_url:
        hcm.http_protocol_options.allow_absolute_url.value = True
    if websocket:
        hcm.upgrade_configs.add(upgrade_type="websocket")
    if on_demand:
        first = hcm.http_filters.add(name=ON_DEMAND_FILTER)
        first.typed_config.CopyFrom(pack(on_demand_filter_config()))
    for name, typed in configured:
        hcm.http_filters.add(name=name).typed_config.CopyFrom(pack(typed))
    for name in filters:
        hcm.http_filters.add(name=name).typed_config.CopyFrom(pack(_FILTER_CONFIGS[name]()))
    router = hcm.http_filters.add(name=ROUTER_FILTER)
    router.typed_config.CopyFrom(pack(router_pb2.Router()))
    return hcm


def set_base_path_normalization(hcm: Any) -> None:
    """Set Istio's default (BASE) path normalization on the connection manager ``hcm``:
    RFC 3986 normalization (``normalize_path``: dot segments removed, percent-encoded
    unreserved characters such as ``%61`` or ``%2e`` decoded, before any filter or the
    route sees the path), escaped slashes (``%2F``, ``%5C``) left as sent, and adjacent
    slashes not merged. Envoy applies none of this unless told."""
    hcm.normalize_path.value = True
    hcm.merge_slashes = False
    hcm.path_with_escaped_slashes_action = hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED


def _socket_listener(name: str, ip: str, port: int, direction: int, stat_prefix: str) -> Any:
    listener = listener_pb2.Listener(
        name=name, stat_prefix=stat_prefix, traffic_direction=direction
    )
    sock = listener.address.socket_address
    sock.address = ip
    sock.port_value = port
    listener.enable_reuse_port.value = False
    return listener


def _add_filter(listener: Any, name: str, config: Any) -> None:
    chain = listener.filter_chains.add()
    chain.filters.add(name=name).typed_config.CopyFrom(pack(config))


def _tcp_proxy(stat_prefix: str, cluster: str) -> Any:
    return tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)


def inbound_listener(
    ip: str,
    port: Port,
    mtls: MTLSMode = MTLSMode.DISABLE,
    source: ConfigSourceKind = ConfigSourceKind.ADS,
    policies: WorkloadPolicies = NO_POLICIES,
) -> Any:
    """The listener on ``ip:port.number`` that hands traffic to the local application
    through cluster ``inbound|PORT||``: an HTTP connection manager with one inline route
    for HTTP ports, a TCP proxy otherwise.

    ``policies`` (the security policies that apply to the workload) decide the port's
    mutual TLS mode (PeerAuthentication, over ``mtls``, the settings' mode) and the
    filters before the router or TCP proxy: ``jwt_authn`` (RequestAuthentication), then
    the authorization filters (AuthorizationPolicy), in every chain.

    With mesh mutual TLS (``mtls``), callers must present a certificate of the mesh CA
    (secrets ``default`` and ``ROOTCA`` fetched the way ``source`` says); under STRICT
    that is the only chain, under PERMISSIVE the TLS inspector sends TLS to it (on TCP
    and TLS ports only TLS offering the mesh's ALPN, ``MESH_TCP_ALPN``, so that an
    application's own TLS from outside the mesh passes through) and anything else to a
    plaintext chain. On HTTP ports the TLS chain tells the application
    who called: ``x-forwarded-client-cert`` is replaced by the caller's certificate URI
    (its SPIFFE identity); every chain drops one sent by the caller.
    """
    stat_prefix = f"inbound_{port.number}"
    listener = _socket_listener(
        inbound_listener_name(ip, port.number), ip, port.number, base_pb2.INBOUND, stat_prefix
    )
    mtls = effective_mode(policies, port, mtls)
    if port.protocol.is_http:
        configured = jwt_authn.http_filters(policies) + authz.http_filters(policies, port)
    else:
        configured = authz.network_filters(policies, port)

    def add_chain(secure: bool) -> Any:
        chain = listener.filter_chains.add()
        if port.protocol.is_http:
            config = http_connection_manager(
                stat_prefix, route_config=inbound_route_configuration(port), configured=configured
            )
            if secure:
                config.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
                config.set_current_client_cert_details.uri = True
            chain.filters.add(name=HCM_FILTER).typed_config.CopyFrom(pack(config))
        else:
            for name, typed in configured:
                chain.filters.add(name=name).typed_config.CopyFrom(pack(typed))
            proxy = _tcp_proxy(stat_prefix, inbound_cluster_name(port.number))
            chain.filters.add(name=TCP_PROXY_FILTER).typed_config.CopyFrom(pack(proxy))
        return chain

    if mtls is MTLSMode.DISABLE:
        add_chain(secure=False)
        return listener
    if mtls is MTLSMode.PERMISSIVE:
        inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
        inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    secure = add_chain(secure=True)
    context = tls_pb2.DownstreamTlsContext()
    context.require_client_certificate.value = True
    common = context.common_tls_context
    add_mesh_identity(common, [], source)
    if port.protocol.is_http:
        common.alpn_protocols.extend(["h2", "http/1.1"])
    set_tls_socket(secure.transport_socket, context)
    if mtls is MTLSMode.PERMISSIVE:
        secure.filter_chain_match.transport_protocol = "tls"
        if not port.protocol.is_http:
            secure.filter_chain_match.application_protocols.append(MESH_TCP_ALPN)
        add_chain(secure=False)
    return listener


def outbound_http_listener(
    ip: str, port: int, source: ConfigSourceKind, route_name: str = "", on_demand: bool = False
) -> Any:
    """The listener on ``ip:port`` for HTTP services on ``port``; its routes are the route
    configuration ``route_name`` (default: named like the port); ``on_demand``: virtual
    hosts fetched by VHDS (``http_connection_manager``)."""
    stat_prefix = f"outbound_{port}"
    listener = _socket_listener(
        outbound_listener_name(ip, port), ip, port, base_pb2.OUTBOUND, stat_prefix
    )
    config = http_connection_manager(
        stat_prefix,
        rds=(route_name or port_route_name(port), source),
        filters=RULE_FILTERS,
        on_demand=on_demand,
    )
    _add_filter(listener, HCM_FILTER, config)
    return listener


def outbound_l4_listener(ip: str, plan: L4ListenerPlan) -> Any:
    """The listener on ``ip:plan.port`` of a TCP/TLS port: a filter chain per chain of
    ``plan``, in order, matched by destination address (``prefix_ranges``) and SNI
    (``server_names``, with the TLS inspector as listener filter when any chain uses it),
    each ending in a TCP proxy to one cluster or to weighted clusters (relative
    weights)."""
    port = plan.port
    stat_prefix = f"outbound_{port}"
    listener = _socket_listener(
        outbound_listener_name(ip, port), ip, port, base_pb2.OUTBOUND, stat_prefix
    )
    if plan.inspects_tls:
        inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
        inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    for spec in plan.chains:
        chain = listener.filter_chains.add()
        if spec.server_names:
            chain.filter_chain_match.server_names.extend(spec.server_names)
        for cidr in spec.prefix_ranges:
            address, length = cidr_range(cidr)
            cidr_msg = chain.filter_chain_match.prefix_ranges.add(address_prefix=address)
            cidr_msg.prefix_len.value = length
        if len(spec.clusters) == 1:
            proxy = _tcp_proxy(stat_prefix, spec.clusters[0][0])
        else:
            proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
            for name, weight in spec.clusters:
                proxy.weighted_clusters.clusters.add(name=name, weight=weight)
        if spec.idle_timeout is not None:
            proxy.idle_timeout.CopyFrom(duration(spec.idle_timeout))
        chain.filters.add(name=TCP_PROXY_FILTER).typed_config.CopyFrom(pack(proxy))
    return listener


def http_proxy_listener(
    ip: str, source: ConfigSourceKind, forward: bool = False, on_demand: bool = False
) -> Any:
    """The outbound HTTP proxy on ``ip:15001`` (the application's ``HTTP_PROXY``): routes
    by Host over every HTTP service, from the route configuration ``http_proxy``. With
    ``forward`` (the mesh has services of resolution NONE), the dynamic forward proxy
    filter runs last before the router (see ``forward_proxy``); ``on_demand`` as for
    ``outbound_http_listener``."""
    listener = _socket_listener(
        HTTP_PROXY_LISTENER, ip, HTTP_PROXY_PORT, base_pb2.OUTBOUND, HTTP_PROXY_LISTENER
    )
    config = http_connection_manager(
        HTTP_PROXY_LISTENER,
        rds=(HTTP_PROXY_ROUTES, source),
        allow_absolute_url=True,
        filters=(*RULE_FILTERS, FORWARD_PROXY_FILTER) if forward else RULE_FILTERS,
        on_demand=on_demand,
    )
    _add_filter(listener, HCM_FILTER, config)
    return listener


def api_listener(name: str, route_config_name: str) -> Any:
    """A proxyless gRPC client's listener ``name`` (its target, ``host:port``): no
    address, an ``api_listener`` holding an HTTP connection manager that fetches
    ``route_config_name`` over ADS (the only config source gRPC accepts)."""
    listener = listener_pb2.Listener(name=name)
    hcm = http_connection_manager(
        name,
        rds=(route_config_name, ConfigSourceKind.ADS),
        filters=(FAULT_FILTER,),
        websocket=False,
        normalize_paths=False,
    )
    listener.api_listener.api_listener.CopyFrom(pack(hcm))
    return listener
