"""The daemon: the one place that wires sources, translation, cache and transports.

``MeshState`` owns the current configuration: it reloads the directory (keeping the last
good mesh when a load fails), builds a snapshot per node class on first use and rebuilds
the snapshots of every watched class after each successful reload, or when the mesh-wide
proxy defaults change. ``serve`` runs the transports and the watcher until a stop signal
(then ends every stream with a status, within a bound); SIGHUP forces a reload of the
directory, of the settings file's ``[mesh]`` section and of xdsd's own certificate files
(which are also watched, and reloaded when they change); systemd is told about all of it
(``notify``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from xdsd import __version__
from xdsd.admin import AdminViews
from xdsd.admin.metrics import Metrics
from xdsd.cache.cache import ClientStatus, SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import ConfigError, InternalError, Problem, TranslationError, UsageError
from xdsd.logs import dropped_log_lines, set_log_queue_lines
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, MeshConfig
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.notify import Notifier
from xdsd.protocol import ProtocolError
from xdsd.settings import Address, Settings
from xdsd.sources import DirectoryLoader, LoadResult
from xdsd.sources.limits import DEFAULT_LIMITS, ParseLimits
from xdsd.sources.watch import ConfigWatcher
from xdsd.tls import ServerCertificates
from xdsd.translate import ConfigSourceKind, MeshTranslation, NodeClass, node_class_from_node
from xdsd.translate.node import ClientKind, Role
from xdsd.transports.connections import (
    ADMIN_RESERVE,
    ConnectionGate,
    ConnectionLimits,
    Listener,
    raise_descriptor_limit,
    serve_http,
)
from xdsd.transports.grpc import OpenStreams
from xdsd.transports.grpc_server import DiscoveryServices, GrpcServer
from xdsd.transports.limits import (
    NodeAuthorizer,
    NodeIdentity,
    Refused,
    StreamLimits,
    certificate_sans,
)

if TYPE_CHECKING:
    from xdsd.transports.grpc_aio import AioServer

log = logging.getLogger(__name__)

#: A refused load logs its first this many errors (then how many more there were), and
#: keeps this many more for ``/debug/errors`` (the last one saying how many were left
#: out): a file of a million broken documents must not flood the log or the admin.
MAX_LOGGED_PROBLEMS = 100
MAX_KEPT_PROBLEMS = 1000
#: After this many reload attempts in a row ended in an internal error, the reloader is
#: reported as unable to make progress (``/readyz`` 503, systemd's status).
STUCK_AFTER = 3

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
        mesh_config: MeshConfig = DEFAULT_MESH_CONFIG,
        max_classes: int = 10000,
        limits: ParseLimits = DEFAULT_LIMITS,
    ) -> None:
        self.config_dir = config_dir
        #: The most node classes with a snapshot (``Settings.max_node_classes``).
        self.max_classes = max_classes
        #: Istio's root namespace: where Sidecars without selector apply mesh-wide.
        self.root_namespace = root_namespace
        #: The mesh-wide proxy defaults every class gets (settings' ``[mesh]``).
        self.mesh_config = mesh_config
        self._cache: SnapshotCache[NodeClass] = cache if cache is not None else SnapshotCache()
        self._loader = DirectoryLoader(config_dir, limits=limits)
        self._loader.mesh_tls = mesh_config.mtls
        # Set when the mesh defaults changed in a way the next load must translate even
        # if the directory did not change (mesh mutual TLS: its files come with the load).
        self._retranslate = False
        self.loaded: LoadResult | None = None
        self.translation: MeshTranslation | None = None
        self.errors: tuple[Problem, ...] = ()
        #: The warnings of the last load attempt (refused or not).
        self.warnings: tuple[Problem, ...] = ()
        self.reloads = 0
        self.failed_reloads = 0
        #: Reload attempts in a row that ended in an internal error (``InternalError``).
        self.internal_errors = 0
        #: Seconds per phase of the last reload that loaded the directory: ``list``,
        #: ``parse`` (reading and parsing changed files), ``check`` (cross-checks),
        #: ``translate`` and ``snapshot`` (building and checking the watched classes').
        self.last_timings: dict[str, float] = {}

    @property
    def certificate_paths(self) -> frozenset[str]:
        """The certificate and key files the last load attempt's rules named (their
        directories are watched besides the config directory)."""
        return self._loader.certificate_paths

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
        during the load is the load's own (see ``_building``).

        Never raises for what the directory holds or for a failure while loading it: an
        unexpected exception is logged with its traceback and returned as an
        ``InternalError`` (the loader starts afresh next time)."""
        try:
            with _building(exclusive=exclusive):
                return self._loader.load(changed)
        except ConfigError as e:
            return e
        except Exception as e:
            log.exception("internal error loading %s", self.config_dir)
            return _internal(self.config_dir, "loading", e)

    @property
    def stuck(self) -> str:
        """Why the reloader cannot make progress ("" when it can): the last
        ``STUCK_AFTER`` reload attempts or more ended in an internal error."""
        if self.internal_errors >= STUCK_AFTER:
            return (f"the last {self.internal_errors} reloads failed with an internal error "
                    "(see the log)")  # fmt: skip
        return ""

    def apply(self, result: LoadResult | ConfigError) -> bool:
        """The second half of ``reload``, on the serving thread: keep the last good
        configuration on an error, else translate and publish (see ``reload``).

        Never raises: an exception while translating or publishing is logged with its
        traceback and handled as a refused load (``InternalError``); the configuration
        that was being served stays the current one."""
        loaded, translation = self.loaded, self.translation
        try:
            with _building():
                applied = self._apply(result)
        except Exception as e:
            log.exception("internal error applying the configuration of %s", self.config_dir)
            self.loaded, self.translation = loaded, translation
            # Some classes may have been sent the new mesh: the next load translates
            # every class again, even if the directory is the same as this one.
            self._retranslate = True
            result = _internal(self.config_dir, "translating and publishing", e)
            with _building():
                return self._apply(result)
        return applied

    def _apply(self, result: LoadResult | ConfigError) -> bool:
        started = time.perf_counter()
        if isinstance(result, ConfigError):
            e = result
            self.failed_reloads += 1
            self.internal_errors = self.internal_errors + 1 if isinstance(e, InternalError) else 0
            self.errors = _bounded(e.problems, MAX_KEPT_PROBLEMS)
            self.warnings = _bounded(e.warnings, MAX_KEPT_PROBLEMS)
            for problem in e.problems[:MAX_LOGGED_PROBLEMS]:
                log.error("config: %s", problem)
            if len(e.problems) > MAX_LOGGED_PROBLEMS:
                log.error("config: ... and %d more errors (xdsd validate lists them all)",
                          len(e.problems) - MAX_LOGGED_PROBLEMS)  # fmt: skip
            log.error(
                "config refused (%d errors); still serving the last good configuration",
                len(e.problems),
            )
            return False
        self.internal_errors = 0
        self.errors = ()
        self.warnings = _bounded(result.warnings, MAX_KEPT_PROBLEMS)
        for warning in result.warnings[:MAX_LOGGED_PROBLEMS]:
            log.warning("config: %s", warning)
        if len(result.warnings) > MAX_LOGGED_PROBLEMS:
            log.warning("config: ... and %d more warnings",
                        len(result.warnings) - MAX_LOGGED_PROBLEMS)  # fmt: skip
        if self.loaded is not None and result.mesh == self.loaded.mesh and not self._retranslate:
            log.info("config reloaded: no change")
            self.loaded = result
            return False
        self.loaded = result
        self.reloads += 1
        self._retranslate = False
        changed = self._translate_and_publish()
        assert self.translation is not None
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

    def set_mesh_config(self, mesh_config: MeshConfig) -> bool:
        """Use ``mesh_config`` as the mesh-wide proxy defaults from now on. When it differs
        from the current one and a mesh is loaded, translate again (reusing every
        resource the defaults do not touch) and publish new snapshots for every watched
        class; return True then. A change to mesh mutual TLS is translated by the next
        ``load``/``apply`` instead, which reads its certificate files."""
        if mesh_config == self.mesh_config:
            return False
        tls_changed = mesh_config.mtls != self.mesh_config.mtls
        self.mesh_config = mesh_config
        self._loader.mesh_tls = mesh_config.mtls
        if self.loaded is None:
            return False
        if tls_changed or self._retranslate:
            # The loaded mesh lacks (or has stale) mesh certificate files until a load
            # succeeds with these settings: translating it now would fail every class.
            self._retranslate = True
            return False
        with _building():
            changed = self._translate_and_publish()
        log.info("mesh defaults changed: %d classes updated", changed)
        return True

    def _translate_and_publish(self) -> int:
        """Translate the loaded mesh with the current defaults and publish a snapshot for
        every watched class (forgetting unwatched ones); return how many changed."""
        assert self.loaded is not None
        self.translation = MeshTranslation(
            self.loaded.mesh,
            previous=self.translation,
            root_namespace=self.root_namespace,
            mesh_config=self.mesh_config,
        )
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
        return changed

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
        """The snapshot for ``key``, built on first use (see ``SnapshotSource.snapshot``).

        A new class beyond ``max_classes`` first makes room by forgetting the classes no
        client holds; when every class is held, raises Refused (RESOURCE_EXHAUSTED, 429):
        a client's class is never evicted for a newcomer's."""
        assert isinstance(key, NodeClass)
        found = self._cache.get(key)
        if found is not None or self.translation is None:
            return found
        if len(self._cache.keys()) >= self.max_classes:
            self._cache.evict_unheld()
            if len(self._cache.keys()) >= self.max_classes:
                raise Refused(
                    "RESOURCE_EXHAUSTED", 429, "too_many_node_classes",
                    f"{self.max_classes} node classes are held by clients, the limit "
                    "(max_node_classes): no snapshot for a new one",
                )  # fmt: skip
        with _building():  # the first class of a flavor builds every cluster of the mesh
            snapshot = self.translation.snapshot_for(key)
            self._cache.set(key, snapshot)
        return snapshot


