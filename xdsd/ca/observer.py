"""``IssuanceObserver``: what the CA side tells the daemon's metrics (the admin server's
``Metrics`` implements it; ``xdsd/app.py`` wires it), so that ``admin`` never imports
``ca``.

Whoever signs a workload certificate for a proxy calls ``on_issued`` once per certificate
(``renewal=True`` when it replaces one the same stream already held: a timer renewal, or a
re-issue by a new signing authority). The call is a cheap counter increment and never
raises. Refusals are not reported here: a refused stream is a ``Refused`` the transports
count by its reason (``xdsd_refused_total``), like every other refusal.
"""

from __future__ import annotations

from typing import Protocol


class IssuanceObserver(Protocol):
    """Told of each workload certificate issued."""

    def on_issued(self, *, renewal: bool) -> None:
        """A workload certificate was signed for a proxy (``renewal``: it replaces one the
        proxy held)."""


class NoObserver:
    """An ``IssuanceObserver`` that counts nothing (the default where none is wired)."""

    def on_issued(self, *, renewal: bool) -> None:
        """Nothing."""
