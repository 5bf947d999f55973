"""A sidecar's mesh DNS as ``xdsd bootstrap`` sets it up: its flags checked, the upstream
resolvers read from the host, and what to put in the host's resolver configuration.

How this works: a sidecar's bootstrap names, in its node metadata, the block its virtual
addresses live in (``virtual_addresses``), the ``IP:PORT`` of its DNS listener (``dns``)
and the resolvers that listener forwards names outside the mesh to (``dns_upstream``).
The last default to the nameservers of the host's ``/etc/resolv.conf`` *at bootstrap
time*, with two exclusions that would make loops: the sidecar's own DNS address (when
``resolv.conf`` already names the sidecar, bootstrapping again must not make it its own
upstream), and systemd-resolved's stubs (``127.0.0.53``, ``127.0.0.54``): once resolved
sends the mesh's domains to the sidecar, it also sends it the names no routing domain
claims (resolved asks its global servers for those), so a sidecar forwarding to the stub
would loop. When ``resolv.conf`` names the stub, the servers resolved itself uses
(``/run/systemd/resolve/resolv.conf``) are the upstreams instead.

The snippets: ``resolv_conf`` (the sidecar first, on port 53 only: ``resolv.conf`` cannot
name another port; the upstreams after it, which glibc asks only when the sidecar does
not answer) and ``resolved_dropin`` (a drop-in giving systemd-resolved the sidecar as a
DNS server, any port, with the mesh's domains as routing and search domains).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from xdsd.errors import UsageError
from xdsd.located import split_host_port
from xdsd.model.mesh_config import DEFAULT_DNS_PORT
from xdsd.model.service import DOMAIN_SUFFIX

#: The host's resolver configuration, and the one systemd-resolved writes with the
#: servers it uses itself.
RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"
#: systemd-resolved's stub listeners (the caching stub and the proxy stub).
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")
#: Where ``--resolver-config resolved`` writes by default (documented, not assumed).
RESOLVED_DROPIN = "/etc/systemd/resolved.conf.d/xdsd.conf"
#: At most this many resolvers in ``dns_upstream`` (node metadata allows 8).
MAX_UPSTREAMS = 8
#: The most of a resolver file read (resolv.conf(5) files are a few hundred bytes).
MAX_RESOLV_CONF_BYTES = 64 * 1024
#: The resolver configurations ``--resolver-config`` writes.
RESOLVER_CONFIGS = ("resolv.conf", "resolved")


def search_domains(namespace: str) -> tuple[str, ...]:
    """The search list of a workload in ``namespace``, as Kubernetes gives a pod:
    ``NS.svc.cluster.local svc.cluster.local cluster.local``."""
    cluster = DOMAIN_SUFFIX.removeprefix("svc.")
    return (f"{namespace}.{DOMAIN_SUFFIX}", DOMAIN_SUFFIX, cluster)


def parse_virtual_addresses(text: str) -> str:
    """``--virtual-addresses``: an IPv4 network in CIDR notation with host bits zero and
    at least 4 addresses, returned normalized; UsageError otherwise."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise UsageError(
            f"--virtual-addresses wants an IPv4 network in CIDR notation, host bits zero "
            f"(e.g. 127.240.0.0/16); got {text!r}: {e}"
        ) from None
    if network.version != 4:
        raise UsageError(
            f"--virtual-addresses wants an IPv4 network (got {text!r}); an IPv6 block is "
            "the settings' [mesh.dns] virtual_addresses_v6"
        )
    if network.num_addresses < 4:
        raise UsageError(f"--virtual-addresses {text}: too small (a /30 or larger)")
    return str(network)


def block_size(cidr: str) -> int:
    """How many addresses the network ``cidr`` holds."""
    return int(ipaddress.ip_network(cidr).num_addresses)


def is_loopback_block(cidr: str) -> bool:
    """True when the network ``cidr`` is inside 127.0.0.0/8 (Linux delivers it to the
    loopback interface with no set-up)."""
    network = ipaddress.ip_network(cidr)
    return network.network_address.is_loopback and network.broadcast_address.is_loopback


