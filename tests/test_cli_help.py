"""``xdsd`` help and flags a newcomer meets first: every subcommand has a description and
an example, every option a help text; global flags after the subcommand; ``render`` on a
terminal; ``validate``'s one form; ``bootstrap``'s checks of the service and addresses."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG
from xdsd.cli import _build_parser


def xdsd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_subcommand_and_option_is_described() -> None:
    found = subcommands()
    assert set(found) == {
        "serve",
        "status",
        "validate",
        "render",
        "bootstrap",
        "token",
        "certificate",
        "demo",
        "capture",
    }
    for name, parser in found.items():
        assert parser.description, f"{name}: no description"
        assert parser.epilog and "example:\n  xdsd " in parser.epilog, f"{name}: no example"
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                if action.option_strings:
                    continue  # a deprecated alias kept working, not shown
                assert action.help, f"{name} {action.dest}: no help text"
                continue
            assert action.help, f"{name} {action.option_strings[0]}: no help text"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_of_each_subcommand_runs(name: str) -> None:
    done = xdsd(name, "--help")
    assert done.returncode == 0, done.stderr
    assert "example:\n  xdsd " in done.stdout
    assert "--log-level" in done.stdout


def test_status_help_shows_the_default_admin() -> None:
    assert "(default: 127.0.0.1:19001)" in " ".join(xdsd("status", "--help").stdout.split())


def test_global_flags_after_the_subcommand(tmp_path: Path) -> None:
    done = xdsd("validate", str(EXAMPLE_CONFIG), "--log-level", "debug", "--log-format", "json")
    assert done.returncode == 0, done.stderr
    before = xdsd("--log-level", "error", "validate", str(EXAMPLE_CONFIG))
    assert before.returncode == 0, before.stderr
    parsed = _build_parser().parse_args(["--log-level", "error", "validate"])
    assert parsed.log_level == "error"  # given before, not reset by the subcommand
    parsed = _build_parser().parse_args(["serve", "--log-level", "debug"])
    assert parsed.log_level == "debug" and parsed.log_format == "text"


def test_validate_takes_dir_and_still_the_old_flag() -> None:
    done = xdsd("validate", str(EXAMPLE_CONFIG))
    assert done.returncode == 0 and done.stderr == ""
    old = xdsd("validate", "--config-dir", str(EXAMPLE_CONFIG))
    assert old.returncode == 0
    assert old.stderr.strip() == (
        f"warning: validate --config-dir is deprecated: write xdsd validate {EXAMPLE_CONFIG}"
    )
    both = xdsd("validate", str(EXAMPLE_CONFIG), "--config-dir", str(EXAMPLE_CONFIG))
    assert both.returncode == 2
    assert both.stderr.strip() == (
        "xdsd: error: give the config directory once, as DIR: xdsd validate DIR"
    )


def render_on_a_terminal(*extra: str) -> str:
    """``xdsd render`` with stdout a pseudo-terminal; what it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xdsd.cli",
            "render",
            "--config-dir",
            str(EXAMPLE_CONFIG),
            "--service",
            "reviews",
            "--instance-ip",
            "127.0.0.31",
            *extra,
        ],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(60) == 0
    return b"".join(chunks).decode()


def test_render_is_indented_on_a_terminal_and_compact_into_a_pipe() -> None:
    shown = render_on_a_terminal()
    assert len(shown.splitlines()) > 50 and '\n  "versions": {' in shown.replace("\r\n", "\n")
    assert len(render_on_a_terminal("--compact").strip().splitlines()) == 1
    node = (
        "--config-dir",
        str(EXAMPLE_CONFIG),
        "--service",
        "reviews",
        "--instance-ip",
        "127.0.0.31",
    )
    piped = xdsd("render", *node)
    assert len(piped.stdout.strip().splitlines()) == 1
    pretty = xdsd("render", *node, "--pretty")
    assert len(pretty.stdout.splitlines()) > 50
    assert json.loads(pretty.stdout) == json.loads(piped.stdout)


def test_bootstrap_refuses_a_service_the_config_does_not_have() -> None:
    done = xdsd("bootstrap", "--config-dir", str(EXAMPLE_CONFIG), "--service", "reviwes")
    assert done.returncode == 1
    assert done.stdout == ""  # no bootstrap written
    assert done.stderr.splitlines()[0] == (
        f"{EXAMPLE_CONFIG}: --service: no service default/reviwes; did you mean 'reviews'? "
        "services in namespace default: details, productpage, ratings, reviews"
    )


def test_bootstrap_with_a_settings_file_checks_its_config_dir(tmp_path: Path) -> None:
    settings = tmp_path / "xdsd.toml"
    settings.write_text(f'config_dir = "{EXAMPLE_CONFIG}"\n')
    done = xdsd("bootstrap", "--settings", str(settings), "--service", "nosuch")
    assert done.returncode == 1
    assert "no service default/nosuch" in done.stderr


def test_bootstrap_without_a_config_dir_warns_it_did_not_check() -> None:
    done = xdsd("bootstrap", "--service", "nosuch")
    assert done.returncode == 0
    assert done.stderr.strip() == (
        "warning: service default/nosuch not checked: give --config-dir DIR to check that "
        "the config has it"
    )


def test_bootstrap_warns_of_an_instance_ip_this_host_does_not_have() -> None:
    # 192.0.2.11 (TEST-NET-1) is never an address of a test machine; 127.0.0.11 always is
    node = ("bootstrap", "--config-dir", str(EXAMPLE_CONFIG), "--service", "productpage")
    far = xdsd(*node, "--instance-ip", "192.0.2.11")
    assert far.returncode == 0 and far.stdout
    assert far.stderr.strip() == (
        "warning: --instance-ip 192.0.2.11 is not an address of this host: an Envoy here "
        "cannot bind its listeners on it (fine if the proxy runs on the host that has it; "
        "on this machine use a 127.x address)"
    )
    near = xdsd(*node, "--instance-ip", "127.0.0.11")
    assert near.returncode == 0 and near.stderr == ""
