"""The Envoy message an EnvoyFilter patch value is, by its ``applyTo``, and parsing one.

Shared by sources (a bad value refuses the file, like any bad field) and translation
(which applies the parsed message). Keyed by the ``applyTo`` name as Istio spells it.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from xdsd.resources import ensure_json_types_known

#: The message type of each ``applyTo``'s patch value.
PATCH_VALUE_TYPES: dict[str, type[Message]] = {
    "LISTENER": listener_pb2.Listener,
    "FILTER_CHAIN": listener_components_pb2.FilterChain,
    "NETWORK_FILTER": listener_components_pb2.Filter,
    "HTTP_FILTER": hcm_pb2.HttpFilter,
    "ROUTE_CONFIGURATION": route_pb2.RouteConfiguration,
    "VIRTUAL_HOST": route_components_pb2.VirtualHost,
    "HTTP_ROUTE": route_components_pb2.Route,
    "CLUSTER": cluster_pb2.Cluster,
}


def parse_patch_value(apply_to: str, data: Any) -> Message:
    """``data`` (proto3 JSON, ``@type`` in every Any, field names in either spelling) as
    the message ``apply_to`` patches. Raises ValueError with what is wrong (an unknown
    ``@type``, or the protobuf JSON parser's message)."""
    cls = PATCH_VALUE_TYPES[apply_to]
    name = cls.DESCRIPTOR.full_name
    missing = ensure_json_types_known(data)
    if missing:
        raise ValueError(f"unknown type {missing[0]!r} (no installed Envoy API defines it)")
    try:
        return json_format.ParseDict(data, cls())
    except json_format.ParseError as err:
        raise ValueError(f"is not a valid {name}: {err}") from None
