"""Registrations as JSON: what ``/debug/registrations`` shows and what ``xdsd validate``
and ``render`` read back (``--registrations FILE``, ``--registrations-from ADMIN``).

The view is ``{"replica": NAME, "registrations": [ITEM, ...]}``, each item
``{"key", "namespace", "group", "address", "node", "labels", "locality", "replica",
"since", "disconnected", "connected", "health"}`` (times in seconds since the epoch;
``disconnected`` 0 while connected; ``connected``: a stream of the answering replica
holds it); the registry adds ``bookkeeping`` (``Registry.bookkeeping``: the sizes of its
internal maps), which nothing reads back. ``parse_registrations`` reads back what it
needs of that, checked.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable
from typing import Any

from xdsd.model.registrations import Health, Registration
from xdsd.model.service import Locality, ResourceKey

#: The most registrations a snapshot file may hold.
MAX_REGISTRATIONS = 100_000


def registration_json(registration: Registration, connected: bool) -> dict[str, Any]:
    """One registration as the view shows it."""
    r = registration
    return {
        "key": r.key,
        "namespace": r.group.namespace,
        "group": r.group.name,
        "address": r.address,
        "node": r.node_id,
        "labels": dict(r.labels),
        "locality": str(r.locality),
        "replica": r.replica,
        "since": r.since,
        "disconnected": r.disconnected,
        "connected": connected,
        "health": r.health.value,
    }


def registrations_json(
    replica: str, registrations: Iterable[Registration], connected: Callable[[str], bool]
) -> dict[str, Any]:
    """The whole view, registrations in key order."""
    ordered = sorted(registrations, key=lambda r: r.key)
    return {
        "replica": replica,
        "registrations": [registration_json(r, connected(r.key)) for r in ordered],
    }


def parse_registrations(data: Any) -> tuple[Registration, ...]:
    """The registrations of a view (``registrations_json``'s shape; a bare list of items
    too). Raises ValueError naming the first item and field that is wrong."""
    items = data.get("registrations") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError('expected {"registrations": [...]} as /debug/registrations gives')
    if len(items) > MAX_REGISTRATIONS:
        raise ValueError(f"more than {MAX_REGISTRATIONS} registrations")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(_registration(item))
        except ValueError as e:
            raise ValueError(f"registrations[{i}]: {e}") from None
    return tuple(out)


def _registration(item: Any) -> Registration:
    if not isinstance(item, dict):
        raise ValueError("must be an object")

    def text(key: str, required: bool = True) -> str:
        value = item.get(key, None if required else "")
        if not isinstance(value, str) or (required and not value):
            raise ValueError(f"{key}: must be a non-empty string")
        return value

    def seconds(key: str) -> float:
        value = item.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: must be a number")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{key}: must be a finite, non-negative number")
        return float(value)

    address = text("address")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"address: {address!r} is not an IP address") from None
    labels = item.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError("labels: must map strings to strings")
    try:
        locality = Locality.parse(text("locality", required=False))
    except ValueError as e:
        raise ValueError(f"locality: {e}") from None
    health = text("health", required=False) or Health.UNKNOWN.value
    if health not in Health.__members__:
        raise ValueError(f"health: must be one of {', '.join(Health.__members__)}")
    return Registration(
        group=ResourceKey("WorkloadGroup", text("namespace"), text("group")),
        address=address,
        node_id=text("node", required=False),
        labels=tuple(sorted(labels.items())),
        locality=locality,
        replica=text("replica", required=False),
        since=seconds("since"),
        disconnected=seconds("disconnected"),
        health=Health(health),
    )
