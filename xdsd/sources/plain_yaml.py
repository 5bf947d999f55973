"""Plain YAML: the common, simple shape of a YAML config file read line by line.

Most YAML config files of a large mesh are a few lines of block mappings and lists with
one-line flow collections of plain scalars (``metadata: {name: x}``, ``- {name: v1,
labels: {version: v1}}``). Composing them with libyaml builds a node and two marks per
value and calls back into Python for every scalar's tag; for files this small that costs
more than reading the lines. ``read_plain_yaml`` reads a strict subset of YAML directly
and gives, for each document, what ``documents._YamlWalk.plain`` gives for it (the
value, its start line and the line of every field path, by the same rules), or None at
the first thing outside the subset, for libyaml to parse the file as before: syntax
errors, duplicate keys, limits and anything unusual are always found, and reported, by
the libyaml path. ``tests/sources/test_plain_yaml.py`` checks both give the same
documents, lines included, on the shapes below and on generated and mutated texts.

The subset (anything else is None):

- ``\\n`` line ends, ASCII printable characters and spaces only; no tab; comments only
  on lines of their own (a line whose first character after its indentation is ``#``;
  any other ``#`` is outside); no quotes, anchors, aliases, tags, directives, block
  scalars, complex keys (``& * ! % | > ' " ? \\``` and ``\\\\`` never appear);
- documents separated by lines that are exactly ``---`` (one may come first), each
  holding a block mapping or a block list that starts in column 0;
- block mapping entries ``key: value`` or ``key:`` (its value on the lines below, more
  indented, or a block list at the key's own indentation, or nothing: null); keys are
  plain scalars of ``[A-Za-z0-9_./-]`` that resolve to strings, never repeated in one
  mapping;
- block list entries ``- value`` or ``- key: value`` (a mapping whose further keys are
  indented two past the dash); a scalar or flow value must end its line, and the next
  line must not be more indented (no multi-line plain scalars);
- values: plain scalars (block: no ``: `` inside, no leading indicator, no trailing
  ``:``; in a flow collection: no spaces, no ``:``), or one-line flow collections
  written ``{k: v, k: v}`` and ``[a, b]`` exactly so (one space after ``:`` and ``,``,
  none inside the brackets; no empty entries, no ``k: v`` pairs inside ``[...]``).

Scalars get their tags from PyYAML's own resolver (``documents._implicit_tag``: ``yes``,
``0x1F``, ``1_000``, ``2024-01-01`` mean what they mean to PyYAML) and non-strings are
constructed by PyYAML's safe constructor; any tag but the core schema's is None. Depth
beyond ``max_nesting_depth`` and documents beyond ``max_documents_per_file`` are None
too (the libyaml path reports them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from yaml.resolver import Resolver

from xdsd.located import FieldPath

#: A scalar's tag from its plain text (``documents._implicit_tag`` bound to plain scalars).
Resolve = Callable[[str], str]
#: The value of a non-string core scalar from its tag and text.
Construct = Callable[[str, str], Any]

_STR = "tag:yaml.org,2002:str"
#: The non-string tags of the core schema (what ``documents._YamlWalk.plain`` constructs).
_CORE = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null", "timestamp"))

#: Characters that never appear in a file of the subset (quotes, anchors, aliases,
#: tags, directives, block scalars, complex keys, escapes, tabs, CRs; ``#`` only starts
#: a comment line).
_OUTSIDE = re.compile(r"[^\n #$()+-=@-\[\]-_a-{}~]")  # printable ASCII but !"%&'*>?\`|
_KEY = r"[A-Za-z0-9_./][A-Za-z0-9_./-]*"
#: A block plain scalar: no leading indicator, no ``: ``, no trailing ``:`` (``#`` and
#: the rest are already excluded by ``_OUTSIDE``).
_SCALAR = r"(?:[A-Za-z0-9_./+~=()$^;]|-(?=[^ ]))[^:]*(?::(?=[^ ])[^:]*)*"
_BLOCK_SCALAR = re.compile(_SCALAR, re.ASCII)
#: A block mapping entry: ``key:``, ``key: scalar`` or ``key: {flow...`` / ``[flow...``.
_ENTRY = re.compile(rf"({_KEY}):(?: (?:({_SCALAR})|([{{\[].*)))?", re.ASCII)
#: The tokens of a one-line flow collection: brackets, ``: ``, ``, `` and plain scalars.
_FLOW_TOKEN = re.compile(
    r"[{}\[\]]|: |, |(?:[A-Za-z0-9_./+~=()$^;]|-(?=[^ ,\]}]))[A-Za-z0-9_./+~=()$^;-]*", re.ASCII
)


_OPENERS = frozenset("{[")
_DASH_ENDS = frozenset(("", " "))  # what follows a dash that starts a list entry
_NOT_SCALAR = frozenset(("{", "}", "[", "]", ": ", ", "))
#: The first characters of the plain scalars PyYAML's resolver may give a tag other
#: than a string (its implicit resolvers are keyed by first character; None would be a
#: resolver for any first character, and then nothing is read here).
_SPECIAL: frozenset[str | None] = frozenset(Resolver.yaml_implicit_resolvers)


class _Outside(Exception):
    """The text is not in the subset."""


def read_plain_yaml(
    text: str, resolve: Resolve, construct: Construct, max_depth: int, max_documents: int
) -> list[tuple[int, Any, dict[FieldPath, int]]] | None:
    """Each document of ``text`` as (start line, value, lines by field path), as the
    libyaml path reads it; None when ``text`` is not in the subset (the module
    docstring), is empty, or holds an empty document. Never raises for what ``text``
    holds."""
    if None in _SPECIAL or _OUTSIDE.search(text) is not None:
        return None
    try:
        return _Reader(text, resolve, construct, max_depth).documents(max_documents)
    # IndexError: a line or a flow collection cut short. ValueError: a scalar PyYAML
    # resolves but cannot build (``2024-13-45``, ``0x_``), which libyaml reports after
    # any syntax error earlier in the file. RecursionError: a depth limit raised past
    # what these recursive readers can follow. libyaml judges all three.
    except (_Outside, IndexError, ValueError, RecursionError):
        return None


class _Reader:
    __slots__ = (
        "construct",
        "indents",
        "lines",
        "max_depth",
        "numbers",
        "resolve",
        "special",
        "texts",
    )

    def __init__(self, text: str, resolve: Resolve, construct: Construct, max_depth: int) -> None:
        self.resolve, self.construct, self.max_depth = resolve, construct, max_depth
        #: A scalar whose first character is not here is a string.
        self.special = _SPECIAL
        # the content lines: indentation, text (without it), 1-based line number; a
        # ``---`` line is kept as indentation -1
        indents: list[int] = []
        texts: list[str] = []
        numbers: list[int] = []
        for number, line in enumerate(text.split("\n"), 1):
            content = line.lstrip(" ")
            if not content or content[0] == "#":  # blank, or a comment line
                continue
            if "#" in content:  # a comment after content, or a ``#`` in a scalar
                raise _Outside
            if line.startswith(("---", "...")):
                if line != "---":
                    raise _Outside
                indents.append(-1)
            else:
                if content[-1] == " ":
                    raise _Outside
                indents.append(len(line) - len(content))
            texts.append(content)
            numbers.append(number)
        indents.append(-1)  # an end marker
        self.indents, self.texts, self.numbers = indents, texts, numbers
        self.lines: dict[FieldPath, int] = {}

    def documents(self, max_documents: int) -> list[tuple[int, Any, dict[FieldPath, int]]]:
        out: list[tuple[int, Any, dict[FieldPath, int]]] = []
        i = 0
        end = len(self.texts)
        if end and self.indents[0] == -1:
            i = 1
        while True:
            if i >= end or self.indents[i] != 0:  # an empty document, or indented
                raise _Outside
            if len(out) >= max_documents:
                raise _Outside
            self.lines = {}
            start = self.numbers[i]
            value, i = self._block(i, 0, ())
            out.append((start, value, self.lines))
            if i >= end:
                return out
            if self.indents[i] != -1:  # what follows is not a new document
                raise _Outside
            i += 1

    def _block(self, i: int, indent: int, path: FieldPath) -> tuple[Any, int]:
        """The block collection starting at content line ``i`` (indented ``indent``)."""
        if len(path) >= self.max_depth:
            raise _Outside
        self.lines[path] = self.numbers[i]
        text = self.texts[i]
        if text[0] == "-" and text[1:2] in _DASH_ENDS:
            return self._list(i, indent, path)
        return self._mapping(i, indent, path, _ENTRY.fullmatch(text))

    def _mapping(
        self, i: int, indent: int, path: FieldPath, m: re.Match[str] | None
    ) -> tuple[Any, int]:
        """The block mapping whose first entry is content line ``i`` (matched: ``m``)."""
        out: dict[str, Any] = {}
        indents, texts, numbers, lines = self.indents, self.texts, self.numbers, self.lines
        special = self.special
        while True:
            if m is None:
                raise _Outside
            key, scalar, flow = m.group(1, 2, 3)
            if key in out or (key[0] in special and self.resolve(key) != _STR):
                raise _Outside
            field = (*path, key)
            number = numbers[i]
            i += 1
            if scalar is not None:
                out[key] = scalar if scalar[0] not in special else self._scalar(scalar)
                if indents[i] > indent:  # a multi-line scalar, or worse
                    raise _Outside
            elif flow is not None:
                out[key] = self._flow_line(flow, field, number)
                if indents[i] > indent:
                    raise _Outside
            else:
                below = indents[i]
                if below > indent:
                    out[key], i = self._block(i, below, field)
                elif below == indent and texts[i][0] == "-" and texts[i][1:2] in _DASH_ENDS:
                    if len(field) >= self.max_depth:
                        raise _Outside
                    lines[field] = numbers[i]
                    out[key], i = self._list(i, indent, field, same=True)
                else:
                    out[key] = None  # ``key:`` alone: null
            lines[field] = number
            if indents[i] != indent:
                break
            m = _ENTRY.fullmatch(texts[i])
        if indents[i] > indent:
            raise _Outside
        return out, i

    def _list(self, i: int, indent: int, path: FieldPath, same: bool = False) -> tuple[Any, int]:
        """The block list whose first entry is content line ``i``; ``same``: it is the
        value of a key at its own indentation (a line after it may be the next key)."""
        out: list[Any] = []
        indents, texts, numbers, lines = self.indents, self.texts, self.numbers, self.lines
        inner = indent + 2
        while indents[i] == indent and texts[i][0] == "-":
            text = texts[i]
            if text[1:2] != " " or text[2] == " ":
                raise _Outside  # ``-`` alone, ``-x``, or an odd indentation
            field = (*path, len(out))
            m = _ENTRY.fullmatch(text, 2)
            if m is not None:
                # ``- key: ...``: a mapping indented two past the dash
                if len(field) >= self.max_depth:
                    raise _Outside
                lines[field] = numbers[i]
                indents[i] = inner
                value, i = self._mapping(i, inner, field, m)
                out.append(value)
                continue
            out.append(self._inline(text[2:], field, numbers[i]))
            i += 1
            if indents[i] > indent:
                raise _Outside
        if indents[i] == indent and not same:  # a list's line must be an entry
            raise _Outside
        return out, i

    def _inline(self, text: str, path: FieldPath, number: int) -> Any:
        """The value written on one line after ``- ``."""
        if text[0] in _OPENERS:
            return self._flow_line(text, path, number)
        if _BLOCK_SCALAR.fullmatch(text) is None:
            raise _Outside
        self.lines[path] = number
        return self._scalar(text)

    def _flow_line(self, text: str, path: FieldPath, number: int) -> Any:
        """The flow collection that is the rest of a line."""
        tokens = _FLOW_TOKEN.findall(text)
        if sum(map(len, tokens)) != len(text):
            raise _Outside
        value, at = self._flow(tokens, 0, path, number)
        if at != len(tokens):
            raise _Outside
        return value

    def _flow(self, tokens: list[str], at: int, path: FieldPath, number: int) -> tuple[Any, int]:
        """The flow collection opening at ``tokens[at]``, and the index after it."""
        if len(path) >= self.max_depth:
            raise _Outside
        lines = self.lines
        lines[path] = number
        if tokens[at] == "{":
            out: dict[str, Any] = {}
            at += 1
            while True:
                key = tokens[at]
                if key in _NOT_SCALAR or key in out or tokens[at + 1] != ": ":
                    raise _Outside
                if key[0] in self.special and self.resolve(key) != _STR:
                    raise _Outside
                field = (*path, key)
                token = tokens[at + 2]
                if token in _OPENERS:
                    out[key], at = self._flow(tokens, at + 2, field, number)
                elif token in _NOT_SCALAR:  # ``{k: }``, ``{k: , }``: libyaml's to judge
                    raise _Outside
                else:
                    out[key] = self._scalar(token)
                    at += 3
                lines[field] = number
                token = tokens[at]
                if token == ", ":
                    at += 1
                elif token == "}":
                    return out, at + 1
                else:
                    raise _Outside
        items: list[Any] = []
        at += 1
        if tokens[at] == "]":
            return items, at + 1
        while True:
            token = tokens[at]
            field = (*path, len(items))
            if token in _OPENERS:
                value, at = self._flow(tokens, at, field, number)
            elif token in _NOT_SCALAR:
                raise _Outside
            else:
                lines[field] = number
                value = self._scalar(token)
                at += 1
            items.append(value)
            token = tokens[at]
            if token == ", ":
                at += 1
            elif token == "]":
                return items, at + 1
            else:
                raise _Outside

    def _scalar(self, text: str) -> Any:
        if text[0] not in self.special:
            return text
        tag = self.resolve(text)
        if tag == _STR:
            return text
        if tag not in _CORE:
            raise _Outside
        return self.construct(tag, text)
