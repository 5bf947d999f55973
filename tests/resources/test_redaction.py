"""Secrets are redacted structurally, wherever Envoy's messages carry them: each kind is
built as the real message, turned into proto3 JSON as the admin server does, redacted,
and no secret byte is left while everything else is."""

from __future__ import annotations

import base64
import json

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from xdsd.errors import Problem, redact_text
from xdsd.resources import pack, to_json
from xdsd.resources.redaction import REDACTED, redact

KEY = "-----BEGIN PRIVATE KEY-----\nS3CR3TKEYMATERIAL\n-----END PRIVATE KEY-----\n"
SENTINELS = ("S3CR3TKEYMATERIAL", "hunter2", "TICKETKEY", "GENERICSECRET", "P12BYTES")


def _tls_certificate() -> common_pb2.TlsCertificate:
    cert = common_pb2.TlsCertificate()
    cert.certificate_chain.inline_string = "PUBLIC-CHAIN"
    cert.private_key.inline_bytes = KEY.encode()
    cert.password.inline_string = "hunter2"
    return cert


def _leaks(value: object) -> list[str]:
    text = json.dumps(value)
    found = [s for s in SENTINELS if s in text]
    found += [s for s in SENTINELS if base64.b64encode(s.encode()).decode()[:12] in text]
    return found + [s for s in (base64.b64encode(KEY.encode()).decode(),) if s in text]


def test_every_kind_of_secret_in_a_secret_resource_is_redacted() -> None:
    tls = secret_pb2.Secret(name="tls", tls_certificate=_tls_certificate())
    generic = secret_pb2.Secret(name="generic")
    generic.generic_secret.secret.inline_string = "GENERICSECRET"
    tickets = secret_pb2.Secret(name="tickets")
    tickets.session_ticket_keys.keys.add().inline_bytes = b"TICKETKEY" * 9
    p12 = secret_pb2.Secret(name="p12")
    p12.tls_certificate.pkcs12.inline_bytes = b"P12BYTES"
    files = secret_pb2.Secret(name="files")
    files.tls_certificate.private_key.filename = "/etc/keys/key.pem"
    for secret in (tls, generic, tickets, p12):
        shown = redact(to_json(secret))
        assert _leaks(shown) == [], shown
        assert REDACTED in json.dumps(shown)
        assert shown["name"] == secret.name
    shown = redact(to_json(tls))
    assert shown["tls_certificate"]["certificate_chain"] == {"inline_string": "PUBLIC-CHAIN"}
    assert shown["tls_certificate"]["private_key"] == {"inline_bytes": REDACTED}
    # where a key is read from is not the key: shown
    assert redact(to_json(files))["tls_certificate"]["private_key"] == {
        "filename": "/etc/keys/key.pem"
    }


def test_an_inline_key_in_a_listeners_tls_context_is_redacted() -> None:
    context = tls_pb2.DownstreamTlsContext()
    context.common_tls_context.tls_certificates.append(_tls_certificate())
    context.session_ticket_keys.keys.add().inline_string = "TICKETKEY"
    provider = context.common_tls_context.tls_certificates.add().private_key_provider
    provider.provider_name = "cryptomb"
    provider.typed_config.CopyFrom(
        pack(
            secret_pb2.Secret(
                name="x",
                generic_secret=secret_pb2.GenericSecret(secret={"inline_string": "GENERICSECRET"}),
            )
        )
    )
    listener = listener_pb2.Listener(name="raw")
    chain = listener.filter_chains.add()
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.CopyFrom(pack(context))
    shown = redact(to_json(listener))
    assert _leaks(shown) == [], shown
    typed = shown["filter_chains"][0]["transport_socket"]["typed_config"]
    assert typed["@type"].endswith("DownstreamTlsContext")
    assert typed["session_ticket_keys"] == {"keys": [{"inline_string": REDACTED}]}
    assert (
        typed["common_tls_context"]["tls_certificates"][1]["private_key_provider"]["provider_name"]
        == "cryptomb"
    )


def test_camel_case_names_are_redacted_too() -> None:
    shown = redact({"tlsCertificate": {"privateKey": {"inlineString": "S3CR3TKEYMATERIAL"}}})
    assert shown == {"tlsCertificate": {"privateKey": {"inlineString": REDACTED}}}


