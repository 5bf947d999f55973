"""Shared test helpers: paths of the repository, the example config and conformance inputs."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "config"
_SHARED = os.environ.get("XDSD_SHARED_DIR", str(REPO.parent / "shared"))
CONFORMANCE = Path(_SHARED) / "conformance"
