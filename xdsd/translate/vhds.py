"""Virtual hosts served on their own (VHDS), for delta clients that ask for it.

How this works: a VHDS class's outbound route configurations (per port, explicit egress,
``http_proxy``) are sent without their virtual hosts: ``split_route_configuration`` keeps
the configuration's other fields, sets its ``vhds`` config source (ADS, which Envoy
accepts only on a delta ADS stream), and makes each virtual host a resource of its own,
type ``VirtualHost``, named ``ROUTE_CONFIG/VHOST`` (Envoy files a VHDS resource under
the route configuration whose name comes before the last ``/``, and removes a virtual
host by that same name, so the message's ``name`` is the resource name too). Envoy asks
for a virtual host when a request's host matches none it holds, through the on-demand
filter (``ON_DEMAND_FILTER``), which every HTTP listener of the class naming those
configurations runs first, before the filters that read the route (the per-port,
explicit egress and HTTP proxy listeners, the virtual-address listeners and the capture
listeners' HTTP chains); the stream resolves that request's alias
(``ROUTE_CONFIG/HOST``, the Host the listener saw) to a virtual host
(``xdsd.protocol.vhosts``).

A route configuration with a catch-all virtual host (domain ``*``: the REGISTRY_ONLY
answer) stays whole: a request matching the catch-all never makes Envoy ask for the
virtual host of its real host. (Resolution NONE services have no catch-all: their
domains are their hosts, so the HTTP proxy's configuration is split with them in it.)
Builders here are pure functions of their arguments (memoizable).
"""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.on_demand.v3 import on_demand_pb2

from xdsd.resources import Resource
from xdsd.translate.config_sources import config_source
from xdsd.translate.node import ConfigSourceKind

#: The HTTP filter that fetches a missing virtual host by VHDS.
ON_DEMAND_FILTER = "envoy.filters.http.on_demand"


def on_demand_filter_config() -> on_demand_pb2.OnDemand:
    """The on-demand filter's configuration: virtual hosts only (no on-demand CDS)."""
    return on_demand_pb2.OnDemand()


def virtual_host_name(route_config: str, vhost: str) -> str:
    """The VHDS resource name of virtual host ``vhost`` of ``route_config``."""
    return f"{route_config}/{vhost}"


def splittable(config: route_pb2.RouteConfiguration) -> bool:
    """Whether ``config`` can be served by VHDS: it has no catch-all virtual host."""
    return not any("*" in vhost.domains for vhost in config.virtual_hosts)


def split_route_configuration(resource: Resource) -> tuple[Resource, ...]:
    """``resource`` (a RouteConfiguration) as VHDS serves it: the configuration without
    virtual hosts and with its ``vhds`` source, then a ``VirtualHost`` resource per
    virtual host (in the configuration's order). A configuration that is not
    ``splittable`` is returned alone, unchanged."""
    config = resource.message
    assert isinstance(config, route_pb2.RouteConfiguration)
    if not splittable(config):
        return (resource,)
    bare = route_pb2.RouteConfiguration()
    bare.CopyFrom(config)
    bare.ClearField("virtual_hosts")
    bare.vhds.config_source.CopyFrom(config_source(ConfigSourceKind.ADS))
    out = [Resource.of(resource.name, bare)]
    for vhost in config.virtual_hosts:
        name = virtual_host_name(resource.name, vhost.name)
        copy = type(vhost)()
        copy.CopyFrom(vhost)
        copy.name = name
        out.append(Resource.of(name, copy))
    return tuple(out)
