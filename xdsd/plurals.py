"""Counted nouns for messages: ``counted(1, "error")`` is "1 error", ``counted(2,
"error")`` "2 errors", ``counted(3, "proxy", "proxies")`` "3 proxies". Pure."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str = "") -> str:
    """``n`` and ``noun``, the noun in the plural (``plural``, else ``noun`` + "s")
    unless ``n`` is 1."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
