"""Reading inotify directly (``sources.inotify``): paths as the kernel reports them, new
directories watched, moved-out ones forgotten, a full queue reported as the root and
followed by watches built again for the tree as it now is, a vanished root raised, and
links that loop watched once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from xdsd.sources import inotify
from xdsd.sources.inotify import TreeWatch

pytestmark = pytest.mark.skipif(not inotify.available(), reason="needs Linux inotify")


def _skip(name: str) -> bool:
    return name == ".git"


def test_writes_creations_and_deletions_are_reported_by_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with TreeWatch(str(tmp_path), skip=_skip) as tree:
        assert tree.read() == set()
        (tmp_path / "a.yaml").write_text("x: 1\n")
        (tmp_path / "sub" / "b.yaml").write_text("y: 1\n")
        os.remove(tmp_path / "a.yaml")
        assert tree.read() == {str(tmp_path / "a.yaml"), str(tmp_path / "sub" / "b.yaml")}


def test_a_new_subtree_is_watched_and_reported(tmp_path: Path) -> None:
    with TreeWatch(str(tmp_path), skip=_skip) as tree:
        (tmp_path / "new" / "deeper").mkdir(parents=True)
        assert str(tmp_path / "new") in tree.read()
        (tmp_path / "new" / "deeper" / "c.yaml").write_text("z: 1\n")
        assert tree.read() == {str(tmp_path / "new" / "deeper" / "c.yaml")}


def test_a_directory_moved_in_is_watched_and_one_moved_out_is_forgotten(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "old").mkdir(parents=True)
    (outside / "incoming").mkdir(parents=True)
    with TreeWatch(str(root), skip=_skip) as tree:
        os.rename(root / "old", outside / "old")
        os.rename(outside / "incoming", root / "incoming")
        assert tree.read() == {str(root / "old"), str(root / "incoming")}
        (outside / "old" / "gone.yaml").write_text("x: 1\n")
        (root / "incoming" / "here.yaml").write_text("x: 1\n")
        assert tree.read() == {str(root / "incoming" / "here.yaml")}


def test_skipped_names_are_neither_watched_nor_reported(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    with TreeWatch(str(tmp_path), skip=_skip) as tree:
        (tmp_path / ".git" / "index").write_text("x")
        (tmp_path / ".git" / "refs").mkdir()
        assert tree.read() == set()


def test_a_full_kernel_queue_is_reported_as_the_root(tmp_path: Path) -> None:
    """More events than the kernel queues (``max_queued_events``) before a read: some
    were lost, and the root is reported (the loader then checks every file)."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 50000:
        pytest.skip(f"max_queued_events is {limit}: too many files to write")
    with TreeWatch(str(tmp_path), skip=_skip) as tree:
        for i in range(limit // 2 + 10):  # each file: IN_CREATE and IN_CLOSE_WRITE
            (tmp_path / f"f{i}.yaml").write_bytes(b"")
        assert str(tmp_path) in tree.read()


def _overflow(tree: TreeWatch, scratch: Path) -> None:
    """Queue more events than the kernel keeps (``max_queued_events``) on ``tree``
    without reading: whatever happens next until the read is lost."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 50000:
        pytest.skip(f"max_queued_events is {limit}: too many files to write")
    for i in range(limit // 2 + 10):  # each file: IN_CREATE and IN_CLOSE_WRITE
        (scratch / f"f{i}.yaml").write_bytes(b"")


def test_after_a_full_queue_the_watches_cover_the_tree_as_it_now_is(tmp_path: Path) -> None:
    """Directories created, renamed or moved out while events were being lost: once the
    overflow is read, new ones are watched, renamed ones report their new paths and
    moved-out ones report nothing (the watch set is built again from the tree)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for name in ("scratch", "old", "leaving"):
        (root / name).mkdir(parents=True)
    outside.mkdir()
    with TreeWatch(str(root), skip=_skip) as tree:
        _overflow(tree, root / "scratch")
        (root / "new" / "deeper").mkdir(parents=True)
        os.rename(root / "old", root / "renamed")
        os.rename(root / "leaving", outside / "leaving")
        assert str(root) in tree.read()
        (root / "new" / "c.yaml").write_text("x: 1\n")
        (root / "new" / "deeper" / "d.yaml").write_text("x: 1\n")
        (root / "renamed" / "e.yaml").write_text("x: 1\n")
        (outside / "leaving" / "f.yaml").write_text("x: 1\n")
        assert tree.read() == {
            str(root / "new" / "c.yaml"),
            str(root / "new" / "deeper" / "d.yaml"),
            str(root / "renamed" / "e.yaml"),
        }
        assert sorted(tree._dirs.values()) == [
            str(root),
            str(root / "new"),
            str(root / "new" / "deeper"),
            str(root / "renamed"),
            str(root / "scratch"),
        ]


def test_a_root_removed_while_the_queue_was_full_raises_file_not_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with TreeWatch(str(root), skip=_skip) as tree:
        _overflow(tree, root)
        shutil.rmtree(root)
        with pytest.raises(FileNotFoundError):
            tree.read()


def test_a_root_that_is_removed_raises_file_not_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with TreeWatch(str(root), skip=_skip) as tree:
        shutil.rmtree(root)
        with pytest.raises(FileNotFoundError):
            tree.read()


def test_a_missing_root_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TreeWatch(str(tmp_path / "absent"), skip=_skip)


def test_links_that_loop_are_watched_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink("..", tmp_path / "a" / "up")
    os.symlink(".", tmp_path / "self")
    with TreeWatch(str(tmp_path), skip=_skip) as tree:
        assert sorted(tree._dirs.values()) == [str(tmp_path), str(tmp_path / "a")]
        (tmp_path / "a" / "x.yaml").write_text("x: 1\n")
        assert tree.read() == {str(tmp_path / "a" / "x.yaml")}


def test_a_tree_beyond_the_directory_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inotify, "MAX_DIRECTORIES", 3)
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
    with pytest.raises(OSError, match="more than 3 directories"):
        TreeWatch(str(tmp_path), skip=_skip)
