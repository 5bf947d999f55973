"""Fuzzing the restart cache's reader (``BuildCache.read``): any bytes as the cache file,
and any header value, section (``build_cache.SECTIONS``: the binary tables of format 3)
or byte carrying a valid HMAC (what only a bug in xdsd could write), give a reason or a
build whose every class is consistent, never an exception."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.test_restart_cache import CLASSES, FINGERPRINT, capture, loaded_state, write_config
from xdsd import build_cache
from xdsd.build_cache import BuildCache, CachedBuild


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BuildCache, bytes]]:
    root = tmp_path_factory.mktemp("restart-cache")
    config = write_config(root)
    state = loaded_state(config)
    cache = BuildCache(str(root / "state"))
    assert cache.write(capture(state, config))
    yield cache, Path(cache.path).read_bytes()


def _key(cache: BuildCache) -> bytes:
    with open(os.path.join(cache.directory, build_cache.KEY_FILE), "rb") as fh:
        return fh.read()


def _signed(cache: BuildCache, body: bytes) -> bytes:
    return body + hmac.new(_key(cache), body, hashlib.sha256).digest()


def _read(cache: BuildCache, data: bytes) -> None:
    Path(cache.path).write_bytes(data)
    found = cache.read(FINGERPRINT)
    if isinstance(found, CachedBuild):
        for snapshot in found.classes.values():
            snapshot.check_consistency(supplied={(build_cache.SECRET, "default")})
    else:
        assert isinstance(found, str) and found


@given(data=st.binary(max_size=4000))
@fuzz_settings()
def test_any_bytes_are_refused(genuine: tuple[BuildCache, bytes], data: bytes) -> None:
    cache, _ = genuine
    with deadline("restart_cache_bytes"):
        _read(cache, data)
        _read(cache, build_cache.MAGIC + data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:6]):
            out += _paths(v, (*at, i))
    return out


@given(data=st.data())
@fuzz_settings()
def test_signed_but_mutated_header_is_refused_or_consistent(
    genuine: tuple[BuildCache, bytes], data: st.DataObject
) -> None:
    """The genuine cache with one value of its header replaced by any JSON value, re-signed
    with the key: the reader's own checks (types, counts, digests, versions, consistency)
    decide, without an exception."""
    cache, original = genuine
    start = len(build_cache.MAGIC)
    (length,) = struct.unpack_from(">Q", original, start)
    header = json.loads(original[start + 8 : start + 8 + length])
    blob = original[start + 8 + length : -32]
    path = data.draw(st.sampled_from(_paths(header)[1:]))
    value = data.draw(JSON)
    target = header
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    head = json.dumps(header).encode()
    body = build_cache.MAGIC + struct.pack(">Q", len(head)) + head + blob
    with deadline("restart_cache_header"):
        _read(cache, _signed(cache, body))


@given(data=st.data())
@fuzz_settings()
def test_signed_but_mutated_section_is_refused_or_consistent(
    genuine: tuple[BuildCache, bytes], data: st.DataObject
) -> None:
    """One section of the genuine cache replaced by any bytes, or cut, or extended,
    re-signed: the tables' bounds checks decide."""
    cache, original = genuine
    size = len(original) - 32
    start = len(build_cache.MAGIC)
    (length,) = struct.unpack_from(">Q", original, start)
    head = original[start : start + 8 + length]
    sections = [
        bytes(s) for s in build_cache._sections(memoryview(original)[:size], start + 8 + length)
    ]
    at = data.draw(st.integers(0, len(sections) - 1))
    section = sections[at]
    how = data.draw(st.sampled_from(["replace", "cut", "extend"]))
    if how == "replace":
        sections[at] = data.draw(st.binary(max_size=64))
    elif how == "cut":
        sections[at] = section[: data.draw(st.integers(0, max(0, len(section) - 1)))]
    else:
        sections[at] = section + data.draw(st.binary(min_size=1, max_size=16))
    blob = b"".join(struct.pack(">Q", len(s)) + s for s in sections)
    with deadline("restart_cache_section"):
        _read(cache, _signed(cache, build_cache.MAGIC + head + blob))


@given(cut=st.integers(0, 10_000), flip=st.integers(0, 255))
@fuzz_settings()
def test_signed_but_mutated_bytes_are_refused_or_consistent(
    genuine: tuple[BuildCache, bytes], cut: int, flip: int
) -> None:
    cache, original = genuine
    body = bytearray(original[:-32])
    at = len(build_cache.MAGIC) + cut % (len(body) - len(build_cache.MAGIC))
    body[at] ^= flip or 1
    with deadline("restart_cache_flip"):
        _read(cache, _signed(cache, bytes(body)))


def test_the_genuine_cache_reads(genuine: tuple[BuildCache, bytes]) -> None:
    cache, original = genuine
    Path(cache.path).write_bytes(original)
    found = cache.read(FINGERPRINT)
    assert isinstance(found, CachedBuild) and set(found.classes) == set(CLASSES)
