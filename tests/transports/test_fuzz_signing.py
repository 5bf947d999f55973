"""Fuzzing the signing method's inputs: any bytes as the request message and any
``authorization`` values either parse or are a CredentialRefused, never another error."""

from __future__ import annotations

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.errors import CredentialRefused
from xdsd.transports.signing import parse_request, request_token

FIELD_NAMES = st.sampled_from(["namespace", "service", "csr", "extra", ""])
VALUES = st.one_of(
    st.text(max_size=40), st.integers(), st.booleans(), st.none(), st.lists(st.text(max_size=5))
)


@fuzz_settings()
@given(st.binary(max_size=400))
def test_fuzz_signing_request_bytes(data: bytes) -> None:
    with deadline("signing.request_bytes"):
        try:
            message = struct_pb2.Struct.FromString(data)
        except DecodeError:
            return  # the transports answer INVALID_ARGUMENT for what does not decode
        try:
            namespace, service, csr = parse_request(message)
        except CredentialRefused as e:
            assert e.code == "INVALID_ARGUMENT"
            return
        assert namespace and service and (csr is None or csr)
        assert (csr is None) == ("csr" not in message.fields)  # a check only without csr


@fuzz_settings()
@given(st.dictionaries(FIELD_NAMES, VALUES, max_size=5))
def test_fuzz_signing_request_fields(fields: dict[str, object]) -> None:
    with deadline("signing.request_fields"):
        message = struct_pb2.Struct()
        message.update(fields)
        try:
            parse_request(message)
        except CredentialRefused as e:
            assert e.code == "INVALID_ARGUMENT"


@fuzz_settings()
@given(st.lists(st.one_of(st.text(max_size=60), st.binary(max_size=60)), max_size=3))
def test_fuzz_authorization_metadata(values: list[str | bytes]) -> None:
    with deadline("signing.authorization"):
        try:
            token = request_token(values)
        except CredentialRefused as e:
            assert (e.code, e.reason) == ("UNAUTHENTICATED", "token_malformed")
            assert all(str(v) not in str(e) for v in values if len(v) > 8)
            return
        assert (token is None) == (not values)
        assert token is None or (token and token == token.strip())
