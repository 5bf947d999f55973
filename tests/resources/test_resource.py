"""``Resource``: the digest and token are content hashes (pinned values: versions must
not change across releases, restarts or workers), and a resource made through each
constructor is the same value as the dataclass built field by field."""

from __future__ import annotations

import hashlib

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from xdsd.resources import ENDPOINT, Resource, content_hash, encode, token_of


def test_digest_and_token_are_pinned_hashes() -> None:
    """The very values every earlier release computed: 16 hex digits of SHA-256 of the
    payload, and the first 8 bytes (big-endian) of SHA-256 of ``name NUL digest``."""
    payload = b"\x0a\x01c"
    digest = hashlib.sha256(payload).hexdigest()[:16]
    assert content_hash(payload) == digest
    for name in ("c", "outbound|9080|v1|reviews.default.svc.cluster.local", "é" * 40, ""):
        whole = hashlib.sha256(f"{name}\0{digest}".encode()).digest()
        assert token_of(name, digest) == int.from_bytes(whole[:8], "big")
    assert content_hash(b"") == "e3b0c44298fc1c14"
    assert token_of("a", "e3b0c44298fc1c14") == int.from_bytes(
        hashlib.sha256(b"a\0e3b0c44298fc1c14").digest()[:8], "big"
    )


@pytest.mark.parametrize("name", ["c", "outbound|80||s.default.svc.cluster.local", "é"])
def test_every_constructor_makes_the_dataclass_value(name: str) -> None:
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    payload = encode(message)
    digest = content_hash(payload)
    plain = Resource(name, ENDPOINT, None, payload, digest)  # __post_init__: the token
    made = [
        Resource.of(name, message),
        Resource.encoded(name, ENDPOINT, payload, ()),
        Resource.restored(name, ENDPOINT, payload, digest, (), token_of(name, digest)),
    ]
    for r in made:
        assert type(r) is Resource
        assert r == plain and hash(r) == hash(plain)
        assert (r.name, r.type_url, r.payload, r.digest, r.references, r.token) == (
            plain.name,
            plain.type_url,
            plain.payload,
            plain.digest,
            plain.references,
            plain.token,
        )
        assert r.token == token_of(name, digest)
        assert r.message == message
        with pytest.raises(AttributeError):
            r.name = "other"  # type: ignore[misc]
