"""Secrets taken out of resources shown for debugging.

How this works: the proto3 JSON of a resource (``to_json``, ``@type`` inside every Any)
is walked as a tree. A field whose name is one of ``SECRET_FIELDS`` — wherever it is, in a
``Secret`` resource or in a TLS context inline in a listener's or cluster's transport
socket, in any extension's typed config — has every value under it replaced by
``REDACTED``, except the fields in ``REFERENCES`` (where a secret is read from: a file
name, an environment variable's name, a provider's name), which say where the secret is
without being it. The field names are those of Envoy's messages that carry key material
(``TlsCertificate``: ``private_key``, ``password``, ``pkcs12``,
``private_key_provider``; ``session_ticket_keys`` of a ``DownstreamTlsContext`` or a
``Secret``; a ``Secret``'s ``generic_secret``), so a new extension that reuses them is
covered too.

A JWT provider's ``local_jwks`` (``jwt_authn``: the JWKS inline, which may hold a
symmetric ``oct`` key that signs tokens, or a private key pasted by mistake) is
redacted member by member: its inline JSON keeps each key's public members
(``JWK_PUBLIC_MEMBERS``: ``kid``, ``kty``, ``alg``, RSA's ``n`` and ``e``, a curve
point...) and every other member's value is replaced by ``REDACTED``; inline bytes, or
text that is not a JWKS object, are replaced whole. A key set read from a file keeps its
file name. Everything else is left as it is, field for field.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: What a secret value is replaced with.
REDACTED = "[redacted]"
#: Fields (snake_case, as Envoy spells them) whose whole content is secret.
SECRET_FIELDS = frozenset(
    {
        "private_key",
        "password",
        "pkcs12",
        "private_key_provider",
        "session_ticket_keys",
        "generic_secret",
    }
)
#: Fields inside a secret field that say where it comes from, not what it is.
REFERENCES = frozenset({"filename", "environment_variable", "provider_name", "@type", "path"})

#: The JWK members that are public (RFC 7517, RFC 7518, RFC 8037): a key's other
#: members (``k`` of an ``oct`` key, ``d``, ``p``, ``q``... of a private key, anything
#: unknown) are secret.
JWK_PUBLIC_MEMBERS = frozenset(
    {"kty", "kid", "alg", "use", "key_ops", "n", "e", "crv", "x", "y", "x5c", "x5t", "x5u"}
    | {"x5t#S256"}
)
#: The field of a JWT provider that holds its key set inline.
_LOCAL_JWKS = "local_jwks"

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def redact(value: Any) -> Any:
    """``value`` (proto3 JSON: dicts, lists, scalars) with every secret field's content
    replaced by ``REDACTED`` (see the module docstring). Returns a new tree; ``value`` is
    not changed. Field names are matched as written or in snake_case."""
    if isinstance(value, dict):
        return {key: _redact_field(_snake(key), item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def _redact_field(name: str, item: Any) -> Any:
    """The value ``item`` of the field ``name`` (snake_case), redacted."""
    if name in SECRET_FIELDS:
        return _redacted(item)
    if name == _LOCAL_JWKS:
        return _redacted_key_set(item)
    return redact(item)


def _redacted_key_set(source: Any) -> Any:
    """A ``local_jwks`` data source: inline text as ``redacted_jwks`` makes it, a file
    name or environment variable's name kept, anything else replaced."""
    if not isinstance(source, dict):
        return _redacted(source)
    out: dict[str, Any] = {}
    for key, item in source.items():
        name = _snake(key)
        if name == "inline_string" and isinstance(item, str):
            out[key] = redacted_jwks(item)
        elif name in REFERENCES and not isinstance(item, dict | list):
            out[key] = item
        else:
            out[key] = _redacted(item)
    return out


def redacted_jwks(text: str) -> str:
    """The JWKS ``text`` with each key's members other than ``JWK_PUBLIC_MEMBERS``
    replaced by ``REDACTED`` (JSON again, members in their order); ``REDACTED`` itself
    when ``text`` is not a JSON object whose ``keys`` is a list of objects, or has
    members beside ``keys``. Never raises."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return REDACTED
    if not isinstance(document, dict) or set(document) != {"keys"}:
        return REDACTED
    keys = document["keys"]
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        return REDACTED
    shown = [
        {m: v if m in JWK_PUBLIC_MEMBERS else REDACTED for m, v in key.items()} for key in keys
    ]
    try:
        return json.dumps({"keys": shown})
    except RecursionError:  # a public member nested as deep as the decoder allowed
        return REDACTED


def _redacted(value: Any) -> Any:
    """Every leaf of ``value`` replaced by ``REDACTED``, but for ``REFERENCES``."""
    if isinstance(value, dict):
        return {
            key: item
            if _snake(key) in REFERENCES and not isinstance(item, dict | list)
            else _redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return REDACTED


def _snake(name: str) -> str:
    """``inlineBytes`` → ``inline_bytes``; snake_case names are returned as they are."""
    return _CAMEL.sub("_", name).lower() if name[:1] != "@" else name
