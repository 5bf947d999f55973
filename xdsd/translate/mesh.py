"""``MeshTranslation``: one mesh's Envoy resources, built once, selected per node class.

How this works: a ``MeshTranslation`` is made for each loaded ``Mesh`` and answers
``snapshot_for(node_class)``. Everything a class receives is built on first use and
memoized in the translation, keyed by what it is made of (the cluster flavor, the bind
addresses, the matcher style...), so two classes that need the same cluster, route
configuration or listener get the very same ``Resource`` object, encoded once. Clusters,
endpoint assignments and listeners are keyed by value (the service, port and endpoints
they are built from), which lets a translation of the next mesh reuse them through
``previous=``: an edit re-encodes only what it touched. What is built from one service
alone (its clusters and assignments, ``shared.SharedClusters``) is taken over by identity
of the service's objects, and route configurations, which depend on many services at
once, by comparing what they are made of (``route_configs.RouteConfigs``). A class's
snapshot is the previous translation's snapshot of that class with the same changes
applied, when there is one (``Snapshot.extend``).

What a class receives:

- every class: a cluster per service port and per DestinationRule subset (in its
  ``ClusterFlavor``), the ClusterLoadAssignment of each EDS cluster, and the raw Envoy
  resources of the mesh — a raw resource replaces a generated one of the same type and
  name (so ``envoy/`` can override any generated resource);
- an Envoy or MOSN sidecar: inbound clusters and listeners for its own service (when the
  mesh defines it), one outbound listener per service port on ``outbound_ip`` (HTTP:
  routes by RDS from the route configuration named like the port; TCP/TLS: filter chains
  from the tcp/tls rules, each a TCP proxy, see ``l4``; keyed by the node's namespace
  and labels only when some tcp/tls match looks at them),
  and the HTTP proxy listener on ``outbound_ip:15001`` with route configuration
  ``http_proxy``; route configurations are chosen per matcher style (MOSN's own) and per
  ``Caller`` (the node's labels and namespace as far as ``sourceLabels`` and
  ``sourceNamespace`` look at them: usually none, so all classes share them);
- a proxyless gRPC client: an ``api_listener`` named ``host:port`` for each name of each
  HTTP service port (and the bare name for a service with a single port), each fetching
  the per-port route configuration the sidecars use; no socket listeners;
- a gateway (Envoy or MOSN): every cluster and assignment, and the listeners and route
  configurations of the Gateways whose selector its labels match (see ``gateways``), on
  its ``instance_ip`` (``0.0.0.0`` when unset and its service does not say, as Istio
  binds) unless a server has a ``bind``; memoized per (selected Gateways, address,
  config source, matcher style, caller), each listener and route configuration by what
  it is made of.

Then the EnvoyFilters that select the class (``patches``: those of the root namespace and
of the node's namespace whose selector matches its labels; not for proxyless gRPC, as in
Istio) patch what was generated, before the raw resources are laid over it. A patched
resource is memoized by (resource, the patches that may touch it in its context), so
classes with the same applicable filters share it; a class no EnvoyFilter selects gets the
shared resources untouched. The base's clusters are patched once per (flavor, cluster
patches) and the class's snapshot replaces or drops them like a raw resource would.

A Sidecar (``sidecar_scope``) narrows what a sidecar-role class receives to the services
it may reach: clusters and assignments of a *scoped base* (one per flavor and set of
services), default listeners and route configurations over those services only,
explicit egress listeners, and inbound listeners from its ingress. Everything it narrows
is memoized by the ``Scope`` value (or by the services a port holds), so classes that
see the same services share it.

API version v2 is not translated here: every resource is v3.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, TranslationError
from xdsd.model import (
    ClientTLS,
    DestinationRule,
    Location,
    Mesh,
    Origin,
    Port,
    Resolution,
    ResourceKey,
    Service,
    TLSMode,
    TrafficPolicy,
    VirtualService,
)
from xdsd.model.mesh_config import (
    DEFAULT_MESH_CONFIG,
    ISTIO_MUTUAL_WITHOUT_MESH_TLS,
    MeshConfig,
)
from xdsd.model.networking import (
    ROOT_NAMESPACE,
    ApplyTo,
    EnvoyFilter,
    OutboundPolicy,
    PatchContext,
    PatchOperation,
    Sidecar,
)
from xdsd.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    SHORT_NAMES,
    Resource,
    TypeUrl,
)
from xdsd.translate.cluster_policy import uses_sds
from xdsd.translate.clusters import (
    ClusterFlavor,
    OutboundCluster,
    build_inbound_cluster,
    build_outbound_cluster,
    cluster_flavor,
    is_eds,
    outbound_clusters,
)
from xdsd.translate.endpoints import (
    assignment_of_groups,
    assignment_resource,
    locality_groups,
    select_endpoints,
)
from xdsd.translate.gateways import (
    bound_virtual_services,
    gateway_listener,
    gateway_match_applies,
    gateway_route_configuration,
    plan_gateway,
    selects,
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
    api_listener,
    http_proxy_listener,
    inbound_listener,
    outbound_http_listener,
    outbound_l4_listener,
    port_route_name,
)
from xdsd.translate.locality import LocalityPolicy, caller_key, locality_policy, localize
from xdsd.translate.mosn import l4_problems as mosn_l4_problems
from xdsd.translate.node import (
    NO_LOCALITY,
    ClientKind,
    ConfigSourceKind,
    NodeClass,
    Role,
    is_wildcard,
)
from xdsd.translate.patches import (
    CLUSTER_FAMILY,
    LISTENER_FAMILY,
    ROUTE_FAMILY,
    Patch,
    added,
    could_patch_cluster,
    listener_context,
    name_context,
    parse_patches,
    patch_cluster,
    patch_listener,
    patch_route_configuration,
    proxy_matches,
    relevant,
    selected_filters,
)
from xdsd.translate.placement import (
    PortGroup,
    check_binds,
    check_port_groups,
    default_instance_ip,
    overlaps,
)
from xdsd.translate.proxy_defaults import (
    decorated_listener,
    stats_listener,
    stats_listener_name,
    tracing_cluster,
)
from xdsd.translate.raw import dangling_references, raw_resource
from xdsd.translate.route_configs import RouteConfigs
from xdsd.translate.route_matches import Caller, MatcherStyle, caller_of, relevance_of
from xdsd.translate.routes import virtual_service_index
from xdsd.translate.secrets import Secrets
from xdsd.translate.shared import SharedClusters
from xdsd.translate.sidecar_ports import (
    explicit_bind_problems,
    explicit_route_name,
    ingress_service,
)
from xdsd.translate.sidecar_scope import (
    EVERYTHING,
    EVERYTHING_REGISTRY_ONLY,
    Scope,
    scope_of,
    select_sidecar,
)

Key = tuple[Hashable, ...]
#: A resource after patching (None: removed) and the patches that changed it.
Patched = tuple[Resource | None, tuple[Patch, ...]]
#: (type URL, name) of a resource in a snapshot.
Slot = tuple[str, str]
#: Port groups as a scope leaves them, each with its view (None: the whole group).
Groups = list[tuple[PortGroup, Hashable]]


class MeshTranslation:
    """The Envoy resources of one mesh, per node class.

    Not thread-safe (use from one thread or event loop). Treat every returned message as
    read-only: they are shared between classes and snapshots.
    """

    #: The mesh-wide proxy defaults (access log, stats listener, tracing, outbound
    #: policy, mutual TLS) every class gets; see ``proxy_defaults``.
    mesh_config: MeshConfig

    def __init__(
        self,
        mesh: Mesh,
        *,
        previous: MeshTranslation | None = None,
        root_namespace: str = ROOT_NAMESPACE,
        mesh_config: MeshConfig = DEFAULT_MESH_CONFIG,
    ) -> None:
        if previous is not None and previous.mesh_config.mtls != mesh_config.mtls:
            # Mesh mutual TLS changes every cluster of the mesh's own services, which
            # are otherwise taken over by the identity of their service's objects.
            previous = None
        self.mesh = mesh
        self.mesh_config = mesh_config
        #: Istio's rootNamespace: its EnvoyFilters apply to every node, and its Sidecar
        #: without selector to namespaces that have none.
        self.root_namespace = root_namespace
        # EnvoyFilter patches: parsed per filter, and patched resources by (resource,
        # patches) (reusable by the next mesh), base cluster patches by (flavor, patches).
        self._filter_patches: dict[EnvoyFilter, tuple[Patch, ...] | TranslationError] = {}
        self._patched: dict[Key, Patched] = {}
        self._patched_fallback: dict[Key, Patched] = (
            previous._patched if previous is not None else {}
        )
        self._base_patches: dict[Key, dict[Slot, Patched]] = {}
        self._sidecars: dict[tuple[str, tuple[tuple[str, str], ...]], Sidecar | None] = {}
        self._scopes: dict[tuple[ResourceKey, str], Scope | TranslationError] = {}
        self._scoped_groups: dict[Key, Groups] = {}
        self._vs_index: dict[ResourceKey, Any] | None = None
        # Resources keyed by everything they are made of (reusable by the next mesh).
        self._memo: dict[Key, Resource] = {}
        # Only what ``previous`` built itself (or reused), never its own fallback: no
        # chain of old translations is kept alive.
        self._fallback: dict[Key, Resource] = previous._memo if previous is not None else {}
        # Resources and selections that depend on the whole mesh (this translation only);
        # a selection that failed keeps its error.
        self._selections: dict[Key, tuple[Resource, ...] | TranslationError] = {}
        self._snapshots: dict[NodeClass, Snapshot] = {}
        self._groups: list[PortGroup] | None = None
        self._group_index: dict[int, PortGroup] | None = None
        self._group_problems: list[Problem] | None = None
        self._raw: dict[tuple[str, str], Resource] | TranslationError | None = None
        # TCP/TLS listener plans by (port, caller), and whether any depends on the caller.
        self._l4_plans: dict[tuple[int, L4Caller, Hashable], L4ListenerPlan] = {}
        self._l4_by_caller: bool | None = None
        self._raw_origins: dict[tuple[str, str], Origin] = {}
        self._priority_names: frozenset[str] | None = None
        # Gateways: the VirtualServices bound to each, and routes per (rule, port,
        # gateway, caller, style).
        self._bound: dict[ResourceKey, tuple[VirtualService, ...]] | None = None
        self._gateway_routes: dict[Key, list[Any]] = {}
        self._forward: bool | None = None
        # SDS secrets of the mesh's certificate files, by name (built again by every
        # translation: they are cheap, and a file may change while no rule does).
        self._secrets = Secrets(mesh)
        #: Seconds spent so far: building resources (``translate``) and assembling and
        #: checking snapshots (``snapshot``), for logs and benchmarks.
        self.timings: dict[str, float] = {"translate": 0.0, "snapshot": 0.0}
        # Handed to the next translation (see ``reuse``, ``shared``): only what this one
        # used.
        self._bases: SharedClusters = SharedClusters(
            mesh, previous=previous._bases if previous is not None else None, timings=self.timings
        )
        self._routes: RouteConfigs = RouteConfigs(
            mesh, previous=previous._routes if previous is not None else None
        )
        # Per class: what it chose besides the base, and whether that replaces any of it.
        self._chosen: dict[NodeClass, Chosen] = {}
        self._prev_chosen = previous._chosen if previous is not None else {}
        self._prev_snapshots = previous._snapshots if previous is not None else {}

    # -- public ---------------------------------------------------------------------

    def snapshot_for(self, node: NodeClass) -> Snapshot:
        """The consistent snapshot for ``node`` (memoized per class).

        Raises TranslationError when the node's listeners would collide (see
        ``placement.check_binds``), when a rule cannot be translated, or when a raw
        Envoy resource cannot be used or references something the snapshot lacks; every
        problem names the file to change.
        """
        found = self._snapshots.get(node)
        if found is None:
            started = time.perf_counter()
            snapshot_before = self.timings["snapshot"]
            try:
                found = self._build_snapshot(node)
            finally:
                spent = time.perf_counter() - started
                self.timings["translate"] += spent - (self.timings["snapshot"] - snapshot_before)
            self._snapshots[node] = found
        return found

    def instance_ip(self, node: NodeClass) -> str:
        """The address ``node``'s inbound listeners bind: ``node.instance_ip`` when set,
        else the address of the one endpoint of its service that matches its labels
        (when there is exactly one and it is an IP literal), else ``0.0.0.0``."""
        if node.instance_ip:
            return node.instance_ip
        return default_instance_ip(self.own_service(node), node.labels)

    def own_service(self, node: NodeClass) -> Service | None:
        """The service ``node`` fronts, if the mesh defines it."""
        return self.mesh.service_by_name(node.namespace, node.service)

    def port_groups(self) -> list[PortGroup]:
        """Every port number used by a service, ascending, with the service ports on it."""
        if self._groups is None:
            by_number: dict[int, list[tuple[Service, Port]]] = {}
            for service in self.mesh.services:
                for port in service.ports:
                    by_number.setdefault(port.number, []).append((service, port))
            self._groups = [PortGroup(n, tuple(by_number[n])) for n in sorted(by_number)]
        return self._groups

    def _forwards(self) -> bool:
        """True when the mesh has an HTTP service of resolution NONE (then the HTTP proxy
        listener runs the dynamic forward proxy filter)."""
        if self._forward is None:
            self._forward = any(
                svc.resolution is Resolution.NONE for g in self.port_groups() for svc, _ in g.http
            )
        return self._forward

    def sidecar(self, node: NodeClass) -> Sidecar | None:
        """The Sidecar that applies to ``node`` (None for gateways, which Sidecars do not
        apply to, and when none does; see ``sidecar_scope.select_sidecar``)."""
        if node.role is not Role.SIDECAR or not self.mesh.sidecars:
            return None
        key = (node.namespace, node.labels)
        if key not in self._sidecars:
            self._sidecars[key] = select_sidecar(
                self.mesh.sidecars, node.namespace, node.labels, self.root_namespace
            )
        return self._sidecars[key]

    def scope(self, node: NodeClass) -> Scope:
        """What ``node`` may reach (``EVERYTHING`` when no Sidecar applies, registry-only
        for a sidecar under the mesh's REGISTRY_ONLY default). Raises
        TranslationError when its Sidecar cannot be translated."""
        sidecar = self.sidecar(node)
        default_policy = self.mesh_config.outbound_traffic_policy
        if sidecar is None:
            if node.role is Role.SIDECAR and default_policy is OutboundPolicy.REGISTRY_ONLY:
                return EVERYTHING_REGISTRY_ONLY
            return EVERYTHING
        key = (sidecar.key, node.namespace)
        found = self._scopes.get(key)
        if found is None:
            if self._vs_index is None:
                self._vs_index = virtual_service_index(self.mesh)
            scope, problems = scope_of(
                self.mesh, sidecar, node.namespace, self._vs_index, default_policy
            )
            found = TranslationError(problems) if problems else scope
            self._scopes[key] = found
        if isinstance(found, TranslationError):
            raise TranslationError(found.problems)
        return found

    def _default_groups(self, scope: Scope, ip: str) -> Groups:
        """The port groups of ``scope``'s default per-port listeners on ``ip``: the
        reachable services, without those an explicit listener serves on that port, and
        without the ports whose explicit listener takes the default listener's address."""
        if scope.reachable is None and not scope.explicit:
            return [(g, None) for g in self.port_groups()]
        key: Key = ("default", scope, ip if any(e.bind for e in scope.explicit) else "")
        found = self._scoped_groups.get(key)
        if found is None:
            taken: dict[int, set[ResourceKey]] = {}
            dropped: set[int] = set()
            for e in scope.explicit:
                if e.services and overlaps(e.bind or ip, ip):
                    dropped.add(e.port)
                taken.setdefault(e.port, set()).update(e.services)
            found = _filter_groups(self.port_groups(), scope.reachable, taken, dropped)
            self._scoped_groups[key] = found
        return found

    def _visible_groups(self, scope: Scope) -> Groups:
        """The port groups of every service ``scope`` shows (HTTP proxy, gRPC)."""
        visible = scope.visible
        if visible is None:
            return [(g, None) for g in self.port_groups()]
        key: Key = ("visible", visible)
        found = self._scoped_groups.get(key)
        if found is None:
            found = _filter_groups(self.port_groups(), visible, {}, set())
            self._scoped_groups[key] = found
        return found

    def _explicit_groups(self, scope: Scope) -> list[tuple[str, PortGroup, Hashable]]:
        """Each explicit listener of ``scope`` that serves something: its bind address
        (empty: outbound_ip), its port group and view."""
        out: list[tuple[str, PortGroup, Hashable]] = []
        for e in scope.explicit:
            members = []
            for key in e.services:
                service = self.mesh.service_by_name(key.namespace, key.name)
                port = service.port(e.port) if service is not None else None
                if service is not None and port is not None:
                    members.append((service, port))
            if members:
                out.append((e.bind, PortGroup(e.port, tuple(members)), e.services))
        return out

    def _groups_by_number(self) -> dict[int, PortGroup]:
        if self._group_index is None:
            self._group_index = {g.number: g for g in self.port_groups()}
        return self._group_index

    def _port_group_problems(self) -> list[Problem]:
        if self._group_problems is None:
            self._group_problems = check_port_groups(self.port_groups())
        return self._group_problems

    # -- snapshot assembly ----------------------------------------------------------

    def _build_snapshot(self, node: NodeClass) -> Snapshot:
        flavor = cluster_flavor(node)
        style = (
            MatcherStyle.DEPRECATED if node.client is ClientKind.MOSN else MatcherStyle.STRING_MATCH
        )
        source = (
            ConfigSourceKind.REST
            if node.config_source is ConfigSourceKind.REST
            else ConfigSourceKind.ADS
        )
        caller = self._routes.caller(node.labels, node.namespace)
        problems: list[Problem] = []
        scope = self.scope(node)
        parts: list[Callable[[], Iterable[Resource]]] = []
        if node.client is ClientKind.GRPC:
            parts.append(lambda: self._grpc_listeners(caller, scope))
        elif node.role is Role.GATEWAY:
            parts.append(lambda: self._gateway(node, source, style))
        elif node.role is Role.SIDECAR:
            parts.append(lambda: self._inbound(node, scope, source))
            parts.append(lambda: self._outbound(node.outbound_ip, source, style, caller, scope))
            parts.append(lambda: self._l4_listeners(node, scope))
        if node.locality != NO_LOCALITY:
            parts.append(lambda: self._local_assignments(node, scope))
        if self.mesh_config.mtls.enabled and node.client is not ClientKind.GRPC:
            parts.append(lambda: self._mesh_identity(node))
        try:
            base = self._bases.base(
                flavor, self._cluster, self._load_assignment, scope.clusters, self._secrets.get
            )
        except TranslationError as err:
            problems.extend(err.problems)
        chosen: dict[tuple[str, str], Resource] = {}
        for part in parts:
            try:
                for r in part():
                    chosen[(r.type_url, r.name)] = r  # later parts (raw) replace earlier ones
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        if not problems and node.client is not ClientKind.GRPC:
            problems.extend(self._apply_mesh_config(node, chosen))
        changes: dict[Slot, Patched] = {}
        if not problems:
            try:
                changes = self._apply_envoy_filters(node, base, chosen, scope.clusters)
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        try:
            for r in self._raw_resources().values():
                chosen[(r.type_url, r.name)] = r  # raw resources replace generated ones
                changes.pop((r.type_url, r.name), None)
        except TranslationError as err:
            problems.extend(p for p in err.problems if p not in problems)
        if problems:
            raise TranslationError(problems)
        return self._consistent(node, flavor, base, chosen, changes, scope.clusters)

    def _apply_mesh_config(self, node: NodeClass, chosen: dict[Slot, Resource]) -> list[Problem]:
        """Lay the mesh-wide proxy defaults over ``chosen`` (in place; an Envoy or MOSN
        class's generated resources, before EnvoyFilters): each listener with the access
        log and tracing (memoized by the listener and the defaults, so classes share the
        result), the Prometheus stats listener on the node's ``instance_ip``, and the
        tracing collector's cluster. Returns the problems: a stats listener that would
        collide with one of the node's listeners."""
        config = self.mesh_config
        if config.decorates:
            for slot, resource in chosen.items():
                if resource.type_url != LISTENER:
                    continue
                key: Key = ("decorated", resource.name, resource.digest, config)
                chosen[slot] = self._shared(key, decorated_listener, resource.message, config)
        if config.tracing is not None:
            cluster = self._shared(("tracing-cluster", config.tracing), tracing_cluster,
                                   config.tracing)  # fmt: skip
            chosen[(CLUSTER, cluster.name)] = cluster
        stats = config.prometheus
        if not stats.enabled:
            return []
        ip = self.instance_ip(node)
        for resource in chosen.values():
            if resource.type_url != LISTENER:
                continue
            sock = resource.message.address.socket_address
            if sock.port_value == stats.port and overlaps(sock.address, ip):
                return [Problem(
                    "<settings>", 0, "mesh.prometheus.port",
                    f"the stats listener on {ip}:{stats.port} would collide with listener "
                    f"{resource.name!r} of {node.namespace}/{node.service}: choose another "
                    "port for the stats listener, or move that port",
                )]  # fmt: skip
        listener = self._shared(("stats-listener", ip, stats), _stats_resource, ip, stats)
        chosen[(LISTENER, stats_listener_name(ip, stats.port))] = listener
        return []

    def _selection(self, key: Key, compute: Callable[[], list[Resource]]) -> tuple[Resource, ...]:
        """The resources ``compute`` selects, memoized by ``key`` with its error, if any."""
        found = self._selections.get(key)
        if found is None:
            try:
                found = tuple(compute())
            except TranslationError as err:
                # Kept without its traceback, whose frames would tie this translation
                # into a reference cycle.
                found = TranslationError(err.problems)
            self._selections[key] = found
        if isinstance(found, TranslationError):
            raise TranslationError(found.problems)
        return found

    def _inbound(
        self, node: NodeClass, scope: Scope, source: ConfigSourceKind = ConfigSourceKind.ADS
    ) -> list[Resource]:
        """Inbound clusters and listeners of ``node``'s own service (of its Sidecar's
        ingress listeners, when it has some), after checking that all of the node's
        listeners can bind. Under mesh mutual TLS the listeners take what its mode lets
        in (their secrets fetched the way ``source`` says)."""
        own = self.own_service(node)
        instance_ip = self.instance_ip(node)
        sidecar = self.sidecar(node)
        if sidecar is not None and sidecar.ingress:
            own = ingress_service(sidecar, own, node.service, node.namespace)
        if scope is EVERYTHING or scope is EVERYTHING_REGISTRY_ONLY:
            problems = self._port_group_problems() + check_binds(
                own, instance_ip, node.outbound_ip, self._groups_by_number(), HTTP_PROXY_PORT
            )
        else:
            groups = self._default_groups(scope, node.outbound_ip)
            explicit = self._explicit_groups(scope)
            problems = check_port_groups([g for g, _ in groups] + [g for _, g, _ in explicit])
            problems += check_binds(
                own, instance_ip, node.outbound_ip, {g.number: g for g, _ in groups},
                HTTP_PROXY_PORT,
            )  # fmt: skip
            if sidecar is not None:
                problems += explicit_bind_problems(
                    sidecar, [(b, g.number) for b, g, _ in explicit], own, instance_ip,
                    node.outbound_ip,
                )  # fmt: skip
        if problems:
            raise TranslationError(problems)
        out: list[Resource] = []
        mode = self.mesh_config.mtls.mode
        for port in own.ports if own is not None else ():
            out.append(self._shared(("inbound-cluster", port), build_inbound_cluster, port))
            out.append(
                self._shared(("inbound-listener", instance_ip, port, mode, source),
                             inbound_listener, instance_ip, port, mode, source)
            )  # fmt: skip
        return out

    def _mesh_identity(self, node: NodeClass) -> tuple[Resource, Resource]:
        """The mesh mutual TLS secrets of ``node``: its own certificate (from the
        ``[mesh.mtls]`` templates filled in with its namespace, service and inbound
        address) and the mesh CA. Raises TranslationError (naming the settings) when
        its files were not found."""
        mtls = self.mesh_config.mtls
        ip = self.instance_ip(node)
        where = mtls.origin
        if mtls.per_workload and (not ip or is_wildcard(ip)):
            raise TranslationError([Problem(
                where.path, where.line, "mesh.mtls.certificate",
                f"names each workload by {{instance_ip}}, and {node} has none: set the "
                "node's instance_ip (xdsd bootstrap --instance-ip)",
            )])  # fmt: skip
        certificate, key = mtls.workload_files(node.namespace, node.service, ip)
        try:
            return self._secrets.mesh_identity(certificate, key, mtls.ca)
        except KeyError as missing:
            raise TranslationError([Problem(
                where.path, where.line, "mesh.mtls.certificate",
                f"no mesh certificate for {node}: {missing.args[0]} was not found or is "
                "not usable (see the load's warnings; xdsd looks for new files when services "
                "are added, when something changes under the templates' directory, and on "
                "SIGHUP)",
            )]) from None  # fmt: skip

    def _outbound(
        self, ip: str, source: ConfigSourceKind, style: MatcherStyle, caller: Caller,
        scope: Scope = EVERYTHING,
    ) -> tuple[Resource, ...]:  # fmt: skip
        """Outbound HTTP listeners on ``ip`` (and on the bind addresses of explicit
        egress listeners) and the route configurations they name, as ``caller`` sees them
        and as far as ``scope`` lets it see."""
        block = scope.registry_only

        def compute() -> list[Resource]:
            out: list[Resource] = []
            problems: list[Problem] = []
            routes = self._routes
            for group, view in self._default_groups(scope, ip):
                if group.http:
                    out.append(
                        self._shared(("outbound-http", ip, group.number, source),
                                     outbound_http_listener, ip, group.number, source)
                    )  # fmt: skip
                    try:
                        out.append(
                            routes.port_routes(group, style, caller, view=view,
                                               block_unknown=block)
                        )  # fmt: skip
                    except TranslationError as err:
                        problems.extend(p for p in err.problems if p not in problems)
            for bind, group, view in self._explicit_groups(scope):
                if not group.http:
                    continue
                name = explicit_route_name(bind, group.number)
                address = bind or ip
                out.append(
                    self._shared(("outbound-http", address, group.number, source, name),
                                 outbound_http_listener, address, group.number, source, name)
                )  # fmt: skip
                try:
                    out.append(
                        routes.port_routes(group, style, caller, view=view, name=name,
                                           block_unknown=block)
                    )  # fmt: skip
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
            forward = self._forwards()
            out.append(
                self._shared(("http-proxy", ip, source, forward), http_proxy_listener,
                             ip, source, forward)
            )  # fmt: skip
            visible = self._visible_groups(scope)
            proxy_view = scope.visible
            try:
                out.append(
                    routes.proxy_routes([g for g, _ in visible], style, caller, view=proxy_view,
                                        block_unknown=block)
                )  # fmt: skip
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
            if problems:
                raise TranslationError(problems)
            return out

        return self._selection(("outbound", ip, source, style, caller, scope), compute)

    def _l4_listeners(self, node: NodeClass, scope: Scope = EVERYTHING) -> tuple[Resource, ...]:
        """The outbound listeners of the TCP/TLS ports on ``node.outbound_ip``. They depend
        on the node's namespace and labels only when some tcp/tls match looks at them, so
        the selection is keyed by those only then (see ``l4``). A MOSN node is refused a
        listener it would apply only in part (see ``mosn.l4_problems``)."""
        if self._l4_by_caller is None:
            self._l4_by_caller = caller_dependent(self.mesh)
        caller = L4Caller(node.namespace, node.labels) if self._l4_by_caller else ANY_CALLER
        ip = node.outbound_ip
        mosn = node.client is ClientKind.MOSN

        def compute() -> list[Resource]:
            out: list[Resource] = []
            problems: list[Problem] = []
            rules = None
            wanted = [(ip, g, v) for g, v in self._default_groups(scope, ip)]
            wanted += [(b or ip, g, v) for b, g, v in self._explicit_groups(scope)]
            for address, group, view in wanted:
                if group.http or not group.tcp:
                    continue
                plan = self._l4_plans.get((group.number, caller, view))
                if plan is None:
                    if rules is None:
                        rules = virtual_service_index(self.mesh)
                    try:
                        plan = plan_l4_listener(self.mesh, rules, group, caller)
                    except TranslationError as err:
                        problems.extend(p for p in err.problems if p not in problems)
                        continue
                    self._l4_plans[(group.number, caller, view)] = plan
                if mosn:
                    if rules is None:
                        rules = virtual_service_index(self.mesh)
                    problems.extend(mosn_l4_problems(plan, group, rules))
                out.append(
                    self._shared(("outbound-l4", address, plan), outbound_l4_listener,
                                 address, plan)
                )  # fmt: skip
            if problems:
                raise TranslationError(problems)
            return out

        return self._selection(("l4", ip, caller, mosn, scope), compute)

    def _gateway(
        self, node: NodeClass, source: ConfigSourceKind, style: MatcherStyle
    ) -> tuple[Resource, ...]:
        """The listeners and route configurations of a gateway node (see ``gateways``);
        nothing when no Gateway selects it."""
        selected = tuple(g for g in self.mesh.gateways if selects(g, node.labels))
        if not selected:
            return ()
        if self._bound is None:
            self._bound = bound_virtual_services(self.mesh)
        bound = self._bound
        rules = {vs.key: vs for g in selected for vs in bound.get(g.key, ())}
        caller = caller_of(node.labels, node.namespace, relevance_of(rules.values()))
        address = self.instance_ip(node)
        builder = self._routes.builder(style)

        def routes_of(vs: VirtualService, port: int, gateway: ResourceKey) -> list[Any]:
            key = (vs.key, port, gateway, caller, style)
            found = self._gateway_routes.get(key)
            if found is None:
                found = builder.gateway_routes(
                    vs, port, lambda m: gateway_match_applies(m, gateway, vs.namespace, caller)
                )
                self._gateway_routes[key] = found
            return found

        def compute() -> list[Resource]:
            plan = plan_gateway(self.mesh, selected, bound, address)
            out: list[Resource] = []
            problems: list[Problem] = []
            for listener in plan.listeners:
                out.append(
                    self._shared(("gateway-listener", listener, source), gateway_listener,
                                 listener, source)
                )  # fmt: skip
            secrets = {n for r in out for t, n in r.references if t == SECRET}
            out.extend(s for s in map(self._secrets.get, sorted(secrets)) if s is not None)
            for route in plan.routes:
                used = tuple(
                    (vs, builder.rule_inputs(vs))
                    for gw, _ in route.servers
                    for vs in bound.get(gw, ())
                )
                key = ("gateway-routes", route, used, caller, style)
                try:
                    out.append(
                        self._shared(key, gateway_route_configuration, route, bound, routes_of)
                    )
                except TranslationError as err:
                    problems.extend(p for p in err.problems if p not in problems)
            if problems:
                raise TranslationError(problems)
            return out

        keys = tuple(g.key for g in selected)
        return self._selection(("gateway", keys, address, source, style, caller), compute)

    def _local_assignments(
        self, node: NodeClass, scope: Scope = EVERYTHING
    ) -> tuple[Resource, ...]:
        """The ClusterLoadAssignments that ``node``'s locality changes (see
        ``locality.py``): they replace the shared ones in its snapshot. Memoized per
        (locality, labels failoverPriority names), and each assignment per what it is
        made of, so classes in one locality share them."""
        names = self._priority_label_names()
        labels = tuple((k, v) for k, v in node.labels if k in names)

        clusters = scope.clusters

        def compute() -> list[Resource]:
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
                    if policy is not None:
                        out.append(self._local_assignment(spec, policy, node))
            return out

        return self._selection(("local-cla", node.locality, labels, clusters), compute)

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

    def _local_assignment(
        self, spec: OutboundCluster, policy: LocalityPolicy, node: NodeClass
    ) -> Resource:
        endpoints = select_endpoints(spec.service, spec.port, spec.selector)
        caller = caller_key(policy, node.locality, node.labels)
        key = ("cla", spec.name, spec.port, endpoints, policy, caller)

        def build() -> Any:
            groups = localize(locality_groups(spec.port, endpoints), policy, caller)
            return assignment_of_groups(spec.name, spec.port, groups)

        return self._shared(key, build)

    def _grpc_listeners(self, caller: Caller, scope: Scope = EVERYTHING) -> tuple[Resource, ...]:
        """API listeners for every name of every HTTP service port ``scope`` shows, and
        their routes as ``caller`` sees them."""

        def compute() -> list[Resource]:
            style = MatcherStyle.STRING_MATCH
            out: list[Resource] = []
            bare_seen: set[str] = set()
            for group, view in self._visible_groups(scope):
                if not group.http:
                    continue
                out.append(self._routes.port_routes(group, style, caller, view=view))
                route_name = port_route_name(group.number)
                suffix = f":{group.number}"
                for spec in self._routes.vhosts_for_port(group, view):
                    names = [d for d in spec.domains if d.endswith(suffix)]
                    if len(spec.service.ports) == 1:
                        bare = [d for d in spec.domains if ":" not in d and d not in bare_seen]
                        bare_seen.update(bare)
                        names.extend(bare)
                    for name in names:
                        out.append(
                            self._shared(("api-listener", name, route_name), api_listener,
                                         name, route_name)
                        )  # fmt: skip
            return out

        return self._selection(("grpc", caller, scope), compute)

    # -- EnvoyFilter ----------------------------------------------------------------

    def node_patches(self, node: NodeClass) -> tuple[Patch, ...]:
        """The patches of the EnvoyFilters that select ``node``, in the order they apply
        (see ``patches.selected_filters``), without those whose ``match.proxy.metadata``
        the node does not have; none for a proxyless gRPC client (Istio applies no
        EnvoyFilter to one). Raises TranslationError when a selected filter's patch value
        is not a message of its type."""
        if not self.mesh.envoy_filters or node.client is ClientKind.GRPC:
            return ()
        metadata = {
            "namespace": node.namespace,
            "role": node.role.value,
            "client": node.client.value,
            "instance_ip": node.instance_ip,
            "outbound_ip": node.outbound_ip,
        }
        filters = selected_filters(
            self.mesh.envoy_filters, node.namespace, dict(node.labels), self.root_namespace
        )
        out: list[Patch] = []
        problems: list[Problem] = []
        for flt in filters:
            try:
                out.extend(p for p in self._patches_of(flt) if proxy_matches(p, metadata))
            except TranslationError as err:
                problems.extend(err.problems)
        if problems:
            raise TranslationError(problems)
        return tuple(out)

    def _patches_of(self, flt: EnvoyFilter) -> tuple[Patch, ...]:
        """``flt``'s patches, parsed once; a cluster match's ``service`` is completed to
        the full name of the service it names from the filter's namespace (``reviews`` →
        ``reviews.<ns>.svc.cluster.local``), as cluster names carry it."""
        found = self._filter_patches.get(flt)
        if found is None:
            try:
                parsed = []
                for patch in parse_patches(flt):
                    match = patch.config.match
                    if match.service:
                        target = self.mesh.service(match.service, flt.namespace)
                        if target is not None and target.fqdn != match.service:
                            match = dataclasses.replace(match, service=target.fqdn)
                            config = dataclasses.replace(patch.config, match=match)
                            patch = dataclasses.replace(patch, config=config)
                    parsed.append(patch)
                found = tuple(parsed)
            except TranslationError as err:
                found = TranslationError(err.problems)
            self._filter_patches[flt] = found
        if isinstance(found, TranslationError):
            raise TranslationError(found.problems)
        return found

    def _apply_envoy_filters(
        self,
        node: NodeClass,
        base: Snapshot,
        chosen: dict[Slot, Resource],
        base_scope: frozenset[ResourceKey] | None = None,
    ) -> dict[Slot, Patched]:
        """Patch ``chosen`` (the class's generated resources, in place) and the base's
        clusters with the EnvoyFilters that select ``node``; add what ADD patches create.
        Returns what changed, by slot: the new resource (None: removed) and the patches
        that made it, for ``_consistent`` and for messages."""
        patches = self.node_patches(node)
        if not patches:
            return {}
        gateway = node.role is Role.GATEWAY
        own = self.own_service(node)
        hosts = (own.fqdn, *own.hosts) if own is not None else ()
        changes: dict[Slot, Patched] = {}
        for slot, resource in list(chosen.items()):
            result = self._patched_resource(resource, gateway, patches, hosts)
            if result[0] is not resource:
                changes[slot] = result
        for slot, result in self._patched_base(node, base, gateway, patches, base_scope).items():
            if slot not in chosen:
                changes[slot] = result
        for slot, result in changes.items():
            if result[0] is None:
                chosen.pop(slot, None)
            else:
                chosen[slot] = result[0]
        problems: list[Problem] = []
        contexts = (
            (PatchContext.GATEWAY,) if gateway
            else (PatchContext.SIDECAR_INBOUND, PatchContext.SIDECAR_OUTBOUND)
        )  # fmt: skip
        for kind, type_url in ((ApplyTo.LISTENER, LISTENER), (ApplyTo.CLUSTER, CLUSTER)):
            for message, patch in added(kind, contexts, patches):
                slot = (type_url, message.name)
                noun = SHORT_NAMES[type_url][:-1]
                if not message.name:
                    problems.append(patch.problem(f"ADD needs a {noun} name", ".patch.value.name"))
                    continue
                exists = slot in chosen or (
                    message.name in base.get(type_url) and changes.get(slot, (1,))[0] is not None
                )
                if exists:
                    problems.append(patch.problem(
                        f"adds {noun} {message.name!r}, which the node already has: MERGE "
                        "into it, or REMOVE it first", ".patch.value.name",
                    ))  # fmt: skip
                    continue
                resource = self._shared(("patch-add", patch), lambda m=message: m)
                chosen[slot] = resource
                changes[slot] = (resource, (patch,))
        if problems:
            raise TranslationError(problems)
        return changes

    def _patched_resource(
        self, resource: Resource, gateway: bool, patches: Sequence[Patch], hosts: Sequence[str]
    ) -> Patched:
        """``resource`` after ``patches`` (itself when none changes it), memoized by the
        resource and the patches that may touch it in its context."""
        message = resource.message
        if resource.type_url == LISTENER:
            context = listener_context(message, gateway)
            family = LISTENER_FAMILY
        elif resource.type_url == ROUTE:
            context, family = name_context(resource.name, gateway), ROUTE_FAMILY
        elif resource.type_url == CLUSTER:
            context, family = name_context(resource.name, gateway), CLUSTER_FAMILY
            if not could_patch_cluster(resource.name, hosts, relevant(patches, family, context)):
                return resource, ()
        else:
            return resource, ()
        mine = relevant(patches, family, context)
        if not mine:
            return resource, ()
        scope = hosts if resource.name.startswith("inbound|") else ()
        key: Key = ("patched", resource.type_url, resource.name, resource.digest, context,
                    mine, scope)  # fmt: skip
        found = self._patched.get(key) or self._patched_fallback.get(key)
        if found is None:
            if resource.type_url == LISTENER:
                new, applied = patch_listener(message, context, mine)
            elif resource.type_url == ROUTE:
                new, applied = patch_route_configuration(message, context, mine)
            else:
                new, applied = patch_cluster(message, context, mine, scope)
            if not applied:
                found = (resource, ())
            elif new is None:
                found = (None, applied)
            else:
                patched = Resource.of(resource.name, new)
                found = (resource if patched.digest == resource.digest else patched, applied)
        else:
            # Patches compare by value: name the current ones (their files may have moved).
            current = {p: p for p in mine}
            found = (found[0], tuple(current.get(p, p) for p in found[1]))
            if found[0] is not None and found[0].digest == resource.digest:
                found = (resource, found[1])
        self._patched[key] = found
        return found

    def _patched_base(
        self,
        node: NodeClass,
        base: Snapshot,
        gateway: bool,
        patches: Sequence[Patch],
        base_scope: frozenset[ResourceKey] | None = None,
    ) -> dict[Slot, Patched]:
        """The base's clusters that the cluster patches of ``node`` change or remove, by
        slot; computed once per (flavor, the services the base holds (``base_scope``,
        None: all, as a Sidecar scopes it), those patches)."""
        context = PatchContext.GATEWAY if gateway else PatchContext.SIDECAR_OUTBOUND
        mine = relevant(patches, CLUSTER_FAMILY, context)
        if not any(p.operation in (PatchOperation.MERGE, PatchOperation.REMOVE) for p in mine):
            return {}
        key: Key = ("base-patches", cluster_flavor(node), base_scope, gateway, mine)
        found = self._base_patches.get(key)
        if found is None:
            found = {}
            for name, resource in base.get(CLUSTER).items():
                if not could_patch_cluster(name, (), mine):
                    continue
                result = self._patched_resource(resource, gateway, mine, ())
                if result[0] is not resource:
                    found[(CLUSTER, name)] = result
            self._base_patches[key] = found
        return found

    # -- shared resources -----------------------------------------------------------

    def _shared(self, key: Key, build: Callable[..., Any], *args: Any) -> Resource:
        """The Resource built by ``build(*args)``, named by the message's ``name`` (or
        ``cluster_name``); memoized by ``key``, which must determine the message
        completely, since it is also looked up in the previous translation."""
        found = self._memo.get(key)
        if found is None:
            found = self._fallback.get(key)
            if found is None:
                built = build(*args)
                if isinstance(built, Resource):
                    found = built
                else:
                    name = built.cluster_name if key[0] == "cla" else built.name
                    found = Resource.of(name, built)
            self._memo[key] = found
        return found

    def _cluster(self, spec: OutboundCluster, flavor: ClusterFlavor) -> Resource:
        spec = self._with_mesh_tls(spec, flavor)
        if is_eds(spec, flavor):
            key: Key = ("cluster", flavor, spec.name, spec.port, _lb_key(spec))
        else:
            # DNS clusters carry no config source (unless their TLS certificates come by
            # SDS): Envoy classes share them.
            shared = not flavor.grpc and not uses_sds(spec.policy)
            inline_flavor = ClusterFlavor.ENVOY_ADS if shared else flavor
            endpoints = select_endpoints(spec.service, spec.port, spec.selector)
            key = ("dns-cluster", inline_flavor, spec.name, spec.port, spec.service.resolution,
                   _lb_key(spec), endpoints)  # fmt: skip
        return self._shared(key, build_outbound_cluster, spec, flavor)

    def _with_mesh_tls(self, spec: OutboundCluster, flavor: ClusterFlavor) -> OutboundCluster:
        """``spec`` with the TLS mesh mutual TLS gives it: ISTIO_MUTUAL to the services
        inside the mesh (xdsd Services, MESH_INTERNAL ServiceEntry hosts) unless their
        DestinationRule says otherwise, and wherever a rule asks for ISTIO_MUTUAL;
        checking the callee's identity: the rule's subject alt names, else the entry's,
        else (a Service) its SPIFFE id; a MESH_INTERNAL entry that names none is checked
        against the mesh CA only. Proxyless gRPC reads certificates only through the
        certificate providers of its bootstrap: a client that has the mesh's
        (``ClusterFlavor.GRPC_MTLS``) is treated as Envoy, any other is left out (its
        ISTIO_MUTUAL is plaintext, which STRICT sidecars refuse)."""
        mtls = self.mesh_config.mtls
        policy = spec.policy
        tls = policy.tls if policy is not None else None
        if policy is not None and tls is not None and tls.mode is TLSMode.ISTIO_MUTUAL:
            if not mtls.enabled:  # the loader refuses such rules: a mesh built by hand
                raise TranslationError([_istio_mutual_problem(spec)])
            if flavor is ClusterFlavor.GRPC:
                return dataclasses.replace(spec, policy=dataclasses.replace(policy, tls=None))
        if not mtls.enabled or flavor is ClusterFlavor.GRPC:
            return spec  # (a GRPC_MTLS client has the mesh's certificates: as Envoy)
        service = spec.service
        if tls is None and service.location is Location.MESH_INTERNAL:
            tls = ClientTLS(TLSMode.ISTIO_MUTUAL)
        if tls is None or tls.mode is not TLSMode.ISTIO_MUTUAL:
            return spec
        if not tls.subject_alt_names:
            sans = service.subject_alt_names
            if not sans and not service.entry:
                sans = (mtls.identity(service.namespace, service.name),)
            tls = dataclasses.replace(tls, subject_alt_names=sans)
        policy = dataclasses.replace(policy or TrafficPolicy(), tls=tls)
        return dataclasses.replace(spec, policy=policy)

    def _load_assignment(self, spec: OutboundCluster) -> Resource:
        endpoints = select_endpoints(spec.service, spec.port, spec.selector)
        key = ("cla", spec.name, spec.port, endpoints)
        return self._shared(key, assignment_resource, spec.name, spec.port, endpoints)

    def _raw_resources(self) -> dict[tuple[str, str], Resource]:
        if self._raw is None:
            problems: list[Problem] = []
            raw: dict[tuple[str, str], Resource] = {}
            for item in self.mesh.raw_resources:
                try:
                    resource = raw_resource(item)
                except TranslationError as err:
                    problems.extend(err.problems)
                    continue
                raw[(resource.type_url, resource.name)] = resource
                self._raw_origins[(resource.type_url, resource.name)] = item.origin
            self._raw = TranslationError(problems) if problems else raw
        if isinstance(self._raw, TranslationError):
            raise TranslationError(self._raw.problems)
        return self._raw

    def _updated(
        self,
        node: NodeClass,
        flavor: ClusterFlavor,
        chosen: dict[tuple[str, str], Resource],
        base_scope: frozenset[ResourceKey] | None,
    ) -> Snapshot | None:
        """``node``'s snapshot of the previous translation brought up to date with what
        changed in the base and in the class's own resources, when neither translation's
        own resources replace a base resource (None otherwise: build from the base).
        Costs one copy of each changed type's mapping instead of a merge per class."""
        delta = self._bases.delta(flavor, base_scope)
        previous = self._prev_snapshots.get(node)
        before = self._prev_chosen.get(node)
        if delta is None or previous is None or before is None or before[1]:
            return None
        if before[2] != base_scope:  # built on another base: the delta does not apply
            return None
        old = before[0]
        added = [*delta[0], *(r for k, r in chosen.items() if old.get(k) is not r)]
        removed = [
            *(k for k in delta[1] if k not in chosen),  # a secret the class names itself
            *((TypeUrl(k[0]), k[1]) for k in old if k not in chosen),
        ]
        if not added and not removed:
            return previous
        return Snapshot.extend(previous, added, removed=removed, check=False)

    def _consistent(
        self,
        node: NodeClass,
        flavor: ClusterFlavor,
        base: Snapshot,
        chosen: dict[tuple[str, str], Resource],
        changes: Mapping[Slot, Patched] | None = None,
        base_scope: frozenset[ResourceKey] | None = None,
    ) -> Snapshot:
        """The snapshot of ``base`` with the class's ``chosen`` resources, without those
        EnvoyFilter patches removed (``changes``: slot → (None, patches) for those). A
        generated cluster replaced by a raw or patched one, or removed, takes its
        ClusterLoadAssignment with it unless something chosen still needs it. A dangling
        reference from a raw or patched resource, or to a resource a patch removed, is
        the user's to fix (TranslationError naming the file); any other one is a bug
        (InconsistentSnapshotError)."""
        started = time.perf_counter()
        changes = changes or {}
        gone = [slot for slot, (new, _) in changes.items() if new is None]
        overlaps = bool(gone) or any(
            n in base.get(TypeUrl(t)) for t, n in chosen if t in _BASE_TYPES
        )
        self._chosen[node] = (chosen, overlaps, base_scope)
        snapshot = None if overlaps else self._updated(node, flavor, chosen, base_scope)
        if snapshot is None:
            removed: list[tuple[TypeUrl, str]] = [(TypeUrl(t), n) for t, n in gone]
            clusters = base.get(CLUSTER)
            replaced = [clusters[n] for t, n in [*chosen, *gone] if t == CLUSTER and n in clusters]
            if replaced:
                needed = {ref for r in chosen.values() for ref in r.references}
                for old in replaced:
                    for type_url, name in old.references:
                        if (type_url, name) not in needed and (type_url, name) not in chosen:
                            removed.append((TypeUrl(type_url), name))
            snapshot = Snapshot.extend(base, chosen.values(), removed=removed, check=False)
        problems = dangling_references(snapshot, self._raw_resources(), self._raw_origins)
        if changes:
            problems.extend(_patch_problems(snapshot, chosen, changes))
        if problems:
            raise TranslationError(problems)
        snapshot.check_consistency()
        self.timings["snapshot"] += time.perf_counter() - started
        return snapshot


def _istio_mutual_problem(spec: OutboundCluster) -> Problem:
    rule = spec.rule
    path, line = (rule.origin.path, rule.origin.line) if rule is not None else ("<none>", 0)
    return Problem(path, line, "trafficPolicy.tls.mode", ISTIO_MUTUAL_WITHOUT_MESH_TLS)


def _stats_resource(ip: str, stats: Any) -> Resource:
    """The stats listener as a Resource that references nothing: its cluster
    ``prometheus_stats`` is in the proxy's bootstrap, not in the snapshot."""
    return dataclasses.replace(
        Resource.of(stats_listener_name(ip, stats.port), stats_listener(ip, stats)),
        references=(),
    )


def _patch_problems(
    snapshot: Snapshot, chosen: Mapping[Slot, Resource], changes: Mapping[Slot, Patched]
) -> list[Problem]:
    """A problem, at the patch to blame, for each reference left dangling by EnvoyFilter
    patches: one a patched or added resource makes to something the snapshot lacks, and
    one a class's resource makes to something a patch removed."""
    problems: list[Problem] = []

    def kind(type_url: str) -> str:
        return SHORT_NAMES.get(TypeUrl(type_url), type_url).removesuffix("s")

    for (type_url, name), (new, applied) in changes.items():
        if new is None or not applied:
            continue
        for ref_type, ref in new.references:
            if ref in snapshot.get(TypeUrl(ref_type)):
                continue
            problems.append(applied[-1].problem(
                f"after this patch {kind(type_url)} {name!r} references {kind(ref_type)} "
                f"{ref!r}, which the node does not have: add it (a CLUSTER ADD patch, a "
                "service or a raw resource) or change the reference", ".patch.value",
            ))  # fmt: skip
    removed = {slot: applied for slot, (new, applied) in changes.items() if new is None}
    if removed:
        for resource in chosen.values():
            for ref_type, ref in resource.references:
                blamed = removed.get((ref_type, ref))
                if blamed and ref not in snapshot.get(TypeUrl(ref_type)):
                    problems.append(blamed[-1].problem(
                        f"removes {kind(ref_type)} {ref!r}, which {kind(resource.type_url)} "
                        f"{resource.name!r} still references", ".patch.operation",
                    ))  # fmt: skip
    return problems


_BASE_TYPES = (CLUSTER, ENDPOINT)
#: What a class chose besides its base, whether that replaces any of the base, and which
#: services its base holds (None: all).
Chosen = tuple[dict[tuple[str, str], Resource], bool, frozenset[ResourceKey] | None]


def _filter_groups(
    groups: Iterable[PortGroup],
    keep: frozenset[ResourceKey] | None,
    taken: dict[int, set[ResourceKey]],
    dropped: set[int],
) -> Groups:
    """``groups`` with only the members whose service ``keep`` holds (all when None) and
    that ``taken`` does not list for the group's port, without the ports in ``dropped``
    and the groups left empty; each with its view: None when nothing was left out, else
    the keys of its members."""
    out: Groups = []
    for group in groups:
        if group.number in dropped:
            continue
        gone = taken.get(group.number, ())
        members = tuple(
            (s, p)
            for s, p in group.members
            if (keep is None or s.key in keep) and s.key not in gone
        )
        if len(members) == len(group.members):
            out.append((group, None))
        elif members:
            out.append((PortGroup(group.number, members), tuple(s.key for s, _ in members)))
    return out


def _policies(rule: DestinationRule) -> Iterable[TrafficPolicy]:
    """Every traffic policy written in ``rule`` (top level and subsets, with their
    port-level settings as policies)."""
    for policy in (rule.traffic_policy, *(s.traffic_policy for s in rule.subsets)):
        if policy is None:
            continue
        yield policy
        for port in policy.port_level_settings:
            yield TrafficPolicy(port.load_balancer, port.connection_pool,
                                port.outlier_detection, port.tls)  # fmt: skip


def _may_localize(rule: DestinationRule) -> bool:
    """True when some cluster of ``rule`` may look different from some locality."""
    return any(
        p.outlier_detection is not None
        or (p.load_balancer is not None and p.load_balancer.locality is not None
            and bool(p.load_balancer.locality.distribute))
        for p in _policies(rule)
    )  # fmt: skip


def _lb_key(spec: OutboundCluster) -> Hashable:
    """What a cluster takes from its DestinationRule and its service's health check: the
    effective traffic policy (a frozen value, already merged for the cluster's port and
    subset) and the health check as the cluster sends it."""
    return (spec.policy, spec.health_check)
