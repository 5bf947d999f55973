"""Route configurations: virtual hosts per service port, routes from VirtualServices.

How this works: a route configuration is a list of ``VirtualHostSpec`` (a service port and
the domains that reach it). Domains are given to the first service by key that claims them
and left out for any later one, because Envoy rejects a route configuration in which two
virtual hosts share a domain. The routes of a virtual host depend only on the service, the
port and the mesh's rules, so ``RouteBuilder`` makes them once per (service, port) and
every route configuration that holds that service port reuses them.

Rules: the VirtualService that applies to a service is the first by key that names one of
its hosts and is bound to the mesh (``gateways`` empty or holding ``mesh``). Its HTTP
rules become routes in order, one route per match block (blocks are ORed; a block bound to
another ``port`` is left out); a rule without match blocks matches everything. A service
without a VirtualService gets one route to its own cluster. As in Istio, a service with a
VirtualService gets only the VirtualService's routes: a request no rule matches is a 404.
Timeouts default to 0s (no timeout) and retries to Istio's default policy.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2

from xdsd.errors import Problem, TranslationError
from xdsd.model import (
    HTTPMatch,
    HTTPRoute,
    Mesh,
    Port,
    ResourceKey,
    Retries,
    Service,
    StringMatch,
    VirtualService,
)
from xdsd.model.rules import MatchKind
from xdsd.resources import pack
from xdsd.translate.clusters import inbound_cluster_name, outbound_cluster_name
from xdsd.translate.config_sources import duration
from xdsd.translate.hash_policy import add_hash_policies, rule_hashes

#: The gateway name that binds a VirtualService to sidecars.
MESH_GATEWAY = "mesh"
#: Istio's default retry policy.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIES = 2
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
#: The status of a route whose destinations name no known service.
NO_DESTINATION_STATUS = 503


class MatcherStyle(Enum):
    """How header conditions are written. MOSN reads only the deprecated
    ``exact_match``/``prefix_match``/``safe_regex_match`` fields, which share a oneof with
    ``string_match``, so it gets a route configuration of its own."""

    STRING_MATCH = "string_match"
    DEPRECATED = "deprecated"


@dataclass(frozen=True, slots=True)
class VirtualHostSpec:
    """A virtual host to build: a service port and the domains that lead to it."""

    service: Service
    port: Port
    domains: tuple[str, ...]

    @property
    def name(self) -> str:
        """The virtual host's name, ``FQDN:PORT``."""
        return f"{self.service.fqdn}:{self.port.number}"


def port_domains(service: Service, port: int) -> list[str]:
    """Every name of ``service``, each without and with ``:port`` (for the per-port
    listener, where the Host header may or may not carry the port)."""
    return [d for host in service.host_names for d in (host, f"{host}:{port}")]


def proxy_domains(service: Service, port: int) -> list[str]:
    """The names an HTTP_PROXY client puts in the Host header to reach ``service`` on
    ``port``: ``name:port``, and the bare name only for port 80 (a client calling
    ``http://reviews:9080/`` sends ``Host: reviews:9080``; ``http://reviews/`` means port
    80)."""
    names = [f"{host}:{port}" for host in service.host_names]
    if port == 80:
        names.extend(service.host_names)
    return names


def dedupe_domains(candidates: Iterable[tuple[Service, Port, list[str]]]) -> list[VirtualHostSpec]:
    """Virtual hosts for ``candidates`` (in the order given, services by key) with each
    domain kept only for the first candidate that claims it. A candidate left with no
    domain at all is dropped."""
    seen: set[str] = set()
    out: list[VirtualHostSpec] = []
    for service, port, domains in candidates:
        mine = [d for d in dict.fromkeys(domains) if d not in seen]
        seen.update(mine)
        if mine:
            out.append(VirtualHostSpec(service, port, tuple(mine)))
    return out


def virtual_service_index(mesh: Mesh) -> dict[ResourceKey, VirtualService]:
    """The VirtualService that routes each service's mesh traffic: the first by key that
    is bound to the mesh and names the service (hosts resolved in the rule's namespace;
    unknown hosts are skipped, sources already warned about them)."""
    index: dict[ResourceKey, VirtualService] = {}
    for vs in mesh.virtual_services:
        if vs.gateways and MESH_GATEWAY not in vs.gateways:
            continue
        for host in vs.hosts:
            target = mesh.service(host, vs.namespace)
            if target is not None:
                index.setdefault(target.key, vs)
    return index


