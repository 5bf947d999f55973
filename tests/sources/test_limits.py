"""Parsing under limits: every file beyond a bound is a ParseFailure naming the file and
line, found before the parser that could not take it sees it; files within the bounds
parse as before (brackets, dots and digits inside strings and comments do not count)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import fields
from pathlib import Path

import pytest

from xdsd.errors import ConfigError
from xdsd.settings import Settings
from xdsd.sources import DirectoryLoader, load_directory
from xdsd.sources.config_file import parse_config_file
from xdsd.sources.documents import ParseFailure, parse_file
from xdsd.sources.limits import DEFAULT_LIMITS, ParseLimits

SMALL = ParseLimits(
    max_file_bytes=4096,
    max_config_bytes=10_000,
    max_documents_per_file=3,
    max_nesting_depth=5,
    max_integer_digits=20,
    max_yaml_alias_nodes=50,
)


def service(name: str, padding: int) -> str:
    return (
        f'kind = "Service"\nname = "{name}"\n\n[[ports]]\nname = "http"\nnumber = 80\n'
        f'protocol = "http"\n\n[[endpoints]]\naddress = "10.0.0.1"\n# {"x" * padding}\n'
    )


def refusal(path: str, text: str | bytes, limits: ParseLimits = DEFAULT_LIMITS) -> str:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(ParseFailure) as caught:
        parse_file(path, data, limits)
    return str(caught.value.problem)


def nested_json(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "[]" + "}" * (depth - 1)


def nested_yaml(depth: int) -> str:
    """``depth`` levels: mappings, the innermost holding an empty list."""
    return "".join(f"{'  ' * i}a:\n" for i in range(depth - 2)) + "  " * (depth - 2) + "b: []\n"


@pytest.mark.parametrize(
    ("path", "text", "line"),
    [
        ("x.toml", "a = " + "[" * 8000 + "]" * 8000 + "\n", 1),  # toml_rs: SIGSEGV
        ("x.toml", "kind = 'x'\n\na = " + "[" * 101 + "]" * 101 + "\n", 3),
        ("x.toml", "a" + ".a" * 8000 + " = 1\n", 1),
        ("x.toml", "[a" + ".a" * 8000 + "]\nx = 1\n", 1),
        ("x.toml", "a = [\n" + "{b.c.d.e = [\n" * 30 + "]}\n" * 30 + "]\n", 21),
        ("x.toml", "a = " + "{b = " * 200 + "1" + "}" * 200 + "\n", 1),
        ("x.json", "[" * 100_000 + "]" * 100_000, 1),  # json: RecursionError
        ("x.json", "{\n" + nested_json(101) + "\n}", 2),
        ("x.yaml", nested_yaml(101), 100),
        ("x.yaml", "- " * 500 + "x\n", 1),
        ("x.yaml", "a: &a [*a]\n", 1),
    ],
)
def test_too_deep_is_refused_with_its_line(path: str, text: str, line: int) -> None:
    message = refusal(path, text)
    assert message.startswith(f"{path}:{line}: nested deeper than max_nesting_depth (100 ")


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("x.json", nested_json(100)),
        ("x.yaml", nested_yaml(100)),
        ("x.toml", "a = " + "[" * 99 + "]" * 99 + "\n"),
    ],
)
def test_the_limit_itself_is_allowed(path: str, text: str) -> None:
    assert parse_file(path, text.encode())


@pytest.mark.parametrize(
    ("path", "text"),
    [
        # closing brackets in strings (or comments) must not hide the nesting after them
        ("x.json", '{"s": "' + "]}" * 500 + '", "t": ' + nested_json(101) + "}"),
        (
            "x.toml",
            's = "' + "]" * 500 + '"\n# ' + "]" * 500 + "\nt = " + "[" * 101 + "]" * 101 + "\n",
        ),
        ("x.toml", "s = '''\n" + "]" * 500 + "\n'''\nt = " + "[" * 101 + "]" * 101 + "\n"),
        ("x.toml", 's = """\\"""' + "]" * 500 + '"""\nt = ' + "[" * 101 + "]" * 101 + "\n"),
    ],
)
def test_strings_do_not_hide_depth(path: str, text: str) -> None:
    assert "max_nesting_depth" in refusal(path, text)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("x.json", json.dumps({"s": "[{" * 500, "ips": [f"10.0.0.{i}" for i in range(200)]})),
        (
            "x.toml",
            's = "'
            + "[" * 500
            + '"\n# '
            + "{" * 500
            + "\nm = '''\n"
            + "[" * 500
            + "\n'''\n"
            + "".join(f'h{i} = "a.b.c.d.e"\n' for i in range(100)),
        ),
        ("x.toml", "".join(f"[t{i}]\nk.a.b = {i}.5\n" for i in range(200))),
    ],
)
def test_brackets_and_dots_in_strings_do_not_count(path: str, text: str) -> None:
    assert parse_file(path, text.encode())


