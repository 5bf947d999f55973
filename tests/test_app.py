"""MeshState: reloads by changed paths, last good configuration kept, classes republished;
the Daemon: its parts exist before it runs, and a failed start leaves nothing bound."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
from pathlib import Path

import pytest

from tests.harness import free_port, port_open
from tests.paths import EXAMPLE_CONFIG
from xdsd.app import Daemon
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import ConfigError, StartupError
from xdsd.resources import ENDPOINT
from xdsd.settings import Address, Settings
from xdsd.state import MeshState
from xdsd.translate import MeshTranslation, NodeClass

NODE = NodeClass("productpage", labels=(("version", "v1"),))


def test_a_changed_file_is_published_and_a_bad_one_refused(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    state = MeshState(str(config))
    assert state.reload()
    seen: list[Snapshot] = []
    state.cache.subscribe(NODE, seen.append)
    first = state.snapshot(NODE)
    assert first is not None

    details = config / "services" / "details.toml"
    details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.77"))
    assert state.reload({str(details)})
    assert seen and seen[-1].version(ENDPOINT) != first.version(ENDPOINT)
    assert set(state.last_timings) == {"list", "parse", "check", "translate", "snapshot"}
    assert state.loaded is not None and state.loaded.reread == 1

    bad = config / "services" / "bad.yaml"
    bad.write_text("kind: Service\nname: bad\nports: oops\n")
    assert not state.reload({str(bad)})
    assert state.errors and state.errors[0].path == str(bad)
    assert state.cache.get(NODE) is seen[-1]  # the last good configuration stays

    bad.unlink()
    assert not state.reload({str(bad)})  # same mesh as before the bad file: nothing new
    assert state.errors == ()

    details.write_text(details.read_text().replace("10.0.0.77", "10.0.0.78"))
    assert state.reload()  # forced: every file checked by stat
    cold = MeshTranslation(state.loaded.mesh).snapshot_for(NODE)
    current = state.cache.get(NODE)
    assert current is not None and dict(current.versions) == dict(cold.versions)


def test_builds_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    """What ``_building`` relies on when it freezes a build's survivors unwalked: a cold
    build, a class's first snapshot, an incremental reload and a refused one create no
    reference cycles, so there is nothing a collection would have freed."""
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    details = config / "services" / "details.toml"
    bad = config / "services" / "bad.yaml"
    was_enabled = gc.isenabled()
    gc.disable()
    gc.unfreeze()  # what earlier tests' builds froze
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds, to name it
    try:
        state = MeshState(str(config))
        assert state.reload()
        state.cache.subscribe(NODE, lambda _snapshot: None)
        assert state.snapshot(NODE) is not None
        details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.77"))
        assert state.reload({str(details)})
        bad.write_text("kind: Service\nname: bad\nports: oops\n")
        assert not state.reload({str(bad)})
        assert isinstance(state.load({str(bad)}, exclusive=False), ConfigError)
        gc.unfreeze()
        gc.collect()
        assert sorted({f"{type(o).__module__}.{type(o).__name__}" for o in gc.garbage}) == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_a_refused_mesh_mtls_change_keeps_serving_the_last_good_translation(
    tmp_path: Path,
) -> None:
    import dataclasses

    from xdsd.model.mesh_config import AccessLog, MeshConfig, MeshTLS, MTLSMode

    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    state = MeshState(str(config))
    assert state.reload()
    state.cache.subscribe(NODE, lambda _snapshot: None)
    before = state.snapshot(NODE)
    # Mesh mTLS whose CA is missing: the next load (which reads its files) is refused.
    mtls = MeshTLS(
        mode=MTLSMode.STRICT,
        ca=str(tmp_path / "missing-ca.pem"),
        certificate=str(tmp_path / "{service}.pem"),
        private_key=str(tmp_path / "{service}-key.pem"),
    )
    assert not state.set_mesh_config(MeshConfig(mtls=mtls))
    assert not state.reload()
    assert [p.field for p in state.errors] == ["mesh.mtls.ca"]
    # Another defaults change meanwhile is not translated against the old mesh's files.
    logged = MeshConfig(mtls=mtls, access_log=AccessLog(enabled=True))
    assert not state.set_mesh_config(logged)
    assert state.cache.get(NODE) is before
    # Once the settings can be served, the next load translates them.
    assert not state.set_mesh_config(dataclasses.replace(logged, mtls=MeshTLS()))
    assert state.reload()
    after = state.cache.get(NODE)
    assert after is not None and after is not before


def test_a_daemon_reloads_before_it_runs(tmp_path: Path) -> None:
    """Every part a reload touches exists once the daemon is constructed: a reload
    before ``start`` loads the directory and publishes, and binds nothing."""
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    grpc = free_port()
    settings = Settings(
        config_dir=str(config), grpc=Address("127.0.0.1", grpc), rest=None, admin=None
    )

    async def main() -> None:
        daemon = Daemon(settings)
        assert daemon.state.loaded is None
        await daemon.reload(requested=True)
        assert daemon.state.loaded is not None and daemon.state.errors == ()
        assert daemon.trouble() == ""
        assert not port_open("127.0.0.1", grpc)

    asyncio.run(main())


def test_a_start_that_cannot_bind_closes_what_it_bound(tmp_path: Path) -> None:
    """The admin address is taken: ``start`` raises StartupError naming the address and
    the flag, and the gRPC and REST listeners it had bound before are closed again."""
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    grpc, rest = free_port(), free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin = taken.getsockname()[1]
        settings = Settings(
            config_dir=str(config),
            grpc=Address("127.0.0.1", grpc),
            rest=Address("127.0.0.1", rest),
            admin=Address("127.0.0.1", admin),
        )

        async def main() -> None:
            daemon = Daemon(settings)
            with pytest.raises(StartupError, match=f"127.0.0.1:{admin} for admin.*--admin"):
                await daemon.start()
            assert [listener.name for listener in daemon.listeners] == [
                "gRPC xDS",
                "REST xDS",
                "admin",
            ]
            # still in the daemon's loop, the daemon alive: closed, not collected
            assert not port_open("127.0.0.1", grpc) and not port_open("127.0.0.1", rest)

        asyncio.run(main())


def test_an_admin_socket_replaces_the_admin_address(tmp_path: Path) -> None:
    """With ``admin_socket`` the admin server listens on that unix socket, mode 0600, in
    place of ``settings.admin`` (a stale socket file there is replaced; a regular file
    is refused), answers there, and the file is gone after the shutdown."""
    import aiohttp

    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)
    admin = free_port()
    settings = Settings(
        config_dir=str(config),
        grpc=Address("127.0.0.1", free_port()),
        rest=None,
        admin=Address("127.0.0.1", admin),
    )
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX) as stale:  # a socket file left by a dead worker
        stale.bind(str(path))

    async def main() -> None:
        daemon = Daemon(settings, admin_socket=str(path))
        await daemon.start()
        try:
            assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600
            assert not port_open("127.0.0.1", admin)
            connector = aiohttp.UnixConnector(path=str(path))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get("http://worker/readyz") as response,
            ):
                assert response.status == 200
                assert (await response.json())["ready"] is True
        finally:
            await daemon.shutdown(1.0)
        assert not path.exists()

        path.write_text("not a socket")
        refused = Daemon(settings, admin_socket=str(path))
        with pytest.raises(StartupError, match="admin"):
            await refused.start()
        assert path.read_text() == "not a socket"

    asyncio.run(main())


def test_only_a_daemon_that_writes_the_cache_writes_it(tmp_path: Path) -> None:
    """Workers of ``serve --workers`` share one state directory; all but the first are
    built with ``writes_cache=False``: they read the restart cache but never write it.
    Two daemons load the same directory side by side, each with its own state
    directory; once the writing one's cache is on disk, the other's is still absent."""
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, config)

    def settings(state: str) -> Settings:
        return Settings(
            config_dir=str(config),
            grpc=Address("127.0.0.1", free_port()),
            rest=None,
            admin=None,
            state_dir=str(tmp_path / state),
        )

    async def main() -> None:
        stop = asyncio.Event()
        writer = Daemon(settings("writer"), stop=stop)
        reader = Daemon(settings("reader"), stop=stop, writes_cache=False)
        runs = [asyncio.create_task(d.run()) for d in (reader, writer)]
        try:
            async with asyncio.timeout(30):
                while not (tmp_path / "writer" / "restart-cache").exists():
                    await asyncio.sleep(0.05)
            assert not (tmp_path / "reader" / "restart-cache").exists()
            assert (tmp_path / "reader" / "restart-cache.key").exists()  # it did read
        finally:
            stop.set()
            await asyncio.gather(*runs)

    asyncio.run(main())
