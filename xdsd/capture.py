"""``xdsd capture``: the iptables rules that send a VM's outbound TCP to its sidecar.

This is Istio's VM capture (``istio-iptables``, outbound part) made explicit and
reversible: every rule lives in one chain of xdsd's own in the ``nat`` table,
``XDSD_OUTPUT``, reached from ``OUTPUT`` by one jump rule. In order, the chain

1. RETURNs connections leaving through the loopback interface: the sidecar's own
   listeners (per-port, HTTP proxy, virtual addresses in 127.0.0.0/8) are already reached
   there without capture, and local services stay local;
2. RETURNs connections of the sidecar's user (``--proxy-user``): its upstream
   connections must leave as they are, or they would come back to it forever;
3. RETURNs connections to xdsd's ports and to the ``--exclude-ports`` (destination
   ports), and to the ``--exclude-cidrs``;
4. REDIRECTs every other TCP connection to the capture port on the host, where the
   sidecar's ``outbound_capture`` listener (node metadata ``capture``) reads the original
   destination and routes it (``translate/capture.py``).

``apply`` writes the chain in one ``iptables-restore --noflush`` transaction (declaring
the chain empties it, so a second apply replaces rather than repeats) and adds the jump
if it is not there; ``remove`` deletes the jump(s) and the chain, nothing else. IPv4 only
(``ip6tables`` is not touched): IPv6 connections are not captured.

Why iptables and not nftables: the ``iptables`` command is the system's own choice of
backend (``iptables-nft`` writes nftables, ``iptables-legacy`` the old tables), so the
rules land where the host's other rules are; a native nftables table beside legacy
rules would be evaluated separately and surprise whoever reads only one of them. Istio,
whose rules operators know, uses iptables too.

Pure except ``Iptables`` (which runs the binary) and ``user_id``.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from xdsd.errors import UsageError, XdsdError

#: xdsd's chain in the nat table.
CHAIN = "XDSD_OUTPUT"
#: The jump from OUTPUT to it (after ``iptables -t nat -I OUTPUT 1`` / ``-D OUTPUT``).
JUMP = ("-p", "tcp", "-j", CHAIN)
#: The sidecar's user when none is named.
DEFAULT_PROXY_USER = "envoy"
#: The capture port when none is named (node metadata ``capture`` must say the same).
DEFAULT_CAPTURE_PORT = 15002
#: At most this many ports in one ``multiport`` match (the kernel's limit).
MULTIPORT_MAX = 15
#: Bounds of what is read from the command line and from iptables.
MAX_EXCLUDED = 1000
MAX_OUTPUT = 1 << 20


class CaptureError(XdsdError):
    """The rules cannot be read or written here (no root, no iptables, iptables failed)."""


@dataclass(frozen=True, slots=True)
class CaptureRules:
    """What ``apply`` installs: redirect to ``port``, except the sidecar's user
    ``proxy_uid``, the destination ports ``exclude_ports`` and ``exclude_cidrs``."""

    port: int
    proxy_uid: int
    exclude_ports: tuple[int, ...] = ()
    exclude_cidrs: tuple[str, ...] = ()

    def chain_rules(self) -> list[list[str]]:
        """The chain's rules in order, each as ``iptables -t nat -A CHAIN``'s arguments
        after the chain name."""
        rules = [
            ["-o", "lo", "-j", "RETURN"],
            ["-m", "owner", "--uid-owner", str(self.proxy_uid), "-j", "RETURN"],
        ]
        ports = sorted(set(self.exclude_ports))
        for i in range(0, len(ports), MULTIPORT_MAX):
            chunk = ",".join(str(p) for p in ports[i : i + MULTIPORT_MAX])
            rules.append(["-p", "tcp", "-m", "multiport", "--dports", chunk, "-j", "RETURN"])
        for cidr in self.exclude_cidrs:
            rules.append(["-d", cidr, "-j", "RETURN"])
        rules.append(["-p", "tcp", "-j", "REDIRECT", "--to-ports", str(self.port)])
        return rules

    def restore_input(self) -> str:
        """The ``iptables-restore --noflush`` input that (re)writes the chain."""
        lines = ["*nat", f":{CHAIN} - [0:0]"]
        lines += [shlex.join(["-A", CHAIN, *rule]) for rule in self.chain_rules()]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def script(self, iptables: str = "iptables") -> str:
        """The shell commands of ``apply`` (the chain made or emptied, its rules, the
        jump), then those of ``remove`` as comments."""
        nat = [iptables, "-t", "nat"]
        out = [
            f"# xdsd capture: redirect outbound TCP to the sidecar's port {self.port} "
            f"(its user, uid {self.proxy_uid}, excluded)",
            f"{shlex.join([*nat, '-N', CHAIN])} 2>/dev/null || {shlex.join([*nat, '-F', CHAIN])}",
        ]
        out += [shlex.join([*nat, "-A", CHAIN, *rule]) for rule in self.chain_rules()]
        out.append(
            f"{shlex.join([*nat, '-C', 'OUTPUT', *JUMP])} 2>/dev/null || "
            f"{shlex.join([*nat, '-I', 'OUTPUT', '1', *JUMP])}"
        )
        out.append("# to undo (xdsd capture remove):")
        out += ["# " + line for line in removal_script(iptables)]
        return "\n".join(out) + "\n"


def removal_script(iptables: str = "iptables") -> list[str]:
    """The shell commands of ``remove``."""
    nat = [iptables, "-t", "nat"]
    return [
        f"while {shlex.join([*nat, '-D', 'OUTPUT', *JUMP])} 2>/dev/null; do :; done",
        f"{shlex.join([*nat, '-F', CHAIN])} && {shlex.join([*nat, '-X', CHAIN])}",
    ]


def parse_ports(text: str, what: str) -> tuple[int, ...]:
    """A comma-separated list of port numbers (``a,b``; ranges ``a:b`` are refused: say
    each port). Raises UsageError naming ``what`` and the bad item."""
    out: list[int] = []
    items = [t.strip() for t in text.split(",")] if text.strip() else []
    if len(items) > MAX_EXCLUDED:
        raise UsageError(f"{what}: at most {MAX_EXCLUDED} ports")
    for item in items:
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise UsageError(f"{what}: {item!r} is not a port number (1-65535)")
        if int(item) not in out:
            out.append(int(item))
    return tuple(out)


def parse_cidrs(text: str, what: str) -> tuple[str, ...]:
    """A comma-separated list of IPv4 networks (``10.0.0.0/8``) or addresses, normalized.
    Raises UsageError naming ``what`` and the bad item."""
    out: list[str] = []
    items = [t.strip() for t in text.split(",")] if text.strip() else []
    if len(items) > MAX_EXCLUDED:
        raise UsageError(f"{what}: at most {MAX_EXCLUDED} networks")
    for item in items:
        try:
            network = ipaddress.IPv4Network(item, strict=False)
        except ValueError:
            raise UsageError(f"{what}: {item!r} is not an IPv4 network (10.0.0.0/8)") from None
        if str(network) not in out:
            out.append(str(network))
    return tuple(out)


def user_id(user: str) -> int:
    """The uid of ``user`` (a name or a number). Raises UsageError when there is no
    such user, or when it is root (excluding root's connections would leave every root
    process uncaptured: run the sidecar as a user of its own)."""
    if user.isdigit():
        uid = int(user)
    else:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            raise UsageError(
                f"--proxy-user: no user {user!r} on this host: run the sidecar as a user of "
                "its own and name it (a name or a uid)"
            ) from None
    if uid == 0:
        raise UsageError(
            "--proxy-user: the sidecar must not run as root: its connections are told apart "
            "by its user, and excluding root's would leave every root process uncaptured"
        )
    return uid


@dataclass(frozen=True, slots=True)
class Status:
    """What the nat table holds of xdsd's: the jumps from OUTPUT and the chain's rules
    (None: no chain)."""

    jumps: int
    rules: tuple[str, ...] | None

    def matches(self, wanted: CaptureRules) -> bool:
        """True when exactly ``wanted`` is applied (one jump, the same rules)."""
        expected = tuple(shlex.join(["-A", CHAIN, *r]) for r in wanted.chain_rules())
        return self.jumps == 1 and self.rules is not None and _same(self.rules, expected)


def _same(found: Sequence[str], expected: Sequence[str]) -> bool:
    """Rules as ``iptables -S`` prints them against ours (it may quote and order match
    options its own way: compared as sets of words per rule, in order)."""
    if len(found) != len(expected):
        return False
    return all(
        sorted(shlex.split(a)) == sorted(shlex.split(b))
        for a, b in zip(found, expected, strict=True)
    )


def find_iptables(given: str = "") -> str:
    """The iptables binary: ``given``, else ``iptables`` on PATH or in /usr/sbin, /sbin
    (the system's chosen backend). Raises CaptureError when there is none."""
    if given:
        found = shutil.which(given)
        if found is None:
            raise CaptureError(f"--iptables: {given!r} is not an executable")
        return found
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("iptables", path=path)
    if found is None:
        raise CaptureError(
            "no iptables command on this host: install it (Debian: apt-get install iptables) "
            "or print the rules with `xdsd capture print` and apply them your way"
        )
    return found


def require_root(action: str) -> None:
    """Raises CaptureError unless this process is root."""
    if os.geteuid() != 0:
        raise CaptureError(
            f"capture {action} needs root (it changes the nat table): run it with sudo, or "
            "see what it would do with `xdsd capture print`"
        )


class Iptables:
    """Runs one iptables binary (and its ``-restore``) against the nat table; ``dry_run``
    prints what would change instead of changing it (reading still happens)."""

    def __init__(self, binary: str, *, dry_run: bool = False, echo: bool = True) -> None:
        self.binary = binary
        self.dry_run = dry_run
        self.echo = echo
        self.printed: list[str] = []

    def _run(
        self, args: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _change(self, args: Sequence[str], stdin: str | None = None) -> None:
        line = shlex.join([self.binary, *args])
        self.printed.append(line + (f" <<'EOF'\n{stdin}EOF" if stdin else ""))
        if self.echo:
            print(("would run: " if self.dry_run else "") + self.printed[-1])
        if self.dry_run:
            return
        done = self._run(args, stdin)
        if done.returncode != 0:
            raise CaptureError(f"{line}: {done.stderr.strip()[:2000] or 'failed'}")

    def _restore_binary(self) -> str:
        """``iptables-restore`` beside ``iptables`` (``iptables-nft-restore`` beside
        ``iptables-nft``)."""
        restore = self.binary + "-restore"
        if not os.path.exists(restore):
            raise CaptureError(f"no {restore} beside {self.binary}")
        return restore

    def status(self) -> Status:
        """The jumps from OUTPUT to xdsd's chain, and the chain's rules."""
        output = self._run(["-t", "nat", "-S", "OUTPUT"])
        if output.returncode != 0:
            raise CaptureError(f"{self.binary} -t nat -S OUTPUT: {output.stderr.strip()[:2000]}")
        jumps = sum(1 for line in output.stdout[:MAX_OUTPUT].splitlines() if _is_jump(line))
        chain = self._run(["-t", "nat", "-S", CHAIN])
        if chain.returncode != 0:
            return Status(jumps, None)  # no such chain
        rules = tuple(
            line for line in chain.stdout[:MAX_OUTPUT].splitlines() if line.startswith("-A ")
        )
        return Status(jumps, rules)

    def apply(self, rules: CaptureRules) -> bool:
        """Write the chain (one transaction) and add the jump if missing; returns False
        when exactly ``rules`` were already applied (nothing done)."""
        before = self.status()
        if before.matches(rules):
            return False
        restore = self._restore_binary()
        line = shlex.join([restore, "--noflush"])
        self.printed.append(f"{line} <<'EOF'\n{rules.restore_input()}EOF")
        if self.echo:
            print(("would run: " if self.dry_run else "") + self.printed[-1])
        if not self.dry_run:
            done = subprocess.run(
                [restore, "--noflush"],
                input=rules.restore_input(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise CaptureError(f"{line}: {done.stderr.strip()[:2000] or 'failed'}")
        for _ in range(max(0, before.jumps - 1)):  # a doubled jump: keep one
            self._change(["-t", "nat", "-D", "OUTPUT", *JUMP])
        if before.jumps == 0:
            self._change(["-t", "nat", "-I", "OUTPUT", "1", *JUMP])
        return True

    def remove(self) -> bool:
        """Delete every jump to xdsd's chain and the chain; returns False when there was
        nothing to remove."""
        before = self.status()
        if before.jumps == 0 and before.rules is None:
            return False
        for _ in range(before.jumps):
            self._change(["-t", "nat", "-D", "OUTPUT", *JUMP])
        if before.rules is not None:
            self._change(["-t", "nat", "-F", CHAIN])
            self._change(["-t", "nat", "-X", CHAIN])
        return True


def _is_jump(line: str) -> bool:
    """True for an ``iptables -S OUTPUT`` line that is xdsd's jump (``JUMP``)."""
    return line.split() == ["-A", "OUTPUT", *JUMP]
