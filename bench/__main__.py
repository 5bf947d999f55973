"""``python -m bench SCENARIO [ARGS]``: run one benchmark, print a table, write JSON to
``bench/results/SCENARIO.json``."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

SCENARIOS = ("render", "propagation")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SCENARIOS:
        print(f"usage: python -m bench {{{'|'.join(SCENARIOS)}}} [ARGS]", file=sys.stderr)
        return 2
    name = sys.argv[1]
    if name == "render":
        from bench.render import main as run
    else:
        from bench.propagation import main as run
    results = run(sys.argv[2:])
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    meta = {"machine": platform.platform(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
