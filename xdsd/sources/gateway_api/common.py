"""What the Gateway API parsers share: names, hostnames, references, bounded lists,
durations, header matches and modifiers, each checked as the API's own validation
(OpenAPI patterns, limits and CEL rules of ``gateway.networking.k8s.io``) checks it,
each problem at its field through ``Fields``. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from xdsd.located import Fields
from xdsd.model.gateway_api import (
    FILE_REF_GROUP,
    FILE_REF_KIND,
    GATEWAY_GROUP,
    HeaderModifier,
    ObjectRef,
    StringMatch,
)
from xdsd.model.service import FieldLines
from xdsd.sources.re2_syntax import re2_problem

T = TypeVar("T")

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
#: An RFC 1123 subdomain (object names, groups, section names, namespaces are labels).
SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
DNS_LABEL = re.compile(rf"^{_LABEL}$")
#: A hostname as the API takes it: a subdomain, optionally ``*.`` first; no IP.
HOSTNAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
#: The API's Duration: 1 to 4 of NUMBER(h|m|s|ms), each number at most 5 digits.
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_IPV4ISH = re.compile(r"^[0-9.]+$")
#: A Kubernetes label's name part and value: at most 63 characters, alphanumeric at
#: both ends, ``-``, ``_``, ``.`` inside (a value may also be empty).
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

#: A gRPC method match's missing service or method, in the path regex it becomes.
GRPC_SEGMENT = "[^/]+"

#: The API's limits (its ``MaxItems``), by what they bound.
MAX_PARENT_REFS = 32
MAX_HOSTNAMES = 16
#: A TLSRoute's ``hostnames`` (SNI names): its own, larger bound.
MAX_TLS_HOSTNAMES = 1024
MAX_RULES = 16
MAX_MATCHES = 64
#: The API's CEL bound on the matches of all rules of one HTTPRoute together.
MAX_TOTAL_MATCHES = 128
MAX_FILTERS = 16
MAX_BACKEND_REFS = 16
MAX_HEADER_MATCHES = 16
MAX_LISTENERS = 64
MAX_ADDRESSES = 16
MAX_CERTIFICATE_REFS = 64
MAX_WEIGHT = 1_000_000
MAX_NAME = 253
MAX_VALUE = 4096
MAX_PATH = 1024
#: A query parameter match's value (the API's bound, shorter than a header's).
MAX_QUERY_VALUE = 1024
#: The most labels one object (a Namespace) or one selector's ``matchLabels`` may
#: hold, and values one ``matchExpressions`` entry: xdsd's bounds (Kubernetes bounds
#: only the whole object's size).
MAX_LABELS = 64
#: The most ``matchExpressions`` entries of one label selector (xdsd's bound).
MAX_EXPRESSIONS = 16


def label_key_problem(key: str) -> str:
    """What is wrong with ``key`` as a Kubernetes label name (``PREFIX/NAME``, the
    prefix a DNS subdomain of at most 253 characters, the name as ``_LABEL_NAME``);
    "" when it is right."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > MAX_NAME or not SUBDOMAIN.match(prefix)):
        return "its prefix must be a lower-case DNS name of at most 253 characters"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            "its name must be 1 to 63 letters, digits, '-', '_', '.', "
            "beginning and ending with a letter or digit"
        )
    return ""


def label_value_problem(value: str) -> str:
    """What is wrong with ``value`` as a Kubernetes label value ("" when right)."""
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return (
            "must be at most 63 letters, digits, '-', '_', '.', "
            "beginning and ending with a letter or digit"
        )
    return ""


def label_map(f: Fields, key: str) -> tuple[tuple[str, str], ...]:
    """A mapping of Kubernetes label names to values (``metadata.labels``, a selector's
    ``matchLabels``), sorted: at most ``MAX_LABELS``, each name and value checked as
    Kubernetes checks them, a wrong one an error at its own entry (and left out)."""
    raw = f.data.get(key)
    if isinstance(raw, dict) and len(raw) > MAX_LABELS:
        f.read.add(key)
        f.error(key, f"holds {len(raw)} labels: xdsd reads at most {MAX_LABELS}")
        return ()
    out: list[tuple[str, str]] = []
    for name, value in f.labels(key):
        # a name too long to be one is not repeated in the field path: at the mapping
        where = (*f.path, key, name) if len(name) <= MAX_NAME + 64 else (*f.path, key)
        problem = label_key_problem(name)
        if problem:
            f.report.add(where, f"{name!r:.80} is not a label name: {problem}")
            continue
        problem = label_value_problem(value)
        if problem:
            f.report.add(where, f"label value {value!r:.80} {problem}")
            continue
        out.append((name, value))
    return tuple(out)


