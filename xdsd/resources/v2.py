"""Resources for v2-API clients: the same resources, named the v2 way.

The v2 and v3 xDS messages xdsd uses share their wire layout (v3 renamed packages and
dropped deprecated fields; it did not renumber), so a v2 client reads a v3 encoding. What
differs is every name a client checks: the resource's type URL and the type URL of each
``Any`` inside it (an HTTP connection manager's, its filters', a transport socket's).
``to_v2`` rewrites those, recursively, and keeps everything else byte-compatible; types
without a v2 counterpart keep their v3 names (a v2 client rejects what it does not know,
as it would any unknown extension).
"""

from __future__ import annotations

from collections import OrderedDict

from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message

from xdsd.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    TYPE_PREFIX,
    Resource,
    TypeUrl,
)

#: v3 resource type → v2 resource type.
V2_TYPES: dict[TypeUrl, TypeUrl] = {
    CLUSTER: TypeUrl(TYPE_PREFIX + "envoy.api.v2.Cluster"),
    ENDPOINT: TypeUrl(TYPE_PREFIX + "envoy.api.v2.ClusterLoadAssignment"),
    LISTENER: TypeUrl(TYPE_PREFIX + "envoy.api.v2.Listener"),
    ROUTE: TypeUrl(TYPE_PREFIX + "envoy.api.v2.RouteConfiguration"),
    SECRET: TypeUrl(TYPE_PREFIX + "envoy.api.v2.auth.Secret"),
}
#: v2 resource type → v3.
V3_TYPES: dict[str, TypeUrl] = {v2: v3 for v3, v2 in V2_TYPES.items()}

#: Message types inside resources whose v2 names differ (v3 full name → v2 full name).
V2_NAMES: dict[str, str] = dict(
    [
        (
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager",
        ),
        (
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "envoy.config.filter.network.tcp_proxy.v2.TcpProxy",
        ),
        (
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.config.filter.http.router.v2.Router",
        ),
        (
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            "envoy.config.filter.http.fault.v2.HTTPFault",
        ),
        (
            "envoy.extensions.filters.http.cors.v3.Cors",
            "envoy.config.filter.http.cors.v2.Cors",
        ),
        (
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "envoy.api.v2.auth.UpstreamTlsContext",
        ),
        (
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "envoy.api.v2.auth.DownstreamTlsContext",
        ),
        (
            "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "envoy.config.accesslog.v2.FileAccessLog",
        ),
    ]
)

_CACHE: OrderedDict[tuple[str, str, str], Resource] = OrderedDict()
_CACHE_SIZE = 65536


def v3_type(type_url: str) -> TypeUrl:
    """The v3 type a (v2 or v3) type URL names; unknown URLs are returned unchanged."""
    return V3_TYPES.get(type_url, TypeUrl(type_url))


def to_v2(resource: Resource) -> Resource:
    """``resource`` as a v2 client reads it (see the module doc); memoized by content."""
    key = (resource.type_url, resource.name, resource.digest)
    found = _CACHE.get(key)
    if found is not None:
        _CACHE.move_to_end(key)
        return found
    message = type(resource.message)()
    message.CopyFrom(resource.message)
    _rename_anys(message)
    payload: bytes = message.SerializeToString(deterministic=True)
    found = Resource.encoded(
        resource.name,
        V2_TYPES.get(resource.type_url, resource.type_url),
        payload,
        resource.references,
    )
    _CACHE[key] = found
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return found


#: ``ConfigSource.resource_api_version`` / ``ApiConfigSource.transport_api_version`` V2.
_API_V2 = 1


def _rename_anys(message: Message) -> None:
    """Give every ``Any`` in ``message`` (recursively, inside other ``Any``s too) its v2
    type name where one exists, and every config source the v2 API version."""
    name = message.DESCRIPTOR.full_name
    if name == "envoy.config.core.v3.ConfigSource":
        message.resource_api_version = _API_V2
    elif name == "envoy.config.core.v3.ApiConfigSource":
        message.transport_api_version = _API_V2
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            if field.message_type.GetOptions().map_entry:
                entries = value.values()
                if field.message_type.fields_by_name["value"].message_type is None:
                    continue
            else:
                entries = value
            for item in entries:
                _rename_one(item)
        else:
            _rename_one(value)


def _rename_one(message: Message) -> None:
    if isinstance(message, any_pb2.Any):
        _rename_any(message)
    else:
        _rename_anys(message)


def _rename_any(packed: any_pb2.Any) -> None:
    full = packed.type_url.rsplit("/", 1)[-1]
    try:
        cls = symbol_database.Default().GetSymbol(full)
    except KeyError:
        return
    inner = cls.FromString(packed.value)
    _rename_anys(inner)
    packed.value = inner.SerializeToString(deterministic=True)
    packed.type_url = TYPE_PREFIX + V2_NAMES.get(full, full)


#: Modules holding the v2 messages a v2 resource may carry (imported on demand: rendering
#: v2 resources as JSON needs their descriptors).
_V2_MODULES = (
    "envoy.api.v2.cluster_pb2",
    "envoy.api.v2.endpoint_pb2",
    "envoy.api.v2.listener_pb2",
    "envoy.api.v2.route_pb2",
    "envoy.api.v2.auth.secret_pb2",
    "envoy.api.v2.auth.tls_pb2",
    "envoy.config.filter.network.http_connection_manager.v2.http_connection_manager_pb2",
    "envoy.config.filter.network.tcp_proxy.v2.tcp_proxy_pb2",
    "envoy.config.filter.http.router.v2.router_pb2",
    "envoy.config.filter.http.fault.v2.fault_pb2",
    "envoy.config.filter.http.cors.v2.cors_pb2",
    "envoy.config.accesslog.v2.file_pb2",
)


def load_v2_types() -> None:
    """Import the v2 message modules (once), so their types resolve by name."""
    import importlib

    for name in _V2_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # a package without one of them: those types stay unknown
            continue
