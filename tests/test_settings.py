"""The daemon's settings file: values apply, unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main
from xdsd.errors import ConfigError
from xdsd.settings import Address, Settings


def test_file_values_apply_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text('config_dir = "/etc/xdsd/mesh"\ngrpc = "0.0.0.0:18000"\nrest = ""\n'
                    "quiet_period = 0.1\n")  # fmt: skip
    settings = Settings.from_file(str(path))
    assert settings.config_dir == "/etc/xdsd/mesh"
    assert settings.grpc == Address("0.0.0.0", 18000)
    assert settings.rest is None and settings.quiet_period == 0.1
    assert settings.admin == Address("127.0.0.1", 19001)
    flagged = settings.merged({"config_dir": "other"}, source="command line")
    assert flagged.config_dir == "other" and flagged.grpc == settings.grpc


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('grcp = "127.0.0.1:1"\n', "grcp: unknown setting"),
        ('grpc = "no-port"\n', "grpc: expected HOST:PORT"),
        ("quiet_period = -1\n", "quiet_period: must be a non-negative number"),
        ("grpc_backlog = true\n", "grpc_backlog: must not be a boolean"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert fragment in str(info.value)


def test_serve_with_bad_settings_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text("bogus = 1\n")
    assert main(["serve", "--settings", str(path)]) == 1
    assert "xdsd.toml:1: bogus: unknown setting" in capsys.readouterr().err
