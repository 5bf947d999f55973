"""Sidecar scoping: which Istio ``Sidecar`` applies to a node, and what it lets it reach.

How this works: ``select_sidecar`` picks a node's Sidecar by Istio's rule (a Sidecar of
the node's namespace whose ``workloadSelector`` labels are all among the node's labels,
first by name; else the namespace's Sidecar without selector; else the root namespace's
Sidecar without selector). ``scope_of`` turns it into a ``Scope``: the set of services
the node may reach, a value that compares equal for any two nodes that see the same set,
so everything built from it (route configurations, listeners, the base of clusters and
endpoint assignments) is memoized per distinct set, not per node.

Semantics follow Istio's ``SidecarScope`` (pilot/pkg/model/sidecar.go):

- An egress host is ``namespace/dnsName``: ``.`` is the Sidecar's namespace (the node's,
  for a root-namespace Sidecar), ``*`` any namespace; ``dnsName`` is a name of the
  service, ``*`` (everything) or ``*.suffix``. A leading ``~`` on the namespace excludes
  what it matches (``~/*`` imports nothing). xdsd matches ``dnsName`` against every name
  of a service (``reviews``, ``reviews.ns``, the FQDN, extra ``hosts``), Istio against its
  hostname only: ``./reviews`` works here as ``./reviews.ns.svc.cluster.local`` does.
- An egress listener without ``port`` (at most one, the last) is the catch-all: its
  services get the default listeners (one per port on ``outbound_ip``). A listener with a
  ``port`` imports the matched services that have that port, and serves them on its own
  listener on ``bind`` (default ``outbound_ip``) instead of the default listener of the
  port; when that address is the default listener's, the default listener is not made
  (Istio skips a catch-all listener that conflicts with an explicit one).
- A Sidecar without egress imports ``*/*``.
- The clusters of a node are those of the services it reaches plus those their
  VirtualServices route or mirror to (Istio adds VirtualService destinations to the
  scope's services for CDS, not to its virtual hosts).
- Every HTTP service the node reaches is in its HTTP proxy's route configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from xdsd.errors import Problem
from xdsd.model import Mesh, ResourceKey, Service, VirtualService
from xdsd.model.networking import EgressListener, OutboundPolicy, Sidecar

WILDCARD_NAMESPACE = "*"
CURRENT_NAMESPACE = "."
EXCLUDE_PREFIX = "~"
#: What a Sidecar without egress listeners imports (Istio's default).
IMPORT_EVERYTHING = EgressListener(("*/*",))


def select_sidecar(
    sidecars: Sequence[Sidecar],
    namespace: str,
    labels: tuple[tuple[str, str], ...],
    root_namespace: str,
) -> Sidecar | None:
    """The Sidecar that applies to a node in ``namespace`` with ``labels`` (Istio's
    order; ``sidecars`` sorted by key, so among several that match, the first by name
    wins, where Istio takes the oldest). None when no Sidecar applies."""
    own = [s for s in sidecars if s.namespace == namespace]
    for sidecar in own:
        if sidecar.workload_selector and all(p in labels for p in sidecar.workload_selector):
            return sidecar
    for sidecar in own:
        if not sidecar.workload_selector:
            return sidecar
    for sidecar in sidecars:
        if sidecar.namespace == root_namespace and not sidecar.workload_selector:
            return sidecar
    return None


@dataclass(frozen=True, slots=True)
class ExplicitListener:
    """An egress listener with a port: the services it serves on ``port`` at ``bind``
    (empty: the node's ``outbound_ip``), in key order."""

    port: int
    bind: str
    services: tuple[ResourceKey, ...]
    #: The listener's protocol as written is HTTP-like (routes by Host).
    http: bool


@dataclass(frozen=True, slots=True)
class Scope:
    """What a node may reach. ``reachable`` (services with default listeners and virtual
    hosts) and ``clusters`` (services whose clusters it receives) are None for every
    service of the mesh. ``registry_only`` is a REGISTRY_ONLY policy (the Sidecar's, else
    the mesh's default): requests
    for a host no reachable service answers to get a 502 from a catch-all virtual host."""

    reachable: frozenset[ResourceKey] | None = None
    clusters: frozenset[ResourceKey] | None = None
    explicit: tuple[ExplicitListener, ...] = ()
    registry_only: bool = False

    @property
    def visible(self) -> frozenset[ResourceKey] | None:
        """Every service with a virtual host somewhere (None: all)."""
        if self.reachable is None:
            return None
        return self.reachable.union(*(e.services for e in self.explicit))

    def shows(self, key: ResourceKey) -> bool:
        """True when the service ``key`` has a virtual host or listener for the node."""
        visible = self.visible
        return visible is None or key in visible


#: The scope of a node no Sidecar applies to: everything.
EVERYTHING = Scope()
#: The same under a mesh-wide REGISTRY_ONLY default (``MeshConfig``).
EVERYTHING_REGISTRY_ONLY = Scope(registry_only=True)


@dataclass(frozen=True, slots=True)
class _Hosts:
    """The egress hosts of one listener, by namespace (``*`` for any)."""

    exact: Mapping[str, frozenset[str]]
    wildcard: Mapping[str, tuple[str, ...]]
    excluded: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, hosts: Iterable[str], namespace: str) -> _Hosts:
        exact: dict[str, set[str]] = {}
        wildcard: dict[str, list[str]] = {}
        excluded: dict[str, list[str]] = {}
        for host in hosts:
            ns, sep, name = host.partition("/")
            if not sep:
                continue  # refused by the parser
            exclude = ns.startswith(EXCLUDE_PREFIX)
            if exclude:
                ns = ns[len(EXCLUDE_PREFIX) :] or WILDCARD_NAMESPACE
            if ns == CURRENT_NAMESPACE:
                ns = namespace
            if exclude:
                excluded.setdefault(ns, []).append(name)
            elif name.startswith("*"):
                wildcard.setdefault(ns, []).append(name)
            else:
                exact.setdefault(ns, set()).add(name)
        return cls(
            {k: frozenset(v) for k, v in exact.items()},
            {k: tuple(v) for k, v in wildcard.items()},
            {k: tuple(v) for k, v in excluded.items()},
        )

    def imports(self, service: Service) -> bool:
        """True when these hosts import ``service`` (and do not exclude it)."""
        names = service.host_names
        for ns in (service.namespace, WILDCARD_NAMESPACE):
            patterns = self.excluded.get(ns)
            if patterns and any(matches(n, p) for n in names for p in patterns):
                return False
        for ns in (service.namespace, WILDCARD_NAMESPACE):
            exact = self.exact.get(ns)
            if exact and any(n in exact for n in names):
                return True
            patterns = self.wildcard.get(ns)
            if patterns and any(matches(n, p) for n in names for p in patterns):
                return True
        return False


