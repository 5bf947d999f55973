"""Which Gateway API kinds and versions xdsd reads, and their parsers.

``PARSERS`` maps (API group, kind) to the versions served and the parser; a kind of the
group not listed here, or a version not listed, is a kind xdsd does not read (a warning,
an error under ``refuse_unknown_kinds``: ``sources.dispatch``). The Kubernetes core
``Secret`` (``v1``) is read for the certificates listeners name.
"""

from __future__ import annotations

from collections.abc import Callable

from xdsd.model.gateway_api import GATEWAY_GROUP, GatewayAPIObject
from xdsd.sources.gateway_api.gateways import parse_gateway_class, parse_kube_gateway
from xdsd.sources.gateway_api.policies import (
    parse_backend_tls_policy,
    parse_reference_grant,
    parse_secret,
)
from xdsd.sources.gateway_api.routes import (
    parse_grpc_route,
    parse_http_route,
    parse_tcp_route,
    parse_tls_route,
    parse_udp_route,
)

#: A Gateway API kind's parser: (spec, name, namespace, origin, **keywords) → object.
APIParser = Callable[..., GatewayAPIObject]

#: Gateway API kind → (the versions of ``gateway.networking.k8s.io`` read, parser).
PARSERS: dict[str, tuple[tuple[str, ...], APIParser]] = {
    "GatewayClass": (("v1", "v1beta1"), parse_gateway_class),
    "Gateway": (("v1", "v1beta1"), parse_kube_gateway),
    "HTTPRoute": (("v1", "v1beta1"), parse_http_route),
    "GRPCRoute": (("v1", "v1alpha2"), parse_grpc_route),
    "ReferenceGrant": (("v1", "v1beta1", "v1alpha2"), parse_reference_grant),
    "TCPRoute": (("v1", "v1alpha2"), parse_tcp_route),
    "TLSRoute": (("v1", "v1alpha2", "v1alpha3"), parse_tls_route),
    "UDPRoute": (("v1", "v1alpha2"), parse_udp_route),
    "BackendTLSPolicy": (("v1", "v1alpha3"), parse_backend_tls_policy),
}
#: The group, for ``dispatch``.
GROUP = GATEWAY_GROUP


def gateway_api_parser(group: str, version: str, kind: str) -> APIParser | None:
    """The parser of ``kind`` in ``group``/``version`` (the core ``v1`` ``Secret``
    included); None when xdsd does not read it."""
    if group == "" and version == "v1" and kind == "Secret":
        return parse_secret
    if group != GATEWAY_GROUP:
        return None
    found = PARSERS.get(kind)
    if found is None or version not in found[0]:
        return None
    return found[1]
