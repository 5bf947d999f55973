"""A registration as JSON: what a shared store keeps as a key's value (``etcd.EtcdStore``)
and what a registrations snapshot file may hold.

``to_json`` and ``from_json`` round-trip every field of a ``Registration``. ``from_json``
trusts nothing (a value in etcd may have been written by anyone who can write there): a
wrong type, a missing field or an unknown health is a ValueError naming the field, and
labels are bounded.
"""

from __future__ import annotations

import json
import math
from typing import Any

from xdsd.model.registrations import Health, Registration
from xdsd.model.service import Locality, ResourceKey

#: The most labels one registration may carry.
MAX_LABELS = 64
#: The longest string field (a label, an address, a node id).
MAX_TEXT = 1024


def to_json(registration: Registration) -> dict[str, Any]:
    """``registration`` as a JSON object."""
    group = registration.group
    return {
        "group": {"kind": group.kind, "namespace": group.namespace, "name": group.name},
        "address": registration.address,
        "node_id": registration.node_id,
        "labels": dict(registration.labels),
        "locality": str(registration.locality),
        "replica": registration.replica,
        "since": registration.since,
        "disconnected": registration.disconnected,
        "health": registration.health.value,
    }


def encode(registration: Registration) -> bytes:
    """``to_json`` as compact UTF-8 bytes."""
    return json.dumps(to_json(registration), separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes) -> Registration:
    """The registration ``raw`` (``encode``'s bytes) holds. Raises ValueError."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    return from_json(data)


def from_json(data: Any) -> Registration:
    """The registration a ``to_json`` object describes. Raises ValueError naming the
    first field that is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a registration is a JSON object")
    group = data.get("group")
    if not isinstance(group, dict):
        raise ValueError("group: expected an object with kind, namespace and name")
    key = ResourceKey(
        _text(group, "kind", "group.kind"),
        _text(group, "namespace", "group.namespace"),
        _text(group, "name", "group.name"),
    )
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise ValueError(f"labels: expected an object of at most {MAX_LABELS} strings")
    for name, value in labels.items():
        if not (isinstance(value, str) and 0 < len(name) <= MAX_TEXT and len(value) <= MAX_TEXT):
            raise ValueError(f"labels.{name[:40]}: expected a string")
    try:
        locality = Locality.parse(_text(data, "locality", "locality", empty=True))
        health = Health(data.get("health", Health.UNKNOWN.value))
    except ValueError as e:
        raise ValueError(f"locality or health: {e}") from None
    return Registration(
        group=key,
        address=_text(data, "address", "address"),
        node_id=_text(data, "node_id", "node_id"),
        labels=tuple(sorted(labels.items())),
        locality=locality,
        replica=_text(data, "replica", "replica", empty=True),
        since=_time(data, "since"),
        disconnected=_time(data, "disconnected"),
        health=health,
    )


def _text(data: dict[str, Any], key: str, field: str, *, empty: bool = False) -> str:
    value = data.get(key, "" if empty else None)
    if not isinstance(value, str) or (not value and not empty) or len(value) > MAX_TEXT:
        raise ValueError(f"{field}: expected a {'' if empty else 'non-empty '}string")
    return value


def _time(data: dict[str, Any], key: str) -> float:
    value = data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: expected seconds since the epoch")
    return float(value)
