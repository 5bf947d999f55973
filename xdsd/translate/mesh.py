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

Then the EnvoyFilters that select the class (``filters``, ``patches``: those of the root
namespace and of the node's namespace whose selector matches its labels; not for
proxyless gRPC, as in Istio) patch what was generated, before the raw resources are laid
over it. A patched resource is memoized by (resource, the patches that may touch it in
its context), so classes with the same applicable filters share it; a class no
EnvoyFilter selects gets the shared resources untouched. The base's clusters are patched
once per (flavor, cluster patches) and the class's snapshot replaces or drops them like
a raw resource would. A Sidecar (``sidecar_scope``) narrows what a sidecar-role class
receives to the services it may reach: clusters and assignments of a *scoped base* (one
per flavor and set of services), default listeners and route configurations over those
services only, explicit egress listeners, and inbound listeners from its ingress.
Everything it narrows is memoized by the ``Scope`` value (or by the services a port
holds), so classes that see the same services share it.

The pipeline, one module per stage (``snapshot_for``):

1. *base* (``shared``, ``base``, ``mesh_tls``): the clusters and assignments of every
   service (or of the services a Sidecar scope leaves) in the class's flavor;
2. *parts* (``parts``, over ``scoping``): what the class's kind receives besides, and
   its mesh mutual TLS secrets (``mesh_tls``);
3. *defaults* (``defaults``): the mesh-wide proxy defaults over an Envoy or MOSN class's
   listeners;
4. *filters* (``filters``): the EnvoyFilters that select the class;
5. *raw* (``raw``): the raw resources, replacing generated ones of the same name;
6. *consistent* (``consistent``): the snapshot, checked.

Every resource is built through one ``memo.Memo`` keyed by its build function and
arguments (never by hand), which the next translation looks up too; with
``XDSD_CHECK_MEMO=1`` every hit is rebuilt and compared (the translate tests run so).

