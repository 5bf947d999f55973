"""The fast parsing paths give exactly what the standard parsers give, and bad input still
gets tomllib's messages with file, line and field."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xdsd.located import Document
from xdsd.model import Endpoint, Locality
from xdsd.model.service import make_endpoint
from xdsd.sources import config_file, dispatch, documents, plain_readers
from xdsd.sources.config_file import parse_config_file
from xdsd.sources.documents import ParseFailure, parse_file
from xdsd.sources.limits import DEFAULT_LIMITS

VALID_TOML = {
    "service": (
        'kind = "Service"\nname = "reviews"\n\n[[ports]]\nname = "http"\nnumber = 9080\n'
        'protocol = "HTTP"\n\n[[endpoints]]\naddress = "10.0.0.1"\n'
        'labels = { version = "v1", "x.y" = "z" }\nlocality = "r/z"\nweight = 3\n'
    ),
    "scalars": (
        "i = 0x7fffffffffffffff\nbig = 0x8fffffffffffffff\no = 0o17\nb = 0b101\n"
        "n = -1_000\nf = 1e400\ng = -inf\nh = nan\nj = 1.0000000000000001\nt = true\n"
    ),
    "strings": (
        's = "tab\\tquote\\"\\u00e9\\U0001F600"\nl = \'C:\\\\raw\'\n'
        "m = \"\"\"\nline one\\\n   still one\n\"\"\"\nr = '''\nraw\n'''\n"
    ),
    "dates": (
        "a = 1979-05-27T07:32:00Z\nb = 1979-05-27T07:32:00.5-07:00\n"
        "c = 1979-05-27T07:32:00.999999\nd = 1979-05-27\ne = 07:32:00\n"
    ),
    "tables and order": (
        'z = 1\na.b.c = 2\n"quoted key" = 3\n[t]\ny = 1\nx = 2\n[t.sub]\nk = []\n'
        "[[arr]]\nv = [1, [2, 3], {a = 1}]\n[[arr]]\n[[arr.inner]]\nq = 1\n"
    ),
    "empty": "# nothing\n",
}

INVALID_TOML = {
    "missing value": ('kind = "Service"\nname = \n', 2),
    "duplicate key": ("a = 1\na = 2\n", 2),
    "duplicate table": ("[t]\n[t]\n", 2),
    "unterminated string": ('a = 1\nb = "x\n', 2),
    "inline table newline (TOML 1.1 only)": ("a = {\n b = 1 }\n", 1),
    "trailing comma in inline table (TOML 1.1 only)": ("a = {b = 1,}\n", 1),
    "time without seconds (TOML 1.1 only)": ("a = 07:32\n", 1),
    "redefined by array of tables": ("a = []\n[[a]]\n", 2),
}


def _typed(value: Any) -> Any:
    """``value`` with every scalar's type and every mapping's key order made visible."""
    if isinstance(value, dict):
        return [(k, _typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, repr(value))


@pytest.mark.parametrize("case", sorted(VALID_TOML))
def test_fast_toml_equals_tomllib(case: str) -> None:
    text = VALID_TOML[case]
    fast = documents._fast_toml(text)
    assert fast is not None
    assert _typed(fast) == _typed(tomllib.loads(text))


@pytest.mark.parametrize("case", sorted(INVALID_TOML))
def test_invalid_toml_is_refused_with_tomllibs_line(case: str) -> None:
    text, line = INVALID_TOML[case]
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    assert documents._fast_toml(text) is None  # never accepted where tomllib refuses
    with pytest.raises(ParseFailure) as caught:
        parse_file("s.toml", text.encode())
    problem = caught.value.problem
    assert (problem.path, problem.line) == ("s.toml", line)
    assert problem.message.startswith("TOML syntax error: ")


def test_a_file_the_fast_parser_refuses_is_parsed_by_tomllib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(documents, "_fast_toml", lambda text: None)
    text = VALID_TOML["service"]
    [doc] = parse_file("s.toml", text.encode())
    assert _typed(doc.value) == _typed(tomllib.loads(text))


def test_fast_toml_keeps_field_lines(tmp_path: Path) -> None:
    text = VALID_TOML["service"].replace("weight = 3", "weight = 0\nwieght = 1")
    path = tmp_path / "s.toml"
    path.write_text(text)
    result = parse_config_file(str(tmp_path), str(path))
    found = {(p.line, p.field) for p in result.problems}
    assert (13, "endpoints[0].weight") in found
    assert (14, "endpoints[0].wieght") in found


VALID_YAML = {
    "istio": (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
        "spec:\n  hosts: [r]\n  http:\n  - route:\n    - {destination: {host: r}, weight: 90}\n"
    ),
    "scalars": (
        "a: 1\nb: 0x1f\nc: 1_000\nd: 1.5\ne: .inf\nf: yes\ng: ~\nh: null\ni: '1'\nj: 2001-12-14\n"
        "k: 2001-12-14t21:59:43.10-05:00\nl: !!str 12\nm: 010\nn: -0o7\no: 1:20\n1: int key\n"
    ),
    "anchors": "base: &b {x: 1, y: [1, 2]}\ncopy: *b\nlist: [*b, *b]\n",
    "merge key (PyYAML constructs it)": "base: &b {x: 1}\nmine:\n  <<: *b\n  y: 2\n",
    "set (PyYAML constructs it)": "s: !!set {a, b}\n",
    "binary (PyYAML constructs it)": "b: !!binary aGVsbG8=\n",
    "complex key (PyYAML constructs it)": "? [a, b]\n: 1\n",
    "nested lists": "a:\n- - 1\n  - {b: [c, d]}\n- []\n- {}\n",
}


def _pyyaml(text: str) -> list[Any]:
    import yaml

    return [d for d in yaml.load_all(text, Loader=yaml.SafeLoader) if d is not None]


@pytest.mark.parametrize("case", sorted(VALID_YAML))
def test_fast_yaml_equals_pyyaml(case: str) -> None:
    text = VALID_YAML[case]
    try:
        want = _pyyaml(text)
    except Exception as e:  # e.g. an unhashable complex key
        with pytest.raises(ParseFailure):
            parse_file("x.yaml", text.encode())
        assert "yaml" in type(e).__module__
        return
    got = [doc.value for doc in parse_file("x.yaml", text.encode())]
    assert _typed(got) == _typed(want)


def test_remembered_yaml_tags_are_pyyamls() -> None:
    """The tags remembered from one file serve the next ones: every scalar read again
    (now from the memo) is still what PyYAML gives; a long scalar is never remembered."""
    text = VALID_YAML["scalars"]
    first = [doc.value for doc in parse_file("x.yaml", text.encode())]
    again = [doc.value for doc in parse_file("y.yaml", text.encode())]
    assert _typed(first) == _typed(again) == _typed(_pyyaml(text))
    long_number = "1" * (documents._MEMO_SCALAR_CHARS + 1)
    text = f"n: {long_number}\ns: {'x' * 500}\n"
    documents._implicit_tag.cache_clear()
    documents._remembered_scalar.cache_clear()
    # read by ``plain_yaml``: only the key "n" is resolved ("s" cannot be anything but
    # a string), and the long values are neither resolved from nor put in the memos
    value = parse_file("z.yaml", text.encode())[0].value
    assert value == {"n": int(long_number), "s": "x" * 500}
    assert documents._implicit_tag.cache_info().currsize == 1
    assert documents._remembered_scalar.cache_info().currsize == 0
    # composed by libyaml: the mapping's tag and the keys "n" and "s"; not the values
    documents._implicit_tag.cache_clear()
    docs = documents._compose_yaml("z.yaml", text, documents.DEFAULT_LIMITS)
    assert docs[0].value == value
    assert documents._implicit_tag.cache_info().currsize == 3
    assert documents._implicit_tag.cache_info().maxsize is not None
    assert documents._remembered_scalar.cache_info().maxsize is not None


def test_fast_yaml_lines_equal_the_node_index() -> None:
    import yaml

    text = VALID_YAML["istio"] + "---\n" + VALID_YAML["nested lists"]
    docs = parse_file("x.yaml", text.encode())
    for doc, node in zip(docs, yaml.compose_all(text, Loader=yaml.SafeLoader), strict=True):
        want: dict[Any, int] = {}
        documents._index_yaml(node, (), want)
        assert doc.lines == want


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("kind: Service\nname: a\nname: b\n", 3, "name"),
        ("spec:\n  http:\n  - route: []\n    route: []\n", 4, "spec.http[0].route"),
        ("a: {'x': 1, x: 2}\n", 1, "a.x"),
        # keys that construct to different values but are spelled the same
        ("1: a\n'1': b\n", 2, "1"),
        ("yes: 1\n'yes': 2\n", 2, "yes"),
        # a duplicate inside a mapping reached again through an alias
        ("a: &x {k: 1}\nb: *x\nc: {k: 1, k: 2}\n", 3, "c.k"),
    ],
)
def test_duplicate_yaml_keys_name_line_and_field(text: str, line: int, field: str) -> None:
    with pytest.raises(ParseFailure) as caught:
        parse_file("x.yaml", text.encode())
    problem = caught.value.problem
    assert (problem.path, problem.line, problem.field) == ("x.yaml", line, field)


# --- documents read without Fields ------------------------------------------------------

PLAIN_SERVICE: dict[str, Any] = {
    "kind": "Service",
    "name": "reviews",
    "resolution": "STATIC",
    "hosts": ["reviews.example"],
    "address": "127.240.0.9",
    "ports": [
        {"name": "http", "number": 9080, "protocol": "HTTP", "targetPort": 7000},
        {"name": "grpc", "number": 9090, "protocol": "GRPC"},
    ],
    "endpoints": [
        {
            "address": "10.0.0.1",
            "labels": {"version": "v1", "zone": "a"},
            "locality": "r/z",
            "weight": 3,
            "ports": {"grpc": 7090},
        },
        {"address": "10.0.0.2", "labels": {"version": "v2"}},
        {"address": "fd00::1", "locality": "r"},
    ],
}
PLAIN_RULES: dict[str, dict[str, Any]] = {
    "virtual service": {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "r", "namespace": "ns", "labels": {"a": "b"}, "uid": "x"},
        "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]},
    },
    "destination rule": {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": "r", "annotations": {}},
        "spec": {"host": "r", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    },
    "istio-shaped service": {
        "kind": "Service",
        "apiVersion": "xdsd.io/v1",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"number": 80, "protocol": "TCP"}], "endpoints": []},
    },
}


def _both_ways(
    value: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[tuple[Any, list[Any]], tuple[Any, list[Any]], bool]:
    """``_parse_document``'s (resource with its origin and repr, problems) read the fast
    way and the careful way, and whether the fast way gave the result itself."""
    doc = Document("x.yaml", 7, value, {("ports",): 9})
    taken: list[Any] = []
    fast_path = dispatch.parse_plain_document

    def spy(*args: Any) -> Any:
        taken.append(fast_path(*args))
        return taken[-1]

    outcomes = []
    for reader in (spy, lambda *args: None):
        with monkeypatch.context() as m:
            m.setattr(dispatch, "parse_plain_document", reader)
            problems: list[Any] = []
            resource = dispatch.parse_document(doc, problems, "/config")
        seen = None if resource is None else (resource, repr(resource), resource.origin)
        outcomes.append((seen, problems))
    return outcomes[0], outcomes[1], taken[0] is not None


def _variants(value: Any) -> Iterator[Any]:
    """``value`` with one thing changed, everywhere in it: each key dropped, renamed or
    set to null, and each value replaced by values of other types and unusual forms."""
    replacements = [
        None,
        "",
        "x",
        "HTTP",
        "http",
        "dns",
        "DNS",
        "NONE",
        "10.0.0.9",
        "fd00::9",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "255.255.255.255",
        "10.0.0.0/24",
        "10.0.0.9/32",
        "fe80::1%eth0",
        "host.example",
        "r/z/s/x",
        0,
        1,
        -1,
        70000,
        2**31,
        1.0,
        1.5,
        True,
        [],
        ["x"],
        [""],
        [1],
        {},
        {"a": 1},
        {"version": "v1"},
        {"http": 8080},
        {"grpc": 0},
    ]
    if isinstance(value, dict):
        for key in value:
            yield {k: v for k, v in value.items() if k != key}
            yield {(f"{k}x" if k == key else k): v for k, v in value.items()}
            for sub in [*replacements, *_variants(value[key])]:
                yield {**value, key: sub}
    elif isinstance(value, list):
        for i, item in enumerate(value):
            for sub in [*replacements, *_variants(item)]:
                yield [*value[:i], sub, *value[i + 1 :]]
        if value:
            yield [*value, value[0]]  # a duplicate


@pytest.mark.parametrize("case", ["service", *sorted(PLAIN_RULES)])
def test_a_plain_document_is_read_as_fields_read_it(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = PLAIN_SERVICE if case == "service" else PLAIN_RULES[case]
    fast, careful, taken = _both_ways(value, monkeypatch)
    assert taken, "a well-formed document is read the fast way"
    assert fast == careful
    assert careful[0] is not None and careful[1] == []


def test_every_variant_of_a_service_is_read_as_fields_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each change either keeps the document plainly valid (and both ways agree) or
    makes the fast way give up, so the problems are the careful way's, word for word."""
    taken = refused = 0
    for variant in _variants(PLAIN_SERVICE):
        fast, careful, used = _both_ways(variant, monkeypatch)
        assert fast == careful, variant
        if used:
            taken += 1
            assert careful[1] == [], variant  # nothing to report when the fast way reads it
        else:
            refused += 1
    assert taken > 50 and refused > 500


