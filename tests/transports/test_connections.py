"""The pure parts of ``xdsd.transports.connections``: the log throttle, the token bucket
and the connection gate's counting, driven by a fake clock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xdsd.transports.connections import (
    ConnectionGate,
    ConnectionLimits,
    LogThrottle,
    TokenBucket,
    descriptor_budget,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_lets_one_line_per_interval_and_counts_the_rest() -> None:
    clock = Clock()
    throttle = LogThrottle(10.0, clock)
    assert throttle.allow("a") == 0
    assert [throttle.allow("a") for _ in range(5)] == [None] * 5
    assert throttle.allow("b") == 0  # keys are separate
    clock.now += 10.0
    assert throttle.allow("a") == 5  # the next line says how many were held back
    assert throttle.allow("a") is None


def test_the_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=5.0, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 1.0  # two more tokens
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 100.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 5
    assert all(TokenBucket(0.0, 0.0, clock).take() for _ in range(100))  # rate 0: no limit


def test_the_gate_counts_per_address_and_in_total() -> None:
    refused: list[tuple[str, str]] = []
    gate = ConnectionGate(
        ConnectionLimits(max_connections=3, max_connections_per_address=2),
        on_refused=lambda listener, reason: refused.append((listener, reason)),
        clock=Clock(),
    )
    assert gate.admit("grpc", "a") and gate.admit("grpc", "a")
    assert not gate.admit("grpc", "a")
    assert gate.admit("rest", "b")
    assert not gate.admit("rest", "c")  # 3 open: the total
    assert gate.admit("admin", "c", reserve=1)  # the admin reserve
    assert refused == [
        ("grpc", "too_many_connections_from_address"),
        ("rest", "too_many_connections"),
    ]
    gate.release("a")
    gate.release("c")
    assert gate.open == 2 and gate["a"] == 1 and gate["c"] == 0
    assert gate.admit("grpc", "a")


@pytest.mark.parametrize(("soft", "budget"), [(1024, 704), (64, 16), (65536, 49088)])
def test_the_default_total_leaves_descriptors_for_files(soft: int, budget: int) -> None:
    assert descriptor_budget(soft) == budget
    assert ConnectionGate(ConnectionLimits(max_connections=7)).max_connections == 7


RAISE = """
import resource, sys
from xdsd.transports.connections import raise_descriptor_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
first = raise_descriptor_limit()
second = raise_descriptor_limit()
capped = (resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)), raise_descriptor_limit(1000))[1]
print(first, second, capped, resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    """In a child process: the test process keeps its own limits."""
    run = subprocess.run([sys.executable, "-c", RAISE], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == "(256, 4096) (4096, 4096) (256, 1000) (1000, 4096)"
