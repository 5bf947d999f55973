"""Placeholder PEM files for tests that need certificate files to exist and look like
PEM (xdsd checks the markers when it reads them; nothing here is a valid key)."""

from __future__ import annotations

from pathlib import Path

FAKE_CERTIFICATE = "-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n"
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nnot a real one\n-----END PRIVATE KEY-----\n"


def write_fake_pem(path: Path) -> None:
    """Write a placeholder at ``path``: a private key when its name says ``key``, else a
    certificate."""
    path.write_text(FAKE_KEY if "key" in path.name else FAKE_CERTIFICATE)
