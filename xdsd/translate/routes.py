"""Route configurations: virtual hosts per service port, routes from VirtualServices.

How this works: a route configuration is a list of ``VirtualHostSpec`` (a service port and
the domains that reach it). Domains are given to the first service by key that claims them
and left out for any later one, because Envoy rejects a route configuration in which two
virtual hosts share a domain. The routes of a virtual host depend only on the service, the
port and the mesh's rules, so ``RouteBuilder`` makes them once per (service, port) and
every route configuration that holds that service port reuses them.

Rules: the VirtualService that applies to a service is the first by key that names one of
its hosts and is bound to the mesh (``gateways`` empty or holding ``mesh``); failing one,
the mesh-bound VirtualService with the most specific wildcard host (``*.suffix``, ``*``)
matching one of its names (``virtual_service_index``), as Istio. Its HTTP
rules become routes in order, one route per match block (blocks are ORed; a block bound to
another ``port`` is left out); a rule without match blocks matches everything. A service
without a VirtualService gets one route to its own cluster. As in Istio, a service with a
VirtualService gets only the VirtualService's routes: a request no rule matches is a 404.
Timeouts default to 0s (no timeout) and retries to Istio's default policy (without the
previous-hosts predicate on a rule's lone destination with a consistent hash, as Istio).
Match blocks become ``RouteMatch``es in ``route_matches``; what a rule does besides
choosing clusters (redirect, direct response, fault, CORS, mirrors, header changes) is
written by ``route_actions``.

Callers: a match block with ``sourceLabels`` (or ``sourceNamespace``) applies only to
proxies whose labels include them, and one with ``gateways`` only when they name
``mesh`` (a sidecar), as Istio decides it per proxy. So routes depend on the caller, but
only through the labels some block names: a ``Caller`` holds just those, and routes and
route configurations are memoized per distinct ``Caller``, not per node (most rules name
no labels, and then every caller is the same ``Caller()``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)

from xdsd.errors import Problem, TranslationError
from xdsd.model import (
    Destination,
    Headers,
    HTTPMatch,
    HTTPRoute,
    Mesh,
    Port,
    ResourceKey,
    Retries,
    Service,
    VirtualService,
)
from xdsd.model.mesh import is_wildcard, wildcard_matches
from xdsd.model.rules import UNRESOLVED_BACKEND_HOST
from xdsd.resources import ROUTE, Resource, pack
from xdsd.resources.references import UNRESOLVED_BACKEND_CLUSTER, route_refs
from xdsd.translate.clusters import inbound_cluster_name, outbound_cluster_name
from xdsd.translate.config_sources import duration
from xdsd.translate.hash_policy import add_hash_policies, rule_hashes
from xdsd.translate.route_actions import (
    CORS_FILTER,
    FAULT_FILTER,
    MAX_DIRECT_RESPONSE_BODY,
    apply_headers,
    cors_config,
    direct_response_action,
    fault_config,
    mirror_policy,
    redirect_action,
)
from xdsd.translate.route_matches import (
    MESH_GATEWAY,
    NO_CALLER,
    Caller,
    Relevance,
    applies_to_sidecar,
    caller_of,
    relevance_of,
    set_match,
)
from xdsd.translate.route_matches import MatcherStyle as MatcherStyle  # re-exported
from xdsd.translate.wire import delimited, strings, tag

#: Istio's default retry policy.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIES = 2
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
#: The status of a route whose destinations name no known service.
NO_DESTINATION_STATUS = 503
#: The catch-all virtual host of a REGISTRY_ONLY node, and what it answers (Istio's).
BLOCK_ALL = "block_all"
BLOCKED_STATUS = 502


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
        fresh = dict.fromkeys(domains)
        mine = tuple(fresh) if seen.isdisjoint(fresh) else tuple(d for d in fresh if d not in seen)
        seen.update(fresh)
        if mine:
            out.append(VirtualHostSpec(service, port, mine))
    return out


#: The memo key of the routes of a virtual host: (service, port, caller).
RoutesKey = tuple[ResourceKey, int, Caller]
#: A routes memo entry (what the routes are made of, the routes), the routes' encoding as
#: ``VirtualHost.routes`` fields, and the clusters they reference.
EncodedRoutes = tuple[tuple[Hashable, list[Any]], bytes, tuple[tuple[str, str], ...]]


def virtual_service_index(mesh: Mesh) -> dict[ResourceKey, VirtualService]:
    """The VirtualService that routes each service's mesh traffic, among those bound to
    the mesh, as Istio picks it: one naming the service exactly (hosts resolved in the
    rule's namespace; unknown hosts are skipped, sources already warned about them), else
    one whose wildcard host (``*``, ``*.suffix``: ``model.mesh.wildcard_matches``)
    matches the service's full name or an extra host, the longest wildcard first.
    Between rules naming the same host (or the same wildcard), the first by key (the
    cross-checks refuse the second)."""
    index: dict[ResourceKey, VirtualService] = {}
    wildcards: dict[str, VirtualService] = {}
    for vs in mesh.virtual_services:
        if vs.gateways and MESH_GATEWAY not in vs.gateways:
            continue
        for host in vs.hosts:
            if is_wildcard(host):
                wildcards.setdefault(host.lower(), vs)
                continue
            target = mesh.service(host, vs.namespace)
            if target is not None:
                index.setdefault(target.key, vs)
    if wildcards:
        by_specificity = sorted(wildcards, key=lambda w: (-len(w), w))
        for svc in mesh.services:
            if svc.key in index:
                continue
            for pattern in by_specificity:
                if any(wildcard_matches(pattern, name) for name in (svc.fqdn, *svc.hosts)):
                    index[svc.key] = wildcards[pattern]
                    break
    return index


class RouteBuilder:
    """Builds virtual hosts and route configurations for one mesh and matcher style,
    making the routes of each (service, port, caller) once."""

    def __init__(
        self,
        mesh: Mesh,
        style: MatcherStyle,
        *,
        previous: Mapping[RoutesKey, tuple[Hashable, list[Any]]] | None = None,
        previous_encoded: Mapping[RoutesKey, EncodedRoutes] | None = None,
    ) -> None:
        self._mesh = mesh
        self._style = style
        self._rules = virtual_service_index(mesh)
        self._relevance: dict[ResourceKey, Relevance] = {}
        # (service, port, caller) → (what the routes are made of, the routes); a builder
        # for the next mesh reuses the routes whose inputs compare equal (``previous=``,
        # the ``memo`` of the builder of the same style for the previous mesh).
        self.memo: dict[RoutesKey, tuple[Hashable, list[Any]]] = {}
        # The same keys → the routes' encoding as ``VirtualHost.routes`` fields and the
        # clusters they reference (``route_configuration_resource``), with the memo entry
        # they were encoded from; taken over from the previous builder (``previous_encoded``,
        # its ``encoded``) while that entry is the one reused.
        self.encoded: dict[RoutesKey, EncodedRoutes] = {}
        self._previous_encoded = previous_encoded if previous_encoded is not None else {}
        self._previous = previous if previous is not None else {}
        # ``_default_route`` without its cluster and hash policy (never handed out).
        self._default_template: Any = None

    def relevance(self) -> Relevance:
        """What tells callers apart anywhere in the mesh's rules."""
        return relevance_of(dict.fromkeys(self._rules.values()))

    def route_configuration(
        self,
        name: str,
        vhosts: Sequence[VirtualHostSpec],
        caller: Caller = NO_CALLER,
        *,
        block_unknown: bool = False,
    ) -> Any:
        """The ``RouteConfiguration`` ``name`` with one virtual host per spec, in order,
        as ``caller`` sees it; with ``block_unknown`` (a Sidecar's REGISTRY_ONLY), a last
        virtual host ``block_all`` for any other host answers 502, as Istio's does.

        Raises TranslationError listing every rule that cannot be translated (a
        destination port or subset that does not exist, an ambiguous destination port).
        """
        config = route_pb2.RouteConfiguration(name=name)
        config.max_direct_response_body_size_bytes.value = MAX_DIRECT_RESPONSE_BODY
        problems: list[Problem] = []
        for spec in vhosts:
            vhost = config.virtual_hosts.add(name=spec.name)
            vhost.domains.extend(spec.domains)
            try:
                vhost.routes.extend(self.routes(spec.service, spec.port.number, caller))
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        if problems:
            raise TranslationError(problems)
        if block_unknown:
            block = config.virtual_hosts.add(name=BLOCK_ALL)
            block.domains.append("*")
            route = block.routes.add(name=BLOCK_ALL)
            route.match.prefix = "/"
            route.direct_response.status = BLOCKED_STATUS
        return config

    def routes(self, service: Service, port: int, caller: Caller = NO_CALLER) -> list[Any]:
        """The routes of ``service``'s virtual host for ``port`` as ``caller`` sees them
        (memoized per the part of ``caller`` the service's rule looks at, and reused from
        the previous builder when what they are made of is unchanged)."""
        return self.memo[self._routes_key(service, port, caller)][1]

    def _routes_key(self, service: Service, port: int, caller: Caller) -> RoutesKey:
        """The memo key of ``routes(service, port, caller)``, its routes built if they
        were not yet. Raises TranslationError as ``route_configuration`` does."""
        vs = self._rules.get(service.key)
        if vs is not None and caller is not NO_CALLER:
            caller = caller_of(caller.labels, caller.namespace or "", self._relevance_of(vs))
        else:
            caller = NO_CALLER
        key = (service.key, port, caller)
        found = self.memo.get(key)
        if found is None:
            inputs = self.inputs(service, port)
            old = self._previous.get(key)
            if old is not None and old[0] == inputs:
                found = old
            elif vs is None:
                found = (inputs, [self._default_route(service, port)])
            else:
                found = (
                    inputs,
                    self._rule_routes(vs, port, lambda m: applies_to_sidecar(m, caller)),
                )
            self.memo[key] = found
        return key

    def _encoded_routes(
        self, service: Service, port: int, caller: Caller
    ) -> tuple[bytes, tuple[tuple[str, str], ...]]:
        """``routes(service, port, caller)`` as ``VirtualHost.routes`` fields (each
        route's deterministic encoding) and the clusters they reference."""
        key = self._routes_key(service, port, caller)
        found = self.encoded.get(key)
        if found is None:
            entry = self.memo[key]
            found = self._previous_encoded.get(key)
            if found is None or found[0] is not entry:
                routes = entry[1]
                found = (
                    entry,
                    b"".join(
                        delimited(_VH_ROUTES, r.SerializeToString(deterministic=True))
                        for r in routes
                    ),
                    route_refs(routes),
                )
            self.encoded[key] = found
        return found[1], found[2]

    def route_configuration_resource(
        self,
        name: str,
        vhosts: Sequence[VirtualHostSpec],
        caller: Caller = NO_CALLER,
        *,
        block_unknown: bool = False,
    ) -> Resource:
        """``Resource.of(name, route_configuration(name, vhosts, caller,
        block_unknown=block_unknown))``, written as wire bytes from each route list's
        encoding (kept per routes, so a service's routes are encoded once for its port's
        configuration and the HTTP proxy's): ``name`` and ``virtual_hosts`` are fields 1
        and 2, written first, and the configuration's other fields follow as ``encode``
        writes them (tested equal to ``Resource.of``, references included). Raises
        TranslationError as ``route_configuration`` does."""
        parts = [delimited(_RC_NAME, name.encode())] if name else []
        refs: list[tuple[str, str]] = []
        problems: list[Problem] = []
        encoded_routes = self._encoded_routes
        for spec in vhosts:
            try:
                routes, routes_refs = encoded_routes(spec.service, spec.port.number, caller)
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
                continue
            vhost_name = spec.name
            head = delimited(_VH_NAME, vhost_name.encode()) if vhost_name else b""
            parts.append(delimited(_RC_VHOSTS, head + strings(_VH_DOMAINS, spec.domains) + routes))
            refs += routes_refs
        if problems:
            raise TranslationError(problems)
        if block_unknown:
            parts.append(_BLOCK_ALL_FIELD)
        parts.append(_RC_TAIL)
        return Resource.encoded(name, ROUTE, b"".join(parts), tuple(dict.fromkeys(refs)))

    def _relevance_of(self, vs: VirtualService) -> Relevance:
        found = self._relevance.get(vs.key)
        if found is None:
            found = relevance_of((vs,))
            self._relevance[vs.key] = found
        return found

    def inputs(self, service: Service, port: int) -> Hashable:
        """Everything the routes of ``service``'s virtual host for ``port`` are made of
        (besides the caller), as a value that compares equal exactly when they would be
        built the same (and is cheap to compare for a service without a
        VirtualService)."""
        vs = self._rules.get(service.key)
        if vs is None:
            return (service.fqdn, port, rule_hashes(self._mesh.destination_rule(service)))
        return (service.fqdn, port, vs, self.rule_inputs(vs))

    def rule_inputs(self, vs: VirtualService) -> tuple[Hashable, ...]:
        """What the routes of ``vs`` take from the rest of the mesh: for each destination
        and mirror of its http rules, the target service's names and ports, the subsets
        its DestinationRule defines and the rule's hash policy (None for an unknown
        host)."""
        targets: list[Hashable] = []
        for http in vs.http:
            for dest in (
                *(rd.destination for rd in http.route),
                *(m.destination for m in http.mirrors),
            ):
                target = self._mesh.service(dest.host, vs.namespace)
                if target is None:
                    targets.append(None)
                    continue
                rule = self._mesh.destination_rule(target)
                subsets = tuple(s.name for s in rule.subsets) if rule is not None else None
                targets.append((target.fqdn, target.routed_ports, subsets, rule_hashes(rule)))
        return tuple(targets)

    def gateway_routes(
        self, vs: VirtualService, port: int, applies: Callable[[HTTPMatch], bool]
    ) -> list[Any]:
        """The routes of ``vs``'s http rules as a gateway server on ``port`` serves them:
        the match blocks for which ``applies`` holds (and whose ``port``, if any, is
        ``port``). Not memoized: the caller keeps what it builds.

        Raises TranslationError as ``route_configuration`` does.
        """
        return self._rule_routes(vs, port, applies)

    def _default_route(self, service: Service, port: int) -> Any:
        """The one route of a service without a VirtualService: everything to its own
        cluster, Istio's default timeout and retries, the cluster's hash policy. Copied
        from a template made once per builder (the same message as setting each field:
        a message's encoding does not depend on the order its fields were set in)."""
        template = self._default_template
        if template is None:
            template = route_components_pb2.Route(name="default")
            template.match.prefix = "/"
            _finish_action(template.route, None, None)
            self._default_template = template
        route = route_components_pb2.Route()
        route.CopyFrom(template)
        route.route.cluster = outbound_cluster_name(port, "", service.fqdn)
        add_hash_policies(route.route, self._mesh)
        return route

    def _rule_routes(
        self, vs: VirtualService, port: int, applies: Callable[[HTTPMatch], bool]
    ) -> list[Any]:
        problems: list[Problem] = []
        out: list[Any] = []
        for index, http in enumerate(vs.http):
            blocks: list[HTTPMatch | None]
            if http.match:
                blocks = [m for m in http.match if (not m.port or m.port == port) and applies(m)]
                if not blocks:
                    continue
            else:
                blocks = [None]
            template = self._template(vs, index, http, port, problems)
            if self._style is MatcherStyle.DEPRECATED:
                problems.extend(_mosn_problems(vs, index, http))
            for block in blocks:
                route = route_components_pb2.Route()
                route.CopyFrom(template)
                route.name = _route_name(http, block)
                set_match(route.match, block, self._style)
                out.append(route)
        if problems:
            raise TranslationError(problems)
        return out

    def _template(
        self, vs: VirtualService, index: int, http: HTTPRoute, port: int, problems: list[Problem]
    ) -> Any:
        """The route of rule ``index`` without its name and match: one per rule, copied
        for each of its match blocks."""
        route = route_components_pb2.Route()
        authority = apply_headers(route, http.headers)
        if http.redirect is not None:
            route.redirect.CopyFrom(redirect_action(http.redirect, port))
        elif http.direct_response is not None:
            route.direct_response.CopyFrom(direct_response_action(http.direct_response))
        else:
            action = self._action(vs, index, http, port, problems, route, authority)
            if action is None:
                route.direct_response.status = NO_DESTINATION_STATUS
            else:
                route.route.CopyFrom(action)
        if http.fault is not None:
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(fault_config(http.fault))
        if http.cors_policy is not None:
            route.typed_per_filter_config[CORS_FILTER].CopyFrom(cors_config(http.cors_policy))
        return route

    def _action(
        self,
        vs: VirtualService,
        index: int,
        http: HTTPRoute,
        port: int,
        problems: list[Problem],
        route: Any,
        authority: str,
    ) -> Any | None:
        """The ``RouteAction`` of a rule that forwards (None when no destination names a
        known service); header changes of a lone destination go on ``route``."""
        weighted: dict[tuple[str, Headers | None], int] = {}
        for j, rd in enumerate(http.route):
            field = f"http[{index}].route[{j}].destination"
            name = self._cluster(vs, field, rd.destination, port, problems)
            if name is not None:
                weighted[(name, rd.headers)] = weighted.get((name, rd.headers), 0) + rd.weight
        if not weighted:
            return None
        action = route_components_pb2.RouteAction()
        if http.rewrite is not None:
            if http.rewrite.uri_regex is not None:
                action.regex_rewrite.pattern.regex = http.rewrite.uri_regex.match
                action.regex_rewrite.substitution = http.rewrite.uri_regex.rewrite
            elif http.rewrite.uri:
                action.prefix_rewrite = http.rewrite.uri
            authority = http.rewrite.authority or authority
        if authority:
            action.host_rewrite_literal = authority
        if any(weighted.values()):
            weighted = {key: w for key, w in weighted.items() if w > 0}
        else:
            weighted = dict.fromkeys(weighted, 1)
        if len(weighted) == 1:
            ((name, headers),) = weighted
            action.cluster = name
            lone = apply_headers(route, headers)
            if lone and not authority:
                action.host_rewrite_literal = lone
        else:
            for (name, headers), weight in weighted.items():
                cw = action.weighted_clusters.clusters.add(name=name)
                cw.weight.value = weight
                lone = apply_headers(cw, headers)
                if lone:
                    cw.host_rewrite_literal = lone
        for j, mirror in enumerate(http.mirrors):
            field = f"http[{index}].mirrors[{j}].destination"
            name = self._cluster(vs, field, mirror.destination, port, problems)
            if name is not None and mirror.percentage > 0:
                action.request_mirror_policies.append(mirror_policy(name, mirror.percentage))
        if any(name == UNRESOLVED_BACKEND_CLUSTER for name, _ in weighted):
            # The Gateway API's 500 for the share of a backend that does not resolve.
            action.cluster_not_found_response_code = (
                route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR
            )
        add_hash_policies(action, self._mesh)
        # Istio keeps retries on the hashed host when the rule has one destination and
        # it has a consistent hash (counted as written, before weights merge).
        hashed = len(http.route) == 1 and bool(action.cluster) and bool(action.hash_policy)
        _finish_action(action, http.timeout, http.retries, hashed=hashed)
        return action

    def _cluster(
        self,
        vs: VirtualService,
        field: str,
        dest: Destination,
        port: int,
        problems: list[Problem],
    ) -> str | None:
        """The cluster of a destination reached from a route served on ``port`` (None,
        with a problem when it cannot be translated, or for an unknown host;
        ``UNRESOLVED_BACKEND_CLUSTER``, which does not exist, for a Gateway API backend
        that does not resolve)."""
        if dest.host == UNRESOLVED_BACKEND_HOST:
            return UNRESOLVED_BACKEND_CLUSTER
        target = self._mesh.service(dest.host, vs.namespace)
        if target is None or not target.routed_ports:  # NONE TCP/TLS only: as unknown
            return None
        number = self._destination_port(vs, field, target, dest.port, port, problems)
        if number is None:
            return None
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
                return None
        return outbound_cluster_name(number, dest.subset, target.fqdn)

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
            if target.routed_port(wanted) is None:
                problems.append(
                    _problem(
                        vs,
                        f"{field}.port",
                        f"{target.fqdn} has no port {wanted}: use one of {_port_list(target)}",
                    )
                )
                return None
            return wanted
        if target.routed_port(listener_port) is not None:
            return listener_port
        if len(target.routed_ports) == 1:
            return target.routed_ports[0].number
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


def retry_policy(retries: Retries | None, *, hashed: bool = False) -> Any | None:
    """Istio's translation of HTTPRetry: None (no retries) for ``attempts: 0``; Istio's
    default policy (2 retries on connect-failure, refused-stream, unavailable, cancelled
    and retriable status codes) when the rule says nothing; otherwise the default with the
    rule's attempts, per-try timeout and ``retryOn`` (whose numbers become retriable
    status codes), with the previous-priorities retry priority (update frequency 2, as
    Istio) for ``retryRemoteLocalities: true`` and the base interval ``backoff``.

    The previous-hosts predicate (a retry avoids hosts already tried) is what
    ``retryIgnorePreviousHosts`` says when it is written; when it is not, it is there
    except for a ``hashed`` route (one destination with a consistent hash), whose retries
    stay on the hashed host, as Istio's ``ConvertPolicy`` does."""
    if retries is not None and retries.attempts <= 0:
        return None
    policy = route_components_pb2.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    policy.num_retries.value = DEFAULT_RETRIES
    explicit = retries.retry_ignore_previous_hosts if retries is not None else None
    if (not hashed) if explicit is None else explicit:
        predicate = policy.retry_host_predicate.add(name=PREVIOUS_HOSTS)
        predicate.typed_config.CopyFrom(pack(previous_hosts_pb2.PreviousHostsPredicate()))
    if retries is None:
        return policy
    if retries.retry_remote_localities:
        priority = policy.retry_priority
        priority.name = PREVIOUS_PRIORITIES
        config = previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2)
        priority.typed_config.CopyFrom(pack(config))
    if retries.backoff is not None:
        policy.retry_back_off.base_interval.CopyFrom(duration(retries.backoff))
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


