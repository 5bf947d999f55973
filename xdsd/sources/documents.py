"""Config files → documents: parsed values plus the line of every field.

How this works: each format is parsed by its own standard parser (PyYAML's composer,
``tomllib``, ``json``) so that syntax errors are reported exactly as the format defines
them. TOML is first parsed by ``toml_rs`` (compiled, held to TOML 1.0 like ``tomllib``,
much faster: ``docs/performance.md``); when it refuses a file, ``tomllib`` parses it
again, so an error's message and line are always ``tomllib``'s. Line numbers are kept in
a side table, ``Document.lines`` (``xdsd.located``), keyed by the field's path (a tuple
of keys and list indices from the document root). YAML nodes carry their marks; JSON is
re-scanned by a small locating scanner; TOML, whose parsers keep no positions, is
indexed from its table headers and ``key =`` lines (``located.index_toml``) (inline
tables and arrays map to the line of their key). Asking for the line of a path falls
back to the nearest ancestor known.

YAML in the plain subset most config files are written in (block mappings and lists,
one-line flow collections, plain scalars: ``plain_yaml``) is read line by line, with
PyYAML's resolver and safe constructor for its scalars: the same values and lines,
without composing nodes. Any other YAML, and any YAML with an error, is composed by
libyaml when PyYAML has it, with each short scalar's tag remembered (``_implicit_tag``),
and a document of plain mappings, lists and core scalars becomes its value and its
lines in one walk (``_YamlWalk.plain``); anything else (merge keys, other tags, aliases
beyond the limits) goes through PyYAML's constructor after the checks of
``_yaml_shape``. Every way, the values, lines and errors are PyYAML's.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import tomllib
from collections.abc import Hashable
from typing import Any

import toml_rs
import yaml

from xdsd.errors import Problem
from xdsd.located import Document, FieldPath, format_path, index_toml, toml_error
from xdsd.sources.limits import (
    DEFAULT_LIMITS,
    ParseLimits,
    digits_problem,
    nesting_problem,
    size_problem,
    too_many_documents,
)
from xdsd.sources.plain_yaml import read_plain_yaml

_scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]


class ParseFailure(Exception):
    """A file could not be parsed; ``problem`` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def parse_file(path: str, data: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> list[Document]:
    """Parse one config file's bytes into documents (empty YAML documents are skipped).

    Raises ParseFailure for text that is not UTF-8, for syntax errors, for a file that
    holds no document at all, and for a file beyond ``limits`` (size, nesting depth,
    digits, documents, YAML alias expansion: ``sources.limits``), which is refused
    before the parser that could not take it sees it. Never raises anything else for
    what the bytes hold.
    """
    for check in (_size_check, digits_problem, _nesting_check):
        problem = check(path, data, limits)
        if problem is not None:
            raise ParseFailure(problem)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ParseFailure(
            Problem(
                path,
                line,
                "",
                f"not UTF-8 text (byte 0x{data[e.start]:02x}): is this a config file?",
            )
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ParseFailure(
            Problem(path, line, "", "binary data (NUL byte): is this a config file?")
        )
    text = text.removeprefix("\ufeff")
    try:
        if path.endswith(".toml"):
            docs = _parse_toml(path, text)
        elif path.endswith(".json"):
            docs = _parse_json(path, text, limits)
        else:
            docs = _parse_yaml(path, text, limits)
    except RecursionError:  # a backstop: the checks above keep parsers well within
        raise ParseFailure(Problem(path, 0, "", "nested too deeply to parse")) from None
    except ValueError as e:  # a backstop, e.g. Python's limit on an integer's digits
        raise ParseFailure(Problem(path, 0, "", f"cannot be parsed: {e}")) from None
    if not docs:
        raise ParseFailure(Problem(path, 1, "", "file is empty: it defines no resource"))
    return docs


def _size_check(path: str, data: bytes, limits: ParseLimits) -> Problem | None:
    return size_problem(path, len(data), limits)


def _nesting_check(path: str, data: bytes, limits: ParseLimits) -> Problem | None:
    """JSON and TOML are scanned for depth before parsing; YAML's composed nodes are
    (``_yaml_shape``), libyaml itself refusing more than 1,000 levels."""
    if path.endswith((".json", ".toml")):
        return nesting_problem(path, data, limits)
    return None


# --- YAML -------------------------------------------------------------------------------


# libyaml's parser when PyYAML was built with it (faster, same nodes and marks).
_BaseSafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: The longest scalar whose implicit tag is remembered (``_implicit_tag``).
_MEMO_SCALAR_CHARS = 64


@functools.lru_cache(maxsize=4096)
def _implicit_tag(kind: type, value: str | None, implicit: Hashable) -> str:
    """``SafeLoader.resolve(kind, value, implicit)`` (``kind``: a node class;
    ``implicit``: a pair of flags for a scalar, one flag for a collection): a function of
    its arguments alone (the safe loader's implicit resolvers are fixed, it has no path
    resolvers), so it is remembered; a mesh's files repeat the same keys and values by
    the thousand."""
    tag: str = _BaseSafeLoader.resolve(_BaseSafeLoader, kind, value, implicit)
    return tag


class _SafeLoader(_BaseSafeLoader):  # type: ignore[misc]
    """The safe loader, resolving tags through ``_implicit_tag`` and skipping the path
    resolvers' bookkeeping (the safe loader has none): same nodes, same tags, less
    Python per node. Only short scalars are remembered, so the memo stays small
    whatever the files hold."""

    def resolve(self, kind: type, value: str | None, implicit: Hashable) -> str:
        if value is None or len(value) <= _MEMO_SCALAR_CHARS:
            return _implicit_tag(kind, value, implicit)
        tag: str = _BaseSafeLoader.resolve(self, kind, value, implicit)
        return tag

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        """Nothing to do: no path resolvers."""

    def ascend_resolver(self) -> None:
        """Nothing to do: no path resolvers."""


class _DuplicateKey(Exception):
    def __init__(self, line: int, key: str) -> None:
        self.line, self.key = line, key


def _plain_tag(text: str) -> str:
    """The tag PyYAML gives the plain scalar ``text`` (``plain_yaml``'s resolver)."""
    if len(text) <= _MEMO_SCALAR_CHARS:
        return _implicit_tag(yaml.ScalarNode, text, _PLAIN)
    tag: str = _BaseSafeLoader.resolve(_BaseSafeLoader, yaml.ScalarNode, text, _PLAIN)
    return tag


_PLAIN = (True, False)  # the implicit flags of a plain scalar


def _core_scalar(tag: str, text: str) -> Any:
    """The value PyYAML's safe constructor gives the plain scalar ``text`` of the core
    schema's non-string ``tag`` (an int, float, bool, None, date or datetime: immutable,
    so short ones are remembered)."""
    if len(text) <= _MEMO_SCALAR_CHARS:
        return _remembered_scalar(tag, text)
    return yaml.constructor.SafeConstructor().construct_object(yaml.ScalarNode(tag, text))


@functools.lru_cache(maxsize=1024)
def _remembered_scalar(tag: str, text: str) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(yaml.ScalarNode(tag, text))


def _parse_yaml(path: str, text: str, limits: ParseLimits) -> list[Document]:
    plain = read_plain_yaml(
        text, _plain_tag, _core_scalar, limits.max_nesting_depth, limits.max_documents_per_file
    )
    if plain is not None:
        return [Document(path, line, value, lines) for line, value, lines in plain]
    return _compose_yaml(path, text, limits)


def _compose_yaml(path: str, text: str, limits: ParseLimits) -> list[Document]:
    """``_parse_yaml`` by libyaml's composer: every YAML file ``plain_yaml`` does not take."""
    loader = _SafeLoader(text)
    docs: list[Document] = []
    count = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            count += 1
            if count > limits.max_documents_per_file:
                line = node.start_mark.line + 1 if node is not None else 0
                raise ParseFailure(too_many_documents(path, line, limits))
            if node is None:
                continue
            if (
                isinstance(node, yaml.ScalarNode)
                and node.value == ""
                and node.tag.endswith(":null")
            ):
                continue
            lines: dict[FieldPath, int] = {}
            walk = _YamlWalk(loader, limits)
            try:
                value = walk.plain(node, (), lines, False)
            except _NotPlain:
                lines = {}
                problem = _yaml_shape(path, node, limits)
                if problem is not None:
                    raise ParseFailure(problem) from None
                _index_yaml(node, (), lines)
                value = loader.construct_document(node)
            except _TooLarge as e:
                raise ParseFailure(e.problem(path, limits)) from None
            docs.append(Document(path, node.start_mark.line + 1, value, lines))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 0
        what = e.problem or "invalid YAML"
        if e.context:
            what = f"{e.context}: {what}" if "while" not in e.context else f"{what} ({e.context})"
        raise ParseFailure(Problem(path, line, "", f"YAML syntax error: {what}")) from None
    except yaml.YAMLError as e:
        raise ParseFailure(Problem(path, 0, "", f"YAML error: {e}")) from None
    except _DuplicateKey as e:
        raise ParseFailure(
            Problem(path, e.line, e.key, "duplicate key in the same mapping")
        ) from None
    finally:
        loader.dispose()
    return docs


class _NotPlain(Exception):
    """A YAML document uses what only PyYAML's constructor handles (merge keys, tags
    other than the core schema's, complex keys, recursive aliases)."""


_STR = "tag:yaml.org,2002:str"
_SCALAR = yaml.ScalarNode
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_CORE_SCALARS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null", "timestamp")
)


class _TooLarge(Exception):
    """A YAML document nests deeper than the limit, or its aliases expand to more
    nodes than the limit."""

    def __init__(self, line: int, *, aliases: bool) -> None:
        self.line, self.aliases = line, aliases

    def problem(self, path: str, limits: ParseLimits) -> Problem:
        if self.aliases:
            message = (
                f"aliases expand to more than max_yaml_alias_nodes "
                f"({limits.max_yaml_alias_nodes}) nodes: not loaded"
            )
        else:
            message = (
                f"nested deeper than max_nesting_depth ({limits.max_nesting_depth} levels "
                "of lists and mappings): not loaded"
            )
        return Problem(path, self.line, "", message)


class _YamlWalk:
    """One document's walk for ``plain``, counting what its aliases expand to."""

    __slots__ = ("budget", "depth", "loader", "seen")

    def __init__(self, loader: Any, limits: ParseLimits) -> None:
        self.loader = loader
        self.depth = limits.max_nesting_depth
        #: Nodes still allowed beyond the first visit of each (through aliases).
        self.budget = limits.max_yaml_alias_nodes
        #: The collection nodes visited (by id): a second visit comes through an alias.
        self.seen: set[int] = set()

    def plain(
        self, node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], again: bool
    ) -> Any:
        """The value ``loader.construct_document(node)`` gives, and each field's line (as
        ``_index_yaml`` records them), in one walk: for plain mappings, sequences and
        core schema scalars, which is what config files are made of.

        ``again``: the node is reached through an alias (a node visited before); every
        node so reached counts against ``max_yaml_alias_nodes``.

        Raises _DuplicateKey as ``_index_yaml`` does, _TooLarge beyond the limits, and
        _NotPlain for anything else (the caller then constructs the document with
        PyYAML)."""
        lines[path] = node.start_mark.line + 1
        if again:
            self.budget -= 1
            if self.budget < 0:
                raise _TooLarge(node.start_mark.line + 1, aliases=True)
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _STR:
                return node.value
            if tag in _CORE_SCALARS:
                return self.loader.construct_object(node)
            raise _NotPlain
        if len(path) >= self.depth:
            raise _TooLarge(node.start_mark.line + 1, aliases=False)
        key_id = id(node)
        if key_id in self.seen:
            again = True
        self.seen.add(key_id)
        if isinstance(node, yaml.MappingNode) and tag == _MAP:
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if type(key_node) is not _SCALAR or key_node.value == "<<":
                    raise _NotPlain
                name: str = key_node.value  # a scalar node's value is its text
                field = (*path, name)
                key_line = key_node.start_mark.line + 1
                if field in lines:  # only an earlier key of this mapping records it
                    raise _DuplicateKey(key_line, format_path(field))
                if key_node.tag == _STR and not again:
                    key = name  # what ``plain`` gives for it, without the call
                else:
                    key = self.plain(key_node, (), {}, again)
                if value_node.tag == _STR and not again and type(value_node) is _SCALAR:
                    out[key] = value_node.value  # a string: ``plain`` without the call
                else:
                    out[key] = self.plain(value_node, field, lines, again)
                lines[field] = key_line
            return out
        if isinstance(node, yaml.SequenceNode) and tag == _SEQ:
            return [self.plain(item, (*path, i), lines, again) for i, item in enumerate(node.value)]
        raise _NotPlain


