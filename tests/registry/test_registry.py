"""The registry: admission rules, refusals by reason, grace and expiry with an injected
clock, reconnects without a flap, a flood of connect/disconnect cycles leaving nothing
stale, and ``set_health``."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from xdsd.model.networking import WorkloadEndpoint, WorkloadGroup
from xdsd.model.registrations import Health, Registration, RegistrySettings
from xdsd.registry.registry import Claim, RegistrationRefused, Registry
from xdsd.registry.store import MemoryStore, StoreUnavailable

GROUPS = {
    ("default", "api"): WorkloadGroup("api", labels=(("app", "api"),)),
    ("default", "web"): WorkloadGroup("web", template=WorkloadEndpoint("", (("app", "web"),))),
    ("default", "bare"): WorkloadGroup("bare"),
    ("other", "api"): WorkloadGroup("api", "other", labels=(("app", "api"),)),
    ("default", "api-sa"): WorkloadGroup(
        "api-sa", labels=(("app", "api"),), template=WorkloadEndpoint("", service_account="pay")
    ),
    ("default", "api-own-sa"): WorkloadGroup(
        "api-own-sa", labels=(("app", "api"),), template=WorkloadEndpoint("", service_account="api")
    ),
    ("default", "web2"): WorkloadGroup("web2", labels=(("app", "web"),)),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry(clock: Clock, **settings: object) -> Registry:
    values: dict[str, object] = {"grace": timedelta(seconds=10), "replica": "r1", **settings}
    return Registry(
        RegistrySettings(**values),  # type: ignore[arg-type]
        MemoryStore(),
        groups=lambda ns, name: GROUPS.get((ns, name)),
        clock=clock,
    )


def claim(address: str = "10.0.0.7", node: str = "n1", **kw: object) -> Claim:
    values: dict[str, object] = {
        "node_id": node,
        "service": "api",
        "namespace": "default",
        "group": "api",
        "address": address,
        **kw,
    }
    return Claim(**values)  # type: ignore[arg-type]


def run(r: Registry) -> None:
    asyncio.run(r.flush())


def test_attach_registers_and_grace_expires() -> None:
    clock = Clock()
    r = registry(clock)
    a = r.attach(claim())
    run(r)
    (reg,) = r.current().values()
    assert (reg.key, reg.node_id, reg.replica, reg.since, reg.disconnected) == (
        "default/api/10.0.0.7",
        "n1",
        "r1",
        1000.0,
        0.0,
    )
    a.close()
    a.close()  # idempotent
    clock.now += 9.9
    assert r.expire() == 0
    clock.now += 0.2
    assert r.expire() == 1
    run(r)
    assert not r.current() and not r.held()
    assert r.counts()["expired"] == 1 and r.counts()["registered"] == 1


def test_a_reconnect_within_the_grace_keeps_the_registration() -> None:
    clock = Clock()
    r = registry(clock)
    r.attach(claim()).close()
    run(r)
    clock.now += 5
    again = r.attach(claim())
    run(r)
    (reg,) = r.current().values()
    assert reg.since == 1000.0 and reg.disconnected == 0.0  # the same registration
    clock.now += 60
    assert r.expire() == 0  # the old deadline does not remove it
    again.close()
    clock.now += 10.1
    assert r.expire() == 1


def test_streams_of_one_node_hold_it_until_the_last_closes() -> None:
    clock = Clock()
    r = registry(clock)
    first, second = r.attach(claim()), r.attach(claim())
    first.close()
    clock.now += 100
    assert r.expire() == 0 and r.connected("default/api/10.0.0.7")
    second.close()
    clock.now += 11
    assert r.expire() == 1


@pytest.mark.parametrize(
    ("given", "code", "reason"),
    [
        ({"group": "nope"}, "NOT_FOUND", "unknown_group"),
        ({"group": "web"}, "PERMISSION_DENIED", "other_service"),
        ({"group": "bare"}, "PERMISSION_DENIED", "other_service"),
        ({"namespace": "elsewhere"}, "NOT_FOUND", "unknown_group"),
        ({"address": "not-an-ip"}, "INVALID_ARGUMENT", "bad_address"),
        ({"address": ""}, "INVALID_ARGUMENT", "bad_address"),
        ({"address": "0.0.0.0"}, "INVALID_ARGUMENT", "bad_address"),
        ({"labels": (("app", "payments"),)}, "INVALID_ARGUMENT", "label_conflict"),
        ({"group": "api-sa"}, "PERMISSION_DENIED", "service_account"),
    ],
)
def test_bad_registrations_are_refused_and_counted(
    given: dict[str, object], code: str, reason: str
) -> None:
    r = registry(Clock())
    with pytest.raises(RegistrationRefused) as e:
        r.attach(claim(**given))
    assert (e.value.code, e.value.reason) == (code, reason)
    assert r.refused[reason] == 1 and not r.held()


def test_an_address_held_by_a_connected_node_is_refused_then_taken_over() -> None:
    clock = Clock()
    r = registry(clock)
    a = r.attach(claim(node="n1"))
    with pytest.raises(RegistrationRefused) as e:
        r.attach(claim(node="n2"))
    assert e.value.reason == "address_in_use" and "n1" in e.value.message
    a.close()  # n1 left: its address may be taken over within the grace
    b = r.attach(claim(node="n2"))
    run(r)
    (reg,) = r.current().values()
    assert reg.node_id == "n2" and reg.since == clock.now
    b.close()


def test_a_template_service_account_must_be_the_nodes() -> None:
    r = registry(Clock())
    r.attach(claim(group="api-own-sa")).close()  # the node's own: admitted


def test_a_copied_node_id_takes_no_address_another_group_holds() -> None:
    """A node id is what a client sends: a node of ``web`` copying the id of a connected
    ``api`` node is refused that node's address, as any other node would be."""
    r = registry(Clock())
    held = r.attach(claim(node="api-1"))
    with pytest.raises(RegistrationRefused) as e:
        r.attach(claim(node="api-1", service="web", group="web2"))
    assert e.value.reason == "address_in_use"
    again = r.attach(claim(node="api-1"))  # the same node, same group: its own
    assert len(r.held()) == 1
    again.close()
    held.close()


