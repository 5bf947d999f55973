"""A load is all or nothing, always: whatever the kernel refuses while listing, stat'ing
or reading (a directory without permission, a process out of descriptors) is an error
naming the path and the OS error; an exception in the middle of a load leaves a loader
whose next load is exactly a cold load's; the reload boundary (``MeshState``) catches
everything, logs a bounded number of lines, and reports a reloader that cannot make
progress; the watcher outlives a failing reload."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG
from xdsd.app import MAX_KEPT_PROBLEMS, MAX_LOGGED_PROBLEMS, STUCK_AFTER, MeshState
from xdsd.errors import ConfigError, InternalError, Problem
from xdsd.sources import DirectoryLoader, config_file, load_directory
from xdsd.sources.crosscheck.directory import CrossCheck
from xdsd.sources.listing import environment_fault, os_problem
from xdsd.sources.watch import ConfigWatcher

REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0


def service(name: str) -> str:
    return (
        f'kind = "Service"\nname = "{name}"\n\n[[ports]]\nname = "http"\nnumber = 80\n'
        'protocol = "http"\n\n[[endpoints]]\naddress = "10.0.0.1"\n'
    )


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the user nobody can reach (``tmp_path`` is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="xdsd-listing-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.rglob("*"):
            if not sub.is_symlink():
                sub.chmod(0o755)
        shutil.rmtree(path)


def load_elsewhere(
    config: Path,
    *,
    user: str | None = None,
    nofile: int | None = None,
    mesh_dir: Path | None = None,
) -> list[str]:
    """The problems ``load_directory(config)`` reports in a child process running as
    ``user`` (without root's permission override) or with ``nofile`` descriptors
    left; [] when it loads."""
    script = textwrap.dedent(f"""
        import json, os, resource
        from xdsd.errors import ConfigError
        from xdsd.model.mesh_config import MeshTLS, MTLSMode
        from xdsd.sources import load_directory
        tls = MeshTLS()
        mesh_dir = {str(mesh_dir) if mesh_dir else None!r}
        if mesh_dir:
            tls = MeshTLS(mode=MTLSMode.STRICT, ca=mesh_dir + "/ca.pem",
                          certificate=mesh_dir + "/{{service}}/cert.pem",
                          private_key=mesh_dir + "/{{service}}/key.pem")
        nofile = {nofile!r}
        if nofile is not None:
            fds = []
            try:
                while True:
                    fds.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            for fd in fds[:nofile]:
                os.close(fd)
        try:
            load_directory({str(config)!r}, mesh_tls=tls)
            print(json.dumps([]))
        except ConfigError as e:
            print(json.dumps([str(p) for p in e.problems]))
    """)
    argv = [sys.executable, "-c", script]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
    if nofile is not None:
        argv = ["prlimit", "--nofile=64:64", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    problems: list[str] = json.loads(done.stdout)
    return problems


@pytest.mark.skipif(not ROOT, reason="needs root to run the loader as nobody")
def test_what_cannot_be_listed_stat_ed_or_read_refuses_the_load(open_dir: Path) -> None:
    config, outside = open_dir / "config", open_dir / "outside"
    (config / "team").mkdir(parents=True)
    outside.mkdir()
    (config / "a.toml").write_text(service("a"))
    (config / "team" / "b.toml").write_text(service("b"))
    (outside / "c.toml").write_text(service("c"))
    (config / "link.toml").symlink_to(outside / "c.toml")
    (config / "d.toml").write_text(service("d"))
    for path in (config, config / "team", outside):
        path.chmod(0o755)
    assert load_elsewhere(config, user="nobody") == []
    (config / "team").chmod(0)
    outside.chmod(0o700)  # nobody may not search it: link.toml cannot be stat'ed
    (config / "d.toml").chmod(0)
    assert sorted(load_elsewhere(config, user="nobody")) == [
        f"{config / 'd.toml'}: cannot read: EACCES: Permission denied",
        f"{config / 'link.toml'}: cannot read the directory entry: EACCES: Permission denied",
        f"{config / 'team'}: cannot list the directory: EACCES: Permission denied",
    ]


def test_out_of_descriptors_the_load_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.toml").write_text(service("a"))
    (tmp_path / "sub" / "b.toml").write_text(service("b"))
    assert load_elsewhere(tmp_path) == []
    problems = load_elsewhere(tmp_path, nofile=0)
    assert problems and all("EMFILE: Too many open files" in p for p in problems), problems
    assert problems[0].startswith(str(tmp_path))


@pytest.mark.skipif(not ROOT, reason="needs root to run the loader as nobody")
def test_a_mesh_certificate_directory_that_cannot_be_listed_refuses(open_dir: Path) -> None:
    config, pki = open_dir / "config", open_dir / "pki"
    (config).mkdir()
    (pki / "a").mkdir(parents=True)
    (config / "a.toml").write_text(service("a"))
    (pki / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (pki / "a" / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (pki / "a" / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    for path in (config, pki, pki / "a"):
        path.chmod(0o755)
    assert load_elsewhere(config, user="nobody", mesh_dir=pki) == []
    pki.chmod(0o711)  # its files can be read, its entries not listed
    problems = load_elsewhere(config, user="nobody", mesh_dir=pki)
    assert problems and all(f"in {pki}: EACCES: Permission denied" in p for p in problems)
    assert "mesh.mtls.certificate" in problems[0]


def cold(config: Path) -> object:
    return load_directory(str(config)).mesh


def test_a_crash_mid_load_leaves_a_loader_whose_next_load_is_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    loader = DirectoryLoader(str(config))
    loader.load()
    details = config / "services" / "details.toml"
    details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.77"))

    def crash(self: CrossCheck, *args: object) -> object:
        raise MemoryError

    with monkeypatch.context() as patch:
        patch.setattr(CrossCheck, "update", crash)
        with pytest.raises(MemoryError):
            loader.load({str(details)})
    # the next load (an edit, or a SIGHUP) gives what a cold load gives, no duplicates
    assert loader.load({str(details)}).mesh == cold(config)
    details.write_text(details.read_text().replace("10.0.0.77", "10.0.0.78"))
    assert loader.load().mesh == cold(config)


def test_an_exception_parsing_one_file_is_that_file_s_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    loader = DirectoryLoader(str(config))
    loader.load()
    details = config / "services" / "details.toml"
    parse = config_file.parse_document

    def crash(doc: object, *args: object, **kwargs: bool) -> object:
        if getattr(doc, "path", "") == str(details):
            raise RecursionError("maximum recursion depth exceeded")
        return parse(doc, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(config_file, "parse_document", crash)
        with pytest.raises(ConfigError) as caught:
            loader.load({str(details)})
    (problem,) = caught.value.problems
    assert problem.path == str(details)
    assert problem.message.startswith("internal error (RecursionError: maximum recursion")
    assert "Traceback" in caplog.text
    assert loader.load({str(details)}).mesh == cold(config)  # a failed file is read again


# --- the reload boundary ---------------------------------------------------------------


def test_an_exception_while_loading_is_a_refused_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    state = MeshState(str(config))
    assert state.reload()
    served = state.loaded

    def crash(*args: object) -> object:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(state._loader, "_load", crash)
    for attempt in range(1, STUCK_AFTER + 1):
        assert not state.reload()
        assert state.loaded is served and state.failed_reloads == attempt
        (problem,) = state.errors
        assert problem.message.startswith("internal error while loading (OSError: ")
        assert bool(state.stuck) == (attempt >= STUCK_AFTER)
    assert "Traceback" in caplog.text
    monkeypatch.undo()
    config.joinpath("services", "new.toml").write_text(service("new"))
    assert state.reload()
    assert state.errors == () and state.stuck == ""


def test_an_exception_while_publishing_keeps_the_last_good_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    state = MeshState(str(config))
    assert state.reload()
    served, translation = state.loaded, state.translation
    (config / "services" / "new.toml").write_text(service("new"))

    def crash(*args: object) -> object:
        raise ValueError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(state, "_translate_and_publish", crash)
        assert not state.reload({str(config / "services" / "new.toml")})
    assert state.loaded is served and state.translation is translation
    assert isinstance(state.errors[0], Problem) and "ValueError: a bug" in state.errors[0].message
    assert state.reload({str(config / "services" / "new.toml")})  # the same edit applies now
    assert state.loaded is not None and any(s.name == "new" for s in state.loaded.mesh.services)


def test_a_refusal_logs_and_keeps_a_bounded_number_of_problems(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = MeshState(str(tmp_path))
    many = ConfigError([Problem(f"f{i}.yaml", 1, "", "bad") for i in range(5000)])
    with caplog.at_level(logging.ERROR):
        assert not state.apply(many)
    assert len(caplog.records) == MAX_LOGGED_PROBLEMS + 2  # the first ones, "and N more", total
    assert "and 4900 more errors" in caplog.text
    assert len(state.errors) == MAX_KEPT_PROBLEMS + 1
    assert "and 4000 more like these" in state.errors[-1].message
    assert not isinstance(many, InternalError) and state.stuck == ""


def test_the_watcher_outlives_a_failing_reload(tmp_path: Path) -> None:
    async def main() -> list[set[str]]:
        calls: list[set[str]] = []
        done = asyncio.Event()

        async def on_change(paths: set[str]) -> None:
            calls.append(paths)
            if any("second" in p for p in paths):
                done.set()
            raise RuntimeError("a reload that fails")

        stop = asyncio.Event()
        watcher = ConfigWatcher(str(tmp_path), on_change, poll_interval=0.05)
        task = asyncio.create_task(watcher.run(stop))
        try:
            for _ in range(200):  # the watch is in place once a write is reported
                (tmp_path / "first.yaml").write_text("x")
                if calls:
                    break
                await asyncio.sleep(0.05)
            (tmp_path / "second.yaml").write_text("x")
            await asyncio.wait_for(done.wait(), 10)
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return calls

    calls = asyncio.run(main())
    assert any("second" in p for batch in calls for p in batch)


def test_readiness_reports_a_reloader_that_cannot_make_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` in this process: while reloads keep failing with internal errors,
    ``/readyz`` is 503 with the reason; a reload that succeeds makes it ready again."""
    import aiohttp

    from tests.harness import free_port
    from xdsd.app import serve
    from xdsd.settings import Address, Settings

    config = tmp_path / "config"
    config.mkdir()
    (config / "a.toml").write_text(service("a"))
    admin = free_port()
    settings = Settings(
        config_dir=str(config),
        grpc=Address("127.0.0.1", free_port()),
        rest=None,
        admin=Address("127.0.0.1", admin),
    )

    def crash(*args: object) -> object:
        raise MemoryError

    async def readyz(session: aiohttp.ClientSession) -> tuple[int, dict[str, object]]:
        async with session.get(f"http://127.0.0.1:{admin}/readyz") as response:
            return response.status, await response.json()

    async def until(session: aiohttp.ClientSession, status: int, edit: str) -> dict[str, object]:
        for i in range(200):  # each edit is a reload attempt
            (config / f"{edit}-{i}.toml").write_text(service(f"{edit}-{i}"))
            await asyncio.sleep(0.1)
            got, body = await readyz(session)
            if got == status:
                return body
        raise AssertionError(f"/readyz never answered {status}")

    async def main() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, ready=ready, stop=stop))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            async with aiohttp.ClientSession() as session:
                assert await readyz(session) == (200, {"ready": True})
                monkeypatch.setattr(DirectoryLoader, "_load", crash)
                body = await until(session, 503, "failing")
                assert body["ready"] is False
                assert "reloads failed with an internal error" in str(body["reason"])
                monkeypatch.undo()
                assert await until(session, 200, "good") == {"ready": True}
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("code", "fault"),
    [(errno.EMFILE, "EMFILE"), (errno.EACCES, "EACCES"), (errno.EIO, "EIO"), (errno.ELOOP, "")],
)
def test_an_os_error_of_the_machine_is_told_from_one_of_the_files(code: int, fault: str) -> None:
    # what the daemon tries again by itself (``environment_fault``), from the problem
    # the listing or a read makes of the OS error; never a problem of the files
    problem = os_problem("/c/a.toml", "read", OSError(code, os.strerror(code)))
    assert environment_fault(problem) == fault
    quoted = Problem("/c/a.toml", 3, "name", "cannot parse: EMFILE: quoted from the file")
    assert environment_fault(quoted) == ""
    assert environment_fault(Problem("/c/a.toml", 0, "", "dangling symbolic link")) == ""
