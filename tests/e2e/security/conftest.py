"""Fixtures shared by the security tests: one AuthorizationPolicy mesh for every module
that asks for it (``authz_world``), so the Envoys are started once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.security.authz_world import World, build


@pytest.fixture(scope="session")
def authz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The mesh of ``authz_world`` (started on first use, stopped at the end)."""
    world, others = build(tmp_path_factory.mktemp("authz"))
    try:
        yield world
    finally:
        world.mesh.stop()
        for thing in others:
            thing.stop()


@pytest.fixture
def w(authz_world: World) -> World:
    """``authz_world`` with no policy in force: both callers get 200."""
    world = authz_world
    world.policies("")
    world.until(
        lambda: world.call(world.client) == 200 and world.call(world.intruder) == 200,
        "no policy: everyone in",
    )
    return world
