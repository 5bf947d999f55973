"""A cold load split over two processes (``sources.split_parse``) gives exactly the serial
load: the same mesh, problems in the same order, warnings, stamps, failed files, bytes
and log lines, whatever the files hold and whatever the child does."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.meshgen import write_mesh
from bench.rebuild import _classes
from tests.fuzzing import deadline, fuzz_settings
from tests.paths import CONFORMANCE, EXAMPLE_CONFIG
from xdsd import forked
from xdsd.errors import ConfigError
from xdsd.forked import ForkSplit, Work
from xdsd.sources import DirectoryLoader, config_file, split_parse
from xdsd.sources.config_file import FileResult, parse_config_file
from xdsd.sources.limits import ParseLimits
from xdsd.sources.listing import list_config_files
from xdsd.state import MeshState

REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0


@pytest.fixture(autouse=True)
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split from two files on (small directories split as a large one would), whatever
    else the machine runs."""
    monkeypatch.setattr(split_parse, "SPLIT_FILES", 2)
    monkeypatch.setattr(forked, "spare_core", lambda: True)


class Tampered(ForkSplit):
    """A real fork whose child's bytes are ``change(work())`` (``change`` may raise,
    kill the child...)."""

    def __init__(self, change: Callable[[bytes], bytes]) -> None:
        super().__init__(timeout=60)
        self.change = change

    def __call__(self, work: Work) -> Callable[[], bytes | None] | None:
        change = self.change
        return super().__call__(lambda: change(work()))


def outcome(loader: DirectoryLoader, changed: set[str] | None = None) -> object:
    """Everything a load leaves that must not depend on the split."""
    try:
        result = loader.load(changed)
        shown: object = (result.mesh, result.warnings, result.files)
    except ConfigError as e:
        shown = (
            [(p.path, p.line, p.field, p.message, p.severity) for p in e.problems],
            [(p.path, p.line, p.field, p.message) for p in e.warnings],
        )
    stamps = list(loader.stamps().items())
    return shown, stamps, sorted(loader._failed), loader._bytes


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str]]:
    """The log lines since the last clear (the traceback's text left out: its frames
    name the process that ran the parse)."""
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    caplog.clear()
    return lines


def both(
    root: Path,
    caplog: pytest.LogCaptureFixture,
    split: ForkSplit | None = None,
    limits: ParseLimits | None = None,
) -> tuple[DirectoryLoader, DirectoryLoader]:
    """A serial and a split loader of ``root``, each loaded once; asserts they agree."""
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="xdsd")
    serial = DirectoryLoader(str(root), limits=limits or ParseLimits())
    alone = outcome(serial)
    alone_log = logged(caplog)
    split_loader = DirectoryLoader(str(root), limits=limits or ParseLimits())
    split_loader.split = split or ForkSplit(timeout=60)
    together = outcome(split_loader)
    assert together == alone
    assert logged(caplog) == alone_log
    assert split_loader.last_split is not None
    return serial, split_loader


def test_a_generated_mesh_loads_the_same_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_mesh(tmp_path, 60, endpoints=4, ports=5)
    serial, split = both(config, caplog)
    assert split.last_split == (int(120 * split_parse.CHILD_SHARE), 0)  # nothing redone
    # equal objects with equal hashes, kept by the same paths in the same order
    for (path, a), (other, b) in zip(serial._files.items(), split._files.items(), strict=True):
        assert path == other
        assert a == b
        for (x, ox), (y, oy) in zip(a.resources, b.resources, strict=True):
            assert hash(x) == hash(y) and (ox.path, ox.line) == (oy.path, oy.line)
            assert x.origin == y.origin and repr(x) == repr(y)
            for ex, ey in zip(
                getattr(x, "endpoints", ()), getattr(y, "endpoints", ()), strict=True
            ):
                assert hash(ex) == hash(ey)


def test_the_example_config_loads_the_same_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    _, split = both(config, caplog)
    assert split.last_split is not None and split.last_split[1] == 0


