"""What Gateway API objects mean, as the objects xdsd already serves.

``convert`` is a pure function of every Gateway API object of a directory and the
mesh's services: it returns Istio-shaped ``Gateway``s (one per Gateway of xdsd's
GatewayClass, selecting the gateway proxies labelled
``gateway.networking.k8s.io/gateway-name: NAME`` in its namespace) and
``VirtualService``s (bound to those gateways, or to ``mesh`` for GAMMA routes whose
parent is a Service), each with the origin and lines of the object it comes from so
every later problem names the operator's file; the status conditions Kubernetes would
have written back; and the problems (errors refuse the load, as for any kind).

The loader runs it once per load after the files are parsed, and merges its objects
like those of a file of their own (``<gateway-api>``), so the cross-checks and the
translation treat them as any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xdsd.errors import Problem
from xdsd.model import DestinationRule, Service, VirtualService
from xdsd.model.gateway_api import CONTROLLER_NAME, Condition, GatewayAPI, KubeGateway
from xdsd.model.networking import Gateway
from xdsd.model.service import ResourceKey
from xdsd.sources.gateway_api.backend_tls import convert_backend_tls
from xdsd.sources.gateway_api.grpc import convert_grpc_routes
from xdsd.sources.gateway_api.l4 import convert_l4_routes, l4_listeners

#: The label a gateway proxy carries to be the proxy of Gateway NAME (Istio's).
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
#: The origin path of what the conversion makes, as a synthetic file.
CONVERTED_PATH = "<gateway-api>"


@dataclass(frozen=True, slots=True)
class Converted:
    """What ``convert`` gives: the objects to serve, the conditions, the problems."""

    gateways: tuple[Gateway, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    conditions: tuple[Condition, ...] = ()
    problems: tuple[Problem, ...] = ()
    #: The TLS origination BackendTLSPolicies ask for (``backend_tls``).
    destination_rules: tuple[DestinationRule, ...] = ()


NOTHING = Converted()


def istio_gateway_ref(gateway: KubeGateway) -> str:
    """How a converted VirtualService names the Istio Gateway of ``gateway``."""
    return f"{gateway.namespace}/{gateway.name}"


def xdsd_gateways(api: GatewayAPI) -> dict[tuple[str, str], KubeGateway]:
    """The Gateways of a GatewayClass naming xdsd's controller, by (namespace, name)."""
    classes = {c.name for c in api.classes if c.controller_name == CONTROLLER_NAME}
    return {(g.namespace, g.name): g for g in api.gateways if g.gateway_class_name in classes}


def convert(api: GatewayAPI, services: Sequence[Service], root: str = "") -> Converted:
    """The Istio-shaped objects, conditions and problems of ``api`` over ``services``
    (see the module doc); files named by path are relative to ``root`` (the config
    directory). So far: the TLS/TCP/UDP listeners, TLSRoutes, TCPRoutes, UDPRoutes
    (``l4``), GRPCRoutes (``grpc``) and BackendTLSPolicies (``backend_tls``)."""
    ours = xdsd_gateways(api)
    gateways: list[Gateway] = []
    conditions: list[Condition] = []
    problems: list[Problem] = []
    served: dict[ResourceKey, frozenset[str]] = {}
    for kube in ours.values():
        part = l4_listeners(kube)
        served[kube.key] = part.served
        conditions.extend(part.conditions)
        problems.extend(part.problems)
        if part.servers:
            gateways.append(
                Gateway(
                    name=kube.name,
                    namespace=kube.namespace,
                    selector=((GATEWAY_NAME_LABEL, kube.name),),
                    servers=part.servers,
                    origin=kube.origin,
                )
            )
    l4 = convert_l4_routes(
        api.routes,
        ours,
        istio_gateway_ref,
        lambda g, listener: listener.name in served.get(g.key, ()),
        services,
        api.grants,
    )
    grpc_services, grpc_conditions = convert_grpc_routes(
        api.routes, ours, istio_gateway_ref, services, api.grants
    )
    backend_tls = convert_backend_tls(api.backend_tls, services, root)
    return Converted(
        gateways=tuple(gateways),
        virtual_services=(*l4.virtual_services, *grpc_services),
        conditions=(*conditions, *l4.conditions, *grpc_conditions, *backend_tls.conditions),
        problems=(*problems, *l4.problems),
        destination_rules=backend_tls.destination_rules,
    )
