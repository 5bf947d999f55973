"""The plain YAML reader (``xdsd.sources.plain_yaml``) against libyaml's composer.

Whenever the reader takes a text, it must give what the libyaml path gives: the same
documents, values of the same types, document lines and field lines; whenever libyaml
refuses a text (a syntax error, a duplicate key, a limit), the reader must have left it
to libyaml, so every error keeps its line. Checked on the shapes config files use, on
edge cases of YAML 1.1 scalars, and on generated and mutated texts (a fuzz target).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.meshgen import write_mesh
from tests.fuzzing import deadline, fuzz_settings
from xdsd.errors import ConfigError, Problem
from xdsd.sources.documents import (
    ParseFailure,
    _compose_yaml,
    _core_scalar,
    _parse_yaml,
    _plain_tag,
    parse_file,
)
from xdsd.sources.limits import DEFAULT_LIMITS, ParseLimits
from xdsd.sources.loader import DirectoryLoader
from xdsd.sources.plain_yaml import read_plain_yaml


def typed(value: Any) -> Any:
    """``value`` with every scalar's type spelled out (``1 == True`` in Python; a NaN
    equals nothing)."""
    if isinstance(value, dict):
        return ("map", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("seq", [typed(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def plain(text: str, limits: ParseLimits = DEFAULT_LIMITS) -> Any:
    return read_plain_yaml(
        text, _plain_tag, _core_scalar, limits.max_nesting_depth, limits.max_documents_per_file
    )


def composed(text: str, limits: ParseLimits = DEFAULT_LIMITS) -> list[Any] | Problem:
    """What the libyaml path gives: each document's (line, typed value, lines), or the
    problem it reports."""
    try:
        docs = _compose_yaml("f.yaml", text, limits)
    except ParseFailure as e:
        return e.problem
    return [(d.line, typed(d.value), d.lines) for d in docs]


def agree(text: str, limits: ParseLimits = DEFAULT_LIMITS) -> bool:
    """Assert the reader gives what libyaml gives whenever it takes ``text``; True when
    it took it."""
    fast = plain(text, limits)
    slow = composed(text, limits)
    if fast is None:
        return False
    assert not isinstance(slow, Problem), f"libyaml refuses what the reader took: {slow}"
    assert [(line, typed(value), lines) for line, value, lines in fast] == slow
    return True


TAKEN = [
    "a: b\n",
    "a: b",
    "a: 1\nb: -2\nc: 0x1F\nd: 0o17\ne: 017\nf: 1_000\ng: 1:20\nh: 1.5\ni: .inf\nj: -.INF\n"
    "k: .NaN\nl: 1e3\nm: 1.0e+3\nn: yes\no: No\np: on\nq: OFF\nr: ~\ns: null\nt: 2024-01-02\n"
    "u: 2024-01-02 10:20:30\nv: y\nw: n\nx: +1\n",
    "a:\nb: x\n",
    "a:\n  b:\n    c: d\n  e: f\n",
    "a:\n- x\n- y\nb: z\n",
    "a:\n  - x\n  - y\n",
    "- a\n- b: c\n  d: e\n- {f: g}\n- [h, i]\n",
    "- name: v1\n  labels:\n    version: v1\n- name: v2\n",
    "metadata: {name: x, labels: {app: y, version: v1}}\nspec:\n  hosts: [a, b, c]\n",
    "http:\n- route:\n  - {destination: {host: a, subset: v1}, weight: 90}\n"
    "  - {destination: {host: a, subset: v2}, weight: 10}\n",
    "a: b\n---\nc: d\n",
    "---\na: b\n---\n- c\n",
    "a: http://example.com/x/y\n",
    "a: 10.0.0.1:8080\nb: a,b c\nc: x]\nd: -x\ne: (a) $b ^c ;d\n",
    "a: [1, -1, 1.5, yes, ~, 2024-01-02]\nb: {c: 0x10, d: on}\n",
    "\n\na: b\n\n\nc:   \n  d: e\n",
    "a: b  c\n",
    "networking.istio.io/v1: x\n_a: 1\n./x: 2\n",
    "a: []\n",
    "a: [[], [x]]\n",
    "# the header\n# two lines\na: b\n",
    "a:\n  # a comment, indented less than what follows\n    b: c\n#\n  # another\nd: e\n",
    "- a\n# between entries\n- b\n",
    "# before the marker\n---\n# after it\na: b\n---\n#\nc: d\n",
    "a:\n#comment at column 0\n- b\n",
]


@pytest.mark.parametrize("text", TAKEN)
def test_the_reader_takes_plain_shapes_and_agrees_with_libyaml(text: str) -> None:
    if text in ("a: b  c\n", "\n\na: b\n\n\nc:   \n  d: e\n"):
        agree(text)  # taken or not, never different
        return
    assert agree(text), text


LEFT = [
    "",
    "---\n",
    "a: b\n---\n",
    "a: b # comment\n",
    "a: b#c\n",
    "a: {b: c} # comment\n",
    "# only a comment\n",
    "a: b\n---\n# an empty document\n",
    "a: 'b'\n",
    'a: "b"\n',
    "a: &x b\nc: *x\n",
    "a: !!str 1\n",
    "a: |\n  text\n",
    "a: >\n  text\n",
    "a:\tb\n",
    "a: b\r\n",
    "<<: {a: b}\n",
    "a: {<<: {b: c}}\n",
    "? a\n: b\n",
    "%YAML 1.1\n---\na: b\n",
    "a: b\n...\n",
    "a: b\nc\n",
    "a: b\n  c\n",
    "a: b\n c: d\n",
    "  a: b\n",
    "a:\n  b: c\n d: e\n",
    "a: b\na: c\n",
    "a: {b: c, b: d}\n",
    "1: a\n",
    "yes: a\n",
    "null: a\n",
    "a: b: c\n",
    "a: b:\n",
    "a: -\n",
    "- - a\n",
    "-\n  a: b\n",
    "-  a\n",
    "- a\n  - b\n",
    "a: { b: c }\n",
    "a: {b: c,}\n",
    "a: {b}\n",
    "a: {}\n",
    "a: [b: c]\n",
    "a: [b,c]\n",
    "a: [b, {c: d]\n",
    "a: [b\n",
    "a: {b: c}d\n",
    "a: b\u00e9\n",
    "a: b\u2028c\n",
    "a: b\x85c\n",
    "a: =\n",
    "a: [=]\n",
    "a: @b\n",
    "a: `b\n",
    "plain scalar\n",
    "a b: c\n",
    # punctuation where a flow mapping's value goes (a review found these read as text)
    "a: {b: , }\n",
    "a: {b: }}\n",
    "a: {b: ]}\n",
    "a: {b: : }\n",
    "a: [{b: }, c: d}]\n",
    # a scalar PyYAML resolves but cannot build, before a syntax error
    "a: 2024-13-45\nb: [c\n",
    "a: 0x_\nb: {c: d}}\n",
]


@pytest.mark.parametrize("text", LEFT)
def test_the_reader_leaves_everything_else_to_libyaml(text: str) -> None:
    assert plain(text) is None, text


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("a: b\nc:\n  d: 1\n  d: 2\n", 4, "c.d"),
        ("a: {b: 1, b: 2}\n", 1, "a.b"),
        ("kind: x\nkind: y\n", 2, "kind"),
        ("a: b\nc: d: e\n", 2, ""),
        ("a:\n  b: c\n d: e\n", 3, ""),
        ("a: b\n---\nc: [d\n", 4, ""),
        ("# header\nkind: x\n# note\nkind: y\n", 4, "kind"),
        ("# header\n\na:\n  # b\n  c: d\n  # e\n  c: f\n", 7, "a.c"),
    ],
)
def test_errors_in_texts_near_the_subset_keep_their_lines(text: str, line: int, field: str) -> None:
    with pytest.raises(ParseFailure) as caught:
        _parse_yaml("f.yaml", text, DEFAULT_LIMITS)
    assert (caught.value.problem.line, caught.value.problem.field) == (line, field)


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: {b: }}\n", 1), ("a: 2024-13-45\nb: [c\n", 3), ("a: 0x_\nb: {c: d}}\n", 2)],
)
def test_syntax_errors_after_what_the_reader_took_are_libyamls(text: str, line: int) -> None:
    """A file the reader gives up on part-way is judged by libyaml, which names the
    syntax error's line (not a value error from a scalar read before it)."""
    with pytest.raises(ParseFailure, match="YAML syntax error") as caught:
        parse_file("f.yaml", text.encode(), DEFAULT_LIMITS)
    assert caught.value.problem.line == line


