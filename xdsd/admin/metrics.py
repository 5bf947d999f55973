"""Prometheus metrics of one daemon, in a registry of its own.

How this works: events are counted where they happen, and states are read when scraped.
``Metrics`` is the snapshot cache's ``ClientObserver``: each response, ACK and rejection
the cache records increments a counter (the labelled child is looked up once per label
pair and kept, so the serving path pays an increment, not a label lookup), and each ACK
that answers a recorded response observes its push-to-ACK latency. Reloads are timed by
the daemon (``observe_reload``); the certificates xdsd's CA issued are counted by the CA
side and read when scraped (``track_issuance``). Everything that is a state — connected
clients, their sync state per type and identities, config errors and warnings, the
version of each type per node class, the soonest certificate expiry — is computed from
the cache and the configuration when ``/metrics`` is scraped, so it costs nothing
between scrapes. No metric lives in a module global: two daemons in one
process (tests) never share a value.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from xdsd.admin.identities import soonest_expiry
from xdsd.cache.cache import SYNC_STATES, SnapshotCache
from xdsd.errors import Problem
from xdsd.resources import SHORT_NAMES, TypeUrl

#: Reload duration buckets (seconds): milliseconds for an edit, seconds for a cold load of
#: a large mesh.
RELOAD_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: Push-to-ACK latency buckets (seconds): an Envoy answers in milliseconds, a REST
#: poller after up to its refresh delay.
ACK_BUCKETS = (*RELOAD_BUCKETS, 60.0)


class ConfigState(Protocol):
    """What the admin server reads of the daemon's configuration (``MeshState`` is one)."""

    @property
    def errors(self) -> Sequence[Problem]:
        """The errors of the last refused reload (empty once a reload succeeds)."""
        ...

    @property
    def warnings(self) -> Sequence[Problem]:
        """The warnings of the last load attempt."""
        ...

    @property
    def failed_reloads(self) -> int:
        """How many reloads were refused since the start."""
        ...

    @property
    def class_errors(self) -> Sequence[Problem]:
        """Why node classes cannot be configured from what is loaded (each naming its
        class; empty when every class builds)."""
        ...

    @property
    def loaded(self) -> object | None:
        """The configuration being served; None before the first good load."""
        ...


def type_name(type_url: str) -> str:
    """The short name of a type (``clusters``), or the URL of a type without one."""
    return SHORT_NAMES.get(TypeUrl(type_url), type_url)


