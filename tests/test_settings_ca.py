"""``[mesh.ca]``: xdsd's own CA in the settings, every mistake an error at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.errors import ConfigError
from xdsd.model.mesh_config import CAAuthority, MeshCA
from xdsd.settings import Settings

MTLS = '[mesh.mtls]\nmode = "STRICT"\ntrust_domain = "mesh.test"\n'


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "xdsd.toml"
    path.write_text(text)
    return Settings.from_file(str(path))


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return [str(p).split("xdsd.toml", 1)[1] for p in info.value.problems]


def test_minimal_ca(tmp_path: Path) -> None:
    settings = _load(tmp_path, MTLS + '[mesh.ca]\nstate_dir = "state"\n')
    ca = settings.mesh.ca
    assert ca == MeshCA(state_dir=str(tmp_path / "state"))
    assert ca.signing_authority == CAAuthority("default")
    assert ca.origin.line == 4
    mtls = settings.mesh.mtls
    assert mtls.issued and mtls.trust_domain == "mesh.test"
    assert (mtls.ca, mtls.certificate, mtls.private_key) == ("", "", "")


def test_every_key(tmp_path: Path) -> None:
    text = MTLS + (
        "[mesh.ca]\n"
        'state_dir = "/var/lib/xdsd/ca"\n'
        'workload_ttl = "1h30m"\n'
        "renew_at = 0.7\n"
        'key_type = "rsa-2048"\n'
        'token_key = "keys/token.pem"\n'
        'revoked_tokens = ["abc_DEF-1", "x"]\n'
        'signing = "new"\n'
        "[[mesh.ca.authorities]]\n"
        'name = "old"\n'
        'cert = "/etc/ca/old.crt"\n'
        'key = "old.key"\n'
        "[[mesh.ca.authorities]]\n"
        'name = "new"\n'
    )
    ca = _load(tmp_path, text).mesh.ca
    assert ca == MeshCA(
        state_dir="/var/lib/xdsd/ca",
        authorities=(
            CAAuthority("old", "/etc/ca/old.crt", str(tmp_path / "old.key")),
            CAAuthority("new"),
        ),
        signing="new",
        workload_ttl_seconds=5400.0,
        renew_fraction=0.7,
        key_type="rsa-2048",
        token_key=str(tmp_path / "keys" / "token.pem"),
        revoked_tokens=("abc_DEF-1", "x"),
    )
    assert ca.signing_authority.name == "new"


def test_seconds_for_tests(tmp_path: Path) -> None:
    text = MTLS + '[mesh.ca]\nstate_dir = "s"\nworkload_ttl = "5s"\n'
    ca = _load(tmp_path, text).mesh.ca
    assert ca is not None and ca.workload_ttl_seconds == 5.0


def test_no_ca_leaves_mtls_file_based(tmp_path: Path) -> None:
    settings = _load(tmp_path, "")
    assert settings.mesh.ca is None and not settings.mesh.mtls.issued


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[mesh.ca]\nstate_dir = "s"\n', ":1: mesh.ca: xdsd's CA issues mesh mutual TLS"),
        (
            '[mesh.mtls]\nmode = "DISABLE"\n[mesh.ca]\nstate_dir = "s"\n',
            ":3: mesh.ca: xdsd's CA issues mesh mutual TLS",
        ),
        (MTLS + "[mesh.ca]\nrenew_at = 0.5\n", ":4: mesh.ca.state_dir: missing"),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nworkload_ttl = "100d"\n',
            ":6: mesh.ca.workload_ttl: must be a duration",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nworkload_ttl = "2400h"\n',
            ":6: mesh.ca.workload_ttl: must be from 1s to 90 days",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nworkload_ttl = "0s"\n',
            ":6: mesh.ca.workload_ttl: must be from 1s",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nrenew_at = 1\n',
            ":6: mesh.ca.renew_at: must be a fraction",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nrenew_at = 0\n',
            ":6: mesh.ca.renew_at: must be a fraction",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nkey_type = "dsa"\n',
            ":6: mesh.ca.key_type: must be one of ecdsa-p256, rsa-2048",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nrevoked_tokens = ["a b"]\n',
            ":6: mesh.ca.revoked_tokens: must be a list of token ids",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nworkload_tl = "1h"\n',
            ":6: mesh.ca.workload_tl: unknown setting; did you mean 'workload_ttl'?",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nsigning = "defualt"\n',
            ":6: mesh.ca.signing: names no authority; did you mean 'default'?",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\n[[mesh.ca.authorities]]\nname = "a"\ncert = "c"\n',
            ":6: mesh.ca.authorities[0].key: missing: give cert and key",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\n[[mesh.ca.authorities]]\ncert = "c"\nkey = "k"\n',
            ":6: mesh.ca.authorities[0]: names no authority",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\n[[mesh.ca.authorities]]\nname = "../x"\n',
            ":7: mesh.ca.authorities[0].name: must be a name",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\n[[mesh.ca.authorities]]\nname = "a"\nkye = "k"\n',
            ":8: mesh.ca.authorities[0].kye: unknown setting; did you mean 'key'?",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\n[[mesh.ca.authorities]]\nname = "a"\n'
            '[[mesh.ca.authorities]]\nname = "a"\n',
            ":9: mesh.ca.authorities[1].name: repeats authority 'a' (first at line 7)",
        ),
        (
            MTLS + '[mesh.ca]\nstate_dir = "s"\nauthorities = []\n',
            ":6: mesh.ca.authorities: is empty",
        ),
        (
            '[mesh.mtls]\nmode = "STRICT"\ncertificate = "/c/{service}.pem"\n'
            '[mesh.ca]\nstate_dir = "s"\n',
            ":3: mesh.mtls.certificate: [mesh.ca] issues the mesh's certificates",
        ),
        (
            '[mesh.mtls]\nmode = "STRICT"\nca = "/c/ca.pem"\n[mesh.ca]\nstate_dir = "s"\n',
            ":3: mesh.mtls.ca: [mesh.ca] issues the mesh's certificates",
        ),
        ("[mesh]\nca = 1\n", ":2: mesh.ca: must be a table"),
    ],
)
def test_mistakes_at_their_line(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(p.startswith(expected) for p in problems), problems


def test_mtls_without_ca_still_needs_its_files(tmp_path: Path) -> None:
    problems = _problems(tmp_path, '[mesh.mtls]\nmode = "STRICT"\n')
    assert ":1: mesh.mtls.certificate: missing: mutual TLS needs it" in problems
