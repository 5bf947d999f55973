"""Located input: values read from a file with the line of each key, and typed access to
them that collects problems naming file, line and key instead of raising.

Config documents (``xdsd.sources``) and the settings file (``xdsd.settings``) are read
the same way: a ``Document`` holds a parsed value and a table of the line of each field
path (``index_toml`` makes it for TOML, the one TOML line scanner; ``toml_error`` reads
the line out of a TOML syntax error); a ``Fields`` wraps one mapping of it. Each
accessor (``string``, ``integer``, ``obj``, ``items``, ``value``, ``choice`` ...) checks
one field and records a ``Problem`` naming file, line and field path when it is wrong,
returning a safe default so that one pass reports every problem of a document.
``finish()`` reports every field that was not read: as unsupported when xdsd knows the
name (it belongs to Istio's API but is not implemented), else as unknown. Pure: no I/O.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, TypeVar

from xdsd.errors import Problem, Severity

#: Where a value is in a document: mapping keys and list indices from its root.
FieldPath = tuple[str | int, ...]


class _Null:
    """The type of ``NULL``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "null"


#: A null that is a value, not an absence: inputs where an explicit null must be refused
#: (an xDS node's metadata) hold it where ``None`` would read as "not given". Every
#: accessor refuses it as a value of the wrong type.
NULL = _Null()


@dataclass(slots=True)
class Document:
    """One resource document of a file: its value, the line it starts on, field lines.

    ``index`` is the line table or a function that makes it: TOML and JSON tables are
    made only when a line is asked for (a problem is reported), which saves a second
    pass over every valid file.
    """

    path: str
    line: int
    value: Any
    index: dict[FieldPath, int] | Callable[[], dict[FieldPath, int]] = field(default_factory=dict)

    @property
    def lines(self) -> dict[FieldPath, int]:
        """The line of each field path known."""
        if callable(self.index):
            self.index = self.index()
        return self.index

    def line_of(self, path: FieldPath) -> int:
        """The line of ``path`` or of its nearest ancestor known; the document's line last."""
        for cut in range(len(path), 0, -1):
            found = self.lines.get(path[:cut])
            if found:
                return found
        return self.line


def format_path(path: FieldPath) -> str:
    """``("http", 0, "route", 1, "weight")`` → ``http[0].route[1].weight``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# -- TOML lines ----------------------------------------------------------------------

_TOML_ERR_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)")
_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _toml_key_parts(raw: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", raw)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def index_toml(text: str) -> dict[FieldPath, int]:
    """The 1-based line of each table header and ``key =`` line of TOML ``text``, by
    field path (``[[array]]`` tables by their index). Keys inside inline tables and
    multi-line strings are not listed: a path's line is then its nearest ancestor's."""
    lines: dict[FieldPath, int] = {}
    counters: dict[tuple[str, ...], int] = {}
    prefix: FieldPath = ()
    in_multiline = False
    for n, raw in enumerate(text.splitlines(), start=1):
        if raw.count('"""') % 2 == 1 or raw.count("'''") % 2 == 1:
            in_multiline = not in_multiline
            if not in_multiline:
                continue
        if in_multiline:
            continue
        header = _TOML_HEADER.match(raw)
        if header:
            keys = tuple(_toml_key_parts(header.group(2)))
            if header.group(1) == "[[":
                index = counters.get(keys, -1) + 1
                counters[keys] = index
                # nested arrays of tables under an array element are rare; keep it simple
                prefix = (*keys, index)
            else:
                prefix = _in_arrays(keys, counters)
            lines.setdefault(prefix, n)
            continue
        key = _TOML_KEY.match(raw)
        if key:
            lines.setdefault((*prefix, *_toml_key_parts(key.group(1))), n)
    return lines


def _in_arrays(keys: tuple[str, ...], counters: dict[tuple[str, ...], int]) -> FieldPath:
    """The path of the table header ``[keys]``: a sub-table of an array of tables
    (``[a.b]`` after ``[[a]]``) belongs to its last element (``a[N].b``)."""
    for cut in range(len(keys) - 1, 0, -1):
        index = counters.get(keys[:cut])
        if index is not None:
            return (*keys[:cut], index, *keys[cut:])
    return keys


def toml_error(error: Exception) -> tuple[int | None, str]:
    """The line a ``tomllib.TOMLDecodeError`` names (None when it names none) and its
    message without the location."""
    text = str(error)
    found = _TOML_ERR_LINE.search(text)
    if found is None:
        return None, text.strip()
    return int(found.group(1)), _TOML_ERR_LINE.sub("", text).strip()


# -- typed access ----------------------------------------------------------------------

