"""``EnvoyFilters``: how the EnvoyFilters that select a class patch its resources (stage
*filters*).

How this works: the EnvoyFilters of the root namespace and of the node's namespace whose
selector matches its labels apply, in order (``patch_spec.selected_filters``; none to a
proxyless gRPC client, as in Istio), each parsed once per translation. They patch what
the class chose besides its base in place, and the base's clusters, whose changes are
returned by slot for ``consistent`` to lay over the base like a raw resource would. A
patched resource is memoized by (resource, context, the patches that may touch it, the
inbound hosts), through the translation's ``memo.Memo``, so classes with the same
applicable filters share it and the next translation reuses it; a class no EnvoyFilter
selects gets the shared resources untouched. The base's patched clusters are computed once
per (flavor, services of the base, patches). ADD patches create listeners and clusters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import NamedTuple

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, TranslationError
from xdsd.model import Mesh, ResourceKey
from xdsd.model.networking import ApplyTo, EnvoyFilter, PatchContext, PatchOperation
from xdsd.resources import CLUSTER, LISTENER, ROUTE, SHORT_NAMES, Resource
from xdsd.translate.clusters import cluster_flavor
from xdsd.translate.memo import Memo
from xdsd.translate.node import ClientKind, NodeClass, Role
from xdsd.translate.patch_spec import (
    CLUSTER_FAMILY,
    LISTENER_FAMILY,
    ROUTE_FAMILY,
    Patch,
    listener_context,
    name_context,
    parse_patches,
    proxy_matches,
    relevant,
    selected_filters,
)
from xdsd.translate.patches import (
    added,
    added_value,
    could_patch_cluster,
    patch_cluster,
    patch_listener,
    patch_route_configuration,
)

#: (type URL, name) of a resource in a snapshot.
Slot = tuple[str, str]


class Patched(NamedTuple):
    """A resource after patching and the patches that changed it."""

    #: The patched resource (None: a patch removed it).
    resource: Resource | None
    applied: tuple[Patch, ...]


class EnvoyFilters:
    """The EnvoyFilter patches of one mesh (see the module docstring). Not thread-safe."""

    def __init__(self, mesh: Mesh, *, root_namespace: str, memo: Memo) -> None:
        self.mesh = mesh
        self.root_namespace = root_namespace
        self._memo = memo
        self._filter_patches: dict[EnvoyFilter, tuple[Patch, ...] | TranslationError] = {}
        self._base_patches: dict[tuple[Hashable, ...], dict[Slot, Patched]] = {}

    def node_patches(self, node: NodeClass) -> tuple[Patch, ...]:
        """The patches of the EnvoyFilters that select ``node``, in the order they apply
        (see ``patch_spec.selected_filters``), without those whose ``match.proxy.metadata``
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

    def apply(
        self,
        node: NodeClass,
        base: Snapshot,
        chosen: dict[Slot, Resource],
        hosts: tuple[str, ...],
        base_scope: frozenset[ResourceKey] | None = None,
    ) -> dict[Slot, Patched]:
        """Patch ``chosen`` (the class's generated resources, in place) and the base's
        clusters with the EnvoyFilters that select ``node``; add what ADD patches create.
        ``hosts`` are the names of the node's own service (what an inbound cluster patch
        may match). Returns what changed, by slot: the new resource (None: removed) and
        the patches that made it, for ``consistent`` and for messages. Raises
        TranslationError for a patch that cannot apply."""
        patches = self.node_patches(node)
        if not patches:
            return {}
        gateway = node.role is Role.GATEWAY
        changes: dict[Slot, Patched] = {}
        for slot, resource in list(chosen.items()):
            result = self._patched_resource(resource, gateway, patches, hosts)
            if result.resource is not resource:
                changes[slot] = result
        for slot, result in self._patched_base(node, base, gateway, patches, base_scope).items():
            if slot not in chosen:
                changes[slot] = result
        for slot, result in changes.items():
            if result.resource is None:
                chosen.pop(slot, None)
            else:
                chosen[slot] = result.resource
        problems: list[Problem] = []
        contexts = (
            (PatchContext.GATEWAY,)
            if gateway
            else (PatchContext.SIDECAR_INBOUND, PatchContext.SIDECAR_OUTBOUND)
        )
        for kind, type_url in ((ApplyTo.LISTENER, LISTENER), (ApplyTo.CLUSTER, CLUSTER)):
            for message, patch in added(kind, contexts, patches):
                slot = (type_url, message.name)
                noun = SHORT_NAMES[type_url][:-1]
                if not message.name:
                    problems.append(patch.problem(f"ADD needs a {noun} name", ".patch.value.name"))
                    continue
                exists = slot in chosen or (
                    message.name in base.get(type_url)
                    and (slot not in changes or changes[slot].resource is not None)
                )
                if exists:
                    problems.append(
                        patch.problem(
                            f"adds {noun} {message.name!r}, which the node already has: MERGE "
                            "into it, or REMOVE it first",
                            ".patch.value.name",
                        )
                    )
                    continue
                resource = self._memo.resource(added_value, patch)
                chosen[slot] = resource
                changes[slot] = Patched(resource, (patch,))
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
                return Patched(resource, ())
        else:
            return Patched(resource, ())
        mine = relevant(patches, family, context)
        if not mine:
            return Patched(resource, ())
        scope = tuple(hosts) if resource.name.startswith("inbound|") else ()
        found = self._memo.get(patch_resource, resource, context, mine, scope)
        # Patches compare by value: name the current ones (their files may have moved).
        current = {p: p for p in mine}
        applied = tuple(current.get(p, p) for p in found.applied)
        if found.resource is not None and found.resource.digest == resource.digest:
            return Patched(resource, applied)
        return Patched(found.resource, applied)

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
        key = (cluster_flavor(node), base_scope, gateway, mine)
        found = self._base_patches.get(key)
        if found is None:
            found = {}
            for name, resource in base.get(CLUSTER).items():
                if not could_patch_cluster(name, (), mine):
                    continue
                result = self._patched_resource(resource, gateway, mine, ())
                if result.resource is not resource:
                    found[(CLUSTER, name)] = result
            self._base_patches[key] = found
        return found

    # -- shared resources -----------------------------------------------------------


def patch_resource(
    resource: Resource, context: PatchContext, patches: tuple[Patch, ...], hosts: tuple[str, ...]
) -> Patched:
    """``resource`` (a listener, route configuration or cluster) after ``patches`` in
    ``context`` (``hosts``: the inbound service's names an inbound cluster match may
    name): itself when no patch applies or the result encodes the same (a memo build)."""
    message = resource.message
    if resource.type_url == LISTENER:
        new, applied = patch_listener(message, context, patches)
    elif resource.type_url == ROUTE:
        new, applied = patch_route_configuration(message, context, patches)
    else:
        new, applied = patch_cluster(message, context, patches, hosts)
    if not applied:
        return Patched(resource, ())
    if new is None:
        return Patched(None, applied)
    patched = Resource.of(resource.name, new)
    return Patched(resource if patched.digest == resource.digest else patched, applied)
