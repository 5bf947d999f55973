"""The current mesh: ``MeshState`` and the reload boundary around it.

``MeshState`` owns the current configuration: it reloads the directory (keeping the last
good mesh when a load fails), builds a snapshot per node class on first use and rebuilds
the snapshots of every watched class after each successful reload, or when the mesh-wide
proxy defaults change. Its ``load`` and ``apply`` are the reload boundary: whatever goes
wrong in them becomes a refused reload (``InternalError``), never an exception out of
them. The daemon (``xdsd.app``) runs ``load`` in a worker thread and ``apply`` on the loop.

Imported on first use, not with this module: the loader (``xdsd.sources.loader``, with
every parser, yaml and toml: made by the first ``load``), the translation
(``xdsd.translate.mesh``: by the first translation) and the policy view. A start from
the restart cache serves its snapshots before any of them is needed, and ~0.15-0.3 s of
imports sooner (``docs/architecture.md``, "Restart cache").
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from xdsd.admin.proxies import ExpectedProxy, Workload
from xdsd.cache.cache import SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import ConfigError, InternalError, Problem, TranslationError
from xdsd.model.mesh import Mesh
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, MeshConfig
from xdsd.model.networking import ROOT_NAMESPACE, WorkloadGroup
from xdsd.model.registrations import Registration
from xdsd.model.service import Location, Resolution
from xdsd.plurals import counted
from xdsd.protocol import ProtocolError
from xdsd.sources.gateway_api.status import condition_json, mesh_conditions
from xdsd.sources.limits import DEFAULT_LIMITS, ParseLimits
from xdsd.sources.listing import Stamp
from xdsd.translate import ConfigSourceKind, NodeClass, node_class_from_node
from xdsd.translate.address_view import address_rows, moves
from xdsd.translate.virtual_addresses import VirtualAddresses
from xdsd.transports.limits import Refused

if TYPE_CHECKING:
    from xdsd.sources.loader import DirectoryLoader, LoadResult
    from xdsd.translate.mesh import MeshTranslation

log = logging.getLogger(__name__)

#: A refused load logs its first this many errors (then how many more there were), and
#: keeps this many more for ``/debug/errors`` (the last one saying how many were left
#: out): a file of a million broken documents must not flood the log or the admin.
MAX_LOGGED_PROBLEMS = 100
MAX_KEPT_PROBLEMS = 1000
#: A reload that moves more services' virtual addresses logs this many of them one by one
#: (then how many more there were).
MAX_LOGGED_MOVES = 100
#: After this many reload attempts in a row ended in an internal error, the reloader is
#: reported as unable to make progress (``/readyz`` 503, systemd's status).
STUCK_AFTER = 3

_SOURCES = {
    "ads": ConfigSourceKind.ADS,
    "grpc": ConfigSourceKind.ADS,
    "rest": ConfigSourceKind.REST,
    "delta": ConfigSourceKind.DELTA,
}


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
        self._limits = limits
        # The loader, made by the first use of ``_loader`` (see the module docstring).
        self._directory_loader: DirectoryLoader | None = None
        self._registrations: tuple[Registration, ...] = ()
        # Set when the mesh defaults changed in a way the next load must translate even
        # if the directory did not change (mesh mutual TLS: its files come with the load).
        self._retranslate = False
        self.loaded: LoadResult | None = None
        self.translation: MeshTranslation | None = None
        self._expected: tuple[Mesh | None, tuple[ExpectedProxy, ...]] = (None, ())
        self._gateway_status: tuple[Mesh | None, tuple[dict[str, Any], ...]] = (None, ())
        self._groups: tuple[Mesh | None, dict[tuple[str, str], WorkloadGroup]] = (None, {})
        self.errors: tuple[Problem, ...] = ()
        #: The warnings of the last load attempt (refused or not).
        self.warnings: tuple[Problem, ...] = ()
        self.failed_reloads = 0
        # Why node classes cannot be configured from what is loaded (``class_errors``).
        self._class_errors: dict[NodeClass, tuple[Problem, ...]] = {}
        #: Reload attempts in a row that ended in an internal error (``InternalError``).
        self.internal_errors = 0
        #: Seconds per phase of the last reload that loaded the directory: ``list``,
        #: ``parse`` (reading and parsing changed files), ``check`` (cross-checks),
        #: ``translate`` and ``snapshot`` (building and checking the watched classes').
        self.last_timings: dict[str, float] = {}
        # The security policies of each class as the admin server shows them, for the
        # translation they were read from (``policies``).
        self._policies: tuple[MeshTranslation | None, dict[NodeClass, dict[str, Any]]] = (
            None,
            {},
        )
        #: Services whose allocated virtual address a reload moved, since the start
        #: (``xdsd_virtual_address_moves_total``).
        self.address_moves = 0
        # The [mesh.dns] and allocation of the translation being served (None while
        # [mesh.dns] is off), which the next one's is compared with.
        self._allocation: tuple[MeshConfig, VirtualAddresses] | None = None
        # ``/debug/addresses`` as JSON, for the translation it was made from.
        self._addresses: tuple[MeshTranslation | None, dict[str, Any]] = (None, {})
        #: What the restart cache's build being served says of itself (``publish_cached``)
        #: until the first load is applied; "" when none is.
        self.cached = ""
        #: Called after a class's snapshot was built on first use (the daemon writes the
        #: restart cache again).
        self.on_new_class: Callable[[], None] = lambda: None

    def publish_cached(self, classes: Mapping[NodeClass, Snapshot], description: str) -> None:
        """Serve ``classes``' snapshots (the restart cache's, checked against the
        directory: ``xdsd.build_cache``) before any load: their clients are answered at
        once; a client of another class waits for the first load, as for a new class.
        The first load applied replaces them (same versions: nothing is re-sent)."""
        for key, snapshot in classes.items():
            self._cache.set(key, snapshot)
        self.cached = description

    @property
    def _loader(self) -> DirectoryLoader:
        """The directory loader, made (and its module imported) on first use, with the
        current mesh defaults."""
        loader = self._directory_loader
        if loader is None:
            from xdsd.sources.loader import DirectoryLoader

            loader = DirectoryLoader(self.config_dir, limits=self._limits)
            loader.mesh_tls = self.mesh_config.mtls
            loader.extension_providers = self.mesh_config.extension_providers
            loader.registrations = self._registrations
            self._directory_loader = loader
        return loader

    def _configure_loader(self) -> None:
        """Give the loader (when made: ``_loader`` gives a new one these) the current
        mesh defaults it checks files against."""
        loader = self._directory_loader
        if loader is not None:
            loader.mesh_tls = self.mesh_config.mtls
            loader.extension_providers = self.mesh_config.extension_providers

    def file_stamps(self) -> dict[str, Stamp | None]:
        """The stamp of each config file of the last load attempt, as read
        (``DirectoryLoader.stamps``)."""
        return self._loader.stamps()

    @property
    def class_errors(self) -> tuple[Problem, ...]:
        """Why node classes cannot be configured from what is loaded (a load can succeed
        while one class's configuration cannot be built: two of its listeners on one
        address, a security policy its node cannot enforce): each problem with its class
        named first. Such a class keeps its last good configuration (a new one gets
        none); ``/debug/errors`` and ``xdsd status`` show these as errors. At most
        ``MAX_KEPT_PROBLEMS``; empty when every class builds."""
        found = [
            dataclasses.replace(p, message=f"node class {_class_name(key)}: {p.message}")
            for key, problems in self._class_errors.items()
            for p in problems
        ]
        return _bounded(tuple(found), MAX_KEPT_PROBLEMS)

    @property
    def registrations(self) -> tuple[Registration, ...]:
        """The registrations merged into every load (``set_registrations``)."""
        return self._registrations

    def set_registrations(self, registrations: Iterable[Registration]) -> None:
        """Merge ``registrations`` into the next load (``load([])`` then reads no file:
        see ``DirectoryLoader.registrations``)."""
        self._registrations = tuple(registrations)
        if self._directory_loader is not None:  # else the loader, when made, takes them
            self._directory_loader.registrations = self._registrations

    def group(self, namespace: str, name: str) -> WorkloadGroup | None:
        """The WorkloadGroup ``namespace/name`` of the loaded mesh (None: none loaded,
        or no such group)."""
        mesh = self.loaded.mesh if self.loaded is not None else None
        if mesh is None:
            return None
        if self._groups[0] is not mesh:
            self._groups = (mesh, {(g.namespace, g.name): g for g in mesh.workload_groups})
        return self._groups[1].get((namespace, name))

    @property
    def certificate_paths(self) -> frozenset[str]:
        """The certificate and key files the last load attempt's rules named (their
        directories are watched besides the config directory; none before the first
        load)."""
        loader = self._directory_loader
        return loader.certificate_paths if loader is not None else frozenset()

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
            return internal_error(self.config_dir, "loading", e)

    @property
    def stuck(self) -> str:
        """Why the reloader cannot make progress ("" when it can): the last
        ``STUCK_AFTER`` reload attempts or more ended in an internal error."""
        if self.internal_errors >= STUCK_AFTER:
            return (
                f"the last {self.internal_errors} reloads failed with an internal error "
                "(see the log)"
            )
        return ""

    def apply(self, result: LoadResult | ConfigError, *, quiet: bool = False) -> bool:
        """The second half of ``reload``, on the serving thread: keep the last good
        configuration on an error, else translate and publish (see ``reload``).
        ``quiet``: a refusal is logged at debug level only (a load tried again for a
        fault of the machine that was logged already).

        Never raises: an exception while translating or publishing is logged with its
        traceback and handled as a refused load (``InternalError``); the configuration
        that was being served stays the current one."""
        loaded, translation = self.loaded, self.translation
        try:
            with _building():
                applied = self._apply(result, quiet)
        except Exception as e:
            log.exception("internal error applying the configuration of %s", self.config_dir)
            self.loaded, self.translation = loaded, translation
            # Some classes may have been sent the new mesh: the next load translates
            # every class again, even if the directory is the same as this one.
            self._retranslate = True
            result = internal_error(self.config_dir, "translating and publishing", e)
            with _building():
                return self._apply(result)
        return applied

    def _apply(self, result: LoadResult | ConfigError, quiet: bool = False) -> bool:
        started = time.perf_counter()
        if isinstance(result, ConfigError):
            e = result
            level = logging.DEBUG if quiet else logging.ERROR
            self.failed_reloads += 1
            self.internal_errors = self.internal_errors + 1 if isinstance(e, InternalError) else 0
            self.errors = _bounded(e.problems, MAX_KEPT_PROBLEMS)
            self.warnings = _bounded(e.warnings, MAX_KEPT_PROBLEMS)
            for problem in e.problems[:MAX_LOGGED_PROBLEMS]:
                log.log(level, "config: %s", problem)
            if len(e.problems) > MAX_LOGGED_PROBLEMS:
                log.log(
                    level,
                    "config: ... and %s (xdsd validate lists them all)",
                    counted(len(e.problems) - MAX_LOGGED_PROBLEMS, "more error"),
                )
            if self.loaded is None:
                log.log(
                    level,
                    "config refused (%s); nothing loaded yet: proxies get no "
                    "configuration until the files are fixed",
                    counted(len(e.problems), "error"),
                )
            else:
                log.log(
                    level,
                    "config refused (%s); still serving the last good configuration",
                    counted(len(e.problems), "error"),
                )
            return False
        self.internal_errors = 0
        self.errors = ()
        self.warnings = _bounded(result.warnings, MAX_KEPT_PROBLEMS)
        for warning in result.warnings[:MAX_LOGGED_PROBLEMS]:
            log.warning("config: %s", warning)
        if len(result.warnings) > MAX_LOGGED_PROBLEMS:
            log.warning(
                "config: ... and %s",
                counted(len(result.warnings) - MAX_LOGGED_PROBLEMS, "more warning"),
            )
        if self.loaded is not None and result.mesh == self.loaded.mesh and not self._retranslate:
            log.info("config reloaded: no change")
            self.loaded = result
            return False
        previous, retranslate = self.loaded, self._retranslate
        self.loaded = result
        self._retranslate = False
        try:
            changed = self._translate_and_publish()
        except TranslationError as e:  # before anything was published: the block is too small
            self.loaded, self._retranslate = previous, retranslate
            return self._apply(ConfigError(e.problems, result.warnings))
        assert self.translation is not None
        self.cached = ""
        self.last_timings = {**result.timings, **self.translation.timings}
        log.info(
            "config loaded: %s, %s (%s read); %s updated; %.1f ms: %s",
            counted(len(result.mesh.services), "service"),
            counted(len(result.mesh.virtual_services) + len(result.mesh.destination_rules), "rule"),
            counted(result.reread, "file"),
            counted(changed, "class", "classes"),
            (sum(result.timings.values()) + time.perf_counter() - started) * 1000,
            ", ".join(f"{k} {v * 1000:.1f}" for k, v in self.last_timings.items()),
        )
        return True

    def set_mesh_config(self, mesh_config: MeshConfig) -> bool:
        """Use ``mesh_config`` as the mesh-wide proxy defaults from now on. When it differs
        from the current one and a mesh is loaded, translate again (reusing every
        resource the defaults do not touch) and publish new snapshots for every watched
        class; return True then. A change to mesh mutual TLS or to the extension providers
        is translated by the next
        ``load``/``apply`` instead, which reads its certificate files."""
        if mesh_config == self.mesh_config:
            return False
        # Mesh mutual TLS comes with its certificate files, and extension providers are
        # checked against the policies: both need a load.
        needs_load = (
            mesh_config.mtls != self.mesh_config.mtls
            or mesh_config.extension_providers != self.mesh_config.extension_providers
        )
        before = self.mesh_config
        self.mesh_config = mesh_config
        self._configure_loader()
        if self.loaded is None:
            return False
        if needs_load or self._retranslate:
            # The loaded mesh lacks (or has stale) mesh certificate files until a load
            # succeeds with these settings: translating it now would fail every class.
            self._retranslate = True
            return False
        try:
            with _building():
                changed = self._translate_and_publish()
        except TranslationError as e:  # [mesh.dns]'s new block cannot hold the mesh
            for problem in e.problems:
                log.error("settings: %s", problem)
            log.error("mesh defaults refused; keeping the current ones")
            self.mesh_config = before
            self._configure_loader()
            return False
        log.info("mesh defaults changed: %s updated", counted(changed, "class", "classes"))
        return True

    def _translate_and_publish(self) -> int:
        """Translate the loaded mesh with the current defaults and publish a snapshot for
        every class a client holds (a stream, or a REST poller still remembered: the
        cache's ``held``; the others are forgotten); return how many changed.

        Raises TranslationError, having published nothing, when ``[mesh.dns]``'s block
        cannot hold the mesh's services (``virtual_addresses.allocate_for``)."""
        assert self.loaded is not None
        from xdsd.translate.mesh import MeshTranslation

        translation = MeshTranslation(
            self.loaded.mesh,
            previous=self.translation,
            root_namespace=self.root_namespace,
            mesh_config=self.mesh_config,
        )
        self._note_addresses(translation)
        self.translation = translation
        changed = 0
        self._cache.evict_unheld()
        self._class_errors = {}
        # held classes without a snapshot too: clients that came while nothing was
        # loaded, or while the restart cache's classes were served
        for key in dict.fromkeys([*self._cache.keys(), *self._cache.held_keys()]):
            try:
                snapshot = self.translation.snapshot_for(key)
            except TranslationError as e:
                log.error("node class %s cannot be configured: %s", key, e)
                self._class_errors[key] = e.problems
                continue
            if self._cache.set(key, snapshot):
                changed += 1
        return changed

    def _note_addresses(self, translation: MeshTranslation) -> None:
        """Allocate the virtual addresses of ``translation`` (when ``[mesh.dns]`` is on)
        and warn about every service whose address moved since the one served: the
        allocation's stability limit (``translate/virtual_addresses.py``), or a new
        block. Raises TranslationError when the block is too small."""
        if not self.mesh_config.dns.enabled:
            self._allocation = None
            return
        allocation = (self.mesh_config, translation.virtual_addresses())
        before = self._allocation
        moved = moves(
            (before[0].dns, before[1]) if before is not None else None,
            (self.mesh_config.dns, allocation[1]),
        )
        self._allocation = allocation
        if not moved:
            return
        self.address_moves += len(moved)
        for move in moved[:MAX_LOGGED_MOVES]:
            log.warning(
                "virtual address of %s moved from %s to %s (clients holding the old one "
                "from DNS lose it; pin it with `address` in its file to keep it)",
                move.key,
                move.old,
                move.new,
            )
        if len(moved) > MAX_LOGGED_MOVES:
            log.warning(
                "... and %s moved",
                counted(
                    len(moved) - MAX_LOGGED_MOVES, "more virtual address", "more virtual addresses"
                ),
            )

    def addresses(self) -> dict[str, Any]:
        """``/debug/addresses``: ``[mesh.dns]``'s blocks (``enabled``, ``block``,
        ``block_v6``) and, while it is on, every service's virtual addresses (key,
        namespace, fqdn, names, addresses, ``pinned`` or allocated ``slot``:
        ``address_view.AddressRow``), in key order; computed once per translation."""
        translation = self.translation
        if self._addresses[0] is translation and translation is not None:
            return self._addresses[1]
        dns = translation.mesh_config.dns if translation is not None else self.mesh_config.dns
        rows: list[dict[str, Any]] = []
        if translation is not None and dns.enabled:
            # allocated when it was translated (``_note_addresses``): remembered by it
            allocation = translation.virtual_addresses()
            rows = [r.as_json() for r in address_rows(translation.mesh.services, allocation, dns)]
        shown: dict[str, Any] = {
            "enabled": dns.enabled,
            "block": dns.virtual_addresses,
            "block_v6": dns.virtual_addresses_v6,
            "services": rows,
        }
        self._addresses = (translation, shown)
        return shown

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

    def policies(self, key: Hashable) -> dict[str, Any]:
        """The security policies that apply to node class ``key`` under the current
        translation and its inbound ports' mutual TLS modes, as the admin server shows
        them (``policy_view.AppliedPolicies.as_json``; none before a configuration
        loaded). Computed once per class and translation."""
        from xdsd.translate.policy_view import NO_APPLIED_POLICIES, applied_policies

        translation = self.translation
        if not isinstance(key, NodeClass) or translation is None:
            return NO_APPLIED_POLICIES.as_json()
        read_from, found = self._policies
        if read_from is not translation:
            found = {}
            self._policies = (translation, found)
        shown = found.get(key)
        if shown is None:
            shown = found[key] = applied_policies(translation, key).as_json()
        return shown

    def expected_proxies(self) -> tuple[ExpectedProxy, ...]:
        """The proxies the loaded configuration expects (``expected_proxies``; none
        before a configuration loaded), computed once per mesh."""
        mesh = self.loaded.mesh if self.loaded is not None else None
        if mesh is None:
            return ()
        if self._expected[0] is not mesh:
            self._expected = (mesh, expected_proxies(mesh))
        return self._expected[1]

    def gateway_status(self) -> tuple[dict[str, Any], ...]:
        """The status conditions of the loaded configuration's Gateway API objects, as
        ``/debug/errors`` and the status page show them (``condition_json``; none
        before a configuration loaded), computed once per mesh."""
        mesh = self.loaded.mesh if self.loaded is not None else None
        if mesh is None:
            return ()
        if self._gateway_status[0] is not mesh:
            rows = tuple(condition_json(c) for c in mesh_conditions(mesh))
            self._gateway_status = (mesh, rows)
        return self._gateway_status[1]

    @staticmethod
    def workload(key: Hashable) -> Workload | None:
        """Where the proxies of node class ``key`` are: its namespace, service, role and
        ``instance_ip`` (None for a key that is not a ``NodeClass``)."""
        if not isinstance(key, NodeClass):
            return None
        return Workload(key.namespace, key.service, key.role.value, key.instance_ip)

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
                    "RESOURCE_EXHAUSTED",
                    429,
                    "too_many_node_classes",
                    f"{self.max_classes} node classes are held by clients, the limit "
                    "(max_node_classes): no snapshot for a new one",
                )
        with _building():  # the first class of a flavor builds every cluster of the mesh
            try:
                snapshot = self.translation.snapshot_for(key)
            except TranslationError as e:
                self._class_errors[key] = e.problems
                raise
            self._cache.set(key, snapshot)
            self._class_errors.pop(key, None)
        self.on_new_class()
        return snapshot


