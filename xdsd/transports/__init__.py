"""Transports: the I/O edges that speak xDS to clients (gRPC streams, REST-JSON polls).

Both share the sans-I/O protocol cores in ``xdsd.protocol`` and reach the mesh only through
a ``SnapshotSource``, which the app provides.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol

from xdsd.cache.cache import SnapshotCache
from xdsd.cache.snapshot import Snapshot


class SnapshotSource(Protocol):
    """What a transport needs from the app: classify a client and get its snapshot."""

    @property
    def cache(self) -> SnapshotCache[Any]:
        """The snapshot cache streams subscribe to and record client status in."""
        ...

    def classify(self, node: Any, transport: str) -> Hashable:
        """The node-class key of an xDS ``Node`` arriving over ``transport``
        (``ads``, ``grpc``, ``rest``). Raises ProtocolError for a node xdsd cannot serve."""
        ...

    def snapshot(self, key: Hashable) -> Snapshot | None:
        """The current snapshot for ``key``, built on first use and kept current in the
        cache from then on; None while no configuration has loaded yet. Raises
        TranslationError when the mesh cannot be translated for this class."""
        ...


class StreamRegistrar(Protocol):
    """What registers a gRPC stream's node as a workload (``xdsd.workloads``)."""

    def attach(self, node: Any, key: Hashable) -> Callable[[], None] | None:
        """Called when a stream opens, after its node was authorized and classified
        (``key``): None when the node does not register, else what to call when the
        stream ends. Raises ``limits.Refused`` for a refused registration (the stream
        ends with its status)."""
        ...
