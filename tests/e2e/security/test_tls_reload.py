"""xdsd's own certificate replaced on disk while it runs (both gRPC implementations):
new connections to the gRPC, REST and admin listeners get the new certificate without
a restart; a broken replacement is logged and the old certificate keeps serving (also
through a SIGHUP); a replaced client CA is the only one trusted afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.certs import CertAuthority, CertFiles
from tests.harness import Xdsd, wait_until
from tests.xds_clients import first_response_over_tls

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SERVER_NAME = "xdsd.reload.test"
UNUSABLE = "still serving the previous certificate"


def _serial(der_or_path: bytes | Path) -> int:
    from cryptography import x509

    if isinstance(der_or_path, Path):
        return int(x509.load_pem_x509_certificate(der_or_path.read_bytes()).serial_number)
    return int(x509.load_der_x509_certificate(der_or_path).serial_number)


class Daemon:
    """xdsd with mTLS from certificate files outside its config directory."""

    def __init__(self, root: Path, impl: str) -> None:
        self.ca = CertAuthority(root / "ca")
        self.client = self.ca.issue("client", uris=["spiffe://reload.test/client"])
        self.tls = root / "tls"
        self.tls.mkdir()
        self.cert, self.key = self.tls / "xdsd.pem", self.tls / "xdsd-key.pem"
        self.client_ca = self.tls / "client-ca.pem"
        self.install(self.ca.issue("first", [SERVER_NAME]))
        shutil.copy(self.ca.ca_path, self.client_ca)
        config = root / "config"
        config.mkdir()
        (config / "echo.toml").write_text(
            'kind = "Service"\nname = "echo"\n\n[[ports]]\nname = "http"\nnumber = 8080\n'
            'protocol = "HTTP"\n\n[[endpoints]]\naddress = "127.0.0.1"\n'
        )
        settings = root / "settings.toml"
        settings.write_text(
            f'tls_cert = "{self.cert}"\ntls_key = "{self.key}"\n'
            f'tls_client_ca = "{self.client_ca}"\n'
        )
        self.xdsd = Xdsd(config, root, extra=["--settings", str(settings), "--grpc-impl", impl])

    def install(self, files: CertFiles) -> int:
        """Replace the certificate and key with ``files`` as a careful tool does (a
        temporary file renamed over each); return the new serial."""
        for source, target in ((files.cert, self.cert), (files.key, self.key)):
            staged = target.with_name(f".{target.name}.new")
            shutil.copy(source, staged)
            os.replace(staged, target)
        return _serial(self.cert)

    def ports(self) -> dict[str, tuple[int, str]]:
        """Each listener's port and ALPN."""
        x = self.xdsd
        return {
            "grpc": (x.grpc_port, "h2"),
            "rest": (x.rest_port, "http/1.1"),
            "admin": (x.admin_port, "http/1.1"),
        }

    def served(self, listener: str, client: CertFiles | None = None) -> int:
        """The serial of the certificate a new connection to ``listener`` is presented."""
        port, alpn = self.ports()[listener]
        context = ssl.create_default_context(cafile=str(self.ca.ca_path))
        context.check_hostname = False
        context.set_alpn_protocols([alpn])
        client = client or self.client
        context.load_cert_chain(client.cert, client.key)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return _serial(der)

    def everywhere(self, serial: int) -> bool:
        return all(self.served(listener) == serial for listener in self.ports())

    def ads(self, client: CertFiles, ca: Path | None = None) -> Any:
        """The first CDS response of an ADS stream over TLS presenting ``client`` (and
        trusting ``ca``), or the RpcError the stream ended with."""
        node = base_pb2.Node(id="reload-sidecar", cluster="client")
        return first_response_over_tls(
            self.xdsd.grpc_port,
            discovery_pb2.DiscoveryRequest(node=node, type_url=CDS),
            root=(ca or self.ca.ca_path).read_bytes(),
            key=client.key.read_bytes(),
            chain=client.cert.read_bytes(),
            server_name=SERVER_NAME,
        )

    def errors(self) -> int:
        return self.xdsd.log().count(UNUSABLE)


@pytest.fixture(params=["grpclib", "grpcio"])
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, request.param)
    try:
        yield d
    finally:
        d.xdsd.stop()


def test_a_replaced_certificate_reaches_every_listener(daemon: Daemon) -> None:
    first = _serial(daemon.cert)
    assert daemon.everywhere(first)
    second = daemon.install(daemon.ca.issue("second", [SERVER_NAME]))
    wait_until(lambda: daemon.everywhere(second), what="the new certificate on every listener")
    served = daemon.ads(daemon.client)
    assert isinstance(served, discovery_pb2.DiscoveryResponse), served
    assert "TLS: new connections get the certificate" in daemon.xdsd.log()

    # a key that is not the certificate's: logged, and the second certificate stays
    stray = daemon.ca.issue("stray", [SERVER_NAME])
    errors = daemon.errors()
    staged = daemon.tls / ".xdsd-key.pem.new"
    shutil.copy(stray.key, staged)
    os.replace(staged, daemon.key)
    wait_until(lambda: daemon.errors() > errors, what="the broken key logged as an error")
    errors = daemon.errors()
    assert daemon.everywhere(second)
    assert isinstance(daemon.ads(daemon.client), discovery_pb2.DiscoveryResponse)
    # SIGHUP reads the files again: the same error, the same certificate serving
    daemon.xdsd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: daemon.errors() > errors, what="SIGHUP to read the files again")
    assert daemon.everywhere(second)
    assert daemon.xdsd.alive()

    third = daemon.install(stray)
    wait_until(lambda: daemon.everywhere(third), what="the repaired pair served")


def test_a_replaced_client_ca_is_the_only_one_trusted(daemon: Daemon, tmp_path: Path) -> None:
    assert isinstance(daemon.ads(daemon.client), discovery_pb2.DiscoveryResponse)
    new_ca = CertAuthority(tmp_path / "new-ca", "the new CA")
    newcomer = new_ca.issue("newcomer", uris=["spiffe://reload.test/newcomer"])
    refused = daemon.ads(newcomer)
    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.UNAVAILABLE
    staged = daemon.tls / ".client-ca.pem.new"
    shutil.copy(new_ca.ca_path, staged)
    os.replace(staged, daemon.client_ca)

    def newcomer_served() -> bool:
        return isinstance(daemon.ads(newcomer), discovery_pb2.DiscoveryResponse)

    wait_until(newcomer_served, what="a client of the new CA served")
    old = daemon.ads(daemon.client)
    assert isinstance(old, grpc.RpcError) and old.code() == grpc.StatusCode.UNAVAILABLE
