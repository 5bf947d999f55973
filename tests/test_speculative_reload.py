"""A speculative load that newer file events superseded (``Daemon.reload`` with the
watcher's ``settled`` saying False) leaves no trace: nothing published, no error kept or logged,
no refused reload counted; the load after it, of the same paths, is the one that counts."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG
from xdsd.app import Daemon
from xdsd.settings import Address, Settings
from xdsd.translate import NodeClass


async def _superseded(failed: bool) -> bool:
    return False


async def _settled(failed: bool) -> bool:
    return True


NODE = NodeClass("productpage", labels=(("version", "v1"),))
HALF_WRITTEN = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: [\n"


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    return config


def _daemon(config: Path) -> Daemon:
    """A daemon on ``config`` (made in the running loop; never started)."""
    settings = Settings(config_dir=str(config), grpc=Address("127.0.0.1", 0), rest=None, admin=None)
    return Daemon(settings)


def _refused(daemon: Daemon) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "xdsd_reload_duration_seconds_count", {"outcome": "refused"}
    )
    return value or 0.0


def test_a_superseded_failing_load_reports_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path)
    half = config / "rules" / "half.yaml"

    async def main() -> None:
        daemon = _daemon(config)
        await daemon.reload(requested=True)
        assert daemon.state.loaded is not None and daemon.state.errors == ()
        half.write_text(HALF_WRITTEN)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            assert await daemon.reload({str(half)}, settled=_superseded) is False
        assert daemon.state.errors == () and daemon.state.failed_reloads == 0
        assert _refused(daemon) == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        # the same load, not superseded, is reported: the check above could fail
        assert await daemon.reload({str(half)}, settled=_settled) is True
        assert daemon.state.errors and daemon.state.failed_reloads == 1
        assert _refused(daemon) == 1
        assert any("config refused" in r.getMessage() for r in caplog.records)

    asyncio.run(main())


def test_a_superseded_good_load_publishes_nothing_until_loaded_again(tmp_path: Path) -> None:
    config = _config(tmp_path)
    details = config / "services" / "details.toml"

    async def main() -> None:
        daemon = _daemon(config)
        await daemon.reload(requested=True)
        before = daemon.state.snapshot(NODE)
        loaded = daemon.state.loaded
        details.write_text(details.read_text().replace("9080", "9081"))
        assert await daemon.reload({str(details)}, settled=_superseded) is False
        assert daemon.state.loaded is loaded and daemon.state.cache.get(NODE) is before
        # the next load of the same path (what the watcher does) publishes the change
        assert await daemon.reload({str(details)}, settled=_settled) is True
        assert daemon.state.loaded is not loaded
        after = daemon.state.snapshot(NODE)  # no client holds it: built again
        assert after is not None and after != before

    asyncio.run(main())