def test_a_pem_key_quoted_in_a_message_is_redacted() -> None:
    assert "S3CR3TKEYMATERIAL" not in redact_text(f"cannot parse {KEY!s} here")
    assert "S3CR3TKEYMATERIAL" not in redact_text(KEY[:40])  # cut off before its END line
    assert redact_text("nothing secret") == "nothing secret"
    problem = Problem("envoy/x.yaml", 3, "private_key", f"bad value {KEY}")
    assert "S3CR3TKEYMATERIAL" not in str(problem) and "[redacted]" in str(problem)


HMAC = "SFMyNTYtU0VDUkVULUtFWQ"


def _jwt_provider_json(**source: str) -> dict[str, object]:
    """A jwt_authn filter config with one provider whose local_jwks is ``source``, as
    the admin server shows it."""
    from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2

    config = jwt_pb2.JwtAuthentication()
    provider = config.providers["p"]
    provider.issuer = "https://issuer.test"
    for name, value in source.items():
        if name == "inline_bytes":
            provider.local_jwks.inline_bytes = value.encode()
        else:
            setattr(provider.local_jwks, name, value)
    return to_json(pack(config))


def test_a_symmetric_jwt_key_is_redacted_and_the_public_members_kept() -> None:
    jwks = {
        "keys": [
            {"kty": "oct", "alg": "HS256", "kid": "h1", "k": HMAC},
            {"kty": "RSA", "kid": "r1", "n": "PUBLIC-N", "e": "AQAB", "d": "PRIVATE-D"},
            {"kty": "EC", "crv": "P-256", "x": "PX", "y": "PY", "d": "PRIVATE-ECD"},
            {"kty": "oct", "k": HMAC, "extra": {"nested": HMAC}},
        ]
    }
    shown = redact(_jwt_provider_json(inline_string=json.dumps(jwks)))
    text = json.dumps(shown)
    assert HMAC not in text and "PRIVATE-D" not in text and "PRIVATE-ECD" not in text
    inline = json.loads(shown["providers"]["p"]["local_jwks"]["inline_string"])
    assert inline == {
        "keys": [
            {"kty": "oct", "alg": "HS256", "kid": "h1", "k": REDACTED},
            {"kty": "RSA", "kid": "r1", "n": "PUBLIC-N", "e": "AQAB", "d": REDACTED},
            {"kty": "EC", "crv": "P-256", "x": "PX", "y": "PY", "d": REDACTED},
            {"kty": "oct", "k": REDACTED, "extra": REDACTED},
        ]
    }
    assert shown["providers"]["p"]["issuer"] == "https://issuer.test"


def test_inline_key_set_bytes_and_odd_documents_are_redacted_whole() -> None:
    def shown(**source: str) -> object:
        return redact(_jwt_provider_json(**source))["providers"]["p"]["local_jwks"]  # type: ignore[index]

    document = json.dumps({"keys": [{"kty": "oct", "k": HMAC}]})
    assert shown(inline_bytes=document) == {"inline_bytes": REDACTED}
    for odd in (
        HMAC,  # not JSON
        json.dumps([{"kty": "oct", "k": HMAC}]),  # not an object
        json.dumps({"keys": [{"kty": "oct", "k": HMAC}], "other": HMAC}),  # more members
        json.dumps({"keys": [HMAC]}),  # a key that is not an object
        json.dumps({"keys": {"k": HMAC}}),  # keys not a list
        "[" * 100_000 + HMAC,  # deeper than json can go
    ):
        assert shown(inline_string=odd) == {"inline_string": REDACTED}, odd[:40]
    # A key set read from a file keeps its file name: it says where, not what.
    assert shown(filename="/etc/jwks.json") == {"filename": "/etc/jwks.json"}


def test_a_camel_case_key_set_is_redacted_too() -> None:
    document = json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": HMAC}]})
    shown = redact({"localJwks": {"inlineString": document}})
    assert json.loads(shown["localJwks"]["inlineString"]) == {
        "keys": [{"kty": "oct", "kid": "h", "k": REDACTED}]
    }
