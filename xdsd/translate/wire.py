"""Protobuf wire encoding for the few messages built tens of thousands of times a load.

How this works: building a message field by field costs a Python call per field and an
object per nested message; a large mesh has hundreds of thousands of endpoints. Their
messages are instead written as protobuf wire bytes here (length-delimited fields, varints:
the whole encoding they need). Field numbers are read from the message descriptors, never
written by hand. Bytes written in field-number order, as the deterministic encoder writes
them, become a ``Resource`` as they are (``Resource.encoded``: ClusterLoadAssignments,
EDS clusters cut from a template with ``top_level_fields``, route configurations spliced
from each route list's encoding); others are parsed by the generated class
(``FromString``, in C) and encoded again by ``Resource.of``. Either way the encoding of a
resource does not depend on how it was built (tests compare each writer's bytes with
``Resource.of`` of the message built field by field).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_WIRE_VARINT = 0
_WIRE_BYTES = 2


def varint(value: int) -> bytes:
    """The base-128 varint encoding of a non-negative integer."""
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:  # two bytes: a message of up to 16 KB
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]
#: ``varint(n)`` for n below 0x80 (one byte), to index where a call per field would cost:
#: ``SMALL_VARINTS[n] if n < 0x80 else varint(n)``.
SMALL_VARINTS: tuple[bytes, ...] = tuple(_SMALL)


def tag(message: Any, field: str) -> tuple[bytes, bytes]:
    """The keys of ``message``'s field (a generated class) as a varint and as a
    length-delimited field: ``(varint_key, bytes_key)``."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    return varint(number << 3 | _WIRE_VARINT), varint(number << 3 | _WIRE_BYTES)


def delimited(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) with key ``key``."""
    n = len(payload)
    return key + (_SMALL[n] if n < 0x80 else varint(n)) + payload


def strings(key: bytes, values: Iterable[str]) -> bytes:
    """A repeated string field with key ``key`` holding ``values`` in order: each
    value's field, joined."""
    out: list[bytes] = []
    small = _SMALL
    for value in values:
        raw = value.encode()
        n = len(raw)
        out += (key, small[n] if n < 0x80 else varint(n), raw)
    return b"".join(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at ``data[at:]`` and the offset after it. Raises ValueError when the
    bytes end inside it."""
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def top_level_fields(data: bytes) -> list[tuple[int, tuple[int, int, int]]]:
    """The fields of an encoded message, in the order written: ``(number, (start,
    body, end))``, where ``data[start:end]`` is the whole field and ``data[body:end]``
    its value (a length-delimited field's payload without key and length). Raises
    ValueError for bytes that are not a well-formed encoding (groups included)."""
    out: list[tuple[int, tuple[int, int, int]]] = []
    at = 0
    while at < len(data):
        start = at
        key, at = _read_varint(data, at)
        wire = key & 7
        if wire == _WIRE_VARINT:
            body = at
            _, at = _read_varint(data, at)
        elif wire == _WIRE_BYTES:
            length, body = _read_varint(data, at)
            at = body + length
        elif wire == 1:  # fixed 64 bits
            body, at = at, at + 8
        elif wire == 5:  # fixed 32 bits
            body, at = at, at + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > len(data):
            raise ValueError("truncated field")
        out.append((key >> 3, (start, body, at)))
    return out