def bounded_list(
    f: Fields,
    key: str,
    parse: Callable[[Fields], T | None],
    maximum: int,
    *,
    minimum: int = 0,
    required: bool = False,
) -> tuple[T, ...]:
    """The mappings of list ``key`` parsed by ``parse``; more than ``maximum`` items is
    an error at the list (and none is parsed: bounded work), fewer than ``minimum`` too."""
    raw = f.data.get(key)
    if isinstance(raw, list) and len(raw) > maximum:
        f.read.add(key)
        f.error(key, f"holds {len(raw)} items: the Gateway API allows at most {maximum}")
        return ()
    if required and raw is None:
        f.read.add(key)
        f.error(key, "is required")
        return ()
    if isinstance(raw, list) and len(raw) < minimum:
        f.error(key, f"must hold at least {minimum} item{'s' if minimum > 1 else ''}")
    return f.parse_list(key, parse)


def bounded_strings(f: Fields, key: str, maximum: int) -> tuple[str, ...]:
    """A list of non-empty strings of at most ``maximum`` items."""
    raw = f.data.get(key)
    if isinstance(raw, list) and len(raw) > maximum:
        f.read.add(key)
        f.error(key, f"holds {len(raw)} items: the Gateway API allows at most {maximum}")
        return ()
    return f.strings(key)


def name_field(
    f: Fields, key: str, *, required: bool = False, pattern: re.Pattern[str] = SUBDOMAIN
) -> str:
    """A name-like string (object name, section name, group...) matching ``pattern``,
    at most 253 characters ("" when absent or wrong)."""
    value = f.string(key, required=required)
    if not value:
        return ""
    if len(value) > MAX_NAME or not pattern.match(value):
        f.error(key, f"must be a lower-case DNS name (letters, digits, '-', '.'): got {value!r}")
        return ""
    return value


def namespace_field(f: Fields, key: str = "namespace", *, required: bool = False) -> str:
    """A namespace: a DNS label of at most 63 characters."""
    value = f.string(key, required=required)
    if value and (len(value) > 63 or not DNS_LABEL.match(value)):
        f.error(key, f"must be a namespace name (a DNS label): got {value!r}")
        return ""
    return value


def group_field(f: Fields, key: str = "group", *, default: str = "", required: bool = False) -> str:
    """An API group ("" is the core group; ``default`` when absent)."""
    if required and key not in f.data:
        f.error(key, 'is required ("" for the core group)')
    value = f.string(key, default=default)
    if value and (len(value) > MAX_NAME or not SUBDOMAIN.match(value)):
        f.error(key, f'must be an API group (a DNS name, or "" for the core group): {value!r}')
        return default
    return value


def kind_field(f: Fields, key: str = "kind", *, default: str = "", required: bool = False) -> str:
    """A kind name (``Service``, ``Gateway``...)."""
    value = f.string(key, default=default, required=required)
    if value and (len(value) > 63 or not KIND.match(value)):
        f.error(key, f"must be a kind name (letters, digits, '-'): got {value!r}")
        return default
    return value


def hostname(f: Fields, key: str | int, value: object, *, wildcard: bool = True) -> str:
    """``value`` checked as a Gateway API hostname at ``key`` of ``f`` (no IP address, no
    port, lower case; ``*.`` first only when ``wildcard``); "" when wrong."""
    if not isinstance(value, str) or not value:
        f.error(key, f"must be a non-empty hostname (got {value!r:.60})")
        return ""
    if len(value) > MAX_NAME or not HOSTNAME.match(value):
        f.error(key, f"must be a hostname (lower-case DNS name, '*.' first at most): {value!r:.80}")
        return ""
    if _IPV4ISH.match(value):
        f.error(key, f"must be a hostname, not an IP address: {value!r}")
        return ""
    if value.startswith("*.") and not wildcard:
        f.error(key, f"must not be a wildcard here: {value!r}")
        return ""
    return value


def hostnames(f: Fields, key: str = "hostnames", maximum: int = MAX_HOSTNAMES) -> tuple[str, ...]:
    """A route's ``hostnames`` (at most ``maximum``: 16, a TLSRoute's 1024)."""
    raw = f.data.get(key)
    if isinstance(raw, list) and len(raw) > maximum:
        f.read.add(key)
        f.error(key, f"holds {len(raw)} items: the Gateway API allows at most {maximum}")
        return ()
    out: list[str] = []
    holder = Fields(f.report, (*f.path, key), {})
    for i, value in f.items(key):
        host = hostname(holder, i, value)
        if host:
            out.append(host)
    return tuple(out)


