"""Plain readers: the common, well-formed Service and DestinationRule specs read straight
from their mappings.

A large mesh has Services and simple DestinationRules by the thousand. These readers
take them without ``Fields`` (``docs/performance.md``, "Plain readers") and give up
(None) at the first thing that is not plainly valid, so that the careful parsers
(``service.parse_service``, ``destination_rule.parse_destination_rule``) read the spec
again and report every problem, word for word. ``tests/sources/test_fast_parsing.py``
checks that whenever a reader returns an object, the careful parser returns an equal one
and reports nothing."""

from __future__ import annotations

import functools
from typing import Any

from xdsd.located import is_ip
from xdsd.model import (
    DestinationRule,
    Endpoint,
    Locality,
    Origin,
    Port,
    Protocol,
    Resolution,
    Service,
    Subset,
)
from xdsd.model.service import make_endpoint
from xdsd.sources.service import is_virtual_address

_SERVICE_KEYS = frozenset({"resolution", "hosts", "ports", "endpoints", "address"})
_PORT_KEYS = frozenset({"number", "protocol", "targetPort", "name"})
_ENDPOINT_KEYS = frozenset({"address", "labels", "locality", "weight", "ports"})
#: What a plain Service may say (NONE is refused, with a reason, by ``parse_service``).
_RESOLUTIONS = {r.value: r for r in Resolution if r is not Resolution.NONE}
_PROTOCOLS = {p.value: p for p in Protocol}
_WEIGHT_MAX = 2**31 - 1


def parse_plain_service(
    data: dict[str, Any], name: str, namespace: str, origin: Origin
) -> Service | None:
    """What ``parse_service`` gives for the spec ``data`` when it has nothing to report,
    read straight from the mapping; None at the first thing that is not plainly valid
    (a missing or wrong field, an unusual spelling such as a lower-case enum value or an
    integral float, a duplicate port), for ``parse_service`` to read again and explain.
    ``tests/sources/test_fast_parsing.py`` checks that whenever this returns a service,
    ``parse_service`` returns an equal one and reports nothing."""
    if not _SERVICE_KEYS.issuperset(data):
        return None
    resolution = data.get("resolution")
    if resolution is None:
        resolution = Resolution.STATIC
    else:
        resolution = _RESOLUTIONS.get(resolution) if type(resolution) is str else None
        if resolution is None:
            return None
    hosts = data.get("hosts")
    if hosts is None:
        hosts = ()
    elif type(hosts) is list and all(type(h) is str and h for h in hosts):
        hosts = tuple(hosts)
    else:
        return None
    port_items = data.get("ports")
    if type(port_items) is not list:
        return None
    ports = []
    numbers: set[int] = set()
    names: set[str] = set()
    for item in port_items:
        if type(item) is not dict or not _PORT_KEYS.issuperset(item):
            return None
        number = item.get("number")
        protocol_name = item.get("protocol")
        protocol = _PROTOCOLS.get(protocol_name) if type(protocol_name) is str else None
        target = item.get("targetPort")
        port_name = item.get("name")
        if port_name is None:
            port_name = ""
        if (
            type(number) is not int
            or not 0 < number <= 65535
            or number in numbers
            or protocol is None
            or (target is not None and (type(target) is not int or not 0 < target <= 65535))
            or type(port_name) is not str
            or (port_name and port_name in names)
        ):
            return None
        numbers.add(number)
        names.add(port_name)
        ports.append(Port(number, protocol, port_name, target or 0))
    names.discard("")
    address = data.get("address")
    if address is None or address == "":
        addresses: tuple[str, ...] = ()
    elif type(address) is str and is_virtual_address(address):
        addresses = (address,)
    else:
        return None
    endpoint_items = data.get("endpoints")
    if endpoint_items is None:
        endpoint_items = []
    elif type(endpoint_items) is not list:
        return None
    endpoints = []
    static = resolution is Resolution.STATIC
    for item in endpoint_items:
        endpoint = _plain_endpoint(item, static, names) if type(item) is dict else None
        if endpoint is None:
            return None
        endpoints.append(endpoint)
    return Service(
        name=name,
        namespace=namespace,
        ports=tuple(ports),  # its UDP ports go to datagram_ports (Service)
        endpoints=tuple(endpoints),
        hosts=hosts,
        resolution=resolution,
        origin=origin,
        addresses=addresses,
    )