def _internal(config_dir: str, doing: str, error: BaseException) -> InternalError:
    """The refusal for an unexpected exception while ``doing`` (already logged)."""
    return InternalError([Problem(
        config_dir, 0, "",
        f"internal error while {doing} ({type(error).__name__}: {error}); the last good "
        "configuration keeps serving and the log has the traceback",
    )])  # fmt: skip


def _bounded(problems: tuple[Problem, ...], limit: int) -> tuple[Problem, ...]:
    """``problems``, or its first ``limit`` and one more saying how many were left out."""
    if len(problems) <= limit:
        return problems
    last = problems[limit]
    left = len(problems) - limit
    return (*problems[:limit], Problem(
        last.path, 0, "",
        f"... and {left} more like these (not kept here; xdsd validate lists them all)",
        last.severity,
    ))  # fmt: skip


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


#: The message every open stream ends with (status UNAVAILABLE) when xdsd shuts down.
SHUTDOWN_MESSAGE = "xdsd is shutting down; reconnect (to another replica, if there is one)"
#: Exit code after a second SIGTERM/SIGINT cut a shutdown short is 128 + the signal number;
#: after a shutdown that overran its bound (``shutdown_grace`` + this many seconds), 1.
SHUTDOWN_BACKSTOP = 5.0


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    notifier: Notifier | None = None,
    backstop: bool = False,
    settings_path: str | None = None,
) -> None:
    """Run xdsd until ``stop`` is set or SIGTERM/SIGINT arrives; SIGHUP forces a reload.

    ``ready`` is set once the listeners are bound. ``notifier`` tells systemd: READY=1
    once a configuration is loaded and the listeners are bound (``/readyz``'s condition),
    RELOADING=1 / READY=1 around a SIGHUP reload, STATUS= lines, WATCHDOG=1 every half
    watchdog interval from the event loop, STOPPING=1 when shutting down.

    Shutdown: ``/readyz`` turns 503, the watcher stops, every open gRPC stream ends with
    UNAVAILABLE and ``SHUTDOWN_MESSAGE`` (streams opened meanwhile too), and whatever is
    still open after ``settings.shutdown_grace`` seconds is cut. A second SIGTERM or SIGINT
    during shutdown exits at once (code 128 + signal). With ``backstop`` (the ``xdsd
    serve`` process, not an in-process caller), a shutdown still running
    ``SHUTDOWN_BACKSTOP`` seconds after the grace ends the process with code 1.

    ``settings_path`` is the settings file ``settings`` came from: SIGHUP reads its
    ``[mesh]`` section again (the other settings need a restart).

    TLS: the files ``tls_cert``, ``tls_key`` and ``tls_client_ca`` name are watched (their
    directories, like certificate files the rules name) and checked by stat on every
    reload; when they changed, new connections to every listener get what they now hold
    (``xdsd.tls.ServerCertificates``), and a replacement that cannot be used is logged as
    an error while the previous certificate keeps serving. SIGHUP reads them again in any
    case.
    """
    stop = stop or asyncio.Event()
    notifier = notifier or Notifier(None)
    loop = asyncio.get_running_loop()

    def on_stop_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            _exit_now(f"{signum.name} during shutdown: exiting now", 128 + signum)
        log.info("%s: shutting down", signum.name)
        stop.set()

    background: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        log.info("SIGHUP: reloading %s (every file checked)", settings.config_dir)
        task = loop.create_task(reload(None, requested=True, mesh=_reread_mesh(settings_path)))
        background.add(task)
        task.add_done_callback(background.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_stop_signal, signum)

    metrics = Metrics(version=__version__)
    cache: SnapshotCache[NodeClass] = SnapshotCache(observer=metrics)
    state = MeshState(
        settings.config_dir, cache, root_namespace=settings.root_namespace,
        mesh_config=settings.mesh, max_classes=settings.max_node_classes,
        limits=ParseLimits.of(settings),
    )  # fmt: skip
    metrics.track(cache, state)
    metrics.track_log_drops(dropped_log_lines)
    set_log_queue_lines(settings.log_queue_lines)

    def apply(result: LoadResult | ConfigError, started: float) -> None:
        applied = state.apply(result)
        outcome = "refused" if state.errors else "applied" if applied else "unchanged"
        metrics.observe_reload(time.perf_counter() - started, outcome)

    apply(state.load(), time.perf_counter())
    reload_lock = asyncio.Lock()
    views = AdminViews(
        cache, config=state, metrics=metrics, version=__version__, config_dir=settings.config_dir
    )
    readiness = _Readiness(notifier, views, state)

    certificates: ServerCertificates | None = None

    async def reload(
        paths: set[str] | None = None, *, requested: bool = False, mesh: MeshConfig | None = None
    ) -> None:
        """Load and apply (see ``MeshState``); never raises but CancelledError: whatever
        goes wrong is logged, counted as a refused reload, and the next one starts
        afresh."""
        started = time.perf_counter()
        try:
            await reload_once(paths, requested=requested, mesh=mesh)
        except Exception as e:
            log.exception("internal error reloading %s", settings.config_dir)
            apply(_internal(settings.config_dir, "reloading", e), started)
            readiness.update()

    async def reload_once(
        paths: set[str] | None, *, requested: bool, mesh: MeshConfig | None
    ) -> None:
        async with reload_lock:
            if requested:
                readiness.reloading()
            if mesh is not None:
                state.set_mesh_config(mesh)
                _authorize_mesh(authorizer, settings, mesh)
            if certificates is not None:
                # xdsd's own certificate: a few stats, then (if they changed) new contexts
                certificates.reload(force=requested)
                if paths is not None:
                    own = certificates.paths - state.certificate_paths
                    paths = {p for p in paths if os.path.abspath(p) not in own}
                    if not paths:  # only xdsd's own certificate files changed
                        return
            # Reading and parsing (seconds for a large directory) happen off the loop,
            # so streams keep being served; translation and publishing happen on it.
            started = time.perf_counter()
            result = await asyncio.to_thread(state.load, paths, exclusive=False)
            apply(result, started)
            readiness.update()

    watchdog_task = None
    if notifier.watchdog_interval is not None:
        watchdog_task = asyncio.create_task(_watchdog(notifier, notifier.watchdog_interval / 2))

    grpc_server: GrpcServer | None = None
    aio_server: AioServer | None = None
    streams: list[OpenStreams] = []
    limits = StreamLimits.from_settings(settings)
    gate = ConnectionGate(ConnectionLimits.from_settings(settings), on_refused=metrics.on_refused)
    listeners: list[Listener] = []
    authorizer = NodeAuthorizer(settings.authorized_nodes)
    _authorize_mesh(authorizer, settings, settings.mesh)
    if settings.admin_tls and settings.tls_client_ca:
        views.node_access = _admin_node_access(authorizer, settings.admin_sans)
    if settings.tls:
        certificates = ServerCertificates(settings)
    grpc_tls = certificates.context("h2") if certificates is not None else None
    http_tls = certificates.context("http/1.1") if certificates is not None else None
    if settings.grpc is not None and settings.grpc_impl == "grpcio":
        try:
            from xdsd.transports.grpc_aio import AioServer
        except ImportError as e:
            raise UsageError(
                f"grpc_impl = grpcio needs grpcio: pip install 'xdsd[grpcio]' ({e})"
            ) from None

        aio_server = AioServer(
            state, limits=limits, authorizer=authorizer, on_refused=metrics.on_refused,
            tls=certificates.current if certificates is not None else None,
            connections=gate.limits, max_connections=gate.max_connections,
        )  # fmt: skip
        await aio_server.start(settings.grpc)
        streams.append(aio_server.services.streams)
        bound = Address(settings.grpc.host, aio_server.port)
        log.info("gRPC xDS listening on %s (grpcio)%s", bound, _tls_note(settings))
    elif settings.grpc is not None:
        services = DiscoveryServices(
            state, limits=limits, authorizer=authorizer, on_refused=metrics.on_refused
        )
        streams.append(services.streams)
        grpc_server = GrpcServer(
            [services], gate=gate, resets_per_second=limits.max_stream_resets_per_second
        )
        await grpc_server.listen(
            settings.grpc.host, settings.grpc.port, backlog=settings.grpc_backlog,
            ssl_context=grpc_tls,
        )  # fmt: skip
        log.info("gRPC xDS listening on %s%s", _bound(grpc_server, settings.grpc),
                 _tls_note(settings))  # fmt: skip
    rest_runner = None
    discovery = None
    if settings.rest is not None:
        from xdsd.transports.rest import RestDiscovery, start_rest

        discovery = RestDiscovery(
            state, max_body=settings.max_request_bytes, authorizer=authorizer,
            on_refused=metrics.on_refused,
        )  # fmt: skip
        rest_runner, rest_listener = await start_rest(
            discovery, settings.rest, gate, idle_timeout=settings.rest_idle_timeout,
            ssl_context=http_tls,
        )  # fmt: skip
        listeners.append(rest_listener)
        log.info("REST xDS listening on %s%s", settings.rest, _tls_note(settings))
    admin_runner = None
    if settings.admin is not None:
        admin_tls = http_tls if settings.admin_tls else None
        admin_app = views.app()
        if discovery is not None:
            admin_app.router.add_routes(discovery.timing_routes())
        admin_runner, admin_listener = await serve_http(
            admin_app, "admin", gate, settings.admin.host, settings.admin.port,
            idle_timeout=settings.rest_idle_timeout, ssl_context=admin_tls,
            reserve=ADMIN_RESERVE,
        )  # fmt: skip
        listeners.append(admin_listener)
        log.info("admin listening on %s%s", settings.admin,
                 _tls_note(settings) if admin_tls else "")  # fmt: skip
    views.listening = True
    readiness.update()
    own_certificate = certificates.paths if certificates is not None else frozenset()
    watcher = ConfigWatcher(
        settings.config_dir,
        reload,
        quiet_period=settings.quiet_period,
        max_delay=settings.max_delay,
        files=lambda: state.certificate_paths | own_certificate,
    )
    watch_task = asyncio.create_task(watcher.run(stop))

    def watcher_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not stop.is_set():
            log.error("the config watcher stopped: edits are not seen until a restart",
                      exc_info=task.exception())  # fmt: skip
        readiness.update()

    def trouble() -> str:
        """Why the reloader cannot make progress ("" when it can)."""
        if watch_task.done() and not stop.is_set():
            return "the config watcher stopped (see the log): edits are not seen"
        return state.stuck

    watch_task.add_done_callback(watcher_ended)
    readiness.trouble = trouble
    views.trouble = trouble
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        grace = settings.shutdown_grace
        log.info("shutting down: open streams get %.1f s to end", grace)
        if backstop:
            _start_backstop(grace + SHUTDOWN_BACKSTOP)
        views.listening = False
        notifier.stopping("shutting down")
        deadline = loop.time() + grace
        watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_task
        for open_streams in streams:
            count = len(open_streams)
            left = await open_streams.close_all(SHUTDOWN_MESSAGE, max(0.0, deadline - loop.time()))
            if count:
                log.info("ended %d streams with UNAVAILABLE", count - left)
            if left:
                log.warning("%d streams still open after %.1f s (clients not reading): cut",
                            left, grace)  # fmt: skip
        if grpc_server is not None:
            grpc_server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(grpc_server.wait_closed(), max(1.0, deadline - loop.time()))
        if aio_server is not None:
            await aio_server.stop(max(0.0, deadline - loop.time()))
        for listener in listeners:
            listener.close()
        for runner in (rest_runner, admin_runner):
            if runner is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(runner.cleanup(), max(1.0, deadline - loop.time()))
        if watchdog_task is not None:
            watchdog_task.cancel()
        for task in tuple(background):
            task.cancel()
        notifier.close()
        log.info("stopped")


