"""Raw Envoy resources (proto3 JSON with ``@type``): the escape hatch.

A document under the config dir's ``envoy/`` folder is one Envoy resource, a Cluster,
ClusterLoadAssignment, Listener, RouteConfiguration or Secret, written in proto3 JSON with
its ``@type``. It is parsed against the real proto (unknown fields and wrong types are
errors, as Envoy would reject them) and passed through unchanged.
"""

from __future__ import annotations

import re

from google.protobuf import json_format

from xdsd.errors import Problem
from xdsd.located import Document, FieldPath, format_path
from xdsd.model import Origin, RawResource
from xdsd.resources import MESSAGE_CLASSES, TYPE_PREFIX, TypeUrl, encode, ensure_json_types_known

_FIELD_IN_ERROR = re.compile(r'(?:no field named|field) "([^"]+)"')


def parse_raw_resource(doc: Document) -> RawResource | Problem:
    """One raw resource document → RawResource, or the Problem that refuses it."""
    value = doc.value
    if not isinstance(value, dict):
        return Problem(doc.path, doc.line, "", "a raw Envoy resource must be a mapping with @type")
    type_name = value.get("@type")
    if not isinstance(type_name, str):
        return Problem(
            doc.path,
            doc.line,
            "@type",
            "is required: e.g. type.googleapis.com/envoy.config.cluster.v3.Cluster",
        )
    type_url = TypeUrl(type_name if "/" in type_name else TYPE_PREFIX + type_name)
    message_class = MESSAGE_CLASSES.get(type_url)
    if message_class is None:
        allowed = ", ".join(sorted(t.rsplit("/", 1)[-1] for t in MESSAGE_CLASSES))
        return Problem(
            doc.path,
            doc.line_of(("@type",)),
            "@type",
            f"must be one of {allowed} (got {type_name!r})",
        )
    body = {k: v for k, v in value.items() if k != "@type"}
    missing = ensure_json_types_known(body)
    if missing:
        path = _find_value(doc, missing[0])
        text = f"unknown type {missing[0]!r}"
        return Problem(doc.path, doc.line_of(path), format_path(path), text)
    message = message_class()
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as e:
        text = str(e)
        path = _path_in_error(doc, text)
        return Problem(doc.path, doc.line_of(path), format_path(path), text)
    name = (
        getattr(message, "cluster_name", "") if type_url.endswith("ClusterLoadAssignment") else ""
    )
    name = name or getattr(message, "name", "")
    if not name:
        field = "cluster_name" if type_url.endswith("ClusterLoadAssignment") else "name"
        return Problem(doc.path, doc.line, field, "is required: resources are served by name")
    return RawResource(type_url, name, encode(message), Origin(doc.path, doc.line))


_AT_PATH = re.compile(r" at ([\w.\[\]]+?)\.?$")


def _path_in_error(doc: Document, text: str) -> FieldPath:
    """The document path protobuf's ParseError names (``at Cluster.a.b[0].c``), matched
    against the keys as the author spelled them (camelCase or snake_case)."""
    m = _AT_PATH.search(text)
    located: FieldPath = ()
    if m:
        parts = re.findall(r"[A-Za-z_][\w]*|\[\d+\]", m.group(1))[1:]
        for part in parts:
            if part.startswith("["):
                candidate: FieldPath = (*located, int(part[1:-1]))
                if candidate in doc.lines:
                    located = candidate
                continue
            for spelling in (part, _camel(part), _snake(part)):
                if (*located, spelling) in doc.lines:
                    located = (*located, spelling)
                    break
    named = _FIELD_IN_ERROR.search(text)
    if named:
        for spelling in (named.group(1), _snake(named.group(1)), _camel(named.group(1))):
            if (*located, spelling) in doc.lines:
                return (*located, spelling)
        if not located:
            return _find_key(doc, named.group(1))
    return located


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _find_key(doc: Document, key: str) -> FieldPath:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
    for path in sorted(doc.lines, key=lambda p: (doc.lines[p], len(p))):
        if path and path[-1] in (key, snake):
            return path
    return ()


def _find_value(doc: Document, wanted: str) -> FieldPath:
    def walk(value: object, path: FieldPath) -> FieldPath | None:
        if isinstance(value, dict):
            for k, v in value.items():
                if v == wanted:
                    return (*path, k)
                found = walk(v, (*path, k))
                if found is not None:
                    return found
        elif isinstance(value, list):
            for i, v in enumerate(value):
                found = walk(v, (*path, i))
                if found is not None:
                    return found
        return None

    return walk(doc.value, ()) or ()
