"""Trees of code measured side by side (``--baseline TREE``): each one's bytecode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def compile_bytecode(tree: Path) -> None:
    """Compile ``tree``'s xdsd to bytecode beside its sources (what an install does), so
    that neither tree of a comparison compiles a module while it is timed (a run with
    ``PYTHONDONTWRITEBYTECODE=1`` would compile every module it imports, the lazy ones
    during the load)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tree / "xdsd")],
        check=True,
        stdout=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