def conformance_directories() -> list[Path]:
    return sorted({p.parent for p in CONFORMANCE.rglob("*.yaml")})


@pytest.mark.parametrize("directory", conformance_directories(), ids=str)
def test_conformance_inputs_load_the_same_split(
    directory: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each directory of conformance inputs, over the example config (errors, duplicates
    and warnings included: they must come out the same, in the same order)."""
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    shutil.copytree(directory, config / "inputs", ignore=shutil.ignore_patterns("LICENSE*"))
    both(config, caplog)


def test_every_conformance_file_s_result_comes_back_equal() -> None:
    """Every model class the conformance inputs make survives the bytes: equal, with
    equal hashes and equal origins (which equality does not compare)."""
    files = sorted(
        p for p in CONFORMANCE.rglob("*") if p.suffix in (".yaml", ".yml", ".json", ".toml")
    )
    files += sorted(p for p in EXAMPLE_CONFIG.rglob("*") if p.is_file())
    paths = tuple(str(p) for p in files)
    results = [parse_config_file(str(CONFORMANCE), p) for p in paths]
    clean = [r if not r.problems else None for r in results]
    assert sum(r is not None for r in clean) > 50
    back = split_parse.decode(split_parse.encode(paths, clean), paths)
    assert back is not None
    for a, b in zip(clean, back, strict=True):
        assert a == b
        if a is not None and b is not None:
            assert repr(a) == repr(b)
            for (x, ox), (y, oy) in zip(a.resources, b.resources, strict=True):
                assert hash(x) == hash(y) and str(ox) == str(oy)
                assert str(getattr(x, "origin", "")) == str(getattr(y, "origin", ""))


def broken_directory(root: Path) -> Path:
    """A directory with every kind of bad file among good ones."""
    config = root / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    bad = config / "zz"
    bad.mkdir()
    (bad / "a-syntax.yaml").write_text("kind: Service\nname: [unclosed\n")
    (bad / "b-syntax.toml").write_text('kind = "Service"\nname = \n')
    (bad / "c-large.yaml").write_text("# " + "x" * 5000 + "\n")
    (bad / "d-dir.yaml").mkdir()
    os.mkfifo(bad / "e-fifo.yaml")
    (bad / "f-dangling.yaml").symlink_to(bad / "nowhere.yaml")
    (bad / "g-loop.yaml").symlink_to(bad / "g-loop.yaml")
    (bad / "h-warning.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: u}\nspec: {}\n"
    )
    (bad / "i-field.yaml").write_text(
        "apiVersion: xdsd.io/v1\nkind: Service\nmetadata: {name: odd}\nspec:\n"
        "  ports: [{number: 80, protocol: HTTP}]\n  bogus: 1\n"
    )
    for i in range(6):
        (bad / f"0-good-{i}.yaml").write_text(
            f"apiVersion: xdsd.io/v1\nkind: Service\nmetadata: {{name: extra-{i}}}\nspec:\n"
            f"  ports: [{{number: 80, protocol: HTTP}}]\n  endpoints: [{{address: 10.9.0.{i + 1}}}]\n"
        )
    return config


def test_broken_files_give_the_same_problems_in_the_same_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = broken_directory(tmp_path)
    _, split = both(config, caplog, limits=ParseLimits(max_file_bytes=4096))
    assert split.last_split is not None and split.last_split[1] > 0  # the bad ones redone


@pytest.mark.parametrize("spare", [0, 300, 2000])
def test_over_max_config_bytes_the_same_files_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spare: int
) -> None:
    """The child reads without the budget: the parent charges its files in order and
    reads again (refusing) the ones beyond it, as the serial load does."""
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    total = sum(os.stat(p).st_size for p in list_config_files(str(config), []))
    largest = max(os.stat(p).st_size for p in list_config_files(str(config), []))
    limits = ParseLimits(max_config_bytes=total - largest - spare)
    _, split = both(config, caplog, limits=limits)
    assert split.last_split is not None and split.last_split[1] > 0
    limits = ParseLimits(max_config_bytes=total)  # just enough: nothing refused
    _, split = both(config, caplog, limits=limits)
    assert split.last_split is not None and split.last_split[1] == 0


def test_an_internal_error_in_the_child_s_share_is_logged_by_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    last = list_config_files(str(config), [])[-1]  # in the child's share
    parse = config_file.parse_document

    def crash(doc: object, *args: object, **kwargs: bool) -> object:
        if getattr(doc, "path", "") == last:
            raise RecursionError("maximum recursion depth exceeded")
        return parse(doc, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(config_file, "parse_document", crash)
    both(config, caplog)
    split = DirectoryLoader(str(config))
    split.split = ForkSplit(timeout=60)
    caplog.clear()
    with pytest.raises(ConfigError):
        split.load()
    assert [r.getMessage() for r in caplog.records] == [f"internal error reading {last}"]
    assert split.last_split is not None and split.last_split[1] == 1


def _raise(data: bytes) -> bytes:
    raise RuntimeError("the child fails")


def _killed(data: bytes) -> bytes:
    os.kill(os.getpid(), 9)
    return data


def _results(data: bytes) -> tuple[tuple[str, ...], list[FileResult | None]]:
    """What ``encode`` wrote (past its digest)."""
    paths, results = pickle.loads(data[split_parse._DIGEST :])
    return paths, results


def _other_paths(data: bytes) -> bytes:
    paths, results = _results(data)
    return split_parse.encode(tuple(reversed(paths)), list(reversed(results)))


def _fewer(data: bytes) -> bytes:
    paths, results = _results(data)
    return split_parse.encode(paths[:-1], results[:-1])


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x5A]) + data[middle + 1 :]


def _forbidden_global(data: bytes) -> bytes:
    """A pickle naming a global outside the model, with a right digest."""
    raw = pickle.dumps((os.system, []))
    return hashlib.blake2b(raw, digest_size=split_parse._DIGEST).digest() + raw


def _digest_of_other_bytes(data: bytes) -> bytes:
    """The pickle intact, its digest not its own."""
    return bytes(split_parse._DIGEST) + data[split_parse._DIGEST :]


def _not_results(data: bytes) -> bytes:
    paths, results = _results(data)
    return split_parse.encode(paths, [("not", "a", "result")] * len(results))  # type: ignore[list-item]


CHILDREN: dict[str, Callable[[bytes], bytes]] = {
    "raises": _raise,
    "killed": _killed,
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "one byte short": lambda data: data[:-1],
    "garbled": _flip,
    "garbage": lambda data: os.urandom(len(data)),
    "other paths": _other_paths,
    "fewer results": _fewer,
    "a forbidden global": _forbidden_global,
    "a wrong digest": _digest_of_other_bytes,
    "the pickle alone": lambda data: data[split_parse._DIGEST :],
    "not results": _not_results,
}


@pytest.mark.parametrize("child", sorted(CHILDREN))
def test_whatever_the_child_does_the_load_is_the_serial_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, child: str
) -> None:
    config = broken_directory(tmp_path)
    _, split = both(config, caplog, split=Tampered(CHILDREN[child]))
    share, redone = split.last_split or (0, 0)
    assert redone == share > 0


def test_no_child_at_all_is_the_serial_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = broken_directory(tmp_path)
    serial = DirectoryLoader(str(config))
    split = DirectoryLoader(str(config))
    split.split = lambda work: None
    assert outcome(split) == outcome(serial)
    assert split.last_split is None


def test_incremental_loads_after_a_split_load_are_the_serial_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_mesh(tmp_path, 30, endpoints=3, ports=4)
    shutil.copytree(EXAMPLE_CONFIG / "services", config / "example")
    serial, split = both(config, caplog)
    services = config / "services"
    first, second = services / "svc-00001.toml", services / "svc-00002.toml"
    extra = config / "extra.yaml"
    steps: list[Callable[[], set[str] | None]] = [
        lambda: (first.write_text(first.read_text().replace("10.0.", "10.7.")), {str(first)})[1],
        lambda: (extra.write_text("kind: Service\nname: [\n"), {str(extra)})[1],
        lambda: (
            extra.write_text(
                "apiVersion: xdsd.io/v1\nkind: Service\nmetadata: {name: extra}\nspec:\n"
                "  ports: [{number: 80, protocol: HTTP}]\n  endpoints: [{address: 10.9.0.9}]\n"
            ),
            None,
        )[1],
        lambda: (second.unlink(), {str(second)})[1],
        lambda: (first.write_text(first.read_text().replace("10.7.", "10.8.")), None)[1],
    ]
    for step in steps:
        changed = step()
        assert outcome(split, changed) == outcome(serial, changed)
        fresh = DirectoryLoader(str(config))
        assert outcome(split, set()) == outcome(fresh)  # and as a cold load


@pytest.mark.skipif(not ROOT, reason="needs root to run the loader as nobody")
def test_unreadable_files_give_the_same_problems(tmp_path: Path) -> None:
    """As a user who may not read some files (root reads everything)."""
    config = Path(shutil.copytree(EXAMPLE_CONFIG, Path("/tmp") / f"xdsd-split-{os.getpid()}"))
    try:
        files = list_config_files(str(config), [])
        for path in (files[1], files[-1], files[-2]):
            os.chmod(path, 0)
        for path in [config, *config.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        script = textwrap.dedent(f"""
            import json
            from xdsd.errors import ConfigError
            from xdsd.forked import ForkSplit
            from xdsd.sources import DirectoryLoader, split_parse
            split_parse.SPLIT_FILES = 2
            import xdsd.forked
            xdsd.forked.spare_core = lambda: True
            out = []
            for split in (None, ForkSplit(timeout=60)):
                loader = DirectoryLoader({str(config)!r})
                loader.split = split
                try:
                    loader.load()
                    out.append([])
                except ConfigError as e:
                    out.append([str(p) for p in e.problems])
                out.append([list(loader.stamps()), sorted(loader._failed), loader._bytes])
                out.append(loader.last_split)
            print(json.dumps(out))
        """)
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        done = subprocess.run(
            [*argv, sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        serial_problems, serial_state, _, split_problems, split_state, split_info = json.loads(
            done.stdout
        )
        assert len(serial_problems) == 3 and all("EACCES" in p for p in serial_problems)
        assert (split_problems, split_state) == (serial_problems, serial_state)
        assert split_info[1] >= 2  # the child's unreadable files, read again here
    finally:
        shutil.rmtree(config)


def test_the_daemon_s_state_with_a_split_publishes_the_same_snapshot(tmp_path: Path) -> None:
    """``MeshState`` hands its split to the loader for its exclusive loads: the same
    snapshot (resources and versions) as without."""
    config = write_mesh(tmp_path, 40, endpoints=3, ports=4)
    node = _classes()[0]
    serial = MeshState(str(config))
    assert serial.reload()
    split = MeshState(str(config), split=ForkSplit(timeout=60))
    assert split.reload()
    assert split._loader.last_split is not None and split._loader.last_split[1] == 0
    one, other = serial.snapshot(node), split.snapshot(node)
    assert one is not None and other is not None
    assert one.versions == other.versions and one == other


def _sample_encoding() -> tuple[tuple[str, ...], bytes]:
    """The paths and the bytes of a child's share of the example config."""
    paths = tuple(list_config_files(str(EXAMPLE_CONFIG), []))
    results = [parse_config_file(str(EXAMPLE_CONFIG), p) for p in paths]
    return paths, split_parse.encode(paths, [r if not r.problems else None for r in results])


_SAMPLE = _sample_encoding()


@fuzz_settings(scale=3)
@given(
    edits=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 1 << 30)),
)
def test_fuzz_decode_of_changed_child_bytes_never_raises(
    edits: list[tuple[int, int]], cut: int | None
) -> None:
    """Whatever the pickle says (its digest made right, as a child could only by
    pickling it), ``decode`` gives None or exactly one plain result or None per path."""
    paths, data = _SAMPLE
    raw = bytearray(data[split_parse._DIGEST :])
    for at, value in edits:
        raw[at % len(raw)] = value
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    digest = hashlib.blake2b(bytes(raw), digest_size=split_parse._DIGEST).digest()
    with deadline("split_parse"):
        back = split_parse.decode(digest + bytes(raw), paths)
    if back is not None:
        assert len(back) == len(paths)
        assert all(r is None or (type(r) is FileResult and not r.problems) for r in back)
    if not edits and cut is None:
        assert back is not None