def parse_dns(text: str) -> tuple[str, int]:
    """``--dns``: ``IP:PORT`` (``[IPv6]:PORT``) → (IP, PORT); UsageError otherwise."""
    parsed = split_host_port(text)
    if parsed is None:
        raise UsageError(
            f"--dns wants IP:PORT, an address of this host and a port 1-65535 "
            f"(e.g. 127.0.0.1:{DEFAULT_DNS_PORT}); got {text!r}"
        )
    address = ipaddress.ip_address(parsed[0])
    if address.is_unspecified or address.is_multicast:
        raise UsageError(
            f"--dns {text}: one address of this host, not {address} (a DNS listener on "
            "every interface would be an open resolver)"
        )
    return parsed


def parse_upstream(text: str) -> tuple[str, int]:
    """``--dns-upstream``: ``IP`` (port 53) or ``IP:PORT`` → (IP, PORT); UsageError
    otherwise."""
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    parsed = split_host_port(text)
    if parsed is None:
        raise UsageError(f"--dns-upstream wants IP or IP:PORT (got {text!r})")
    return parsed


def host_port(ip: str, port: int) -> str:
    """``IP:PORT``, ``[IPv6]:PORT``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def resolver_text(ip: str, port: int) -> str:
    """A resolver as node metadata ``dns_upstream`` holds it: ``IP`` for port 53, else
    ``IP:PORT``."""
    return ip if port == 53 else host_port(ip, port)


def nameservers(text: str) -> list[str]:
    """The IP literals of the ``nameserver`` lines of a resolv.conf(5) text, in order,
    duplicates dropped (an IPv6 zone ``%eth0`` is kept off: Envoy cannot use it)."""
    found: list[str] = []
    for line in text[:MAX_RESOLV_CONF_BYTES].splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver" or "%" in words[1]:
            continue
        try:
            address = str(ipaddress.ip_address(words[1]))
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class Upstreams:
    """The default upstream resolvers of a sidecar's DNS, and what the operator should
    know about them (``notes``, for stderr: a server left out, none found)."""

    resolvers: tuple[str, ...]
    notes: tuple[str, ...] = ()


def _is_unicast(address: str) -> bool:
    """An IP literal a query can be sent to as one host: not the any-address, multicast
    or the IPv4 broadcast address (what node metadata ``dns_upstream`` refuses)."""
    ip = ipaddress.ip_address(address)
    broadcast = ip == ipaddress.IPv4Address("255.255.255.255")
    return not (ip.is_unspecified or ip.is_multicast or broadcast)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_RESOLV_CONF_BYTES).decode("utf-8", "replace")
    except OSError:
        return None


def host_upstreams(
    own: tuple[str, int],
    *,
    resolv_conf: str | None = None,
    resolved_upstreams: str | None = None,
) -> Upstreams:
    """The resolvers a sidecar whose DNS listens on ``own`` forwards to by default: the
    nameservers of ``resolv_conf`` now, without ``own`` (when on port 53) and, when it
    names a systemd-resolved stub, with the stub replaced by the servers of
    ``resolved_upstreams``; at most ``MAX_UPSTREAMS``. Empty when none is left (the
    notes say why). The files default to ``RESOLV_CONF`` and ``RESOLVED_UPSTREAMS``
    (read when called)."""
    resolv_conf = resolv_conf or RESOLV_CONF
    resolved_upstreams = resolved_upstreams or RESOLVED_UPSTREAMS
    notes: list[str] = []
    text = _read(resolv_conf)
    if text is None:
        return Upstreams((), (f"{resolv_conf} cannot be read",))
    servers = nameservers(text)
    if any(s in RESOLVED_STUBS for s in servers):
        servers = [s for s in servers if s not in RESOLVED_STUBS]
        behind = _read(resolved_upstreams)
        real = nameservers(behind) if behind is not None else []
        real = [s for s in real if s not in RESOLVED_STUBS]
        if not real:
            notes.append(
                f"{resolv_conf} names systemd-resolved's stub and {resolved_upstreams} "
                "names no server: not forwarding to the stub (a loop once resolved sends "
                "names to the sidecar)"
            )
        servers = [s for s in real if s not in servers] + servers
    unusable = [s for s in servers if not _is_unicast(s)]
    if unusable:
        servers = [s for s in servers if s not in unusable]
        notes.append(
            f"{resolv_conf} names {', '.join(unusable)}: not an address a query can be "
            "sent to as one host, left out"
        )
    own_ip, own_port = own
    if own_port == 53 and own_ip in servers:
        servers.remove(own_ip)
        notes.append(
            f"{resolv_conf} names the sidecar's own DNS ({own_ip}): not forwarding to itself"
        )
    if len(servers) > MAX_UPSTREAMS:
        servers = servers[:MAX_UPSTREAMS]
    return Upstreams(tuple(servers), tuple(notes))


def resolv_conf(dns: tuple[str, int], namespace: str, upstreams: tuple[str, ...]) -> str:
    """The ``/etc/resolv.conf`` that sends a workload's names to its sidecar's DNS
    (``dns`` must be on port 53: UsageError otherwise), the upstreams on port 53 after it
    as fallbacks (three nameservers at most, as glibc reads), and the mesh's search list."""
    ip, port = dns
    if port != 53:
        raise UsageError(
            f"resolv.conf can only name port 53 and the sidecar's DNS is on {port}: give "
            "--dns IP:53 (a loopback address of its own, e.g. 127.0.10.53:53; Envoy needs "
            "CAP_NET_BIND_SERVICE), or use --resolver-config resolved"
        )
    fallbacks = [u for u in upstreams if split_host_port(u) is None and u != ip][:2]
    lines = [
        "# /etc/resolv.conf written by xdsd bootstrap: mesh names go to the sidecar's DNS,",
        "# which forwards every other name; the nameservers after it are asked only when",
        "# it does not answer.",
        f"nameserver {ip}",
        *(f"nameserver {u}" for u in fallbacks),
        f"search {' '.join(search_domains(namespace))}",
        "options ndots:1 timeout:2 attempts:2",
    ]
    return "\n".join(lines) + "\n"


