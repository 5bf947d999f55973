"""xdsd tokens: what a proxy proves its service and namespace with before it gets a key
(``xdsd token`` mints them; Envoy sends one with every xDS stream)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class InvalidToken(Exception):
    """A token that is malformed, forged, expired or revoked; ``reason`` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token binds: a service and a namespace, with the token's id (for
    revocation) and expiry."""

    namespace: str
    service: str
    token_id: str
    expires: datetime
