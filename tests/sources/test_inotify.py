"""Reading inotify directly (``sources.inotify``): paths as the kernel reports them, new
directories watched, moved-out ones forgotten, a full queue reported as the root and
followed by watches built again for the tree as it now is, a vanished root raised, and
links that loop watched once."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import shutil
import tempfile
from collections.abc import Iterator
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


# --- directories that cannot be watched or listed --------------------------------------

NOBODY = 65534


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (``tmp_path`` is its owner's alone)."""
    path = Path(tempfile.mkdtemp(prefix="xdsd-inotify-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.rglob("*"):
            with contextlib.suppress(OSError):
                sub.chmod(0o755)
        shutil.rmtree(path)


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run as a user without root's permission override (as the daemon does under
    ``DynamicUser``); nothing to do for a test that is not root."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@contextlib.contextmanager
def out_of_descriptors() -> Iterator[None]:
    """No descriptor left to open: the soft limit lowered and the rest taken."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken: list[int] = []
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.open("/dev/null", os.O_RDONLY))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_subtree_that_cannot_be_listed_for_want_of_descriptors_raises(tmp_path: Path) -> None:
    # A tree moved in while the process is out of descriptors: listing it fails with
    # EMFILE, and no event would say when that clears. ``read`` raises (the caller
    # sets the watch up again later) instead of leaving team/sub unwatched for good.
    root, staging = tmp_path / "root", tmp_path / "staging"
    root.mkdir()
    (staging / "team" / "sub").mkdir(parents=True)
    with TreeWatch(str(root), skip=_skip) as tree:
        os.rename(staging / "team", root / "team")
        select.select([tree.fileno()], [], [], 5)  # the event is queued (no descriptor used)
        with out_of_descriptors(), pytest.raises(OSError) as raised:
            tree.read()
        assert raised.value.errno == errno.EMFILE
    with TreeWatch(str(root), skip=_skip) as tree:  # set up again: the whole tree watched
        (root / "team" / "sub" / "s.toml").write_text("x = 1\n")
        assert tree.read() == {str(root / "team" / "sub" / "s.toml")}


def test_a_directory_that_may_not_be_read_is_watched_once_its_mode_changes(
    open_dir: Path,
) -> None:
    # rsync creates a directory 0700 and sets its mode at the end; the daemon runs as
    # another user. The directory is kept aside, and watched (its subtree too) when its
    # parent reports the change of its mode.
    root = open_dir / "config"
    root.mkdir()
    root.chmod(0o755)
    team = root / "team"
    with TreeWatch(str(root), skip=_skip) as tree:
        team.mkdir()
        (team / "sub").mkdir()
        team.chmod(0o000)
        with unprivileged():
            assert str(team) in tree.read()
        assert tree.pending == {str(team)}
        (team / "sub" / "t.toml").write_text("x = 1\n")  # unseen: not watched yet
        team.chmod(0o755)
        with unprivileged():
            assert str(team) in tree.read()
        assert tree.pending == set()
        (team / "sub" / "t.toml").write_text("x = 2\n")
        (team / "u.toml").write_text("x = 2\n")
        with unprivileged():
            assert tree.read() == {str(team / "sub" / "t.toml"), str(team / "u.toml")}


def test_a_directory_watched_but_not_listable_is_listed_once_its_mode_changes(
    open_dir: Path,
) -> None:
    # Readable but not searchable (0444): team is watched and listed, but what is in
    # it cannot be reached, so team/sub is kept aside until team's mode changes.
    root = open_dir / "config"
    (root / "team" / "sub").mkdir(parents=True)
    for path in (root, root / "team", root / "team" / "sub"):
        path.chmod(0o755)
    (root / "team").chmod(0o444)
    with unprivileged():
        tree = TreeWatch(str(root), skip=_skip)
    with tree:
        assert tree.pending == {str(root / "team" / "sub")}
        (root / "team").chmod(0o755)
        with unprivileged():
            assert str(root / "team") in tree.read()
        assert tree.pending == set()
        (root / "team" / "sub" / "s.toml").write_text("x = 1\n")
        assert tree.read() == {str(root / "team" / "sub" / "s.toml")}


def test_a_change_of_the_roots_own_mode_is_reported_as_the_root(open_dir: Path) -> None:
    # Nothing watches the root's parent: its own watch reports the change, as the root
    # (the loader then checks every file: a directory it could not list may be readable).
    root = open_dir / "config"
    root.mkdir()
    root.chmod(0o755)
    with TreeWatch(str(root), skip=_skip) as tree:
        root.chmod(0o311)
        root.chmod(0o755)
        assert tree.read() == {str(root)}


def test_directories_under_a_root_that_may_not_be_searched_are_watched_once_it_may(
    open_dir: Path,
) -> None:
    # The root readable but not searchable (0444): watched, its subdirectories not
    # reachable. Its own watch reports the change of its mode (nothing watches its
    # parent): they are watched then, and the root is reported.
    root = open_dir / "config"
    (root / "team").mkdir(parents=True)
    (root / "team").chmod(0o755)
    root.chmod(0o444)
    with unprivileged():
        tree = TreeWatch(str(root), skip=_skip)
    with tree:
        assert tree.pending == {str(root / "team")}
        root.chmod(0o755)
        with unprivileged():
            assert tree.read() == {str(root)}
        assert tree.pending == set()
        (root / "team" / "t.toml").write_text("x = 1\n")
        assert tree.read() == {str(root / "team" / "t.toml")}
