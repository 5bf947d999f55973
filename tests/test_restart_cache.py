"""The restart cache (``xdsd.build_cache``): what it keeps, and every way a cache that is
not the directory's current build is refused (corrupt, truncated, tampered with, another
format, version or settings, a file edited, added or removed while xdsd was down)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import pytest

from xdsd import build_cache
from xdsd.build_cache import BuildCache, CachedBuild, CacheRefused, Capture, fingerprint
from xdsd.cache.cache import SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.resources import CLUSTER, Resource, content_hash
from xdsd.state import MeshState
from xdsd.translate import NodeClass

SERVICE = """kind = "Service"
name = "{name}"

[[ports]]
name = "http"
number = 8080
protocol = "HTTP"
targetPort = 7000

[[endpoints]]
address = "{address}"
labels = {{ version = "v1" }}
"""

RULE = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"""

CLASSES = (
    NodeClass(service="reviews", labels=(("version", "v1"),), instance_ip="127.0.0.2"),
    NodeClass(service="ratings", labels=(("version", "v1"),), instance_ip="127.0.0.3"),
)
FINGERPRINT = fingerprint("test")


def write_config(root: Path) -> Path:
    config = root / "config"
    (config / "services").mkdir(parents=True)
    for i, name in enumerate(("reviews", "ratings", "details")):
        (config / "services" / f"{name}.toml").write_text(
            SERVICE.format(name=name, address=f"10.0.0.{i + 1}")
        )
    (config / "rules.yaml").write_text(RULE)
    return config


def loaded_state(config: Path) -> MeshState:
    state = MeshState(str(config))
    assert state.reload()
    for key in CLASSES:
        assert state.snapshot(key) is not None
    return state


def capture(state: MeshState, config: Path) -> Capture:
    assert state.loaded is not None
    classes = {key: snap for key in CLASSES if (snap := state.cache.get(key)) is not None}
    return Capture(
        str(config),
        FINGERPRINT,
        state.loaded.files,
        state.file_stamps(),
        state.certificate_paths,
        classes,
        len(state.loaded.mesh.services),
    )


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, MeshState, BuildCache]:
    """A config directory, its loaded state, and a restart cache written from it (whose
    hash of each file is taken long enough after its last change not to be racy)."""
    config = write_config(tmp_path)
    old = 1_600_000_000_000_000_000
    for path in config.rglob("*.*"):
        os.utime(path, ns=(old, old))
    state = loaded_state(config)
    cache = BuildCache(str(tmp_path / "state"))
    assert cache.write(capture(state, config))
    return config, state, cache


def read_ok(cache: BuildCache) -> CachedBuild:
    found = cache.read(FINGERPRINT)
    assert isinstance(found, CachedBuild), found
    return found


def test_round_trip_gives_the_same_snapshots(written: tuple[Path, MeshState, BuildCache]) -> None:
    _, state, cache = written
    found = read_ok(cache)
    assert found.check() == ""
    assert set(found.classes) == set(CLASSES)
    for key in CLASSES:
        original = state.cache.get(key)
        assert original is not None
        again = found.classes[key]
        assert dict(again.versions) == dict(original.versions)
        for type_url, bucket in original.resources.items():
            assert {n: r.payload for n, r in again.get(type_url).items()} == {
                n: r.payload for n, r in bucket.items()
            }
    assert found.services == 3
    assert "3 services, 2 classes" in found.describe()
    # the files are recorded as they were read, in the loader's order
    assert [r.path for r in found.files] == list(state.loaded.files)  # type: ignore[union-attr]
    assert os.stat(cache.path).st_mode & 0o077 == 0
    assert os.stat(os.path.join(cache.directory, build_cache.KEY_FILE)).st_mode & 0o777 == 0o600


def test_a_missing_cache_says_so(tmp_path: Path) -> None:
    assert BuildCache(str(tmp_path / "state")).read(FINGERPRINT) == "no restart cache yet"


