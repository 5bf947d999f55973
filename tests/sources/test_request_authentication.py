"""The RequestAuthentication parser: every field read into the model, and everything xdsd
cannot enforce refused at the offending field's own line (fail closed)."""

from __future__ import annotations

import json

import pytest

from tests.jwt_signer import SigningKey, jwks
from xdsd.errors import Problem, Severity
from xdsd.model.security import (
    ClaimToHeader,
    JwtHeader,
    RequestAuthentication,
    WorkloadSelector,
    line_of,
)
from xdsd.sources.dispatch import parse_document
from xdsd.sources.documents import parse_file
from xdsd.sources.request_authentication import jwks_problem, jwks_uri_problem

RSA = SigningKey.generate("RS256", "r")
EC = SigningKey.generate("ES256", "e")
JWKS = jwks(RSA, EC)

HEAD = """\
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
"""


def parse(text: str) -> tuple[RequestAuthentication | None, list[Problem]]:
    problems: list[Problem] = []
    [doc] = parse_file("ra.yaml", text.encode())
    found = parse_document(doc, problems, "/")
    assert found is None or isinstance(found, RequestAuthentication)
    return found, problems


def errors(spec: str) -> list[tuple[int, str, str]]:
    """(line, field, message) of each error of the document HEAD + ``spec``."""
    _, problems = parse(HEAD + spec)
    return [(p.line, p.field, p.message) for p in problems if p.severity is Severity.ERROR]


def test_every_field_is_read() -> None:
    found, problems = parse(
        HEAD
        + f"""\
  selector:
    matchLabels: {{app: shop, version: v1}}
  jwtRules:
  - issuer: https://a.test
    audiences: [shop, admin]
    jwks: '{JWKS}'
    fromHeaders:
    - {{name: x-jwt, prefix: "Token "}}
    - {{name: x-other}}
    fromParams: [tok]
    fromCookies: [session]
    outputPayloadToHeader: x-payload
    outputClaimToHeaders:
    - {{header: x-sub, claim: sub}}
    - {{header: x-group, claim: groups.primary}}
    forwardOriginalToken: true
  - issuer: https://b.test
    jwksUri: https://login.b.test:8443/keys
    timeout: 1.5s
"""
    )
    assert problems == []
    assert found is not None
    assert found.namespace == "shop"
    assert found.selector == WorkloadSelector((("app", "shop"), ("version", "v1")))
    first, second = found.jwt_rules
    assert first.issuer == "https://a.test" and first.audiences == ("shop", "admin")
    assert json.loads(first.jwks) == json.loads(JWKS)
    assert first.from_headers == (JwtHeader("x-jwt", "Token "), JwtHeader("x-other"))
    assert first.from_params == ("tok",) and first.from_cookies == ("session",)
    assert first.output_payload_to_header == "x-payload"
    assert first.output_claim_to_headers == (
        ClaimToHeader("x-sub", "sub"),
        ClaimToHeader("x-group", "groups.primary"),
    )
    assert first.forward_original_token and not second.forward_original_token
    assert second.jwks_uri == "https://login.b.test:8443/keys"
    assert second.timeout_seconds == 1.5
    assert line_of(found.lines, "jwtRules[1].issuer") == 21
    assert line_of(found.lines, "jwtRules[1].jwksUri") == 22


def test_an_empty_spec_loads_and_accepts_nothing() -> None:
    found, problems = parse(HEAD + "  {}\n")
    assert problems == [] and found is not None and found.jwt_rules == ()