def parent_ref(f: Fields) -> ObjectRef | None:
    """A ``parentRefs`` item (ParentReference): group defaults to the Gateway API's,
    kind to ``Gateway``."""
    group = group_field(f, default=GATEWAY_GROUP)
    kind = kind_field(f, default="Gateway")
    namespace = namespace_field(f)
    name = name_field(f, "name", required=True)
    section = name_field(f, "sectionName")
    port = f.port("port")
    f.finish()
    if not name:
        return None
    return ObjectRef(name, kind, group, namespace, section, port)


def parent_refs(f: Fields) -> tuple[ObjectRef, ...]:
    """A route's ``parentRefs`` (at most 32; the same parent twice is an error, as the
    API's CEL rule says)."""
    refs = bounded_list(f, "parentRefs", parent_ref, MAX_PARENT_REFS)
    seen: set[ObjectRef] = set()
    for i, ref in enumerate(refs):
        if ref in seen:
            f.report.add((*f.path, "parentRefs", i), f"repeats parent {ref.kind} {ref.name}")
        seen.add(ref)
    return refs


def backend_object_ref(f: Fields, *, port_required: bool = True) -> ObjectRef | None:
    """A BackendObjectReference: group "" and kind ``Service`` by default; a Service
    needs a port (the API's CEL rule)."""
    group = group_field(f)
    kind = kind_field(f, default="Service")
    namespace = namespace_field(f)
    name = name_field(f, "name", required=True)
    port = f.port("port")
    if port_required and kind == "Service" and group == "" and not f.has("port"):
        f.error("port", "is required when the backend is a Service")
    return ObjectRef(name, kind, group, namespace, "", port) if name else None


def secret_object_ref(f: Fields) -> ObjectRef | None:
    """A SecretObjectReference: group "" and kind ``Secret`` by default."""
    group = group_field(f)
    kind = kind_field(f, default="Secret")
    namespace = namespace_field(f)
    name = f.string("name", required=True)
    f.finish()
    if not name or len(name) > MAX_NAME:
        if name:
            f.error("name", "must be at most 253 characters")
        return None
    return ObjectRef(name, kind, group, namespace)


def duration(f: Fields, key: str) -> timedelta | None:
    """A Gateway API Duration (``10s``, ``1h30m``, ``500ms``: 1 to 4 parts of at most 5
    digits each, units h, m, s, ms)."""
    value = f.string(key)
    if not value and not f.has(key):
        return None
    if not _DURATION.match(value):
        f.error(key, f'must be a duration like "10s", "1m30s" or "500ms" (got {value!r:.60})')
        return None
    seconds = sum(int(n) * _UNIT[u] for n, u in _DURATION_PART.findall(value))
    return timedelta(seconds=seconds)


def header_name(f: Fields, key: str | int, value: object) -> str:
    """``value`` checked as an HTTP header name (RFC 7230 token, at most 256)."""
    if not isinstance(value, str) or not value:
        f.error(key, f"must be a header name (got {value!r:.60})")
        return ""
    if len(value) > 256 or not HEADER_NAME.match(value):
        f.error(key, f"must be an HTTP header name (a token of at most 256): {value!r:.80}")
        return ""
    return value


def string_match(
    f: Fields, types: tuple[str, ...], *, name_max: int = 256, value_max: int = MAX_VALUE
) -> StringMatch | None:
    """A header or query parameter match: ``type`` one of ``types`` (the first is the
    default), ``name``, ``value`` (at most ``value_max`` characters: 4096 for a header,
    1024 for a query parameter; a regular expression must be one Envoy takes)."""
    kind = f.choice("type", types, default=types[0]) or types[0]
    name = f.string("name", required=True)
    if name and (len(name) > name_max or not HEADER_NAME.match(name)):
        f.error("name", f"must be a token of at most {name_max} characters: {name!r:.80}")
    value = f.string("value", required=True)
    if len(value) > value_max:
        f.error("value", f"must be at most {value_max} characters")
    elif kind == "RegularExpression":
        check_regex(f, "value", value)
    f.finish()
    return StringMatch(kind, value, name) if name else None


def check_regex(f: Fields, key: str | None, pattern: str) -> bool:
    """An error at ``key`` (the mapping itself for None) when Envoy would refuse
    ``pattern``: not RE2 syntax, or an RE2 program over Envoy's size limit
    (``re2_syntax.re2_problem``); True when it is accepted."""
    problem = re2_problem(pattern)
    if problem:
        f.error(key, problem)
    return not problem


def unique_names(f: Fields, key: str, names: list[tuple[int, str]], what: str) -> None:
    """An error at each later item of list ``key`` whose ``what`` repeats one before it
    (case-insensitively: header names)."""
    seen: set[str] = set()
    for i, name in names:
        folded = name.lower()
        if folded in seen:
            f.report.add((*f.path, key, i), f"repeats {what} {name!r}")
        seen.add(folded)


