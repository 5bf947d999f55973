"""Virtual addresses: one stable address per service, allocated from a block.

Every Service and every ServiceEntry host gets an address a sidecar listens on and its
DNS listener answers with: the one its file names (``Service.addresses``: an xdsd
Service's ``address``, a ServiceEntry's ``addresses``), else one allocated here.

Allocation is a pure function of the set of services, so every process that reads the
same directory — a restarted daemon, a second replica — computes the same addresses
without sharing any state. It works on *slots* (offsets into a block), so a node may
use another block of at least the same size (several sidecars on one host) and every
service keeps its offset.

How a slot is chosen: a service's identity is ``NAMESPACE/FQDN`` (for a ServiceEntry
host, the host), and its n-th candidate slot is a hash of (identity, n) modulo the
block's size. Allocation runs in rounds: in round n every service still without a slot
proposes its n-th candidate; a free slot goes to the proposer with the smallest rank (a
hash of its identity: no name is favoured), the others try again in the next round.
After ``ROUNDS`` rounds the few still unplaced (sorted by identity) take the first free
slot from their last candidate.
Slots of addresses pinned inside the block are never allocated.

Stability: adding a service moves another one only when the newcomer wins a slot the
other held — it proposes that very slot in an earlier round, or in the same round with
a smaller rank. With N services in a block of S slots that happens to about one
addition in 2S/N (0.8 % of additions at 1,000 services in a /16); removing a service
can move back the one it had displaced, and nothing else. No pure function of the
service set can do better: two services whose first candidates are equal must differ
in one of the two orders they can be added in. A file that names its address is never
moved (pin the addresses of services whose clients cache DNS answers for long).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xdsd.errors import Problem, TranslationError
from xdsd.model import Protocol, Resolution, ResourceKey, Service
from xdsd.model.mesh_config import MeshDNS
from xdsd.model.service import NO_ORIGIN

#: Rounds of hashed candidates before the remaining services take the next free slot.
ROUNDS = 16

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AddressBlock:
    """A block of virtual addresses: slot ``n`` is the network address plus ``n + 1``
    (the network address itself and, for IPv4, the broadcast address are never used)."""

    network: IPNetwork

    @classmethod
    def parse(cls, text: str) -> AddressBlock:
        """The block ``text`` names (``127.240.0.0/16``). Raises ValueError for what is
        not a network in CIDR notation with host bits zero, or one with fewer than two
        usable addresses."""
        network = ipaddress.ip_network(text, strict=True)
        block = cls(network)
        if block.size < 2:
            raise ValueError(f"{text} is too small for virtual addresses")
        return block

    @property
    def size(self) -> int:
        """How many slots the block has (capped at 2**32 for IPv6 blocks)."""
        reserved = 2 if self.network.version == 4 else 1
        return min(self.network.num_addresses - reserved, 2**32)

    def address(self, slot: int) -> str:
        """The address of ``slot`` (0 ≤ slot < size)."""
        if not 0 <= slot < self.size:
            raise ValueError(f"slot {slot} is outside {self.network}")
        return str(self.network.network_address + slot + 1)

    def slot_of(self, address: str) -> int | None:
        """The slot of ``address`` when it is one of the block's, else None."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if ip.version != self.network.version or ip not in self.network:
            return None
        slot = int(ip) - int(self.network.network_address) - 1
        return slot if 0 <= slot < self.size else None


def identity(service: Service) -> str:
    """What a service's slot is a hash of: ``NAMESPACE/FQDN``."""
    return f"{service.namespace}/{service.fqdn}"