class _Readiness:
    """Tells systemd when xdsd is ready (the ``/readyz`` condition: a configuration loaded
    and the listeners bound), reloading, and what its status is (with ``NOT RELOADING``
    and the reason while ``trouble`` gives one: ``/readyz`` is 503 then)."""

    def __init__(self, notifier: Notifier, views: AdminViews, state: MeshState) -> None:
        self.notifier = notifier
        self.views = views
        self.state = state
        self.announced = False
        self._reloading = False
        self._status = ""
        #: Why the reloader cannot make progress ("" when it can): part of the status.
        self.trouble: Callable[[], str] = lambda: ""

    def reloading(self) -> None:
        """A requested reload (SIGHUP) begins; ``update`` ends it."""
        if self.announced:
            self._reloading = True
            self.notifier.reloading()

    def update(self) -> None:
        """After a reload or once listening: READY=1 when newly ready (or a requested reload
        ended), else a STATUS= line when the status text changed."""
        status = self._text()
        if not self.announced:
            if self.views.listening and self.state.loaded is not None:
                self.announced = True
                self._status = status
                self.notifier.ready(status)
                log.info("ready: %s", status)
            elif status != self._status:
                self._status = status
                self.notifier.status(status)
            return
        if self._reloading:
            self._reloading = False
            self._status = status
            self.notifier.ready(status)
        elif status != self._status:
            self._status = status
            self.notifier.status(status)

    def _text(self) -> str:
        state = self.state
        if state.loaded is None:
            errors = len(state.errors)
            return f"waiting for a valid configuration in {state.config_dir}: {errors} errors"
        mesh = state.loaded.mesh
        text = f"serving {len(mesh.services)} services from {state.config_dir}"
        if state.errors:
            text += f"; last edit refused ({len(state.errors)} errors), serving the last good one"
        trouble = self.trouble()
        if trouble:
            text += f"; NOT RELOADING: {trouble}"
        return text


