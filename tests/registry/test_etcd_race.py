"""Two replicas (Registry over EtcdStore) on one real etcd admit one address at once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from tests.etcd import Etcd
from tests.registry.test_etcd import KEYS, eventually, run, settings
from tests.registry.test_registry import GROUPS, claim
from xdsd.model.registrations import RegistrySettings
from xdsd.registry.etcd import EtcdStore
from xdsd.registry.registry import Registry

KEY = "default/api/10.0.0.7"


def replica(server: Etcd, name: str) -> Registry:
    return Registry(
        RegistrySettings(grace=timedelta(seconds=1), replica=name),
        EtcdStore(settings(server.url), name),
        groups=lambda ns, n: GROUPS.get((ns, n)),
    )


def test_the_losing_replicas_connected_node_is_written_again(etcd: Etcd) -> None:
    """Each replica admits the address (neither has seen the other's write); B writes
    last and wins in etcd. When B's node leaves, A's node (still connected to A) is
    written again at once, and B's grace running out does not delete it."""

    async def scenario() -> None:
        a, b = replica(etcd, "A"), replica(etcd, "B")
        await a.start()
        await b.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            on_a = a.attach(claim("10.0.0.7", node="n1"))
            on_b = b.attach(claim("10.0.0.7", node="n2"))
            await a.flush()
            await b.flush()  # B's write lands second
            tasks = [asyncio.create_task(r.run()) for r in (a, b)]

            def holder() -> tuple[str, str] | None:
                found = etcd.keys(KEYS).get(KEYS + KEY)
                return (found[0]["node_id"], found[0]["replica"]) if found else None

            await eventually(lambda: a.current().get(KEY) == b.current().get(KEY))
            assert holder() == ("n2", "B") and a.current()[KEY].node_id == "n2"
            on_b.close()  # the winner's node leaves; A's is still connected
            await eventually(lambda: holder() == ("n1", "A"), what="A to write n1 again")
            await eventually(lambda: KEY not in b.held(), what="B's grace to run out")
            assert holder() == ("n1", "A")
            await eventually(lambda: b.current().get(KEY) == a.current().get(KEY))
            assert a.current()[KEY].node_id == "n1" and a.connected(KEY)
            on_a.close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a.close()
            await b.close()

    run(scenario())
