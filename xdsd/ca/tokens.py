"""xdsd tokens: what a proxy proves its service and namespace with before it gets a key
(``xdsd token`` mints them; Envoy sends one with every xDS stream).

A token is a compact JWS signed with EdDSA (Ed25519): ``HEADER.PAYLOAD.SIGNATURE``,
each base64url without padding. The header is ``{"alg":"EdDSA","typ":"JWT","kid":ID}``
(``ID`` names the signing key); the payload ``{"iss":"xdsd","ns":NS,"svc":SERVICE,
"jti":TOKEN_ID,"iat":SECONDS,"exp":SECONDS}``. Nothing secret is in a token: it is a
credential because of its signature. Verification checks, in this order, the size and
shape (``malformed``), the signature with xdsd's key (``forged``: another key, or a
changed byte), the claims (``malformed``), the expiry (``expired``) and the revocation
list (``revoked``). Tokens are credentials: log ``token_id_of(token)``, never the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xdsd.ca.files import CAError, read_private, state_directory, write_private_file
from xdsd.model.mesh_config import MeshCA

#: The longest token read (a minted one is about 300 bytes).
MAX_TOKEN_BYTES = 4096
#: How long after its expiry a token is still taken (clocks of the machine that minted it
#: and of the one verifying it may differ).
EXPIRY_SKEW_SECONDS = 30.0
#: The longest life ``mint`` gives a token (10 years).
MAX_TOKEN_TTL_SECONDS = 10 * 365 * 86400.0
#: The token signing key xdsd generates in the state directory.
GENERATED_TOKEN_KEY = "token.key"
#: The reasons ``InvalidToken`` gives.
REASONS = ("malformed", "forged", "expired", "revoked")

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")
_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
_CLAIM_KEYS = frozenset({"iss", "ns", "svc", "jti", "iat", "exp"})


def token_expired(expires: float, now: float) -> bool:
    """The one rule for a token's expiry, applied wherever a token is judged (``verify``,
    and ``xdsd.identities`` when it admits or renews): a token whose ``exp`` is
    ``expires`` (seconds since the epoch) has expired at ``now`` once ``now`` is more
    than ``EXPIRY_SKEW_SECONDS`` past it."""
    return now > expires + EXPIRY_SKEW_SECONDS


class InvalidToken(Exception):
    """A token that is malformed, forged, expired or revoked; ``reason`` says which (one of
    ``REASONS``). The message never quotes the token."""

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


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A token just minted and what it says (for the minting side to show)."""

    token: str
    claims: TokenClaims