async def _watchdog(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 every ``interval`` seconds, from the event loop: a loop stuck for longer
    than the watchdog timeout stops the pings, and systemd restarts the service."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _exit_now(message: str, code: int) -> NoReturn:
    """Log ``message`` and end the process at once (no cleanup, no waiting for threads)."""
    log.warning(message)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(code)


def _start_backstop(after: float) -> None:
    """End the process with code 1 if it is still alive ``after`` seconds from now: a
    shutdown must not hang on a stuck loop or a worker thread."""
    timer = threading.Timer(
        after, _exit_now, (f"shutdown still running after {after:.1f} s: exiting now", 1)
    )
    timer.daemon = True
    timer.start()


def _reread_mesh(settings_path: str | None) -> MeshConfig | None:
    """The ``[mesh]`` section of the settings file, read again (None without a file, or
    when it cannot be used: its errors are logged and the current defaults stay)."""
    if settings_path is None:
        return None
    try:
        mesh = Settings.from_file(settings_path).mesh
    except ConfigError as e:
        for problem in e.problems[:MAX_LOGGED_PROBLEMS]:
            log.error("settings: %s", problem)
        log.error("settings refused; keeping the current mesh defaults")
        return None
    except Exception:
        log.exception("internal error reading the settings %s; keeping the current mesh "
                      "defaults", settings_path)  # fmt: skip
        return None
    log.info("settings %s read again: [mesh] applies now, other settings at restart",
             settings_path)  # fmt: skip
    return mesh


def _admin_node_access(
    authorizer: NodeAuthorizer, admin_sans: tuple[str, ...]
) -> Callable[[Mapping[str, Any] | None, ClientStatus], bool]:
    """Who may see a node's resources on the admin server (``AdminViews.node_access``):
    a certificate with one of ``admin_sans``, or one that may speak for that node over
    xDS (``authorizer``, with the role and labels of the node's class)."""
    admins = frozenset(admin_sans)

    def allowed(cert: Mapping[str, Any] | None, client: ClientStatus) -> bool:
        if admins.intersection(certificate_sans(cert)):
            return True
        key = client.key
        if not isinstance(key, NodeClass):
            return False
        role = (
            "gateway" if key.role is Role.GATEWAY
            else "proxyless" if key.client is ClientKind.GRPC else "sidecar"
        )  # fmt: skip
        identity = NodeIdentity(client.node_id, key.service, key.namespace, role, key.labels)
        return authorizer.allowed(cert, identity)

    return allowed


def _authorize_mesh(authorizer: NodeAuthorizer, settings: Settings, mesh: MeshConfig) -> None:
    """Let mesh identities speak for their nodes when mesh mutual TLS is on and clients
    present certificates (at start, and again when SIGHUP brings other ``[mesh]``
    settings), and warn about what is then left open."""
    mtls = mesh.mtls
    authorizer.trust_domain = mtls.trust_domain if mtls.enabled and settings.tls_client_ca else ""
    if settings.tls_client_ca and not authorizer.enforcing:
        log.warning("client certificates are required but authorized_nodes is empty: "
                    "any client with a valid certificate may speak for any node")  # fmt: skip
    if mtls.enabled and not settings.tls_client_ca:
        log.warning("mesh mutual TLS is on but xDS clients are not authenticated "
                    "(tls_client_ca): any client that reaches xDS can fetch any service's "
                    "private key")  # fmt: skip


def _tls_note(settings: Settings) -> str:
    """How a listener of ``settings`` speaks: "" (plaintext), " (TLS)" or " (mTLS)"."""
    if not settings.tls:
        return ""
    return " (mTLS)" if settings.tls_client_ca else " (TLS)"


def _bound(server: GrpcServer, wanted: Address) -> str:
    sockets = getattr(server, "_server", None)
    if sockets is not None and sockets.sockets:
        host, port = sockets.sockets[0].getsockname()[:2]
        return f"{host}:{port}"
    return str(wanted)


def run_server(args: argparse.Namespace) -> int:
    """``xdsd serve``: settings from file then flags, the descriptor limit raised (see
    ``raise_descriptor_limit``), then run until stopped."""
    settings = Settings.from_file(args.settings) if args.settings else Settings()
    overrides: dict[str, Any] = {}
    for name in ("config_dir", "grpc", "rest", "admin", "grpc_impl", "shutdown_grace"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = settings.merged(overrides, source="command line")
    before, after = raise_descriptor_limit()
    if after != before:
        log.info("descriptor limit (RLIMIT_NOFILE, soft) raised from %d to %d", before, after)
    asyncio.run(
        serve(
            settings, notifier=Notifier.from_environment(), backstop=True,
            settings_path=args.settings,
        )
    )  # fmt: skip
    return 0
