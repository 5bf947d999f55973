"""How generated resources point back at xdsd, and protocol options shared by builders.

An EDS cluster or an RDS listener says where to fetch what it names: ``ads: {}`` for
clients on an ADS stream (SotW or delta), an ``api_config_source`` of type REST for
clients that poll. The REST form names the bootstrap's xDS cluster, ``xds_cluster``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from envoy.config.core.v3 import config_source_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2

from xdsd.resources import pack
from xdsd.translate.node import ConfigSourceKind

#: The name of the cluster, in every bootstrap xdsd writes, that leads to xdsd.
XDS_CLUSTER = "xds_cluster"
#: How often a REST client polls, and how long it waits for an answer.
REST_REFRESH_DELAY = timedelta(seconds=1)
REST_REQUEST_TIMEOUT = timedelta(seconds=1)
#: The key of ``typed_extension_protocol_options`` for upstream HTTP options.
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def duration(value: timedelta) -> Any:
    """A ``google.protobuf.Duration`` for ``value`` (whole microseconds)."""
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def config_source(kind: ConfigSourceKind) -> Any:
    """The ``ConfigSource`` with which a client of this kind fetches named resources (EDS,
    RDS): ADS for ADS, DELTA and STATIC classes, REST polling of ``xds_cluster`` for REST
    classes. Always ``resource_api_version: V3``."""
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    if kind is ConfigSourceKind.REST:
        api = source.api_config_source
        api.api_type = config_source_pb2.ApiConfigSource.REST
        api.transport_api_version = config_source_pb2.V3
        api.cluster_names.append(XDS_CLUSTER)
        api.refresh_delay.CopyFrom(duration(REST_REFRESH_DELAY))
        api.request_timeout.CopyFrom(duration(REST_REQUEST_TIMEOUT))
    else:
        source.ads.SetInParent()
    return source


def http2_protocol_options() -> Any:
    """``HttpProtocolOptions`` that make a cluster's upstream connections HTTP/2, packed
    for ``typed_extension_protocol_options``."""
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.CopyFrom(
        protocol_pb2.Http2ProtocolOptions()
    )
    return pack(options)
