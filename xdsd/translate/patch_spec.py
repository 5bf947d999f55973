"""EnvoyFilter patches as values: parsed, selected for a node, and sorted by context.

How this works: an ``EnvoyFilter``'s patches are parsed once into ``Patch`` objects (the
patch value as a message of the type its ``applyTo`` names: ``parse_patches``).
``selected_filters`` says which EnvoyFilters apply to a node and in which order (Istio's:
priority, root namespace first, then name), ``proxy_matches`` whether a patch's
``match.proxy.metadata`` fits the node. A generated resource has a context
(``listener_context``, ``name_context``: SIDECAR_INBOUND, SIDECAR_OUTBOUND or GATEWAY),
and the patches that may change it are those of its kind's family that apply in that
context (``relevant``). ``patches`` applies them.

Pure: no I/O. ``parse_patches`` raises TranslationError naming the EnvoyFilter's file,
line and patch for a value that is not a message of its type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from xdsd.errors import Problem, TranslationError
from xdsd.model import Origin
from xdsd.model.networking import (
    ROOT_NAMESPACE,
    ApplyTo,
    ConfigPatch,
    EnvoyFilter,
    PatchContext,
    PatchOperation,
)
from xdsd.model.service import ResourceKey
from xdsd.resources.patch_values import parse_patch_value

#: What patches each kind of resource (listeners carry inline route configurations).
ROUTE_FAMILY = frozenset({ApplyTo.ROUTE_CONFIGURATION, ApplyTo.VIRTUAL_HOST, ApplyTo.HTTP_ROUTE})
LISTENER_FAMILY = (
    frozenset({ApplyTo.LISTENER, ApplyTo.FILTER_CHAIN, ApplyTo.NETWORK_FILTER, ApplyTo.HTTP_FILTER})
    | ROUTE_FAMILY
)
CLUSTER_FAMILY = frozenset({ApplyTo.CLUSTER})


@dataclass(frozen=True, slots=True)
class Patch:
    """One config patch of one EnvoyFilter, ready to apply. Compares by the patch and
    its owner (so a tuple of patches can key a memo); ``value`` is the parsed message
    (None for REMOVE), ``origin`` where the EnvoyFilter is written."""

    config: ConfigPatch
    owner: ResourceKey
    index: int
    value: Message | None = field(default=None, compare=False, repr=False)
    origin: Origin = field(default=Origin("<none>"), compare=False, repr=False)

    @property
    def apply_to(self) -> ApplyTo:
        return self.config.apply_to

    @property
    def operation(self) -> PatchOperation:
        """The operation as applied: Istio turns INSERT_* on anything but filters and
        routes into ADD."""
        op = self.config.operation
        if op in _INSERTS and self.apply_to not in _ORDERED:
            return PatchOperation.ADD
        return op

    def problem(self, message: str, field_path: str = "") -> Problem:
        """A problem at this patch (``configPatches[i]`` + ``field_path``)."""
        line = self.config.value_line or self.origin.line
        return Problem(self.origin.path, line, f"configPatches[{self.index}]{field_path}", message)


_INSERTS = frozenset(
    {PatchOperation.INSERT_BEFORE, PatchOperation.INSERT_AFTER, PatchOperation.INSERT_FIRST}
)
_ORDERED = frozenset({ApplyTo.NETWORK_FILTER, ApplyTo.HTTP_FILTER, ApplyTo.HTTP_ROUTE})


def parse_patches(envoy_filter: EnvoyFilter) -> tuple[Patch, ...]:
    """The patches of ``envoy_filter`` with their values parsed (proto3 JSON, ``@type``
    in every Any) into the message type of their ``applyTo``.

    Raises TranslationError, one problem per bad value, at ``configPatches[i].patch.value``
    with the protobuf parser's message."""
    out: list[Patch] = []
    problems: list[Problem] = []
    for i, config in enumerate(envoy_filter.patches):
        patch = Patch(config, envoy_filter.key, i, origin=envoy_filter.origin)
        data = config.value
        if data is None:
            out.append(patch)
            continue
        try:
            value = parse_patch_value(config.apply_to.value, data)
        except ValueError as err:
            problems.append(patch.problem(str(err), ".patch.value"))
            continue
        out.append(Patch(config, envoy_filter.key, i, value, envoy_filter.origin))
    if problems:
        raise TranslationError(problems)
    return tuple(out)


def selected_filters(
    filters: Iterable[EnvoyFilter],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = ROOT_NAMESPACE,
) -> tuple[EnvoyFilter, ...]:
    """The EnvoyFilters that apply to a node of ``namespace`` with ``labels``: those of the
    root namespace and of the node's namespace whose ``workloadSelector`` labels the node
    has (all of them without a selector), in Istio's order: by priority, then root
    namespace first, then by name (Istio's order for filters created at the same time: a
    file has no creation time)."""
    chosen = [
        f
        for f in filters
        if f.namespace in (root_namespace, namespace)
        and all(labels.get(k) == v for k, v in f.workload_selector)
    ]
    chosen.sort(
        key=lambda f: (f.priority, f.namespace != root_namespace, f"{f.name}.{f.namespace}")
    )
    return tuple(chosen)


def proxy_matches(patch: Patch, metadata: Mapping[str, str]) -> bool:
    """True when every ``match.proxy.metadata`` entry equals the node's."""
    return all(metadata.get(k) == v for k, v in patch.config.match.proxy_metadata)


# -- contexts ---------------------------------------------------------------------------


def listener_context(listener: Any, gateway: bool) -> PatchContext:
    """GATEWAY on a gateway; else SIDECAR_INBOUND for a listener whose traffic direction
    is INBOUND (xdsd's ``inbound|IP|PORT``), SIDECAR_OUTBOUND for the others
    (``outbound|IP|PORT``, ``outbound_http_proxy``)."""
    if gateway:
        return PatchContext.GATEWAY
    if listener.traffic_direction == base_pb2.INBOUND:
        return PatchContext.SIDECAR_INBOUND
    return PatchContext.SIDECAR_OUTBOUND


def name_context(name: str, gateway: bool) -> PatchContext:
    """The context of a cluster or route configuration by its name: ``inbound|…`` is
    SIDECAR_INBOUND, anything else SIDECAR_OUTBOUND (GATEWAY on a gateway)."""
    if gateway:
        return PatchContext.GATEWAY
    return (
        PatchContext.SIDECAR_INBOUND
        if name.startswith("inbound|")
        else (PatchContext.SIDECAR_OUTBOUND)
    )


def in_context(patch: Patch, context: PatchContext) -> bool:
    """True when ``patch`` applies in ``context`` (its own, or ANY)."""
    wanted = patch.config.match.context
    return wanted is PatchContext.ANY or wanted is context


def relevant(
    patches: Sequence[Patch], family: frozenset[ApplyTo], context: PatchContext
) -> tuple[Patch, ...]:
    """The patches of ``family`` that apply in ``context``, in order (what a resource's
    patched form depends on, hence a memo key)."""
    return tuple(p for p in patches if p.apply_to in family and in_context(p, context))
