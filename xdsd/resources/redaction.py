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
covered too. Everything else is left as it is, field for field.
"""

from __future__ import annotations

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

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def redact(value: Any) -> Any:
    """``value`` (proto3 JSON: dicts, lists, scalars) with every secret field's content
    replaced by ``REDACTED`` (see the module docstring). Returns a new tree; ``value`` is
    not changed. Field names are matched as written or in snake_case."""
    if isinstance(value, dict):
        return {
            key: _redacted(item) if _snake(key) in SECRET_FIELDS else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


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