API version v2 is not translated here: every resource is v3.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, TranslationError
from xdsd.model import Mesh, Service
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, MeshConfig
from xdsd.model.networking import ROOT_NAMESPACE, Sidecar
from xdsd.resources import Resource
from xdsd.translate.base import BaseBuilders
from xdsd.translate.clusters import cluster_flavor
from xdsd.translate.consistent import Assembly
from xdsd.translate.defaults import apply_mesh_config
from xdsd.translate.filters import EnvoyFilters, Patched, Slot
from xdsd.translate.memo import CHECK_MEMO_ENV, Memo, Selections
from xdsd.translate.mesh_tls import issued_secrets, mesh_identity
from xdsd.translate.node import NO_LOCALITY, ClientKind, ConfigSourceKind, NodeClass, Role
from xdsd.translate.parts import ClassParts
from xdsd.translate.patch_spec import Patch
from xdsd.translate.peer_authentication import CalleeModes
from xdsd.translate.placement import PortGroup
from xdsd.translate.raw import RawResources
from xdsd.translate.route_configs import RouteConfigs
from xdsd.translate.route_matches import MatcherStyle
from xdsd.translate.scoping import Scoping
from xdsd.translate.secrets import Secrets
from xdsd.translate.shared import SharedClusters
from xdsd.translate.sidecar_scope import Scope
from xdsd.translate.virtual_addresses import VirtualAddresses


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
        check_memo: bool | None = None,
    ) -> None:
        """``previous``: the translation of the mesh this one replaces, whose resources
        are reused where their inputs are equal. ``check_memo``: rebuild and compare on
        every memo hit (default: when the environment says ``XDSD_CHECK_MEMO=1``)."""
        if previous is not None and previous.mesh_config.mtls != mesh_config.mtls:
            # Mesh mutual TLS changes every cluster of the mesh's own services, which
            # are otherwise taken over by the identity of their service's objects.
            previous = None
        if check_memo is None:
            check_memo = os.environ.get(CHECK_MEMO_ENV) == "1"
        self.mesh = mesh
        self.mesh_config = mesh_config
        #: Istio's rootNamespace: its EnvoyFilters apply to every node, and its Sidecar
        #: without selector to namespaces that have none.
        self.root_namespace = root_namespace
        #: Seconds spent so far: building resources (``translate``) and assembling and
        #: checking snapshots (``snapshot``), for logs and benchmarks.
        self.timings: dict[str, float] = {"translate": 0.0, "snapshot": 0.0}
        # Handed to the next translation: only what this one used (see ``reuse``).
        self._memo: Memo = Memo(previous=previous._memo if previous else None, check=check_memo)
        callee = CalleeModes(mesh, mesh_config.mtls)
        self._bases: SharedClusters = SharedClusters(
            mesh,
            previous=previous._bases if previous else None,
            timings=self.timings,
            callee=callee,
        )
        self._routes: RouteConfigs = RouteConfigs(
            mesh, previous=previous._routes if previous else None
        )
        # SDS secrets of the mesh's certificate files, by name (built again by every
        # translation: they are cheap, and a file may change while no rule does).
        self._secrets = Secrets(mesh)
        self._raw = RawResources(mesh)
        self._assembly: Assembly = Assembly(
            bases=self._bases,
            raw=self._raw,
            timings=self.timings,
            previous=previous._assembly if previous else None,
            supplied=issued_secrets(mesh_config.mtls),
        )
        self._scoping = Scoping(
            mesh,
            root_namespace=root_namespace,
            outbound_policy=mesh_config.outbound_traffic_policy,
        )
        self._base_builders = BaseBuilders(self._memo, mesh_config.mtls, callee)
        self._parts = ClassParts(
            mesh,
            memo=self._memo,
            selections=Selections(check=check_memo),
            scoping=self._scoping,
            routes=self._routes,
            secrets=self._secrets,
            mesh_config=mesh_config,
        )
        if previous is not None:
            self._parts.take_over_addresses(previous._parts)
        self._filters = EnvoyFilters(mesh, root_namespace=root_namespace, memo=self._memo)

    # -- public ---------------------------------------------------------------------

    def snapshot_for(self, node: NodeClass) -> Snapshot:
        """The consistent snapshot for ``node`` (memoized per class).

        Raises TranslationError when the node's listeners would collide (see
        ``placement.check_binds``), when a rule cannot be translated, or when a raw
        Envoy resource cannot be used or references something the snapshot lacks; every
        problem names the file to change. Raises ``memo.StaleMemoError`` in checking
        mode when a memoized resource differs from a fresh build (a bug).
        """
        snapshots = self._assembly.snapshots
        found = snapshots.get(node)
        if found is None:
            started = time.perf_counter()
            snapshot_before = self.timings["snapshot"]
            try:
                found = self._build_snapshot(node)
            finally:
                spent = time.perf_counter() - started
                self.timings["translate"] += spent - (self.timings["snapshot"] - snapshot_before)
            snapshots[node] = found
        return found

    def instance_ip(self, node: NodeClass) -> str:
        """The address ``node``'s inbound listeners bind: ``node.instance_ip`` when set,
        else the address of the one endpoint of its service that matches its labels
        (when there is exactly one and it is an IP literal), else ``0.0.0.0``."""
        return self._scoping.instance_ip(node)

    def own_service(self, node: NodeClass) -> Service | None:
        """The service ``node`` fronts, if the mesh defines it."""
        return self._scoping.own_service(node)

    def virtual_addresses(self) -> VirtualAddresses:
        """Every service's virtual address slot or pinned addresses (see
        ``virtual_addresses``). Raises TranslationError when the settings' block is too
        small for the mesh."""
        return self._parts.virtual_addresses()

    def port_groups(self) -> list[PortGroup]:
        """Every port number used by a service, ascending, with the service ports on it."""
        return self._scoping.port_groups()

    def sidecar(self, node: NodeClass) -> Sidecar | None:
        """The Sidecar that applies to ``node`` (None for gateways, which Sidecars do not
        apply to, and when none does; see ``sidecar_scope.select_sidecar``)."""
        return self._scoping.sidecar(node)

    def scope(self, node: NodeClass) -> Scope:
        """What ``node`` may reach (``EVERYTHING`` when no Sidecar applies, registry-only
        for a sidecar under the mesh's REGISTRY_ONLY default). Raises
        TranslationError when its Sidecar cannot be translated."""
        return self._scoping.scope(node)

    def node_patches(self, node: NodeClass) -> tuple[Patch, ...]:
        """The patches of the EnvoyFilters that select ``node``, in the order they apply
        (see ``filters.EnvoyFilters.node_patches``)."""
        return self._filters.node_patches(node)

    # -- the pipeline ---------------------------------------------------------------

    def _build_snapshot(self, node: NodeClass) -> Snapshot:
        """``node``'s snapshot: base → parts → defaults → filters → raw → consistent.
        Every stage runs and reports its problems (a later stage only when the ones it
        builds on succeeded), and they are raised together."""
        flavor = cluster_flavor(node)
        problems: list[Problem] = []
        scope = self._with_providers(node, self._scoping.scope(node))
        base: Snapshot | None = None
        try:
            builders = self._base_builders
            base = self._bases.base(
                flavor, builders.cluster, builders.assignment, scope.clusters, self._secrets.get
            )
        except TranslationError as err:
            problems.extend(err.problems)
        chosen: dict[Slot, Resource] = {}
        for part in self._parts_of(node, scope):
            try:
                for r in part():
                    chosen[(r.type_url, r.name)] = r  # later parts replace earlier ones
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        if not problems and node.client is not ClientKind.GRPC:
            ip = self._scoping.instance_ip(node)
            problems.extend(apply_mesh_config(self._memo, self.mesh_config, node, ip, chosen))
        changes: dict[Slot, Patched] = {}
        if not problems and base is not None:
            own = self._scoping.own_service(node)
            hosts = (own.fqdn, *own.hosts) if own is not None else ()
            try:
                changes = self._filters.apply(node, base, chosen, hosts, scope.clusters)
            except TranslationError as err:
                problems.extend(p for p in err.problems if p not in problems)
        try:
            for r in self._raw.resources().values():
                chosen[(r.type_url, r.name)] = r  # raw resources replace generated ones
                changes.pop((r.type_url, r.name), None)
        except TranslationError as err:
            problems.extend(p for p in err.problems if p not in problems)
        if problems or base is None:
            raise TranslationError(problems)
        return self._assembly.consistent(node, flavor, base, chosen, changes, scope.clusters)

    def _with_providers(self, node: NodeClass, scope: Scope) -> Scope:
        """``scope`` with the services of the extension providers ``node``'s CUSTOM
        AuthorizationPolicies name: their ext_authz filters ask the server through its
        cluster (``outbound|PORT||HOST``), which a Sidecar's egress may leave out."""
        if scope.clusters is None or node.client is ClientKind.GRPC:
            return scope
        providers = self._parts.policies(node).providers
        wanted = {
            service.key
            for service in (self.mesh.service(p.service, node.namespace) for p in providers)
            if service is not None
        }
        if wanted <= scope.clusters:
            return scope
        return dataclasses.replace(scope, clusters=scope.clusters | wanted)

    def _parts_of(self, node: NodeClass, scope: Scope) -> list[Callable[[], Iterable[Resource]]]:
        """The stage *parts* of ``node``: what its kind receives besides its base, in the
        order it is laid down."""
        parts = self._parts
        style = (
            MatcherStyle.DEPRECATED if node.client is ClientKind.MOSN else MatcherStyle.STRING_MATCH
        )
        source = (
            ConfigSourceKind.REST
            if node.config_source is ConfigSourceKind.REST
            else ConfigSourceKind.ADS
        )
        caller = self._routes.caller(node.labels, node.namespace)
        out: list[Callable[[], Iterable[Resource]]] = []
        if node.client is ClientKind.GRPC:
            out.append(lambda: parts.grpc_listeners(caller, scope))
        elif node.role is Role.GATEWAY:
            out.append(lambda: parts.gateway(node, source, style))
        elif node.role is Role.SIDECAR:
            out.append(lambda: parts.inbound(node, scope, source))
            vips = parts.serves_virtual(node)
            # Virtual-address and capture listeners name the per-port route
            # configurations too: with VHDS they run the on-demand filter as well.
            vhds = (
                node.vhds
                and node.config_source is ConfigSourceKind.DELTA
                and node.client is ClientKind.ENVOY
            )
            out.append(
                lambda: parts.outbound(node.outbound_ip, source, style, caller, scope, vips, vhds)
            )
            out.append(lambda: parts.l4_listeners(node, scope))
            if node.client is ClientKind.ENVOY and self.mesh_config.dns.enabled:
                if vips:
                    out.append(
                        lambda: parts.virtual_listeners(node, scope, source, style, caller, vhds)
                    )
                if node.dns:
                    out.append(lambda: parts.dns_listener(node, scope))
            if node.client is ClientKind.ENVOY and node.capture:
                out.append(lambda: parts.capture(node, scope, source, style, caller, vhds))
        if node.locality != NO_LOCALITY:
            out.append(lambda: parts.local_assignments(node, scope))
        if self.mesh_config.mtls.enabled and node.client is not ClientKind.GRPC:
            out.append(self._mesh_identity(node))
        return out

    def _mesh_identity(self, node: NodeClass) -> Callable[[], Iterable[Resource]]:
        """A part giving ``node``'s mesh mutual TLS secrets (``mesh_tls.mesh_identity``)."""

        def identity() -> Iterable[Resource]:
            ip = self._scoping.instance_ip(node)
            return mesh_identity(node, ip, self.mesh_config.mtls, self._secrets)

        return identity
