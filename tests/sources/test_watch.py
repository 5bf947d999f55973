"""The directory watcher: every kind of change triggers a reload, editor litter does not,
and a config directory that is a swapped symlink (git-sync) is followed."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from xdsd.sources import watch
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


@pytest.fixture(params=[True, False], ids=["inotify", "watchfiles"])
def use_inotify(request: pytest.FixtureRequest) -> bool:
    """Each test runs with inotify read directly and with the ``watchfiles`` fallback."""
    return bool(request.param)


def _run(
    root: Path,
    steps: list[tuple[Step, str]],
    *,
    config_dir: Path | None = None,
    use_inotify: bool = True,
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
        watcher = ConfigWatcher(
            str(config_dir or root), on_change, poll_interval=0.05, use_inotify=use_inotify
        )
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


def test_create_edit_rename_delete_each_trigger(tmp_path: Path, use_inotify: bool) -> None:
    (tmp_path / "a.yaml").write_text("x: 1\n")
    steps: list[tuple[Step, str]] = [
        (lambda r: (r / "b.yaml").write_text("y: 1\n"), "b.yaml"),
        (lambda r: (r / "a.yaml").write_text("x: 2\n"), "a.yaml"),
        (lambda r: os.rename(r / "b.yaml", r / "c.yaml"), "c.yaml"),
        (lambda r: os.remove(r / "a.yaml"), "a.yaml"),
    ]
    assert len(_run(tmp_path, steps, use_inotify=use_inotify)) == 4


def test_editor_litter_never_reaches_the_reload(tmp_path: Path, use_inotify: bool) -> None:
    def litter_then_save(r: Path) -> None:
        (r / ".a.yaml.swp").write_text("swap")
        (r / "4913").write_text("")
        (r / "a.yaml~").write_text("backup")
        (r / "a.yaml").write_text("x: 1\n")

    (batches,) = _run(tmp_path, [(litter_then_save, "a.yaml")], use_inotify=use_inotify)
    names = {os.path.basename(p) for batch in batches for p in batch}
    assert names <= {"a.yaml", "probe.yaml"} and "a.yaml" in names


def test_configmap_style_symlink_swap_triggers(tmp_path: Path, use_inotify: bool) -> None:
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "a.yaml").write_text("x: 1\n")
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/a.yaml", tmp_path / "a.yaml")

    def swap(r: Path) -> None:
        (r / "..v2").mkdir()
        (r / "..v2" / "a.yaml").write_text("x: 2\n")
        os.symlink("..v2", r / "..data_tmp")
        os.replace(r / "..data_tmp", r / "..data")

    assert _run(tmp_path, [(swap, "..data")], use_inotify=use_inotify)


def test_swapped_config_dir_symlink_is_followed(tmp_path: Path, use_inotify: bool) -> None:
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
    batches = _run(tmp_path, steps, config_dir=tmp_path / "current", use_inotify=use_inotify)
    assert any(str(tmp_path / "rev2") in p for b in batches[1] for p in b)


def test_a_new_directory_and_what_is_written_in_it_are_seen(
    tmp_path: Path, use_inotify: bool
) -> None:
    """A directory made after the watch started is watched too: a file written in it
    later is reported by its own path."""

    def make_dir(r: Path) -> None:
        (r / "team").mkdir()

    def write_in_it(r: Path) -> None:
        (r / "team" / "later.yaml").write_text("x: 1\n")

    steps: list[tuple[Step, str]] = [(make_dir, "team"), (write_in_it, "later.yaml")]
    batches = _run(tmp_path, steps, use_inotify=use_inotify)
    assert str(tmp_path / "team" / "later.yaml") in batches[1][-1]


def _speculative(
    root: Path,
    load: Callable[[ConfigWatcher, set[str], int], Awaitable[bool | None]],
    until: Callable[[list[tuple[set[str], bool | None]]], bool],
    **options: float,
) -> list[tuple[set[str], bool | None]]:
    """Run a watcher on ``root`` whose ``on_change`` is ``load(watcher, paths, call)``;
    write a trigger file; return every call's (paths, result) once ``until`` holds for
    them (deadline 20 s)."""

    async def main() -> list[tuple[set[str], bool | None]]:
        calls: list[tuple[set[str], bool | None]] = []
        done, started = asyncio.Event(), asyncio.Event()

        async def on_change(paths: set[str]) -> bool | None:
            started.set()
            result = await load(watcher, paths, len(calls))
            calls.append((paths, result))
            if until(calls):
                done.set()
            return result

        stop = asyncio.Event()
        watcher = ConfigWatcher(str(root), on_change, poll_interval=0.05, **options)
        task = asyncio.create_task(watcher.run(stop))
        try:
            for _ in range(400):  # the watch is in place once a trigger is reported
                (root / "trigger.yaml").write_text("x: 1\n")
                try:
                    await asyncio.wait_for(started.wait(), 0.05)
                    break
                except TimeoutError:
                    continue
            await asyncio.wait_for(done.wait(), 20)
            seen = list(calls)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return seen

    return asyncio.run(main())


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_writes_during_a_load_supersede_it_and_are_loaded_with_it(tmp_path: Path) -> None:
    """The first load sees files written while it runs: it is superseded (its result
    dropped), and the next call gets the union of its paths and the new ones; that
    load, with nothing written meanwhile, is the one published."""

    async def load(watcher: ConfigWatcher, paths: set[str], call: int) -> bool:
        if call == 0:
            for i in range(5):
                (tmp_path / f"burst-{i}.yaml").write_text(f"i: {i}\n")
            await _until(watcher.superseded, "the writes to be noticed")
        return await watcher.settled()

    calls = _speculative(tmp_path, load, lambda calls: calls[-1][1] is True)
    first, *_, last = calls
    assert first[1] is False
    burst = {str(tmp_path / f"burst-{i}.yaml") for i in range(5)}
    assert first[0] <= last[0] and burst <= last[0]
    assert [result for _, result in calls].count(True) == 1


def test_a_stream_of_writes_that_never_ends_is_published_after_max_delay(
    tmp_path: Path,
) -> None:
    """Every load sees a newer write, yet once the oldest change is ``max_delay`` old
    ``superseded()`` says False and the load is published."""
    writes = 0

    async def load(watcher: ConfigWatcher, paths: set[str], call: int) -> bool:
        nonlocal writes
        seen = watcher._generation
        writes += 1
        (tmp_path / "stream.yaml").write_text(f"n: {writes}\n")
        await _until(lambda: watcher._generation != seen, "the write to be noticed")
        return not watcher.superseded()

    calls = _speculative(
        tmp_path, load, lambda calls: calls[-1][1] is True, max_delay=0.3, quiet_period=0.0
    )
    assert len(calls) >= 2 and calls[0][1] is False and calls[-1][1] is True


def test_a_lone_write_is_loaded_without_waiting_for_max_delay(tmp_path: Path) -> None:
    """With no quiet period and a max delay far beyond the test's deadline, a single
    write is still handed over (and published: nothing superseded it)."""

    async def load(watcher: ConfigWatcher, paths: set[str], call: int) -> bool:
        return await watcher.settled()

    calls = _speculative(
        tmp_path, load, lambda calls: calls[-1][1] is True, max_delay=3600.0, quiet_period=0.0
    )
    assert calls[-1][1] is True


def test_a_refused_load_is_held_and_dropped_when_a_write_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused load waits ``FAILED_HOLD`` (here: longer than the test) before it may
    be reported; a write meanwhile supersedes it, and the next load (which succeeds)
    does not wait that long."""
    monkeypatch.setattr(watch, "FAILED_HOLD", 3600.0)

    async def load(watcher: ConfigWatcher, paths: set[str], call: int) -> bool:
        if call == 0:
            held = asyncio.create_task(watcher.settled(failed=True))
            (tmp_path / "rest-of-it.yaml").write_text("x: 1\n")
            return await asyncio.wait_for(held, 20)
        return await watcher.settled()

    calls = _speculative(tmp_path, load, lambda calls: calls[-1][1] is True, max_delay=3600.0)
    assert calls[0][1] is False and calls[-1][1] is True
    assert str(tmp_path / "rest-of-it.yaml") in calls[-1][0]