@pytest.mark.parametrize("case", sorted(PLAIN_RULES))
def test_every_variant_of_a_rule_is_read_as_fields_read_it(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variant in _variants(PLAIN_RULES[case]):
        fast, careful, _ = _both_ways(variant, monkeypatch)
        assert fast == careful, variant


def test_a_plain_destination_rule_is_read_without_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by ``parse_plain_destination_rule`` (so without ``Fields`` at all) exactly when
    it has a host and label subsets only; with a traffic policy it is read with ``Fields``
    (and a failover without outlier detection still warns)."""
    rule = PLAIN_RULES["destination rule"]
    seen: list[Any] = []
    plain = plain_readers.parse_plain_destination_rule

    def spy(*args: Any) -> Any:
        seen.append(plain(*args))
        return seen[-1]

    monkeypatch.setattr(dispatch, "parse_plain_destination_rule", spy)
    failover = {"loadBalancer": {"localityLbSetting": {"failover": [{"from": "a", "to": "b"}]}}}
    for spec, plainly in [
        (rule["spec"], True),
        ({"host": "r"}, True),
        ({**rule["spec"], "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}, False),
        ({**rule["spec"], "trafficPolicy": failover}, False),
    ]:
        seen.clear()
        fast, careful, _ = _both_ways({**rule, "spec": spec}, monkeypatch)
        assert fast == careful
        assert (seen[0] is not None) is plainly
        if spec.get("trafficPolicy") is failover:
            assert careful[1] and {p.severity.name for p in careful[1]} == {"WARNING"}


def test_a_bad_service_still_gets_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(VALID_TOML["service"].replace('"10.0.0.1"', '"10.0.0.300"'))
    result = parse_config_file(str(tmp_path), str(path))
    assert [(p.path, p.line, p.field) for p in result.problems] == [
        (str(path), 10, "endpoints[0].address")
    ]


@pytest.mark.parametrize(
    ("root", "path"),
    [
        ("config", "config/envoy/a.yaml"),
        ("config/", "config/envoy/a.yaml"),
        ("./config", "config/envoy/x.json"),
        ("/a/b", "/a/b/services/x.toml"),
        ("/a/b", "/a/b/x.toml"),
        ("c", "c/../c/envoy/x.yaml"),
        ("c", "c/envoy/../x.yaml"),
        ("c", "c/./envoy/x.yaml"),
        ("/a/b", "/a/bc/envoy/x.yaml"),
    ],
)
def test_first_part_below_the_root_is_relpaths(root: str, path: str) -> None:
    assert config_file.first_part(root, path) == os.path.relpath(path, root).split(os.sep)[0]


def test_files_are_read_as_open_reads_them(tmp_path: Path) -> None:
    for size in (0, 1, 4095, 4096, 70000):
        path = tmp_path / f"f{size}"
        path.write_bytes(bytes(i % 251 for i in range(size)))
        stamp, data = config_file.read_config_bytes(str(path), DEFAULT_LIMITS, None)
        st = os.stat(path)
        assert data == path.read_bytes()
        assert stamp == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    for missing in (tmp_path / "missing", tmp_path):  # absent, a directory
        with pytest.raises(OSError) as caught:
            open(missing, "rb").read()  # noqa: SIM115
        with pytest.raises(type(caught.value)) as ours:
            config_file.read_config_bytes(str(missing), DEFAULT_LIMITS, None)
        assert (ours.value.errno, ours.value.strerror) == (
            caught.value.errno,
            caught.value.strerror,
        )


@pytest.mark.parametrize(
    "args",
    [
        ("10.0.0.1", (), Locality(), 1, ()),
        ("fd00::1", (("a", "1"), ("b", "2")), Locality("r", "z", "s"), 7, (("http", 8080),)),
        ("10.0.0.2", (("version", "v1"),), Locality("r"), 2**31 - 1, ()),
    ],
)
def test_made_endpoints_equal_constructed_ones(args: tuple[Any, ...]) -> None:
    """``make_endpoint`` sets the slots the dataclass's ``__init__`` sets, and the same
    hash (translation keys hash endpoints: a different hash would split equal keys)."""
    made, built = make_endpoint(*args), Endpoint(*args)
    assert made == built and repr(made) == repr(built)
    assert hash(made) == hash(built) and made.healthy
    assert made != Endpoint(*args, healthy=False)


def test_label_pairs_are_sorted_and_remembered_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A label mapping's pairs are sorted whatever order they were written in, also when
    an equal mapping in another order was read before; the memo keeps at most its bound
    of entries and no long label text."""
    memo: dict[Any, Any] = {}
    monkeypatch.setattr(plain_readers, "_LABEL_PAIRS", memo)
    monkeypatch.setattr(plain_readers, "_LABEL_PAIRS_MAX", 3)

    def labels_of(labels: dict[str, Any]) -> Any:
        found = plain_readers._plain_endpoint(
            {"address": "10.0.0.1", "labels": labels}, True, set()
        )
        return None if found is None else found.labels

    forward = labels_of({"b": "2", "a": "1"})
    assert forward == (("a", "1"), ("b", "2"))
    assert labels_of({"a": "1", "b": "2"}) == forward
    assert labels_of({"b": "2", "a": "1"}) is forward  # remembered: one tuple shared
    assert labels_of({"b": 2, "a": "1"}) is None  # types checked before the memo
    assert labels_of({"long": "x" * 300}) == (("long", "x" * 300),)
    assert len(memo) == 2  # the long mapping was not kept
    for i in range(10):
        assert labels_of({"n": str(i)}) == (("n", str(i)),)
    assert len(memo) == 3
