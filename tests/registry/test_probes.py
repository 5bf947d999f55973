"""The prober against real small HTTP and TCP servers on loopback."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from xdsd.model.networking import HttpProbe, ReadinessProbe, TcpProbe
from xdsd.model.registrations import Health, Registration
from xdsd.model.service import ResourceKey
from xdsd.registry.probes import Prober

T = TypeVar("T")
GROUP = ResourceKey("WorkloadGroup", "default", "api")
OTHER = ResourceKey("WorkloadGroup", "default", "unprobed")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))


class App:
    """An HTTP server whose status (and delay) the test sets; counts requests in flight."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with app.lock:
                    app.requests += 1
                    app.in_flight += 1
                    app.most_in_flight = max(app.most_in_flight, app.in_flight)
                try:
                    time.sleep(app.delay)
                    self.send_response(app.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with app.lock:
                        app.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app() -> Iterator[App]:
    server = App()
    try:
        yield server
    finally:
        server.stop()


def reg(address: str = "127.0.0.1", group: ResourceKey = GROUP) -> Registration:
    return Registration(group=group, address=address, node_id=f"n-{address}")


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        await asyncio.sleep(0.02)


async def probing(prober: Prober) -> asyncio.Task[None]:
    return asyncio.create_task(prober.run())


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_http_probe_thresholds_make_and_clear_unhealthy(app: App) -> None:
    probe = ReadinessProbe(
        http_get=HttpProbe(port=app.port, path="/ready"),
        period_seconds=1,
        timeout_seconds=3,  # a loaded machine must not fail a check by its slowness
        success_threshold=2,
        failure_threshold=2,
    )
    reports: list[tuple[str, Health]] = []
    held = {"default/api/127.0.0.1": reg()}

    async def scenario() -> None:
        prober = Prober(
            held=lambda: held,
            probe_of=lambda g: probe if g == GROUP else None,
            report=lambda k, h: reports.append((k, h)),
        )
        task = await probing(prober)
        try:
            await eventually(lambda: reports == [("default/api/127.0.0.1", Health.HEALTHY)])
            assert app.requests >= 2  # success_threshold 2
            app.status = 503
            seen = app.requests
            await eventually(lambda: len(reports) == 2)
            assert reports[1] == ("default/api/127.0.0.1", Health.UNHEALTHY)
            assert app.requests - seen >= 2  # failure_threshold 2
            app.status = 302  # 200-399 is healthy
            await eventually(lambda: len(reports) == 3)
            assert reports[2][1] is Health.HEALTHY
            assert prober.counts["failures"] >= 2 and prober.counts["unhealthy"] == 1
        finally:
            await stopped(task)

    run(scenario())


def test_tcp_probe_and_what_is_not_probed() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    probe = ReadinessProbe(tcp_socket=TcpProbe(port=port), period_seconds=1, failure_threshold=1)
    reports: list[tuple[str, Health]] = []
    held = {
        "default/api/127.0.0.1": reg(),
        "default/unprobed/127.0.0.2": reg("127.0.0.2", OTHER),
    }

    async def scenario() -> None:
        prober = Prober(
            held=lambda: held,
            probe_of=lambda g: probe if g == GROUP else None,
            report=lambda k, h: reports.append((k, h)),
        )
        task = await probing(prober)
        try:
            await eventually(lambda: reports == [("default/api/127.0.0.1", Health.HEALTHY)])
            listener.close()
            await eventually(lambda: len(reports) == 2)
            assert reports[1] == ("default/api/127.0.0.1", Health.UNHEALTHY)
            assert list(prober.health()) == ["default/api/127.0.0.1"]
            held.clear()  # let go: no longer probed
            await eventually(lambda: not prober.health())
        finally:
            await stopped(task)
            listener.close()

    run(scenario())


def latest(reports: list[tuple[str, Health]]) -> dict[str, Health]:
    """The last verdict reported for each key."""
    return dict(reports)


def test_initial_delay_timeout_and_bounded_concurrency(app: App) -> None:
    app.delay = 0.3
    probe = ReadinessProbe(
        http_get=HttpProbe(port=app.port),
        initial_delay_seconds=1,
        timeout_seconds=1,
        period_seconds=1,
        failure_threshold=1,
    )
    reports: list[tuple[str, Health]] = []
    # ten workloads of ten groups, all at the server's address
    groups = [ResourceKey("WorkloadGroup", "default", f"g{n}") for n in range(10)]
    held = {f"default/g{n}/127.0.0.1": reg(group=g) for n, g in enumerate(groups)}

    async def scenario() -> None:
        prober = Prober(
            held=lambda: held,
            probe_of=lambda g: probe,
            report=lambda k, h: reports.append((k, h)),
            max_concurrent=3,
        )
        began = time.monotonic()
        task = await probing(prober)
        try:
            await eventually(lambda: app.requests > 0)
            assert time.monotonic() - began >= 0.9  # initialDelaySeconds
            # every workload judged healthy (by its latest verdict: on a loaded machine
            # one probe may time out first and recover at the next period)
            await eventually(lambda: latest(reports) == dict.fromkeys(held, Health.HEALTHY), 30)
            assert 2 <= app.most_in_flight <= 3  # max_concurrent
            app.delay = 2.5  # well beyond timeoutSeconds
            await eventually(lambda: latest(reports) == dict.fromkeys(held, Health.UNHEALTHY), 30)
        finally:
            await stopped(task)

    run(scenario())