def _finish_action(
    action: Any, timeout: timedelta | None, retries: Retries | None, *, hashed: bool = False
) -> None:
    # An explicit 0s disables Envoy's 15 s default, as Istio does.
    action.timeout.CopyFrom(duration(timeout or timedelta(0)))
    policy = retry_policy(retries, hashed=hashed)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def _route_name(http: HTTPRoute, block: HTTPMatch | None) -> str:
    if block is not None and block.name:
        return f"{http.name}.{block.name}" if http.name else block.name
    return http.name


def _mosn_problems(vs: VirtualService, index: int, http: HTTPRoute) -> list[Problem]:
    """What MOSN would apply wrongly in rule ``index`` of ``vs``: its route conversion
    ignores ``invert_match`` and query parameter matchers, so ``withoutHeaders`` and
    ``queryParams`` would match every request (see ``mosn``). Refused, not dropped."""
    out = []
    for j, block in enumerate(http.match):
        for name, present in (
            ("withoutHeaders", block.without_headers),
            ("queryParams", block.query_params),
        ):
            if present:
                out.append(
                    _problem(
                        vs,
                        f"http[{index}].match[{j}].{name}",
                        f"MOSN ignores {name} (its route conversion drops the condition): "
                        "this rule cannot be served to MOSN nodes",
                    )
                )
    return out