@pytest.mark.parametrize(
    ("path", "text", "line"),
    [
        ("x.json", '{"a": 1,\n "n": ' + "7" * 5000 + "}", 2),  # json: ValueError
        ("x.yaml", "a: 1\nn: " + "7" * 5000 + "\n", 2),
        ("x.yaml", "a: 1\nn: " + "7_" * 2000 + "7\n", 2),  # YAML 1.1 separators
        ("x.toml", "a = 1\nn = " + "7" * 5000 + "\n", 2),
    ],
)
def test_long_numbers_are_refused(path: str, text: str, line: int) -> None:
    assert refusal(path, text).startswith(f"{path}:{line}: a number of more than max_integer")


def test_alias_bomb_is_refused_before_it_expands() -> None:
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{k}: &{k} [{', '.join([f'*{j}'] * 9)}]\n"
        for j, k in zip("abcdefgh", "bcdefghi", strict=True)
    )  # 9**9 strings once expanded
    assert "max_yaml_alias_nodes (100000)" in refusal("bomb.yaml", bomb)
    # through merge keys (PyYAML's own constructor) as well
    merged = "a0: &a0 {x: 1}\n" + "".join(
        f"a{i}: &a{i} {{<<: *a{i - 1}, l: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 40)
    )
    assert "max_yaml_alias_nodes" in refusal("merge.yaml", merged)


def test_aliases_within_the_limit_are_fine() -> None:
    text = "base: &base {port: 80, protocol: http}\nports: [*base, *base]\n"
    (doc,) = parse_file("x.yaml", text.encode())
    assert doc.value["ports"] == [{"port": 80, "protocol": "http"}] * 2


def test_documents_beyond_the_limit_are_refused() -> None:
    yaml_docs = "".join(f"---\nkind: Service\nname: s{i}\n" for i in range(4))
    assert refusal("x.yaml", yaml_docs, SMALL).startswith("x.yaml:11: more than max_documents")
    assert "max_documents_per_file" in refusal("x.yaml", "---\n" * 5, SMALL)  # empty ones count
    json_docs = json.dumps([{"kind": "Service", "name": f"s{i}"} for i in range(4)], indent=1)
    assert refusal("x.json", json_docs, SMALL).startswith("x.json:14: more than max_documents")
    assert len(parse_file("x.yaml", yaml_docs.encode())) == 4


def test_a_file_too_large_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 500)
    result = parse_config_file(str(tmp_path), str(path), limits=SMALL)
    (problem,) = result.problems
    assert str(problem) == (
        f"{path}: file is 5000 bytes, more than max_file_bytes (4096): "
        "not read (split it, or raise the limit in the settings)"
    )


def test_the_directory_total_is_bounded(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"s{i}.toml").write_text(service(f"s{i}", 3000))
    with pytest.raises(ConfigError) as caught:
        load_directory(str(tmp_path), limits=SMALL)
    (problem,) = caught.value.problems
    assert problem.path == str(tmp_path / "s3.toml")
    assert "more than max_config_bytes (10000 bytes)" in problem.message
    loader = DirectoryLoader(str(tmp_path), limits=SMALL)
    with pytest.raises(ConfigError):
        loader.load()
    (tmp_path / "s3.toml").unlink()
    assert len(loader.load([str(tmp_path / "s3.toml")]).mesh.services) == 3
    (tmp_path / "s0.toml").write_text(service("s0", 3900))
    with pytest.raises(ConfigError) as caught:  # within max_file_bytes, but not the total
        loader.load([str(tmp_path / "s0.toml")])
    assert [p.message.split(" (")[0] for p in caught.value.problems] == [
        "the config files together are more than max_config_bytes"
    ]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    results = []
    reader = threading.Thread(
        target=lambda: results.append(parse_config_file(str(tmp_path), str(fifo)))
    )
    reader.daemon = True
    reader.start()
    reader.join(30)
    if reader.is_alive():  # unblock it (a writer), then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    (problem,) = results[0].problems
    assert str(problem) == f"{fifo}: is not a regular file: not read"


def _toml(value: object) -> str:
    """``value`` as a TOML literal (an integer or a boolean)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_limits_are_settings_with_the_same_defaults(tmp_path: Path) -> None:
    assert ParseLimits.of(Settings()) == DEFAULT_LIMITS
    path = tmp_path / "settings.toml"
    path.write_text("".join(f"{f.name} = {_toml(getattr(SMALL, f.name))}\n" for f in fields(SMALL)))
    assert ParseLimits.of(Settings.from_file(str(path))) == SMALL
    path.write_text("max_nesting_depth = 0\n")
    with pytest.raises(ConfigError, match="max_nesting_depth: must be a positive integer"):
        Settings.from_file(str(path))


def test_a_settings_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        Settings.from_file(str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = " + "[" * 8000 + "]" * 8000 + "\n", "settings nested too deeply"),
        ("a = " + "7" * 5000 + "\n", "settings cannot be parsed: Exceeds the limit"),
        ("#" * (2 << 20), "settings file is larger than 1048576 bytes"),
    ],
)
def test_a_hostile_settings_file_is_a_clean_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Settings.from_file(str(path))
    assert message in str(caught.value)
