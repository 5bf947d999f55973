"""What operators see of the virtual addresses: one row per service (the admin server's
``/debug/addresses``, ``xdsd validate --addresses``) and the services a new allocation
moved (``MeshState`` warns about them).

Pure: a function of the mesh's services, an allocation (``virtual_addresses.allocate``)
and the settings' ``[mesh.dns]``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xdsd.model import ResourceKey, Service
from xdsd.model.mesh_config import MeshDNS
from xdsd.translate.virtual_addresses import AddressBlock, VirtualAddresses


@dataclass(frozen=True, slots=True)
class AddressRow:
    """A service's virtual addresses in the settings' block(s): ``pinned`` when its file
    names them (``addresses`` then as written, single addresses only), else allocated
    (``slot`` its offset; ``addresses`` the slot's IPv4 address, then its IPv6 one when
    ``[mesh.dns] virtual_addresses_v6`` is set)."""

    key: ResourceKey
    namespace: str
    fqdn: str
    names: tuple[str, ...]
    addresses: tuple[str, ...]
    pinned: bool
    slot: int | None

    def as_json(self) -> dict[str, Any]:
        """The row as ``/debug/addresses`` shows it."""
        return {
            "key": str(self.key),
            "namespace": self.namespace,
            "fqdn": self.fqdn,
            "names": list(self.names),
            "addresses": list(self.addresses),
            "pinned": self.pinned,
            "slot": self.slot,
        }


def address_rows(
    services: Iterable[Service], allocation: VirtualAddresses, dns: MeshDNS
) -> tuple[AddressRow, ...]:
    """One row per service of ``services`` (in their order) with its addresses under
    ``allocation`` in the blocks of ``dns``."""
    block = AddressBlock.parse(dns.virtual_addresses)
    block_v6 = AddressBlock.parse(dns.virtual_addresses_v6) if dns.virtual_addresses_v6 else None
    rows = []
    for svc in services:
        pinned = allocation.pinned.get(svc.key)
        slot = allocation.slots.get(svc.key)
        if pinned is not None:
            addresses = pinned
        elif slot is not None:
            addresses = (block.address(slot),)
            if block_v6 is not None:
                addresses += (block_v6.address(slot),)
        else:
            addresses = ()
        rows.append(
            AddressRow(
                svc.key,
                svc.namespace,
                svc.fqdn,
                svc.host_names,
                addresses,
                pinned is not None,
                slot,
            )
        )
    return tuple(rows)


def address_table(rows: Iterable[AddressRow]) -> list[str]:
    """The lines of ``xdsd validate --addresses``: ADDRESS SERVICE NAMES, one line per
    address, by address (IPv4 first), columns aligned; a pinned address is marked ``*``."""
    lines = []
    for row in rows:
        service = f"{row.key.namespace}/{row.key.name}"
        for address in row.addresses:
            shown = address + ("*" if row.pinned else "")
            lines.append((_address_order(address), shown, service, ", ".join(row.names)))
    lines.sort()
    header = ("ADDRESS", "SERVICE", "NAMES")
    width = [max([len(header[i]), *(len(line[i + 1]) for line in lines)]) for i in range(2)]
    out = [f"{header[0]:<{width[0]}}  {header[1]:<{width[1]}}  {header[2]}"]
    out += [f"{a:<{width[0]}}  {s:<{width[1]}}  {n}" for _, a, s, n in lines]
    return out


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


@dataclass(frozen=True, slots=True)
class Move:
    """A service whose allocated address changed from ``old`` to ``new`` without its
    file asking (``virtual_addresses``' stability limit, or a new block)."""

    key: ResourceKey
    old: str
    new: str


def moves(
    before: tuple[MeshDNS, VirtualAddresses] | None,
    after: tuple[MeshDNS, VirtualAddresses],
) -> list[Move]:
    """The services allocated an address both ``before`` and ``after`` (each a
    ``[mesh.dns]`` and the allocation made in its block) whose address differs, by key.
    A service that pins an address, on either side, is not a move: its file changed."""
    if before is None or (before[1] is after[1] and before[0] == after[0]):
        return []  # the allocation was taken over: nothing moved
    old_block = AddressBlock.parse(before[0].virtual_addresses)
    new_block = AddressBlock.parse(after[0].virtual_addresses)
    same_block = old_block == new_block
    old_slots, new_slots = before[1].slots, after[1].slots
    out = []
    for key, slot in new_slots.items():
        was = old_slots.get(key)
        if was is None or (same_block and was == slot):
            continue
        old, new = old_block.address(was), new_block.address(slot)
        if old != new:
            out.append(Move(key, old, new))
    out.sort(key=lambda m: m.key)
    return out
