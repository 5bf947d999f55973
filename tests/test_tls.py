"""xdsd's own certificate (``xdsd.tls.ServerCertificates``): what a new connection is
presented and whom it trusts after the files are replaced, broken or left alone. The
handshakes run in memory (``SSLObject`` over memory BIOs), through the context a
listener would have bound with at start."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority, CertFiles
from xdsd.errors import UsageError
from xdsd.settings import Settings
from xdsd.tls import ServerCertificates


def _serial(path: Path) -> int:
    from cryptography import x509

    return int(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def _handshake(
    server: ssl.SSLContext, ca: Path, client: CertFiles | None = None
) -> tuple[int, bool]:
    """Handshake a client trusting ``ca`` (presenting ``client``) with ``server``, in
    memory; returns the serial of the certificate the server presented and whether the
    server accepted the client (verified its certificate, when it asks for one)."""
    from cryptography import x509

    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = context.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    accepted, client_done = False, False
    for _ in range(10):
        if not client_done:
            try:
                c.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        try:
            s.do_handshake()
            accepted = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            break
        c_in.write(s_out.read())
        if accepted and client_done:
            break
    presented = c.getpeercert(binary_form=True)
    assert presented is not None, "no server certificate reached the client"
    return int(x509.load_der_x509_certificate(presented).serial_number), accepted


class Files:
    """A CA, xdsd's certificate files where the settings name them, and spares."""

    def __init__(self, root: Path) -> None:
        self.ca = CertAuthority(root / "ca")
        self.other_ca = CertAuthority(root / "other-ca", "another CA")
        self.tls = root / "tls"
        self.tls.mkdir()
        self.cert, self.key, self.client_ca = (
            self.tls / "xdsd.pem",
            self.tls / "xdsd-key.pem",
            self.tls / "client-ca.pem",
        )
        self.install(self.ca.issue("first", ["xdsd.test"]))
        shutil.copy(self.ca.ca_path, self.client_ca)
        self.client = self.ca.issue("client", uris=["spiffe://t/client"])
        self.other_client = self.other_ca.issue("other-client", uris=["spiffe://t/client"])
        self.settings = Settings(
            tls_cert=str(self.cert), tls_key=str(self.key), tls_client_ca=str(self.client_ca)
        )

    def install(self, files: CertFiles) -> int:
        """Replace xdsd's certificate and key with ``files`` (each by a rename); return
        the new serial."""
        for source, target in ((files.cert, self.cert), (files.key, self.key)):
            staged = target.with_name(f".{target.name}.new")
            shutil.copy(source, staged)
            os.replace(staged, target)
        return _serial(self.cert)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def test_untouched_files_are_not_read_again(files: Files) -> None:
    certificates = ServerCertificates(files.settings)
    first = certificates.current()
    assert not certificates.reload()
    assert not certificates.reload(force=True)  # read again, same content: nothing to do
    assert certificates.current() is first and first.generation == 1
    assert certificates.paths == {str(files.cert), str(files.key), str(files.client_ca)}


def test_a_replaced_certificate_serves_new_connections(files: Files) -> None:
    certificates = ServerCertificates(files.settings)
    listener = certificates.context("http/1.1")
    before = _serial(files.cert)
    assert _handshake(listener, files.ca.ca_path, files.client) == (before, True)
    after = files.install(files.ca.issue("second", ["xdsd.test"]))
    assert after != before
    assert certificates.reload()
    assert certificates.current().generation == 2
    assert certificates.current().chain == files.cert.read_bytes()
    # the context bound at start (both ALPNs) now presents the new certificate
    assert _handshake(listener, files.ca.ca_path, files.client) == (after, True)
    assert _handshake(certificates.context("h2"), files.ca.ca_path, files.client)[0] == after


def test_a_broken_replacement_keeps_the_old_certificate(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    certificates = ServerCertificates(files.settings)
    listener = certificates.context("h2")
    before = _serial(files.cert)
    stray = files.ca.issue("stray", ["xdsd.test"])
    os.replace(stray.key, files.key)  # a key that is not the certificate's
    with caplog.at_level(logging.ERROR, logger="xdsd.tls"):
        assert not certificates.reload()
    assert "cannot use them" in caplog.text and "still serving the previous" in caplog.text
    assert certificates.current().generation == 1
    assert _handshake(listener, files.ca.ca_path, files.client) == (before, True)
    # tried once per change: no error again until the files change (or a forced reload)
    caplog.clear()
    assert not certificates.reload()
    assert caplog.text == ""
    assert not certificates.reload(force=True)
    assert "cannot use them" in caplog.text
    # a good pair afterwards is taken
    after = files.install(files.ca.issue("fixed", ["xdsd.test"]))
    assert certificates.reload()
    assert _handshake(listener, files.ca.ca_path, files.client) == (after, True)


def test_a_missing_file_keeps_the_old_certificate(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    certificates = ServerCertificates(files.settings)
    files.client_ca.unlink()
    with caplog.at_level(logging.ERROR, logger="xdsd.tls"):
        assert not certificates.reload()
    assert f"tls_client_ca {files.client_ca}: cannot read it" in caplog.text
    listener = certificates.context("h2")
    assert _handshake(listener, files.ca.ca_path, files.client)[1]


def test_a_replaced_client_ca_is_the_only_one_trusted(files: Files) -> None:
    certificates = ServerCertificates(files.settings)
    listener = certificates.context("http/1.1")
    assert _handshake(listener, files.ca.ca_path, files.client)[1]
    assert not _handshake(listener, files.ca.ca_path, files.other_client)[1]
    staged = files.tls / ".client-ca.new"
    shutil.copy(files.other_ca.ca_path, staged)
    os.replace(staged, files.client_ca)
    assert certificates.reload()
    assert _handshake(listener, files.ca.ca_path, files.other_client)[1]
    assert not _handshake(listener, files.ca.ca_path, files.client)[1]  # old CA: gone
    assert not _handshake(listener, files.ca.ca_path, None)[1]  # still required


def test_unusable_files_at_start_are_a_usage_error(files: Files) -> None:
    files.key.write_text("not a key\n")
    with pytest.raises(UsageError, match="cannot use them"):
        ServerCertificates(files.settings)
