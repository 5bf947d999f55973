"""The daemon: the one place that wires sources, translation, cache and transports.

How this works: a ``Daemon`` is built in one piece from the settings — the mesh state
(``xdsd.state.MeshState``), the metrics and admin views, the authorizer, xdsd's own
certificate, the connection gate and one ``DaemonListener`` per configured server
(``xdsd.listeners``: grpclib or grpcio, REST, admin) — so every part that a reload or a
shutdown touches exists before anything runs. ``run`` then starts it (loads the
directory, binds the listeners in order), runs the watcher, the systemd watchdog and the
requested reloads as tasks of one ``asyncio.TaskGroup`` until a stop signal, and ends with
``shutdown``: ``/readyz`` 503, the watcher stopped, each listener closed in order against
one deadline (every open stream ends with a status), the remaining tasks cancelled.

``reload`` is the reload boundary seen from the loop: the directory is read in a worker
thread (``MeshState.load``), translated and published on the loop (``MeshState.apply``),
and any exception becomes a refused reload. A load refused for a fault of the machine
(out of descriptors, a directory it may not read: ``listing.environment_fault``) is tried
again by itself with a growing wait (``RETRY_FIRST``), since nothing may change under the
directory when the fault ends. SIGHUP forces a reload of the directory, of
the settings file's ``[mesh]`` section and of xdsd's own certificate files (which are also
watched, and reloaded when they change). systemd is told about all of it
(``xdsd.readiness``, ``xdsd.notify``).

``serve`` and ``run_server`` are the entry points (tests and ``xdsd serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from xdsd import __version__
from xdsd.access import admin_node_access, authorize_mesh
from xdsd.admin import AdminViews
from xdsd.admin.metrics import Metrics
from xdsd.build_cache import BuildCache, CachedBuild, CacheRefused, Capture, fingerprint
from xdsd.cache.cache import SnapshotCache
from xdsd.errors import ConfigError, StartupError, UsageError
from xdsd.listeners import (
    SHUTDOWN_MESSAGE,
    DaemonListener,
    Deadline,
    GrpcioListener,
    GrpclibListener,
    HttpListener,
)
from xdsd.logs import dropped_log_lines, set_log_queue_lines
from xdsd.model.mesh_config import MeshConfig
from xdsd.model.networking import ReadinessProbe
from xdsd.model.registrations import RegistrySettings
from xdsd.model.service import ResourceKey
from xdsd.notify import Notifier
from xdsd.plurals import counted
from xdsd.readiness import Readiness
from xdsd.registry.probes import Prober
from xdsd.registry.registry import Registry, default_replica
from xdsd.registry.store import MemoryStore, RegistrationStore
from xdsd.settings import Address, Settings
from xdsd.sources.limits import ParseLimits
from xdsd.sources.listing import environment_fault
from xdsd.sources.watch import ConfigWatcher
from xdsd.state import (
    MAX_KEPT_PROBLEMS,
    MAX_LOGGED_PROBLEMS,
    STUCK_AFTER,
    MeshState,
    internal_error,
)
from xdsd.tls import ServerCertificates
from xdsd.translate import NodeClass
from xdsd.transports.connections import (
    ADMIN_RESERVE,
    ConnectionGate,
    ConnectionLimits,
    raise_descriptor_limit,
    serve_http,
)
from xdsd.transports.grpc_server import CertificateService, DiscoveryServices, GrpcServer
from xdsd.transports.limits import NodeAuthorizer, StreamLimits
from xdsd.transports.signing import CertificateSigner, SigningEndpoint
from xdsd.workloads import WorkloadRegistrar

if TYPE_CHECKING:
    from xdsd.identities import MeshAuthority
    from xdsd.sources import LoadResult

log = logging.getLogger(__name__)


def registration_store(settings: RegistrySettings) -> RegistrationStore:
    """Where registrations are kept: etcd, shared by replicas, under ``[registry.etcd]``
    (``settings.replica`` names this one); else in this daemon (``MemoryStore``)."""
    if settings.etcd is None:
        return MemoryStore()
    from xdsd.registry.etcd import EtcdStore  # only then: its client is not on every start

    return EtcdStore(
        settings.etcd,
        settings.replica,
        max_keys=settings.max_registrations,
        handover=settings.grace.total_seconds(),
    )


#: What other modules, tests and benchmarks import from here (``MeshState`` and its limits
#: live in ``xdsd.state``, ``SHUTDOWN_MESSAGE`` in ``xdsd.listeners``).
__all__ = [
    "MAX_KEPT_PROBLEMS",
    "MAX_LOGGED_PROBLEMS",
    "SHUTDOWN_BACKSTOP",
    "SHUTDOWN_MESSAGE",
    "STUCK_AFTER",
    "Daemon",
    "MeshState",
    "listen_error",
    "run_server",
    "serve",
    "server_settings",
]

#: Seconds between a load (or a new class) and the restart cache's write: pushes go first,
#: and a burst of reloads is written once.
CACHE_WRITE_DELAY = 1.0

#: A load refused for a fault of the machine rather than of the files (out of
#: descriptors, a directory the daemon may not read: ``environment_fault``) is tried
#: again by itself, no edit needed: first after this many seconds, then after twice as
#: long each time, at most ``RETRY_LONGEST`` apart, until a load succeeds or one is
#: refused for the files themselves.
RETRY_FIRST = 1.0
RETRY_LONGEST = 30.0

#: Exit code after a second SIGTERM/SIGINT cut a shutdown short is 128 + the signal number;
#: after a shutdown that overran its bound (``shutdown_grace`` + this many seconds), 1.
SHUTDOWN_BACKSTOP = 5.0


class Daemon:
    """xdsd serving ``settings``: its parts, and their lifecycle (see the module docstring).

    Construction binds and loads nothing; it reads xdsd's own certificate files (raises
    ConfigError when they cannot be used) and raises UsageError when ``grpc_impl =
    grpcio`` lacks grpcio. ``stop`` is the event that ends ``run`` (SIGTERM and SIGINT set
    it). ``settings_path`` is the file ``settings`` came from: SIGHUP reads its ``[mesh]``
    section again. With ``backstop`` (the ``xdsd serve`` process, not an in-process
    caller), a shutdown still running ``SHUTDOWN_BACKSTOP`` seconds after its grace ends
    the process with code 1. ``inherited`` gives the gRPC and REST listeners listening
    sockets to serve on (a worker of ``xdsd serve --workers N``; grpclib only: raises
    UsageError with ``grpc_impl = grpcio``).

    With ``admin_socket`` (a worker of ``xdsd serve --workers``), the admin server listens
    on that unix socket path instead of ``settings.admin``: plaintext, mode 0600, a stale
    socket file replaced, removed at close. The merged admin in front of it
    (``xdsd.workers.admin.MergedAdmin``, serving ``settings.admin`` with its TLS)
    forwards each admin client's certificate names, which node access then judges.

    ``writes_cache`` False (workers of ``xdsd serve --workers`` but the first): the restart
    cache is read at start but never written, so sibling workers sharing one state
    directory do not each rewrite it.

    ``hold_until_loaded`` (a worker restarted while its siblings serve): when the start
    has no configuration to serve (the directory's load was refused and no restart
    cache was used), the gRPC and REST listeners are started only after the first load
    that succeeds; the admin server starts at once. Their inherited sockets' accept
    queue meanwhile goes to the siblings, which serve the last good build, instead of
    this worker taking its share of new clients and giving them nothing.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        stop: asyncio.Event | None = None,
        settings_path: str | None = None,
        backstop: bool = False,
        admin_socket: str | None = None,
        inherited: Mapping[str, Sequence[socket.socket]] | None = None,
        writes_cache: bool = True,
        hold_until_loaded: bool = False,
    ) -> None:
        self.settings = settings
        self.writes_cache = writes_cache
        self.hold_until_loaded = hold_until_loaded
        #: Listeners not started yet: held until a configuration loads (``hold_until_loaded``).
        self._held: list[DaemonListener] = []
        self.admin_socket = admin_socket
        #: Listening sockets bound by a supervisor (``xdsd.workers``), by settings key
        #: (``grpc``, ``rest``): those listeners serve on them instead of binding.
        self.inherited = dict(inherited or {})
        self.notifier = notifier or Notifier(None)
        self.stop = stop or asyncio.Event()
        self.settings_path = settings_path
        self.backstop = backstop
        self.metrics = Metrics(version=__version__)
        self.cache: SnapshotCache[NodeClass] = SnapshotCache(observer=self.metrics)
        #: xdsd's own CA (``[mesh.ca]``), issuing every proxy's identity; its ``mesh`` is
        #: the settings' with the trust bundle. Raises CAError (one line) when unusable.
        #: Imported only then (``cryptography``'s x509 is ~40 ms of a start without it).
        self.authority: MeshAuthority | None = None
        if settings.mesh.ca is not None:
            from xdsd.identities import MeshAuthority

            self.authority = MeshAuthority(settings.mesh)
        self.identities = self.authority.identities if self.authority is not None else None
        self.state = MeshState(
            settings.config_dir,
            self.cache,
            root_namespace=settings.root_namespace,
            mesh_config=self.authority.mesh if self.authority is not None else settings.mesh,
            max_classes=settings.max_node_classes,
            limits=ParseLimits.of(settings),
        )
        self.metrics.track(self.cache, self.state)
        self.metrics.track_log_drops(dropped_log_lines)
        state = self.state
        self.metrics.track_address_moves(lambda: state.address_moves)
        self.views = AdminViews(
            self.cache,
            config=self.state,
            metrics=self.metrics,
            version=__version__,
            config_dir=settings.config_dir,
        )
        self.views.policies = self.state.policies
        self.views.expected = self.state.expected_proxies
        self.views.workload = self.state.workload
        self.views.addresses = self.state.addresses
        self.views.gateway_status = self.state.gateway_status
        self.views.stale_after = settings.stale_after
        if self.identities is not None:
            identities = self.identities
            self.views.renew_fraction = lambda: identities.renew_fraction
            self.metrics.track_issuance(lambda: (identities.issued_total, identities.renewed_total))
        #: Registered workloads (WorkloadGroup auto-registration, ``[registry]``): the
        #: registry streams attach their nodes to; each change is merged into the mesh
        #: by ``_registration_reloads`` without reading the directory.
        registry_settings = settings.registry
        if not registry_settings.replica:
            registry_settings = replace(registry_settings, replica=default_replica())
        self.store = registration_store(registry_settings)
        self.registry = Registry(registry_settings, self.store, groups=self.state.group)
        #: The probes of the workloads this replica holds (``xdsd.registry.probes``).
        self.prober = Prober(
            held=self.registry.held, probe_of=self._probe_of, report=self.registry.set_health
        )
        self._registrations_changed = asyncio.Event()
        self.registrar = WorkloadRegistrar(self.registry)
        self.views.registrations = self.registry.view
        self.metrics.track_registry(self.registry.counts)
        self.metrics.track_store(self._store_figures)
        self.metrics.track_probes(lambda: dict(self.prober.counts))
        self.readiness = Readiness(self.notifier, self.views, self.state)
        self.readiness.trouble = self.views.trouble = self.trouble
        self.readiness.degraded = self.views.degraded = self.degraded
        self.authorizer = NodeAuthorizer(settings.authorized_nodes)
        authorize_mesh(self.authorizer, settings, settings.mesh)
        if settings.admin_tls and settings.tls_client_ca:
            self.views.node_access = admin_node_access(self.authorizer, settings.admin_sans)
        # Only the supervisor can reach the socket (0600 in its 0700 directory): the
        # admin client's certificate is the one the merged admin forwards.
        self.views.forwarded_certificate = admin_socket is not None
        self.certificates = ServerCertificates(settings) if settings.tls else None
        self.gate = ConnectionGate(
            ConnectionLimits.from_settings(settings), on_refused=self.metrics.on_refused
        )
        #: The certificate signing method's behaviour (``xdsd certificate``); signing only
        #: with ``[mesh.ca]``.
        self.signing = SigningEndpoint(self._signer(), on_refused=self.metrics.on_refused)
        #: The servers, in the order they start and close (admin last: ``/readyz`` stays
        #: reachable while the streams end).
        self.listeners = self._make_listeners()
        self._started: list[DaemonListener] = []
        self._reloading = asyncio.Lock()
        #: Forced reloads (SIGHUP) waiting to run, each with the ``[mesh]`` read for it.
        self._requested: asyncio.Queue[MeshConfig | None] = asyncio.Queue()
        #: The restart cache (``xdsd.build_cache``), opened by ``start``; None: off.
        self.restart_cache: BuildCache | None = None
        # Set when the restart cache should be written again (a load, a new class).
        self._cache_wanted = asyncio.Event()
        #: When the load under way began and when the applied one did (``time.time_ns``),
        #: and whether a load was dropped since the last one applied (the loader's stamps
        #: are then not the applied load's): what the restart cache's capture checks.
        self._loading_ns = 0
        self._loaded_ns = 0
        self._dropped_load = False
        #: The refusal being tried again (``RETRY_FIRST``): the symbols of its OS
        #: errors ("" while there is none) and its first such problem; when the next try
        #: is due (monotonic) and the wait after that one; set while a try is due.
        self._fault = ""
        self._fault_problem = ""
        self._retry_at = 0.0
        self._retry_wait = RETRY_FIRST
        self._retry_due = asyncio.Event()
        self.state.on_new_class = self._cache_wanted.set
        self.views.cached = lambda: self.state.cached
        self._watcher_ended = False
        self._shut_down = False
        self._watcher: asyncio.Task[None] | None = None
        #: The other tasks of ``run``'s group, cancelled at the end of a shutdown.
        self._background: list[asyncio.Task[None]] = []

    def _signer(self) -> CertificateSigner | None:
        """The signer of ``xdsd certificate`` requests: the CA and token authority of
        ``self.authority`` (the one that also issues the streams' identities, replaced in
        place when a reload changes ``[mesh.ca]``); None without ``[mesh.ca]``."""
        authority = self.authority
        if authority is None:
            return None
        from xdsd.ca.signing import TokenSigner

        return TokenSigner(lambda: authority.ca, lambda: authority.tokens)

    def _make_listeners(self) -> list[DaemonListener]:
        settings, certificates = self.settings, self.certificates
        note = _tls_note(settings)
        listeners: list[DaemonListener] = []
        if settings.grpc is not None:
            listeners.append(self._grpc_listener(settings.grpc, note))
        http_tls = certificates.context("http/1.1") if certificates is not None else None
        timing_routes = []
        if settings.rest is not None:
            from xdsd.transports.rest import RestDiscovery, start_rest

            discovery = RestDiscovery(
                self.state,
                max_body=settings.max_request_bytes,
                authorizer=self.authorizer,
                on_refused=self.metrics.on_refused,
                identities=self.identities,
            )
            timing_routes = discovery.timing_routes()
            rest = settings.rest
            listeners.append(
                HttpListener(
                    "REST xDS",
                    lambda: start_rest(
                        discovery,
                        rest,
                        self.gate,
                        idle_timeout=settings.rest_idle_timeout,
                        ssl_context=http_tls,
                        sockets=self.inherited.get("rest"),
                    ),
                    rest,
                    note=note,
                )
            )
        socket_path = self.admin_socket
        if settings.admin is not None or socket_path is not None:
            admin = settings.admin or Address("", 0)
            admin_app = self.views.app()
            admin_app.router.add_routes(timing_routes)
            admin_tls = http_tls if settings.admin_tls and socket_path is None else None
            listeners.append(
                HttpListener(
                    "admin",
                    lambda: serve_http(
                        admin_app,
                        "admin",
                        self.gate,
                        admin.host,
                        admin.port,
                        idle_timeout=settings.rest_idle_timeout,
                        ssl_context=admin_tls,
                        reserve=ADMIN_RESERVE,
                        unix_path=socket_path,
                    ),
                    admin,
                    note=note if admin_tls else "",
                )
            )
        return listeners

    def _grpc_listener(self, address: Address, note: str) -> DaemonListener:
        settings, certificates = self.settings, self.certificates
        limits = StreamLimits.from_settings(settings)
        if settings.grpc_impl == "grpcio":
            if "grpc" in self.inherited:
                raise UsageError("workers > 1 need grpc_impl = grpclib (grpcio binds its own port)")
            try:
                from xdsd.transports.grpc_aio import AioServer
            except ImportError as e:
                raise UsageError(
                    f"grpc_impl = grpcio needs grpcio: pip install 'xdsd[grpcio]' ({e})"
                ) from None
            aio_server = AioServer(
                self.state,
                limits=limits,
                authorizer=self.authorizer,
                on_refused=self.metrics.on_refused,
                identities=self.identities,
                tls=certificates.current if certificates is not None else None,
                connections=self.gate.limits,
                max_connections=self.gate.max_connections,
                signing=self.signing,
            )
            aio_server.services.discovery.registrar = self.registrar
            return GrpcioListener(aio_server, address, note=note)
        services = DiscoveryServices(
            self.state,
            limits=limits,
            authorizer=self.authorizer,
            on_refused=self.metrics.on_refused,
            identities=self.identities,
        )
        services.discovery.registrar = self.registrar
        signing = CertificateService(self.signing, max_request_bytes=limits.max_request_bytes)
        server = GrpcServer(
            [services, signing],
            gate=self.gate,
            resets_per_second=limits.max_stream_resets_per_second,
        )
        return GrpclibListener(
            server,
            services.streams,
            address,
            backlog=settings.grpc_backlog,
            tls=certificates.context("h2") if certificates is not None else None,
            note=note,
            sockets=self.inherited.get("grpc"),
        )

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set, then ``shutdown``. ``ready`` is set once the
        listeners are bound. Raises what ``start`` raises (OSError: an address cannot
        be bound)."""
        self._handle_signals()
        await self.start()
        async with asyncio.TaskGroup() as tasks:
            self._watcher = tasks.create_task(self._watch(), name="config watcher")
            self._background = [
                tasks.create_task(self._requested_reloads(), name="requested reloads"),
                tasks.create_task(self._retry_refused(), name="retries after faults"),
                tasks.create_task(self.notifier.keep_alive(), name="watchdog"),
            ]
            if self.state.cached:  # started from the restart cache: verify it
                self._background.append(
                    tasks.create_task(self._verify_cached(), name="verifying load")
                )
            if self.restart_cache is not None and self.writes_cache:
                self._background.append(
                    tasks.create_task(self._write_restart_cache(), name="restart cache")
                )
            if self.identities is not None:
                self._background.append(
                    tasks.create_task(self.identities.run(), name="identity renewals")
                )
            self._background += [
                tasks.create_task(self.registry.run(), name="registry"),
                tasks.create_task(self.prober.run(), name="probes"),
                tasks.create_task(self._registration_reloads(), name="registrations"),
            ]
            if ready is not None:
                ready.set()
            try:
                await self.stop.wait()
            finally:
                await self.shutdown(self.settings.shutdown_grace)

    async def start(self) -> None:
        """Load the directory (on the loop: nothing is served yet), then bind every
        listener in order. Raises StartupError when the config directory does not exist
        (a mistyped path: nothing would ever be served) or a listener cannot bind (after
        closing those already bound)."""
        set_log_queue_lines(self.settings.log_queue_lines)
        config_dir = self.settings.config_dir
        if not os.path.isdir(config_dir):
            raise StartupError(
                f"config directory {config_dir} does not exist (or is not a directory): "
                "create it, or give --config-dir DIR (settings key config_dir)"
            )
        self.restart_cache = self._open_restart_cache()
        cached = self._read_restart_cache()
        if cached is not None:
            # served at once; the full load runs in the background (``_verify_cached``)
            self.state.publish_cached(cached.classes, cached.describe())
        else:
            self._loading_ns = time.time_ns()
            self._apply(self.state.load(), time.perf_counter())
        await self.registry.start(self._registrations_changed.set)
        hold = self.hold_until_loaded and not self._serving_a_configuration()
        try:
            for listener in self.listeners:
                if hold and listener.name != "admin":
                    self._held.append(listener)
                    log.warning(
                        "%s held: no configuration loaded; it accepts once a load succeeds "
                        "(the other workers serve meanwhile)",
                        listener.name,
                    )
                    continue
                await self._start_listener(listener)
        except BaseException:
            deadline = Deadline.after(0.0)
            for listener in self._started:
                await listener.close(deadline)
            self._started.clear()
            raise
        self.views.listening = True
        self.readiness.update()

    def _serving_a_configuration(self) -> bool:
        """A configuration is loaded, or the restart cache's build is published."""
        return self.state.loaded is not None or bool(self.state.cached)

    async def _start_listener(self, listener: DaemonListener) -> None:
        """Start ``listener`` and count it started. Raises StartupError when it cannot
        listen."""
        try:
            bound = await listener.start()
        except OSError as e:
            if listener.name == "admin" and self.admin_socket is not None:
                raise StartupError(
                    f"cannot listen on the admin socket {self.admin_socket}: {e}"
                ) from None
            raise _listen_error(listener, e) from None
        self._started.append(listener)
        log.info("%s listening on %s%s", listener.name, bound, listener.note)

    async def _release_held(self) -> None:
        """Start the listeners held until a configuration loads, once one has. One that
        cannot start (its inherited socket unusable: not expected) ends the daemon, as
        at start: a worker serving nothing would otherwise look alive."""
        if not self._held or not self._serving_a_configuration() or self._shut_down:
            return
        held, self._held = self._held, []
        for listener in held:
            try:
                await self._start_listener(listener)
            except StartupError as e:
                log.error("%s", e)
                self.stop.set()
                return

    async def shutdown(self, grace: float) -> None:
        """End serving in stages: ``/readyz`` 503 and STOPPING=1, the watcher stopped,
        then each listener closed in order against one deadline ``grace`` seconds from
        now (every open gRPC stream, and any opened meanwhile, ends with UNAVAILABLE and
        ``SHUTDOWN_MESSAGE``; what is still open at the deadline is cut), then the
        watchdog and requested reloads cancelled. A second call does nothing."""
        if self._shut_down:
            return
        self._shut_down = True
        log.info("shutting down: open streams get %.1f s to end", grace)
        if self.backstop:
            _start_backstop(grace + SHUTDOWN_BACKSTOP)
        self.views.listening = False
        self.notifier.stopping("shutting down")
        deadline = Deadline.after(grace)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for listener in self._started:
            await listener.close(deadline)
        for task in self._background:
            task.cancel()
        try:
            await self.registry.close()
        except Exception:
            log.exception("closing the registry's store")
        self.notifier.close()
        log.info("stopped")

    def request_reload(self) -> None:
        """A forced reload (SIGHUP): the settings' ``[mesh]`` read again now, every file
        of the directory checked, xdsd's own certificate read again; run in turn with the
        other reloads by the requested-reloads task."""
        log.info("SIGHUP: reloading %s (every file checked)", self.settings.config_dir)
        self._requested.put_nowait(_reread_mesh(self.settings_path))

    async def reload(
        self,
        paths: set[str] | None = None,
        *,
        requested: bool = False,
        mesh: MeshConfig | None = None,
        settled: Callable[[bool], Awaitable[bool]] | None = None,
        retry: bool = False,
    ) -> bool:
        """Load and apply (see ``MeshState``), one reload at a time: ``paths`` changed
        (None: check every file), ``requested`` (SIGHUP: RELOADING=1 first, own
        certificate read again even if unchanged), ``mesh`` the new ``[mesh]`` defaults,
        ``retry``: a load tried again after a fault of the machine (``RETRY_FIRST``;
        refused again for the same fault, it is logged at debug level only).

        ``settled`` (the watcher's ``ConfigWatcher.settled``): awaited once the load is
        done, with whether it failed; when it says False, newer changes arrived
        meanwhile, and the load's result is dropped untouched (not applied, not logged,
        not counted: the watcher loads again with the newer changes) and False is
        returned. Otherwise True.

        Never raises but CancelledError: whatever goes wrong is logged, counted as a
        refused reload, and the next one starts afresh."""
        started = time.perf_counter()
        try:
            return await self._reload(
                paths, requested=requested, mesh=mesh, settled=settled, retry=retry
            )
        except Exception as e:
            log.exception("internal error reloading %s", self.settings.config_dir)
            self._apply(internal_error(self.settings.config_dir, "reloading", e), started)
            self.readiness.update()
            return True

    async def _reload(
        self,
        paths: set[str] | None,
        *,
        requested: bool,
        mesh: MeshConfig | None,
        settled: Callable[[bool], Awaitable[bool]] | None,
        retry: bool = False,
    ) -> bool:
        async with self._reloading:
            if requested:
                self.readiness.reloading()
            if mesh is not None:
                mesh = self._mesh_ca(mesh)
            if mesh is not None:
                self.state.set_mesh_config(mesh)
                authorize_mesh(self.authorizer, self.settings, mesh)
            if self.certificates is not None:
                # xdsd's own certificate: a few stats, then (if they changed) new contexts
                self.certificates.reload(force=requested)
                if paths is not None:
                    own = self.certificates.paths - self.state.certificate_paths
                    paths = {p for p in paths if os.path.abspath(p) not in own}
                    if not paths:  # only xdsd's own certificate files changed
                        return True
            # Reading and parsing (seconds for a large directory) happen off the loop,
            # so streams keep being served; translation and publishing happen on it.
            started = time.perf_counter()
            self._loading_ns = time.time_ns()
            result = await asyncio.to_thread(self.state.load, paths, exclusive=False)
            if settled is not None and not await settled(isinstance(result, ConfigError)):
                # Files changed while they were read or just after (a checkout under
                # way): this result may be a half-written state. The loader kept only
                # what it parsed, which the next load (of these paths and the newer
                # ones) reads again.
                log.debug("load superseded by newer changes: dropped")
                self._dropped_load = True
                return False
            self._apply(result, started, retry=retry)
            await self._release_held()
            self.readiness.update()
            return True

    def _open_restart_cache(self) -> BuildCache | None:
        """The restart cache in ``state_dir`` (None, said in one log line, when off or
        when the directory or its key cannot be used: the daemon then starts cold)."""
        settings = self.settings
        if not settings.state_dir:
            log.info("restart cache off: no state_dir (every start is a cold build)")
            return None
        if not settings.restart_cache:
            log.info("restart cache off (restart_cache = false, --no-cache)")
            return None
        try:
            return BuildCache(settings.state_dir, max_bytes=settings.max_restart_cache_bytes)
        except CacheRefused as e:
            log.error("restart cache off: %s", e)
            return None

    def _fingerprint(self) -> str:
        """What a cached build depends on besides the files: xdsd's version, the config
        directory, the settings that reach loading and translation."""
        settings = self.settings
        return fingerprint(
            __version__,
            os.path.realpath(settings.config_dir),
            settings.root_namespace,
            self.state.mesh_config,
            ParseLimits.of(settings),
        )

    def _read_restart_cache(self) -> CachedBuild | None:
        """The restart cache's build when it is intact, made under these settings and
        still what the directory holds; else None, having logged why in one line.
        Never raises."""
        cache = self.restart_cache
        if cache is None:
            return None
        started = time.perf_counter()
        try:
            found = cache.read(self._fingerprint(), max_classes=self.settings.max_node_classes)
            why = found if isinstance(found, str) else found.check()
            if not why and not isinstance(found, str) and not found.classes:
                why = "it holds no node class"
        except Exception:
            log.exception("internal error reading the restart cache %s; cold start", cache.path)
            return None
        if why or isinstance(found, str):
            log.info("restart cache not used: %s; cold start", why)
            return None
        cache.adopt(found)
        log.info(
            "serving the restart cache's build (%s), read and checked against %s in "
            "%.0f ms; the full load verifies it in the background",
            found.describe(),
            self.settings.config_dir,
            (time.perf_counter() - started) * 1000,
        )
        return found

    async def _verify_cached(self) -> None:
        """The full load after a start from the restart cache: the same versions (nothing
        re-sent) or, when something differs, published as any reload."""
        await self.reload(None)
        if self.state.loaded is not None:
            log.info("full load done: the restart cache's build is replaced by it")

    def _capture(self) -> Capture | None:
        """What the restart cache should hold now: the last load's files and stamps and
        every class's snapshot; None while it would not be a good build (no load applied
        yet, the last load refused), while the loader's stamps are not the applied
        load's (a load was dropped since: the next one applied writes the cache), and
        while the build holds workloads registered in this process's memory (no
        ``[registry.etcd]``: they end with the process, so a start could not serve them;
        registrations kept in etcd outlive it, and the registry read at start brings any
        change)."""
        state = self.state
        if state.loaded is None or state.errors or state.cached or self._dropped_load:
            return None
        if self.settings.registry.etcd is None and state.registrations:
            log.debug("restart cache not written: the build holds in-memory registrations")
            return None
        classes = {}
        for key in self.cache.keys():  # noqa: SIM118 - a cache, not a dict
            snapshot = self.cache.get(key)
            if isinstance(key, NodeClass) and snapshot is not None:
                classes[key] = snapshot
        return Capture(
            self.settings.config_dir,
            self._fingerprint(),
            state.loaded.files,
            state.file_stamps(),
            state.certificate_paths,
            classes,
            len(state.loaded.mesh.services),
            {c.path: c.data for c in state.loaded.mesh.certificates},
            self._loaded_ns,
        )

    async def _write_restart_cache(self) -> None:
        """Write the restart cache ``CACHE_WRITE_DELAY`` after each good load or new
        class (a burst written once), in a worker thread. Never ends on an error: a
        failed write is logged and the next one tried."""
        cache = self.restart_cache
        assert cache is not None
        while True:
            await self._cache_wanted.wait()
            await asyncio.sleep(CACHE_WRITE_DELAY)
            self._cache_wanted.clear()
            async with self._reloading:  # the loader's stamps are the applied load's
                capture = self._capture()
            if capture is None:
                continue
            try:
                written = await asyncio.to_thread(cache.write, capture)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                log.warning("restart cache not written to %s: %s", cache.path, e.strerror or e)
                continue
            except Exception:
                log.exception("internal error writing the restart cache")
                continue
            if written:
                size, seconds = cache.last_write
                log.info(
                    "restart cache written: %s, %d bytes in %.0f ms",
                    counted(len(capture.classes), "class", "classes"),
                    size,
                    seconds * 1000,
                )

    def _mesh_ca(self, mesh: MeshConfig) -> MeshConfig | None:
        """``mesh`` (SIGHUP's ``[mesh]``) as translation gets it: with the trust bundle of
        the CA built again from its ``[mesh.ca]`` (``MeshAuthority.reconfigure``); None,
        keeping the current ``[mesh]`` (logged), when that CA cannot be used or
        ``[mesh.ca]`` was added or removed (that needs a restart)."""
        if self.authority is not None:
            return self.authority.reconfigure(mesh)
        if mesh.ca is not None:
            log.error("[mesh.ca] added: turning xdsd's CA on needs a restart; keeping [mesh]")
            return None
        return mesh

    def _apply(
        self, result: LoadResult | ConfigError, started: float, *, retry: bool = False
    ) -> None:
        """Apply a load's result (``MeshState.apply``), count it, and try it again later
        when it was refused for a fault of the machine (``_after_fault``). ``retry``: it
        is such a try (refused again for the same fault: logged at debug level)."""
        faults = _faults(result)
        applied = self.state.apply(result, quiet=retry and bool(faults) and faults == self._fault)
        self._after_fault(result, faults)
        self._dropped_load = False
        if not isinstance(result, ConfigError) and self.state.loaded is result:
            self._loaded_ns = self._loading_ns
            self._cache_wanted.set()
        outcome = "refused" if self.state.errors else "applied" if applied else "unchanged"
        self.metrics.observe_reload(time.perf_counter() - started, outcome)

    def _after_fault(self, result: LoadResult | ConfigError, faults: str) -> None:
        """Schedule the next try of a load refused for a fault of the machine (``faults``:
        the symbols of its OS errors, ``ENVIRONMENT_ERRORS``), after a wait that doubles
        from ``RETRY_FIRST`` to ``RETRY_LONGEST``; or end the episode (a load applied, or
        refused for the files themselves: the next edit is what mends that). Logged once
        when an episode begins and once when it ends, not at every try."""
        if not faults:
            if self._fault and not self.state.errors:
                log.info("config loaded: the fault (%s) has cleared", self._fault)
            self._fault = self._fault_problem = ""
            self._retry_wait = RETRY_FIRST
            self._retry_due.clear()
            return
        problems = result.problems if isinstance(result, ConfigError) else ()
        if not self._fault:
            log.warning(
                "config refused for a fault of the machine, not of the files (%s): "
                "loading again in %.0f s, then less often (every %.0f s at most) until a "
                "load succeeds, with no edit needed",
                faults,
                self._retry_wait,
                RETRY_LONGEST,
            )
        self._fault = faults
        self._fault_problem = next((str(p) for p in problems if environment_fault(p)), faults)
        self._retry_at = time.monotonic() + self._retry_wait
        self._retry_wait = min(self._retry_wait * 2, RETRY_LONGEST)
        self._retry_due.set()

    async def _retry_refused(self) -> None:
        """Load again (every file checked) when a try of a load refused for a fault of
        the machine is due (``_after_fault``); never ends on an error (``reload``
        raises none)."""
        while True:
            await self._retry_due.wait()
            left = self._retry_at - time.monotonic()
            if left > 0:  # not yet; the time is looked at again (a newer refusal moves it)
                await asyncio.sleep(left)
                continue
            self._retry_due.clear()
            log.debug("loading %s again after %s", self.settings.config_dir, self._fault)
            await self.reload(None, retry=True)

    def trouble(self) -> str:
        """Why the reloader cannot make progress ("" when it can): the watcher stopped,
        or reloads keep failing (``MeshState.stuck``)."""
        if self._watcher_ended and not self.stop.is_set():
            return "the config watcher stopped (see the log): edits are not seen"
        return self.state.stuck

    async def _watch(self) -> None:
        """Reload on every batch of changes under the config directory, xdsd's own
        certificate files and those the rules name, until ``stop``. A watcher that fails
        is logged, and reported as trouble from then on."""
        settings = self.settings
        own = self.certificates.paths if self.certificates is not None else frozenset()
        watcher: ConfigWatcher

        async def changed(paths: set[str]) -> bool:
            return await self.reload(paths, settled=watcher.settled)

        watcher = ConfigWatcher(
            settings.config_dir,
            changed,
            quiet_period=settings.quiet_period,
            max_delay=settings.max_delay,
            files=lambda: self.state.certificate_paths | own,
        )
        try:
            await watcher.run(self.stop)
        except Exception:
            if not self.stop.is_set():
                log.exception("the config watcher stopped: edits are not seen until a restart")
        finally:
            self._watcher_ended = True
            self.readiness.update()

    def degraded(self) -> str:
        """Why the daemon serves with less than it should, without being unready (""
        when it does not): the registration store cannot reach its backend (etcd), so
        registrations are the last known, or it read only ``max_registrations`` of
        them. ``/readyz`` says it as ``degraded`` (still 200: every replica losing etcd
        at once must not take the control plane out of its load balancer), the status
        line and the log too.

        Also a load refused for a fault of the machine that is being tried again
        (``RETRY_FIRST``): the last good configuration is served meanwhile."""
        parts = []
        if self._fault:
            left = max(0.0, self._retry_at - time.monotonic())
            parts.append(
                f"config refused for a fault of the machine ({self._fault_problem}): "
                f"loading again in {left:.0f} s"
            )
        state = self.store.state()
        if state.detail:
            parts.append(f"registrations: {state.detail}")
        return "; ".join(parts)

    def _store_figures(self) -> tuple[bool, Mapping[str, int]]:
        counts = getattr(self.store, "counts", {})
        return self.store.state().connected, dict(counts)

    def _probe_of(self, group: ResourceKey) -> ReadinessProbe | None:
        found = self.state.group(group.namespace, group.name)
        return found.probe if found is not None else None

    async def _registration_reloads(self) -> None:
        """Merge each change of the registrations into the mesh (a load of no file,
        ``MeshState.set_registrations``), one reload at a time with the others; changes
        meanwhile are merged by the next round. Never ends on an error."""
        while True:
            await self._registrations_changed.wait()
            self._registrations_changed.clear()
            started = time.perf_counter()
            try:
                async with self._reloading:
                    self.state.set_registrations(self.registry.current().values())
                    self._loading_ns = time.time_ns()
                    result = await asyncio.to_thread(self.state.load, [], exclusive=False)
                    self._apply(result, started)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("internal error merging registrations")
                self._apply(internal_error(self.settings.config_dir, "registering", e), started)
            self.readiness.update()

    async def _requested_reloads(self) -> None:
        while True:
            mesh = await self._requested.get()
            await self.reload(None, requested=True, mesh=mesh)

    def _handle_signals(self) -> None:
        """SIGTERM/SIGINT set ``stop`` (a second one exits at once, code 128 + signal);
        SIGHUP requests a reload. Nothing where the loop cannot handle signals."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: signal.Signals) -> None:
        if self.stop.is_set():
            _exit_now(f"{signum.name} during shutdown: exiting now", 128 + signum)
        log.info("%s: shutting down", signum.name)
        self.stop.set()


def _faults(result: LoadResult | ConfigError) -> str:
    """The symbols of the OS errors (``EMFILE, EACCES``) that say the refusal ``result``
    is a fault of the machine (``environment_fault``); "" for a load applied or one
    refused for the files alone."""
    if not isinstance(result, ConfigError):
        return ""
    return ", ".join(sorted({f for p in result.problems if (f := environment_fault(p))}))


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    notifier: Notifier | None = None,
    backstop: bool = False,
    settings_path: str | None = None,
) -> None:
    """Run xdsd (a ``Daemon``) until ``stop`` is set or SIGTERM/SIGINT arrives; SIGHUP
    forces a reload.

    ``ready`` is set once the listeners are bound. ``notifier`` tells systemd: READY=1
    once a configuration is loaded and the listeners are bound (``/readyz``'s condition),
    RELOADING=1 / READY=1 around a SIGHUP reload, STATUS= lines, WATCHDOG=1 every half
    watchdog interval from the event loop, STOPPING=1 when shutting down.

    Shutdown (``Daemon.shutdown``): ``/readyz`` turns 503, the watcher stops, every open
    gRPC stream ends with UNAVAILABLE and ``SHUTDOWN_MESSAGE`` (streams opened meanwhile
    too), and whatever is still open after ``settings.shutdown_grace`` seconds is cut. A
    second SIGTERM or SIGINT during shutdown exits at once (code 128 + signal). With
    ``backstop`` (the ``xdsd serve`` process, not an in-process caller), a shutdown still
    running ``SHUTDOWN_BACKSTOP`` seconds after the grace ends the process with code 1.

    ``settings_path`` is the settings file ``settings`` came from: SIGHUP reads its
    ``[mesh]`` section again (the other settings need a restart).

    TLS: the files ``tls_cert``, ``tls_key`` and ``tls_client_ca`` name are watched (their
    directories, like certificate files the rules name) and checked by stat on every
    reload; when they changed, new connections to every listener get what they now hold
    (``xdsd.tls.ServerCertificates``), and a replacement that cannot be used is logged as
    an error while the previous certificate keeps serving. SIGHUP reads them again in any
    case.
    """
    daemon = Daemon(
        settings, notifier=notifier, stop=stop, settings_path=settings_path, backstop=backstop
    )
    await daemon.run(ready)


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
        log.exception(
            "internal error reading the settings %s; keeping the current mesh defaults",
            settings_path,
        )
        return None
    log.info("settings %s read again: [mesh] applies now, other settings at restart", settings_path)
    return mesh


#: The flag (and settings key) that chooses each listener's address, by listener name.
_LISTENER_SETTINGS = {"gRPC xDS": "grpc", "REST xDS": "rest", "admin": "admin"}


def _listen_error(listener: DaemonListener, error: OSError) -> StartupError:
    """One line saying which address of which listener cannot be bound, why, and which
    flag or settings key moves it."""
    return listen_error(listener.name, listener.address, error)


def listen_error(name: str, address: Address, error: OSError) -> StartupError:
    """One line saying that ``address`` of the listener ``name`` ("gRPC xDS", "REST xDS",
    "admin") cannot be bound, why, and which flag or settings key moves it."""
    key = _LISTENER_SETTINGS.get(name, name)
    why = (error.strerror or str(error)).lower()
    hint = {
        errno.EADDRINUSE: "is another xdsd running?",
        errno.EADDRNOTAVAIL: "it is not an address of this host",
        errno.EACCES: "ports below 1024 need privileges",
    }.get(error.errno or 0, "")
    return StartupError(
        f"cannot listen on {address} for {name}: {why}"
        + (f" ({hint})" if hint else "")
        + f"; choose another with --{key} HOST:PORT (settings key {key})"
    )


def _tls_note(settings: Settings) -> str:
    """How a listener of ``settings`` speaks: "" (plaintext), " (TLS)" or " (mTLS)"."""
    if not settings.tls:
        return ""
    return " (mTLS)" if settings.tls_client_ca else " (TLS)"


def server_settings(args: argparse.Namespace) -> Settings:
    """``xdsd serve``'s settings: the file's (``--settings``), then the flags'. Raises
    ConfigError naming every wrong value."""
    settings = Settings.from_file(args.settings) if args.settings else Settings()
    overrides: dict[str, Any] = {}
    names = (
        "config_dir",
        "grpc",
        "rest",
        "admin",
        "grpc_impl",
        "shutdown_grace",
        "workers",
        "state_dir",
        "restart_cache",
    )
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    # systemd's StateDirectory= (several are separated by ":"; the first is xdsd's)
    systemd_state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if "state_dir" not in overrides and not settings.state_dir and systemd_state:
        overrides["state_dir"] = systemd_state
    return settings.merged(overrides, source="command line")


def run_server(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """``xdsd serve`` in one process: ``settings`` (default: ``server_settings``), the
    descriptor limit raised (see ``raise_descriptor_limit``), then run until stopped."""
    if settings is None:
        settings = server_settings(args)
    before, after = raise_descriptor_limit()
    if after != before:
        log.info("descriptor limit (RLIMIT_NOFILE, soft) raised from %d to %d", before, after)
    asyncio.run(
        serve(
            settings,
            notifier=Notifier.from_environment(),
            backstop=True,
            settings_path=args.settings,
        )
    )
    return 0
