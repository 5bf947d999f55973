"""``memo``: keys derived from the build and its arguments, and checking mode."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.translate.meshes import bookinfo
from xdsd.errors import Problem, TranslationError
from xdsd.resources import LISTENER, Resource
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate import listeners as listeners_module
from xdsd.translate.memo import CHECK_MEMO_ENV, Memo, Selections, StaleMemoError, fingerprint

#: What ``leaky`` reads besides its arguments (the bug checking mode exists to find).
OUTSIDE = {"suffix": "a"}
CALLS: list[str] = []


def leaky(name: str) -> str:
    CALLS.append(name)
    return name + OUTSIDE["suffix"]


def pure(name: str, number: int) -> tuple[str, int]:
    CALLS.append(name)
    return (name, number)


def failing(name: str) -> list[Resource]:
    raise TranslationError([Problem("f.toml", 1, "name", f"no {name}")])


def test_the_key_is_the_build_and_its_arguments() -> None:
    CALLS.clear()
    memo = Memo()
    first = memo.get(pure, "a", 1)
    assert memo.get(pure, "a", 1) is first
    assert memo.get(pure, "a", 2) == ("a", 2)
    assert memo.get(leaky, "a") == "aa"  # another build: another key
    assert CALLS == ["a", "a", "a"]


def test_the_next_memo_reuses_what_the_previous_built() -> None:
    CALLS.clear()
    first = Memo()
    value = first.get(pure, "x", 1)
    second = Memo(previous=first)
    assert second.get(pure, "x", 1) is value
    assert CALLS == ["x"]
    # only what the previous one built or reused is handed on, never a chain
    third = Memo(previous=Memo(previous=second))
    third.get(pure, "x", 1)
    assert CALLS == ["x", "x"]


@pytest.mark.parametrize("check", [False, True])
def test_checking_mode_finds_a_build_that_reads_outside_its_arguments(check: bool) -> None:
    OUTSIDE["suffix"] = "a"
    first = Memo()
    assert first.get(leaky, "n") == "na"
    OUTSIDE["suffix"] = "b"
    try:
        second = Memo(previous=first, check=check)
        if check:
            with pytest.raises(StaleMemoError, match="leaky"):
                second.get(leaky, "n")
        else:  # what a wrong key does unchecked: the stale value, silently
            assert second.get(leaky, "n") == "na"
    finally:
        OUTSIDE["suffix"] = "a"


def test_builds_must_be_module_level_functions() -> None:
    memo = Memo()
    with pytest.raises(TypeError, match="module-level"):
        memo.get(lambda: 1)

    def local() -> int:
        return 1

    with pytest.raises(TypeError, match="module-level"):
        memo.get(local)
    with pytest.raises(TypeError, match="module-level"):
        memo.get(Memo().get, pure, "a", 1)


def test_arguments_must_be_hashable() -> None:
    with pytest.raises(TypeError):
        Memo().get(pure, ["a"], 1)  # type: ignore[arg-type]


def test_selections_keep_their_error_and_check() -> None:
    selections = Selections(check=True)
    for _ in range(2):
        with pytest.raises(TranslationError) as err:
            selections.get(failing, "x")
        assert err.value.problems[0].message == "no x"

    state = {"n": 0}

    def grows(name: str) -> list[Resource]:
        state["n"] += 1
        return [Resource.of(f"{name}{state['n']}", _listener(f"{name}{state['n']}"))]

    assert [r.name for r in selections.get(grows, "l")] == ["l1"]
    with pytest.raises(StaleMemoError):
        selections.get(grows, "l")


def _listener(name: str) -> Any:
    from envoy.config.listener.v3 import listener_pb2

    return listener_pb2.Listener(name=name)


def test_fingerprint_compares_resources_by_digest() -> None:
    one, same = Resource.of("l", _listener("l")), Resource.of("l", _listener("l"))
    assert one is not same
    assert fingerprint((one, None)) == fingerprint((same, None))
    assert fingerprint(one) != fingerprint(Resource.of("m", _listener("m")))


def test_the_translate_tests_run_in_checking_mode() -> None:
    assert os.environ.get(CHECK_MEMO_ENV) == "1"


def test_checking_mode_catches_a_stale_resource_across_translations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener builder whose output changes while its inputs do not (here: a module
    constant patched between two translations) is caught on the reuse."""
    node = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
    mesh = bookinfo()
    first = MeshTranslation(mesh)
    first.snapshot_for(node)
    monkeypatch.setattr(listeners_module, "HTTP_PROXY_LISTENER", "renamed_http_proxy")
    with pytest.raises(StaleMemoError, match="http_proxy_listener"):
        MeshTranslation(mesh, previous=first).snapshot_for(node)
    unchecked = MeshTranslation(mesh, previous=first, check_memo=False).snapshot_for(node)
    assert "outbound_http_proxy" in unchecked.get(LISTENER)


def test_keys_of_one_hash_keep_their_own_values() -> None:
    """CPython hashes -1 and -2 alike: two keys of one hash are told apart by equality,
    in this translation's memo and in the previous one's."""
    assert hash(("x", -1)) == hash(("x", -2))
    first = Memo()
    assert first.get(pure, "x", -1) == ("x", -1)
    assert first.get(pure, "x", -2) == ("x", -2)
    assert first.get(pure, "x", -1) == ("x", -1)
    later = Memo(previous=first)
    one = later.get(pure, "x", -2)
    assert one == ("x", -2) and one is first.get(pure, "x", -2)
    assert later.get(pure, "x", -1) is first.get(pure, "x", -1)
    assert later.get(pure, "y", -1) == ("y", -1)
