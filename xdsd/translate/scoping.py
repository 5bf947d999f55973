"""``Scoping``: which services and ports a node class sees (stage *parts*' input).

How this works: the mesh's service ports are grouped by port number (``PortGroup`` objects,
computed once per translation, with their collision problems). A node's ``Scope`` is what
it may reach: everything, unless a Sidecar applies (``sidecar_scope``: chosen per
(namespace, labels), translated per (Sidecar, namespace), its error kept). A scope narrows
the port groups three ways, each memoized by the ``Scope`` value so that classes that see
the same services share them: the *default* per-port listeners' groups (without what an
explicit egress listener serves on that port), the *visible* groups (HTTP proxy, gRPC),
and the *explicit* listeners' groups. Each narrowed group carries its *view*: None when
nothing was left out, else the keys of its members (route configurations are keyed by
it).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from xdsd.errors import Problem, TranslationError
from xdsd.model import Mesh, Port, Resolution, ResourceKey, Service
from xdsd.model.networking import OutboundPolicy, Sidecar
from xdsd.translate.node import NodeClass, Role
from xdsd.translate.placement import PortGroup, check_port_groups, default_instance_ip, overlaps
from xdsd.translate.routes import virtual_service_index
from xdsd.translate.sidecar_scope import (
    EVERYTHING,
    EVERYTHING_REGISTRY_ONLY,
    Scope,
    scope_of,
    select_sidecar,
)

#: Port groups as a scope leaves them, each with its view (None: the whole group).
Groups = list[tuple[PortGroup, Hashable]]
#: An explicit listener that serves something: its bind address (empty: the node's
#: outbound_ip), its port group and view.
Explicit = list[tuple[str, PortGroup, Hashable]]


class Scoping:
    """The port groups of one mesh and how Sidecars narrow them (see the module
    docstring). Not thread-safe."""

    def __init__(self, mesh: Mesh, *, root_namespace: str, outbound_policy: OutboundPolicy) -> None:
        self.mesh = mesh
        self.root_namespace = root_namespace
        self.outbound_policy = outbound_policy
        self._sidecars: dict[tuple[str, tuple[tuple[str, str], ...]], Sidecar | None] = {}
        self._scopes: dict[tuple[ResourceKey, str], Scope | TranslationError] = {}
        self._scoped_groups: dict[tuple[Hashable, ...], Groups] = {}
        self._vs_index: dict[ResourceKey, Any] | None = None
        self._groups: list[PortGroup] | None = None
        self._group_index: dict[int, PortGroup] | None = None
        self._group_problems: list[Problem] | None = None
        self._forward: bool | None = None

    def own_service(self, node: NodeClass) -> Service | None:
        """The service ``node`` fronts, if the mesh defines it."""
        return self.mesh.service_by_name(node.namespace, node.service)

    def instance_ip(self, node: NodeClass) -> str:
        """The address ``node``'s inbound listeners bind: ``node.instance_ip`` when set,
        else the address of the one endpoint of its service that matches its labels
        (when there is exactly one and it is an IP literal), else ``0.0.0.0``."""
        if node.instance_ip:
            return node.instance_ip
        return default_instance_ip(self.own_service(node), node.labels)

    def port_groups(self) -> list[PortGroup]:
        """Every port number used by a service, ascending, with the service ports on it."""
        if self._groups is None:
            by_number: dict[int, list[tuple[Service, Port]]] = {}
            for service in self.mesh.services:
                for port in service.routed_ports:  # NONE TCP/TLS: by address only
                    by_number.setdefault(port.number, []).append((service, port))
            self._groups = [PortGroup(n, tuple(by_number[n])) for n in sorted(by_number)]
        return self._groups

    def forwards(self) -> bool:
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
        default_policy = self.outbound_policy
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

    def default_groups(self, scope: Scope, ip: str) -> Groups:
        """The port groups of ``scope``'s default per-port listeners on ``ip``: the
        reachable services, without those an explicit listener serves on that port, and
        without the ports whose explicit listener takes the default listener's address."""
        if scope.reachable is None and not scope.explicit:
            return [(g, None) for g in self.port_groups()]
        key: tuple[Hashable, ...] = (
            "default",
            scope,
            ip if any(e.bind for e in scope.explicit) else "",
        )
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

    def visible_groups(self, scope: Scope) -> Groups:
        """The port groups of every service ``scope`` shows (HTTP proxy, gRPC)."""
        visible = scope.visible
        if visible is None:
            return [(g, None) for g in self.port_groups()]
        key: tuple[Hashable, ...] = ("visible", visible)
        found = self._scoped_groups.get(key)
        if found is None:
            found = _filter_groups(self.port_groups(), visible, {}, set())
            self._scoped_groups[key] = found
        return found

    def explicit_groups(self, scope: Scope) -> Explicit:
        """Each explicit listener of ``scope`` that serves something: its bind address
        (empty: outbound_ip), its port group and view."""
        out: Explicit = []
        for e in scope.explicit:
            members = []
            for key in e.services:
                service = self.mesh.service_by_name(key.namespace, key.name)
                port = service.routed_port(e.port) if service is not None else None
                if service is not None and port is not None:
                    members.append((service, port))
            if members:
                out.append((e.bind, PortGroup(e.port, tuple(members)), e.services))
        return out

    def groups_by_number(self) -> dict[int, PortGroup]:
        """Every port group, by its port number."""
        if self._group_index is None:
            self._group_index = {g.number: g for g in self.port_groups()}
        return self._group_index

    def port_group_problems(self) -> list[Problem]:
        """The collisions between the ports of the mesh's port groups (computed once)."""
        if self._group_problems is None:
            self._group_problems = check_port_groups(self.port_groups())
        return self._group_problems

    # -- snapshot assembly ----------------------------------------------------------


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