def test_corrupt_cache_is_refused(written: tuple[Path, MeshState, BuildCache]) -> None:
    _, _, cache = written
    data = bytearray(Path(cache.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(cache.path).write_bytes(bytes(data))
    assert "integrity check fails" in str(cache.read(FINGERPRINT))


@pytest.mark.parametrize("keep", [0, 10, 40, 0.5, -1])
def test_truncated_cache_is_refused(
    written: tuple[Path, MeshState, BuildCache], keep: float
) -> None:
    _, _, cache = written
    data = Path(cache.path).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    Path(cache.path).write_bytes(data[:cut])
    why = cache.read(FINGERPRINT)
    assert isinstance(why, str)
    assert "truncated" in why or "integrity" in why


def test_other_version_or_settings_is_refused(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    _, _, cache = written
    assert "another xdsd version or under other settings" in str(cache.read(fingerprint("another")))


def test_other_format_is_refused(
    written: tuple[Path, MeshState, BuildCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, state, cache = written
    monkeypatch.setattr(build_cache, "FORMAT", 99)
    assert cache.write(capture(state, config))
    monkeypatch.undo()
    assert "another cache format" in str(cache.read(FINGERPRINT))


def test_tampered_cache_is_refused(written: tuple[Path, MeshState, BuildCache]) -> None:
    """Bytes changed by someone without the key (here: a cache written with another
    daemon's key and copied over ours; and a resource's bytes changed in place)."""
    config, state, cache = written
    other = BuildCache(os.path.join(cache.directory, "..", "other-state"))
    assert other.write(capture(state, config))
    original = Path(cache.path).read_bytes()
    Path(cache.path).write_bytes(Path(other.path).read_bytes())
    assert "integrity check fails" in str(cache.read(FINGERPRINT))
    # the address of reviews' endpoint inside the ClusterLoadAssignment bytes
    tampered = original.replace(b"10.0.0.1", b"10.6.6.6")
    assert tampered != original
    Path(cache.path).write_bytes(tampered)
    assert "integrity check fails" in str(cache.read(FINGERPRINT))


def _signed(cache: BuildCache, header: bytes, blob: bytes = b"") -> None:
    """A cache file with a valid HMAC around ``header`` and ``blob``: what only a holder
    of the key (a bug in xdsd) could write."""
    with open(os.path.join(cache.directory, build_cache.KEY_FILE), "rb") as fh:
        key = fh.read()
    body = build_cache.MAGIC + struct.pack(">Q", len(header)) + header + blob
    Path(cache.path).write_bytes(body + hmac.new(key, body, hashlib.sha256).digest())


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        b"[]",
        json.dumps({"format": build_cache.FORMAT}).encode(),
        json.dumps({"format": build_cache.FORMAT, "fingerprint": FINGERPRINT}).encode(),
        json.dumps(
            {"format": build_cache.FORMAT, "fingerprint": FINGERPRINT, "config_dir": 5}
        ).encode(),
        b"[" * 100_000,
    ],
)
def test_malformed_cache_with_a_valid_hmac_is_refused(
    written: tuple[Path, MeshState, BuildCache], header: bytes
) -> None:
    _, _, cache = written
    _signed(cache, header)
    why = cache.read(FINGERPRINT)
    assert isinstance(why, str)


def _parts(cache: BuildCache) -> tuple[dict[str, Any], list[bytes]]:
    """The header and the sections (``build_cache.SECTIONS``) of the cache file."""
    data = Path(cache.path).read_bytes()
    size = len(data) - build_cache._MAC_BYTES
    start = len(build_cache.MAGIC)
    (length,) = struct.unpack_from(">Q", data, start)
    header = json.loads(data[start + 8 : start + 8 + length])
    sections = build_cache._sections(memoryview(data)[:size], start + 8 + length)
    return header, [bytes(section) for section in sections]


def _signed_parts(cache: BuildCache, header: dict[str, Any], sections: list[bytes]) -> None:
    """A cache file of ``header`` and ``sections`` with a valid HMAC."""
    blob = b"".join(struct.pack(">Q", len(section)) + section for section in sections)
    _signed(cache, json.dumps(header).encode(), blob)


def _section(name: str) -> int:
    return build_cache.SECTIONS.index(name)


def test_the_round_trip_keeps_every_resource_whole(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    """Digests are not recomputed at start (the HMAC vouches for the bytes): the format
    itself must give every resource back with the bytes its digest names."""
    _, state, cache = written
    found = read_ok(cache)
    for key, snapshot in found.classes.items():
        original = state.cache.get(key)
        assert original is not None
        for type_url, bucket in snapshot.resources.items():
            assert list(bucket) == list(original.get(type_url))
            for name, r in bucket.items():
                assert content_hash(r.payload) == r.digest
                kept = original.get(type_url)[name]
                assert (r.payload, r.references, r.token) == (
                    kept.payload,
                    kept.references,
                    kept.token,
                )


def test_a_resource_changed_without_the_key_is_refused(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    """A resource's bytes changed in place (one bit of the last one's, and a whole
    resource swapped for another of the same length) fail the HMAC: what start relies on
    instead of recomputing 60,000 digests."""
    _, _, cache = written
    original = Path(cache.path).read_bytes()
    _, sections = _parts(cache)
    data = bytearray(original)
    data[-build_cache._MAC_BYTES - 1] ^= 0x01
    Path(cache.path).write_bytes(bytes(data))
    assert "integrity check fails" in str(cache.read(FINGERPRINT))
    payloads = sections[_section("payloads")]
    swapped = payloads[1:] + payloads[:1]
    size = len(original) - build_cache._MAC_BYTES
    Path(cache.path).write_bytes(original[: size - len(payloads)] + swapped + original[size:])
    assert "integrity check fails" in str(cache.read(FINGERPRINT))


@pytest.mark.parametrize("token", [0, 12345, (1 << 64) - 1])
def test_resource_whose_token_is_not_its_own_is_refused(
    written: tuple[Path, MeshState, BuildCache], token: int
) -> None:
    """Tokens are kept as written (not recomputed at start): one that is not the
    resource's own shows as versions that are not the sums of the class's tokens, and
    the cache is refused."""
    _, _, cache = written
    header, sections = _parts(cache)
    tokens = array("Q")
    tokens.frombytes(sections[_section("tokens")])
    assert tokens[0] != token
    tokens[0] = token
    sections[_section("tokens")] = tokens.tobytes()
    _signed_parts(cache, header, sections)
    why = cache.read(FINGERPRINT)
    assert isinstance(why, str)
    assert "versions do not match" in why


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("kinds", lambda b: b"\xff\xff" + b[2:]),  # a type index out of range
        ("lengths", lambda b: b[:-8]),  # one length short
        ("lengths", lambda b: (1 << 40).to_bytes(8, sys.byteorder) + b[8:]),  # too long
        ("names", lambda b: b + b"\0extra"),  # one name too many
        ("names", lambda b: b"\xff" + b),  # not UTF-8
        ("digests", lambda b: b[:-1]),  # one character short
        ("reference counts", lambda b: b"\x07\x00\x00\x00" + b[4:]),  # counts off
        ("members", lambda b: b + b"\xff\xff\xff\x7f"),  # an index out of range
        ("members", lambda b: b[:-4]),  # a class's resource missing
        ("members", lambda b: b + b"\x00"),  # not whole items
        ("file ids", lambda b: b[:-8]),  # a file's stamp short
        ("file paths", lambda b: b + b"\0/x.toml"),  # one path too many
        ("file digests", lambda b: b[:-1]),
    ],
)
def test_malformed_sections_with_a_valid_hmac_are_refused(
    written: tuple[Path, MeshState, BuildCache], name: str, change: Any
) -> None:
    """What only a bug in xdsd (or a holder of the key) could write: every table's
    bounds are checked, and such a cache is refused, never served or raised."""
    _, _, cache = written
    header, sections = _parts(cache)
    at = _section(name)
    sections[at] = change(sections[at])
    _signed_parts(cache, header, sections)
    why = cache.read(FINGERPRINT)
    assert isinstance(why, str) and "malformed" in why, why


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h.update(byteorder="big" if sys.byteorder == "little" else "little"),
        lambda h: h.update(resources=h["resources"] + 1),
        lambda h: h.update(references=-1),
        lambda h: h.update(common=h["common"] + 1),
        lambda h: h.update(files=h["files"] + 1),
        lambda h: h.update(types=h["types"][:2]),
        lambda h: h["classes"][0].update(added=10**9),
    ],
)
def test_a_signed_header_that_does_not_fit_its_sections_is_refused(
    written: tuple[Path, MeshState, BuildCache], change: Any
) -> None:
    _, _, cache = written
    header, sections = _parts(cache)
    change(header)
    _signed_parts(cache, header, sections)
    why = cache.read(FINGERPRINT)
    assert isinstance(why, str) and why, why


def test_a_section_missing_or_added_is_refused(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    _, _, cache = written
    header, sections = _parts(cache)
    _signed_parts(cache, header, sections[:-1])
    assert "malformed" in str(cache.read(FINGERPRINT))
    _signed_parts(cache, header, [*sections, b"more"])
    assert "malformed" in str(cache.read(FINGERPRINT))


def test_a_resource_name_with_a_nul_is_not_written(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    """Names are stored NUL-separated: a name holding NUL (no valid mesh makes one) is
    not written at all rather than written wrong; the previous cache stays."""
    config, state, cache = written
    before = Path(cache.path).read_bytes()
    key = CLASSES[0]
    snapshot = state.cache.get(key)
    assert snapshot is not None
    odd = Resource.restored("bad\0name", CLUSTER, b"", "0" * 16, (), 1)
    classes = {key: Snapshot.extend(snapshot, [odd], check=False)}
    odd_capture = Capture(
        str(config),
        FINGERPRINT,
        state.loaded.files,  # type: ignore[union-attr]
        state.file_stamps(),
        state.certificate_paths,
        classes,
        3,
    )
    assert not cache.write(odd_capture)
    assert Path(cache.path).read_bytes() == before


def test_file_edited_while_down_is_found(written: tuple[Path, MeshState, BuildCache]) -> None:
    config, _, cache = written
    path = config / "services" / "reviews.toml"
    text = path.read_text()
    path.write_text(text.replace("10.0.0.1", "10.0.0.9"))  # same size
    assert "reviews.toml changed since" in read_ok(cache).check()


def test_file_edited_with_its_times_put_back_is_found(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    """Same size, same mtime (``touch -r``, ``cp -p``): the ctime differs, so the bytes are
    hashed."""
    config, _, cache = written
    path = config / "services" / "reviews.toml"
    st = os.stat(path)
    path.write_text(path.read_text().replace("10.0.0.1", "10.0.0.9"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "reviews.toml changed since" in read_ok(cache).check()


def test_file_rewritten_with_the_same_bytes_is_accepted(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    config, _, cache = written
    path = config / "services" / "reviews.toml"
    path.write_text(path.read_text())  # new ctime and mtime, same bytes
    assert read_ok(cache).check() == ""


def test_file_added_or_removed_while_down_is_found(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    config, _, cache = written
    extra = config / "services" / "extra.toml"
    extra.write_text(SERVICE.format(name="extra", address="10.0.0.8"))
    assert "extra.toml was added since" in read_ok(cache).check()
    extra.unlink()
    assert read_ok(cache).check() == ""
    (config / "rules.yaml").unlink()
    assert "rules.yaml was removed since" in read_ok(cache).check()


def test_a_file_that_is_not_read_as_loaded_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file changed after the load read it, whose bytes as loaded were never hashed:
    the next load writes the cache, not this one (which would pair the new bytes' hash
    with the old build). One hashed by an earlier write, long enough after its last
    change, keeps that hash (of the bytes loaded), so the cache written is found stale
    at start. (Here "long enough" is made 0 s: the files were just written.)"""
    monkeypatch.setattr(build_cache, "RACY_SECONDS", 0.0)
    config = write_config(tmp_path)
    state = loaded_state(config)
    cache = BuildCache(str(tmp_path / "state"))
    assert cache.write(capture(state, config))
    (config / "services" / "reviews.toml").write_text(SERVICE.format(name="reviews", address="1"))
    fresh = BuildCache(os.path.join(cache.directory, "..", "fresh"))
    assert not fresh.write(capture(state, config))
    assert not os.path.exists(fresh.path)
    assert cache.write(capture(state, config))
    assert "reviews.toml changed size since" in read_ok(cache).check()


def test_huge_cache_is_refused(written: tuple[Path, MeshState, BuildCache]) -> None:
    config, state, cache = written
    size = os.path.getsize(cache.path)
    small = BuildCache(cache.directory, max_bytes=size - 1)
    assert "over max_restart_cache_bytes" in str(small.read(FINGERPRINT))
    assert not small.write(capture(state, config))
    assert os.path.getsize(cache.path) == size


def test_state_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CacheRefused, match="writable by group or others"):
        BuildCache(str(shared))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(CacheRefused, match="state directory"):
        BuildCache(str(not_a_dir))


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    cache = BuildCache(str(tmp_path / "state"))
    os.chmod(os.path.join(cache.directory, build_cache.KEY_FILE), 0o644)
    with pytest.raises(CacheRefused, match="mode 0600"):
        BuildCache(cache.directory)


def test_state_serves_the_cached_build_and_the_full_load_resends_nothing(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    """``MeshState.publish_cached``: a client of a cached class is answered before any
    load; the full load then publishes the same versions (no watcher called), and a
    client of another class, waiting meanwhile, gets its snapshot from the full load."""
    config, _, cache = written
    found = read_ok(cache)
    state = MeshState(str(config), SnapshotCache())
    state.publish_cached(found.classes, found.describe())
    assert state.cached
    calls: list[str] = []
    for key in CLASSES:
        assert state.cache.subscribe(key, lambda _s, k=str(key): calls.append(k)) is not None
    waiting = NodeClass(service="details", instance_ip="127.0.0.4")
    assert state.snapshot(waiting) is None  # no load yet: waits
    assert state.cache.subscribe(waiting, lambda _s: calls.append("waiting")) is None
    assert state.reload()
    assert state.cached == ""
    assert calls == ["waiting"]  # the cached classes got nothing new
    for key in CLASSES:
        assert dict(state.cache.get(key).versions) == dict(found.classes[key].versions)  # type: ignore[union-attr]


def test_state_replaces_a_cached_build_that_differs(
    written: tuple[Path, MeshState, BuildCache],
) -> None:
    """A cached build that is not what the directory holds (here: published without a
    check) is replaced by the full load as any reload: the watchers get the new one."""
    config, _, cache = written
    found = read_ok(cache)
    (config / "services" / "reviews.toml").write_text(
        SERVICE.format(name="reviews", address="10.0.0.99")
    )
    state = MeshState(str(config), SnapshotCache())
    state.publish_cached(found.classes, found.describe())
    calls: list[NodeClass] = []
    for key in CLASSES:
        state.cache.subscribe(key, lambda _s, k=key: calls.append(k))
    assert state.reload()
    assert CLASSES[0] in calls


def test_admin_says_ready_and_verifying_while_the_cached_build_is_served(tmp_path: Path) -> None:
    """``/readyz`` 200 and ``/debug/errors``' ``info`` item while the cached build is
    served before any load; neither once a load is applied."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from xdsd.admin import AdminViews
    from xdsd.admin.metrics import Metrics

    config = write_config(tmp_path)
    state = MeshState(str(config))
    views = AdminViews(state.cache, config=state, metrics=Metrics(version="t"), version="t")
    views.cached = lambda: state.cached
    views.listening = True

    async def get(path: str) -> tuple[int, object]:
        async with TestClient(TestServer(views.app())) as client:
            response = await client.get(path)
            return response.status, await response.json()

    assert asyncio.run(get("/readyz"))[0] == 503  # nothing loaded, nothing cached
    state.publish_cached({}, "3 services, 0 classes, written then")
    status, body = asyncio.run(get("/readyz"))
    assert status == 200 and body == {"ready": True}
    _, errors = asyncio.run(get("/debug/errors"))
    assert isinstance(errors, list) and errors[0]["severity"] == "info"
    assert "serving the cached build (3 services" in errors[0]["text"]
    assert state.reload()
    assert state.cached == ""
    _, errors = asyncio.run(get("/debug/errors"))
    assert not [e for e in errors if e["severity"] == "info"]  # type: ignore[union-attr]
    assert asyncio.run(get("/readyz"))[0] == 200


def test_processes_creating_the_key_at_once_agree_on_it(tmp_path: Path) -> None:
    """Workers sharing a state directory may create the key at the same moment: each
    gets the same whole 32-byte key (it is linked into place only when complete)."""
    import multiprocessing

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    context = multiprocessing.get_context("fork")
    with context.Pool(8) as pool:
        keys = pool.map(build_cache._key, [str(state / build_cache.KEY_FILE)] * 32)
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert [p.name for p in state.iterdir()] == [build_cache.KEY_FILE]


def test_a_write_after_a_cached_start_hashes_no_unchanged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted daemon adopts the hashes of the cached build it accepted: its first
    write hashes no file whose stamp is unchanged (with no racy window here, every file's
    last change is before the cache was written), and writes the same file list."""
    monkeypatch.setattr(build_cache, "RACY_SECONDS", 0.0)
    config = write_config(tmp_path)
    state = loaded_state(config)
    assert BuildCache(str(tmp_path / "state")).write(capture(state, config))
    restarted = BuildCache(str(tmp_path / "state"))
    found = read_ok(restarted)
    assert found.check() == ""
    restarted.adopt(found)
    hashed: list[str] = []
    real = build_cache._hash_file

    def counting(path: str) -> Any:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(build_cache, "_hash_file", counting)
    assert restarted.write(capture(state, config))
    assert hashed == []
    assert read_ok(restarted).files == found.files


def test_the_daemon_is_imported_without_the_parsers_and_the_translation(tmp_path: Path) -> None:
    """A start from the restart cache serves before the first load: ``xdsd serve``'s
    modules (the daemon, the command line) import no parser, yaml, toml, translation
    builder, cryptography or the resources' message classes; the first load and
    translation import them."""
    code = (
        "import sys, xdsd.cli, xdsd.app\n"
        "heavy = ('xdsd.sources.loader', 'xdsd.sources.documents', 'xdsd.translate.mesh', "
        "'xdsd.translate.static', 'yaml', 'toml_rs', 'cryptography', 'xdsd.certificate', "
        "'envoy.config.cluster.v3.cluster_pb2')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from xdsd.state import MeshState\n"
        "state = MeshState(sys.argv[1])\n"
        "assert state.certificate_paths == frozenset()\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "assert state.reload()\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    config = write_config(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.splitlines()
    assert out[0] == "[]" and out[1] == "[]", out
    assert "xdsd.sources.loader" in out[2] and "xdsd.translate.mesh" in out[2], out
    assert "envoy.config.cluster.v3.cluster_pb2" in out[2], out
