"""What an Envoy resource refers to by name: the edges a consistent snapshot must close.

A cluster with EDS needs its ClusterLoadAssignment; a listener whose HTTP connection
manager uses RDS needs its RouteConfiguration; a route configuration needs the clusters
its routes name (destinations and mirrors); a ``jwt_authn`` filter needs the clusters it
fetches key sets through, an external authorization filter (HTTP or network) the cluster
of its server; a cluster or listener whose TLS transport socket names SDS secrets needs
those Secrets. Computed once, when a ``Resource`` is made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.message import Message

_HCM = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_TCP = tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name
_JWT_AUTHN = "/" + jwt_pb2.JwtAuthentication.DESCRIPTOR.full_name
_HTTP_EXT_AUTHZ = http_ext_authz_pb2.ExtAuthz.DESCRIPTOR.full_name
_TCP_EXT_AUTHZ = tcp_ext_authz_pb2.ExtAuthz.DESCRIPTOR.full_name
_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
_UPSTREAM_TLS = tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name
_DOWNSTREAM_TLS = tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name

Refs = tuple[tuple[str, str], ...]


def references_of(message: Message) -> Refs:
    """(type_url, name) pairs that ``message`` needs to be present in the same snapshot."""
    if isinstance(message, cluster_pb2.Cluster):
        return _cluster_refs(message)
    if isinstance(message, listener_pb2.Listener):
        return _listener_refs(message)
    if isinstance(message, route_pb2.RouteConfiguration):
        return _route_config_refs(message)
    if isinstance(message, route_components_pb2.VirtualHost):
        return route_refs(message.routes)
    return ()


def _cluster_refs(cluster: cluster_pb2.Cluster) -> Refs:
    refs: list[tuple[str, str]] = []
    if cluster.type == cluster_pb2.Cluster.EDS:
        refs.append((_ENDPOINT, cluster.eds_cluster_config.service_name or cluster.name))
    if cluster.HasField("transport_socket"):
        _secret_refs(cluster.transport_socket, refs)
    return tuple(refs)


def _secret_refs(socket: Message, refs: list[tuple[str, str]]) -> None:
    """The SDS secrets a TLS transport socket names (fetched by SDS: with an
    ``sds_config``; a name alone means a static secret of the bootstrap)."""
    typed = socket.typed_config
    full = typed.type_url.rsplit("/", 1)[-1]
    if full == _UPSTREAM_TLS:
        context: Message = tls_pb2.UpstreamTlsContext()
    elif full == _DOWNSTREAM_TLS:
        context = tls_pb2.DownstreamTlsContext()
    else:
        return
    typed.Unpack(context)
    common = context.common_tls_context
    for config in common.tls_certificate_sds_secret_configs:
        if config.HasField("sds_config"):
            refs.append((_SECRET, config.name))
    if common.HasField("validation_context_sds_secret_config"):
        config = common.validation_context_sds_secret_config
        if config.HasField("sds_config"):
            refs.append((_SECRET, config.name))
    if common.HasField("combined_validation_context"):
        config = common.combined_validation_context.validation_context_sds_secret_config
        if config.HasField("sds_config"):
            refs.append((_SECRET, config.name))


def _listener_refs(listener: listener_pb2.Listener) -> Refs:
    refs: list[tuple[str, str]] = []
    if listener.HasField("api_listener"):
        _typed_refs(listener.api_listener.api_listener, refs)
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        if chain.HasField("transport_socket"):
            _secret_refs(chain.transport_socket, refs)
        for f in chain.filters:
            if f.HasField("typed_config"):
                _typed_refs(f.typed_config, refs)
    return tuple(dict.fromkeys(refs))


def _typed_refs(any_msg: Message, refs: list[tuple[str, str]]) -> None:
    full = any_msg.type_url.rsplit("/", 1)[-1]
    if full == _HCM:
        hcm = hcm_pb2.HttpConnectionManager()
        any_msg.Unpack(hcm)
        if hcm.HasField("rds"):
            refs.append((_ROUTE, hcm.rds.route_config_name))
        elif hcm.HasField("route_config"):
            refs.extend(_route_config_refs(hcm.route_config))
        for http_filter in hcm.http_filters:
            if http_filter.typed_config.type_url.endswith(_JWT_AUTHN):
                _jwks_refs(http_filter.typed_config, refs)
            elif http_filter.typed_config.type_url.endswith("/" + _HTTP_EXT_AUTHZ):
                authz = http_ext_authz_pb2.ExtAuthz()
                http_filter.typed_config.Unpack(authz)
                _ext_authz_refs(authz, refs)
    elif full == _TCP_EXT_AUTHZ:
        tcp_authz = tcp_ext_authz_pb2.ExtAuthz()
        any_msg.Unpack(tcp_authz)
        _ext_authz_refs(tcp_authz, refs)
    elif full == _TCP:
        tcp = tcp_proxy_pb2.TcpProxy()
        any_msg.Unpack(tcp)
        if tcp.cluster:
            refs.append((_CLUSTER, tcp.cluster))
        for wc in tcp.weighted_clusters.clusters:
            refs.append((_CLUSTER, wc.name))


def _jwks_refs(any_msg: Message, refs: list[tuple[str, str]]) -> None:
    """The clusters a ``jwt_authn`` filter fetches its remote key sets through."""
    jwt = jwt_pb2.JwtAuthentication()
    any_msg.Unpack(jwt)
    for provider in jwt.providers.values():
        if provider.HasField("remote_jwks"):
            refs.append((_CLUSTER, provider.remote_jwks.http_uri.cluster))


def _ext_authz_refs(authz: Message, refs: list[tuple[str, str]]) -> None:
    """The cluster an ext_authz filter (HTTP or network) asks its server through."""
    if authz.HasField("grpc_service") and authz.grpc_service.HasField("envoy_grpc"):
        refs.append((_CLUSTER, authz.grpc_service.envoy_grpc.cluster_name))
    elif authz.DESCRIPTOR.fields_by_name.get("http_service") and authz.HasField("http_service"):
        refs.append((_CLUSTER, authz.http_service.server_uri.cluster))


#: The cluster a route names for a Gateway API backend that does not resolve: absent on
#: purpose (Envoy answers the route's cluster-not-found code, 500), so not a reference.
UNRESOLVED_BACKEND_CLUSTER = "gateway-api|unresolved-backend"


def _route_config_refs(config: route_pb2.RouteConfiguration) -> Refs:
    """The clusters of its inline virtual hosts (those served by VHDS are resources of
    their own, checked as such)."""
    names: dict[tuple[str, str], None] = {}
    for vhost in config.virtual_hosts:
        _add_route_refs(vhost.routes, names)
    return tuple(names)


def route_refs(routes: Iterable[Message]) -> Refs:
    """The clusters ``routes`` (``Route`` messages) send to or mirror to, in the order
    ``references_of`` lists them for a route configuration holding them."""
    names: dict[tuple[str, str], None] = {}
    _add_route_refs(routes, names)
    return tuple(names)


def _add_route_refs(routes: Iterable[Any], names: dict[tuple[str, str], None]) -> None:
    for route in routes:
        if not route.HasField("route"):
            continue
        action = route.route
        if action.cluster and action.cluster != UNRESOLVED_BACKEND_CLUSTER:
            names[(_CLUSTER, action.cluster)] = None
        for wc in action.weighted_clusters.clusters:
            if wc.name != UNRESOLVED_BACKEND_CLUSTER:
                names[(_CLUSTER, wc.name)] = None
        for mirror in action.request_mirror_policies:
            names[(_CLUSTER, mirror.cluster)] = None
