"""The daemon: the one place that wires sources, translation, cache and transports.

``MeshState`` owns the current configuration: it reloads the directory (keeping the last
good mesh when a load fails), builds a snapshot per node class on first use and rebuilds
the snapshots of every watched class after each successful reload. ``serve`` runs the
transports and the watcher until a stop signal; SIGHUP forces a reload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Hashable
from typing import Any

from grpclib.server import Server

from xdsd.admin import AdminViews, start_admin
from xdsd.cache.cache import SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import ConfigError, Problem, TranslationError
from xdsd.protocol import ProtocolError
from xdsd.settings import Address, Settings
from xdsd.sources import LoadResult, load_directory
from xdsd.sources.watch import ConfigWatcher
from xdsd.translate import ConfigSourceKind, MeshTranslation, NodeClass, node_class_from_node
from xdsd.transports.grpc import DiscoveryServices

log = logging.getLogger(__name__)

_SOURCES = {"ads": ConfigSourceKind.ADS, "grpc": ConfigSourceKind.ADS,
            "rest": ConfigSourceKind.REST, "delta": ConfigSourceKind.DELTA}  # fmt: skip


class MeshState:
    """The current mesh, its translation, and the snapshots served from it."""

    def __init__(self, config_dir: str, cache: SnapshotCache[NodeClass] | None = None) -> None:
        self.config_dir = config_dir
        self._cache: SnapshotCache[NodeClass] = cache if cache is not None else SnapshotCache()
        self.loaded: LoadResult | None = None
        self.translation: MeshTranslation | None = None
        self.errors: tuple[Problem, ...] = ()
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def cache(self) -> SnapshotCache[NodeClass]:
        """The snapshot cache (node class → snapshot, client status)."""
        return self._cache

    def reload(self) -> bool:
        """Load the directory again. On success, publish new snapshots for every class a
        client watches and return True; on failure log every error with file:line, keep
        serving the last good configuration and return False."""
        started = time.perf_counter()
        try:
            result = load_directory(self.config_dir)
        except ConfigError as e:
            self.failed_reloads += 1
            self.errors = e.problems
            for problem in e.problems:
                log.error("config: %s", problem)
            log.error(
                "config refused (%d errors); still serving the last good configuration",
                len(e.problems),
            )
            return False
        self.errors = ()
        for warning in result.warnings:
            log.warning("config: %s", warning)
        if self.loaded is not None and result.mesh == self.loaded.mesh:
            log.info("config reloaded: no change")
            self.loaded = result
            return False
        self.loaded = result
        self.translation = MeshTranslation(result.mesh, previous=self.translation)
        self.reloads += 1
        changed = 0
        for key in self._cache.keys():  # noqa: SIM118 - a cache, not a dict
            if self._cache.watcher_count(key) == 0:
                self._cache.discard(key)
                continue
            try:
                snapshot = self.translation.snapshot_for(key)
            except TranslationError as e:
                log.error("node class %s cannot be configured: %s", key, e)
                continue
            if self._cache.set(key, snapshot):
                changed += 1
        log.info(
            "config loaded: %d services, %d rules; %d classes updated in %.1f ms",
            len(result.mesh.services),
            len(result.mesh.virtual_services) + len(result.mesh.destination_rules),
            changed,
            (time.perf_counter() - started) * 1000,
        )
        return True

    def classify(self, node: Any, transport: str) -> Hashable:
        """The node class of an xDS node (see ``SnapshotSource.classify``)."""
        if not node.cluster:
            raise ProtocolError(
                "INVALID_ARGUMENT",
                "node.cluster must name the service this proxy fronts "
                "(xdsd bootstrap --service NAME sets it)",
            )
        return node_class_from_node(
            node, config_source=_SOURCES.get(transport, ConfigSourceKind.ADS)
        )

    def snapshot(self, key: Hashable) -> Snapshot | None:
        """The snapshot for ``key``, built on first use (see ``SnapshotSource.snapshot``)."""
        assert isinstance(key, NodeClass)
        found = self._cache.get(key)
        if found is not None or self.translation is None:
            return found
        snapshot = self.translation.snapshot_for(key)
        self._cache.set(key, snapshot)
        return snapshot


async def serve(settings: Settings, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:  # fmt: skip
    """Run xdsd until ``stop`` is set (or SIGTERM/SIGINT). ``ready`` is set once the
    listeners are bound."""
    stop = stop or asyncio.Event()
    state = MeshState(settings.config_dir)
    state.reload()
    loop = asyncio.get_running_loop()
    reload_lock = asyncio.Lock()

    async def reload(_paths: set[str] | None = None) -> None:
        async with reload_lock:
            state.reload()

    background: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        log.info("SIGHUP: reloading %s", settings.config_dir)
        task = loop.create_task(reload())
        background.add(task)
        task.add_done_callback(background.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)

    grpc_server: Server | None = None
    if settings.grpc is not None:
        grpc_server = Server([DiscoveryServices(state)])
        await grpc_server.start(
            settings.grpc.host, settings.grpc.port, backlog=settings.grpc_backlog
        )
        log.info("gRPC xDS listening on %s", _bound(grpc_server, settings.grpc))
    rest_runner = None
    if settings.rest is not None:
        from xdsd.transports.rest import start_rest

        rest_runner = await start_rest(state, settings.rest, long_poll=settings.rest_long_poll)
        log.info("REST xDS listening on %s", settings.rest)
    admin_runner = None
    views = AdminViews(
        state.cache, errors=lambda: state.errors, loaded=lambda: state.loaded is not None
    )
    if settings.admin is not None:
        admin_runner = await start_admin(views, settings.admin)
        log.info("admin listening on %s", settings.admin)
    views.listening = True
    watcher = ConfigWatcher(
        settings.config_dir,
        reload,
        quiet_period=settings.quiet_period,
        max_delay=settings.max_delay,
    )
    watch_task = asyncio.create_task(watcher.run(stop))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        if grpc_server is not None:
            grpc_server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(grpc_server.wait_closed(), 5)
        for runner in (rest_runner, admin_runner):
            if runner is not None:
                await runner.cleanup()


def _bound(server: Server, wanted: Address) -> str:
    sockets = getattr(server, "_server", None)
    if sockets is not None and sockets.sockets:
        host, port = sockets.sockets[0].getsockname()[:2]
        return f"{host}:{port}"
    return str(wanted)


def run_server(args: argparse.Namespace) -> int:
    """``xdsd serve``: settings from file then flags, then run until stopped."""
    settings = Settings.from_file(args.settings) if args.settings else Settings()
    overrides: dict[str, Any] = {}
    for name in ("config_dir", "grpc", "rest", "admin"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = settings.merged(overrides, source="command line")
    asyncio.run(serve(settings))
    return 0
