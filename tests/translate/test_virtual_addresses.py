"""The allocation of virtual addresses (``translate/virtual_addresses.py``): deterministic
across processes and orders, pinned slots reserved, a block too small refused naming the
settings key, and stable under random sequences of services added and removed — a
service moves only when the allocation rule displaces it, in a chain that starts at the
newcomer (and a removal moves back only what the removed service had displaced)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Mapping

import pytest

from xdsd.errors import TranslationError
from xdsd.model import Mesh, Origin, Port, Protocol, ResourceKey, Service
from xdsd.model.mesh_config import MeshConfig, MeshDNS
from xdsd.translate import MeshTranslation
from xdsd.translate.address_view import address_rows, address_table, moves
from xdsd.translate.virtual_addresses import AddressBlock, VirtualAddresses, allocate

BLOCK = AddressBlock.parse("127.240.0.0/16")
HTTP = (Port(80, Protocol.HTTP),)


def svc(name: str, namespace: str = "default", address: str = "") -> Service:
    return Service(name, namespace, HTTP, addresses=(address,) if address else ())


def services(count: int, prefix: str = "s") -> list[Service]:
    return [svc(f"{prefix}{i}", f"ns{i % 7}") for i in range(count)]


def as_addresses(found: VirtualAddresses, block: AddressBlock = BLOCK) -> dict[str, str]:
    return {str(k): block.address(s) for k, s in found.slots.items()}


# -- determinism ---------------------------------------------------------------------------

_CHILD = """
import json, sys
from tests.translate.test_virtual_addresses import BLOCK, as_addresses, services
from xdsd.translate.virtual_addresses import allocate
print(json.dumps(as_addresses(allocate(services(int(sys.argv[1])), BLOCK))))
"""


@pytest.mark.parametrize("seed", ["0", "4242"])
def test_another_process_allocates_the_same_addresses(seed: str) -> None:
    """Another interpreter, with another string hash seed, computes the same addresses:
    what replicas and a restarted daemon rely on."""
    here = as_addresses(allocate(services(1500), BLOCK))
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "1500"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        timeout=120,
    ).stdout
    assert json.loads(out) == here
    assert len(set(here.values())) == 1500  # collision-free


def test_the_order_services_come_in_changes_nothing() -> None:
    listed = services(800)
    shuffled = list(listed)
    random.Random(7).shuffle(shuffled)
    assert allocate(shuffled, BLOCK) == allocate(listed, BLOCK)


def test_slots_are_the_same_in_another_block_of_the_same_size() -> None:
    """A node may use another block (several sidecars on one host): every service keeps
    its offset."""
    found = allocate(services(100), BLOCK)
    other = AddressBlock.parse("127.10.0.0/16")
    key = ResourceKey("Service", "ns3", "s3")
    assert (
        found.addresses_of(key, BLOCK)[0].split(".")[2:]
        == found.addresses_of(key, other)[0].split(".")[2:]
    )


# -- pinned addresses -------------------------------------------------------------------------


def test_pinned_slots_are_reserved_and_pinned_services_keep_their_addresses() -> None:
    block = AddressBlock.parse("10.0.0.0/26")  # 62 slots: every one is wanted
    free = services(57)  # 62 slots, 5 of them pinned
    pinned = [
        svc("p1", address="10.0.0.1"),
        svc("p2", address="10.0.0.62"),
        svc("p3", address="10.0.0.30"),
        svc("p4", address="10.0.0.31"),
        svc("outside", address="192.168.1.1"),  # outside the block: reserves nothing
        Service("e.example", "default", HTTP, entry="e", addresses=("10.0.0.0/28", "10.0.0.40")),
    ]
    found = allocate([*free, *pinned], block)
    assert set(found.pinned) == {s.key for s in pinned}
    assert found.pinned[pinned[-1].key] == ("10.0.0.40",)  # a range is no address
    reserved = {
        block.slot_of(a) for a in ("10.0.0.1", "10.0.0.62", "10.0.0.30", "10.0.0.31", "10.0.0.40")
    }
    assert reserved.isdisjoint(found.slots.values())
    assert len(found.slots) == 57 and len(set(found.slots.values())) == 57


def test_a_service_pinning_only_a_range_is_allocated() -> None:
    entry = Service("e.example", "default", HTTP, entry="e", addresses=("10.0.0.0/24",))
    found = allocate([entry], BLOCK)
    assert entry.key in found.slots and entry.key not in found.pinned


# -- a block too small ------------------------------------------------------------------------


def test_a_block_too_small_names_the_settings_key_and_line() -> None:
    dns = MeshDNS(virtual_addresses="10.0.0.0/29", origin=Origin("/etc/xdsd/xdsd.toml", 7))
    mesh = Mesh(tuple(services(7)))  # 6 slots
    translation = MeshTranslation(mesh, mesh_config=MeshConfig(dns=dns))
    with pytest.raises(TranslationError) as info:
        translation.virtual_addresses()
    [problem] = info.value.problems
    assert (problem.path, problem.line, problem.field) == (
        "/etc/xdsd/xdsd.toml",
        7,
        "mesh.dns.virtual_addresses",
    )
    assert "7 services need a virtual address but 10.0.0.0/29 has 6 free" in problem.message
    # Pinning one outside the block makes room.
    fits = Mesh((*services(6), svc("pinned", address="192.168.0.1")))
    found = MeshTranslation(fits, mesh_config=MeshConfig(dns=dns)).virtual_addresses()
    assert len(found.slots) == 6


def test_pinned_slots_count_against_the_block() -> None:
    block = AddressBlock.parse("10.0.0.0/29")
    with pytest.raises(
        ValueError, match=r"6 services need a virtual address but 10.0.0.0/29 has 5 free"
    ):
        allocate([*services(6), svc("p", address="10.0.0.3")], block)


# -- stability under random edits --------------------------------------------------------------


def _check_chain(
    before: Mapping[ResourceKey, int], after: Mapping[ResourceKey, int], newcomer: ResourceKey
) -> set[ResourceKey]:
    """``newcomer`` was added between ``before`` and ``after``: every service that moved
    left its slot to the newcomer or to another service that moved, and the newcomer took
    the slot of one that moved (when any did). Returns the services that moved."""
    moved = {k for k, slot in before.items() if after[k] != slot}
    taken_by = {after[k] for k in (*moved, newcomer)}
    for key in moved:
        assert before[key] in taken_by, f"{key} left slot {before[key]} to nobody involved"
    if moved:
        assert after[newcomer] in {before[k] for k in moved}, "the chain starts at the newcomer"
    # Exactly one slot among those involved is new: a chain, no slot left empty.
    assert len(taken_by - {before[k] for k in moved}) == 1
    return moved


@pytest.mark.parametrize(
    ("block", "count", "seed"),
    [
        ("127.240.0.0/16", 1000, 1),  # the default block: moves are rare
        ("10.0.0.0/21", 1000, 2),  # 2,046 slots for ~1,000 services: contention
        ("10.0.0.0/22", 900, 3),  # 1,022 slots, nearly full: the last rounds too
    ],
)
def test_random_adds_and_removes_move_only_displaced_services(
    block: str, count: int, seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(seed)
    addresses = AddressBlock.parse(block)
    pinned = [
        svc(f"pin{i}", address=addresses.address(rng.randrange(addresses.size))) for i in range(20)
    ]
    pinned = list({s.addresses: s for s in pinned}.values())
    present = {s.key: s for s in [*services(count), *pinned]}
    spare = iter(svc(f"new{i}", f"ns{i % 5}") for i in range(10**6))
    current = allocate(present.values(), addresses)
    edits = moved_total = 0
    for _ in range(300):
        before = current
        if rng.random() < 0.5 and len(current.slots) < addresses.size - len(pinned) - 1:
            added = next(spare)
            present[added.key] = added
            current = allocate(present.values(), addresses)
            moved = _check_chain(before.slots, current.slots, added.key)
        else:
            removed = rng.choice([k for k in present if not k.name.startswith("pin")])
            del present[removed]
            current = allocate(present.values(), addresses)
            # A removal undoes the addition of the removed service to what is left.
            moved = _check_chain(current.slots, {**before.slots}, removed)
        assert current.pinned == before.pinned  # pinned services never move
        assert set(current.slots.values()).isdisjoint(
            addresses.slot_of(a) for s in pinned for a in s.addresses
        )
        edits += 1
        moved_total += len(moved)
    with capsys.disabled():
        print(
            f"\n{block}, {count} services: {moved_total} moves in {edits} edits "
            f"({moved_total / edits:.3f} per edit, {moved_total / edits / count:.5%} of services)"
        )
    if block.endswith("/16"):
        assert moved_total <= edits * 0.05  # the module doc's ~0.8 % of additions


def test_moves_are_what_the_daemon_warns_about() -> None:
    """``address_view.moves``: only allocated services present on both sides whose
    address changed; every allocated one when the block changes; pinning is no move."""
    dns = MeshDNS()
    before = allocate(services(50), BLOCK)
    assert moves((dns, before), (dns, before)) == []
    pinned_now = [*services(49), svc("s49", "ns0", address="10.1.1.1")]
    assert moves((dns, before), (dns, allocate(pinned_now, BLOCK))) == []
    other = MeshDNS(virtual_addresses="127.241.0.0/16")
    moved = moves(
        (dns, before), (other, allocate(services(50), AddressBlock.parse("127.241.0.0/16")))
    )
    assert len(moved) == 50 and all(
        m.old.startswith("127.240.") and m.new.startswith("127.241.") for m in moved
    )
    assert moves(None, (dns, before)) == []


def test_rows_and_table_show_pinned_and_allocated_addresses() -> None:
    dns = MeshDNS(virtual_addresses_v6="fd00:ec::/112")
    listed = [svc("web"), svc("db", address="10.9.0.1")]
    found = allocate(listed, BLOCK)
    rows = address_rows(listed, found, dns)
    web, db = rows
    assert web.pinned is False and web.slot is not None
    assert web.addresses == (
        BLOCK.address(web.slot),
        AddressBlock.parse("fd00:ec::/112").address(web.slot),
    )
    assert db.as_json() == {
        "key": "Service default/db",
        "namespace": "default",
        "fqdn": "db.default.svc.cluster.local",
        "names": ["db.default.svc.cluster.local", "db.default.svc", "db.default", "db"],
        "addresses": ["10.9.0.1"],
        "pinned": True,
        "slot": None,
    }
    table = address_table(rows)
    assert table[0].split() == ["ADDRESS", "SERVICE", "NAMES"]
    assert [line.split()[0] for line in table[1:]] == [
        "10.9.0.1*",
        web.addresses[0],
        web.addresses[1],
    ]


def test_a_translation_takes_the_allocation_over_when_its_inputs_are_equal() -> None:
    """Nearly every edit (routes, endpoints) leaves the services' keys, identities and
    pinned addresses alone: the next translation reuses the allocation instead of making
    it again; a new service, a new pin or a new block make a new one."""
    listed = services(300)
    first = MeshTranslation(Mesh(tuple(listed)))
    allocation = first.virtual_addresses()
    edited = [Service(s.name, s.namespace, (Port(81, Protocol.TCP),)) for s in listed]
    second = MeshTranslation(Mesh(tuple(edited)), previous=first)
    assert second.virtual_addresses() is allocation
    # Through a translation that never allocated (no sidecar asked), too.
    third = MeshTranslation(Mesh(tuple(edited)), previous=second)
    fourth = MeshTranslation(Mesh(tuple(listed)), previous=third)
    assert fourth.virtual_addresses() is allocation
    grown = MeshTranslation(Mesh((*listed, svc("newcomer"))), previous=first)
    assert grown.virtual_addresses() is not allocation
    assert grown.virtual_addresses() == allocate([*listed, svc("newcomer")], BLOCK)
    pinned = MeshTranslation(Mesh((*listed[1:], svc("s0", "ns0", "10.0.0.1"))), previous=first)
    assert pinned.virtual_addresses().pinned == {listed[0].key: ("10.0.0.1",)}
    other = MeshConfig(dns=MeshDNS(virtual_addresses="127.9.0.0/16"))
    moved = MeshTranslation(Mesh(tuple(listed)), previous=first, mesh_config=other)
    assert moved.virtual_addresses() is not allocation
