"""``IssuanceObserver``: what the CA side tells the daemon's metrics (the admin server's
``Metrics`` implements it; ``xdsd/app.py`` wires it), so that ``admin`` never imports
``ca``.

Who calls what: whoever signs a workload certificate for a proxy calls ``on_issued`` once
per certificate (``renewal=True`` when it replaces one the same proxy already held: a
timer renewal, or a re-issue after CA rotation); whoever refuses a proxy its identity
(no, bad, expired, revoked or forged token; a node claiming another service or namespace
than its credential) calls ``on_identity_refused`` with a short snake_case reason. The
calls are cheap counter increments and never raise.
"""

from __future__ import annotations

from typing import Protocol


class IssuanceObserver(Protocol):
    """Told of each workload certificate issued and each identity refused."""

    def on_issued(self, *, renewal: bool) -> None:
        """A workload certificate was signed for a proxy (``renewal``: it replaces one the
        proxy held)."""

    def on_identity_refused(self, reason: str) -> None:
        """A proxy was refused an identity; ``reason`` is a short snake_case word (e.g.
        ``token_expired``, ``token_revoked``, ``token_invalid``, ``no_credential``,
        ``identity_mismatch``)."""


class NoObserver:
    """An ``IssuanceObserver`` that counts nothing (the default where none is wired)."""

    def on_issued(self, *, renewal: bool) -> None:
        """Nothing."""

    def on_identity_refused(self, reason: str) -> None:
        """Nothing."""
