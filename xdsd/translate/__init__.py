"""Mesh + node class → Envoy v3 resources: pure functions, no I/O.

``MeshTranslation(mesh).snapshot_for(node_class)`` is the entry point. ``render_static``
renders a class's resources as a complete Envoy bootstrap; ``bootstrap`` and
``grpc_bootstrap`` write the configs that point Envoy and proxyless gRPC clients at xdsd.
"""

from xdsd.translate.mesh import MeshTranslation
from xdsd.translate.node import (
    ClientKind,
    ConfigSourceKind,
    NodeClass,
    Role,
    node_class_from_node,
)
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
