"""The lines of the fields the cross-checks report about, kept on the model objects.

A cross-check (``xdsd.sources.crosscheck``) finds a problem long after the document was
read: a destination naming no service, a subset no DestinationRule defines, a host two
services claim. So that it names the referring field's own line rather than the
document's first, ``with_reference_lines`` records, when a document is read, the line of
each field that refers to another resource (and of each subset, which other checks point
at, and of a Service's ``address`` and a ServiceEntry's ``addresses[N]``, which the
check of pinned addresses points at) in the object's ``lines`` (a ``FieldLines``,
outside equality). Paths are spelled the way the checks spell them
(``http[0].route[1].destination.host``); a path the document does not hold gets no
line, and the check falls back to the document's line.

Pure: reads the parsed document only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from xdsd.located import Document, FieldPath, format_path
from xdsd.model import DestinationRule, MeshObject, Service, VirtualService
from xdsd.model.networking import ServiceEntry, Sidecar

#: The fields of a destination that name something elsewhere.
_DESTINATION_FIELDS: tuple[FieldPath, ...] = (("host",), ("subset",), ("port", "number"))


def with_reference_lines(obj: MeshObject, doc: Document, base: FieldPath) -> MeshObject:
    """``obj``, just parsed from ``doc`` and not yet shared, with the lines of its
    referring fields recorded in its ``lines`` (set in place); ``base`` is where the spec
    starts in ``doc`` (``("spec",)`` for an Istio-shaped document)."""
    if isinstance(obj, VirtualService):
        paths = [(format_path(p), p) for p in _virtual_service_paths(_spec(doc, base))]
    elif isinstance(obj, DestinationRule):
        # the common kind by the thousand: its fields and their whole paths made once
        # per (base, number of subsets)
        table = doc.lines
        first = doc.line
        lines = tuple(
            (field, line)
            for field, whole in _rule_paths(base, len(obj.subsets))
            if (line := table.get(whole) or doc.line_of(whole)) != first
        )
        if lines:
            object.__setattr__(obj, "lines", lines)  # as below
        return obj
    elif isinstance(obj, Service):
        if not obj.hosts and not obj.addresses:
            return obj  # a service's name is its document's first lines: nothing to add
        spec = _spec(doc, base)
        found = (("name",), *_items(spec, "hosts"), *([("address",)] if obj.addresses else []))
        paths = [(format_path(p), p) for p in found]
    elif isinstance(obj, ServiceEntry):
        spec = _spec(doc, base)
        found = (("workloadSelector",), *_items(spec, "hosts"), *_items(spec, "addresses"))
        paths = [(format_path(p), p) for p in found]
    elif isinstance(obj, Sidecar):
        paths = [("workloadSelector", ("workloadSelector",))]
    else:
        return obj
    table = doc.lines
    first = doc.line
    lines = tuple(
        (field, line)
        for field, path in paths
        if (line := table.get((*base, *path)) or doc.line_of((*base, *path))) != first
    )
    if lines:
        # ``obj`` was made from ``doc`` a moment ago and is seen by no one else yet:
        # setting the field in place spares a copy per object (thousands per load).
        object.__setattr__(obj, "lines", lines)
    return obj


@functools.lru_cache(maxsize=64)
def _rule_paths(base: FieldPath, subsets: int) -> tuple[tuple[str, FieldPath], ...]:
    """The fields of a DestinationRule with ``subsets`` subsets that checks point at
    (``host``, ``subsets[N]``), each with its whole path in a document whose spec is at
    ``base``."""
    return (
        ("host", (*base, "host")),
        *((f"subsets[{i}]", (*base, "subsets", i)) for i in range(subsets)),
    )


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
