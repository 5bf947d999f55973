"""The status conditions of Gateway API objects, the file way: where each is and how the
views show it.

Kubernetes writes ``status.conditions`` back into the objects; xdsd cannot write into
the operator's files, so each ``Condition`` the conversion found is placed at its
object's file and line (the line of the ``parentRefs[N]`` or listener it is about when
recorded) and shown by ``xdsd validate`` (``condition_line``: one line per condition
that does not hold, then ``summary``), ``/debug/errors`` and the status page
(``condition_json``, fed to the admin server by the daemon's ``gateway_status`` hook).
A condition *holds* when it is in its good state: True, except ``Conflicted``, whose
good state is False. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xdsd.model.gateway_api import (
    BackendTLSPolicy,
    Condition,
    GatewayAPI,
    GatewayClass,
    ReferenceGrant,
    Route,
)
from xdsd.model.mesh import Mesh
from xdsd.model.service import FieldLines, Origin, ResourceKey
from xdsd.sources.gateway_api.common import field_line

#: Kinds as the API names them, where the model's key differs.
_KIND_NAMES = {"KubeGateway": "Gateway"}
#: The condition type whose good state is False.
_GOOD_WHEN_FALSE = ("Conflicted",)


@dataclass(frozen=True, slots=True)
class PlacedCondition:
    """A condition at the file and line of what it is about."""

    path: str
    line: int
    condition: Condition

    @property
    def holds(self) -> bool:
        """True when the condition is in its good state."""
        c = self.condition
        return c.status != (c.type in _GOOD_WHEN_FALSE)


def mesh_conditions(mesh: Mesh) -> tuple[PlacedCondition, ...]:
    """The conditions the loader kept on ``mesh``, placed (``place``)."""
    return place(mesh.gateway_conditions, mesh.gateway_api)


def object_name(key: ResourceKey) -> str:
    """``HTTPRoute ns/name`` (``Gateway`` for a Gateway API Gateway; a GatewayClass,
    cluster-scoped, without namespace)."""
    kind = _KIND_NAMES.get(key.kind, key.kind)
    return f"{kind} {key.namespace}/{key.name}" if key.namespace else f"{kind} {key.name}"


def place(conditions: Iterable[Condition], api: GatewayAPI) -> tuple[PlacedCondition, ...]:
    """Each of ``conditions`` at its object's file and line (the origin's first line, or
    the line of its scope's field when recorded), in the order given."""
    found: dict[ResourceKey, tuple[Origin, FieldLines, tuple[str, ...]]] = {}
    for gw in api.gateways:
        found[gw.key] = (gw.origin, gw.lines, tuple(li.name for li in gw.listeners))
    objects: tuple[GatewayClass | Route | ReferenceGrant | BackendTLSPolicy, ...] = (
        *api.classes,
        *api.routes,
        *api.grants,
        *api.backend_tls,
    )
    for obj in objects:
        found[obj.key] = (obj.origin, obj.lines, ())
    out = []
    for c in conditions:
        origin, lines, listeners = found.get(c.target, (Origin("<gateway-api>"), (), ()))
        out.append(PlacedCondition(origin.path, _line(c.scope, origin, lines, listeners), c))
    return tuple(out)


def _line(scope: str, origin: Origin, lines: FieldLines, listeners: Sequence[str]) -> int:
    """The line of ``scope`` (``parentRefs[0]``, ``listeners[NAME]``) in ``lines``."""
    field = scope
    if scope.startswith("listeners[") and scope.endswith("]"):
        name = scope[len("listeners[") : -1]
        if name in listeners:
            field = f"listeners[{listeners.index(name)}]"
    if not field:
        return origin.line
    return field_line(lines, field, origin.line)


def condition_line(placed: PlacedCondition) -> str:
    """``FILE:LINE: HTTPRoute ns/name: parentRefs[0]: Accepted=False
    NotAllowedByListeners: message`` (no scope part for the object as a whole, no
    message part without one)."""
    c = placed.condition
    where = f"{placed.path}:{placed.line}" if placed.line else placed.path
    parts = [where, object_name(c.target)]
    if c.scope:
        parts.append(c.scope)
    parts.append(f"{c.type}={'True' if c.status else 'False'} {c.reason}")
    if c.message:
        parts.append(c.message)
    return ": ".join(parts)


def summary(placed: Sequence[PlacedCondition]) -> str:
    """``Gateway API status: 3 objects, 7 conditions, 1 not met`` ("" for none)."""
    if not placed:
        return ""
    objects = len({p.condition.target for p in placed})
    failing = sum(1 for p in placed if not p.holds)
    return (
        f"Gateway API status: {objects} object{'s' if objects != 1 else ''}, "
        f"{len(placed)} condition{'s' if len(placed) != 1 else ''}, {failing} not met"
    )


def condition_json(placed: PlacedCondition) -> dict[str, Any]:
    """A condition as ``/debug/errors`` and the status page show it: ``severity``
    ``condition``, ``object``, ``scope``, ``type``, ``status`` (``"True"``/``"False"``,
    as Kubernetes writes it), ``reason``, ``message``, ``holds``, ``path``, ``line``,
    and ``text`` (``condition_line``)."""
    c = placed.condition
    return {
        "severity": "condition",
        "object": object_name(c.target),
        "scope": c.scope,
        "type": c.type,
        "status": "True" if c.status else "False",
        "reason": c.reason,
        "message": c.message,
        "holds": placed.holds,
        "path": placed.path,
        "line": placed.line,
        "text": condition_line(placed),
    }
