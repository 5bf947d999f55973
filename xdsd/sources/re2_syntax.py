"""Whether Envoy accepts a regular expression, judged by RE2 itself.

Envoy matches every ``safe_regex`` with Google's RE2, and refuses, when it loads the
configuration, a pattern RE2 cannot parse (backreferences, lookahead and lookbehind,
possessive quantifiers, repetitions over 1000...) and one whose compiled RE2 program
is larger than its default limit (``ENVOY_MAX_PROGRAM_SIZE``: the error level of
``re2.max_program_size``, which xdsd does not raise). ``re2_problem`` compiles the
pattern with the RE2 library (the ``google-re2`` bindings) and says what Envoy would
say, so the operator reads it at the field's line instead of seeing the proxy refuse
the update. Pure: no I/O; the caller bounds the pattern's length.
"""

from __future__ import annotations

import re2

#: Envoy's default limit of an RE2 program's size (above it: the config is refused).
ENVOY_MAX_PROGRAM_SIZE = 100


def _options() -> re2.Options:
    """RE2 options that log nothing (a bad pattern is the caller's message, not a line
    on the daemon's standard error)."""
    options = re2.Options()
    options.log_errors = False
    return options


def re2_problem(pattern: str) -> str:
    """What Envoy would refuse in ``pattern`` ("" when it accepts it): RE2's own
    parse error, or a program larger than ``ENVOY_MAX_PROGRAM_SIZE``. Never raises
    for what the pattern holds."""
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as e:
        detail = e.args[0] if e.args else e
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"is not an RE2 regular expression (Envoy's syntax): {str(detail)[:200]}"
    except (ValueError, TypeError, OverflowError) as e:  # NUL, surrogates, sizes
        return f"is not an RE2 regular expression (Envoy's syntax): {str(e)[:200]}"
    size = int(compiled.programsize)
    if size > ENVOY_MAX_PROGRAM_SIZE:
        return (
            f"compiles to an RE2 program of size {size}, over Envoy's limit of "
            f"{ENVOY_MAX_PROGRAM_SIZE}: simplify it (fewer or smaller repetitions)"
        )
    return ""