def candidate(ident: str, attempt: int, size: int) -> int:
    """The ``attempt``-th candidate slot of identity ``ident`` in a block of ``size``."""
    digest = hashlib.blake2b(f"{ident}#{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size


def reachable_by_address(service: Service) -> bool:
    """True when a sidecar's listeners on the service's virtual address can carry
    every port of it, so DNS may answer its names with that address. False only for a
    resolution NONE wildcard host with a TCP port: a connection to the address carries
    neither the name asked (HTTP has Host, TLS has SNI) nor the real destination, so
    such names are forwarded to the upstream resolvers instead (the application then
    connects to the real address, outside the mesh unless ``xdsd capture`` sends it to
    the sidecar)."""
    if service.resolution is not Resolution.NONE or not service.name.startswith("*"):
        return True
    return all(p.protocol is not Protocol.TCP for p in service.ports)


def rank(ident: str) -> bytes:
    """Who wins a slot two services propose in the same round: the smaller rank."""
    return hashlib.blake2b(ident.encode(), digest_size=8, person=b"xdsd-rank").digest()


def pinned_addresses(service: Service) -> tuple[str, ...]:
    """The single addresses a service's file names (CIDRs of more than one address are
    not addresses a listener can bind or DNS can answer with)."""
    found: list[str] = []
    for text in service.addresses:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.num_addresses == 1:
            found.append(str(network.network_address))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class VirtualAddresses:
    """The outcome of an allocation: each service's slot, or the addresses it pins.

    ``slots`` holds every service without a pinned address; ``pinned`` every service
    with one (its addresses, as written). ``size`` is the size of the block the slots
    were allocated in.
    """

    size: int
    slots: Mapping[ResourceKey, int]
    pinned: Mapping[ResourceKey, tuple[str, ...]]

    def addresses_of(self, key: ResourceKey, block: AddressBlock) -> tuple[str, ...]:
        """The virtual addresses of the service ``key`` for a node whose block is
        ``block`` (at least ``size`` slots): its pinned addresses, else its slot's
        address in ``block``; empty for a service not allocated."""
        pinned = self.pinned.get(key)
        if pinned is not None:
            return pinned
        slot = self.slots.get(key)
        return () if slot is None else (block.address(slot),)


def allocate(services: Iterable[Service], block: AddressBlock) -> VirtualAddresses:
    """Allocate a slot of ``block`` to every service that pins no address (see the
    module doc). Raises ValueError when there are more such services than free slots."""
    size = block.size
    pinned: dict[ResourceKey, tuple[str, ...]] = {}
    taken: set[int] = set()
    waiting: dict[str, ResourceKey] = {}
    for service in services:
        own = pinned_addresses(service)
        if own:
            pinned[service.key] = own
            for address in own:
                slot = block.slot_of(address)
                if slot is not None:
                    taken.add(slot)
        else:
            waiting[identity(service)] = service.key
    if len(waiting) > size - len(taken):
        raise ValueError(
            f"{len(waiting)} services need a virtual address but {block.network} has "
            f"{size - len(taken)} free"
        )
    slots: dict[ResourceKey, int] = {}
    last: dict[str, int] = {}
    for attempt in range(ROUNDS):
        if not waiting:
            break
        proposals: dict[int, str] = {}
        for ident in waiting:
            slot = candidate(ident, attempt, size)
            last[ident] = slot
            if slot in taken:
                continue
            held = proposals.get(slot)
            if held is None or rank(ident) < rank(held):
                proposals[slot] = ident
        for slot, ident in proposals.items():
            taken.add(slot)
            slots[waiting.pop(ident)] = slot
    for ident in sorted(waiting):
        slot = last[ident]
        while slot in taken:
            slot = (slot + 1) % size
        taken.add(slot)
        slots[waiting[ident]] = slot
    return VirtualAddresses(size, slots, pinned)


#: What an allocation is a function of: each service's key, identity and pinned
#: addresses, in the mesh's order (by key).
AllocationInputs = tuple[tuple[ResourceKey, str, tuple[str, ...]], ...]


def allocation_inputs(services: Iterable[Service]) -> AllocationInputs:
    """The inputs of an allocation of ``services`` (cheap beside the allocation: no
    hashing; compared to take a previous allocation over)."""
    return tuple((s.key, identity(s), pinned_addresses(s)) for s in services)


@dataclass(frozen=True, slots=True)
class Allocated:
    """An allocation (``result``) and what it was made from: the block's text and the
    services' ``inputs``. The next translation takes it over when both are equal, which
    they are for nearly every edit (routes, endpoints, rules): an allocation of 10,000
    services costs ~90 ms, comparing the inputs a few."""

    block: str
    inputs: AllocationInputs
    result: VirtualAddresses
    #: The services it was made from (the same tuple again: nothing to compare).
    services: tuple[Service, ...] = field(default=(), compare=False, repr=False)


def allocate_for(
    services: Iterable[Service], dns: MeshDNS, previous: Allocated | None = None
) -> Allocated:
    """``allocate`` in the block of the settings' ``[mesh.dns]``, or ``previous`` when it
    was made from the same block and services. Raises TranslationError naming the
    settings file's ``virtual_addresses`` line (``dns.origin``; ``<settings>`` for the
    default) and the key ``mesh.dns.virtual_addresses`` when the block has fewer free
    slots than the services that need one."""
    listed = tuple(services)
    if previous is not None and previous.block == dns.virtual_addresses:
        if previous.services is listed:
            return previous
        inputs = allocation_inputs(listed)
        if previous.inputs == inputs:
            return Allocated(previous.block, inputs, previous.result, listed)
    else:
        inputs = allocation_inputs(listed)
    block = AddressBlock.parse(dns.virtual_addresses)
    try:
        return Allocated(dns.virtual_addresses, inputs, allocate(listed, block), listed)
    except ValueError as err:
        path = dns.origin.path if dns.origin != NO_ORIGIN else "<settings>"
        raise TranslationError(
            [
                Problem(
                    path,
                    dns.origin.line,
                    "mesh.dns.virtual_addresses",
                    f"{err}: give [mesh.dns] virtual_addresses a larger block, or pin some "
                    "services' addresses outside it",
                )
            ]
        ) from None
