"""What the daemon hands the restart cache to write (``Daemon._capture``, then
``BuildCache.write``): never a build paired with files, certificates or registrations it
was not made from. Each case is one a reviewer made the cache accept and serve:

- a load dropped because newer changes arrived (the loader kept the newer files' stamps,
  the published build is the older one): nothing is captured until a load is applied;
- a certificate file rotated between the load and the write: its bytes differ from those
  the build holds, and nothing is written; nor after a change in a watched directory;
- workloads registered in this process's memory (no ``[registry.etcd]``): they end with
  the process, so such a build is not cached."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path

from tests.pem import FAKE_CERTIFICATE, write_fake_pem
from tests.sources.test_workload_group import KEY, _registered_mesh
from tests.test_restart_cache import CLASSES, SERVICE, write_config
from tests.translate.test_secrets import CONFIG, SIDECAR
from xdsd.app import Daemon
from xdsd.build_cache import BuildCache, CachedBuild
from xdsd.model.registrations import Registration
from xdsd.resources import ENDPOINT
from xdsd.settings import Settings
from xdsd.translate import NodeClass

OLD = 1_600_000_000_000_000_000  # a time long before the cache is written (not racy)


def _daemon(config: Path, state: Path) -> Daemon:
    return Daemon(Settings(config_dir=str(config), state_dir=str(state), grpc=None, admin=None))


def _age(*roots: Path) -> None:
    for root in roots:
        for path in [root, *root.rglob("*")]:
            os.utime(path, ns=(OLD, OLD))


def test_nothing_is_captured_after_a_dropped_load_until_one_is_applied(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _age(config)
    daemon = _daemon(config, tmp_path / "state")
    service = config / "services" / "reviews.toml"

    async def main() -> None:
        assert await daemon.reload(None)
        for key in CLASSES:
            assert daemon.state.snapshot(key) is not None
        assert daemon._capture() is not None

        service.write_text(SERVICE.format(name="reviews", address="10.0.0.9"))
        os.utime(service, ns=(OLD + 10**9, OLD + 10**9))

        async def newer_changes_arrived(_failed: bool) -> bool:
            return False

        assert not await daemon.reload({str(service)}, settled=newer_changes_arrived)
        assert daemon._capture() is None  # the loader's stamps are not the build's

        assert await daemon.reload({str(service)})
        for key in CLASSES:  # classes no client holds are built again on demand
            assert daemon.state.snapshot(key) is not None
        capture = daemon._capture()
        assert capture is not None
        cache = daemon.restart_cache = BuildCache(str(tmp_path / "state"))
        assert cache.write(capture)
        found = cache.read(daemon._fingerprint())
        assert isinstance(found, CachedBuild) and found.check() == ""
        payloads = [r.payload for s in found.classes.values() for r in s.get(ENDPOINT).values()]
        assert any(b"10.0.0.9" in p for p in payloads)  # the applied load's build

    asyncio.run(main())


def test_a_certificate_rotated_after_the_load_is_not_written(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    for name in ("client.pem", "client-key.pem", "ca.pem", "gw.pem", "gw-key.pem"):
        write_fake_pem(pki / name)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(CONFIG.replace("PKI", str(pki)))
    _age(config, pki)
    daemon = _daemon(config, tmp_path / "state")
    cache = BuildCache(str(tmp_path / "state"))

    async def main() -> None:
        assert await daemon.reload(None)
        assert daemon.state.snapshot(SIDECAR) is not None
        capture = daemon._capture()
        assert capture is not None and str(pki / "ca.pem") in capture.certificates
        (pki / "ca.pem").write_text(FAKE_CERTIFICATE + "# another CA\n")  # after the load
        assert not cache.write(capture)
        assert await daemon.reload(None)  # the reload the rotation brings
        assert cache.write(daemon._capture() or capture)
        found = cache.read(daemon._fingerprint())
        assert isinstance(found, CachedBuild) and found.check() == ""

    asyncio.run(main())


def test_a_watched_directory_changed_after_the_load_began_is_not_written(
    tmp_path: Path,
) -> None:
    """Mesh mutual TLS files are found by matching templates in watched directories: one
    changed after the load began (a new service's files) may hold what the build lacks."""
    config = write_config(tmp_path)
    certs = tmp_path / "certs"
    certs.mkdir()
    _age(config, certs)
    daemon = _daemon(config, tmp_path / "state")
    cache = BuildCache(str(tmp_path / "state"))

    async def main() -> None:
        assert await daemon.reload(None)
        for key in CLASSES:
            assert daemon.state.snapshot(key) is not None
        capture = daemon._capture()
        assert capture is not None and capture.loaded_ns > OLD
        watching = replace(capture, watched=frozenset({str(certs / ".")}))
        assert cache.write(watching)  # unchanged since long before the load
        write_fake_pem(certs / "web.pem")
        assert not cache.write(watching)
        assert cache.write(replace(watching, loaded_ns=time.time_ns() + 10**9))

    asyncio.run(main())


def test_a_build_with_in_memory_registrations_is_not_cached(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    _registered_mesh(config)
    _age(config)
    daemon = _daemon(config, tmp_path / "state")
    client = NodeClass("client")

    async def main() -> None:
        assert await daemon.reload(None)
        assert daemon.state.snapshot(client) is not None
        assert daemon._capture() is not None
        daemon.state.set_registrations([Registration(KEY, "10.0.0.7", "n1")])
        assert await daemon.reload(set())
        assert daemon._capture() is None  # a start of this process would have none
        daemon.state.set_registrations([])
        assert await daemon.reload(set())
        assert daemon._capture() is not None

    asyncio.run(main())
