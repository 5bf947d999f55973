"""The lines of the fields the cross-checks report about, kept on the model objects.

A cross-check (``xdsd.sources.crosscheck``) finds a problem long after the document was
read: a destination naming no service, a subset no DestinationRule defines, a host two
services claim. So that it names the referring field's own line rather than the
document's first, ``with_reference_lines`` records, when a document is read, the line of
each field that refers to another resource (and of each subset, which other checks point
at) in the object's ``lines`` (a ``FieldLines``, outside equality). Paths are spelled the
way the checks spell them (``http[0].route[1].destination.host``); a path the document
does not hold gets no line, and the check falls back to the document's line.

Pure: reads the parsed document only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from xdsd.located import Document, FieldPath, format_path
from xdsd.model import DestinationRule, MeshObject, Service, VirtualService
from xdsd.model.networking import ServiceEntry, Sidecar

#: The fields of a destination that name something elsewhere.
_DESTINATION_FIELDS: tuple[FieldPath, ...] = (("host",), ("subset",), ("port", "number"))


def with_reference_lines(obj: MeshObject, doc: Document, base: FieldPath) -> MeshObject:
    """``obj`` with the lines of its referring fields recorded (``obj`` itself for a kind
    without any, or when it has none); ``base`` is where the spec starts in ``doc``
    (``("spec",)`` for an Istio-shaped document)."""
    if isinstance(obj, VirtualService):
        paths = list(_virtual_service_paths(_spec(doc, base)))
    elif isinstance(obj, DestinationRule):
        paths = [("host",), *_items(_spec(doc, base), "subsets")]
    elif isinstance(obj, Service):
        if not obj.hosts:
            return obj  # a service's name is its document's first lines: nothing to add
        paths = [("name",), *_items(_spec(doc, base), "hosts")]
    elif isinstance(obj, ServiceEntry):
        paths = [("workloadSelector",), *_items(_spec(doc, base), "hosts")]
    elif isinstance(obj, Sidecar):
        paths = [("workloadSelector",)]
    else:
        return obj
    lines = tuple(
        (format_path(path), line)
        for path in paths
        if (line := doc.line_of((*base, *path))) and line != doc.line
    )
    if not lines:
        return obj
    return dataclasses.replace(obj, lines=lines)


def _spec(doc: Document, base: FieldPath) -> Any:
    value = doc.value
    for key in base:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def _items(data: Any, key: str) -> Iterator[FieldPath]:
    """``(key, 0)``, ``(key, 1)``... for the items of the list ``data[key]``."""
    items = data.get(key) if isinstance(data, dict) else None
    if isinstance(items, list):
        for i in range(len(items)):
            yield (key, i)


def _virtual_service_paths(spec: dict[str, Any]) -> Iterator[FieldPath]:
    yield from _items(spec, "hosts")
    yield from _items(spec, "gateways")
    for kind in ("http", "tcp", "tls"):
        for rule in _items(spec, kind):
            data = spec[kind][rule[1]]
            for route in _items(data, "route"):
                yield from _destination((*rule, *route, "destination"))
            if kind != "http" or not isinstance(data, dict):
                continue
            if "mirror" in data:
                yield from _destination((*rule, "mirror"))
            for mirror in _items(data, "mirrors"):
                yield from _destination((*rule, *mirror, "destination"))


def _destination(at: FieldPath) -> Iterator[FieldPath]:
    for field in _DESTINATION_FIELDS:
        yield (*at, *field)