class RouteBuilder:
    """Builds virtual hosts and route configurations for one mesh and matcher style,
    making the routes of each (service, port) once."""

    def __init__(
        self,
        mesh: Mesh,
        style: MatcherStyle,
        *,
        previous: Mapping[tuple[ResourceKey, int], tuple[Hashable, list[Any]]] | None = None,
    ) -> None:
        self._mesh = mesh
        self._style = style
        self._rules = virtual_service_index(mesh)
        # (service, port) → (what the routes are made of, the routes); a builder for the
        # next mesh reuses the routes whose inputs compare equal (``previous=``, the
        # ``memo`` of the builder of the same style for the previous mesh).
        self.memo: dict[tuple[ResourceKey, int], tuple[Hashable, list[Any]]] = {}
        self._previous = previous if previous is not None else {}

    def route_configuration(self, name: str, vhosts: Sequence[VirtualHostSpec]) -> Any:
        """The ``RouteConfiguration`` ``name`` with one virtual host per spec, in order.

        Raises TranslationError listing every rule that cannot be translated (a
        destination port or subset that does not exist, an ambiguous destination port).
        """
        config = route_pb2.RouteConfiguration(name=name)
        problems: list[Problem] = []
        for spec in vhosts:
            vhost = config.virtual_hosts.add(name=spec.name)
            vhost.domains.extend(spec.domains)
            try:
                vhost.routes.extend(self.routes(spec.service, spec.port.number))
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        if problems:
            raise TranslationError(problems)
        return config

    def routes(self, service: Service, port: int) -> list[Any]:
        """The routes of ``service``'s virtual host for ``port`` (memoized, and reused
        from the previous builder when what they are made of is unchanged)."""
        key = (service.key, port)
        found = self.memo.get(key)
        if found is None:
            inputs = self.inputs(service, port)
            old = self._previous.get(key)
            if old is not None and old[0] == inputs:
                found = old
            else:
                vs = self._rules.get(service.key)
                if vs is None:
                    found = (inputs, [self._default_route(service, port)])
                else:
                    found = (inputs, self._rule_routes(vs, port))
            self.memo[key] = found
        return found[1]

    def inputs(self, service: Service, port: int) -> Hashable:
        """Everything the routes of ``service``'s virtual host for ``port`` are made of,
        as a value that compares equal exactly when they would be built the same (and is
        cheap to compare for a service without a VirtualService)."""
        vs = self._rules.get(service.key)
        if vs is None:
            return (service.fqdn, port, rule_hashes(self._mesh.destination_rule(service)))
        targets: list[Hashable] = []
        for http in vs.http:
            for rd in http.route:
                target = self._mesh.service(rd.destination.host, vs.namespace)
                if target is None:
                    targets.append(None)
                    continue
                rule = self._mesh.destination_rule(target)
                subsets = tuple(s.name for s in rule.subsets) if rule is not None else None
                targets.append((target.fqdn, target.ports, subsets, rule_hashes(rule)))
        return (service.fqdn, port, vs, tuple(targets))

    def _default_route(self, service: Service, port: int) -> Any:
        route = route_components_pb2.Route(name="default")
        route.match.prefix = "/"
        route.route.cluster = outbound_cluster_name(port, "", service.fqdn)
        _finish_action(route.route, None, None)
        add_hash_policies(route.route, self._mesh)
        return route

    def _rule_routes(self, vs: VirtualService, port: int) -> list[Any]:
        problems: list[Problem] = []
        out: list[Any] = []
        for index, http in enumerate(vs.http):
            blocks: list[HTTPMatch | None] = [m for m in http.match if not m.port or m.port == port]
            if not http.match:
                blocks = [None]
            if not blocks:
                continue
            action = self._action(vs, index, http, port, problems)
            for block in blocks:
                route = route_components_pb2.Route(name=_route_name(http, block))
                _set_match(route.match, block, self._style)
                if action is None:
                    route.direct_response.status = NO_DESTINATION_STATUS
                else:
                    route.route.CopyFrom(action)
                out.append(route)
        if problems:
            raise TranslationError(problems)
        return out

    def _action(
        self,
        vs: VirtualService,
        index: int,
        http: HTTPRoute,
        port: int,
        problems: list[Problem],
    ) -> Any | None:
        weighted: dict[str, int] = {}
        for j, rd in enumerate(http.route):
            dest = rd.destination
            field = f"http[{index}].route[{j}].destination"
            target = self._mesh.service(dest.host, vs.namespace)
            if target is None:
                continue
            number = self._destination_port(vs, field, target, dest.port, port, problems)
            if number is None:
                continue
            if dest.subset:
                rule = self._mesh.destination_rule(target)
                if rule is None or rule.subset(dest.subset) is None:
                    problems.append(
                        _problem(
                            vs,
                            f"{field}.subset",
                            f"subset {dest.subset!r} of {target.fqdn} is not defined by any "
                            "DestinationRule: define it or remove it from the route",
                        )
                    )
                    continue
            name = outbound_cluster_name(number, dest.subset, target.fqdn)
            weighted[name] = weighted.get(name, 0) + rd.weight
        if not weighted:
            return None
        action = route_components_pb2.RouteAction()
        if any(weighted.values()):
            weighted = {name: w for name, w in weighted.items() if w > 0}
        else:
            weighted = dict.fromkeys(weighted, 1)
        if len(weighted) == 1:
            action.cluster = next(iter(weighted))
        else:
            for name, weight in weighted.items():
                cw = action.weighted_clusters.clusters.add(name=name)
                cw.weight.value = weight
        _finish_action(action, http.timeout, http.retries)
        add_hash_policies(action, self._mesh)
        return action

    def _destination_port(
        self,
        vs: VirtualService,
        field: str,
        target: Service,
        wanted: int,
        listener_port: int,
        problems: list[Problem],
    ) -> int | None:
        if wanted:
            if target.port(wanted) is None:
                problems.append(
                    _problem(
                        vs,
                        f"{field}.port",
                        f"{target.fqdn} has no port {wanted}: use one of {_port_list(target)}",
                    )
                )
                return None
            return wanted
        if target.port(listener_port) is not None:
            return listener_port
        if len(target.ports) == 1:
            return target.ports[0].number
        problems.append(
            _problem(
                vs,
                f"{field}.port",
                f"{target.fqdn} has several ports and none is {listener_port}: set "
                f"destination.port to one of {_port_list(target)}",
            )
        )
        return None


