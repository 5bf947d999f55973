"""Fuzzing ``redacted_jwks`` (what ``/debug/config_dump`` shows of a JWT provider's inline
key set, written by whoever writes the config files): for any text — JSON or not, keys
of any members, public members nested as deep as the decoder allows, and called from
deep in a handler's stack — it never raises, and no value of a member outside
``JWK_PUBLIC_MEMBERS`` appears in what it returns."""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.resources.redaction import JWK_PUBLIC_MEMBERS, REDACTED, redacted_jwks

SECRET = "s3cr3t-value-"
_MEMBERS = st.sampled_from([*sorted(JWK_PUBLIC_MEMBERS), "k", "d", "p", "q", "dp", "oth", "x-k"])
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12))
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def key_sets(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A JWKS text and the secrets put in its non-public members."""
    secrets: list[str] = []
    keys = []
    for i in range(draw(st.integers(0, 4))):
        key: dict[str, Any] = {}
        for member in draw(st.lists(_MEMBERS, max_size=6, unique=True)):
            if member in JWK_PUBLIC_MEMBERS:
                key[member] = draw(_VALUES)
            else:
                secret = f"{SECRET}{i}-{member}"
                secrets.append(secret)
                key[member] = draw(st.sampled_from([secret, [secret], {"v": secret}]))
        keys.append(key)
    document: Any = {"keys": keys}
    if draw(st.booleans()):
        depth = draw(st.integers(1, 3000))
        document["keys"].append({"n": json.loads("[" * min(depth, 900) + "]" * min(depth, 900))})
    text = json.dumps(document)
    cut = draw(st.integers(0, len(text)))
    if draw(st.integers(0, 9)) == 0:
        text = text[:cut]  # broken JSON
    if draw(st.integers(0, 9)) == 0:
        text = "[" * 5000 + "]" * 5000  # beyond the decoder
    return text, secrets


def _deep(calls: int, text: str) -> str:
    """``redacted_jwks(text)`` called ``calls`` frames down (a handler's stack)."""
    return redacted_jwks(text) if calls == 0 else _deep(calls - 1, text)


@fuzz_settings()
@given(key_sets(), st.integers(0, 150))
def test_fuzz_redacted_jwks_never_raises_nor_shows_a_secret(
    case: tuple[str, list[str]], depth: int
) -> None:
    text, secrets = case
    assert sys.getrecursionlimit() > depth + 100
    with deadline("redaction.jwks"):
        shown = _deep(depth, text)
    assert isinstance(shown, str)
    for secret in secrets:
        assert secret not in shown
    if shown != REDACTED:
        assert set(json.loads(shown)) == {"keys"}
