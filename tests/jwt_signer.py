"""A tiny JWT signer for tests: RS256 and ES256 keys made with ``cryptography``, their
public JWKS, and compact tokens (RFC 7519) signed with them — so that the tests of
RequestAuthentication give Envoy real tokens, valid or spoiled on purpose."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    """Base64url without padding (JOSE's encoding)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int, size: int = 0) -> str:
    length = size or (value.bit_length() + 7) // 8
    return b64url(value.to_bytes(length, "big"))


@dataclass
class SigningKey:
    """A private key, its ``kid`` and algorithm (``RS256`` or ``ES256``)."""

    alg: str
    kid: str
    key: Any = field(repr=False)

    @classmethod
    def generate(cls, alg: str, kid: str) -> SigningKey:
        if alg == "RS256":
            return cls(alg, kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if alg == "ES256":
            return cls(alg, kid, ec.generate_private_key(ec.SECP256R1()))
        raise ValueError(f"unsupported algorithm {alg}")

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK."""
        public = self.key.public_key()
        if self.alg == "RS256":
            numbers = public.public_numbers()
            return {
                "kty": "RSA",
                "alg": "RS256",
                "use": "sig",
                "kid": self.kid,
                "n": _uint(numbers.n),
                "e": _uint(numbers.e),
            }
        point = public.public_numbers()
        return {
            "kty": "EC",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "crv": "P-256",
            "x": _uint(point.x, 32),
            "y": _uint(point.y, 32),
        }

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        """A compact JWT of ``claims`` signed with this key."""
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid if kid is None else kid}
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        ).encode()
        if self.alg == "RS256":
            signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            der = self.key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input.decode() + "." + b64url(signature)


def jwks(*keys: SigningKey) -> str:
    """The JWKS document of ``keys``' public halves, as a string."""
    return json.dumps({"keys": [k.jwk() for k in keys]})


def claims(issuer: str, subject: str = "alice", *, ttl: int = 3600, **more: Any) -> dict[str, Any]:
    """Claims of a token from ``issuer`` for ``subject`` expiring ``ttl`` seconds from now
    (negative: already expired)."""
    now = int(time.time())
    return {"iss": issuer, "sub": subject, "iat": now - 10, "exp": now + ttl, **more}
