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

Gateways (``gateway_servers``): the Istio Gateway of the same name and namespace,
selector ``{GATEWAY_NAME_LABEL: NAME}``, one server per listener named as the
listener, hosts its hostname (``*`` without one), HTTP and HTTPS ones isolated
(``Server.listener_isolation``: each serves only its own routes); HTTP listeners plain HTTP, HTTPS
listeners ``tls.mode: Terminate`` a SIMPLE server whose certificate comes from its
first certificateRef (``refs.certificate_paths``); TLS, TCP and UDP listeners as
``l4.listener_server`` says. A listener that is not served is a warning and its
``Accepted``/``ResolvedRefs`` False with the reason. Listeners that cannot share their
port (``listener_conflicts``: the gateway translation's own rule,
``networking.sharing_clashes``) are all left out, ``Conflicted`` True, so the rest of
the Gateway is served; a Gateway with a listener not served is ``Accepted`` True with
reason ``ListenersNotValid``. A listener whose ``allowedRoutes.kinds`` lists a kind it
cannot take has ``ResolvedRefs`` False, ``InvalidRouteKinds``.
Gateways of a class whose controller is not xdsd's are ignored (``Accepted`` False,
``Pending``, on the Gateway).

HTTPRoutes (``http.py``): the routes attached to a Gateway's listeners
(``attach.py``) become one VirtualService per (Gateway, listener, hostname), named
``gateway-api.GATEWAY~LISTENER~HOST`` in the Gateway's namespace, bound to its Istio
Gateway and served on that listener's server alone, holding every rule of every route
attached to the listener with that hostname, one Istio rule per
match, in the Gateway API's precedence order (``http.precedence``). GRPCRoutes
(``grpc.py``), TLSRoutes/TCPRoutes/UDPRoutes (``l4.py``) and BackendTLSPolicies
(``backend_tls.py``) have modules of their own, and so do the HTTPRoutes and GRPCRoutes
whose parent is a Service (GAMMA, ``gamma.py``: VirtualServices bound to ``mesh``, their
rules converted by the same functions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from xdsd.errors import Problem, Severity
from xdsd.model import DestinationRule, Service, VirtualService
from xdsd.model.gateway_api import (
    CONTROLLER_NAME,
    GATEWAY_GROUP,
    Condition,
    GatewayAPI,
    KubeGateway,
    Listener,
)
from xdsd.model.networking import (
    EntryPort,
    Gateway,
    Server,
    ServerTLS,
    ServerTLSMode,
    server_kind,
    sharing_clashes,
)
from xdsd.model.service import CertificateRef, Origin, Protocol, ResourceKey
from xdsd.sources.gateway_api import conditions as cond
from xdsd.sources.gateway_api.attach import PROTOCOL_KINDS, kind_conflicts
from xdsd.sources.gateway_api.backend_tls import convert_backend_tls
from xdsd.sources.gateway_api.common import field_line
from xdsd.sources.gateway_api.gamma import mesh_routes, shared_rules
from xdsd.sources.gateway_api.grpc import convert_grpc_routes
from xdsd.sources.gateway_api.http import http_virtual_services
from xdsd.sources.gateway_api.l4 import convert_l4_routes, listener_server
from xdsd.sources.gateway_api.names import GATEWAY_NAME_LABEL, PREFIX, istio_gateway_name
from xdsd.sources.gateway_api.refs import PRIVATE_KEY_OPTION, certificate_paths

__all__ = [
    "CONVERTED_PATH",
    "GATEWAY_NAME_LABEL",
    "NOTHING",
    "PREFIX",
    "Converted",
    "convert",
    "istio_gateway_name",
    "istio_gateway_ref",
    "xdsd_gateways",
]

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
    return f"{gateway.namespace}/{istio_gateway_name(gateway.name)}"


def xdsd_gateways(api: GatewayAPI) -> dict[tuple[str, str], KubeGateway]:
    """The Gateways of a GatewayClass naming xdsd's controller, by (namespace, name)."""
    classes = {c.name for c in api.classes if c.controller_name == CONTROLLER_NAME}
    return {(g.namespace, g.name): g for g in api.gateways if g.gateway_class_name in classes}


def convert(
    api: GatewayAPI,
    services: Sequence[Service],
    root: str = "",
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Converted:
    """The Istio-shaped objects, conditions and problems of ``api`` over ``services``
    (see the module doc); files named by path are relative to ``root`` (the config
    directory). ``namespace_labels`` are the labels of the namespaces that listeners'
    ``allowedRoutes`` selectors look at: by default those of ``api``'s ``Namespace``
    documents (a namespace none declares has only ``kubernetes.io/metadata.name``)."""
    conditions: list[Condition] = []
    problems: list[Problem] = []
    ours = {c.name for c in api.classes if c.controller_name == CONTROLLER_NAME}
    for gwc in api.classes:
        if gwc.name in ours:
            conditions.append(cond.ok(gwc.key, cond.ACCEPTED))
    gateways: dict[tuple[str, str], KubeGateway] = {}
    served: dict[ResourceKey, frozenset[str]] = {}
    istio: list[Gateway] = []
    for gw in api.gateways:
        if gw.gateway_class_name not in ours:
            conditions.append(
                cond.failed(
                    gw.key,
                    cond.ACCEPTED,
                    cond.PENDING,
                    f"GatewayClass {gw.gateway_class_name!r} is not one of xdsd's (controller "
                    f"{CONTROLLER_NAME}): this Gateway is ignored",
                )
            )
            continue
        gateways[(gw.namespace, gw.name)] = gw
        server_list, gw_conditions, gw_problems = gateway_servers(gw, api, root)
        served[gw.key] = frozenset(server.name for server in server_list)
        conditions.extend(gw_conditions)
        problems.extend(gw_problems)
        if server_list:  # none served: no Istio Gateway (their conditions say why)
            istio.append(
                Gateway(
                    istio_gateway_name(gw.name),
                    gw.namespace,
                    ((GATEWAY_NAME_LABEL, gw.name),),
                    tuple(server_list),
                    origin=gw.origin,
                )
            )
        invalid = [repr(li.name) for li in gw.listeners if li.name not in served[gw.key]]
        if invalid:
            message = f"listeners {', '.join(invalid)} are not served (their conditions say why)"
            conditions.append(
                Condition(gw.key, cond.ACCEPTED, True, cond.LISTENERS_NOT_VALID, message)
            )
        else:
            conditions.append(cond.ok(gw.key, cond.ACCEPTED))
        if server_list:
            conditions.append(cond.ok(gw.key, cond.PROGRAMMED))
        else:
            conditions.append(
                cond.failed(gw.key, cond.PROGRAMMED, cond.INVALID, "no listener is served")
            )
    labels = api.namespace_labels() if namespace_labels is None else namespace_labels
    routes = [r for r in api.routes if r.kind == "HTTPRoute"]
    rejected = kind_conflicts(api.routes, gateways, labels)
    vss, route_conditions = http_virtual_services(
        routes, gateways, services, api.grants, labels, rejected
    )
    conditions.extend(route_conditions)
    l4 = convert_l4_routes(
        api.routes,
        gateways,
        istio_gateway_ref,
        lambda g, listener: listener.name in served.get(g.key, frozenset()),
        services,
        api.grants,
        labels,
    )
    if l4.datagrams:
        istio = _with_datagrams(istio, dict(l4.datagrams))
    grpc_services, grpc_conditions = convert_grpc_routes(
        api.routes, gateways, istio_gateway_ref, services, api.grants, labels, rejected
    )
    backend_tls = convert_backend_tls(api.backend_tls, services, root, api.secrets)
    mesh = mesh_routes(api.routes, services, shared_rules(services, api.grants))
    return Converted(
        gateways=tuple(istio),
        virtual_services=(*vss, *l4.virtual_services, *grpc_services, *mesh.virtual_services),
        conditions=(
            *conditions,
            *l4.conditions,
            *grpc_conditions,
            *backend_tls.conditions,
            *mesh.conditions,
        ),
        problems=(*problems, *l4.problems, *mesh.problems),
        destination_rules=backend_tls.destination_rules,
    )


def _with_datagrams(
    istio: list[Gateway],
    targets: Mapping[tuple[ResourceKey, str], tuple[tuple[str, int, int], ...]],
) -> list[Gateway]:
    """``istio`` with each UDP server's ``datagrams_to`` set from ``targets`` (by the
    Gateway API Gateway's key and the listener's name: a converted Gateway has the
    name, namespace and listener names of its Gateway)."""
    out: list[Gateway] = []
    for gateway in istio:
        key = ResourceKey("KubeGateway", gateway.namespace, gateway.name)
        servers = tuple(
            replace(server, datagrams_to=targets.get((key, server.name), ()))
            if server.port.protocol is Protocol.UDP
            else server
            for server in gateway.servers
        )
        out.append(replace(gateway, servers=servers) if servers != gateway.servers else gateway)
    return out


def gateway_servers(
    gw: KubeGateway, api: GatewayAPI, root: str = ""
) -> tuple[list[Server], list[Condition], list[Problem]]:
    """The servers of ``gw``'s listeners, a condition set per listener (in listener
    order), and the problems of listeners that are not served.

    A listener that cannot be converted (``_server``) is not served. Listeners whose
    servers cannot share their port (``listener_conflicts``: the rule the gateway
    translation enforces) are all left out, ``Conflicted`` True (``ProtocolConflict``
    or ``HostnameConflict``), ``Accepted`` and ``Programmed`` False, each a warning
    naming the other; the others are served. A served listener whose
    ``allowedRoutes.kinds`` lists a kind it cannot take has ``ResolvedRefs`` False
    (``InvalidRouteKinds``) and takes the kinds it can."""
    made = [
        (index, listener, *_server(gw, index, listener, api, root))
        for index, listener in enumerate(gw.listeners)
    ]
    conflicts = listener_conflicts(
        [(listener.name, server) for _, listener, server, _ in made if server is not None]
    )
    servers: list[Server] = []
    conditions: list[Condition] = []
    problems: list[Problem] = []
    for index, listener, server, failure in made:
        scope = cond.listener_scope(listener.name)
        field = f"spec.listeners[{index}]"
        if server is None:
            reason, message, type_ = failure
            conditions.append(cond.failed(gw.key, type_, reason, message, scope))
            conditions.append(cond.failed(gw.key, cond.PROGRAMMED, cond.INVALID, message, scope))
            problems.append(
                _problem(gw, field, f"listener {listener.name!r} is not served: {message}")
            )
            continue
        conflict = conflicts.get(listener.name)
        if conflict is not None:
            reason, message = conflict
            for type_ in (cond.ACCEPTED, cond.CONFLICTED):
                conditions.append(cond.failed(gw.key, type_, reason, message, scope))
            conditions.append(cond.failed(gw.key, cond.PROGRAMMED, cond.INVALID, message, scope))
            problems.append(
                _problem(gw, field, f"listener {listener.name!r} is not served: {message}")
            )
            continue
        servers.append(server)
        conditions.append(cond.ok(gw.key, cond.ACCEPTED, scope))
        unsupported = invalid_route_kinds(listener)
        if unsupported:
            names = ", ".join(f"{g or GATEWAY_GROUP}/{k}" for g, k in unsupported)
            takes = ", ".join(PROTOCOL_KINDS.get(listener.protocol, ()))
            message = (
                f"allowedRoutes.kinds lists {names}, which a {listener.protocol} listener "
                f"cannot take (it takes {takes})"
            )
            conditions.append(
                cond.failed(gw.key, cond.RESOLVED_REFS, cond.INVALID_ROUTE_KINDS, message, scope)
            )
        else:
            conditions.append(cond.ok(gw.key, cond.RESOLVED_REFS, scope))
        for type_ in (cond.PROGRAMMED, cond.CONFLICTED):
            conditions.append(cond.ok(gw.key, type_, scope))
    return servers, conditions, problems


def listener_conflicts(servers: Sequence[tuple[str, Server]]) -> dict[str, tuple[str, str]]:
    """The listeners (by name, with their servers, of one Gateway) that conflict on a
    port, each with the ``Conflicted`` reason and a message naming the first listener it
    conflicts with. Two listeners on one port (UDP apart from the others) conflict when
    their two servers could not share a listener (``networking.sharing_clashes``, the
    rule the gateway translation enforces): ``HostnameConflict`` when both claim one
    SNI host, ``ProtocolConflict`` otherwise (plain HTTP with TLS, TCP or UDP with
    anything). Every listener of a conflicting pair is marked (the API: listeners that
    are not distinct are all conflicted), so the rest can share their port."""
    ports: dict[tuple[int, bool], list[tuple[str, Server]]] = {}
    for name, server in servers:
        key = (server.port.number, server_kind(server) == "udp")
        ports.setdefault(key, []).append((name, server))
    out: dict[str, tuple[str, str]] = {}
    for members in ports.values():
        for a, (first, first_server) in enumerate(members):
            for second, second_server in members[a + 1 :]:
                clashes = sharing_clashes((first_server, second_server))
                if not clashes:
                    continue
                clash = clashes[0]
                reason = cond.HOSTNAME_CONFLICT if clash.host else cond.PROTOCOL_CONFLICT
                out.setdefault(first, (reason, f"{clash.message} (listener {second!r})"))
                out.setdefault(second, (reason, f"{clash.message} (listener {first!r})"))
    return out


def invalid_route_kinds(listener: Listener) -> tuple[tuple[str, str], ...]:
    """The (group, kind) entries of ``listener``'s ``allowedRoutes.kinds`` it cannot
    take: another group than the Gateway API's, or a kind its protocol does not carry
    (``attach.PROTOCOL_KINDS``); the API's ``InvalidRouteKinds``."""
    supported = PROTOCOL_KINDS.get(listener.protocol, ())
    return tuple(
        (group, kind)
        for group, kind in listener.allowed_routes.kinds
        if group not in ("", GATEWAY_GROUP) or kind not in supported
    )


def _server(
    gw: KubeGateway, index: int, listener: Listener, api: GatewayAPI, root: str
) -> tuple[Server | None, tuple[str, str, str]]:
    """The server of one listener, or None and (reason, message, condition type)."""
    hosts = (listener.hostname or "*",)
    if listener.protocol == "HTTP":
        port = EntryPort(listener.port, Protocol.HTTP, listener.name, protocol_name="HTTP")
        return Server(port, hosts, name=listener.name, listener_isolation=True), ("", "", "")
    if listener.protocol != "HTTPS":
        got = listener_server(gw, listener)
        if isinstance(got, Server):
            return got, ("", "", "")
        if got is not None:
            return None, (got.reason, got.message, got.type)
        return None, (
            cond.UNSUPPORTED_PROTOCOL,
            f"protocol {listener.protocol} is not served",
            cond.ACCEPTED,
        )
    tls = listener.tls
    if tls is None or tls.mode != "Terminate":
        return None, (
            cond.UNSUPPORTED_VALUE,
            "an HTTPS listener needs tls.mode Terminate",
            cond.ACCEPTED,
        )
    if not tls.certificate_refs:
        return None, (
            cond.INVALID_CERTIFICATE_REF,
            "an HTTPS listener needs a tls.certificateRefs entry",
            cond.RESOLVED_REFS,
        )
    paths, reason, message = certificate_paths(gw, tls, api, root)
    if paths is None:
        return None, (reason, message, cond.RESOLVED_REFS)
    certificate, key = paths
    field = f"spec.listeners[{index}].tls.certificateRefs[0]"
    at = Origin(gw.origin.path, field_line(gw.lines, field, gw.origin.line))
    server_tls = ServerTLS(
        ServerTLSMode.SIMPLE,
        server_certificate=certificate,
        private_key=key,
        # the key's field ends in "private-key": it is read as a private key
        refs=(
            CertificateRef(certificate, field, at),
            CertificateRef(key, f"spec.listeners[{index}].tls.options.{PRIVATE_KEY_OPTION}", at),
        ),
    )
    port = EntryPort(listener.port, Protocol.TLS, listener.name, protocol_name="HTTPS")
    server = Server(port, hosts, server_tls, name=listener.name, listener_isolation=True)
    return server, ("", "", "")


def _problem(gw: KubeGateway, field: str, message: str) -> Problem:
    """A warning about ``gw`` at ``field``'s line."""
    line = field_line(gw.lines, field, gw.origin.line)
    return Problem(gw.origin.path, line, field, message, Severity.WARNING)
