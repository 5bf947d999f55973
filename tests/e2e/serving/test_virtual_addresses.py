"""Virtual addresses served by real ``xdsd serve`` processes: two daemons on one directory
show the same ``/debug/addresses``, a restarted one shows it again, and adding a service
gives every daemon the addresses the allocation computes — the others' unchanged but for
the ones the newcomer displaced, which each daemon logs and counts
(``xdsd_virtual_address_moves_total``)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness import Xdsd, running, wait_until, write_atomically
from xdsd.model.mesh_config import MeshDNS
from xdsd.sources import load_directory
from xdsd.translate.address_view import address_rows
from xdsd.translate.virtual_addresses import AddressBlock, allocate

BLOCK = "127.250.0.0/24"  # 254 slots for 120 services: a newcomer may well displace one
COUNT = 120


def _service(name: str, namespace: str, pinned: str = "") -> str:
    address = f"address: {pinned}\n" if pinned else ""
    return (
        f"kind: Service\nname: {name}\nnamespace: {namespace}\n{address}"
        "ports: [{number: 80, protocol: HTTP}, {number: 5432, protocol: TCP}]\n"
        "endpoints: [{address: 10.1.0.1}]\n"
    )


def _expected(config: Path) -> list[dict[str, Any]]:
    """What ``/debug/addresses`` must list: the allocation computed here, in-process."""
    mesh = load_directory(str(config)).mesh
    dns = MeshDNS(virtual_addresses=BLOCK)
    allocation = allocate(mesh.services, AddressBlock.parse(BLOCK))
    return [r.as_json() for r in address_rows(mesh.services, allocation, dns)]


def _moves(xdsd: Xdsd) -> float:
    url = f"http://127.0.0.1:{xdsd.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    found = re.search(r"^xdsd_virtual_address_moves_total (\S+)$", text, re.M)
    assert found is not None, text
    return float(found.group(1))


def _newcomer(config: Path) -> str:
    """A service name whose addition displaces at least one service (found with the
    allocation itself: the test holds whatever the hash)."""
    before = {r["key"]: r["addresses"] for r in _expected(config)}
    mesh = load_directory(str(config)).mesh
    block = AddressBlock.parse(BLOCK)
    old = allocate(mesh.services, block).slots
    from xdsd.model import Port, Protocol, Service

    for i in range(2000):
        extra = Service(f"new{i}", "shop", (Port(80, Protocol.HTTP),))
        new = allocate((*mesh.services, extra), block).slots
        if any(new[k] != slot for k, slot in old.items()):
            return f"new{i}"
    raise AssertionError(f"no newcomer displaces any of {len(before)} services")


def test_replicas_restarts_and_an_added_service_agree(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for i in range(COUNT):
        pinned = "127.250.0.7" if i == 0 else ""  # a pinned slot is reserved everywhere
        (config / f"s{i}.yaml").write_text(_service(f"s{i}", ("shop", "data")[i % 2], pinned))
    settings = tmp_path / "xdsd.toml"
    settings.write_text(f'[mesh.dns]\nvirtual_addresses = "{BLOCK}"\n')
    extra = ["--settings", str(settings)]
    first = Xdsd(config, tmp_path, extra=extra)
    second = Xdsd(config, tmp_path, extra=extra)
    with running(first, second):
        expected = _expected(config)
        assert len(expected) == COUNT
        for xdsd in (first, second):
            wait_until(
                lambda x=xdsd: len(x.admin("/debug/addresses")["services"]) == COUNT,
                what="the addresses",
            )
        shown = first.admin("/debug/addresses")
        assert shown == second.admin("/debug/addresses")
        assert shown == {"enabled": True, "block": BLOCK, "block_v6": "", "services": expected}
        assert shown["services"][[r["key"] for r in expected].index("Service shop/s0")][
            "addresses"
        ] == ["127.250.0.7"]

        # A restart on the same ports: the same addresses, computed afresh.
        ports = (first.grpc_port, first.rest_port, first.admin_port)
        first.stop()
        first = Xdsd(config, tmp_path, extra=extra, ports=ports)
        with running(first):
            wait_until(
                lambda: len(first.admin("/debug/addresses")["services"]) == COUNT,
                what="the restarted daemon's addresses",
            )
            assert first.admin("/debug/addresses") == shown

            # A service added: both daemons show what the allocation computes; every
            # other service keeps its address unless the newcomer displaced it.
            name = _newcomer(config)
            write_atomically(config / f"{name}.yaml", _service(name, "shop"))
            after = _expected(config)
            for xdsd in (first, second):
                wait_until(
                    lambda x=xdsd: len(x.admin("/debug/addresses")["services"]) == COUNT + 1,
                    what="the added service",
                )
                assert xdsd.admin("/debug/addresses")["services"] == after
            old = {r["key"]: r["addresses"] for r in expected}
            moved = {r["key"] for r in after if r["key"] in old and old[r["key"]] != r["addresses"]}
            assert 1 <= len(moved) <= 3, moved
            new_address = next(r["addresses"] for r in after if r["key"].endswith(f"/{name}"))
            assert new_address in [old[k] for k in moved]  # the chain starts at the newcomer
            for xdsd in (first, second):
                assert _moves(xdsd) == len(moved)
                for key in moved:
                    wait_until(
                        lambda x=xdsd, k=key: f"virtual address of {k} moved from" in x.log(),
                        what=f"the warning about {key}",
                    )
