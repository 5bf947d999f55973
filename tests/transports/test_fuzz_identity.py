"""Fuzzing the ``authorization`` metadata a stream proves itself with
(``transports.identity.bearer_token``): any values give a token or a clean
UNAUTHENTICATED refusal that never repeats the value, never another exception. And any
sequence of REST polls (clients, claims, certificates, pauses) against the pollers' leases
(``transports.rest_identity.PolledIdentities``): one open lease per client, for exactly
the claim and credential of its last poll, never more than the bound, none left once
every client is silent."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.cache.cache import ClientIdentity
from xdsd.cache.snapshot import Snapshot
from xdsd.resources import SECRET, Resource
from xdsd.transports.identity import MAX_TOKEN_BYTES, Credential, bearer_token
from xdsd.transports.limits import NodeIdentity, Refused
from xdsd.transports.rest_identity import PolledIdentities

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


class _FakeLease:
    """A lease that records what it was admitted for and whether it is open."""

    def __init__(self, owner: _FakeProvider, node: NodeIdentity, credential: Credential) -> None:
        self.owner, self.node, self.credential = owner, node, credential
        self.identity = ClientIdentity(node.service, "1", NOW, NOW, "certificate", "", 1)

    def resources(self) -> tuple[Resource, ...]:
        return ()

    def listen(self, listener: object) -> None:
        raise AssertionError("a polled lease has no listener")

    def refresh(self) -> None:
        assert self in self.owner.open

    def close(self) -> None:
        self.owner.open.discard(self)


class _FakeProvider:
    enabled = True
    issued_names = frozenset({"default"})

    def __init__(self) -> None:
        self.open: set[_FakeLease] = set()

    def admit(
        self, node: NodeIdentity, credential: Credential | None, *, polled: bool = False
    ) -> _FakeLease:
        assert polled and credential is not None
        lease = _FakeLease(self, node, credential)
        self.open.add(lease)
        return lease


NOW = datetime(2030, 1, 1, tzinfo=UTC)
polls = st.lists(
    st.tuples(
        st.integers(0, 5),  # client
        st.sampled_from(["web", "db"]),  # service claimed
        st.sampled_from([("spiffe://a",), ("spiffe://b",), ()]),  # SANs
        st.floats(0, 40),  # seconds since the previous poll
    ),
    max_size=40,
)


@fuzz_settings()
@given(polls, st.integers(1, 4))
def test_polled_leases_are_one_per_client_bounded_and_never_serve_another_claim(
    steps: list[tuple[int, str, tuple[str, ...], float]], bound: int
) -> None:
    with deadline("transport.rest_identity"):
        now = [0.0]
        provider = _FakeProvider()
        polled = PolledIdentities(
            provider,
            idle_timeout=30.0,
            max_leases=bound,
            clock=lambda: now[0],
        )
        base = Snapshot.build([])
        for client, service, sans, wait in steps:
            now[0] += wait
            node = NodeIdentity(f"n-{client}", service)
            credential = Credential("certificate", sans=sans)
            view, lease = polled.view(f"rest-n-{client}", node, credential, base)
            assert isinstance(lease, _FakeLease)
            assert (lease.node, lease.credential) == (node, credential)
            assert view.version(SECRET) == base.version(SECRET)  # no resources laid over
            assert len(polled) <= bound
            held = {polled.lease(f"rest-n-{c}") for c in range(6)} - {None}
            assert held == provider.open  # every lease open is held, and no other
        now[0] += 31  # clear past the window (no float rounding at its edge)
        polled.expire()
        assert not provider.open and len(polled) == 0