def matches(name: str, pattern: str) -> bool:
    """True when host ``name`` (possibly itself a ``*.`` wildcard) is within ``pattern``:
    ``*`` matches everything, ``*.example.com`` every name ending in ``.example.com``,
    anything else only itself."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    return name == pattern


def scope_of(
    mesh: Mesh,
    sidecar: Sidecar,
    namespace: str,
    rules: Mapping[ResourceKey, VirtualService],
    default_policy: OutboundPolicy = OutboundPolicy.ALLOW_ANY,
) -> tuple[Scope, list[Problem]]:
    """The scope ``sidecar`` gives a node in ``namespace`` (see the module doc);
    ``rules`` is the VirtualService of each service (``routes.virtual_service_index``);
    ``default_policy`` is the mesh's outbound traffic policy, used when the Sidecar sets
    none.
    Also returns the problems that stop it being translated (an explicit listener whose
    protocol disagrees with a service it serves), on the Sidecar's file."""
    problems: list[Problem] = []
    reachable: set[ResourceKey] = set()
    explicit: list[ExplicitListener] = []
    for index, listener in enumerate(sidecar.egress or (IMPORT_EVERYTHING,)):
        hosts = _Hosts.of(listener.hosts, namespace)
        matched = [s for s in mesh.services if hosts.imports(s)]
        if listener.port is None:
            reachable.update(s.key for s in matched)
            continue
        number = listener.port.number
        http = listener.port.protocol.is_http
        members: list[ResourceKey] = []
        for service in matched:
            port = service.port(number)
            if port is None:
                continue
            if port.protocol.is_http != http:
                problems.append(
                    Problem(
                        sidecar.origin.path,
                        sidecar.origin.line,
                        f"egress[{index}].port.protocol",
                        f"{listener.port.protocol_name} disagrees with port {number} of "
                        f"{service.fqdn} ({port.protocol.value}): a listener either routes "
                        "HTTP by Host or proxies TCP",
                    )
                )
                continue
            members.append(service.key)
        explicit.append(ExplicitListener(number, listener.bind, tuple(members), http))
    visible = reachable.union(*(e.services for e in explicit))
    clusters = set(visible)
    for key in visible:
        vs = rules.get(key)
        if vs is not None:
            clusters.update(_destinations(mesh, vs))
    everything = len(mesh.services)
    policy = sidecar.outbound_policy or default_policy
    registry_only = policy is OutboundPolicy.REGISTRY_ONLY
    scope = Scope(
        None if len(reachable) == everything else frozenset(reachable),
        None if len(clusters) == everything else frozenset(clusters),
        tuple(explicit),
        registry_only,
    )
    return scope, problems


def _destinations(mesh: Mesh, vs: VirtualService) -> Iterable[ResourceKey]:
    """The services ``vs`` routes or mirrors to (known ones only)."""
    for http in vs.http:
        mirrors = (m.destination for m in http.mirrors)
        for dest in (*(rd.destination for rd in http.route), *mirrors):
            target = mesh.service(dest.host, vs.namespace)
            if target is not None:
                yield target.key
    for rule in (*vs.tcp, *vs.tls):
        for rd in rule.route:
            target = mesh.service(rd.destination.host, vs.namespace)
            if target is not None:
                yield target.key
