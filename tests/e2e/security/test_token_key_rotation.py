"""Replacing ``token_key`` (the remedy for a leaked key) with a real daemon and real
grpcio ADS streams: after SIGHUP with the new key, a stream opened earlier with a token
of the old key ends at once with UNAUTHENTICATED (counted as ``token_forged``), a new
stream with such a token is refused, and a stream with a token of the new key is
served. Runs once per gRPC server implementation (grpclib, grpcio)."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.security.test_issued_identities import Stream, sidecar_node
from tests.harness import Xdsd
from xdsd.ca.tokens import TokenAuthority
from xdsd.settings import Settings


def write_key(path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class World:
    """A daemon with ``[mesh.ca]`` whose token key is ``old.key``, and ``new.key``."""

    def __init__(self, root: Path, impl: str) -> None:
        self.root = root
        (root / "config").mkdir()
        self.old, self.new = root / "old.key", root / "new.key"
        write_key(self.old)
        write_key(self.new)
        self.settings = root / "xdsd.toml"
        self.use(self.old)
        self.xdsd = Xdsd(
            root / "config", root, extra=["--settings", str(self.settings), "--grpc-impl", impl]
        )

    def use(self, key: Path) -> None:
        self.settings.write_text(
            '[mesh.mtls]\nmode = "STRICT"\ntrust_domain = "mesh.test"\n\n'
            f'[mesh.ca]\nstate_dir = "{self.root / "state"}"\ntoken_key = "{key}"\n'
        )

    def token(self, service: str) -> str:
        ca = Settings.from_file(str(self.settings)).mesh.ca
        assert ca is not None
        return TokenAuthority(ca).mint("default", service, 10 * 365 * 86400).token

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.xdsd.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())


@pytest.fixture(params=["grpclib", "grpcio"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    w = World(tmp_path, request.param)
    try:
        yield w
    finally:
        w.xdsd.stop()


def test_a_new_token_key_ends_streams_of_old_tokens(world: World) -> None:
    stale = world.token("client")
    stream = Stream(world.xdsd.grpc_port, sidecar_node("stale", "client"), stale)
    try:
        first = stream.first()
        assert isinstance(first, discovery_pb2.DiscoveryResponse), first
        world.use(world.new)
        world.xdsd.proc.send_signal(signal.SIGHUP)
        ended = stream.first()  # the next message, or the status that ended the stream
        assert isinstance(ended, grpc.RpcError), ended
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED, ended.details()
        assert "signature does not verify" in (ended.details() or "")
        assert stale not in (ended.details() or "")
    finally:
        stream.close()
    assert 'xdsd_refused_total{listener="grpc",reason="token_forged"}' in world.metrics()
    # a new stream with the old key's token is refused; the new key's is served
    again = Stream(world.xdsd.grpc_port, sidecar_node("stale-2", "client"), stale)
    try:
        refused = again.first()
        assert isinstance(refused, grpc.RpcError), refused
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        again.close()
    fresh = Stream(world.xdsd.grpc_port, sidecar_node("fresh", "client"), world.token("client"))
    try:
        assert isinstance(fresh.first(), discovery_pb2.DiscoveryResponse)
    finally:
        fresh.close()
    assert stale not in world.xdsd.log()
