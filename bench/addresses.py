"""``python -m bench addresses``: what virtual addresses cost and how stable they are.

For meshes of N services in the default /16 (and a tighter block): the time of a cold
allocation, of taking it over (the same services tuple; equal inputs, as after an
endpoint edit), of ``/debug/addresses``' rows; and, over random additions and removals,
how many services each edit moves (the allocation's stability limit, see
``xdsd/translate/virtual_addresses.py``).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from xdsd.model import Port, Protocol, Service
from xdsd.model.mesh_config import MeshDNS
from xdsd.translate.address_view import address_rows
from xdsd.translate.virtual_addresses import AddressBlock, allocate, allocate_for

PORTS = (Port(80, Protocol.HTTP),)


def _services(count: int, prefix: str = "s") -> list[Service]:
    return [Service(f"{prefix}{i}", f"ns{i % 50}", PORTS) for i in range(count)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def costs(count: int) -> dict[str, Any]:
    """Milliseconds of each step for ``count`` services in the default block."""
    dns = MeshDNS()
    listed = tuple(_services(count))
    copies = tuple(Service(s.name, s.namespace, s.ports) for s in listed)
    started = time.perf_counter()
    cold = allocate_for(listed, dns)
    allocated = time.perf_counter()
    allocate_for(listed, dns, cold)
    same = time.perf_counter()
    allocate_for(copies, dns, cold)
    equal = time.perf_counter()
    address_rows(listed, cold.result, dns)
    rows = time.perf_counter()
    return {
        "services": count,
        "cold_ms": _ms(allocated - started),
        "same_tuple_ms": _ms(same - allocated),
        "equal_inputs_ms": _ms(equal - same),
        "rows_ms": _ms(rows - equal),
    }


def stability(block: str, count: int, edits: int, seed: int) -> dict[str, Any]:
    """Moves per random addition or removal among ``count`` services in ``block``."""
    rng = random.Random(seed)
    addresses = AddressBlock.parse(block)
    present = {s.key: s for s in _services(count)}
    fresh = (Service(f"new{i}", f"ns{i % 7}", PORTS) for i in range(10**9))
    current = allocate(present.values(), addresses).slots
    added = removed = add_moves = remove_moves = 0
    for _ in range(edits):
        before = current
        if rng.random() < 0.5:
            svc = next(fresh)
            present[svc.key] = svc
            added += 1
        else:
            del present[rng.choice(list(present))]
            removed += 1
        current = allocate(present.values(), addresses).slots
        moved = sum(1 for k, slot in before.items() if k in current and current[k] != slot)
        if len(present) > len(before):
            add_moves += moved
        else:
            remove_moves += moved
    return {
        "block": block,
        "services": count,
        "additions": added,
        "moves_by_additions": add_moves,
        "removals": removed,
        "moves_by_removals": remove_moves,
        "moves_per_edit": round((add_moves + remove_moves) / edits, 4),
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench addresses", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,50000", help="mesh sizes (services)")
    parser.add_argument("--edits", type=int, default=300, help="random edits per block")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    found_costs = [costs(n) for n in sizes]
    print(f"{'services':>9} {'cold ms':>9} {'same ms':>9} {'equal ms':>9} {'rows ms':>9}")
    for c in found_costs:
        print(
            f"{c['services']:>9} {c['cold_ms']:>9} {c['same_tuple_ms']:>9} "
            f"{c['equal_inputs_ms']:>9} {c['rows_ms']:>9}"
        )
    found_stability = [
        stability(block, count, args.edits, args.seed)
        for block, count in (
            ("127.240.0.0/16", 1000),
            ("127.240.0.0/16", 10000),
            ("10.0.0.0/21", 1000),
        )
    ]
    header = ("block", "services", "adds", "moved", "removes", "moved", "per edit")
    print("\n{:>16} {:>9} {:>5} {:>6} {:>8} {:>6} {:>9}".format(*header))
    for s in found_stability:
        print(
            f"{s['block']:>16} {s['services']:>9} {s['additions']:>5} {s['moves_by_additions']:>6} "
            f"{s['removals']:>8} {s['moves_by_removals']:>6} {s['moves_per_edit']:>9}"
        )
    return {"costs": found_costs, "stability": found_stability}