def _problem(vs: VirtualService, field: str, message: str) -> Problem:
    return Problem(vs.origin.path, vs.origin.line, field, message)


def _port_list(service: Service) -> str:
    return ", ".join(str(p.number) for p in service.routed_ports) or "(none)"


_RC_NAME = tag(route_pb2.RouteConfiguration, "name")[1]
_RC_VHOSTS = tag(route_pb2.RouteConfiguration, "virtual_hosts")[1]
_VH_NAME = tag(route_components_pb2.VirtualHost, "name")[1]
_VH_DOMAINS = tag(route_components_pb2.VirtualHost, "domains")[1]
_VH_ROUTES = tag(route_components_pb2.VirtualHost, "routes")[1]


def _block_all_field() -> bytes:
    """The ``virtual_hosts`` field of ``route_configuration``'s ``block_all`` host."""
    config = route_pb2.RouteConfiguration()
    block = config.virtual_hosts.add(name=BLOCK_ALL)
    block.domains.append("*")
    route = block.routes.add(name=BLOCK_ALL)
    route.match.prefix = "/"
    route.direct_response.status = BLOCKED_STATUS
    data: bytes = config.SerializeToString(deterministic=True)
    return data


def _tail() -> bytes:
    """The fields ``route_configuration`` sets besides name and virtual hosts."""
    config = route_pb2.RouteConfiguration()
    config.max_direct_response_body_size_bytes.value = MAX_DIRECT_RESPONSE_BODY
    data: bytes = config.SerializeToString(deterministic=True)
    return data


_BLOCK_ALL_FIELD = _block_all_field()
_RC_TAIL = _tail()
