"""The directory watcher: every kind of change triggers a reload, editor litter does not,
and a config directory that is a swapped symlink (git-sync) is followed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from xdsd.sources.watch import ConfigWatcher, is_editor_temp


@pytest.mark.parametrize(
    "name",
    [
        ".reviews.yaml.swp",
        "reviews.yaml.swx",
        "reviews.yaml~",
        "4913",
        ".#reviews.yaml",
        "#reviews.yaml#",
        "reviews.yaml.tmp",
        "reviews.toml.bak",
    ],
)
def test_editor_temp_files_are_recognised(name: str) -> None:
    assert is_editor_temp(f"/etc/xdsd/{name}")


@pytest.mark.parametrize("name", ["reviews.yaml", "..data", "..2026_11_26", "a.toml", "x.json"])
def test_real_names_are_not_temp(name: str) -> None:
    assert not is_editor_temp(f"/etc/xdsd/{name}")


Step = Callable[[Path], None]


def _run(
    root: Path, steps: list[tuple[Step, str]], *, config_dir: Path | None = None
) -> list[list[set[str]]]:
    """Run a watcher on ``config_dir`` (default ``root``). First wait until it reports a
    probe file (so the watch is in place), then apply each step and wait, with a
    deadline, for a batch naming ``expected`` (a substring of a path). Returns, per step,
    every batch received up to and including that one."""

    async def main() -> list[list[set[str]]]:
        batches: asyncio.Queue[set[str]] = asyncio.Queue()

        async def on_change(paths: set[str]) -> None:
            await batches.put(paths)

        async def until(expected: str) -> list[set[str]]:
            got = []
            while True:
                batch = await asyncio.wait_for(batches.get(), 10)
                got.append(batch)
                if any(expected in p for p in batch):
                    return got

        stop = asyncio.Event()
        watcher = ConfigWatcher(str(config_dir or root), on_change, poll_interval=0.05)
        task = asyncio.create_task(watcher.run(stop))
        probe = (config_dir or root) / "probe.yaml"
        try:
            for _ in range(200):  # the watch is in place once a probe write is reported
                probe.write_text("probe: 1\n")
                try:
                    await asyncio.wait_for(batches.get(), 0.05)
                    break
                except TimeoutError:
                    continue
            seen = []
            for step, expected in steps:
                step(root)
                seen.append(await until(expected))
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return seen

    return asyncio.run(main())


def test_create_edit_rename_delete_each_trigger(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: 1\n")
    steps: list[tuple[Step, str]] = [
        (lambda r: (r / "b.yaml").write_text("y: 1\n"), "b.yaml"),
        (lambda r: (r / "a.yaml").write_text("x: 2\n"), "a.yaml"),
        (lambda r: os.rename(r / "b.yaml", r / "c.yaml"), "c.yaml"),
        (lambda r: os.remove(r / "a.yaml"), "a.yaml"),
    ]
    assert len(_run(tmp_path, steps)) == 4


def test_editor_litter_never_reaches_the_reload(tmp_path: Path) -> None:
    def litter_then_save(r: Path) -> None:
        (r / ".a.yaml.swp").write_text("swap")
        (r / "4913").write_text("")
        (r / "a.yaml~").write_text("backup")
        (r / "a.yaml").write_text("x: 1\n")

    (batches,) = _run(tmp_path, [(litter_then_save, "a.yaml")])
    names = {os.path.basename(p) for batch in batches for p in batch}
    assert names <= {"a.yaml", "probe.yaml"} and "a.yaml" in names


def test_configmap_style_symlink_swap_triggers(tmp_path: Path) -> None:
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "a.yaml").write_text("x: 1\n")
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/a.yaml", tmp_path / "a.yaml")

    def swap(r: Path) -> None:
        (r / "..v2").mkdir()
        (r / "..v2" / "a.yaml").write_text("x: 2\n")
        os.symlink("..v2", r / "..data_tmp")
        os.replace(r / "..data_tmp", r / "..data")

    assert _run(tmp_path, [(swap, "..data")])


def test_swapped_config_dir_symlink_is_followed(tmp_path: Path) -> None:
    for rev in ("rev1", "rev2"):
        (tmp_path / rev).mkdir()
        (tmp_path / rev / "a.yaml").write_text(f"rev: {rev}\n")
    os.symlink("rev1", tmp_path / "current")

    def swap(r: Path) -> None:
        os.symlink("rev2", r / "current.tmp")
        os.replace(r / "current.tmp", r / "current")

    def edit_new_target(r: Path) -> None:
        (r / "rev2" / "a.yaml").write_text("rev: rev2-edited\n")

    # the swap is reported as a change of the config dir itself; then edits in the new
    # target are seen, which they would not be if the old target were still watched
    steps: list[tuple[Step, str]] = [(swap, str(tmp_path / "current")), (edit_new_target, "a.yaml")]
    batches = _run(tmp_path, steps, config_dir=tmp_path / "current")
    assert any(str(tmp_path / "rev2") in p for b in batches[1] for p in b)
