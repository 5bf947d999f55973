"""Located input's typed access: the accessors settings and node metadata read with."""

from __future__ import annotations

import math
from typing import Any

import pytest

from xdsd.located import NULL, Document, Fields, Report, is_ip


def fields(data: dict[str, Any], lines: dict[tuple[str | int, ...], int] | None = None) -> Fields:
    return Fields(Report(Document("f.toml", 1, data, lines or {}), ()), (), data)


def messages(f: Fields) -> list[str]:
    return [str(p) for p in f.report.problems]


def test_value_returns_what_the_predicate_accepts() -> None:
    f = fields({"path": "/metrics", "other": "metrics"}, {("other",): 3})
    starts = lambda v: isinstance(v, str) and v.startswith("/")  # noqa: E731
    assert f.value("path", starts, 'a path starting with "/"') == "/metrics"
    assert f.value("absent", starts, "a path", "/x") == "/x"
    assert f.value("other", starts, 'a path starting with "/"', "/d") == "/d"
    assert messages(f) == [
        "f.toml:3: other: must be a path starting with \"/\" (got string 'metrics')"
    ]


@pytest.mark.parametrize(
    ("value", "fold", "expected", "error"),
    [
        ("json", str.upper, "JSON", ""),
        ("JSON", None, "JSON", ""),
        ("json", None, None, "must be one of TEXT, JSON (got 'json')"),
        ("XML", str.upper, None, "must be one of TEXT, JSON (got 'XML')"),
        (1, str.upper, None, "must be one of TEXT, JSON (got 1)"),
    ],
)
def test_choice_folds_then_checks(value: Any, fold: Any, expected: str | None, error: str) -> None:
    f = fields({"encoding": value})
    assert f.choice("encoding", ("TEXT", "JSON"), fold=fold) == expected
    assert messages(f) == ([f"f.toml:1: encoding: {error}"] if error else [])


def test_choice_default_when_absent_or_refused() -> None:
    f = fields({"bad": "x"})
    assert f.choice("absent", ("a", "b"), default="a") == "a"
    assert f.choice("bad", ("a", "b"), default="b") == "b"
    assert len(f.report.problems) == 1


def test_unread_lists_the_keys_not_read_in_order() -> None:
    f = fields({"b": 1, "a": 2, "c": 3})
    f.integer("a")
    assert f.unread() == ["b", "c"]
    assert f.report.problems == []


def test_null_is_a_value_every_accessor_refuses() -> None:
    f = fields({"s": NULL, "b": NULL, "v": NULL, "c": NULL})
    assert f.has("s")
    assert f.string("s", default="d") == "d"
    assert f.boolean("b") is False
    assert f.value("v", lambda v: v is not NULL, "a thing") is None
    assert f.choice("c", ("x",)) is None
    assert messages(f) == [
        "f.toml:1: s: must be a string (got null)",
        "f.toml:1: b: must be true or false (got null)",
        "f.toml:1: v: must be a thing (got null)",
        "f.toml:1: c: must be one of x (got null)",
    ]
    assert repr(NULL) == "null"


def test_nan_is_not_a_string() -> None:
    f = fields({"s": math.nan})
    assert f.string("s") == ""
    assert messages(f) == ["f.toml:1: s: must be a string (got number nan)"]


@pytest.mark.parametrize(
    ("text", "ip"),
    [
        ("10.0.0.1", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("300.0.0.1", False),
        ("01.2.3.4", False),
        ("my-host", False),
        ("", False),
    ],
)
def test_is_ip(text: str, ip: bool) -> None:
    assert is_ip(text) is ip
