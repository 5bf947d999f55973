"""The long fuzzing run: the suite's fuzz targets with a larger budget and fresh inputs.

``python -m bench fuzz [--examples N] [--seeded] [--targets loader,...,vhds,redaction]``
runs every Hypothesis target of ``tests/sources/test_fuzz_loader.py``, the plain YAML
reader against libyaml (``tests/sources/test_plain_yaml.py``),
``tests/protocol/test_fuzz_protocol.py``, ``tests/transports/test_fuzz_transports.py`` and
the VHDS subscriptions of ``tests/protocol/test_vhds.py`` and the config dump's
redaction of JWT key sets (``tests/resources/test_fuzz_redaction.py``)
with ``N`` examples per unit of budget (the suite uses 30; ``XDSD_FUZZ_EXAMPLES`` is the same
knob), random rather than derandomized unless ``--seeded``. Prints per target the examples
run, whether it failed (with the shrunk failing input Hypothesis reports) and the time.
The transport targets start their own ``xdsd serve``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGETS = {
    "loader": "tests/sources/test_fuzz_loader.py",
    "plain_yaml": "tests/sources/test_plain_yaml.py::test_fuzz_plain_yaml_agrees_with_libyaml",
    "protocol": "tests/protocol/test_fuzz_protocol.py",
    "transport": "tests/transports/test_fuzz_transports.py",
    "ca": "tests/ca/test_fuzz_ca.py",
    "workers": "tests/workers/test_fuzz_merge.py",
    "supervisor": "tests/workers/test_fuzz_workers.py",
    "restart_cache": "tests/test_fuzz_restart_cache.py",
    "vhds": "tests/protocol/test_vhds.py::test_vhds_streams_keep_their_promises",
    "redaction": "tests/resources/test_fuzz_redaction.py",
}
#: Run in the child pytest: prints one line per example count, read back below.
_TALLY_PLUGIN = """
import atexit
from tests.fuzzing import TALLY
atexit.register(lambda: print("\\n".join(f"TALLY {k} {v}" for k, v in sorted(TALLY.items()))))
"""


def run_target(name: str, examples: int, seeded: bool) -> dict[str, Any]:
    """One module's fuzz targets in a child pytest (a crash there cannot take this down)."""
    env = {
        **os.environ,
        "XDSD_FUZZ_EXAMPLES": str(examples),
        "XDSD_FUZZ_RANDOM": "" if seeded else "1",
        "PYTHONPATH": str(REPO),
    }
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _TALLY_PLUGIN + "import pytest, sys\nsys.exit(pytest.main(sys.argv[1:]))",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=0",
            TARGETS[name],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    tally = {}
    for line in run.stdout.splitlines():
        if line.startswith("TALLY "):
            _, key, count = line.split()
            tally[key] = int(count)
    failures = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {
        "examples": tally,
        "failed": failures,
        "returncode": run.returncode,
        "seconds": round(elapsed, 1),
        "output_tail": run.stdout[-4000:] if failures or run.returncode not in (0, 1) else "",
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench fuzz", description=__doc__)
    parser.add_argument(
        "--examples",
        type=int,
        default=int(os.environ.get("XDSD_FUZZ_EXAMPLES", "500")),
        help="examples per unit of budget (default 500; the suite uses 30)",
    )
    parser.add_argument("--seeded", action="store_true", help="derandomized, as in the suite")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"examples_per_unit": args.examples, "targets": {}}
    print(f"{'target':<20} {'examples':>9} {'failures':>9} {'seconds':>8}")
    for name in args.targets.split(","):
        result = run_target(name, args.examples, args.seeded)
        results["targets"][name] = result
        for key, count in sorted(result["examples"].items()):
            print(f"{key:<20} {count:>9}")
        print(
            f"{name + ' (all)':<20} {sum(result['examples'].values()):>9} "
            f"{len(result['failed']):>9} {result['seconds']:>8}"
        )
        for line in result["failed"]:
            print(f"  {line}")
        if result["output_tail"]:
            print(result["output_tail"])
    return results