def _plain_endpoint(item: dict[str, Any], static: bool, port_names: set[str]) -> Endpoint | None:
    """``_parse_endpoint``'s endpoint when it has nothing to report, else None."""
    if not _ENDPOINT_KEYS.issuperset(item):
        return None
    address = item.get("address")
    if type(address) is not str or not address or (static and not is_ip(address)):
        return None
    labels = item.get("labels")
    if labels is None:
        label_pairs: tuple[tuple[str, str], ...] = ()
    else:
        if type(labels) is not dict:
            return None
        written = tuple(labels.items())
        size = 0
        for key, value in written:
            if type(key) is not str or type(value) is not str:
                return None
            size += len(key) + len(value)
        known = _LABEL_PAIRS.get(written)
        if known is not None:
            label_pairs = known
        else:
            label_pairs = tuple(sorted(written))
            if len(_LABEL_PAIRS) < _LABEL_PAIRS_MAX and size <= _LABEL_TEXT_MAX:
                _LABEL_PAIRS[written] = label_pairs
    locality = item.get("locality")
    if locality is None or locality == "":
        where = _NO_LOCALITY
    else:
        found = _locality(locality) if type(locality) is str else None
        if found is None:
            return None
        where = found
    weight = item.get("weight")
    if weight is None:
        weight = 1
    elif type(weight) is not int or not 1 <= weight <= _WEIGHT_MAX:
        return None
    port_map = item.get("ports")
    ports: tuple[tuple[str, int], ...] = ()
    if port_map is not None:
        if type(port_map) is not dict:
            return None
        pairs = []
        for key in sorted(port_map):
            number = port_map[key]
            if key not in port_names or type(number) is not int or not 0 < number <= 65535:
                return None
            pairs.append((key, number))
        ports = tuple(pairs)
    return make_endpoint(address, label_pairs, where, weight, ports)


_RULE_KEYS = frozenset({"host", "subsets"})
_SUBSET_KEYS = frozenset({"name", "labels"})


def parse_plain_destination_rule(
    data: dict[str, Any], name: str, namespace: str, origin: Origin
) -> DestinationRule | None:
    """What ``parse_destination_rule`` gives for the spec ``data`` of a rule with a host
    and subsets chosen by labels, and no traffic policy (so no paths to resolve and no
    warnings), when it has nothing to report; None at the first doubt, as
    ``parse_plain_service`` does (tested the same way)."""
    if not _RULE_KEYS.issuperset(data):
        return None
    host = data.get("host")
    items = data.get("subsets")
    if type(host) is not str or not host:
        return None
    if items is None:
        items = []
    elif type(items) is not list:
        return None
    subsets = []
    names: set[str] = set()
    for item in items:
        if type(item) is not dict or not _SUBSET_KEYS.issuperset(item):
            return None
        subset_name = item.get("name")
        labels = item.get("labels")
        if type(subset_name) is not str or not subset_name or subset_name in names:
            return None
        names.add(subset_name)
        if labels is None:
            pairs: tuple[tuple[str, str], ...] = ()
        elif type(labels) is dict and all(
            type(k) is str and type(v) is str for k, v in labels.items()
        ):
            pairs = tuple(sorted(labels.items()))
        else:
            return None
        subsets.append(Subset(subset_name, pairs, None))
    return DestinationRule(name, host, namespace, None, tuple(subsets), origin=origin)


_NO_LOCALITY = Locality()

#: The sorted label pairs of the label mappings endpoints were written with, by their
#: pairs in written order (a mesh writes few label sets, shared by thousands of
#: endpoints, which then share the tuples): sorting is what is saved, the types are
#: checked first for every endpoint. At most ``_LABEL_PAIRS_MAX`` of them are kept, each
#: of at most ``_LABEL_TEXT_MAX`` characters, whatever the files say (~0.5 MB at most).
_LABEL_PAIRS: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
_LABEL_PAIRS_MAX = 1024
_LABEL_TEXT_MAX = 256


@functools.lru_cache(maxsize=1024)
def _locality(text: str) -> Locality | None:
    """``Locality.parse(text)``, or None where it refuses the text; remembered (a mesh
    names few localities, and its endpoints then share the objects)."""
    try:
        return Locality.parse(text)
    except ValueError:
        return None
