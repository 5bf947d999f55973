"""Fuzzing the ``authorization`` metadata a stream proves itself with
(``transports.identity.bearer_token``): any values give a token or a clean
UNAUTHENTICATED refusal that never repeats the value, never another exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.transports.identity import MAX_TOKEN_BYTES, bearer_token
from xdsd.transports.limits import Refused

values = st.one_of(
    st.text(max_size=64),
    st.binary(max_size=64),
    st.builds(lambda t: "Bearer " + t, st.text(max_size=64)),
    st.builds(lambda n: "Bearer " + "x" * n, st.integers(MAX_TOKEN_BYTES - 8, MAX_TOKEN_BYTES + 8)),
)


@fuzz_settings()
@given(st.lists(values, max_size=3))
def test_authorization_metadata_gives_a_token_or_a_clean_refusal(
    metadata: list[str | bytes],
) -> None:
    with deadline("transport.identity"):
        try:
            token = bearer_token(metadata)
        except Refused as e:
            assert (e.code, e.reason) == ("UNAUTHENTICATED", "token_malformed")
            for value in metadata:
                text = value if isinstance(value, str) else value.decode("latin-1")
                if len(text) > 12:
                    assert text not in e.message
            return
        if token is None:
            assert metadata == []
        else:
            assert len(metadata) == 1 and token and token == token.strip()
