"""The bounds every config file is parsed under, and the cheap scans that enforce them.

How this works: the parsers (``toml_rs``, ``json``, libyaml, ``tomllib``) are fast and
exact, but not all of them survive hostile input: ``toml_rs`` overflows its stack from
about 7,000 nested arrays (the process dies), ``json`` and every recursive walk of ours
raise RecursionError from about a thousand levels, Python refuses to convert an integer
of more than 4,300 digits (ValueError in the middle of a parse), and a few hundred bytes
of YAML aliases expand to a billion nodes. So before a parser sees a file:

- its size is checked from ``fstat``, before it is read (``max_file_bytes``), and the
  directory's total as files are read (``max_config_bytes``);
- its nesting depth is bounded by one linear scan of its bytes (``nesting_problem``):
  quoted strings (and TOML comments) are cut out with one regular expression, the
  brackets left are counted; TOML's dotted keys and table headers nest too, so their
  dots count as levels. The scan never reports less than the parser will build (it may
  report more for an unusual file, never less), and a file with fewer brackets and dots
  than the limit is not scanned at all;
- no run of digits may be longer than ``max_integer_digits`` (one regular expression
  search; a digit run inside a string counts too, which no configuration needs).

YAML's nesting is bounded by libyaml itself (1,000 levels, a syntax error); its depth
and its alias expansion are measured on the composed node graph, before any value is
constructed (``documents._yaml_shape``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from itertools import accumulate

from xdsd.errors import Problem


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """What one load may read. Each bound is a settings key of the same name
    (``docs/operations.md``, "Limits"); exceeding any is an error naming the file (and
    the line, where there is one), and the whole load is refused.

    ``max_file_bytes``: one config file's size (checked by ``fstat`` before reading).
    ``max_config_bytes``: all config files of the directory together.
    ``max_documents_per_file``: documents in one file (YAML ``---`` documents, the
    items of a JSON list), empty ones included.
    ``max_nesting_depth``: levels of mappings and lists in one document.
    ``max_integer_digits``: the longest run of digits anywhere in a file.
    ``max_yaml_alias_nodes``: nodes a file's YAML aliases may expand to (each use of an
    alias counts every node under its anchor again).

    One policy rides along, a settings key of the same name too:
    ``refuse_unknown_kinds``: a document of a kind xdsd does not implement (outside its
    own and Istio's security API groups, which are always errors) is an error instead of
    a warning.
    """

    max_file_bytes: int = 16 << 20
    max_config_bytes: int = 256 << 20
    max_documents_per_file: int = 20_000
    max_nesting_depth: int = 100
    max_integer_digits: int = 1_000
    max_yaml_alias_nodes: int = 100_000
    refuse_unknown_kinds: bool = False

    @classmethod
    def of(cls, settings: object) -> ParseLimits:
        """The limits ``settings`` (``xdsd.settings.Settings``: a key per field, of the
        same name) give."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_LIMITS = ParseLimits()

# Quoted strings of each format (cut out before brackets are counted). JSON strings hold
# no raw newline; TOML's multi-line strings come first so that ``"""`` is not read as an
# empty string and a quote; a TOML comment runs to the end of its line.
_JSON_STRINGS = re.compile(rb'"(?:[^"\\\n]|\\.)*"')
_TOML_STRINGS = re.compile(
    rb'"""(?:[^\\]|\\[\s\S])*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*'
)
_BRACKETS = re.compile(rb"[\[\]{}]")
# The step of the running depth per byte: +1 for an opening bracket, -1 for a closing one.
_STEP = [0] * 256
for _c in b"[{":
    _STEP[_c] = 1
for _c in b"]}":
    _STEP[_c] = -1
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_NOT_NESTERS = bytes(c for c in range(256) if c not in b"[]{}.")
_NOT_DIGITS = bytes(c for c in range(256) if c not in b"0123456789")


def size_problem(path: str, size: int, limits: ParseLimits) -> Problem | None:
    """An error when a file of ``size`` bytes is over ``max_file_bytes``."""
    if size <= limits.max_file_bytes:
        return None
    return Problem(
        path,
        0,
        "",
        f"file is {size} bytes, more than max_file_bytes ({limits.max_file_bytes}): "
        "not read (split it, or raise the limit in the settings)",
    )


def nesting_problem(path: str, data: bytes, limits: ParseLimits) -> Problem | None:
    """An error on the line where ``data`` (a ``.json`` or ``.toml`` file) nests deeper
    than ``max_nesting_depth``, else None. One linear scan; see the module docstring."""
    limit = limits.max_nesting_depth
    toml = path.endswith(".toml")
    # Fewer openers (and dots, for TOML) than the limit: nothing can nest deeper.
    crude = data.count(b"[") + data.count(b"{") + (data.count(b".") + 2 if toml else 0)
    if crude <= limit:
        return None
    bare = (_TOML_STRINGS if toml else _JSON_STRINGS).sub(_keep_newlines, data)
    if toml:
        nesters = bare.translate(None, _NOT_NESTERS)
        if len(nesters) + 2 <= limit:
            return None
        return _toml_depth(path, bare, limit)
    brackets = bare.translate(None, _NOT_BRACKETS)
    if max(accumulate(_STEP[c] for c in brackets), default=0) <= limit:
        return None
    depth = 0
    for m in _BRACKETS.finditer(bare):
        depth += _STEP[bare[m.start()]]
        if depth > limit:
            return _too_deep(path, bare.count(b"\n", 0, m.start()) + 1, limit)
    return None  # pragma: no cover - the accumulate above found the same depth


def _toml_depth(path: str, bare: bytes, limit: int) -> Problem | None:
    """TOML's depth, line by line: a table header's keys, a dotted key's parts and open
    brackets each add a level; the dots of lines whose brackets are still open carry
    over (an upper bound on what the parser builds)."""
    depth = 0  # open brackets, across lines (arrays may span lines)
    table = 0  # the levels of the current table header
    carried = 0  # the dots of earlier lines whose brackets are still open
    for number, line in enumerate(bare.split(b"\n"), start=1):
        stripped = line.lstrip()
        if depth == 0 and stripped.startswith(b"["):
            table = stripped.split(b"]", 1)[0].count(b".") + 2
            if table > limit:
                return _too_deep(path, number, limit)
            continue
        dots = line.count(b".")
        peak = depth
        for c in line.translate(None, _NOT_BRACKETS):
            depth += _STEP[c]
            peak = max(peak, depth)
        if table + carried + dots + 1 + peak > limit:
            return _too_deep(path, number, limit)
        carried = carried + dots if depth > 0 else 0
    return None


def _keep_newlines(m: re.Match[bytes]) -> bytes:
    """What a cut-out string leaves: its newlines (so lines are still counted right)."""
    return b"\n" * m.group().count(b"\n")


def _too_deep(path: str, line: int, limit: int) -> Problem:
    return Problem(
        path,
        line,
        "",
        f"nested deeper than max_nesting_depth ({limit} levels of lists and mappings): not parsed",
    )


def digits_problem(path: str, data: bytes, limits: ParseLimits) -> Problem | None:
    """An error on the line of the first run of more than ``max_integer_digits`` digits
    (TOML's and YAML's ``_`` separators included) in ``data``, else None."""
    limit = limits.max_integer_digits
    if len(data) <= limit or len(data.translate(None, _NOT_DIGITS)) <= limit:
        return None  # not that many digits in all: no need to look for a run
    m = _digit_run(limit).search(data)
    if m is None:
        return None
    return Problem(
        path,
        data.count(b"\n", 0, m.start()) + 1,
        "",
        f"a number of more than max_integer_digits ({limit}) digits: not parsed",
    )


_DIGIT_RUNS: dict[int, re.Pattern[bytes]] = {}


def _digit_run(limit: int) -> re.Pattern[bytes]:
    found = _DIGIT_RUNS.get(limit)
    if found is None:
        found = re.compile(rb"\d(?:_*\d){%d}" % limit)
        _DIGIT_RUNS[limit] = found
    return found


def too_many_documents(path: str, line: int, limits: ParseLimits) -> Problem:
    """The error for a file holding more than ``max_documents_per_file`` documents (on
    the line of the first one beyond)."""
    return Problem(
        path,
        line,
        "",
        f"more than max_documents_per_file ({limits.max_documents_per_file}) documents in "
        "one file: not loaded (split it, or raise the limit in the settings)",
    )


__all__ = [
    "DEFAULT_LIMITS",
    "ParseLimits",
    "digits_problem",
    "nesting_problem",
    "size_problem",
    "too_many_documents",
]
