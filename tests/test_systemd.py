"""The systemd unit passes ``systemd-analyze verify`` (and its offline security check),
and a real ``xdsd serve`` speaks systemd's notify protocol on a socket the test owns."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh import EchoMesh
from tests.harness import Inbox, Xdsd, port_open, wait_until
from xdsd.notify import Notifier

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "xdsd.service"


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by this environment's ``xdsd`` (verify
    checks that the binary exists)."""
    xdsd = shutil.which("xdsd", path=str(Path(sys.executable).parent))
    assert xdsd is not None
    unit = tmp_path / "xdsd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/xdsd", xdsd))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    import subprocess

    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadOnlyPaths=/etc/xdsd",
        "StateDirectory=xdsd",  # $STATE_DIRECTORY: the restart cache
        "CapabilityBoundingSet=\n",
    ):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    unit = _unit_for_here(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and "xdsd.service" not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for xdsd.service: ([\d.]+)", security.stdout)
    assert found is not None, security.stdout[-2000:]
    assert float(found.group(1)) <= 2.0, security.stdout[-2000:]  # "OK" or better


SIDECAR_UNIT = UNIT.with_name("xdsd-sidecar.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_sidecar_unit_binds_port_53_with_one_capability(tmp_path: Path) -> None:
    """The Envoy sidecar unit of "Mesh DNS" verifies, gets CAP_NET_BIND_SERVICE (and no
    other capability) for a DNS listener on port 53, and is hardened ("OK")."""
    import subprocess

    from tests.harness import envoy_binary

    text = SIDECAR_UNIT.read_text()
    for line in (
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "Before=nss-lookup.target",
    ):
        assert line in text, line
    unit = tmp_path / SIDECAR_UNIT.name
    unit.write_text(text.replace("/usr/local/bin/envoy", envoy_binary()))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and unit.name not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(rf"Overall exposure level for {unit.name}: ([\d.]+)", security.stdout)
    assert found is not None, security.stdout[-2000:]
    assert float(found.group(1)) <= 2.0, security.stdout[-2000:]


def test_notifier_addresses(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier.from_environment(
            {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
        )
        assert notifier.watchdog_interval == 2.0
        assert notifier.ready("serving  3\nservices")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving 3 services"
        notifier.close()
    name = f"@xdsd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])  # an abstract socket
        notifier = Notifier(name)
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()
    other = Notifier.from_environment({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None and not other.enabled and not other.ready()
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.ready()  # logged, never raised


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def test_serve_notifies_ready_watchdog_reloading_and_stopping(
    mesh: EchoMesh, tmp_path: Path
) -> None:
    inbox = Inbox(tmp_path / "notify.sock")
    # the configuration does not load at first: listening, but not ready
    bad = mesh.config / "services" / "bad.yaml"
    bad.write_text("kind: Service\nname: bad\nports: oops\n")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    xdsd = Xdsd(mesh.config, mesh.root, env=env)
    mesh.xdsd = xdsd
    try:
        wait_until(lambda: inbox.count("WATCHDOG=1") >= 3, what="watchdog pings")
        assert inbox.count("READY=1") == 0
        assert any(
            line.startswith("STATUS=waiting for a valid configuration")
            for m in inbox.read()
            for line in m
        )
        bad.unlink()  # now it loads
        wait_until(lambda: inbox.count("READY=1") == 1, what="READY=1")
        assert port_open("127.0.0.1", xdsd.grpc_port)
        assert xdsd.admin("/readyz") == {"ready": True}
        ready_at = inbox.index("READY=1")
        assert any(line.startswith("STATUS=serving 2 services") for line in inbox.read()[ready_at])
        pings = inbox.count("WATCHDOG=1")
        wait_until(lambda: inbox.count("WATCHDOG=1") >= pings + 2, what="pings after READY")

        os.kill(xdsd.proc.pid, signal.SIGHUP)
        wait_until(lambda: inbox.count("READY=1") == 2, what="READY=1 after the reload")
        reloading = inbox.index("RELOADING=1")
        assert ready_at < reloading < inbox.index("READY=1", ready_at + 1)
        assert any(line.startswith("MONOTONIC_USEC=") for line in inbox.read()[reloading])

        xdsd.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: xdsd.proc.poll() is not None, timeout=60, what="xdsd to exit")
        assert xdsd.proc.returncode == 0
        assert inbox.count("STOPPING=1") == 1
    finally:
        inbox.sock.close()


CERTIFICATE_UNITS = ("xdsd-certificate@.service", "xdsd-certificate@.timer")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_certificate_units_verify_and_are_hardened(tmp_path: Path) -> None:
    """The `xdsd certificate` service and timer templates, as an instance, pass
    `systemd-analyze verify` without a word and the service's offline security check."""
    import subprocess

    xdsd = shutil.which("xdsd", path=str(Path(sys.executable).parent))
    assert xdsd is not None
    for name in CERTIFICATE_UNITS:
        text = (UNIT.parent / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/xdsd", xdsd))
    service = (UNIT.parent / CERTIFICATE_UNITS[0]).read_text()
    for line in ("Type=oneshot", "--renew-before", "--out /var/lib/xdsd-certificate/%i"):
        assert line in service, line
    assert "OnUnitActiveSec=" in (UNIT.parent / CERTIFICATE_UNITS[1]).read_text()
    instances = [str(tmp_path / n.replace("@.", "@checkout.")) for n in CERTIFICATE_UNITS]
    verify = subprocess.run(
        ["systemd-analyze", "verify", *instances], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and "xdsd-certificate" not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", instances[0]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert found is not None, security.stdout[-2000:]
    assert float(found.group(1)) <= 2.0, security.stdout[-2000:]