def _yaml_shape(path: str, root: yaml.Node, limits: ParseLimits) -> Problem | None:
    """An error when the document ``root`` (a graph: aliases share nodes) nests deeper
    than ``max_nesting_depth``, expands through its aliases to more than
    ``max_yaml_alias_nodes`` nodes beyond its own, or holds a recursive alias; else None.
    Iterative, and linear in the nodes composed (each node's depth and expanded size are
    computed once)."""
    depth: dict[int, int] = {}
    size: dict[int, int] = {}
    cap = limits.max_yaml_alias_nodes + 1
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            children = _children(node)
            d = 1 + max((depth[id(c)] for c in children), default=0)
            depth[key] = d
            size[key] = min(cap * 2, 1 + sum(size[id(c)] for c in children))
            if d > limits.max_nesting_depth:
                return _TooLarge(node.start_mark.line + 1, aliases=False).problem(path, limits)
            continue
        if key in depth:
            continue
        if key in open_:
            return Problem(path, node.start_mark.line + 1, "", "a recursive YAML alias")
        open_.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in depth)
    if size[id(root)] - len(size) > limits.max_yaml_alias_nodes:
        return _TooLarge(root.start_mark.line + 1, aliases=True).problem(path, limits)
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _index_yaml(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)
            if key == "<<":
                continue
            if key in seen:
                raise _DuplicateKey(key_node.start_mark.line + 1, format_path((*path, key)))
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _index_yaml(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_yaml(item, (*path, i), lines)


# --- TOML -------------------------------------------------------------------------------


def _parse_toml(path: str, text: str) -> list[Document]:
    value = _fast_toml(text)
    if value is None:
        value = _strict_toml(path, text)
    if not value:
        return []
    return [Document(path, 1, value, lambda: index_toml(text))]


def _fast_toml(text: str) -> dict[str, Any] | None:
    """What ``tomllib.loads(text)`` gives, computed by ``toml_rs`` (held to TOML 1.0 as
    ``tomllib`` is: same values, same key order, tested against ``tomllib``); None when
    ``toml_rs`` refuses the text, for ``_strict_toml`` to decide and explain."""
    try:
        value: dict[str, Any] = toml_rs.loads(text, toml_version="1.0.0")
    except Exception:
        return None
    return value


def _strict_toml(path: str, text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``. Raises ParseFailure with tomllib's message and line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        at, msg = toml_error(e)
        line = at if at is not None else max(1, len(text.splitlines()))
        msg = msg.replace("(at end of document)", "").strip()
        raise ParseFailure(Problem(path, line, "", f"TOML syntax error: {msg}")) from None


# --- JSON -------------------------------------------------------------------------------


def _parse_json(path: str, text: str, limits: ParseLimits) -> list[Document]:
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseFailure(Problem(path, e.lineno, "", f"JSON syntax error: {e.msg}")) from None
    if isinstance(value, list):
        lines = _JsonLocator(text).locate()
        if len(value) > limits.max_documents_per_file:
            beyond = limits.max_documents_per_file
            raise ParseFailure(too_many_documents(path, lines.get((beyond,), 1), limits))
        return [
            Document(path, lines.get((i,), 1), item, _subtree(lines, i))
            for i, item in enumerate(value)
        ]
    return [Document(path, 1, value, lambda: _JsonLocator(text).locate())]


def _subtree(lines: dict[FieldPath, int], index: int) -> dict[FieldPath, int]:
    return {p[1:]: n for p, n in lines.items() if p and p[0] == index}


class _JsonLocator:
    """Walks valid JSON text recording the line each value starts on, by path."""

    _WS = re.compile(r"[ \t\n\r]*")
    _SCALAR = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")

    def __init__(self, text: str) -> None:
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.lines: dict[FieldPath, int] = {}

    def locate(self) -> dict[FieldPath, int]:
        self._value(self._skip(0), ())
        return self.lines

    def _line(self, pos: int) -> int:
        return bisect.bisect_right(self.newlines, pos) + 1

    def _skip(self, pos: int) -> int:
        m = self._WS.match(self.text, pos)
        return m.end() if m else pos

    def _value(self, pos: int, path: FieldPath) -> int:
        self.lines.setdefault(path, self._line(pos))
        c = self.text[pos]
        if c == "{":
            pos = self._skip(pos + 1)
            if self.text[pos] == "}":
                return pos + 1
            while True:
                key, pos = _scanstring(self.text, pos + 1)
                self.lines[(*path, key)] = self._line(pos)
                pos = self._skip(self._skip(pos) + 1)  # past ':'
                pos = self._skip(self._value(pos, (*path, key)))
                self.lines[(*path, key)] = self.lines[(*path, key)]
                if self.text[pos] == "}":
                    return pos + 1
                pos = self._skip(pos + 1)
        if c == "[":
            pos = self._skip(pos + 1)
            if self.text[pos] == "]":
                return pos + 1
            i = 0
            while True:
                pos = self._skip(self._value(pos, (*path, i)))
                i += 1
                if self.text[pos] == "]":
                    return pos + 1
                pos = self._skip(pos + 1)
        if c == '"':
            _, end = _scanstring(self.text, pos + 1)
            return int(end)
        m = self._SCALAR.match(self.text, pos)
        return m.end() if m else pos + 1
