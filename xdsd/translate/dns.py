"""A sidecar's DNS listener: mesh names answered with virtual addresses (Envoy's DNS filter).

How this works: ``dns_table`` lists, for one sidecar, every name it answers and the
virtual addresses it answers with; ``dns_listener`` is the UDP listener ``dns|IP|PORT``
running Envoy's DNS filter (``envoy.filters.udp.dns_filter``) over that table inline,
forwarding every other name to the upstream resolvers. Both are pure functions of their
arguments, so ``ClassParts.dns_listener`` memoizes the listener by them and every class
with equal inputs (namespace, visible services and their addresses, blocks, upstream
resolvers, TTL) shares one.

The names of a service, for a sidecar in namespace ``NS`` (``service_names``):

- an xdsd Service ``svc`` of namespace ``ns``: ``svc.ns``, ``svc.ns.svc``,
  ``svc.ns.svc.cluster.local`` and its extra ``hosts``; the short name ``svc`` too when
  ``ns`` is ``NS`` (a short name means the caller's namespace, as Kubernetes search
  paths do);
- a ServiceEntry host: the host itself, a wildcard (``*.example.com``) included. Envoy's
  filter matches the exact name first, then the longest ``*.`` suffix: ``*.example.com``
  answers ``a.example.com`` and ``b.a.example.com``, not ``example.com``.

What Envoy's DNS filter does with a query (Envoy 1.40, checked by
``tests/e2e/serving/test_dns.py``): a name the table holds (exactly, or under a wildcard)
is answered from it — A with its IPv4 addresses, AAAA with its IPv6 ones, and an empty
NXDOMAIN answer when it holds none of the asked family (Envoy answers NXDOMAIN, not
NODATA, for an AAAA query of an IPv4-only name). Every other A or AAAA query is
forwarded to the upstream resolvers whenever forwarding is configured — a name under a
"known" suffix of the table (``nope.default.svc.cluster.local``) is forwarded like any
other, because Envoy's "known domains" only decide whether the table is consulted first;
its answer (NXDOMAIN from a public resolver for ``cluster.local``) is passed on, with
Envoy's own TTL (300 s). Other query types (MX, TXT, HTTPS, SRV for names outside the
table) are answered NOTIMP without forwarding. So xdsd cannot make the sidecar itself
answer NXDOMAIN for a missing mesh name while it forwards the rest: those names reach the
upstream resolvers (see docs/rules.md, "Mesh DNS").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.udp.dns_filter.v3 import dns_filter_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2

from xdsd.errors import Problem
from xdsd.located import split_host_port
from xdsd.model import Service
from xdsd.model.service import DOMAIN_SUFFIX
from xdsd.resources import pack
from xdsd.translate.config_sources import duration
from xdsd.translate.node import NODE_PATH
from xdsd.translate.placement import overlaps
from xdsd.translate.virtual_addresses import AddressBlock, VirtualAddresses, reachable_by_address

DNS_FILTER = "envoy.filters.udp.dns_filter"
CARES_RESOLVER = "envoy.network.dns_resolver.cares"
#: How long the filter waits for an upstream resolver before answering NXDOMAIN.
RESOLVER_TIMEOUT = timedelta(seconds=2)
#: External lookups a worker keeps in flight; beyond, a query is answered NXDOMAIN at
#: once. Envoy requires at least 1; it also bounds a forwarding loop (an upstream that
#: is the sidecar itself) to about twice this many queries per client query.
MAX_PENDING_LOOKUPS = 128
#: The port of an upstream resolver named without one.
DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class DnsName:
    """One name of a sidecar's DNS table and the addresses it is answered with (IPv4
    for A queries, IPv6 for AAAA; order kept)."""

    name: str
    addresses: tuple[str, ...]


def dns_listener_name(ip: str, port: int) -> str:
    """``dns|IP|PORT``."""
    return f"dns|{ip}|{port}"


def service_names(service: Service, namespace: str) -> tuple[str, ...]:
    """The names the DNS listener of a sidecar in ``namespace`` answers for ``service``
    (see the module doc), most specific first."""
    if service.entry:
        return (service.name,)
    base = f"{service.name}.{service.namespace}"
    names = [f"{base}.{DOMAIN_SUFFIX}", f"{base}.svc", base]
    if service.namespace == namespace:
        names.append(service.name)
    names.extend(service.hosts)
    return tuple(dict.fromkeys(names))


def service_addresses(
    service: Service,
    virtual: VirtualAddresses,
    block: AddressBlock,
    block_v6: AddressBlock | None,
) -> tuple[str, ...]:
    """The addresses DNS answers ``service``'s names with: the addresses its file pins
    (either family), else its slot's address in ``block`` and, with ``block_v6``, in
    that block too. Empty for a service not allocated. Raises ValueError when its slot
    lies outside a block (a block smaller than the allocation's)."""
    key = service.key
    if key in virtual.pinned:
        return virtual.pinned[key]
    slot = virtual.slots.get(key)
    if slot is None:
        return ()
    if block_v6 is None:
        return (block.address(slot),)
    return (block.address(slot), block_v6.address(slot))


def dns_table(
    services: Iterable[Service],
    namespace: str,
    virtual: VirtualAddresses,
    block: AddressBlock,
    block_v6: AddressBlock | None = None,
) -> tuple[DnsName, ...]:
    """The DNS table of a sidecar in ``namespace`` that sees ``services``: each name of
    each service reachable by its virtual address (``reachable_by_address``) with that
    service's addresses (``service_addresses``), sorted by name. A name two services
    claim (a cross-check lets through, e.g. an extra host equal to another service's
    ``name.ns``) goes to the first in ``services``' order. Raises ValueError as
    ``service_addresses`` does."""
    table: dict[str, tuple[str, ...]] = {}
    for service in services:
        if not reachable_by_address(service):
            continue
        addresses = service_addresses(service, virtual, block, block_v6)
        if not addresses:
            continue
        for name in service_names(service, namespace):
            table.setdefault(name, addresses)
    return tuple(DnsName(name, table[name]) for name in sorted(table))


def resolver_address(text: str) -> tuple[str, int]:
    """``(IP, PORT)`` of an upstream resolver written ``IP`` (port 53), ``IP:PORT`` or
    ``[IPv6]:PORT``. Raises ValueError for anything else."""
    try:
        return str(ipaddress.ip_address(text)), DNS_PORT
    except ValueError:
        pass
    found = split_host_port(text)
    if found is None:
        raise ValueError(f"{text!r} is not a resolver (IP or IP:PORT)")
    return found


def upstream_loops(
    ip: str, port: int, upstream: tuple[str, ...], *, from_node: bool
) -> list[Problem]:
    """The problems of ``upstream`` resolvers that are the DNS listener on ``ip:port``
    itself: forwarding to them would send every name the table lacks back to the
    listener, about twice ``MAX_PENDING_LOOKUPS`` times before it is answered. Worded on
    the node's metadata (``from_node``) or on the settings. A loop through another
    resolver (a host resolver that sends the mesh's names back to the sidecar) cannot be
    seen from here (see docs/rules.md, "Mesh DNS")."""
    problems: list[Problem] = []
    for text in upstream:
        try:
            host, number = resolver_address(text)
        except ValueError as err:
            problems.append(_upstream_problem(from_node, str(err)))
            continue
        if number == port and overlaps(host, ip):
            problems.append(
                _upstream_problem(
                    from_node,
                    f"{text} is this sidecar's own DNS listener {ip}:{port}: name the "
                    "resolvers the host used before the sidecar",
                )
            )
    return problems


def _upstream_problem(from_node: bool, message: str) -> Problem:
    """A problem with an upstream resolver, on the node's metadata or on the settings."""
    if from_node:
        return Problem(NODE_PATH, 0, "metadata.dns_upstream", message)
    return Problem("<settings>", 0, "mesh.dns.upstream", message)


def dns_listener(
    ip: str, port: int, table: tuple[DnsName, ...], upstream: tuple[str, ...], ttl: timedelta
) -> Any:
    """The UDP listener ``dns|IP|PORT`` on ``ip:port``: Envoy's DNS filter answering the
    names of ``table`` with TTL ``ttl`` and forwarding every other A/AAAA query to
    ``upstream`` (resolvers as ``resolver_address`` reads them; empty: the resolvers of
    the proxy host's ``/etc/resolv.conf``, Envoy's default). ``SO_REUSEPORT`` is on:
    Envoy refuses a UDP listener without it when it runs more than one worker."""
    listener = listener_pb2.Listener(name=dns_listener_name(ip, port), stat_prefix="dns")
    sock = listener.address.socket_address
    sock.protocol = sock.UDP
    sock.address = ip
    sock.port_value = port
    listener.enable_reuse_port.value = True
    config = dns_filter_pb2.DnsFilterConfig(stat_prefix="dns")
    domains = config.server_config.inline_dns_table.virtual_domains
    answer_ttl = duration(ttl)
    for entry in table:
        domain = domains.add(name=entry.name)
        domain.endpoint.address_list.address.extend(entry.addresses)
        domain.answer_ttl.CopyFrom(answer_ttl)
    client = config.client_config
    client.resolver_timeout.CopyFrom(duration(RESOLVER_TIMEOUT))
    client.max_pending_lookups = MAX_PENDING_LOOKUPS
    if upstream:
        cares = cares_dns_resolver_pb2.CaresDnsResolverConfig()
        for text in upstream:
            host, number = resolver_address(text)
            resolver = cares.resolvers.add().socket_address
            resolver.address = host
            resolver.port_value = number
        client.typed_dns_resolver_config.name = CARES_RESOLVER
        client.typed_dns_resolver_config.typed_config.CopyFrom(pack(cares))
    filters = listener.listener_filters.add(name=DNS_FILTER)
    filters.typed_config.CopyFrom(pack(config))
    return listener
