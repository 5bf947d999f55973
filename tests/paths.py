"""Paths the tests use: the repository, the example config and the conformance inputs.

Conformance inputs are third-party files (Istio's samples). The shared copy beside the
repository (``../shared/conformance``, or ``$XDSD_SHARED_DIR/conformance``) is preferred when
present; ``tests/data/conformance`` is an unchanged copy of it so that a clean clone alone
runs the suite.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "config"
_SHARED = Path(os.environ.get("XDSD_SHARED_DIR", str(REPO.parent / "shared")))
CONFORMANCE = (
    _SHARED / "conformance"
    if (_SHARED / "conformance").is_dir()
    else REPO / "tests" / "data" / "conformance"
)