def test_a_raised_depth_limit_is_never_a_recursion_error() -> None:
    """With ``max_nesting_depth`` raised past what the recursive reader can follow, the
    text goes to libyaml, which reads it."""
    limits = ParseLimits(max_nesting_depth=5000)
    deep = "".join(f"{' ' * (2 * i)}a:\n" for i in range(900)) + " " * 1800 + "b: c\n"
    assert plain(deep, limits) is None
    value = parse_file("f.yaml", deep.encode(), limits)
    assert value


def test_limits_are_the_libyaml_paths() -> None:
    """Depth and document count beyond the limits: the reader leaves the text, and the
    libyaml path refuses it with its line."""
    limits = ParseLimits(max_nesting_depth=3, max_documents_per_file=2)
    deep = "a:\n  b:\n    c:\n      d: e\n"
    assert plain(deep, limits) is None
    assert plain(deep) is not None
    with pytest.raises(ParseFailure, match="max_nesting_depth"):
        parse_file("f.yaml", deep.encode(), limits)
    flow = "a: {b: {c: {d: e}}}\n"
    assert plain(flow, limits) is None
    with pytest.raises(ParseFailure, match="max_nesting_depth"):
        parse_file("f.yaml", flow.encode(), limits)
    three = "a: b\n---\nc: d\n---\ne: f\n"
    assert plain(three, limits) is None
    with pytest.raises(ParseFailure, match="max_documents_per_file") as caught:
        parse_file("f.yaml", three.encode(), limits)
    assert caught.value.problem.line == 5


