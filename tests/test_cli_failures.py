"""Foreseeable failures of the ``xdsd`` command, run as real processes: each ends with one
line saying what is wrong and what to do, and the documented exit code; never a
traceback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import free_port, loopback_block, port_open, wait_until
from tests.paths import EXAMPLE_CONFIG


def xdsd(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``xdsd ARGV...`` run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def assert_no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr


def serve_argv(config_dir: str, grpc: int, rest: int, admin: int) -> list[str]:
    return [
        "serve",
        "--config-dir",
        config_dir,
        "--grpc",
        f"127.0.0.1:{grpc}",
        "--rest",
        f"127.0.0.1:{rest}",
        "--admin",
        f"127.0.0.1:{admin}",
    ]


@pytest.mark.parametrize(("which", "flag"), [(0, "grpc"), (1, "rest"), (2, "admin")])
def test_serve_on_a_port_in_use_says_which_and_exits_1(which: int, flag: str) -> None:
    ports = [free_port(), free_port(), free_port()]
    names = ["gRPC xDS", "REST xDS", "admin"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports[which] = taken.getsockname()[1]
        done = xdsd(*serve_argv(str(EXAMPLE_CONFIG), *ports))
    assert done.returncode == 1
    assert_no_traceback(done)
    assert last_line(done.stderr) == (
        f"xdsd: error: cannot listen on 127.0.0.1:{ports[which]} for {names[which]}: "
        f"address already in use (is another xdsd running?); "
        f"choose another with --{flag} HOST:PORT (settings key {flag})"
    )


def test_serve_on_an_address_not_of_this_host_says_so() -> None:
    # 192.0.2.1 (TEST-NET-1) is never an address of a test machine
    argv = serve_argv(str(EXAMPLE_CONFIG), free_port(), free_port(), free_port())
    argv[argv.index("--admin") + 1] = "192.0.2.1:19001"
    done = xdsd(*argv)
    assert done.returncode == 1
    assert_no_traceback(done)
    assert last_line(done.stderr) == (
        "xdsd: error: cannot listen on 192.0.2.1:19001 for admin: cannot assign requested "
        "address (it is not an address of this host); choose another with --admin "
        "HOST:PORT (settings key admin)"
    )


def test_serve_on_a_missing_directory_refuses_to_start(tmp_path: Path) -> None:
    """Nothing was ever loaded: no "still serving the last good configuration", and
    nothing listens."""
    missing = tmp_path / "no-such-dir"
    grpc = free_port()
    done = xdsd(*serve_argv(str(missing), grpc, free_port(), free_port()))
    assert done.returncode == 1
    assert_no_traceback(done)
    assert "last good" not in done.stderr
    assert done.stderr.strip() == (
        f"xdsd: error: config directory {missing} does not exist (or is not a directory): "
        "create it, or give --config-dir DIR (settings key config_dir)"
    )
    assert not port_open("127.0.0.1", grpc)


def test_serve_whose_first_load_is_refused_says_nothing_is_served(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "broken.yaml").write_text("kind: Service\nname: [\n")
    ports = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "xdsd.cli", *serve_argv(str(config), *ports)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", ports[0]), what="xdsd to listen")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in out
    assert "last good" not in out
    assert (
        "config refused (1 error); nothing loaded yet: proxies get no configuration "
        "until the files are fixed" in out
    )


def test_serve_with_a_missing_settings_file(tmp_path: Path) -> None:
    done = xdsd("serve", "--settings", str(tmp_path / "nope.toml"))
    assert done.returncode == 1
    assert_no_traceback(done)
    assert f"{tmp_path / 'nope.toml'}: cannot read settings: No such file or directory" in (
        done.stderr
    )


def test_demo_with_a_missing_envoy() -> None:
    done = xdsd("demo", "--envoy", "/nonexistent/envoy")
    assert done.returncode == 1
    assert_no_traceback(done)
    assert done.stderr.strip() == (
        "xdsd: error: --envoy /nonexistent/envoy: no executable file there: give the Envoy binary"
    )


@pytest.mark.parametrize(
    ("admin", "line"),
    [
        ("localhost", "xdsd: error: --admin wants HOST:PORT, with the port (got 'localhost')"),
        ("127.0.0.1:99999", "xdsd: error: --admin wants HOST:PORT (got '127.0.0.1:99999')"),
        (
            "ftp://x:1",
            "xdsd: error: --admin wants HOST:PORT or https://HOST:PORT (got 'ftp://x:1')",
        ),
    ],
)
def test_status_with_a_bad_admin_value_is_usage(admin: str, line: str) -> None:
    done = xdsd("status", "--admin", admin)
    assert done.returncode == 2
    assert_no_traceback(done)
    assert done.stderr.strip() == line


def test_status_with_nothing_listening_exits_3() -> None:
    port = free_port()
    done = xdsd("status", "--admin", f"127.0.0.1:{port}")
    assert done.returncode == 3
    assert_no_traceback(done)
    assert len(done.stderr.strip().splitlines()) == 1
    assert f"cannot reach xdsd's admin server at 127.0.0.1:{port}" in done.stderr


def test_demo_on_a_block_in_use_says_so_before_starting_anything(tmp_path: Path) -> None:
    block = loopback_block()
    with socket.socket() as taken:
        taken.bind((f"{block}.1", 19001))
        taken.listen()
        done = xdsd("demo", "--block", block, "--dir", str(tmp_path / "demo"))
    assert done.returncode == 1
    assert_no_traceback(done)
    assert done.stderr.strip() == (
        f"xdsd: error: {block}.1:19001 is in use (another xdsd demo on {block}?): stop it, "
        "or give another loopback block, e.g. --block 127.0.11"
    )
    assert not (tmp_path / "demo" / "logs" / "xdsd.log").exists()  # nothing was started