def test_a_split_build_leaves_no_cyclic_garbage(tmp_path: Path) -> None:
    """``MeshState`` freezes a build's survivors unwalked (``state._building``): a split
    load (its closures, pickler, unpickler, the remade objects) makes no cycles either."""
    config = write_mesh(tmp_path, 20, endpoints=2, ports=3)
    was_enabled = gc.isenabled()
    gc.disable()
    gc.unfreeze()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        state = MeshState(str(config), split=ForkSplit(timeout=60))
        assert state.reload()
        assert state._loader.last_split is not None
        gc.unfreeze()
        gc.collect()
        assert sorted({f"{type(o).__module__}.{type(o).__name__}" for o in gc.garbage}) == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_the_child_reads_nothing_beyond_the_budget_left_at_the_fork(tmp_path: Path) -> None:
    """A hostile directory of large files costs the child no more than the serial load:
    a file beyond what was left of ``max_config_bytes`` when the child was made is not
    read there (it comes back as None, for the parent to charge and refuse in order)."""
    config = write_mesh(tmp_path, 20, endpoints=4, ports=2)
    paths = list_config_files(str(config), [])
    sizes = [os.stat(p).st_size for p in paths]
    read: list[str] = []
    real = split_parse.parse_config_file

    def counting(root: str, path: str, **kw: object) -> FileResult:
        entry = real(root, path, **kw)  # type: ignore[arg-type]
        if not entry.problems:
            read.append(path)
        return entry

    left = sum(sizes[:5]) + sizes[5] // 2  # room for five files and half of the sixth
    split_parse.parse_config_file = counting  # type: ignore[assignment]
    try:
        data = split_parse.parse_share(str(config), paths, ParseLimits(), left)
    finally:
        split_parse.parse_config_file = real  # type: ignore[assignment]
    results = split_parse.decode(data, paths)
    assert results is not None
    assert read == paths[:5]
    assert [r is not None for r in results] == [True] * 5 + [False] * (len(paths) - 5)


