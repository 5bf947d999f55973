"""Versions are content hashes: the same files give the same versions in every process,
and an edit changes only the versions of the types it touches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG

NODE = ["--service", "productpage", "--label", "version=v1", "--instance-ip", "127.0.0.2"]


def versions(config_dir: Path, seed: str) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "render", "--config-dir", str(config_dir), *NODE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": seed},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)["versions"]
    return result


@pytest.fixture
def config(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE_CONFIG, tmp_path / "config")
    return tmp_path / "config"


def test_same_files_same_versions_across_processes(config: Path) -> None:
    first = versions(config, "1")
    assert first == versions(config, "4242")
    assert set(first) >= {"clusters", "endpoints", "listeners", "routes"}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("edit", "changed"),
    [
        # an endpoint address: only ClusterLoadAssignments change
        (("services/details.toml", '"10.0.0.21"', '"10.0.0.99"'), {"endpoints"}),
        # a route weight: only route configurations change
        (
            (
                "rules/reviews.yaml",
                "weight: 50\n        - destination",
                "weight: 70\n        - destination",
            ),
            {"routes"},
        ),
        # a load-balancer policy: only clusters change
        (("rules/destination-rules.yaml", "simple: ROUND_ROBIN", "simple: RANDOM"), {"clusters"}),
        # a new subset: a new cluster and its endpoints
        (
            (
                "rules/destination-rules.yaml",
                "  host: ratings\n  subsets:\n",
                "  host: ratings\n  subsets:\n    - name: v9\n      labels: {version: v9}\n",
            ),
            {"clusters", "endpoints"},
        ),
    ],
    ids=["endpoint", "route-weight", "lb-policy", "new-subset"],
)
def test_an_edit_changes_only_the_types_it_touches(
    config: Path, edit: tuple[str, str, str], changed: set[str]
) -> None:
    before = versions(config, "1")
    _edit(config / edit[0], edit[1], edit[2])
    after = versions(config, "2")
    assert {t for t in before if before[t] != after[t]} == changed
