"""Health probes of registered workloads: a WorkloadGroup's ``probe`` run against each
workload this replica holds.

Where probes run, and why: in the xdsd replica that holds the registration (the one
the workload's sidecar is connected to), not in every caller's Envoy as active health
checks. Each workload is then probed once, whatever the number of callers (active
checks cost callers times workloads probes, and every caller would need the probe's
port reachable and its timing in its clusters); the verdict is part of the
registration (``Registration.health``), so it reaches every replica through the store
and every caller through EDS as the endpoint's health — one answer for the whole mesh,
visible on ``/debug/registrations``. What a caller sees on its own path (a partition
between caller and workload) stays the job of outlier detection, per caller.

``Prober`` follows Kubernetes' semantics (``ReadinessProbe``): the first check
``initial_delay_seconds`` after the workload is first seen, then one every
``period_seconds``, each with ``timeout_seconds``; ``success_threshold`` successes in
a row make a workload HEALTHY, ``failure_threshold`` failures in a row UNHEALTHY, and
only those transitions are reported (``report(key, health)``). An ``httpGet`` succeeds
on a status from 200 to 399 (redirects not followed, HTTPS certificates not verified,
as the kubelet), a ``tcpSocket`` when the connection opens.

Bounded: at most ``max_concurrent`` checks in flight (a check waits for its turn, and a
workload has at most one check at a time), the workloads probed are the registry's
(bounded by ``max_registrations``), and a response body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from xdsd.model.networking import ProbeScheme, ReadinessProbe
from xdsd.model.registrations import Health, Registration
from xdsd.model.service import ResourceKey

log = logging.getLogger(__name__)

#: Checks in flight at once, by default.
MAX_CONCURRENT = 64
#: How often the workloads to probe are read again when nothing is due (seconds).
RESCAN = 1.0


@dataclass(slots=True)
class _Target:
    """One probed workload: its probe, when it is next due, its streaks and verdict."""

    registration: Registration
    probe: ReadinessProbe
    due: float
    successes: int = 0
    failures: int = 0
    health: Health = Health.UNKNOWN
    running: bool = False
    last_error: str = field(default="")


class Prober:
    """Probes the registrations ``held()`` returns (this replica's) with the probe
    ``probe_of(group)`` gives (None: not probed) and reports each health transition to
    ``report(key, health)`` (``Registry.set_health``). ``run`` is the background task."""

    def __init__(
        self,
        *,
        held: Callable[[], Mapping[str, Registration]],
        probe_of: Callable[[ResourceKey], ReadinessProbe | None],
        report: Callable[[str, Health], object],
        max_concurrent: int = MAX_CONCURRENT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.held = held
        self.probe_of = probe_of
        self.report = report
        self.clock = clock
        self._turns = asyncio.Semaphore(max_concurrent)
        self._targets: dict[str, _Target] = {}
        self._checks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        #: ``checks``, ``failures`` (checks that failed), ``unhealthy`` and ``healthy``
        #: (transitions), ``errors`` (internal): the metrics read them.
        self.counts: Counter[str] = Counter()

    def health(self) -> dict[str, Health]:
        """The verdict on each probed workload, by key."""
        return {key: target.health for key, target in self._targets.items()}

    async def run(self) -> None:
        """Probe until cancelled; an internal error is logged and counted, never ends
        the task."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True, ssl=_no_verify())
        )
        try:
            while True:
                try:
                    self._rescan()
                    self._start_due()
                except Exception:
                    self.counts["errors"] += 1
                    log.exception("probes: internal error (kept going)")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._sleep())
        finally:
            for task in list(self._checks):
                task.cancel()
            await asyncio.gather(*self._checks, return_exceptions=True)
            await self._session.close()

    def _rescan(self) -> None:
        """Follow the held registrations and their groups' probes."""
        now = self.clock()
        held = self.held()
        for key in [k for k in self._targets if k not in held]:
            del self._targets[key]
        for key, registration in held.items():
            probe = self.probe_of(registration.group)
            target = self._targets.get(key)
            if probe is None:
                if target is not None:
                    del self._targets[key]
                continue
            if target is None or target.probe != probe:
                self._targets[key] = _Target(registration, probe, now + probe.initial_delay_seconds)
            else:
                target.registration = registration

    def _start_due(self) -> None:
        now = self.clock()
        for key, target in self._targets.items():
            if not target.running and target.due <= now:
                target.running = True
                target.due = now + max(target.probe.period_seconds, 1)
                task = asyncio.create_task(self._check(key, target), name=f"probe {key}")
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

    def _sleep(self) -> float:
        now = self.clock()
        waiting = [t.due - now for t in self._targets.values() if not t.running]
        return max(0.0, min([RESCAN, *waiting]))

    async def _check(self, key: str, target: _Target) -> None:
        try:
            async with self._turns:
                ok, why = await self._probe(target.registration, target.probe)
            self._judge(key, target, ok, why)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counts["errors"] += 1
            log.exception("probes: checking %s failed (kept going)", key)
        finally:
            target.running = False
            self._wake.set()

    async def _probe(self, registration: Registration, probe: ReadinessProbe) -> tuple[bool, str]:
        """One check: (healthy, why not)."""
        timeout = max(probe.timeout_seconds, 1)
        self.counts["checks"] += 1
        if probe.http_get is not None:
            get = probe.http_get
            host = get.host or registration.address
            shown = f"[{host}]" if ":" in host else host
            scheme = "https" if get.scheme is ProbeScheme.HTTPS else "http"
            url = f"{scheme}://{shown}:{get.port}{get.path or '/'}"
            assert self._session is not None
            try:
                async with self._session.get(
                    url,
                    headers=dict(get.headers),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                return False, f"GET {url}: {_reason(e)}"
            return 200 <= status < 400, f"GET {url}: HTTP {status}"
        if probe.tcp_socket is not None:
            port = probe.tcp_socket.port
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(registration.address, port), timeout
                )
            except (OSError, TimeoutError) as e:
                return False, f"TCP {registration.address}:{port}: {_reason(e)}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True, ""
        return True, ""  # a probe of neither kind judges nothing

    def _judge(self, key: str, target: _Target, ok: bool, why: str) -> None:
        if self._targets.get(key) is not target:
            return  # let go, or its probe changed, meanwhile
        probe = target.probe
        if ok:
            target.successes += 1
            target.failures = 0
            if target.health is not Health.HEALTHY and target.successes >= max(
                probe.success_threshold, 1
            ):
                self._transition(key, target, Health.HEALTHY, "")
        else:
            self.counts["failures"] += 1
            target.failures += 1
            target.successes = 0
            target.last_error = why
            if target.health is not Health.UNHEALTHY and target.failures >= max(
                probe.failure_threshold, 1
            ):
                self._transition(key, target, Health.UNHEALTHY, why)

    def _transition(self, key: str, target: _Target, health: Health, why: str) -> None:
        target.health = health
        self.counts[health.value.lower()] += 1
        if health is Health.UNHEALTHY:
            log.warning("probes: %s is UNHEALTHY: %s", key, why)
        else:
            log.info("probes: %s is HEALTHY", key)
        try:
            self.report(key, health)
        except Exception:
            self.counts["errors"] += 1
            log.exception("probes: reporting %s failed", key)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def _no_verify() -> ssl.SSLContext:
    """A TLS client context that checks no certificate (probes test liveness, not
    identity). Built per session and without loading the system's CA certificates,
    which it would not use (loading them costs ~20 ms of every daemon's start)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
