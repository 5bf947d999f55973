"""``xdsd capture``: the rules it prints, its refusals, and (as root, in a network
namespace of its own) apply, status and remove against the real iptables."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from xdsd import capture
from xdsd.capture import CHAIN, CaptureRules, parse_cidrs, parse_ports, user_id
from xdsd.cli import main
from xdsd.errors import UsageError


def xdsd(*argv: str, ns: str = "") -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "xdsd.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_chain_rules_in_order() -> None:
    rules = CaptureRules(15002, 999, (22, 18000), ("169.254.169.254/32",))
    assert rules.chain_rules() == [
        ["-o", "lo", "-j", "RETURN"],
        ["-m", "owner", "--uid-owner", "999", "-j", "RETURN"],
        ["-p", "tcp", "-m", "multiport", "--dports", "22,18000", "-j", "RETURN"],
        ["-d", "169.254.169.254/32", "-j", "RETURN"],
        ["-p", "tcp", "-j", "REDIRECT", "--to-ports", "15002"],
    ]
    text = rules.restore_input()
    assert text.startswith("*nat\n:XDSD_OUTPUT - [0:0]\n-A XDSD_OUTPUT -o lo -j RETURN\n")
    assert text.endswith("COMMIT\n")


def test_more_ports_than_one_multiport_match_holds() -> None:
    rules = CaptureRules(15002, 999, tuple(range(1000, 1020)))
    dports = [r[r.index("--dports") + 1] for r in rules.chain_rules() if "--dports" in r]
    assert [len(d.split(",")) for d in dports] == [15, 5]


def test_print_is_the_default_and_needs_no_root() -> None:
    done = xdsd("capture", "--proxy-user", "nobody", "--exclude-ports", "22", "--port", "15009")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "iptables -t nat -A XDSD_OUTPUT -p tcp -j REDIRECT --to-ports 15009" in out
    assert "--dports 22,18000,18001,19001" in out
    assert "# to undo (xdsd capture remove):" in out
    assert "iptables -t nat -X XDSD_OUTPUT" in out


@pytest.mark.parametrize(
    ("text", "bad"),
    [("0", "'0'"), ("65536", "'65536'"), ("ssh", "'ssh'"), ("1:5", "'1:5'"), ("-1", "'-1'")],
)
def test_bad_ports_are_named(text: str, bad: str) -> None:
    with pytest.raises(UsageError, match=f"--exclude-ports: {bad} is not a port number"):
        parse_ports(f"22,{text}", "--exclude-ports")


def test_too_many_ports_or_networks() -> None:
    with pytest.raises(UsageError, match="at most 1000"):
        parse_ports(",".join(["22"] * 1001), "--exclude-ports")
    with pytest.raises(UsageError, match="at most 1000"):
        parse_cidrs(",".join(["10.0.0.0/8"] * 1001), "--exclude-cidrs")


@pytest.mark.parametrize("text", ["10.0.0.0/33", "::1", "metadata", "10.0.0.0/8/8"])
def test_bad_networks_are_named(text: str) -> None:
    with pytest.raises(UsageError, match=f"--exclude-cidrs: {text!r} is not an IPv4 network"):
        parse_cidrs(text, "--exclude-cidrs")


def test_networks_are_normalized() -> None:
    assert parse_cidrs("10.1.2.3/8, 169.254.169.254", "x") == ("10.0.0.0/8", "169.254.169.254/32")


def test_the_proxy_user() -> None:
    assert user_id("nobody") == 65534
    assert user_id("4242") == 4242
    for root in ("root", "0"):
        with pytest.raises(UsageError, match="must not run as root"):
            user_id(root)
    with pytest.raises(UsageError, match="no user 'no-such-user-xdsd'"):
        user_id("no-such-user-xdsd")


def test_refused_without_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for action in ("apply", "remove", "status"):
        assert main(["capture", action, "--proxy-user", "nobody"]) == 1
        assert f"capture {action} needs root" in capsys.readouterr().err


def test_refused_without_iptables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    assert main(["capture", "apply", "--proxy-user", "nobody"]) == 1
    assert "no iptables command on this host" in capsys.readouterr().err
    assert main(["capture", "apply", "--proxy-user", "nobody", "--iptables", "/nope"]) == 1
    assert "--iptables: '/nope' is not an executable" in capsys.readouterr().err


def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "--port", "0", "--proxy-user", "nobody"]) == 2
    assert "--port: 0 is not a port number" in capsys.readouterr().err
    assert main(["capture", "--proxy-user", "root"]) == 2
    assert "must not run as root" in capsys.readouterr().err


def missing() -> str:
    """Why the real-iptables test cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root: it creates a network namespace and changes its nat table"
    for tool in ("ip", "iptables", "iptables-save"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"needs `{tool}` (Debian: apt-get install iptables iproute2)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"network namespaces refused here: {probe.stderr.decode().strip()}"
    return ""


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    name = f"xdsd-capture-{random.randrange(16**6):06x}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30, check=False)


def saved(ns: str) -> str:
    """The namespace's nat table as iptables-save prints it, without its comments."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith("#"))


def test_apply_status_remove_with_real_iptables() -> None:
    """Apply is idempotent, status tells the flags' rules from others, remove takes out
    exactly what apply added (a rule of someone else's stays), dry runs change nothing."""
    if why := missing():
        pytest.skip(why)
    flags = ["--proxy-user", "nobody", "--exclude-ports", "22", "--port", "15002"]
    with namespace() as ns:
        other = ["-t", "nat", "-A", "OUTPUT", "-d", "10.99.0.0/16", "-j", "RETURN"]
        subprocess.run(["ip", "netns", "exec", ns, "iptables", *other], check=True, timeout=30)
        before = saved(ns)
        assert xdsd("capture", "status", *flags, ns=ns).returncode == 1
        dry = xdsd("capture", "apply", "--dry-run", *flags, ns=ns)
        assert dry.returncode == 0 and "would run:" in dry.stdout
        assert saved(ns) == before
        done = xdsd("capture", "apply", *flags, ns=ns)
        assert done.returncode == 0, done.stderr
        applied = saved(ns)
        assert f"-A OUTPUT -p tcp -j {CHAIN}" in applied
        assert "-A XDSD_OUTPUT -p tcp -j REDIRECT --to-ports 15002" in applied
        again = xdsd("capture", "apply", *flags, ns=ns)
        assert "already applied" in again.stdout and saved(ns) == applied
        assert xdsd("capture", "status", *flags, ns=ns).returncode == 0
        other_port = xdsd("capture", "status", "--proxy-user", "nobody", ns=ns)
        assert other_port.returncode == 1 and "not as these flags say" in other_port.stdout
        # a changed port replaces the chain's rules, keeps one jump
        assert (
            xdsd("capture", "apply", "--proxy-user", "nobody", "--port", "15003", ns=ns).returncode
            == 0
        )
        changed = saved(ns)
        assert changed.count(f"-j {CHAIN}") == 1 and "--to-ports 15003" in changed
        assert "--to-ports 15002" not in changed
        assert xdsd("capture", "remove", "--dry-run", ns=ns).returncode == 0
        assert saved(ns) == changed
        removed = xdsd("capture", "remove", ns=ns)
        assert removed.returncode == 0, removed.stderr
        assert saved(ns) == before
        assert "nothing to remove" in xdsd("capture", "remove", ns=ns).stdout
        assert capture.CHAIN not in saved(ns)