def _class_name(key: NodeClass) -> str:
    """``ROLE NAMESPACE/SERVICE`` of a node class, with its labels when it has some."""
    labels = ",".join(f"{k}={v}" for k, v in key.labels)
    return f"{key.role.value} {key.namespace}/{key.service}" + (f" [{labels}]" if labels else "")


def internal_error(config_dir: str, doing: str, error: BaseException) -> InternalError:
    """The refusal for an unexpected exception while ``doing`` (already logged)."""
    return InternalError(
        [
            Problem(
                config_dir,
                0,
                "",
                f"internal error while {doing} ({type(error).__name__}: {error}); the last good "
                "configuration keeps serving and the log has the traceback",
            )
        ]
    )


def _bounded(problems: tuple[Problem, ...], limit: int) -> tuple[Problem, ...]:
    """``problems``, or its first ``limit`` and one more saying how many were left out."""
    if len(problems) <= limit:
        return problems
    last = problems[limit]
    left = len(problems) - limit
    return (
        *problems[:limit],
        Problem(
            last.path,
            0,
            "",
            f"... and {left} more like these (not kept here; xdsd validate lists them all)",
            last.severity,
        ),
    )


@contextlib.contextmanager
def _building(*, exclusive: bool = True) -> Iterator[None]:
    """Keep the cyclic garbage collector out of a build, and its survivors out of its
    sight afterwards.

    How this works: a large mesh's build creates millions of objects that nearly all
    survive. A collection during the build walks all of them again and again, and so does
    every full collection later (what that cost, measured: ``docs/performance.md``,
    "Rebuild cost"). So the collector is paused (reference counting still frees what
    dies) and at the end what is alive is frozen (``gc.freeze()``: kept out of every
    later collection). Before the build, the young generations are collected: what was
    allocated since the last build (the serving's garbage) is looked at once as usual.

    At the end, when the build had the process to itself (``exclusive``: the daemon's
    event loop thread, or a load before serving starts), its survivors are frozen without
    being walked: the build creates no reference cycles (the model, the loader, the
    translation and resources hold none; ``tests/test_app.py`` checks that a cold build,
    a refused reload and incremental reloads leave no cyclic garbage), so a walk would
    find nothing to free, and it is not cheap. A load in a
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


def expected_proxies(mesh: Mesh) -> tuple[ExpectedProxy, ...]:
    """One expected proxy per endpoint of each Service file (statically resolved,
    inside the mesh; a ServiceEntry's hosts are someone else's) and per WorkloadEntry
    (which names no service: any sidecar of its namespace at its address covers it).
    An endpoint address several Services share is covered by a sidecar of any of them
    (``ExpectedProxy.also``)."""
    out = []
    for service in mesh.services:
        if (
            service.entry
            or service.location is not Location.MESH_INTERNAL
            or service.resolution is not Resolution.STATIC
        ):
            continue
        origin = f"Service {service.namespace}/{service.name} ({service.origin})"
        out += [
            ExpectedProxy(service.namespace, service.name, e.address, origin)
            for e in service.endpoints
        ]
    # One workload behind several Services (the Gateway API's per-version backends):
    # a sidecar of any of them covers each.
    sharing: dict[tuple[str, str], list[str]] = {}
    for p in out:
        sharing.setdefault((p.namespace, p.address), []).append(p.service)
    out = [
        dataclasses.replace(p, also=tuple(s for s in names if s != p.service))
        if len(names := sharing[p.namespace, p.address]) > 1
        else p
        for p in out
    ]
    for entry in mesh.workload_entries:
        if entry.endpoint.address:
            origin = f"WorkloadEntry {entry.namespace}/{entry.name} ({entry.origin})"
            out.append(ExpectedProxy(entry.namespace, "", entry.endpoint.address, origin))
    return tuple(out)