E = TypeVar("E", bound=Enum)
T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Report:
    """The problems found while reading one document (and the document itself)."""

    def __init__(self, doc: Document, base: FieldPath) -> None:
        self.doc = doc
        self.base = base
        self.problems: list[Problem] = []

    def add(self, path: FieldPath, message: str, severity: Severity = Severity.ERROR) -> None:
        """Record a problem at a field path (relative to the document's spec)."""
        line = self.doc.line_of((*self.base, *path))
        self.problems.append(Problem(self.doc.path, line, format_path(path), message, severity))

    @property
    def failed(self) -> bool:
        """True once any error (not warning) was recorded."""
        return any(p.severity is Severity.ERROR for p in self.problems)


def _type_name(value: Any) -> str:
    if value is None or value is NULL:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _described(value: Any) -> str:
    """``number 3``, ``string 'x'``; a null as just ``null``."""
    if value is None or value is NULL:
        return "null"
    return f"{_type_name(value)} {_shown(value)}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """One mapping of a document at ``path``; see the module docstring."""

    def __init__(self, report: Report, path: FieldPath, data: dict[str, Any]) -> None:
        self.report = report
        self.path = path
        self.data = data
        self.read: set[str] = set()

    # -- plumbing --------------------------------------------------------------------

    def _get(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        """True when the field is present (and not null)."""
        return self.data.get(key) is not None

    def error(self, key: str | int | None, message: str) -> None:
        """Record an error at this mapping's ``key`` (or at the mapping itself)."""
        path = self.path if key is None else (*self.path, key)
        self.report.add(path, message)

    def warn(self, key: str | int | None, message: str) -> None:
        """Record a warning at this mapping's ``key`` (or at the mapping itself)."""
        path = self.path if key is None else (*self.path, key)
        self.report.add(path, message, Severity.WARNING)

    def unread(self) -> list[str]:
        """The keys of this mapping no accessor has read (yet), in the mapping's order:
        for a reader that reports unknown keys its own way rather than by ``finish``."""
        return [key for key in self.data if key not in self.read]

    def _wrong(self, key: str, expected: str, value: Any) -> None:
        self.error(key, f"must be {expected} (got {_described(value)})")

    # -- scalars ---------------------------------------------------------------------

    def string(self, key: str, *, required: bool = False, default: str = "") -> str:
        """A string field. Numbers are not silently turned into strings."""
        value = self._get(key)
        if value is None:
            if required:
                self.error(key, "is required")
            return default
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
            return default
        if required and not value:
            self.error(key, "must not be empty")
        text: str = value
        return text

    def integer(
        self,
        key: str,
        *,
        default: int = 0,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """An integer field within [minimum, maximum]. Booleans and fractions are errors."""
        value = self._get(key)
        if value is None:
            if required:
                self.error(key, "is required")
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(key, "an integer", value)
            return default
        if minimum is not None and value < minimum:
            if minimum == 0:
                self.error(key, f"must not be negative (got {value})")
            else:
                self.error(key, f"must be at least {minimum} (got {value})")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"must be at most {maximum} (got {value})")
            return default
        return value

    def boolean(self, key: str, *, default: bool = False) -> bool:
        """A boolean field (``true``/``false``; strings and numbers are refused)."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._wrong(key, "true or false", value)
            return default
        return value

    def value(self, key: str, ok: Callable[[Any], bool], what: str, default: Any = None) -> Any:
        """A field of any type that ``ok`` accepts; else the error ``must be {what}`` is
        recorded. ``default`` when absent or refused."""
        value = self._get(key)
        if value is None:
            return default
        if not ok(value):
            self._wrong(key, what, value)
            return default
        return value

    def choice(
        self,
        key: str,
        choices: Sequence[str],
        *,
        default: str | None = None,
        fold: Callable[[str], str] | None = None,
    ) -> str | None:
        """A string field that is one of ``choices`` once ``fold`` (e.g. ``str.upper``)
        has been applied to it; the folded string is returned. ``default`` when absent or
        refused (anything else, including a value of another type, is an error)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, str):
            text = fold(value) if fold is not None else value
            if text in choices:
                return text
        self.error(key, f"must be one of {', '.join(choices)} (got {_shown(value)})")
        return default

    def port(self, key: str, *, required: bool = False) -> int:
        """A TCP port number 1-65535."""
        return self.integer(key, required=required, minimum=1, maximum=65535)

    def enum(self, key: str, kind: type[E], default: E) -> E:
        """An enum field, given by the member's value, case-insensitively."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, str):
            found: E | None = _members(kind).get(value.upper())
            if found is not None:
                return found
        allowed = ", ".join(str(m.value) for m in kind)
        self.error(key, f"must be one of {allowed} (got {_shown(value)})")
        return default

    def duration(self, key: str) -> timedelta | None:
        """A duration: ``"1.5s"``, ``"250ms"``, ``"1m30s"``, ``"1h"`` (protobuf JSON or Go
        style); must not be negative."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, str):
            text = value.strip()
            pos, seconds = 0, 0.0
            for m in _DURATION.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos == len(text) and text:
                return timedelta(seconds=seconds)
        if isinstance(value, str) and value.strip().startswith("-"):
            self.error(key, f"must not be negative (got {value!r})")
        else:
            self.error(key, f'must be a duration like "1.5s" or "250ms" (got {_shown(value)})')
        return None

    # -- structure -------------------------------------------------------------------

    def obj(self, key: str, *, required: bool = False) -> Fields | None:
        """A nested mapping, or None when absent (or wrong, which is recorded)."""
        value = self._get(key)
        if value is None:
            if required:
                self.error(key, "is required")
            return None
        if not isinstance(value, dict):
            self._wrong(key, "a mapping", value)
            return None
        return Fields(self.report, (*self.path, key), value)

    def items(self, key: str, *, required: bool = False) -> Iterator[tuple[int, Any]]:
        """(index, value) of a list field; a missing field is an empty list."""
        value = self._get(key)
        if value is None:
            if required:
                self.error(key, "is required")
            return
        if not isinstance(value, list):
            self._wrong(key, "a list", value)
            return
        yield from enumerate(value)

    def objects(self, key: str, *, required: bool = False) -> Iterator[Fields]:
        """The mappings of a list-of-mappings field."""
        for i, item in self.items(key, required=required):
            if not isinstance(item, dict):
                self.report.add(
                    (*self.path, key, i),
                    f"must be a mapping (got {_type_name(item)} {_shown(item)})",
                )
                continue
            yield Fields(self.report, (*self.path, key, i), item)

    def parse_list(self, key: str, parse: Callable[[Fields], T | None]) -> tuple[T, ...]:
        """Parse each mapping of a list field with ``parse`` (None results are dropped)."""
        out = []
        for item in self.objects(key):
            parsed = parse(item)
            if parsed is not None:
                out.append(parsed)
        return tuple(out)

    def strings(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        """A list of non-empty strings."""
        out: list[str] = []
        for i, item in self.items(key, required=required):
            if not isinstance(item, str) or not item:
                self.report.add(
                    (*self.path, key, i), f"must be a non-empty string (got {_shown(item)})"
                )
                continue
            out.append(item)
        return tuple(out)

    def labels(self, key: str) -> tuple[tuple[str, str], ...]:
        """A mapping of label names to string values, sorted by name. Numbers and booleans
        are refused (YAML turns ``version: 1`` into a number; quote it)."""
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, dict):
            self._wrong(key, "a mapping of label names to strings", value)
            return ()
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(v, str):
                self.report.add(
                    (*self.path, key, str(k)),
                    f"label values must be strings (got {_type_name(v)} {_shown(v)}; quote it)",
                )
                continue
            out[str(k)] = v
        return tuple(sorted(out.items()))

    def finish(self, unsupported: Collection[str] = (), note: str = "") -> None:
        """Report every field not read: unsupported (named in ``unsupported``) or unknown."""
        for key in self.data:
            if key in self.read:
                continue
            if key in unsupported:
                suffix = f" ({note})" if note else ""
                self.error(key, f"is not supported by xdsd yet{suffix}; remove it")
            else:
                known = sorted(self.read | set(unsupported))
                hint = closest(str(key), known)
                did = f"; did you mean {hint!r}?" if hint else ""
                self.error(key, f"unknown field{did}")


def closest(word: str, choices: Collection[str]) -> str:
    """The one of ``choices`` nearest to ``word`` when it is near enough to be what was
    meant (a misspelling), else ""."""
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return found[0] if found else ""


@functools.cache
def _members(kind: type[E]) -> dict[str, E]:
    """An enum's members by upper-cased value (enums are fixed: computed once)."""
    return {str(m.value).upper(): m for m in kind}


# -- values ------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def is_ip(address: str) -> bool:
    """True for an IPv4 or IPv6 literal (dotted IPv4 by a regular expression, which is
    what nearly every endpoint is, cheaper than ``ipaddress``)."""
    if _IPV4.fullmatch(address):
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def split_host_port(text: str) -> tuple[str, int] | None:
    """``(IP, PORT)`` of ``IP:PORT`` or ``[IPv6]:PORT`` with a port in 1..65535; None when
    ``text`` is not one (a host name, a bare IP, an IPv6 address without brackets)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return None
    elif ":" in host:
        return None
    return (host, int(port)) if is_ip(host) else None
