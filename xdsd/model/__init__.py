"""The platform-neutral service model: frozen dataclasses, no I/O.

``Service`` describes what exists (ports, endpoints); ``VirtualService`` and
``DestinationRule`` say how traffic to it is routed; ``Mesh`` is everything loaded from
one config directory, cross-checked. Field names follow Istio's API in snake_case.
"""

from xdsd.model.mesh import Mesh, RawResource
from xdsd.model.rules import (
    Destination,
    DestinationRule,
    HeaderMatch,
    HTTPMatch,
    HTTPRoute,
    LoadBalancer,
    Retries,
    RouteDestination,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.service import (
    DEFAULT_NAMESPACE,
    DOMAIN_SUFFIX,
    Endpoint,
    Locality,
    Origin,
    Port,
    Protocol,
    Resolution,
    ResourceKey,
    Service,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DOMAIN_SUFFIX",
    "Destination",
    "DestinationRule",
    "Endpoint",
    "HTTPMatch",
    "HTTPRoute",
    "HeaderMatch",
    "LoadBalancer",
    "Locality",
    "Mesh",
    "Origin",
    "Port",
    "Protocol",
    "RawResource",
    "Resolution",
    "ResourceKey",
    "Retries",
    "RouteDestination",
    "Service",
    "StringMatch",
    "Subset",
    "TrafficPolicy",
    "VirtualService",
]