def inbound_route_configuration(port: Port) -> Any:
    """The inline route configuration of an inbound HTTP listener: every request to the
    local application, with no timeout and no retries."""
    config = route_pb2.RouteConfiguration(name=f"inbound|{port.number}")
    vhost = config.virtual_hosts.add(name=f"inbound|http|{port.number}")
    vhost.domains.append("*")
    route = vhost.routes.add(name="default")
    route.match.prefix = "/"
    route.route.cluster = inbound_cluster_name(port.number)
    route.route.timeout.CopyFrom(duration(timedelta(0)))
    return config


def retry_policy(retries: Retries | None) -> Any | None:
    """Istio's translation of HTTPRetry: None (no retries) for ``attempts: 0``; Istio's
    default policy (2 retries on connect-failure, refused-stream, unavailable, cancelled
    and retriable status codes, avoiding hosts already tried) when the rule says nothing;
    otherwise the default with the rule's attempts, per-try timeout and ``retryOn`` (whose
    numbers become retriable status codes)."""
    if retries is not None and retries.attempts <= 0:
        return None
    policy = route_components_pb2.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    policy.num_retries.value = DEFAULT_RETRIES
    predicate = policy.retry_host_predicate.add(name=PREVIOUS_HOSTS)
    predicate.typed_config.CopyFrom(pack(previous_hosts_pb2.PreviousHostsPredicate()))
    if retries is None:
        return policy
    policy.num_retries.value = retries.attempts
    if retries.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
    if retries.retry_on:
        tokens = [t.strip() for t in retries.retry_on.split(",") if t.strip()]
        codes = [int(t) for t in tokens if t.isdigit()]
        words = [t for t in tokens if not t.isdigit()]
        if codes and "retriable-status-codes" not in words:
            words.append("retriable-status-codes")
        policy.retry_on = ",".join(words)
        policy.retriable_status_codes.extend(codes)
    return policy


def _finish_action(action: Any, timeout: timedelta | None, retries: Retries | None) -> None:
    # An explicit 0s disables Envoy's 15 s default, as Istio does.
    action.timeout.CopyFrom(duration(timeout or timedelta(0)))
    policy = retry_policy(retries)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def _route_name(http: HTTPRoute, block: HTTPMatch | None) -> str:
    if block is not None and block.name:
        return f"{http.name}.{block.name}" if http.name else block.name
    return http.name


def _set_match(match: Any, block: HTTPMatch | None, style: MatcherStyle) -> None:
    uri = block.uri if block is not None else None
    if uri is None:
        match.prefix = "/"
    elif uri.kind is MatchKind.EXACT:
        match.path = uri.value
    elif uri.kind is MatchKind.PREFIX:
        match.prefix = uri.value
    else:
        match.safe_regex.regex = uri.value
    if block is None:
        return
    conditions = [(h.name, h.match) for h in block.headers]
    if block.method is not None:
        conditions.append((":method", block.method))
    for name, condition in conditions:
        _set_header(match.headers.add(name=name), condition, style)


def _set_header(header: Any, condition: StringMatch | None, style: MatcherStyle) -> None:
    if condition is None:
        header.present_match = True
        return
    if style is MatcherStyle.DEPRECATED:
        if condition.kind is MatchKind.EXACT:
            header.exact_match = condition.value
        elif condition.kind is MatchKind.PREFIX:
            header.prefix_match = condition.value
        else:
            header.safe_regex_match.regex = condition.value
        return
    matcher = string_pb2.StringMatcher()
    if condition.kind is MatchKind.EXACT:
        matcher.exact = condition.value
    elif condition.kind is MatchKind.PREFIX:
        matcher.prefix = condition.value
    else:
        matcher.safe_regex.regex = condition.value
    header.string_match.CopyFrom(matcher)


def _problem(vs: VirtualService, field: str, message: str) -> Problem:
    return Problem(vs.origin.path, vs.origin.line, field, message)


def _port_list(service: Service) -> str:
    return ", ".join(str(p.number) for p in service.ports) or "(none)"
