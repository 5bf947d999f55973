"""Istio's RequestAuthentication (``security.istio.io``) → ``model.security.RequestAuthentication``.

Fail closed: a field or value xdsd does not enforce is an error at its own line, never a
warning, so a directory that loads is enforced as written. In particular:

- ``targetRef``/``targetRefs`` are refused by name: they attach a policy to Kubernetes
  Gateway API objects, which a directory of files has none of (use ``selector``).
- Each ``jwtRules[]`` entry needs exactly one of ``jwks`` (the JWKS document, a string)
  and ``jwksUri``. Istio accepts a rule with neither and finds the keys by OpenID Connect
  discovery from the issuer (istiod fetches ``ISSUER/.well-known/openid-configuration``);
  xdsd translates without I/O and Envoy cannot discover, so such a rule is an error
  rather than a provider that would refuse every token. Istio documents that only one of
  the two should be set and silently prefers ``jwks``; xdsd refuses both, so no field is
  dropped.
- ``jwks`` is parsed here: a JSON object whose ``keys`` is a non-empty list of keys
  Envoy can use (RSA, EC, oct, OKP with their members). A document Envoy would take as
  holding no key (and so refuse every token with nothing said) is an error at its line.
  Its size is bounded by the file's (``max_file_bytes``); its nesting by the shape of a
  JWKS (no JWKS nests deeper than ``JWKS_MAX_DEPTH``), checked by one scan before
  ``json`` sees it.
- ``jwksUri`` must be an ``http`` or ``https`` URL with a host and no credentials; its
  host and port name the cluster Envoy fetches it through (``translate.jwt_authn``).
- ``timeout`` bounds the ``jwksUri`` fetch, so it is an error beside ``jwks``.
- Two rules of one policy with the same issuer are an error at the second's line (two
  policies of one workload: ``translate.jwt_authn`` refuses them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from xdsd.errors import Severity
from xdsd.located import FieldPath, Fields
from xdsd.model import Origin
from xdsd.model.security import (
    ClaimToHeader,
    JwtHeader,
    JwtRule,
    RequestAuthentication,
    WorkloadSelector,
)
from xdsd.sources.limits import ParseLimits, nesting_problem

#: The deepest a JWKS nests: the document, ``keys``, a key, a key's list (``x5c``,
#: ``key_ops``). Anything deeper is not a JWKS, and is refused before it is parsed.
JWKS_MAX_DEPTH = 4
_JWKS_SHAPE = ParseLimits(max_nesting_depth=JWKS_MAX_DEPTH)

#: The members each key type (``kty``) needs for Envoy to use it, and the curves it
#: takes (``crv``; None: no curve).
_KEY_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "RSA": (("n", "e"), None),
    "EC": (("crv", "x", "y"), ("P-256", "P-384", "P-521")),
    "oct": (("k",), None),
    "OKP": (("crv", "x"), ("Ed25519",)),
}
#: An HTTP header name (RFC 9110 token characters), as Envoy's header fields take.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_KUBERNETES_ONLY = (
    "a Kubernetes Gateway API attachment, which files have no objects for; use selector"
)


def parse_request_authentication(
    spec: Fields, name: str, namespace: str, origin: Origin, *, annotations: Mapping[str, object]
) -> RequestAuthentication:
    """A RequestAuthentication from its ``spec`` (``annotations``: the document's metadata
    annotations, which this kind reads none of). Every problem is recorded on ``spec``;
    the module docstring lists what is refused."""
    lines: list[tuple[str, int]] = []
    selector: WorkloadSelector | None = None
    found = spec.obj("selector")
    if found is not None:
        selector = WorkloadSelector(found.labels("matchLabels"))
        found.finish()
    for key in ("targetRef", "targetRefs"):
        if key in spec.data:
            spec.read.add(key)
            spec.error(key, f"is not supported: {_KUBERNETES_ONLY}")
    rules: list[JwtRule] = []
    issuers: dict[str, int] = {}
    for index, item in enumerate(spec.objects("jwtRules")):
        issuer = item.data.get("issuer")
        if isinstance(issuer, str) and issuer:
            first = issuers.setdefault(issuer, index)
            if first != index:
                item.error(
                    "issuer",
                    f"issuer {issuer!r} is already taken by jwtRules[{first}]: one rule per issuer",
                )
        rule = _jwt_rule(item)
        if rule is None:
            continue
        for key in ("issuer", "jwksUri"):
            lines.append((f"jwtRules[{index}].{key}", _line(item, (key,))))
        rules.append(rule)
    spec.finish()
    return RequestAuthentication(
        name,
        namespace,
        selector=selector,
        jwt_rules=tuple(rules),
        origin=origin,
        lines=tuple(lines),
    )


def _line(fields: Fields, key: FieldPath) -> int:
    """The line of ``key`` under ``fields`` in its document."""
    report = fields.report
    return report.doc.line_of((*report.base, *fields.path, *key))


def _jwt_rule(item: Fields) -> JwtRule | None:
    """One ``jwtRules[]`` entry, or None when it has an error (recorded)."""
    before = len(item.report.problems)
    issuer = item.string("issuer", required=True)
    audiences = item.strings("audiences")
    jwks, jwks_typed = _jwks_field(item)
    jwks_uri = item.string("jwksUri")
    if item.has("jwks") and item.has("jwksUri"):
        item.error("jwksUri", "set one of jwks and jwksUri, not both")
    elif not item.has("jwks") and not item.has("jwksUri") and issuer:
        item.error(
            "issuer",
            "needs jwks or jwksUri: xdsd does not discover an issuer's keys by OpenID "
            "Connect (give the JWKS inline, or its URL)",
        )
    if jwks:
        problem = jwks_problem(jwks)
        if problem:
            item.error("jwks", problem)
    elif item.has("jwks") and jwks_typed:
        item.error("jwks", "must not be empty")
    if jwks_uri:
        problem = jwks_uri_problem(jwks_uri)
        if problem:
            item.error("jwksUri", problem)
    elif item.has("jwksUri"):
        item.error("jwksUri", "must not be empty")
    headers = item.parse_list("fromHeaders", _jwt_header)
    params = item.strings("fromParams")
    cookies = item.strings("fromCookies")
    payload_header = item.string("outputPayloadToHeader")
    if payload_header and not _HEADER_NAME.match(payload_header):
        item.error("outputPayloadToHeader", f"{payload_header!r} is not an HTTP header name")
    claims = item.parse_list("outputClaimToHeaders", _claim_to_header)
    forward = item.boolean("forwardOriginalToken")
    timeout = item.duration("timeout")
    seconds = 0.0
    if timeout is not None:
        seconds = timeout.total_seconds()
        if seconds <= 0:
            item.error("timeout", "must be more than zero")
        elif not item.has("jwksUri"):
            item.error("timeout", "bounds the jwksUri fetch: it means nothing beside jwks")
    item.finish()
    if any(p.severity is Severity.ERROR for p in item.report.problems[before:]):
        return None
    return JwtRule(
        issuer=issuer,
        audiences=audiences,
        jwks=jwks,
        jwks_uri=jwks_uri,
        from_headers=headers,
        from_params=params,
        from_cookies=cookies,
        output_payload_to_header=payload_header,
        output_claim_to_headers=claims,
        forward_original_token=forward,
        timeout_seconds=seconds,
    )


def _jwt_header(item: Fields) -> JwtHeader | None:
    """One ``fromHeaders[]`` entry."""
    name = item.string("name", required=True)
    prefix = item.string("prefix")
    if name and not _HEADER_NAME.match(name):
        item.error("name", f"{name!r} is not an HTTP header name")
    item.finish()
    return JwtHeader(name, prefix) if name else None


def _claim_to_header(item: Fields) -> ClaimToHeader | None:
    """One ``outputClaimToHeaders[]`` entry."""
    header = item.string("header", required=True)
    claim = item.string("claim", required=True)
    if header and not _HEADER_NAME.match(header):
        item.error("header", f"{header!r} is not an HTTP header name")
    item.finish()
    return ClaimToHeader(header, claim) if header and claim else None


#: How a wrong ``jwks`` value is named (by its type, never its content).
_KINDS: dict[type, str] = {
    dict: "mapping",
    list: "list",
    int: "number",
    float: "number",
    bool: "boolean",
}


def _jwks_field(item: Fields) -> tuple[str, bool]:
    """The ``jwks`` string ("" when absent) and whether its type was right. A JWKS may
    hold a symmetric (``oct``) key, which signs tokens: a value of another type is an
    error that names its type only, never the value."""
    value = item.value("jwks", lambda _: True, "a string")
    if value is None or isinstance(value, str):
        return value or "", True
    kind = _KINDS.get(type(value), "value of another type")
    item.error("jwks", f"must be a string (a JWKS as JSON text), not a {kind}")
    return "", False


def jwks_problem(text: str) -> str:
    """What is wrong with the JWKS document ``text`` ("" when Envoy can use every key of
    it): not JSON, not an object with a non-empty ``keys`` list, a key of a type Envoy
    does not take or without the members its type needs. Never raises. The text never
    quotes ``text`` (a symmetric key in it signs tokens): it names places and members,
    not values."""
    if nesting_problem("jwks.json", text.encode("utf-8", "surrogatepass"), _JWKS_SHAPE):
        return f"is not a JWKS: it nests deeper than a JWKS does ({JWKS_MAX_DEPTH} levels)"
    try:
        document: Any = json.loads(text)
    except ValueError as err:
        return f"is not a JSON document (a JWKS, as a string): {_short(str(err))}"
    if not isinstance(document, dict) or "keys" not in document:
        return 'is not a JWKS: it must be a JSON object with "keys"'
    keys = document["keys"]
    if not isinstance(keys, list) or not keys:
        return 'is not a JWKS: "keys" must be a non-empty list of keys'
    for index, key in enumerate(keys):
        problem = _key_problem(key)
        if problem:
            return f"keys[{index}]: {problem}"
    return ""


def _key_problem(key: Any) -> str:
    """What makes one JWK unusable by Envoy ("" when nothing)."""
    if not isinstance(key, dict):
        return "must be a JSON object"
    kty = key.get("kty")
    if kty not in _KEY_TYPES:
        return f"kty must be one of {', '.join(_KEY_TYPES)}"
    members, curves = _KEY_TYPES[kty]
    for member in members:
        value = key.get(member)
        if not isinstance(value, str) or not value:
            return f"a key of kty {kty} needs {member!r} (a non-empty string)"
    if curves is not None and key["crv"] not in curves:
        return f"crv of a key of kty {kty} must be one of {', '.join(curves)}"
    return ""


def jwks_uri_problem(uri: str) -> str:
    """What is wrong with ``uri`` as a ``jwksUri`` ("" when nothing): it must be an
    ``http``/``https`` URL with a host, a valid port and no user name or password
    (which would put a secret into every proxy's configuration). Never raises."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as err:
        return f"is not a URL: {_short(str(err))}"
    if parts.scheme not in ("http", "https"):
        return f"must be an http or https URL (got scheme {parts.scheme!r})"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user name or password"
    if port == 0:
        return "port must be 1-65535"
    if any(c.isspace() for c in uri):
        return "must not hold white space"
    return ""


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."
