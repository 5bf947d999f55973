"""``ClassParts``: the resources a class gets besides its base (stage *parts*).

How this works: what a class receives on top of its base depends on its kind — inbound
clusters and listeners of its own service (``inbound``), outbound HTTP listeners and their
route configurations (``outbound``), TCP/TLS listeners (``l4_listeners``), a gateway's
listeners and routes (``gateway``), a proxyless gRPC client's API listeners
(``grpc_listeners``), and the assignments its locality changes (``local_assignments``).
Each is a *selection*: a tuple of resources computed from hashable arguments (the address,
the config source, the matcher style, the ``Caller``, the ``Scope``...), memoized per
translation by those arguments (``memo.Selections``), so classes that rules cannot tell
apart share it. Each resource in it is built through the translation's ``memo.Memo``,
keyed by its build function and arguments and carried to the next translation.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from xdsd.errors import Problem, TranslationError
from xdsd.located import split_host_port
from xdsd.model import (
    DestinationRule,
    Endpoint,
    Locality,
    Mesh,
    Port,
    Protocol,
    Resolution,
    ResourceKey,
    Service,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.mesh_config import MeshConfig
from xdsd.model.networking import Gateway
from xdsd.resources import ROUTE, SECRET, Resource
from xdsd.translate import jwt_authn
from xdsd.translate.capture import (
    blackhole_cluster,
    capture_listener,
    capture_problems,
    passthrough_cluster,
    plan_virtual_listeners,
    virtual_listener,
)
from xdsd.translate.clusters import (
    build_inbound_cluster,
    outbound_cluster_name,
    outbound_clusters,
)
from xdsd.translate.dns import dns_listener as build_dns_listener
from xdsd.translate.dns import dns_table, upstream_loops
from xdsd.translate.endpoints import assignment_of_groups, locality_groups, select_endpoints
from xdsd.translate.gateways import (
    RoutePlan,
    bound_virtual_services,
    gateway_listener,
    gateway_match_applies,
    gateway_route_configuration,
    plan_gateway,
    selects,
    udp_weighted_cluster,
)
from xdsd.translate.l4 import (
    ANY_CALLER,
    L4Caller,
    L4ListenerPlan,
    caller_dependent,
    plan_l4_listener,
)
from xdsd.translate.listeners import (
    HTTP_PROXY_PORT,
    HTTP_PROXY_ROUTES,
    api_listener,
    http_proxy_listener,
    inbound_listener,
    outbound_http_listener,
    outbound_l4_listener,
    port_route_name,
)
from xdsd.translate.locality import CallerKey, LocalityPolicy, caller_key, locality_policy, localize
from xdsd.translate.memo import Memo, Selections
from xdsd.translate.mosn import l4_problems as mosn_l4_problems
from xdsd.translate.node import (
    NODE_PATH,
    ClientKind,
    ConfigSourceKind,
    NodeClass,
    Role,
    is_wildcard,
)
from xdsd.translate.peer_authentication import CalleeModes
from xdsd.translate.placement import PortGroup, ambiguous, check_binds, check_port_groups
from xdsd.translate.policy_index import PolicyIndex
from xdsd.translate.route_configs import RouteConfigs
from xdsd.translate.route_matches import NO_CALLER, Caller, MatcherStyle, caller_of, relevance_of
from xdsd.translate.routes import virtual_service_index
from xdsd.translate.scoping import Scoping
from xdsd.translate.secrets import Secrets
from xdsd.translate.sidecar_ports import (
    explicit_bind_problems,
    explicit_route_name,
    ingress_service,
)
from xdsd.translate.sidecar_scope import EVERYTHING, EVERYTHING_REGISTRY_ONLY, Scope
from xdsd.translate.vhds import split_route_configuration
from xdsd.translate.virtual_addresses import (
    AddressBlock,
    Allocated,
    VirtualAddresses,
    allocate_for,
)
from xdsd.translate.virtual_listeners import (
    VirtualPlan,
    bind_problems,
    dns_cluster,
    forward_cluster,
    is_forward,
    node_sockets,
    plan_virtual,
    virtual_http_listener,
    virtual_l4_listener,
    with_dns_clusters,
)
from xdsd.translate.workload_security import WorkloadPolicies

#: The VirtualServices bound to each Gateway of a route configuration's servers, each
#: with what its routes take from the rest of the mesh (``RouteBuilder.rule_inputs``).
BoundRules = tuple[tuple[ResourceKey, tuple[tuple[VirtualService, Hashable], ...]], ...]


class ClassParts:
    """The per-class selections of one mesh (see the module docstring). Not
    thread-safe."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        memo: Memo,
        selections: Selections,
        scoping: Scoping,
        routes: RouteConfigs,
        secrets: Secrets,
        mesh_config: MeshConfig,
    ) -> None:
        self.mesh = mesh
        self._memo = memo
        self._selections = selections
        self._scoping = scoping
        self._routes = routes
        self._secrets = secrets
        self._mesh_config = mesh_config
        self._mtls_mode = mesh_config.mtls.mode
        # Which endpoints callers reach in plaintext (PeerAuthentication DISABLE).
        self._callee = CalleeModes(mesh, mesh_config.mtls)
        # The security policies of each workload, by (namespace, labels).
        self._policies: dict[tuple[str, tuple[tuple[str, str], ...]], WorkloadPolicies] = {}
        self._policy_index: PolicyIndex | None = None
        # TCP/TLS listener plans by (port, caller, view), and whether any depends on the
        # caller.
        self._l4_plans: dict[tuple[int, L4Caller, Hashable], L4ListenerPlan] = {}
        self._l4_by_caller: bool | None = None
        self._vs_index: dict[ResourceKey, VirtualService] | None = None
        self._priority_names: frozenset[str] | None = None
        # Gateways: the VirtualServices bound to each, and routes per (rule, port,
        # gateway, caller, style).
        self._bound: dict[ResourceKey, tuple[VirtualService, ...]] | None = None
        self._gateway_routes: dict[tuple[Hashable, ...], list[Any]] = {}
        self._virtual: Allocated | None = None
        self._previous_virtual: Allocated | None = None
        # Virtual-address listeners: plans per (block, scope), TCP/TLS plans per (service
        # keys, port, caller), bind problems per what the node binds besides.
        self._vip_plans: dict[tuple[AddressBlock, Scope], VirtualPlan] = {}
        self._vip_l4_plans: dict[tuple[Hashable, ...], L4ListenerPlan] = {}
        self._vip_checks: dict[tuple[Hashable, ...], list[Problem]] = {}
        self._unambiguous_groups: dict[int, PortGroup] | None = None

    def virtual_addresses(self) -> VirtualAddresses:
        """Every service's virtual address slot (or pinned addresses), allocated once per
        translation from the block of ``[mesh.dns]`` (``virtual_addresses.allocate``).
        Raises TranslationError when the block is too small for the mesh."""
        if self._virtual is None:
            self._virtual = allocate_for(
                self.mesh.services, self._mesh_config.dns, self._previous_virtual
            )
        return self._virtual.result

    def take_over_addresses(self, previous: ClassParts) -> None:
        """Let ``virtual_addresses`` reuse ``previous``'s allocation (that of the
        translation this one replaces) when it was made from the same block and services
        (``virtual_addresses.Allocated``)."""
        self._previous_virtual = previous._virtual or previous._previous_virtual

    def node_block(self, text: str) -> AddressBlock:
        """The block ``text`` (a node's ``virtual_addresses``, or the settings') checked
        against the allocation: it must hold at least as many addresses as the settings'
        block, or slots would fall outside it. Raises TranslationError (one problem, the
        same for every part that asks, so it is reported once) otherwise."""
        virtual = self.virtual_addresses()
        settings = self._mesh_config.dns.virtual_addresses
        try:
            block = AddressBlock.parse(text)
        except ValueError as err:  # the node reader checks it: this is a guard
            problem = Problem(NODE_PATH, 0, "metadata.virtual_addresses", str(err))
            raise TranslationError([problem]) from None
        if block.size < virtual.size:
            problem = Problem(
                NODE_PATH,
                0,
                "metadata.virtual_addresses",
                f"the node's block {text} has {block.size} addresses, fewer than the "
                f"{virtual.size} of the settings' block {settings} "
                f"(mesh.dns.virtual_addresses) that addresses are allocated in: give the "
                f"node a block at least as large as {settings}",
            )
            raise TranslationError([problem])
        return block

    def serves_virtual(self, node: NodeClass) -> bool:
        """True when ``node`` gets virtual-address listeners: an Envoy sidecar whose
        metadata names a block, while ``[mesh.dns]`` is enabled. Such a class goes
        without the per-port listeners of ports several services cannot share
        (``placement.ambiguous``), which are errors for other classes."""
        return (
            node.role is Role.SIDECAR
            and node.client is ClientKind.ENVOY
            and self._mesh_config.dns.enabled
            and bool(node.virtual_addresses)
        )

    def virtual_listeners(
        self,
        node: NodeClass,
        scope: Scope,
        source: ConfigSourceKind,
        style: MatcherStyle,
        caller: Caller,
        vhds: bool = False,
    ) -> tuple[Resource, ...]:
        """An Envoy sidecar's listeners on ``VIP:PORT``, one per port of each service
        ``scope`` lets it see, its VIPs in the block ``node.virtual_addresses`` (see
        ``virtual_listeners``), with the route configurations and DNS clusters they
        name; with ``vhds``, the HTTP listeners run the on-demand filter and the route
        configurations are split as ``outbound`` splits them (the same resources). A
        selection keyed by the block, the outbound address, how the class fetches and
        matches, the caller, the scope and ``vhds``.

        Raises TranslationError when the node's block is smaller than the settings'
        (slots would fall outside it), for pairs that cannot share a listener, rules
        that cannot be translated, and VIP listeners that would collide with the node's
        other sockets (``virtual_listeners.bind_problems``)."""
        if not self.serves_virtual(node):
            return ()
        block = self.node_block(node.virtual_addresses)
        if self._l4_by_caller is None:
            self._l4_by_caller = caller_dependent(self.mesh)
        l4_caller = L4Caller(node.namespace, node.labels) if self._l4_by_caller else ANY_CALLER
        problems: list[Problem] = []
        out: tuple[Resource, ...] = ()
        try:
            out = self._selections.get(
                self._virtual_part,
                node.virtual_addresses,
                node.outbound_ip,
                source,
                style,
                caller,
                l4_caller,
                scope,
                vhds,
            )
        except TranslationError as err:
            problems.extend(err.problems)
        problems.extend(p for p in self._virtual_binds(node, scope, block) if p not in problems)
        if problems:
            raise TranslationError(problems)
        return out

    def _virtual_plan(self, block: AddressBlock, scope: Scope) -> VirtualPlan:
        """The VIP listeners of a block and scope (computed once per translation)."""
        key = (block, scope)
        found = self._vip_plans.get(key)
        if found is None:
            found = plan_virtual(self.mesh.services, scope, self.virtual_addresses(), block)
            self._vip_plans[key] = found
        return found

    def _virtual_part(
        self,
        block_text: str,
        ip: str,
        source: ConfigSourceKind,
        style: MatcherStyle,
        caller: Caller,
        l4_caller: L4Caller,
        scope: Scope,
        vhds: bool,
    ) -> list[Resource]:
        """The selection ``virtual_listeners`` memoizes."""
        plan = self._virtual_plan(AddressBlock.parse(block_text), scope)
        problems = list(plan.problems)
        memo = self._memo
        block = scope.registry_only
        routes: dict[tuple[ResourceKey, int], tuple[str, PortGroup, Hashable]] = {}
        for group, view in self._scoping.default_groups(scope, ip):
            for service, _ in group.http:
                routes[(service.key, group.number)] = (port_route_name(group.number), group, view)
        for bind, group, view in self._scoping.explicit_groups(scope):
            for service, _ in group.http:
                name = explicit_route_name(bind, group.number)
                routes.setdefault((service.key, group.number), (name, group, view))
        out: list[Resource] = []
        rest = source is ConfigSourceKind.REST
        for pair in plan.pairs:
            service, port = pair.members[0]
            if port.protocol.is_http:
                if is_forward(pair):  # the route configuration comes with ``outbound``
                    listener = memo.resource(
                        virtual_http_listener,
                        pair.vip,
                        pair.port,
                        HTTP_PROXY_ROUTES,
                        source,
                        True,
                        vhds,
                    )
                    out.append(listener)
                    continue
                found = routes.get((service.key, pair.port))
                if found is None:  # no listener of the scope serves the port
                    continue
                name, group, view = found
                try:
                    config = self._routes.port_routes(
                        group, style, caller, view=view, name=name, block_unknown=block
                    )
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
                    continue
                out.extend(self._split([config]) if vhds else (config,))
                out.append(
                    memo.resource(
                        virtual_http_listener, pair.vip, pair.port, name, source, False, vhds
                    )
                )
                continue
            tls = port.protocol is Protocol.TLS
            forwarded = [(s, p) for s, p in pair.members if tls and s.resolution is Resolution.NONE]
            forward = tuple(outbound_cluster_name(p.number, "", s.fqdn) for s, p in forwarded)
            for s, p in forwarded:
                rule = self.mesh.destination_rule(s)
                out.append(memo.resource(forward_cluster, s, p, rule, rest))
            direct = tuple(
                m for m in pair.members if not (tls and m[0].resolution is Resolution.NONE)
            )
            l4 = L4ListenerPlan(pair.port, ())
            if direct:
                try:
                    l4 = self._virtual_l4_plan(direct, pair.port, l4_caller)
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
                    continue
                l4, targets = with_dns_clusters(self.mesh, l4)
                for t in targets:
                    rule = self.mesh.destination_rule(t.service)
                    out.append(memo.resource(dns_cluster, t.service, t.port, t.subset, rule, rest))
            out.append(memo.resource(virtual_l4_listener, pair.vip, l4, tls, forward))
        if problems:
            raise TranslationError(problems)
        return out

    def _virtual_l4_plan(
        self, members: tuple[tuple[Service, Port], ...], number: int, caller: L4Caller
    ) -> L4ListenerPlan:
        """The TCP/TLS plan of the services on one VIP listener (``l4``, each TLS service
        with its own chain after its rules'), per translation."""
        key = (tuple(s.key for s, _ in members), number, caller)
        found = self._vip_l4_plans.get(key)
        if found is None:
            group = PortGroup(number, members)
            found = plan_l4_listener(self.mesh, self._rules(), group, caller, own_default=True)
            self._vip_l4_plans[key] = found
        return found

    def _virtual_binds(self, node: NodeClass, scope: Scope, block: AddressBlock) -> list[Problem]:
        """The collisions of ``node``'s VIP listeners with its other sockets (memoized by
        what they depend on)."""
        own, instance_ip = self._listening(node)
        own_ports = own.ports if own is not None else ()
        key = (block, scope, own_ports, instance_ip, node.outbound_ip)
        found = self._vip_checks.get(key)
        if found is None:
            per_port = [
                g.number
                for g, _ in self._scoping.default_groups(scope, node.outbound_ip)
                if not ambiguous(g)
            ]
            explicit = [(b, g.number) for b, g, _ in self._scoping.explicit_groups(scope)]
            sockets = node_sockets(own, instance_ip, node.outbound_ip, per_port, explicit)
            plan = self._virtual_plan(block, scope)
            found = bind_problems(plan.pairs, sockets, node.outbound_ip)
            self._vip_checks[key] = found
        return found

    def _listening(self, node: NodeClass) -> tuple[Service | None, str]:
        """The service whose ports ``node``'s inbound listeners serve (its Sidecar's
        ingress listeners, when it has some) and the address they bind."""
        scoping = self._scoping
        own = scoping.own_service(node)
        sidecar = scoping.sidecar(node)
        if sidecar is not None and sidecar.ingress:
            own = ingress_service(sidecar, own, node.service, node.namespace)
        return own, scoping.instance_ip(node)

    def dns_listener(self, node: NodeClass, scope: Scope) -> tuple[Resource, ...]:
        """An Envoy sidecar's UDP DNS listener ``dns|IP|PORT`` on ``node.dns`` (see
        ``translate/dns.py``): the names of the services ``scope`` lets it see, answered
        with their virtual addresses in the node's block (``node.virtual_addresses``,
        else the settings'), AAAA from ``[mesh.dns] virtual_addresses_v6``; every other
        name forwarded to ``node.dns_upstream``, else ``[mesh.dns] upstream``, else the
        proxy host's resolvers. Nothing when ``node.dns`` is empty. A selection keyed by
        the listener's address, the namespace (short names), what the scope shows, the
        block and the upstream resolvers; the listener itself is memoized by its table,
        so classes that see the same names share it. Raises TranslationError when the
        node's block is smaller than the allocation's, or an upstream resolver is the
        listener itself (a forwarding loop)."""
        found = split_host_port(node.dns)
        if found is None:
            return ()
        dns = self._mesh_config.dns
        upstream = node.dns_upstream or dns.upstream
        block = node.virtual_addresses or dns.virtual_addresses
        return self._selections.get(
            self._dns, found, node.namespace, scope.visible, block, upstream
        )

    def _dns(
        self,
        address: tuple[str, int],
        namespace: str,
        visible: frozenset[ResourceKey] | None,
        block_text: str,
        upstream: tuple[str, ...],
    ) -> list[Resource]:
        """The selection ``dns_listener`` memoizes."""
        ip, port = address
        dns = self._mesh_config.dns
        problems = upstream_loops(
            ip, port, upstream, from_node=bool(upstream) and upstream != dns.upstream
        )
        if problems:
            raise TranslationError(problems)
        virtual = self.virtual_addresses()
        block = self.node_block(block_text)
        block_v6 = (
            AddressBlock.parse(dns.virtual_addresses_v6) if dns.virtual_addresses_v6 else None
        )
        services = (
            self.mesh.services
            if visible is None
            else [s for s in self.mesh.services if s.key in visible]
        )
        if block_v6 is not None and block_v6.size < virtual.size:
            raise TranslationError(
                [
                    Problem(
                        "<settings>",
                        0,
                        "mesh.dns.virtual_addresses_v6",
                        f"{dns.virtual_addresses_v6} has {block_v6.size} addresses, fewer "
                        f"than the IPv4 block {dns.virtual_addresses} ({virtual.size})",
                    )
                ]
            )
        table = dns_table(services, namespace, virtual, block, block_v6)
        return [self._memo.resource(build_dns_listener, ip, port, table, upstream, dns.ttl)]

    def _rules(self) -> dict[ResourceKey, VirtualService]:
        """The mesh's VirtualService of each service (computed once)."""
        if self._vs_index is None:
            self._vs_index = virtual_service_index(self.mesh)
        return self._vs_index

    def policies(self, node: NodeClass) -> WorkloadPolicies:
        """The security policies that apply to ``node``'s workload (computed once per
        namespace and labels)."""
        key = (node.namespace, node.labels)
        found = self._policies.get(key)
        if found is None:
            if self._policy_index is None:
                self._policy_index = PolicyIndex(self.mesh)
            found = self._policy_index.select(node.namespace, node.labels, self._mesh_config)
            self._policies[key] = found
        return found

    # -- sidecars -------------------------------------------------------------------

    def inbound(
        self, node: NodeClass, scope: Scope, source: ConfigSourceKind = ConfigSourceKind.ADS
    ) -> list[Resource]:
        """Inbound clusters and listeners of ``node``'s own service (of its Sidecar's
        ingress listeners, when it has some), after checking that all of the node's
        listeners can bind. Under mesh mutual TLS the listeners take what its mode lets
        in (their secrets fetched the way ``source`` says)."""
        scoping = self._scoping
        own, instance_ip = self._listening(node)
        sidecar = scoping.sidecar(node)
        # A class with virtual addresses reaches the services of an ambiguous port on
        # their own addresses and goes without that port's per-port listener.
        vips = self.serves_virtual(node)
        if scope is EVERYTHING or scope is EVERYTHING_REGISTRY_ONLY:
            if vips:
                problems = check_binds(
                    own, instance_ip, node.outbound_ip, self._unambiguous(), HTTP_PROXY_PORT
                )
            else:
                problems = scoping.port_group_problems() + check_binds(
                    own, instance_ip, node.outbound_ip, scoping.groups_by_number(), HTTP_PROXY_PORT
                )
        else:
            groups = scoping.default_groups(scope, node.outbound_ip)
            if vips:
                groups = [(g, v) for g, v in groups if not ambiguous(g)]
            explicit = scoping.explicit_groups(scope)
            problems = check_port_groups([g for g, _ in groups] + [g for _, g, _ in explicit])
            problems += check_binds(
                own,
                instance_ip,
                node.outbound_ip,
                {g.number: g for g, _ in groups},
                HTTP_PROXY_PORT,
            )
            if sidecar is not None:
                problems += explicit_bind_problems(
                    sidecar,
                    [(b, g.number) for b, g, _ in explicit],
                    own,
                    instance_ip,
                    node.outbound_ip,
                )
        if problems:
            raise TranslationError(problems)
        out: list[Resource] = []
        mode = self._mtls_mode
        memo = self._memo
        policies = self.policies(node)
        for port in own.ports if own is not None else ():
            out.append(memo.resource(build_inbound_cluster, port))
            out.append(memo.resource(inbound_listener, instance_ip, port, mode, source, policies))
        if own is not None and any(p.protocol.is_http for p in own.ports):
            out.extend(jwt_authn.jwks_clusters(policies, memo))  # its listeners fetch through
        return out

    def _unambiguous(self) -> dict[int, PortGroup]:
        """The mesh's port groups that can have a per-port listener, by number."""
        if self._unambiguous_groups is None:
            self._unambiguous_groups = {
                n: g for n, g in self._scoping.groups_by_number().items() if not ambiguous(g)
            }
        return self._unambiguous_groups

    def outbound(
        self,
        ip: str,
        source: ConfigSourceKind,
        style: MatcherStyle,
        caller: Caller,
        scope: Scope = EVERYTHING,
        vips: bool = False,
        vhds: bool = False,
    ) -> tuple[Resource, ...]:
        """Outbound HTTP listeners on ``ip`` (and on the bind addresses of explicit
        egress listeners) and the route configurations they name, as ``caller`` sees them
        and as far as ``scope`` lets it see; with ``vips`` (a class with virtual-address
        listeners) without the per-port listeners of ambiguous ports; with ``vhds``, the
        listeners run the on-demand filter and the route configurations are split into
        their virtual hosts (``vhds.split_route_configuration``)."""
        return self._selections.get(self._outbound, ip, source, style, caller, scope, vips, vhds)

    def _outbound(
        self,
        ip: str,
        source: ConfigSourceKind,
        style: MatcherStyle,
        caller: Caller,
        scope: Scope,
        vips: bool,
        vhds: bool,
    ) -> list[Resource]:
        """The selection ``outbound`` memoizes."""
        out = self._outbound_whole(ip, source, style, caller, scope, vips, vhds)
        return self._split(out) if vhds else out

    def _split(self, resources: Iterable[Resource]) -> list[Resource]:
        """``resources`` with each route configuration as VHDS serves it
        (``vhds.split_route_configuration``, memoized: every part that names a route
        configuration gives the same resources for it)."""
        split: list[Resource] = []
        for r in resources:
            if r.type_url == ROUTE:
                split.extend(self._memo.get(split_route_configuration, r))
            else:
                split.append(r)
        return split

    def _outbound_whole(
        self,
        ip: str,
        source: ConfigSourceKind,
        style: MatcherStyle,
        caller: Caller,
        scope: Scope,
        vips: bool,
        on_demand: bool,
    ) -> list[Resource]:
        """The resources of ``_outbound``, route configurations whole."""
        block = scope.registry_only
        memo = self._memo
        out: list[Resource] = []
        problems: list[Problem] = []
        routes = self._routes
        for group, view in self._scoping.default_groups(scope, ip):
            if vips and ambiguous(group):
                continue
            if group.http:
                out.append(
                    memo.resource(outbound_http_listener, ip, group.number, source, "", on_demand)
                )
                try:
                    out.append(
                        routes.port_routes(group, style, caller, view=view, block_unknown=block)
                    )
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
        for bind, group, view in self._scoping.explicit_groups(scope):
            if not group.http:
                continue
            name = explicit_route_name(bind, group.number)
            address = bind or ip
            out.append(
                memo.resource(
                    outbound_http_listener, address, group.number, source, name, on_demand
                )
            )
            try:
                out.append(
                    routes.port_routes(
                        group, style, caller, view=view, name=name, block_unknown=block
                    )
                )
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        forward = self._scoping.forwards()
        out.append(memo.resource(http_proxy_listener, ip, source, forward, on_demand))
        visible = self._scoping.visible_groups(scope)
        try:
            out.append(
                routes.proxy_routes(
                    [g for g, _ in visible], style, caller, view=scope.visible, block_unknown=block
                )
            )
        except TranslationError as err:
            problems.extend(p for p in err.problems if p not in problems)
        if problems:
            raise TranslationError(problems)
        return out

    def l4_listeners(self, node: NodeClass, scope: Scope = EVERYTHING) -> tuple[Resource, ...]:
        """The outbound listeners of the TCP/TLS ports on ``node.outbound_ip``. They depend
        on the node's namespace and labels only when some tcp/tls match looks at them, so
        the selection is keyed by those only then (see ``l4``). A MOSN node is refused a
        listener it would apply only in part (see ``mosn.l4_problems``). A class with
        virtual-address listeners goes without those of ambiguous ports."""
        if self._l4_by_caller is None:
            self._l4_by_caller = caller_dependent(self.mesh)
        caller = L4Caller(node.namespace, node.labels) if self._l4_by_caller else ANY_CALLER
        mosn = node.client is ClientKind.MOSN
        vips = self.serves_virtual(node)
        return self._selections.get(self._l4, node.outbound_ip, caller, mosn, scope, vips)

    def _l4(
        self, ip: str, caller: L4Caller, mosn: bool, scope: Scope, vips: bool
    ) -> list[Resource]:
        """The selection ``l4_listeners`` memoizes."""
        out: list[Resource] = []
        problems: list[Problem] = []
        default = self._scoping.default_groups(scope, ip)
        wanted = [(ip, g, v) for g, v in default if not (vips and ambiguous(g))]
        wanted += [(b or ip, g, v) for b, g, v in self._scoping.explicit_groups(scope)]
        for address, group, view in wanted:
            if group.http or not group.tcp:
                continue
            plan = self._l4_plans.get((group.number, caller, view))
            if plan is None:
                try:
                    plan = plan_l4_listener(self.mesh, self._rules(), group, caller)
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
                    continue
                self._l4_plans[(group.number, caller, view)] = plan
            if mosn:
                problems.extend(mosn_l4_problems(plan, group, self._rules()))
            out.append(self._memo.resource(outbound_l4_listener, address, plan))
        if problems:
            raise TranslationError(problems)
        return out

    def capture(
        self,
        node: NodeClass,
        scope: Scope,
        source: ConfigSourceKind = ConfigSourceKind.ADS,
        style: MatcherStyle = MatcherStyle.STRING_MATCH,
        caller: Caller = NO_CALLER,
        vhds: bool = False,
    ) -> tuple[Resource, ...]:
        """An Envoy sidecar's capture listener on ``node.outbound_ip:node.capture``, the
        virtual listeners of the services its default per-port listeners serve (as far
        as ``scope`` lets it see) with the per-port route configurations they name (as
        ``caller`` sees them, in ``style``), and the passthrough or black hole clusters
        (see ``capture``); with ``vhds``, the HTTP chains run the on-demand filter and
        the route configurations are split as ``outbound`` splits them. Memoized by
        (addresses, port, callers, scope, config source, style, vhds). Raises
        TranslationError when the capture port collides with another listener."""
        if self._l4_by_caller is None:
            self._l4_by_caller = caller_dependent(self.mesh)
        l4_caller = L4Caller(node.namespace, node.labels) if self._l4_by_caller else ANY_CALLER
        own = self._scoping.own_service(node)
        vips = self.serves_virtual(node)
        default = self._scoping.default_groups(scope, node.outbound_ip)
        problems = capture_problems(
            node.capture,
            node.outbound_ip,
            self._scoping.instance_ip(node),
            [g.number for g, _ in default if not (vips and ambiguous(g))],
            [p.number for p in own.ports] if own is not None else [],
            HTTP_PROXY_PORT,
        )
        if problems:
            raise TranslationError(problems)
        return self._selections.get(
            self._capture,
            node.outbound_ip,
            node.capture,
            l4_caller,
            scope,
            source,
            style,
            caller,
            vhds,
        )

    def _capture(
        self,
        ip: str,
        port: int,
        l4_caller: L4Caller,
        scope: Scope,
        source: ConfigSourceKind,
        style: MatcherStyle,
        caller: Caller,
        vhds: bool,
    ) -> list[Resource]:
        """The selection ``capture`` memoizes."""
        memo = self._memo
        block = scope.registry_only
        out = [memo.resource(capture_listener, ip, port, block), memo.resource(blackhole_cluster)]
        if not block:
            out.append(memo.resource(passthrough_cluster))
        if is_wildcard(ip):
            return out  # the per-port listeners on 0.0.0.0 take the connections
        default = self._scoping.default_groups(scope, ip)
        problems: list[Problem] = []
        for group, view in default:
            if group.http:  # the same object ``outbound`` (or the VIP part) gives
                try:
                    out.append(
                        self._routes.port_routes(
                            group, style, caller, view=view, block_unknown=block
                        )
                    )
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
        if problems:
            raise TranslationError(problems)
        groups = [g for g, _ in default]
        plans = plan_virtual_listeners(self.mesh, self._rules(), groups, l4_caller, block)
        out.extend(memo.resource(virtual_listener, plan, source, vhds) for plan in plans)
        return self._split(out) if vhds else out

    # -- gateways -------------------------------------------------------------------

    def gateway(
        self, node: NodeClass, source: ConfigSourceKind, style: MatcherStyle
    ) -> tuple[Resource, ...]:
        """The listeners and route configurations of a gateway node (see ``gateways``),
        enforcing the security policies that select the node (``policies``); nothing
        when no Gateway selects it."""
        selected = tuple(g for g in self.mesh.gateways if selects(g, node.labels))
        if not selected:
            return ()
        bound = self._bound_rules()
        rules = {vs.key: vs for g in selected for vs in bound.get(g.key, ())}
        caller = caller_of(node.labels, node.namespace, relevance_of(rules.values()))
        address = self._scoping.instance_ip(node)
        policies = self.policies(node)
        return self._selections.get(
            self._gateway, selected, address, source, style, caller, policies
        )

    def _bound_rules(self) -> dict[ResourceKey, tuple[VirtualService, ...]]:
        """The VirtualServices bound to each Gateway (computed once)."""
        if self._bound is None:
            self._bound = bound_virtual_services(self.mesh)
        return self._bound

    def _gateway(
        self,
        selected: tuple[Gateway, ...],
        address: str,
        source: ConfigSourceKind,
        style: MatcherStyle,
        caller: Caller,
        policies: WorkloadPolicies,
    ) -> list[Resource]:
        """The selection ``gateway`` memoizes (``policies``: those that select the
        gateway node, enforced on its listeners)."""
        bound = self._bound_rules()
        builder = self._routes.builder(style)
        plan = plan_gateway(self.mesh, selected, bound, address)
        memo = self._memo
        out = [
            memo.resource(gateway_listener, listener, source, policies)
            for listener in plan.listeners
        ]
        for listener in plan.listeners:
            if listener.udp and len(listener.datagrams) > 1:  # several weighted backends
                found = [self.mesh.service(h, "") for h, _, _ in listener.datagrams]
                known = tuple(s for s in found if s is not None)
                if len(known) == len(found):  # the conversion resolved each: always
                    out.append(memo.resource(udp_weighted_cluster, listener, known))
        out.extend(jwt_authn.jwks_clusters(policies, memo))
        secrets = {n for r in out for t, n in r.references if t == SECRET}
        out.extend(s for s in map(self._secrets.get, sorted(secrets)) if s is not None)
        problems: list[Problem] = []
        for route in plan.routes:
            used: BoundRules = tuple(
                (gw, tuple((vs, builder.rule_inputs(vs)) for vs in bound.get(gw, ())))
                for gw, _ in route.servers
            )
            try:
                out.append(memo.resource(_gateway_routes, route, used, caller, style, context=self))
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        if problems:
            raise TranslationError(problems)
        return out

    def gateway_routes(
        self,
        vs: VirtualService,
        port: int,
        gateway: ResourceKey,
        caller: Caller,
        style: MatcherStyle,
    ) -> list[Any]:
        """The routes of ``vs`` on ``port`` of ``gateway`` as ``caller`` sees them, in
        ``style`` (memoized per translation)."""
        key = (vs.key, port, gateway, caller, style)
        found = self._gateway_routes.get(key)
        if found is None:
            found = self._routes.builder(style).gateway_routes(
                vs, port, lambda m: gateway_match_applies(m, gateway, vs.namespace, caller)
            )
            self._gateway_routes[key] = found
        return found

    # -- locality and proxyless gRPC --------------------------------------------------

    def local_assignments(self, node: NodeClass, scope: Scope = EVERYTHING) -> tuple[Resource, ...]:
        """The ClusterLoadAssignments that ``node``'s locality changes (see
        ``locality.py``): they replace the shared ones in its snapshot. Memoized per
        (locality, labels failoverPriority names, services), and each assignment per
        what it is made of, so classes in one locality share them."""
        names = self._priority_label_names()
        labels = tuple((k, v) for k, v in node.labels if k in names)
        return self._selections.get(self._local, node.locality, labels, scope.clusters)

    def _local(
        self,
        locality: Locality,
        labels: tuple[tuple[str, str], ...],
        clusters: frozenset[ResourceKey] | None,
    ) -> list[Resource]:
        """The selection ``local_assignments`` memoizes."""
        out: list[Resource] = []
        for service in self.mesh.services:
            if service.resolution is not Resolution.STATIC:
                continue
            if clusters is not None and service.key not in clusters:
                continue
            rule = self.mesh.destination_rule(service)
            if rule is None or not _may_localize(rule):
                continue
            for spec in outbound_clusters(service, rule):
                policy = locality_policy(spec.policy)
                if policy is None:
                    continue
                endpoints = select_endpoints(spec.service, spec.port, spec.selector)
                caller = caller_key(policy, locality, labels)
                plaintext = self._callee.plaintext(spec.service, spec.port, endpoints)
                out.append(
                    self._memo.resource(
                        _local_assignment,
                        spec.name,
                        spec.port,
                        endpoints,
                        policy,
                        caller,
                        plaintext,
                    )
                )
        return out

    def _priority_label_names(self) -> frozenset[str]:
        """Every label name a failoverPriority of the mesh names."""
        if self._priority_names is None:
            names: set[str] = set()
            for rule in self.mesh.destination_rules:
                for policy in _policies(rule):
                    lb = policy.load_balancer
                    if lb is not None and lb.locality is not None:
                        names.update(p.split("=", 1)[0] for p in lb.locality.failover_priority)
            self._priority_names = frozenset(names)
        return self._priority_names

    def grpc_listeners(self, caller: Caller, scope: Scope = EVERYTHING) -> tuple[Resource, ...]:
        """API listeners for every name of every HTTP service port ``scope`` shows, and
        their routes as ``caller`` sees them."""
        return self._selections.get(self._grpc, caller, scope)

    def _grpc(self, caller: Caller, scope: Scope) -> list[Resource]:
        """The selection ``grpc_listeners`` memoizes."""
        style = MatcherStyle.STRING_MATCH
        out: list[Resource] = []
        bare_seen: set[str] = set()
        for group, view in self._scoping.visible_groups(scope):
            if not group.http:
                continue
            out.append(self._routes.port_routes(group, style, caller, view=view))
            route_name = port_route_name(group.number)
            suffix = f":{group.number}"
            for spec in self._routes.vhosts_for_port(group, view):
                names = [d for d in spec.domains if d.endswith(suffix)]
                if len(spec.service.routed_ports) == 1:
                    bare = [d for d in spec.domains if ":" not in d and d not in bare_seen]
                    bare_seen.update(bare)
                    names.extend(bare)
                for name in names:
                    out.append(self._memo.resource(api_listener, name, route_name))
        return out