def test_the_registry_is_bounded() -> None:
    r = registry(Clock(), max_registrations=2)
    r.attach(claim("10.0.0.1", "a"))
    r.attach(claim("10.0.0.2", "b"))
    with pytest.raises(RegistrationRefused) as e:
        r.attach(claim("10.0.0.3", "c"))
    assert e.value.code == "RESOURCE_EXHAUSTED" and e.value.reason == "registry_full"
    r.attach(claim("10.0.0.1", "a"))  # the same node again is no new registration


def test_a_flood_of_cycles_leaves_nothing_stale() -> None:
    clock = Clock()
    r = registry(clock, max_registrations=50)
    for i in range(5000):
        address = f"10.1.{i % 200 // 100}.{i % 100 + 1}"
        if i % 3 == 0:
            address = "10.2.0.1"  # one workload reconnecting within its grace, again and again
        try:
            a = r.attach(claim(address, "flapper" if address == "10.2.0.1" else f"n{i % 200}"))
        except RegistrationRefused as e:
            assert e.reason == "registry_full"
            continue
        a.close()
        clock.now += 0.01
        r.expire()
    assert len(r.held()) <= 50
    assert len(r._pending) <= 100  # coalesced by key: bounded by the keys
    assert len(r._deadlines) <= 2 * 50 + 16  # stale deadlines are pruned
    clock.now += 11
    r.expire()
    run(r)
    assert not r.held() and not r.current()
    assert not r._streams and not r._pending
    assert r._next_deadline() is None and not r._deadlines


def test_set_health() -> None:
    r = registry(Clock())
    r.attach(claim())
    run(r)
    assert r.set_health("default/api/10.0.0.7", Health.UNHEALTHY)
    assert not r.set_health("default/api/10.9.9.9", Health.UNHEALTHY)
    run(r)
    (reg,) = r.current().values()
    assert reg.health is Health.UNHEALTHY


def test_the_run_task_expires_on_time() -> None:
    async def scenario() -> None:
        r = Registry(
            RegistrySettings(grace=timedelta(seconds=0.05)),
            groups=lambda ns, name: GROUPS.get((ns, name)),
        )
        changes: list[int] = []
        await r.start(lambda: changes.append(len(r.current())))
        task = asyncio.create_task(r.run())
        try:
            r.attach(claim()).close()
            async with asyncio.timeout(5):
                while r.current() or not changes or changes[-1] != 0:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await r.close()
        assert changes[0] == 1 and changes[-1] == 0

    asyncio.run(scenario())


class FlakyStore(MemoryStore):
    """A MemoryStore whose writes fail while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def put(self, registration: Registration) -> None:
        if self.down:
            raise StoreUnavailable("etcd unreachable since ...")
        await super().put(registration)

    async def delete(self, key: str) -> None:
        if self.down:
            raise StoreUnavailable("etcd unreachable since ...")
        await super().delete(key)


def test_an_unavailable_store_is_one_warning_and_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pending writes retried while the store is down: one warning when it starts
    failing, one line when every waiting write went through — not one per attempt — and
    the attempts and waiting writes counted for the metrics."""
    clock = Clock()
    store = FlakyStore()
    r = Registry(
        RegistrySettings(grace=timedelta(seconds=10), replica="r1"),
        store,
        groups=lambda ns, name: GROUPS.get((ns, name)),
        clock=clock,
    )
    store.down = True
    for n in range(5):
        r.attach(claim(f"10.0.0.{n + 1}", node=f"n{n}"))
    caplog.set_level(logging.INFO, logger="xdsd.registry.registry")

    async def attempts(n: int) -> None:
        for _ in range(n):
            await r.flush()
            clock.now += 0.5

    asyncio.run(attempts(20))
    warnings = [m for m in caplog.records if m.levelno >= logging.WARNING]
    assert len(warnings) == 1, [m.getMessage() for m in warnings]
    assert "cannot take writes" in warnings[0].getMessage()
    assert "5 kept pending" in warnings[0].getMessage()
    assert r.counts()["store_failures"] == 20 and r.counts()["pending"] == 5
    assert store.current() == {}
    store.down = False
    asyncio.run(attempts(3))
    warnings = [m for m in caplog.records if m.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert "takes writes again after 10.0 s (20 attempts failed" in warnings[1].getMessage()
    assert len(store.current()) == 5 and r.counts()["pending"] == 0
    # a second outage warns again, once
    store.down = True
    r.attach(claim("10.0.0.9", node="n9"))
    asyncio.run(attempts(4))
    assert len([m for m in caplog.records if m.levelno >= logging.WARNING]) == 3
