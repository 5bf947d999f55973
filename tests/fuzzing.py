"""What every fuzz test shares: the Hypothesis budget, a hang guard, and a tally.

The suite's run is bounded and reproducible: ``derandomize=True`` (the same examples on
every run, so CI is stable), a small ``max_examples`` per target, no database, and no
Hypothesis deadline (a loaded CI box is slow, not wrong); hangs are caught by ``deadline``
instead, a wall-clock guard per example. ``python -m bench fuzz`` runs the same targets
longer and random: it sets ``XDSD_FUZZ_EXAMPLES`` (examples per target) and
``XDSD_FUZZ_RANDOM=1`` before importing the test modules, and reads ``TALLY``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import FrameType

from hypothesis import HealthCheck, settings

#: Examples per fuzz target (the suite's default is small; the bench raises it).
EXAMPLES = int(os.environ.get("XDSD_FUZZ_EXAMPLES", "30"))
#: Random (not derandomized) examples: the bench's long run explores new inputs each time.
RANDOM = os.environ.get("XDSD_FUZZ_RANDOM", "") == "1"
#: Seconds one example may take before it counts as a hang.
HANG_SECONDS = float(os.environ.get("XDSD_FUZZ_HANG_SECONDS", "20"))

#: How many examples each target ran (by test function name), for the bench's report.
TALLY: Counter[str] = Counter()


def fuzz_settings(scale: float = 1.0) -> settings:
    """The settings of a fuzz target: ``scale`` times the example budget (at least 1)."""
    return settings(
        max_examples=max(1, int(EXAMPLES * scale)),
        derandomize=not RANDOM,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
        ],
    )


class Hang(AssertionError):
    """An example ran longer than its deadline: the property "no hang" failed."""


@contextlib.contextmanager
def deadline(name: str, seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Run the block as one example of target ``name``: count it in ``TALLY`` and fail it
    with ``Hang`` when it runs past ``seconds``.

    In the main thread a SIGALRM timer interrupts Python code; a block stuck inside C code
    (which SIGALRM cannot interrupt) is caught by faulthandler at three times the deadline,
    which dumps every thread's stack and ends the process: a hang must never stall CI.
    """
    TALLY[name] += 1
    in_main = threading.current_thread() is threading.main_thread()
    previous = None
    outer = 0.0  # what remained of a timer already set (pytest-timeout's), put back after
    started = time.monotonic()
    if in_main:

        def expire(signum: int, frame: FrameType | None) -> None:
            raise Hang(f"{name}: an example ran past its {seconds:g} s deadline")

        outer = signal.getitimer(signal.ITIMER_REAL)[0]
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds * 3, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if in_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer:
                left = outer - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))
