"""Renumbering made visible: a reload that moves a service's allocated virtual address
logs a warning per moved service and counts it (``xdsd_virtual_address_moves_total``);
a block too small for the mesh refuses the reload (or the new settings) and keeps the
last good configuration; ``MeshState.addresses`` is what ``/debug/addresses`` shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from xdsd.admin.metrics import Metrics
from xdsd.model import Port, Protocol, Service
from xdsd.model.mesh_config import MeshConfig, MeshDNS
from xdsd.state import MeshState
from xdsd.translate.virtual_addresses import AddressBlock, allocate

BLOCK = "10.0.0.0/28"  # 14 slots: a newcomer often wins a slot another service held
NAMES = [f"s{i}" for i in range(6)]


def _service(name: str) -> str:
    return (
        f"kind: Service\nname: {name}\nports: [{{number: 80, protocol: HTTP}}]\n"
        "endpoints: [{address: 10.1.0.1}]\n"
    )


def _model(name: str) -> Service:
    return Service(name, "default", (Port(80, Protocol.HTTP),))


def _displacing_newcomer() -> tuple[str, set[str]]:
    """A service name whose addition moves some of ``NAMES``, and the names it moves
    (found by the allocation itself, so the test holds whatever the hash)."""
    block = AddressBlock.parse(BLOCK)
    before = allocate([_model(n) for n in NAMES], block).slots
    for i in range(1000):
        name = f"new{i}"
        after = allocate([_model(n) for n in (*NAMES, name)], block).slots
        moved = {k.name for k, slot in before.items() if after[k] != slot}
        if moved:
            return name, moved
    raise AssertionError("no newcomer displaces anyone")


def _state(tmp_path: Path, dns: MeshDNS) -> MeshState:
    config = tmp_path / "config"
    config.mkdir()
    for name in NAMES:
        (config / f"{name}.yaml").write_text(_service(name))
    state = MeshState(str(config), mesh_config=MeshConfig(dns=dns))
    assert state.reload()
    return state


def test_a_move_is_warned_about_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state(tmp_path, MeshDNS(virtual_addresses=BLOCK))
    before = {s["key"]: s["addresses"] for s in state.addresses()["services"]}
    newcomer, moved = _displacing_newcomer()
    (tmp_path / "config" / f"{newcomer}.yaml").write_text(_service(newcomer))
    with caplog.at_level(logging.WARNING, logger="xdsd.state"):
        assert state.reload()
    warnings = [r.getMessage() for r in caplog.records if "virtual address of" in r.getMessage()]
    assert len(warnings) == len(moved) == state.address_moves
    after = {s["key"]: s["addresses"] for s in state.addresses()["services"]}
    for name in moved:
        key = f"Service default/{name}"
        [line] = [w for w in warnings if f"{key} moved" in w]
        assert f"moved from {before[key][0]} to {after[key][0]}" in line
        assert "pin it with `address`" in line
    # Every other service kept its address.
    assert {k: v for k, v in after.items() if k in before and k.split("/")[-1] not in moved} == {
        k: v for k, v in before.items() if k.split("/")[-1] not in moved
    }
    metrics = Metrics(version="test")
    metrics.track_address_moves(lambda: state.address_moves)
    text = generate_latest(metrics.registry).decode()
    assert f"xdsd_virtual_address_moves_total {float(len(moved))}" in text
    # Removing the newcomer moves them back: counted again.
    (tmp_path / "config" / f"{newcomer}.yaml").unlink()
    assert state.reload()
    assert state.address_moves == 2 * len(moved)
    assert {s["key"]: s["addresses"] for s in state.addresses()["services"]} == before


def test_adding_a_pinned_service_moves_nobody(tmp_path: Path) -> None:
    state = _state(tmp_path, MeshDNS(virtual_addresses=BLOCK))
    before = {s["key"]: s for s in state.addresses()["services"]}
    text = _service("pinned").replace("ports:", "address: 10.0.0.9\nports:")
    (tmp_path / "config" / "pinned.yaml").write_text(text)
    assert state.reload()
    shown = {s["key"]: s for s in state.addresses()["services"]}
    assert shown["Service default/pinned"]["addresses"] == ["10.0.0.9"]
    assert shown["Service default/pinned"]["pinned"] is True
    # Its slot is reserved: whoever held 10.0.0.9 moved (and that is counted).
    moved = [k for k in before if shown[k]["addresses"] != before[k]["addresses"]]
    assert state.address_moves == len(moved)
    assert all("10.0.0.9" not in s["addresses"] for k, s in shown.items() if not s["pinned"])


def test_a_block_too_small_refuses_the_reload_and_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    dns = MeshDNS(virtual_addresses="10.0.0.0/29")  # 6 slots for 6 services
    state = _state(tmp_path, dns)
    served = state.translation
    (tmp_path / "config" / "one-more.yaml").write_text(_service("one-more"))
    assert not state.reload()
    assert state.translation is served and state.failed_reloads == 1
    [error] = state.errors
    assert (error.path, error.field) == ("<settings>", "mesh.dns.virtual_addresses")
    assert "7 services need a virtual address but 10.0.0.0/29 has 6 free" in error.message
    assert len(state.addresses()["services"]) == 6
    # A larger block (SIGHUP's [mesh]) and the next reload load it.
    assert state.set_mesh_config(MeshConfig(dns=MeshDNS(virtual_addresses="10.0.0.0/28")))
    # Every allocated address moved with the block: counted, not refused.
    assert state.address_moves == 6
    assert state.reload() and len(state.addresses()["services"]) == 7


def test_new_settings_whose_block_is_too_small_are_refused(tmp_path: Path) -> None:
    state = _state(tmp_path, MeshDNS(virtual_addresses=BLOCK))
    current = state.mesh_config
    assert not state.set_mesh_config(MeshConfig(dns=MeshDNS(virtual_addresses="10.0.0.0/30")))
    assert state.mesh_config is current
    assert state.addresses()["block"] == BLOCK


def test_with_dns_off_no_addresses_are_shown_or_tracked(tmp_path: Path) -> None:
    state = _state(tmp_path, MeshDNS(enabled=False, virtual_addresses="10.0.0.0/30"))
    assert state.addresses() == {
        "enabled": False,
        "block": "10.0.0.0/30",
        "block_v6": "",
        "services": [],
    }
