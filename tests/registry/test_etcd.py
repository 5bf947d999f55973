"""EtcdStore against a real etcd: two stores are two replicas sharing it."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from tests.etcd import Etcd, b64
from tests.harness import free_port
from xdsd.model.registrations import EtcdSettings, Health, Registration
from xdsd.model.service import Locality, ResourceKey
from xdsd.registry import codec
from xdsd.registry import etcd as etcd_module
from xdsd.registry.etcd import EtcdStore, _Resync, prefix_end
from xdsd.registry.store import StoreUnavailable

T = TypeVar("T")
PREFIX = "/t"
KEYS = PREFIX + "/registrations/"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 90))


async def eventually(check: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.02)


def settings(*endpoints: str, ttl: float = 2.0) -> EtcdSettings:
    return EtcdSettings(
        endpoints=endpoints,
        prefix=PREFIX,
        lease_ttl=timedelta(seconds=ttl),
        timeout=timedelta(seconds=1),
    )


def reg(address: str, replica: str = "a", group: str = "api", **kw: Any) -> Registration:
    return Registration(
        group=ResourceKey("WorkloadGroup", "default", group),
        address=address,
        node_id=kw.pop("node_id", f"{group}-{address}"),
        labels=(("app", group),),
        locality=Locality("eu", "z1"),
        replica=replica,
        **{"since": 1000.0, **kw},
    )


async def started(server: Etcd, replica: str, **kw: Any) -> tuple[EtcdStore, list[int]]:
    changes: list[int] = []
    store = EtcdStore(settings(server.url, **kw), replica)
    await store.start(lambda: changes.append(len(store.current())))
    return store, changes


async def crash(store: EtcdStore) -> None:
    """End a store as a killed replica would: no revoke."""
    assert store._task is not None and store._session is not None
    store._task.cancel()
    await asyncio.gather(store._task, return_exceptions=True)
    await store._session.close()


def test_codec_round_trips_and_refuses_what_is_wrong() -> None:
    one = reg("10.0.0.1", disconnected=5.0, health=Health.UNHEALTHY)
    assert codec.decode(codec.encode(one)) == one
    for broken, field in [
        (b"[", "not JSON"),
        (b"[]", "object"),
        (b'{"group": {"kind": "W", "namespace": "n"}}', "group.name"),
        (json.dumps({**codec.to_json(one), "health": "SICK"}).encode(), "health"),
        (json.dumps({**codec.to_json(one), "since": "x"}).encode(), "since"),
        (json.dumps({**codec.to_json(one), "labels": {"a": 1}}).encode(), "labels.a"),
        (json.dumps({**codec.to_json(one), "address": ""}).encode(), "address"),
    ]:
        with pytest.raises(ValueError, match=field):
            codec.decode(broken)


def test_prefix_end() -> None:
    assert prefix_end(b"/x/") == b"/x0"
    assert prefix_end(b"a\xff") == b"b"


def test_replicas_see_each_others_registrations(etcd: Etcd) -> None:
    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        b, b_changes = await started(etcd, "b")
        try:
            assert a.state().connected and b.state().connected
            await a.put(reg("10.0.0.1"))
            assert "default/api/10.0.0.1" in a.current()  # at once on the writer
            await eventually(lambda: "default/api/10.0.0.1" in b.current(), what="b sees it")
            await eventually(lambda: b_changes, what="b's listener to be told")
            stored = etcd.keys(KEYS)
            value, lease = stored[KEYS + "default/api/10.0.0.1"]
            assert lease == a.lease and value["replica"] == "a"
            # a changed registration replaces the value, still under a's lease
            await a.put(reg("10.0.0.1", health=Health.UNHEALTHY))
            await eventually(lambda: b.current()["default/api/10.0.0.1"].health is Health.UNHEALTHY)
            await a.delete("default/api/10.0.0.1")
            assert a.current() == {}
            await eventually(lambda: not b.current(), what="b sees it go")
            assert etcd.keys(KEYS) == {}
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_close_revokes_and_a_killed_replica_goes_with_its_lease(etcd: Etcd) -> None:
    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        b, _ = await started(etcd, "b")
        c, _ = await started(etcd, "c")
        try:
            await a.put(reg("10.0.0.1"))
            await c.put(reg("10.0.0.3", replica="c"))
            await eventually(lambda: len(b.current()) == 2)
            lease_a, lease_c = a.lease, c.lease
            await a.close()  # revoked: gone at once
            assert lease_a not in etcd.leases()
            await eventually(lambda: list(b.current()) == ["default/api/10.0.0.3"])
            killed = time.monotonic()
            await crash(c)  # no revoke: etcd deletes them with the lease, one TTL later
            assert lease_c in etcd.leases()
            await eventually(lambda: not b.current(), timeout=10, what="the lease to expire")
            assert time.monotonic() - killed > 1.0  # not before the TTL (2 s) ran out
            assert lease_c not in etcd.leases()
        finally:
            await b.close()

    run(scenario())


def test_a_graceful_close_hands_registrations_over_for_the_grace(etcd: Etcd) -> None:
    """close() with a handover: a's registrations stay (marked disconnected) under a
    lease of the handover, a's own lease is revoked; b takes one over as its workload
    reconnects there, the other leaves when the handover lease lapses."""

    async def scenario() -> None:
        a = EtcdStore(settings(etcd.url, ttl=10), "a", handover=2.0)
        await a.start(lambda: None)
        b, _ = await started(etcd, "b")
        try:
            await a.put(reg("10.0.0.1"))
            await a.put(reg("10.0.0.2"))
            await eventually(lambda: len(b.current()) == 2, what="b sees a's")
            lease_a = a.lease
            await a.close()
            closed = time.monotonic()
            assert lease_a not in etcd.leases()
            keys = etcd.keys(KEYS)
            assert len(keys) == 2
            assert all(v["disconnected"] > 0 and v["replica"] == "a" for v, _ in keys.values())
            (handover,) = {lease for _, lease in keys.values()}
            assert handover in etcd.leases() and handover != lease_a
            assert a.counts["handed_over"] == 2 and not a.counts["lease_left"]
            await asyncio.sleep(0.3)
            assert len(b.current()) == 2  # nothing left b's view: no flap
            await b.put(reg("10.0.0.1", replica="b"))  # its workload registered on b
            await eventually(lambda: len(b.current()) == 1, timeout=10, what="the lapse")
            assert time.monotonic() - closed > 1.0  # not before the handover (2 s)
            assert b.current()["default/api/10.0.0.1"].replica == "b"
            assert etcd.leases() == {b.lease}
        finally:
            await b.close()
        assert etcd.leases() == set()

    run(scenario())


def test_a_disconnected_write_takes_no_key_over(etcd: Etcd) -> None:
    """A workload left replica a and registered on b: a's late write of it as
    disconnected (or a's probe verdict on it) leaves b's registration alone, and a lets
    the key go; a's own disconnected writes still land."""

    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        b, _ = await started(etcd, "b")
        try:
            await a.put(reg("10.0.0.1"))
            await a.put(reg("10.0.0.2"))
            await b.put(reg("10.0.0.1", replica="b"))
            await a.put(reg("10.0.0.1", disconnected=2000.0))
            await a.put(reg("10.0.0.2", disconnected=2000.0))
            keys = etcd.keys(KEYS)
            value, lease = keys[KEYS + "default/api/10.0.0.1"]
            assert (value["replica"], value["disconnected"], lease) == ("b", 0.0, b.lease)
            value, lease = keys[KEYS + "default/api/10.0.0.2"]
            assert (value["disconnected"], lease) == (2000.0, a.lease)
            assert set(a.held()) == {"default/api/10.0.0.2"}
            await eventually(lambda: a.current()["default/api/10.0.0.1"].replica == "b")
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_moved_workload_is_not_deleted_by_its_old_replica(etcd: Etcd) -> None:
    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        b, _ = await started(etcd, "b")
        try:
            await a.put(reg("10.0.0.1"))
            await b.put(reg("10.0.0.1", replica="b"))  # the workload reconnected to b
            await a.delete("default/api/10.0.0.1")  # a's grace ran out
            await eventually(lambda: a.current().get("default/api/10.0.0.1"), what="a sees b's")
            assert a.current()["default/api/10.0.0.1"].replica == "b"
            value, lease = etcd.keys(KEYS)[KEYS + "default/api/10.0.0.1"]
            assert (value["replica"], lease) == ("b", b.lease)
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_lost_lease_is_granted_again_and_registrations_restored(etcd: Etcd) -> None:
    async def scenario() -> None:
        a, _ = await started(etcd, "a", ttl=3.0)
        b, _ = await started(etcd, "b", ttl=3.0)
        try:
            await a.put(reg("10.0.0.1"))
            await a.put(reg("10.0.0.2"))
            lost = a.lease
            etcd.call("/v3/lease/revoke", {"ID": str(lost)})  # blocks the loop: a sees later
            await b.put(reg("10.0.0.2", replica="b"))  # meanwhile a workload moved to b
            await eventually(lambda: a.lease not in (0, lost), what="a new lease")
            await eventually(lambda: len(etcd.keys(KEYS)) == 2, what="restored")
            stored = etcd.keys(KEYS)
            assert stored[KEYS + "default/api/10.0.0.1"] == (
                codec.to_json(reg("10.0.0.1")),
                a.lease,
            )
            assert stored[KEYS + "default/api/10.0.0.2"][0]["replica"] == "b"
            await eventually(lambda: len(b.current()) == 2)
            assert a.counts["lease_lost"] == 1 and a.counts["lease_granted"] == 2
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_etcd_down_keeps_serving_then_converges(etcd: Etcd) -> None:
    async def scenario() -> None:
        a, _ = await started(etcd, "a", ttl=30.0)
        b, _ = await started(etcd, "b", ttl=30.0)
        try:
            await a.put(reg("10.0.0.1"))
            await eventually(lambda: len(b.current()) == 1)
            etcd.stop()
            await eventually(lambda: not a.state().connected, what="a to notice")
            state = a.state()
            assert "etcd unreachable since" in state.detail
            assert "serving the last known 1 registrations" in state.detail
            assert a.counts["unreachable"] == 1
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await a.put(reg("10.0.0.2"))
            await a.delete("default/api/10.0.0.1")
            # a serves its own writes; b keeps what it last knew
            assert list(a.current()) == ["default/api/10.0.0.2"]
            assert list(b.current()) == ["default/api/10.0.0.1"]
            etcd.start()
            await eventually(lambda: a.state().connected and b.state().connected, timeout=20)
            await eventually(lambda: list(b.current()) == ["default/api/10.0.0.2"], what="b")
            assert list(etcd.keys(KEYS)) == [KEYS + "default/api/10.0.0.2"]
            assert a.state().detail == ""
        finally:
            await a.close()
            await b.close()
        assert etcd.keys(KEYS) == {}

    run(scenario())


def test_unreachable_at_start_then_a_second_endpoint(etcd: Etcd) -> None:
    async def scenario() -> None:
        nowhere = f"http://127.0.0.1:{free_port()}"
        lonely = EtcdStore(settings(nowhere), "x")
        began = time.monotonic()
        await lonely.start(lambda: None)
        assert time.monotonic() - began < 5
        assert not lonely.state().connected and nowhere in lonely.state().detail
        with pytest.raises(StoreUnavailable):
            await lonely.put(reg("10.0.0.9"))
        assert list(lonely.current()) == ["default/api/10.0.0.9"]
        await lonely.close()
        both = EtcdStore(settings(nowhere, etcd.url), "y")
        await both.start(lambda: None)
        try:
            await eventually(lambda: both.state().connected)
            await both.put(reg("10.0.0.1", replica="y"))
            assert list(etcd.keys(KEYS)) == [KEYS + "default/api/10.0.0.1"]
        finally:
            await both.close()

    run(scenario())


def test_hostile_values_are_skipped_and_keys_bounded(etcd: Etcd) -> None:
    good = codec.encode(reg("10.0.0.1"))
    etcd.call("/v3/kv/put", {"key": b64(KEYS + "default/api/10.0.0.1"), "value": b64(good)})
    etcd.call("/v3/kv/put", {"key": b64(KEYS + "default/api/10.0.0.2"), "value": b64("{")})
    wrong = codec.encode(reg("10.0.0.7"))  # a value under another registration's key
    etcd.call("/v3/kv/put", {"key": b64(KEYS + "default/api/10.0.0.3"), "value": b64(wrong)})
    big = b" " * 70_000 + good
    etcd.call("/v3/kv/put", {"key": b64(KEYS + "default/api/10.0.0.4"), "value": b64(big)})

    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        try:
            assert list(a.current()) == ["default/api/10.0.0.1"]
            assert a.counts["value_skipped"] == 3
            # live too: a bad value put later is skipped, and replaces the good one
            etcd.call("/v3/kv/put", {"key": b64(KEYS + "default/api/10.0.0.1"), "value": "eA=="})
            await eventually(lambda: not a.current())
            assert a.counts["value_skipped"] == 4
        finally:
            await a.close()
        for n in range(5):
            value = b64(codec.encode(reg(f"10.0.1.{n}")))
            etcd.call("/v3/kv/put", {"key": b64(KEYS + f"default/api/10.0.1.{n}"), "value": value})
        small = EtcdStore(settings(etcd.url), "s", max_keys=3)
        await small.start(lambda: None)
        try:
            assert len(small.current()) == 3
            assert "more than max_registrations (3)" in small.state().detail
            assert small.state().connected
        finally:
            await small.close()

    run(scenario())


def put_raw(server: Etcd, key: str, value: bytes) -> None:
    server.call("/v3/kv/put", {"key": b64(KEYS + key), "value": b64(value)})


def test_big_values_are_skipped_and_the_rest_read(etcd: Etcd) -> None:
    """etcd takes values up to 1.5 MiB: five of them make one page's answer over the
    response bound; the page is read again in smaller ones, the big values skipped, the
    registrations around them read and the watch started."""
    put_raw(etcd, "default/api/10.0.0.1", codec.encode(reg("10.0.0.1")))
    for n in range(5):
        put_raw(etcd, f"default/zz/10.9.0.{n}", b" " * 1_400_000)
    put_raw(etcd, "default/zzz/10.0.0.2", codec.encode(reg("10.0.0.2", group="zzz")))

    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        try:
            assert a.state().connected, a.state().detail
            assert sorted(a.current()) == ["default/api/10.0.0.1", "default/zzz/10.0.0.2"]
            assert a.counts["value_skipped"] == 5 and a.counts["unreachable"] == 0
            put_raw(etcd, "default/api/10.0.0.3", codec.encode(reg("10.0.0.3")))
            await eventually(lambda: "default/api/10.0.0.3" in a.current(), what="the watch")
        finally:
            await a.close()

    run(scenario())


def test_a_key_too_big_alone_is_skipped_by_name(
    etcd: Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single value whose answer is over the response bound (lowered here: etcd may be
    run with a larger request limit) is skipped by reading its name alone."""
    monkeypatch.setattr(etcd_module, "MAX_RESPONSE_BYTES", 1_000_000)
    put_raw(etcd, "default/api/10.0.0.1", codec.encode(reg("10.0.0.1")))
    put_raw(etcd, "default/api/10.0.0.5", b" " * 900_000)  # base64: over the bound alone
    put_raw(etcd, "default/api/10.0.0.6", b" " * 400_000)  # two at once are over it
    put_raw(etcd, "default/api/10.0.0.7", b" " * 400_000)
    put_raw(etcd, "default/api/10.0.0.9", codec.encode(reg("10.0.0.9")))

    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        try:
            assert a.state().connected, a.state().detail
            assert sorted(a.current()) == ["default/api/10.0.0.1", "default/api/10.0.0.9"]
            assert a.counts["value_skipped"] == 3
        finally:
            await a.close()

    run(scenario())


def test_the_lease_is_kept_alive_through_a_slow_read(
    etcd: Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the view longer than the lease's TTL (a big prefix, a slow etcd) does
    not let etcd delete this replica's registrations: the keep-alive runs meanwhile."""

    async def scenario() -> None:
        a, _ = await started(etcd, "a", ttl=2)
        try:
            await a.put(reg("10.0.0.1"))
            key = b64(KEYS + "default/api/10.0.0.1")
            created = etcd.call("/v3/kv/range", {"key": key})["kvs"][0]["create_revision"]
            read = a._read_all
            done = asyncio.Event()

            async def slow_read() -> None:
                await asyncio.sleep(5)  # the fault: etcd slower than the 2 s TTL
                await read()
                done.set()

            monkeypatch.setattr(a, "_read_all", slow_read)
            a._troubled()  # a write failed: the session starts again, reading slowly
            await asyncio.wait_for(done.wait(), 30)
            kvs = etcd.call("/v3/kv/range", {"key": key}).get("kvs", [])
            assert kvs and kvs[0]["create_revision"] == created, "deleted meanwhile"
            assert a.counts["lease_lost"] == 0 and a.counts["lease_granted"] == 1
        finally:
            await a.close()

    run(scenario())


def test_junk_keys_bound_the_read(etcd: Etcd, monkeypatch: pytest.MonkeyPatch) -> None:
    """Malformed values count toward the keys a read scans: a flood of them cannot make
    it unbounded; what is beyond is not read and ``state`` says so."""
    monkeypatch.setattr(etcd_module, "SKIP_MARGIN", 10)
    for n in range(40):
        put_raw(etcd, f"default/aaa/x{n:03d}", b"x")
    put_raw(etcd, "default/api/10.0.0.1", codec.encode(reg("10.0.0.1")))

    async def scenario() -> None:
        a = EtcdStore(settings(etcd.url), "a", max_keys=5)
        await a.start(lambda: None)
        try:
            assert a.state().connected
            assert dict(a.current()) == {}
            assert a.counts["value_skipped"] == 15 and a.counts["key_skipped"] == 26
            assert "26 keys not read" in a.state().detail
        finally:
            await a.close()

    run(scenario())


def test_a_connected_key_taken_then_freed_is_written_again(etcd: Etcd) -> None:
    """A replica whose connected registration another replica overwrote (both admitted
    the address at once) keeps it while the other holds it live, and writes it again as
    soon as the key is free (deleted, or left there disconnected)."""

    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        b, _ = await started(etcd, "b")
        try:
            key = "default/api/10.0.0.1"
            await a.put(reg("10.0.0.1", node_id="na"))
            await b.put(reg("10.0.0.1", replica="b", node_id="nb"))  # last writer wins
            await eventually(lambda: a.current()[key].node_id == "nb")
            assert etcd.keys(KEYS)[KEYS + key][1] == b.lease  # not written back: b is live
            await b.delete(key)
            await eventually(lambda: etcd.keys(KEYS).get(KEYS + key, (0, 0))[1] == a.lease)
            assert a.current()[key].node_id == "na"
            # taken again, then left there disconnected: a's connected one comes back
            await b.put(reg("10.0.0.1", replica="b", node_id="nb"))
            await eventually(lambda: etcd.keys(KEYS)[KEYS + key][1] == b.lease)
            await b.put(reg("10.0.0.1", replica="b", node_id="nb", disconnected=5.0))
            await eventually(lambda: etcd.keys(KEYS).get(KEYS + key, (0, 0))[1] == a.lease)
            assert etcd.keys(KEYS)[KEYS + key][0]["node_id"] == "na"
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_compacted_watch_starts_again_from_a_range(etcd: Etcd) -> None:
    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        try:
            for n in range(3):
                await a.put(reg("10.0.0.1", since=float(n)))
            revision = int(etcd.call("/v3/kv/range", {"key": b64("x")})["header"]["revision"])
            etcd.call("/v3/kv/compaction", {"revision": str(revision)})
            a._revision = 1  # as if the watch broke long ago
            with pytest.raises(_Resync, match="compacted"):
                await a._watch()
        finally:
            await a.close()

    run(scenario())


def test_a_flood_of_registrations_leaves_no_lease_nor_key(etcd: Etcd) -> None:
    async def scenario() -> None:
        stores = [(await started(etcd, name))[0] for name in ("a", "b")]

        async def cycle(store: EtcdStore, n: int) -> None:
            one = reg(f"10.0.{n // 200}.{n % 200}", replica=store.replica)
            await store.put(one)
            await store.delete(one.key)

        work: list[Awaitable[None]] = [cycle(s, n) for n in range(200) for s in stores]
        try:
            await asyncio.gather(*work)
            await eventually(lambda: all(not s.current() for s in stores))
            assert all(s.state().connected for s in stores)
        finally:
            for store in stores:
                await store.close()
        assert etcd.keys(KEYS) == {}
        assert etcd.leases() == set()

    run(scenario())


def test_raw_keys_are_where_the_docs_say(etcd: Etcd) -> None:
    async def scenario() -> None:
        a, _ = await started(etcd, "a")
        try:
            await a.put(reg("10.0.0.1", group="pay"))
        finally:
            found = etcd.call(
                "/v3/kv/range", {"key": b64(KEYS), "range_end": b64("/t/registrationt")}
            )
            await a.close()
        keys = [base64.b64decode(kv["key"]).decode() for kv in found["kvs"]]
        assert keys == ["/t/registrations/default/pay/10.0.0.1"]

    run(scenario())