class Metrics:
    """The daemon's metrics and their registry (expose ``registry``).

    Implements ``ClientObserver`` (pass it to ``SnapshotCache(observer=...)``); call
    ``track`` once the cache and configuration exist so the states are exported too.
    """

    def __init__(self, *, version: str, clock: Any = time.time) -> None:
        self.registry = CollectorRegistry()
        self.started_at: float = clock()
        r = self.registry
        Info("xdsd_build", "xdsd's version.", registry=r).info({"version": version})
        Gauge("xdsd_start_time_seconds", "When the daemon started (Unix time).", registry=r).set(
            self.started_at
        )
        ProcessCollector(registry=r)
        self.responses = Counter(
            "xdsd_responses",
            "Discovery responses sent (pushes), by transport and type.",
            ["transport", "type"],
            registry=r,
        )
        self.acks = Counter(
            "xdsd_acks",
            "Responses acknowledged (ACKs), by transport and type.",
            ["transport", "type"],
            registry=r,
        )
        self.nacks = Counter(
            "xdsd_nacks",
            "Responses rejected (NACKs; over REST, versions not applied), by transport and type.",
            ["transport", "type"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "xdsd_push_ack_seconds",
            "Seconds from sending a response to receiving its ACK, by type.",
            ["type"],
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.reload_duration = Histogram(
            "xdsd_reload_duration_seconds",
            "Seconds a reload took (reading, checking, translating, publishing), by "
            "outcome: applied, unchanged or refused.",
            ["outcome"],
            buckets=RELOAD_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "xdsd_refused",
            "Streams and requests refused by a limit, by node authorization or for an "
            "identity credential, by listener (grpc, rest, admin) and reason "
            "(request_too_large, too_many_streams, first_request_timeout, "
            "permission_denied; with [mesh.ca]: token_absent, token_malformed, "
            "token_forged, token_expired, token_revoked).",
            ["listener", "reason"],
            registry=r,
        )
        self._sent: dict[tuple[str, str], Any] = {}
        self._acked: dict[tuple[str, str], Any] = {}
        self._rejected: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    # -- ClientObserver (called on the serving path: keep these lean) -------------------

    def on_sent(self, transport: str, type_url: TypeUrl) -> None:
        """Count a response."""
        child = self._sent.get((transport, type_url))
        if child is None:
            child = self._sent[transport, type_url] = self.responses.labels(
                transport, type_name(type_url)
            )
        child.inc()

    def on_ack(self, transport: str, type_url: TypeUrl, latency: float | None) -> None:
        """Count an ACK; observe its latency when it answers a recorded response."""
        child = self._acked.get((transport, type_url))
        if child is None:
            child = self._acked[transport, type_url] = self.acks.labels(
                transport, type_name(type_url)
            )
        child.inc()
        if latency is not None:
            histogram = self._latency.get(type_url)
            if histogram is None:
                histogram = self._latency[type_url] = self.ack_latency.labels(type_name(type_url))
            histogram.observe(max(latency, 0.0))

    def on_rejected(self, transport: str, type_url: TypeUrl) -> None:
        """Count a NACK (or a REST version not applied)."""
        child = self._rejected.get((transport, type_url))
        if child is None:
            child = self._rejected[transport, type_url] = self.nacks.labels(
                transport, type_name(type_url)
            )
        child.inc()

    # -- the daemon ----------------------------------------------------------------------

    def on_refused(self, listener: str, reason: str) -> None:
        """Count a refusal (the transports' ``RefusalObserver``)."""
        self.refused.labels(listener, reason).inc()

    def observe_reload(self, seconds: float, outcome: str) -> None:
        """A reload took ``seconds``; ``outcome`` is applied, unchanged or refused."""
        self.reload_duration.labels(outcome).observe(seconds)

    def track(self, cache: SnapshotCache[Any], config: ConfigState) -> None:
        """Export the states of ``cache`` and ``config`` at every scrape."""
        self.registry.register(StateCollector(cache, config))

    def track_log_drops(self, count: Callable[[], int]) -> None:
        """Export ``count()`` (log lines dropped so far, ``logs.dropped_log_lines``) as
        ``xdsd_log_records_dropped_total`` at every scrape."""
        self.registry.register(_LogDrops(count))

    def track_address_moves(self, count: Callable[[], int]) -> None:
        """Export ``count()`` (services whose allocated virtual address a reload moved
        since the start, ``MeshState.address_moves``) as
        ``xdsd_virtual_address_moves_total`` at every scrape."""
        self.registry.register(_AddressMoves(count))

    def track_issuance(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Export ``counts()`` — (first certificates issued, renewals and re-issues) of
        xdsd's CA since the start (``Identities.issued_total``, ``renewed_total``) — at
        every scrape, as ``xdsd_certificates_issued_total`` (both) and
        ``xdsd_certificate_renewals_total``."""
        self.registry.register(_Issuance(counts))

    def track_registry(self, counts: Callable[[], Mapping[str, Any]]) -> None:
        """Export the registry's ``counts()`` (``Registry.counts``: ``registered``,
        ``expired``, ``refused`` by reason, ``current``, ``held``) at every scrape, as
        ``xdsd_registrations_total``, ``xdsd_registration_expiries_total``,
        ``xdsd_registrations_refused_total{reason}``, ``xdsd_registrations`` (every
        replica's, as the store holds them) and ``xdsd_registrations_held`` (this
        replica's)."""
        self.registry.register(_Registrations(counts))

    def track_store(self, figures: Callable[[], tuple[bool, Mapping[str, int]]]) -> None:
        """Export the registration store's state at every scrape: ``figures()`` gives
        whether it reaches its backend and its event counters (``EtcdStore.counts``:
        ``unreachable``, ``resync``, ``lease_granted``, ``lease_lost``, ``value_skipped``,
        ``key_skipped``, ``error``), as ``xdsd_registry_store_connected`` (1 or 0) and
        ``xdsd_registry_store_events_total{event}``."""
        self.registry.register(_StoreFigures(figures))

    def track_probes(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Export the prober's counters (``Prober.counts``) at every scrape:
        ``xdsd_probe_checks_total``, ``xdsd_probe_failures_total`` (checks that failed)
        and ``xdsd_probe_transitions_total{health}`` (HEALTHY, UNHEALTHY)."""
        self.registry.register(_ProbeFigures(counts))


class _Registrations(Collector):
    """The registry's counters and gauges, read when scraped."""

    def __init__(self, counts: Callable[[], Mapping[str, Any]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        """The registry's figures, as they are now."""
        counts = self.counts()
        for family, name, text, key in _REGISTRY_FIGURES:
            if key == "refused":
                refused = family(name, text, labels=["reason"])
                for reason, n in sorted(counts.get("refused", {}).items()):
                    refused.add_metric([reason], n)
                yield refused
                continue
            metric = family(name, text)
            metric.add_metric([], counts.get(key, 0))
            yield metric


#: The registry's figures in the order they are exposed: (family, name, help, the key of
#: ``Registry.counts`` read; ``refused`` is a mapping by reason).
_REGISTRY_FIGURES: tuple[
    tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, str], ...
] = (
    (
        CounterMetricFamily,
        "xdsd_registrations",
        "Workloads admitted into a WorkloadGroup (new registrations).",
        "registered",
    ),
    (
        CounterMetricFamily,
        "xdsd_registration_expiries",
        "Registrations removed after their sidecar's grace period ended.",
        "expired",
    ),
    (
        CounterMetricFamily,
        "xdsd_registrations_refused",
        "Registrations refused, by reason (unknown_group, other_service, ...).",
        "refused",
    ),
    (
        GaugeMetricFamily,
        "xdsd_registrations_current",
        "Registered workloads the store holds (every replica's).",
        "current",
    ),
    (
        GaugeMetricFamily,
        "xdsd_registrations_held",
        "Registered workloads this replica holds.",
        "held",
    ),
    (
        CounterMetricFamily,
        "xdsd_registry_write_failures",
        "Registration writes the store could not take (each attempt; retried).",
        "store_failures",
    ),
    (
        GaugeMetricFamily,
        "xdsd_registry_writes_pending",
        "Registration changes waiting to be written to the store (etcd unreachable).",
        "pending",
    ),
)


class _StoreFigures(Collector):
    """The registration store's state and events, read when scraped."""

    def __init__(self, figures: Callable[[], tuple[bool, Mapping[str, int]]]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        """The store's figures, as they are now."""
        connected, counts = self.figures()
        state = GaugeMetricFamily(
            "xdsd_registry_store_connected",
            "1 while the registration store reaches its backend (etcd), else 0: "
            "registrations are the last known.",
        )
        state.add_metric([], 1 if connected else 0)
        yield state
        events = CounterMetricFamily(
            "xdsd_registry_store_events",
            "Registration store events (unreachable, resync, lease_granted, lease_lost, "
            "value_skipped, key_skipped, error, handed_over, lease_left).",
            labels=["event"],
        )
        for event, n in sorted(counts.items()):
            events.add_metric([event], n)
        yield events


class _ProbeFigures(Collector):
    """The prober's counters, read when scraped."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        """The probes' figures, as they are now."""
        counts = self.counts()
        checks = CounterMetricFamily(
            "xdsd_probe_checks", "Health probe checks of registered workloads."
        )
        checks.add_metric([], counts.get("checks", 0))
        yield checks
        failures = CounterMetricFamily(
            "xdsd_probe_failures",
            "Health probe checks that failed (refused, timed out, bad status).",
        )
        failures.add_metric([], counts.get("failures", 0))
        yield failures
        transitions = CounterMetricFamily(
            "xdsd_probe_transitions",
            "Registered workloads judged HEALTHY or UNHEALTHY by their probe's thresholds.",
            labels=["health"],
        )
        for health in ("HEALTHY", "UNHEALTHY"):
            transitions.add_metric([health], counts.get(health.lower(), 0))
        yield transitions


class _Issuance(Collector):
    """``xdsd_certificates_issued_total`` and ``xdsd_certificate_renewals_total``, read
    when scraped."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        """The counters, as they are now."""
        first, renewed = self.counts()
        issued = CounterMetricFamily(
            "xdsd_certificates_issued",
            "Workload certificates xdsd's CA signed for proxies (first ones and renewals).",
        )
        issued.add_metric([], first + renewed)
        yield issued
        renewals = CounterMetricFamily(
            "xdsd_certificate_renewals",
            "Workload certificates that replaced one the same stream held (timer renewals, "
            "re-issues by a new signing authority); also in xdsd_certificates_issued.",
        )
        renewals.add_metric([], renewed)
        yield renewals


class _AddressMoves(Collector):
    """``xdsd_virtual_address_moves_total``, read when scraped."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[Metric]:
        """The counter, as it is now."""
        family = CounterMetricFamily(
            "xdsd_virtual_address_moves",
            "Services whose allocated virtual address a reload moved (a newcomer won its "
            "slot, or the block changed); pin an address with `address` to keep it.",
        )
        family.add_metric([], self.count())
        yield family


class _LogDrops(Collector):
    """``xdsd_log_records_dropped_total``, read when scraped."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[Metric]:
        """The counter, as it is now."""
        family = CounterMetricFamily(
            "xdsd_log_records_dropped",
            "Log lines dropped because the log stream did not keep up (queue full).",
        )
        family.add_metric([], self.count())
        yield family


class StateCollector(Collector):
    """The metrics that are states, computed from the cache and configuration when
    scraped (cost: one pass over the client records and the node classes)."""

    def __init__(self, cache: SnapshotCache[Any], config: ConfigState) -> None:
        self.cache = cache
        self.config = config

    def collect(self) -> Iterator[Metric]:
        """Every state metric, as it is now."""
        connected: Tally[str] = Tally()
        by_type: Tally[tuple[str, ...]] = Tally()
        sync: Tally[tuple[str, str]] = Tally()
        identities: Tally[tuple[str, ...]] = Tally()
        clients = self.cache.clients()
        for client in clients:
            if not client.connected:
                continue
            connected[client.transport] += 1
            if client.identity is not None:
                identities[(client.identity.credential,)] += 1
            for type_url, status in client.types.items():
                name = type_name(type_url)
                by_type[client.transport, name] += 1
                sync[name, status.state] += 1
        yield _gauge(
            "xdsd_connected_clients",
            "Connected xDS clients (gRPC streams, REST pollers), by transport.",
            ["transport"],
            {(t,): n for t, n in connected.items()},
        )
        yield _gauge(
            "xdsd_connected_clients_by_type",
            "Connected clients that were served a type, by transport and type.",
            ["transport", "type"],
            dict(by_type),
        )
        types = sorted({t for t, _ in sync})
        yield _gauge(
            "xdsd_client_sync",
            "Connected clients by type and sync state (in_sync, pending, nacked, not_applied).",
            ["type", "state"],
            {(t, s): sync.get((t, s), 0) for t in types for s in SYNC_STATES},
        )
        yield _gauge(
            "xdsd_workload_identities",
            "Connected clients holding a workload certificate xdsd's CA issued, by the "
            "credential they proved who they are with (token, certificate).",
            ["credential"],
            dict(identities),
        )
        soonest = soonest_expiry(clients)
        expiry = GaugeMetricFamily(
            "xdsd_certificate_soonest_expiry_timestamp_seconds",
            "When the first of the certificates connected clients hold expires (Unix time; "
            "absent while none holds one). Alert on it minus time() getting small: "
            "renewals are not happening.",
        )
        if soonest is not None:
            expiry.add_metric([], soonest)
        yield expiry
        yield _gauge(
            "xdsd_config_errors",
            "Errors of the last refused reload (0 when the last reload loaded).",
            [],
            {(): len(self.config.errors)},
        )
        yield _gauge(
            "xdsd_config_warnings",
            "Warnings of the last reload.",
            [],
            {(): len(self.config.warnings)},
        )
        yield _gauge(
            "xdsd_config_loaded",
            "1 once a configuration is served (the last good one stays after a refusal).",
            [],
            {(): 1 if self.config.loaded is not None else 0},
        )
        refused = CounterMetricFamily(
            "xdsd_config_reloads_refused",
            "Reloads refused for configuration errors (the last good configuration stayed).",
        )
        refused.add_metric([], self.config.failed_reloads)
        yield refused
        keys: list[Hashable] = list(self.cache.keys())
        yield _gauge("xdsd_node_classes", "Node classes with a snapshot.", [], {(): len(keys)})
        versions = GaugeMetricFamily(
            "xdsd_snapshot_version_info",
            "The current version of each type per node class (value 1).",
            labels=["class", "type", "version"],
        )
        resources = GaugeMetricFamily(
            "xdsd_snapshot_resources",
            "Resources in the current snapshot of each node class, by type.",
            labels=["class", "type"],
        )
        for key in keys:
            snapshot = self.cache.get(key)
            if snapshot is None:
                continue
            label = str(key)
            for type_url, version in snapshot.versions.items():
                name = type_name(type_url)
                versions.add_metric([label, name, version], 1)
                resources.add_metric([label, name], len(snapshot.get(type_url)))
        yield versions
        yield resources


def _gauge(
    name: str, documentation: str, labels: list[str], values: dict[tuple[str, ...], int]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family