def header_modifier(f: Fields) -> HeaderModifier:
    """A RequestHeaderModifier / ResponseHeaderModifier: ``set`` and ``add`` (at most
    16 name/value pairs each), ``remove`` (at most 16 names); a name repeated within a
    list is an error."""
    pairs: dict[str, tuple[tuple[str, str], ...]] = {}
    for key in ("set", "add"):
        raw = f.data.get(key)
        if isinstance(raw, list) and len(raw) > MAX_HEADER_MATCHES:
            f.read.add(key)
            f.error(key, f"holds {len(raw)} items: the Gateway API allows at most 16")
            pairs[key] = ()
            continue
        found: list[tuple[int, tuple[str, str]]] = []
        for item in f.objects(key):
            name = header_name(item, "name", item.data.get("name"))
            item.read.add("name")
            value = item.string("value", required=True)
            if len(value) > MAX_VALUE:
                item.error("value", f"must be at most {MAX_VALUE} characters")
            item.finish()
            index = item.path[-1]
            if name and isinstance(index, int):
                found.append((index, (name, value)))
        unique_names(f, key, [(i, p[0]) for i, p in found], "header")
        pairs[key] = tuple(p for _, p in found)
    remove: list[str] = []
    raw = f.data.get("remove")
    if isinstance(raw, list) and len(raw) > MAX_HEADER_MATCHES:
        f.read.add("remove")
        f.error("remove", f"holds {len(raw)} items: the Gateway API allows at most 16")
    else:
        holder = Fields(f.report, (*f.path, "remove"), {})
        indexed: list[tuple[int, str]] = []
        for i, value in f.items("remove"):
            name = header_name(holder, i, value)
            if name:
                remove.append(name)
                indexed.append((i, name))
        unique_names(f, "remove", indexed, "header")
    f.finish()
    return HeaderModifier(pairs["set"], pairs["add"], tuple(remove))


def is_file_ref(f: Fields) -> bool:
    """True when the reference ``f`` names a file (group ``xdsd.dev`` or kind ``File``)."""
    return f.data.get("kind") == FILE_REF_KIND or f.data.get("group") == FILE_REF_GROUP


def file_ref(f: Fields) -> ObjectRef | None:
    """A file by path, ``{group: xdsd.dev, kind: File, name: PATH}`` (the path kept as
    written; the conversion resolves it against the config directory); None, with the
    error at its field, when it is not one."""
    g = f.string("group")
    k = f.string("kind")
    path = f.string("name", required=True)
    f.finish()
    if g != FILE_REF_GROUP or k != FILE_REF_KIND:
        f.error(None, f"a file reference is group {FILE_REF_GROUP}, kind {FILE_REF_KIND}")
        return None
    if "\x00" in path or len(path) > 4096:
        f.error("name", "must be a file path")
        return None
    return ObjectRef(path, FILE_REF_KIND, FILE_REF_GROUP) if path else None


def item_lines(
    spec: Fields, lists: Sequence[tuple[str, int, tuple[tuple[str, int], ...]]]
) -> FieldLines:
    """The lines of the items of ``spec``'s lists, as conditions' scopes and warnings
    name them: for each ``(key, limit, nested)``, ``key[N]`` for the first ``limit``
    items of the list ``key``, and for each ``(inner, inner_limit)`` of ``nested``,
    ``key[N].inner[M]`` (``parentRefs[0]``, ``rules[1].backendRefs[0]``). Bounded by the
    limits (the parsers refuse longer lists); a list absent or malformed gives none."""
    doc, base = spec.report.doc, spec.report.base
    out: list[tuple[str, int]] = []
    for key, limit, nested in lists:
        items = spec.data.get(key)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items[:limit]):
            out.append((f"{key}[{i}]", doc.line_of((*base, *spec.path, key, i))))
            for inner, inner_limit in nested:
                found = item.get(inner) if isinstance(item, dict) else None
                for j in range(min(len(found), inner_limit) if isinstance(found, list) else 0):
                    path = (*base, *spec.path, key, i, inner, j)
                    out.append((f"{key}[{i}].{inner}[{j}]", doc.line_of(path)))
    return tuple(out)


def field_line(lines: FieldLines, field: str, default: int) -> int:
    """The line of ``field`` (``spec.`` prefix or not) in ``lines``, else of its nearest
    recorded ancestor (``listeners[2]`` for ``listeners[2].tls.certificateRefs[0]``),
    else ``default``."""
    path = field.removeprefix("spec.")
    while path:
        for key, line in lines:
            if key == path or key == f"spec.{path}":
                return line
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return default