def resolved_dropin(dns: tuple[str, int], namespace: str) -> str:
    """The systemd-resolved drop-in (``/etc/systemd/resolved.conf.d/xdsd.conf``) that
    makes the sidecar's DNS (any port) a server for the mesh's domain, with the mesh's
    search list (search domains are routing domains too)."""
    ip, port = dns
    search = " ".join(search_domains(namespace))
    cluster = search_domains(namespace)[-1]
    lines = [
        f"# written by xdsd bootstrap: names under {cluster} go to the sidecar's DNS",
        "# (then: systemctl restart systemd-resolved)",
        "[Resolve]",
        f"DNS={host_port(ip, port)}",
        f"Domains=~{cluster} {search}",
    ]
    return "\n".join(lines) + "\n"


def resolver_config(
    kind: str, dns: tuple[str, int], namespace: str, upstreams: tuple[str, ...]
) -> str:
    """The file ``--resolver-config KIND`` writes: ``resolv.conf`` or ``resolved``."""
    if kind == "resolv.conf":
        return resolv_conf(dns, namespace, upstreams)
    if kind == "resolved":
        return resolved_dropin(dns, namespace)
    raise UsageError(f"--resolver-config wants one of {', '.join(RESOLVER_CONFIGS)}")


def commented(text: str) -> str:
    """``text`` with every line a YAML comment (``# `` prefixed; blank lines ``#``)."""
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


def _body(text: str) -> list[str]:
    """The lines of a snippet without its own comments (they are comments already)."""
    return [line for line in text.splitlines() if not line.startswith("#")]


def advice(dns: tuple[str, int], namespace: str, upstreams: tuple[str, ...]) -> str:
    """What a bootstrap with mesh DNS prints about the host's resolver (as comments in
    the YAML): the resolv.conf lines (or why port 53 is needed for them) and the
    systemd-resolved drop-in."""
    ip, port = dns
    parts = [
        f"Mesh DNS: this sidecar answers mesh names on {host_port(ip, port)}. Point the",
        'host\'s resolver at it (docs/operations.md, "Mesh DNS"), either way:',
        "",
    ]
    if port == 53:
        parts += ["1. /etc/resolv.conf:", *_body(resolv_conf(dns, namespace, upstreams))]
    else:
        parts += [
            f"1. /etc/resolv.conf can only name port 53, and this DNS is on {port}: bootstrap",
            "   with --dns IP:53 on a loopback address of its own (e.g. 127.0.10.53:53; Envoy",
            "   needs CAP_NET_BIND_SERVICE), or:",
        ]
    parts += ["", f"2. systemd-resolved, {RESOLVED_DROPIN}:"]
    parts += _body(resolved_dropin(dns, namespace))
    parts += ["", "(--resolver-config resolv.conf|resolved --resolver-file PATH writes one)"]
    return commented("\n".join(parts))
