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
from xdsd.model import Service, VirtualService
from xdsd.model.gateway_api import Condition, GatewayAPI
from xdsd.model.networking import Gateway

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


NOTHING = Converted()


def convert(api: GatewayAPI, services: Sequence[Service]) -> Converted:
    """The Istio-shaped objects, conditions and problems of ``api`` over ``services``
    (see the module doc). Not built yet: nothing."""
    return NOTHING