def test_a_generated_mesh_is_read_by_the_reader_as_libyaml_reads_it(tmp_path: Path) -> None:
    config = write_mesh(tmp_path, 30, endpoints=2)
    files = sorted(config.rglob("*.yaml"))
    assert files
    for path in files:
        assert agree(path.read_text()), path


def test_warnings_on_plainly_read_files_name_their_lines(tmp_path: Path) -> None:
    """A DestinationRule and a VirtualService read by the reader: the loader's warnings
    about them name the lines of the fields at fault."""
    (tmp_path / "svc.yaml").write_text(
        "kind: Service\nname: reviews\nports:\n- {number: 9080, protocol: HTTP, name: http}\n"
        "endpoints:\n- {address: 10.0.0.1, labels: {version: v1}}\n"
    )
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n"
        "  - {name: v1, labels: {version: v1}}\n"
        "  - name: v9\n    labels:\n      version: v9\n"
        "---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n"
        "    - {destination: {host: reviews, subset: v1}, weight: 50}\n"
        "    - destination: {host: nowhere}\n      weight: 50\n"
    )
    assert plain(text) is not None
    (tmp_path / "rules.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        DirectoryLoader(str(tmp_path)).load()
    found = [
        (p.line, p.field)
        for p in (*caught.value.problems, *caught.value.warnings)
        if p.path.endswith("rules.yaml")
    ]
    assert (20, "http[0].route[1].destination.host") in found, found
    assert (8, "subsets[1]") in found, found  # subset v9 selects no endpoint


HOSTILE = {
    "indentation 5,000 levels deep": "".join(f"{' ' * (2 * i)}a:\n" for i in range(5000)) + "b\n",
    "flow mappings 100,000 deep": "a: " + "{a: " * 100_000 + "b" + "}" * 100_000 + "\n",
    "flow lists 100,000 deep": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "lists of mappings 2,000 deep": "".join(f"{' ' * (2 * i)}- a:\n" for i in range(2000)),
    "a 1 MB scalar ending in a colon": "a: " + "b:" * 500_000 + "\n",
    "a 1 MB key": "a" * 1_000_000 + ": b\n",
    "100,000 keys": "".join(f"k{i}: v\n" for i in range(100_000)),
    "100,000 keys, one repeated": "".join(f"k{i % 99_999}: v\n" for i in range(100_000)),
    "30,000 documents": "a: b\n---\n" * 30_000,
    "a 1 MB flow list": "a: [" + ", ".join(["b"] * 200_000) + "]\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_texts_are_read_or_refused_within_the_limits(case: str) -> None:
    """Deep, long, repeated: each text is read by the reader exactly as libyaml reads
    it, or left to libyaml, which refuses it under the limits; nothing raises anything
    but ParseFailure, and nothing hangs."""
    text = HOSTILE[case]
    with deadline(f"plain yaml: {case}", seconds=60):
        taken = plain(text)
        try:
            docs = parse_file("f.yaml", text.encode())
        except ParseFailure:
            assert taken is None
            return
        if taken is not None:
            assert [(d.line, typed(d.value), d.lines) for d in docs] == [
                (line, typed(value), lines) for line, value, lines in taken
            ]


# -- generated and mutated texts ---------------------------------------------------------

_SCALARS = st.sampled_from(
    [
        "a",
        "b",
        "v1",
        "svc-1",
        "1",
        "-1",
        "0x1F",
        "017",
        "1_0",
        "1:2",
        "1.5",
        ".inf",
        "yes",
        "No",
        "on",
        "~",
        "null",
        "2024-01-02",
        "=",
        "x y",
        "http://h",
        "a:b",
        "-",
        "y",
        "n",
        "10.0.0.1",
        "1e3",
        "+1",
        ".",
        "_",
        "a]",
        "(b)",
    ]
)
_PIECES = st.sampled_from(
    ["- ", ": ", ", ", "{", "}", "[", "]", "\n", "  ", " ", "---\n", "#", "'", ":", "-", "\t"]
)


@st.composite
def yamlish(draw: st.DrawFn) -> str:
    """Lines of indentation, dashes, keys, colons, flow brackets and scalars: mostly in
    the subset or near it."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        indent = " " * draw(st.sampled_from([0, 0, 2, 2, 4, 6, 1, 3]))
        parts = draw(st.lists(st.one_of(_SCALARS, _PIECES), min_size=1, max_size=8))
        lines.append(indent + "".join(parts))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A plain config text with a few characters inserted, deleted or replaced."""
    text = draw(st.sampled_from(TAKEN))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        what = draw(st.sampled_from(["", " ", "\n", "-", ":", "{", "}", "[", ",", "a", "1"]))
        cut = draw(st.integers(0, 2))
        text = text[:at] + what + text[at + cut :]
    return text


@fuzz_settings(scale=4)
@given(st.one_of(yamlish(), mutated()))
def test_fuzz_plain_yaml_agrees_with_libyaml(text: str) -> None:
    """Fuzz target: whatever the text, the reader either leaves it or gives exactly
    what libyaml gives (never takes a text libyaml refuses)."""
    with deadline("test_fuzz_plain_yaml_agrees_with_libyaml"):
        agree(text)
