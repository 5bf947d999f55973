"""``python -m bench SCENARIO [ARGS]``: run one benchmark, print a table, write JSON.

A scenario is the module ``bench/SCENARIO.py`` with ``main(argv: list[str]) -> dict``
(parsing its own flags, printing its table, returning its figures). Results go to
``bench/results/SCENARIO.json`` with the machine they came from.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
NOT_SCENARIOS = {"__init__", "__main__", "meshgen"}


def scenarios() -> list[str]:
    """Every scenario module in bench/ (helpers are named with a leading underscore)."""
    return sorted(
        p.stem
        for p in HERE.glob("*.py")
        if p.stem not in NOT_SCENARIOS and not p.stem.startswith("_")
    )


def main() -> int:
    names = scenarios()
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        print(
            f"usage: python -m bench {{{'|'.join(names)}}} [ARGS]  (ARGS: SCENARIO --help)",
            file=sys.stderr,
        )
        return 2
    name = sys.argv[1]
    module = importlib.import_module(f"bench.{name}")
    results = module.main(sys.argv[2:])
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:],
    }
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
