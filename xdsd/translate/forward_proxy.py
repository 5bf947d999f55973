"""Envoy's dynamic forward proxy: how ServiceEntries of resolution NONE are served.

How this works: Istio serves resolution NONE with an ORIGINAL_DST cluster, which
connects to the address the application dialled before iptables redirected it to the
sidecar. xdsd's sidecars capture nothing: an application reaches them through the HTTP
proxy listener (``HTTP_PROXY``), and there the original destination *is* the request's
host, written in the absolute-form URL and the Host header. So a NONE service's clusters
(``outbound|PORT||HOST``, ``HOST`` possibly a wildcard such as ``*.bar.com``) are
dynamic forward proxy clusters, and the HTTP proxy listener runs the dynamic forward
proxy filter before the router when the mesh has such a service: the filter resolves the
request's host by DNS (the port from the Host header, else 80) and the cluster connects
to the answer. Every filter and cluster shares one DNS cache (Envoy requires one
configuration per cache name), resolving IPv4 first as DNS clusters do. The per-port
listeners leave NONE services out: a Host header without a port would send requests to
port 80 whatever port they came in on. A NONE service's TCP and TLS ports are not here
(``Service.routed_ports``): the virtual-address listeners serve TLS by SNI through the
same DNS cache (``virtual_listeners``).
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import (
    cluster_pb2 as dfp_cluster_pb2,
)
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    dynamic_forward_proxy_pb2 as dfp_filter_pb2,
)

from xdsd.resources import pack

#: The HTTP filter's name, and the cluster type's.
FORWARD_PROXY_FILTER = "envoy.filters.http.dynamic_forward_proxy"
FORWARD_PROXY_CLUSTER_TYPE = "envoy.clusters.dynamic_forward_proxy"
#: The one DNS cache of every forward proxy filter and cluster.
DNS_CACHE_NAME = "xdsd_dynamic_forward_proxy"


def dns_cache_config() -> Any:
    """The DNS cache every filter and cluster names (identical everywhere, as Envoy
    requires of one cache name)."""
    return dns_cache_pb2.DnsCacheConfig(
        name=DNS_CACHE_NAME, dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED
    )


def forward_proxy_filter_config() -> Any:
    """The dynamic forward proxy HTTP filter's configuration."""
    return dfp_filter_pb2.FilterConfig(dns_cache_config=dns_cache_config())


def make_forward_proxy_cluster(cluster: Any) -> None:
    """Turn ``cluster`` (named, not yet typed) into a dynamic forward proxy cluster: its
    hosts are the ones the filter resolved for each request (``lb_policy``
    ``CLUSTER_PROVIDED``, set again by the caller after any other load balancer)."""
    config = dfp_cluster_pb2.ClusterConfig(dns_cache_config=dns_cache_config())
    cluster.cluster_type.name = FORWARD_PROXY_CLUSTER_TYPE
    cluster.cluster_type.typed_config.CopyFrom(pack(config))
    cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
