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
import gc
import logging
import signal
import time
from collections.abc import Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from grpclib.server import Server

from xdsd import __version__
from xdsd.admin import AdminViews, start_admin
from xdsd.admin.metrics import Metrics
from xdsd.cache.cache import SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import ConfigError, Problem, TranslationError, UsageError
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.protocol import ProtocolError
from xdsd.settings import Address, Settings
from xdsd.sources import DirectoryLoader, LoadResult
from xdsd.sources.watch import ConfigWatcher
from xdsd.translate import ConfigSourceKind, MeshTranslation, NodeClass, node_class_from_node
from xdsd.transports.grpc import DiscoveryServices

if TYPE_CHECKING:
    from xdsd.transports.grpc_aio import AioServer

log = logging.getLogger(__name__)

_SOURCES = {"ads": ConfigSourceKind.ADS, "grpc": ConfigSourceKind.ADS,
            "rest": ConfigSourceKind.REST, "delta": ConfigSourceKind.DELTA}  # fmt: skip


class MeshState:
    """The current mesh, its translation, and the snapshots served from it."""

    def __init__(
        self,
        config_dir: str,
        cache: SnapshotCache[NodeClass] | None = None,
        *,
        root_namespace: str = ROOT_NAMESPACE,
    ) -> None:
        self.config_dir = config_dir
        #: Istio's root namespace: where Sidecars without selector apply mesh-wide.
        self.root_namespace = root_namespace
        self._cache: SnapshotCache[NodeClass] = cache if cache is not None else SnapshotCache()
        self._loader = DirectoryLoader(config_dir)
        self.loaded: LoadResult | None = None
        self.translation: MeshTranslation | None = None
        self.errors: tuple[Problem, ...] = ()
        #: The warnings of the last load attempt (refused or not).
        self.warnings: tuple[Problem, ...] = ()
        self.reloads = 0
        self.failed_reloads = 0
        #: Seconds per phase of the last reload that loaded the directory: ``list``,
        #: ``parse`` (reading and parsing changed files), ``check`` (cross-checks),
        #: ``translate`` and ``snapshot`` (building and checking the watched classes').
        self.last_timings: dict[str, float] = {}

    @property
    def cache(self) -> SnapshotCache[NodeClass]:
        """The snapshot cache (node class → snapshot, client status)."""
        return self._cache

    def reload(self, changed: Iterable[str] | None = None) -> bool:
        """Load the directory again. On success, publish new snapshots for every class a
        client watches and return True; on failure log every error with file:line, keep
        serving the last good configuration and return False (also when nothing changed).

        ``changed`` names the paths known to have changed (the watcher's batch): only
        those files, new ones and ones that had errors are read again. None (SIGHUP, a
        forced reload) checks every file by stat. Either way the result is what a cold
        load of the directory gives.
        """
        return self.apply(self.load(changed))

    def load(
        self, changed: Iterable[str] | None = None, *, exclusive: bool = True
    ) -> LoadResult | ConfigError:
        """The first half of ``reload``: read and check the directory, touching nothing
        that is served (safe to run in a worker thread while the loop serves, with
        ``exclusive=False``; one load at a time).

        ``exclusive``: nothing else runs in the process meanwhile, so everything allocated
        during the load is the load's own (see ``_building``)."""
        try:
            with _building(exclusive=exclusive):
                return self._loader.load(changed)
        except ConfigError as e:
            return e

    def apply(self, result: LoadResult | ConfigError) -> bool:
        """The second half of ``reload``, on the serving thread: keep the last good
        configuration on an error, else translate and publish (see ``reload``)."""
        with _building():
            return self._apply(result)

    def _apply(self, result: LoadResult | ConfigError) -> bool:
        started = time.perf_counter()
        if isinstance(result, ConfigError):
            e = result
            self.failed_reloads += 1
            self.errors = e.problems
            self.warnings = e.warnings
            for problem in e.problems:
                log.error("config: %s", problem)
            log.error(
                "config refused (%d errors); still serving the last good configuration",
                len(e.problems),
            )
            return False
        self.errors = ()
        self.warnings = tuple(result.warnings)
        for warning in result.warnings:
            log.warning("config: %s", warning)
        if self.loaded is not None and result.mesh == self.loaded.mesh:
            log.info("config reloaded: no change")
            self.loaded = result
            return False
        self.loaded = result
        self.translation = MeshTranslation(
            result.mesh, previous=self.translation, root_namespace=self.root_namespace
        )
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
        self.last_timings = {**result.timings, **self.translation.timings}
        log.info(
            "config loaded: %d services, %d rules (%d files read); %d classes updated; %.1f ms: %s",
            len(result.mesh.services),
            len(result.mesh.virtual_services) + len(result.mesh.destination_rules),
            result.reread,
            changed,
            (sum(result.timings.values()) + time.perf_counter() - started) * 1000,
            ", ".join(f"{k} {v * 1000:.1f}" for k, v in self.last_timings.items()),
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
        with _building():  # the first class of a flavor builds every cluster of the mesh
            snapshot = self.translation.snapshot_for(key)
            self._cache.set(key, snapshot)
        return snapshot


@contextlib.contextmanager
def _building(*, exclusive: bool = True) -> Iterator[None]:
    """Keep the cyclic garbage collector out of a build, and its survivors out of its
    sight afterwards.

    How this works: a large mesh's build creates millions of objects that nearly all
    survive. A collection during the build walks all of them again and again (a sixth of
    a cold build of 10,000 services), and so does every full collection later (half a
    second and more; one fell due every few reloads, making the one-file reload's p99 ten
    times its median). So the collector is paused (reference counting still frees what
    dies) and at the end what is alive is frozen (``gc.freeze()``: kept out of every
    later collection). Before the build, the young generations are collected: what was
    allocated since the last build (the serving's garbage) is looked at once as usual.

    At the end, when the build had the process to itself (``exclusive``: the daemon's
    event loop thread, or a load before serving starts), its survivors are frozen without
    being walked: the build creates no reference cycles (the model, the loader, the
    translation and resources hold none; ``tests/test_app.py`` checks that a cold build,
    a refused reload and incremental reloads leave no cyclic garbage), so a walk would
    find nothing to free, and it costs as much as a tenth of a cold build. A load in a
    worker thread while the loop serves (``exclusive=False``) walks the young generations
    first (``gc.collect(1)``), since the loop's garbage of that time is among them.

    Nested or concurrent uses leave the collector enabled at the end, and only the
    outermost freezes."""
    enabled = gc.isenabled()
    if enabled:
        gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if not exclusive:
                gc.collect(1)
            gc.freeze()
            gc.enable()


async def serve(settings: Settings, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:  # fmt: skip
    """Run xdsd until ``stop`` is set (or SIGTERM/SIGINT). ``ready`` is set once the
    listeners are bound."""
    stop = stop or asyncio.Event()
    metrics = Metrics(version=__version__)
    cache: SnapshotCache[NodeClass] = SnapshotCache(observer=metrics)
    state = MeshState(settings.config_dir, cache, root_namespace=settings.root_namespace)
    metrics.track(cache, state)

    def apply(result: LoadResult | ConfigError, started: float) -> None:
        applied = state.apply(result)
        outcome = (
            "refused" if isinstance(result, ConfigError) else "applied" if applied else "unchanged"
        )
        metrics.observe_reload(time.perf_counter() - started, outcome)

    started = time.perf_counter()
    apply(state.load(), started)
    loop = asyncio.get_running_loop()
    reload_lock = asyncio.Lock()

    async def reload(paths: set[str] | None = None) -> None:
        async with reload_lock:
            # Reading and parsing (seconds for a large directory) happen off the loop,
            # so streams keep being served; translation and publishing happen on it.
            started = time.perf_counter()
            result = await asyncio.to_thread(state.load, paths, exclusive=False)
            apply(result, started)

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
    aio_server: AioServer | None = None
    if settings.grpc is not None and settings.grpc_impl == "grpcio":
        try:
            from xdsd.transports.grpc_aio import AioServer
        except ImportError as e:
            raise UsageError(
                f"grpc_impl = grpcio needs grpcio: pip install 'xdsd[grpcio]' ({e})"
            ) from None

        aio_server = AioServer(state)
        await aio_server.start(settings.grpc)
        bound = Address(settings.grpc.host, aio_server.port)
        log.info("gRPC xDS listening on %s (grpcio)", bound)
    elif settings.grpc is not None:
        grpc_server = Server([DiscoveryServices(state)])
        await grpc_server.start(
            settings.grpc.host, settings.grpc.port, backlog=settings.grpc_backlog
        )
        log.info("gRPC xDS listening on %s", _bound(grpc_server, settings.grpc))
    rest_runner = None
    if settings.rest is not None:
        from xdsd.transports.rest import start_rest

        rest_runner = await start_rest(state, settings.rest)
        log.info("REST xDS listening on %s", settings.rest)
    admin_runner = None
    views = AdminViews(
        cache, config=state, metrics=metrics, version=__version__, config_dir=settings.config_dir
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
        if aio_server is not None:
            await aio_server.stop(5)
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
    for name in ("config_dir", "grpc", "rest", "admin", "grpc_impl"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = settings.merged(overrides, source="command line")
    asyncio.run(serve(settings))
    return 0
