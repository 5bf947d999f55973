"""Mesh + node class → Envoy v3 resources: pure functions, no I/O.

``MeshTranslation(mesh).snapshot_for(node_class)`` is the entry point. ``render_static``
renders a class's resources as a complete Envoy bootstrap; ``bootstrap`` and
``grpc_bootstrap`` write the configs that point Envoy and proxyless gRPC clients at xdsd.

The node classes (``xdsd.translate.node``: what serving needs) are imported with the
package; ``MeshTranslation`` and the static renderers on first use (PEP 562): the
builders are imported by the first translation, not by a start from the restart cache,
which serves without them (``docs/architecture.md``, "Restart cache").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xdsd.translate.node import (
    ClientKind,
    ConfigSourceKind,
    NodeClass,
    Role,
    node_class_from_node,
)

if TYPE_CHECKING:
    from xdsd.translate.mesh import MeshTranslation
    from xdsd.translate.static import bootstrap, grpc_bootstrap, render_static

__all__ = [
    "ClientKind",
    "ConfigSourceKind",
    "MeshTranslation",
    "NodeClass",
    "Role",
    "bootstrap",
    "grpc_bootstrap",
    "node_class_from_node",
    "render_static",
]


_LAZY = {
    "MeshTranslation": "xdsd.translate.mesh",
    "bootstrap": "xdsd.translate.static",
    "grpc_bootstrap": "xdsd.translate.static",
    "render_static": "xdsd.translate.static",
}


def __getattr__(name: str) -> Any:
    """``MeshTranslation`` and the static renderers, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
