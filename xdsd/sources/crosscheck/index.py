"""What the cross-check indexes share: reverse indexes of key sets, problem tables."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import TypeVar

from xdsd.errors import Problem, Severity
from xdsd.located import closest
from xdsd.model import FieldLines, Origin, ResourceKey, line_of

H = TypeVar("H", bound=Hashable)
V = TypeVar("V")

#: The empty key set, for lookups in a reverse index.
NONE: frozenset[ResourceKey] = frozenset()


def unindex(index: dict[H, set[ResourceKey]], at: H, key: ResourceKey) -> None:
    """Take ``key`` out of ``index[at]``, and ``at`` out of ``index`` once its set is empty."""
    found = index.get(at)
    if found is not None:
        found.discard(key)
        if not found:
            del index[at]


def replace_entry(table: dict[H, V], key: H, value: V | None) -> bool:
    """Set or (None) remove ``table[key]``; True when that changed its object."""
    if table.get(key) is value:
        return False
    if value is None:
        del table[key]
    else:
        table[key] = value
    return True


def file_under(
    table: dict[ResourceKey, list[Problem]], key: ResourceKey, found: list[Problem]
) -> None:
    """Keep ``found`` as the problems of ``key`` (none: forget the key)."""
    if found:
        table[key] = found
    else:
        table.pop(key, None)


def problem_at(
    origin: Origin,
    field: str,
    message: str,
    severity: Severity = Severity.ERROR,
    lines: FieldLines = (),
) -> Problem:
    """A problem at ``field`` of the resource defined at ``origin``: on the field's own
    line when ``lines`` (the resource's) has it, else on the resource's first line."""
    return Problem(origin.path, line_of(lines, field, origin.line), field, message, severity)


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """``"; did you mean 'x'?"`` when one of ``choices`` is near ``word`` (a misspelling),
    else ""; the ending of a message naming what was not found."""
    found = closest(word, [c for c in choices if c != word])
    return f"; did you mean {found!r}?" if found else ""
