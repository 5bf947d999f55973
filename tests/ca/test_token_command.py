"""``xdsd token``: the token alone on stdout, its id and expiry on stderr, clean refusals
(exit codes, no tracebacks) for settings without ``[mesh.ca]`` and bad flags."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from xdsd.ca.tokens import TokenAuthority
from xdsd.cli import main
from xdsd.settings import Settings

SETTINGS = (
    '[mesh.mtls]\nmode = "STRICT"\ntrust_domain = "mesh.test"\n[mesh.ca]\nstate_dir = "state"\n'
)


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    path = tmp_path / "xdsd.toml"
    path.write_text(SETTINGS)
    return path


def test_token_verifies_with_the_daemons_settings(
    settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--service", "web", "--namespace", "shop", "--ttl", "2h"]
    code = main(["token", *flags, "--settings", str(settings)])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.count("\n") == 1 and out.endswith("\n") and out.count(".") == 2
    ca = Settings.from_file(str(settings)).mesh.ca
    assert ca is not None
    claims = TokenAuthority(ca).verify(out.strip())
    assert (claims.namespace, claims.service) == ("shop", "web")
    assert abs(claims.expires.timestamp() - time.time() - 7200) < 10
    assert claims.token_id in err and claims.expires.isoformat(timespec="seconds") in err
    assert out.strip() not in err
    assert (settings.parent / "state" / "token.key").exists()


def test_default_namespace_and_ttl(settings: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--service", "web", "--settings", str(settings)]) == 0
    ca = Settings.from_file(str(settings)).mesh.ca
    assert ca is not None
    claims = TokenAuthority(ca).verify(capsys.readouterr().out.strip())
    assert claims.namespace == "default"
    assert abs(claims.expires.timestamp() - time.time() - 720 * 3600) < 10


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--ttl", "forever"], 2, "--ttl 'forever': must be a positive duration"),
        (["--ttl", "0s"], 2, "must be a positive duration"),
        (["--ttl=-1h"], 2, "must be a positive duration"),
        (["--ttl", "100000h"], 2, "at most"),
        (["--namespace", "a/b"], 2, "namespace 'a/b'"),
    ],
)
def test_bad_flags(
    settings: Path, capsys: pytest.CaptureFixture[str], flags: list[str], code: int, message: str
) -> None:
    assert main(["token", "--service", "web", "--settings", str(settings), *flags]) == code
    out, err = capsys.readouterr()
    assert out == "" and message in err


def test_refusals_without_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--service", "web"]) == 2
    assert "token needs --settings" in capsys.readouterr().err
    plain = tmp_path / "plain.toml"
    plain.write_text("")
    assert main(["token", "--service", "web", "--settings", str(plain)]) == 2
    assert "has no [mesh.ca]" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[mesh.ca]\nstate_dir = 1\n")
    assert main(["token", "--service", "web", "--settings", str(broken)]) == 1
    assert "broken.toml:2: mesh.ca.state_dir" in capsys.readouterr().err


def test_unusable_key_is_an_error_without_traceback(tmp_path: Path) -> None:
    key = tmp_path / "token.pem"
    key.write_text("not a key")
    key.chmod(0o644)
    path = tmp_path / "xdsd.toml"
    path.write_text(SETTINGS + 'token_key = "token.pem"\n')
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "xdsd"),
            "token",
            "--service",
            "web",
            "--settings",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "token.pem: the token key is accessible by group or others (mode 0644)" in done.stderr
    assert "Traceback" not in done.stderr