@pytest.mark.parametrize(
    ("spec", "line", "field", "message"),
    [
        (
            "  targetRefs: [{kind: Gateway, name: gw}]\n",
            5,
            "targetRefs",
            "is not supported: a Kubernetes Gateway API attachment",
        ),
        ("  targetRef: {kind: Service, name: s}\n", 5, "targetRef", "is not supported"),
        ("  selectr: {}\n", 5, "selectr", "did you mean 'selector'?"),
        ("  selector: {matchLabel: {a: b}}\n", 5, "selector.matchLabel", "did you mean"),
        ("  jwtRules:\n  - jwksUri: http://k.test/\n", 6, "jwtRules[0].issuer", "is required"),
        (
            "  jwtRules:\n  - issuer: a\n",
            6,
            "jwtRules[0].issuer",
            "needs jwks or jwksUri: xdsd does not discover",
        ),
        (
            f"  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n    jwks: '{JWKS}'\n",
            7,
            "jwtRules[0].jwksUri",
            "set one of jwks and jwksUri, not both",
        ),
        (
            "  jwtRules:\n  - {issuer: a, jwksUri: 'http://k.test/'}\n"
            "  - {issuer: b, jwksUri: 'http://k.test/'}\n"
            "  - {issuer: a, jwksUri: 'http://j.test/'}\n",
            8,
            "jwtRules[2].issuer",
            "already taken by jwtRules[0]",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwks: '{\"keys\": []}'\n",
            7,
            "jwtRules[0].jwks",
            "non-empty list",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwks: 'not json'\n",
            7,
            "jwtRules[0].jwks",
            "is not a JSON document",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwks: ''\n",
            7,
            "jwtRules[0].jwks",
            "must not be empty",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: ftp://k.test/keys\n",
            7,
            "jwtRules[0].jwksUri",
            "must be an http or https URL",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: https://user:pw@k.test/keys\n",
            7,
            "jwtRules[0].jwksUri",
            "user name or password",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test:99999/keys\n",
            7,
            "jwtRules[0].jwksUri",
            "is not a URL",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n    timeout: 0s\n",
            8,
            "jwtRules[0].timeout",
            "more than zero",
        ),
        (
            f"  jwtRules:\n  - issuer: a\n    jwks: '{JWKS}'\n    timeout: 2s\n",
            8,
            "jwtRules[0].timeout",
            "bounds the jwksUri fetch",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n    jwtHeaders: [x]\n",
            8,
            "jwtRules[0].jwtHeaders",
            "unknown field",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n"
            "    fromHeaders: [{prefix: x}]\n",
            8,
            "jwtRules[0].fromHeaders[0].name",
            "is required",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n"
            "    outputClaimToHeaders: [{header: 'x y', claim: sub}]\n",
            8,
            "jwtRules[0].outputClaimToHeaders[0].header",
            "is not an HTTP header name",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n"
            "    outputClaimToHeaders: [{header: x-sub}]\n",
            8,
            "jwtRules[0].outputClaimToHeaders[0].claim",
            "is required",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n"
            "    outputPayloadToHeader: 'x:y'\n",
            8,
            "jwtRules[0].outputPayloadToHeader",
            "is not an HTTP header name",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: http://k.test/\n"
            "    forwardOriginalToken: 'yes'\n",
            8,
            "jwtRules[0].forwardOriginalToken",
            "must be true or false",
        ),
    ],
)
def test_what_xdsd_cannot_enforce_is_an_error_at_its_line(
    spec: str, line: int, field: str, message: str
) -> None:
    found = errors(spec)
    assert any(
        (got_line, got_field) == (line, field) and message in got_message
        for got_line, got_field, got_message in found
    ), found


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("[]", 'must be a JSON object with "keys"'),
        ('{"keys": {}}', "non-empty list"),
        ('{"keys": [1]}', "keys[0]: must be a JSON object"),
        ('{"keys": [{"kty": "DSA"}]}', "kty must be one of"),
        ('{"keys": [{"kty": "RSA", "n": "x"}]}', "needs 'e'"),
        ('{"keys": [{"kty": "EC", "crv": "P-256", "x": "a"}]}', "needs 'y'"),
        ('{"keys": [{"kty": "EC", "crv": "K-1", "x": "a", "y": "b"}]}', "crv of a key"),
        ('{"keys": [{"kty": "OKP", "crv": 7, "x": "a"}]}', "needs 'crv'"),
        ('{"keys": [{"kty": "oct", "k": ""}]}', "needs 'k'"),
        ('{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "x5c": [["deep"]]}]}', "nests deeper"),
        ("[" * 100_000, "nests deeper"),
        ('{"keys": [' + "9" * 5000 + "]}", "is not a JSON document"),
        ("\ud800", "is not a JSON document"),
    ],
)
def test_a_jwks_envoy_could_not_use_is_named(document: str, problem: str) -> None:
    assert problem in jwks_problem(document)


def test_usable_key_sets_pass() -> None:
    assert jwks_problem(JWKS) == ""
    assert jwks_problem('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}') == ""
    assert jwks_problem('{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "abc"}]}') == ""


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://k.test/keys", ""),
        ("https://k.test:8443/keys?v=1", ""),
        ("http://[::1]:8080/keys", ""),
        ("k.test/keys", "must be an http or https URL"),
        ("https:///keys", "must name a host"),
        ("http://k.test:0/", "port must be 1-65535"),
        ("http://[::1/", "is not a URL"),
        ("http://k.test/a b", "white space"),
    ],
)
def test_jwks_uris(uri: str, problem: str) -> None:
    got = jwks_uri_problem(uri)
    assert (problem in got) if problem else got == ""


HMAC_KEY = "U0VDUkVULUhNQUMtS0VZ"


@pytest.mark.parametrize(
    "jwks_field",
    [
        f"{{keys: [{{kty: oct, k: {HMAC_KEY}}}]}}",
        f"[{HMAC_KEY}]",
        json.dumps(f'{{"keys": [{{"kty": "oct", "k": "{HMAC_KEY}"'),
        json.dumps(json.dumps({"keys": [{"kty": HMAC_KEY, "k": HMAC_KEY}]})),
        json.dumps(json.dumps({"keys": [{"kty": "EC", "crv": HMAC_KEY, "x": "a", "y": "b"}]})),
    ],
    ids=["mapping", "list", "broken-json", "kty", "crv"],
)
def test_a_refused_jwks_is_named_without_its_content(jwks_field: str) -> None:
    """A JWKS may hold a symmetric key that signs tokens: its refusal says where and
    why, and quotes none of it (one error, at the jwks line)."""
    found = errors(f"  jwtRules:\n  - issuer: a\n    jwks: {jwks_field}\n")
    assert [(line, field) for line, field, _ in found] == [(7, "jwtRules[0].jwks")], found
    assert not any(HMAC_KEY[:8] in message for _, _, message in found), found


def test_a_jwt_rule_does_not_show_its_key_set_in_its_repr() -> None:
    document = json.dumps({"keys": [{"kty": "oct", "k": HMAC_KEY}]})
    found, problems = parse(
        HEAD + f"  jwtRules:\n  - issuer: a\n    jwks: {json.dumps(document)}\n"
    )
    assert found is not None and not problems, problems
    assert found.jwt_rules[0].jwks == document
    assert HMAC_KEY not in repr(found)