def test_a_directory_beyond_the_budget_splits_to_the_serial_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_mesh(tmp_path, 30, endpoints=4, ports=2)
    total = sum(os.stat(p).st_size for p in list_config_files(str(config), []))
    for share in (0.2, 0.5, 0.9):
        both(config, caplog, limits=ParseLimits(max_config_bytes=int(total * share)))


def test_decode_never_raises_for_a_half_made_object() -> None:
    """A pickle of an allowed class whose slots were never set (``copyreg.__newobj__``)
    where a result's problems belong: None, not an exception from using it."""
    import copyreg
    import io

    from xdsd.model import gateway_api

    class Fake:
        def __reduce__(self) -> tuple[object, ...]:
            return (copyreg.__newobj__, (Fake,))

    Fake.__module__, Fake.__qualname__ = gateway_api.__name__, "GatewayAPI"
    entry = split_parse._file_result((1, 2, 3, 4, 5), (), (), Fake())  # type: ignore[arg-type]
    real = gateway_api.GatewayAPI
    gateway_api.GatewayAPI = Fake  # type: ignore[misc,assignment]
    try:
        out = io.BytesIO()
        split_parse._Pickler(out, pickle.HIGHEST_PROTOCOL).dump((("p",), [entry]))
    finally:
        gateway_api.GatewayAPI = real  # type: ignore[misc]
    raw = out.getvalue()
    data = hashlib.blake2b(raw, digest_size=16).digest() + raw
    assert split_parse.decode(data, ["p"]) is None