class TokenAuthority:
    """Mints and verifies the tokens of ``config`` (``[mesh.ca]``): signed with the
    Ed25519 key of ``token_key`` (refused when group or others can access it), or with
    one generated once in ``state_dir`` (``token.key``, 0600) and reused after restarts.
    Tokens whose id is in ``revoked_tokens`` are refused. Raises CAError at construction
    when the key cannot be read or made. Nothing changes after construction: a changed
    revocation list is a new TokenAuthority."""

    def __init__(self, config: MeshCA) -> None:
        self.config = config
        self._key = _signing_key(config)
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public = self._key.public_key()
        #: The raw Ed25519 public key: two authorities with the same one accept the same
        #: tokens (revocation aside).
        self.public_key = raw
        self.key_id = _b64encode(raw[:8])
        self._header = _b64encode(
            json.dumps(
                {"alg": "EdDSA", "typ": "JWT", "kid": self.key_id}, separators=(",", ":")
            ).encode()
        )
        self._revoked = frozenset(config.revoked_tokens)

    def mint(self, namespace: str, service: str, ttl_seconds: float) -> MintedToken:
        """A new token for ``service`` in ``namespace`` living ``ttl_seconds`` (with a
        fresh random id). Raises ValueError for a name that could not be a SPIFFE path
        segment or a life that is not positive or over ``MAX_TOKEN_TTL_SECONDS``."""
        for what, value in (("namespace", namespace), ("service", service)):
            if not _NAME.fullmatch(value) or value in (".", ".."):
                raise ValueError(f"{what} {value[:64]!r}: letters, digits, '.', '_' and '-' only")
        if not 0 < ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
            raise ValueError(f"a token lives more than 0 s and at most {MAX_TOKEN_TTL_SECONDS:g} s")
        now = int(time.time())
        expires = now + max(1, int(ttl_seconds))
        token_id = secrets.token_urlsafe(16)
        claims = {
            "iss": "xdsd",
            "ns": namespace,
            "svc": service,
            "jti": token_id,
            "iat": now,
            "exp": expires,
        }
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{self._header}.{payload}"
        signature = _b64encode(self._key.sign(signed.encode()))
        return MintedToken(
            f"{signed}.{signature}",
            TokenClaims(namespace, service, token_id, datetime.fromtimestamp(expires, UTC)),
        )

    def verify(self, token: str | bytes, *, now: float | None = None) -> TokenClaims:
        """The claims of ``token`` when it is well formed, signed with this authority's
        key, not expired (``EXPIRY_SKEW_SECONDS`` allowed) at ``now`` (default: the
        clock) and not revoked; else raises InvalidToken."""
        text = _text(token)
        parts = text.split(".")
        if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
            raise InvalidToken("malformed", "the token is not three base64url parts")
        header = _json(parts[0], "header")
        if set(header) - _HEADER_KEYS or header.get("alg") != "EdDSA":
            raise InvalidToken("malformed", "the token's header is not an xdsd token's")
        signature = _b64decode(parts[2], "signature")
        try:
            self._public.verify(signature, f"{parts[0]}.{parts[1]}".encode())
        except InvalidSignature:
            raise InvalidToken(
                "forged", "the token is not signed by this xdsd's token key"
            ) from None
        claims = _json(parts[1], "payload")
        namespace, service, token_id = claims.get("ns"), claims.get("svc"), claims.get("jti")
        expires = claims.get("exp")
        if (
            set(claims) - _CLAIM_KEYS
            or claims.get("iss") != "xdsd"
            or not (isinstance(namespace, str) and _NAME.fullmatch(namespace))
            or not (isinstance(service, str) and _NAME.fullmatch(service))
            or not (isinstance(token_id, str) and _TOKEN_ID.fullmatch(token_id))
            or not (isinstance(expires, int) and not isinstance(expires, bool))
            or not 0 < expires < 1 << 40
        ):
            raise InvalidToken("malformed", "the token's claims are not an xdsd token's")
        at = time.time() if now is None else now
        when = datetime.fromtimestamp(expires, UTC)
        if token_expired(expires, at):
            raise InvalidToken(
                "expired", f"token {token_id} expired at {when.isoformat(timespec='seconds')}"
            )
        if token_id in self._revoked:
            raise InvalidToken("revoked", f"token {token_id} is revoked")
        return TokenClaims(namespace, service, token_id, when)


def token_id_of(token: str | bytes) -> str:
    """The id a token claims, for logs (not verified: never a decision on it); "?" when
    none can be read. Never the token itself."""
    try:
        parts = _text(token).split(".")
        if len(parts) != 3 or not _B64URL.fullmatch(parts[1]):
            return "?"
        token_id = _json(parts[1], "payload").get("jti")
    except InvalidToken:
        return "?"
    return token_id if isinstance(token_id, str) and _TOKEN_ID.fullmatch(token_id) else "?"


def _signing_key(config: MeshCA) -> ed25519.Ed25519PrivateKey:
    if config.token_key:
        return _load_key(config.token_key, read_private(config.token_key, "the token key"))
    path = os.path.join(state_directory(config.state_dir), GENERATED_TOKEN_KEY)
    if not os.path.exists(path):
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private_file(path, pem)
    return _load_key(path, read_private(path, "the generated token key"))


def _load_key(path: str, pem: bytes) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CAError(f"{path}: the token key is encrypted: xdsd needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CAError(f"{path}: holds no PEM private key that can be read") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CAError(f"{path}: the token key must be Ed25519 (openssl genpkey -algorithm ed25519)")
    return key


def _text(token: str | bytes) -> str:
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("malformed", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidToken("malformed", "the token is not ASCII") from None
    text = token.strip()
    if not text:
        raise InvalidToken("malformed", "the token is empty")
    return text


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed", f"the token's {what} is not base64url") from None


def _json(part: str, what: str) -> dict[str, Any]:
    raw = _b64decode(part, what)
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidToken("malformed", f"the token's {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed", f"the token's {what} is not a JSON object")
    return value