def test_nothing_is_loaded_while_git_holds_the_index_lock(tmp_path: Path) -> None:
    """While ``.git/index.lock`` exists (a checkout under way) a change is not loaded;
    once it is gone, it is (and published)."""
    (tmp_path / ".git").mkdir()
    lock = tmp_path / ".git" / "index.lock"
    assert watch.git_index_lock(str(tmp_path / "sub" / "dir")) == str(lock)

    async def main() -> tuple[int, list[tuple[set[str], bool]]]:
        calls: list[tuple[set[str], bool]] = []
        called = asyncio.Event()

        async def on_change(paths: set[str]) -> bool:
            calls.append((paths, await watcher.settled()))
            called.set()
            return calls[-1][1]

        stop = asyncio.Event()
        watcher = ConfigWatcher(str(tmp_path), on_change, poll_interval=0.05, max_delay=3600)
        task = asyncio.create_task(watcher.run(stop))
        try:
            for _ in range(200):  # the watch is in place once a probe is loaded
                (tmp_path / "probe.yaml").write_text("x: 1\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(called.wait(), 0.05)
                    break
            lock.write_text("")
            before = len(calls)
            (tmp_path / "checked-out.yaml").write_text("x: 1\n")
            await asyncio.sleep(0.2)  # many times the hold of a one-path change
            during = len(calls) - before
            lock.unlink()
            await _until(
                lambda: any("checked-out" in p for paths, _ in calls for p in paths),
                "the change to be loaded",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return during, calls

    during, calls = asyncio.run(main())
    assert during == 0 and calls[-1][1] is True


def test_the_git_lock_of_a_linked_worktree_is_found(tmp_path: Path) -> None:
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text("gitdir: ../repo/.git/worktrees/wt\n")
    assert watch.git_index_lock(str(tmp_path / "wt")) == os.path.join(
        str(tmp_path / "wt"), "../repo/.git/worktrees/wt", "index.lock"
    )
