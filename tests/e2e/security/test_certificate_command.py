"""``xdsd certificate`` against a real daemon with ``[mesh.ca]``: the key is made by the
command, the daemon signs for the token's identity only, the files verify against the
bundle, ``--renew-before`` skips and renews, refusals are one line, exit 1, and counted."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness import Xdsd, free_port, wait_until
from xdsd.ca.tokens import TokenAuthority
from xdsd.settings import Settings

SETTINGS = """\
[mesh.mtls]
mode = "STRICT"
trust_domain = "mesh.test"

[mesh.ca]
state_dir = "state"
"""
SPIFFE = "spiffe://mesh.test/ns/shop/sa/client"


class World:
    """A daemon with ``[mesh.ca]`` and a way to mint its tokens."""

    def __init__(self, root: Path, impl: str) -> None:
        self.root = root
        (root / "config").mkdir()
        self.settings_path = root / "xdsd.toml"
        self.settings_path.write_text(SETTINGS)
        self.xdsd = Xdsd(
            root / "config",
            root,
            extra=["--settings", str(self.settings_path), "--grpc-impl", impl],
        )
        self.settings = Settings.from_file(str(self.settings_path))

    def token_file(self, service: str, namespace: str = "shop", name: str = "token") -> Path:
        assert self.settings.mesh.ca is not None
        minted = TokenAuthority(self.settings.mesh.ca).mint(namespace, service, 3600)
        path = self.root / name
        path.write_text(minted.token + "\n")
        return path

    def certificate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "certificate",
                "--xds",
                f"127.0.0.1:{self.xdsd.grpc_port}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

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


def leaf_of(directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((directory / "cert.pem").read_bytes())[0]


def verifies(directory: Path) -> bool:
    """``openssl verify``: the chain in cert.pem leads to a root of ca.pem."""
    chain = x509.load_pem_x509_certificates((directory / "cert.pem").read_bytes())
    untrusted = directory.parent / "untrusted.pem"
    untrusted.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:]) or b""
    )
    argv = ["openssl", "verify", "-CAfile", str(directory / "ca.pem")]
    if chain[1:]:
        argv += ["-untrusted", str(untrusted)]
    proc = subprocess.run(
        [*argv, str(directory / "cert.pem")], capture_output=True, text=True, timeout=30
    )
    return proc.returncode == 0


def test_certificate_is_made_verified_renewed_and_refused(world: World) -> None:
    token = world.token_file("client")
    out = world.root / "certs"
    proc = world.certificate(
        "--service", "client", "--namespace", "shop", "--token-file", str(token), "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert SPIFFE in proc.stdout
    leaf = leaf_of(out)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    assert verifies(out)
    key_pem = (out / "key.pem").read_bytes()
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(der, spki)
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    # the key never reached the daemon: not in its log, not in its state directory
    secret = "".join(key_pem.decode().splitlines()[1:-1])[48:96]  # past the DER header
    assert secret not in world.xdsd.log()
    for path in (world.root / "state").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()

    # valid for longer than asked: nothing to do, nothing changes
    serial = leaf.serial_number
    proc = world.certificate(
        "--service",
        "client",
        "--namespace",
        "shop",
        "--token-file",
        str(token),
        "--out",
        str(out),
        "--renew-before",
        "1h",
    )
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr
    assert leaf_of(out).serial_number == serial and (out / "key.pem").read_bytes() == key_pem
    # the daemon unreachable for that check (a restart): still valid, left alone, exit 0
    unreachable = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "certificate",
            "--xds",
            f"127.0.0.1:{free_port()}",
            *("--service", "client", "--namespace", "shop", "--token-file", str(token)),
            *("--out", str(out), "--renew-before", "1h"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unreachable.returncode == 0, unreachable.stderr
    assert "not checked against the daemon's authority (cannot reach" in unreachable.stderr
    assert leaf_of(out).serial_number == serial and (out / "key.pem").read_bytes() == key_pem
    # ... but when a certificate is due, an unreachable daemon fails the run
    due = subprocess.run(
        [*unreachable.args[:-1], "25h"], capture_output=True, text=True, timeout=120
    )
    assert due.returncode == 1 and "cannot reach xdsd" in due.stderr, due.stderr
    # due (a 24 h certificate is not valid for 25 h more): renewed, with a new key
    proc = world.certificate(
        "--service",
        "client",
        "--namespace",
        "shop",
        "--token-file",
        str(token),
        "--out",
        str(out),
        "--renew-before",
        "25h",
    )
    assert proc.returncode == 0, proc.stderr
    assert leaf_of(out).serial_number != serial and (out / "key.pem").read_bytes() != key_pem
    assert verifies(out)
    versions = sorted(p.name for p in out.glob(".xdsd-*"))
    assert len(versions) == 2  # the current one and the one before

    # a token for client cannot get another identity
    proc = world.certificate(
        "--service",
        "other",
        "--namespace",
        "shop",
        "--token-file",
        str(token),
        "--out",
        str(world.root / "other"),
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "PERMISSION_DENIED" in proc.stderr
    assert "shop/client" in proc.stderr and "Traceback" not in proc.stderr
    assert not (world.root / "other").exists()
    # a token signed by another key is refused
    forged_state = world.root / "forged"
    forged_settings = world.root / "forged.toml"
    forged_settings.write_text(SETTINGS.replace('"state"', f'"{forged_state}"'))
    forged_ca = Settings.from_file(str(forged_settings)).mesh.ca
    assert forged_ca is not None
    forged = world.root / "forged-token"
    forged.write_text(TokenAuthority(forged_ca).mint("shop", "client", 3600).token)
    proc = world.certificate(
        "--service",
        "client",
        "--namespace",
        "shop",
        "--token-file",
        str(forged),
        "--out",
        str(out),
    )
    assert proc.returncode == 1 and "UNAUTHENTICATED" in proc.stderr, proc.stderr
    assert leaf_of(out).serial_number != serial  # the renewed pair stays
    metrics = world.metrics()
    assert 'xdsd_refused_total{listener="grpc",reason="identity_mismatch"} 1.0' in metrics
    assert 'xdsd_refused_total{listener="grpc",reason="token_forged"} 1.0' in metrics
    log = world.xdsd.log()
    assert "certificate signed for shop/client" in log
    assert "certificate for shop/other refused" in log
    assert token.read_text().strip() not in log


def test_without_ca_the_daemon_says_so(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    xdsd = Xdsd(tmp_path / "config", tmp_path)
    try:
        token = tmp_path / "token"
        token.write_text("a.b.c")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "certificate",
                "--service",
                "a",
                "--token-file",
                str(token),
                "--xds",
                f"127.0.0.1:{xdsd.grpc_port}",
                "--out",
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        assert "FAILED_PRECONDITION" in proc.stderr and "[mesh.ca]" in proc.stderr
        assert proc.stderr.count("\n") == 1
    finally:
        xdsd.stop()


def test_unreachable_daemon_is_one_line(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a.b.c")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "certificate",
            "--service",
            "a",
            "--token-file",
            str(token),
            "--xds",
            f"127.0.0.1:{free_port()}",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "cannot reach xdsd" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def rotation_settings(authorities: list[str], signing: str) -> str:
    text = SETTINGS + f'signing = "{signing}"\n'
    for name in authorities:
        text += f'\n[[mesh.ca.authorities]]\nname = "{name}"\n'
    return text


def roots(directory: Path) -> list[str]:
    pem = (directory / "ca.pem").read_bytes()
    return [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(pem)]


def test_renew_before_follows_a_ca_rotation(world: World) -> None:
    """The documented rotation (a new authority trusted next to the old; the new one
    signing; the old one removed), each step a settings change and SIGHUP, with the
    timer's ``--renew-before 12h``: the certificate has long to live throughout, yet
    ``ca.pem`` gains the new root at the first step, the certificate is re-issued by the
    new authority at the second, and ``ca.pem`` loses the old root at the third; a run
    with nothing changed does nothing."""
    world.settings_path.write_text(rotation_settings(["old"], "old"))
    world.xdsd.proc.send_signal(signal.SIGHUP)
    token = world.token_file("client")
    out = world.root / "certs"
    args = ("--service", "client", "--namespace", "shop", "--token-file", str(token))
    args += ("--out", str(out))

    def renew() -> subprocess.CompletedProcess[str]:
        proc = world.certificate(*args, "--renew-before", "12h")
        assert proc.returncode == 0, proc.stderr
        return proc

    # the daemon has reloaded when a fresh certificate is issued by "old"
    def issued_by(name: str) -> bool:
        proc = world.certificate(*args)
        assert proc.returncode == 0, proc.stderr
        return f"CN=xdsd CA {name}," in leaf_of(out).issuer.rfc4514_string()

    wait_until(lambda: issued_by("old"), what="the daemon signs with old")
    old_root = roots(out)
    assert len(old_root) == 1 and "nothing to do" in renew().stdout
    serial = leaf_of(out).serial_number

    # 1. new is trusted next to old: ca.pem gains it (and the certificate is renewed)
    world.settings_path.write_text(rotation_settings(["old", "new"], "old"))
    world.xdsd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(roots(out)) == 2 or not renew(), what="ca.pem trusts both")
    assert roots(out)[0] == old_root[0] and leaf_of(out).serial_number != serial
    assert leaf_of(out).issuer.rfc4514_string() == old_root[0] and verifies(out)
    assert "nothing to do" in renew().stdout

    # 2. new signs: the certificate is re-issued by it
    world.settings_path.write_text(rotation_settings(["old", "new"], "new"))
    world.xdsd.proc.send_signal(signal.SIGHUP)
    new_root = roots(out)[1]
    wait_until(
        lambda: leaf_of(out).issuer.rfc4514_string() == new_root or not renew(),
        what="re-issued by new",
    )
    assert verifies(out) and roots(out) == [old_root[0], new_root]
    assert "nothing to do" in renew().stdout

    # 3. old is removed: ca.pem holds only new
    world.settings_path.write_text(rotation_settings(["new"], "new"))
    world.xdsd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: roots(out) == [new_root] or not renew(), what="ca.pem trusts only new")
    assert verifies(out) and leaf_of(out).issuer.rfc4514_string() == new_root
    assert "nothing to do" in renew().stdout