def _gateway_routes(
    parts: ClassParts, route: RoutePlan, used: BoundRules, caller: Caller, style: MatcherStyle
) -> Any:
    """The RouteConfiguration of ``route`` (a memo build: ``used`` names every rule it
    reads and what that rule takes from the mesh; ``parts`` only builds their routes)."""
    bound = {gw: tuple(vs for vs, _ in rules) for gw, rules in used}
    return gateway_route_configuration(
        route, bound, lambda vs, port, gw: parts.gateway_routes(vs, port, gw, caller, style)
    )


def _local_assignment(
    name: str,
    port: Port,
    endpoints: Any,
    policy: LocalityPolicy,
    caller: CallerKey,
    plaintext: frozenset[Endpoint] = frozenset(),
) -> Any:
    """The ClusterLoadAssignment ``name`` of ``endpoints`` as ``caller`` sees them under
    ``policy``, those in ``plaintext`` marked for plaintext (a memo build)."""
    return assignment_of_groups(
        name, port, localize(locality_groups(port, endpoints), policy, caller), plaintext
    )


def _policies(rule: DestinationRule) -> Iterable[TrafficPolicy]:
    """Every traffic policy written in ``rule`` (top level and subsets, with their
    port-level settings as policies)."""
    for policy in (rule.traffic_policy, *(s.traffic_policy for s in rule.subsets)):
        if policy is None:
            continue
        yield policy
        for port in policy.port_level_settings:
            yield TrafficPolicy(
                port.load_balancer, port.connection_pool, port.outlier_detection, port.tls
            )


def _may_localize(rule: DestinationRule) -> bool:
    """True when some cluster of ``rule`` may look different from some locality."""
    return any(
        p.outlier_detection is not None
        or (
            p.load_balancer is not None
            and p.load_balancer.locality is not None
            and bool(p.load_balancer.locality.distribute)
        )
        for p in _policies(rule)
    )
