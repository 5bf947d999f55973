"""``xdsd bootstrap``'s mesh DNS: the node metadata a sidecar's bootstrap carries
(``virtual_addresses``, ``dns``, ``dns_upstream``) by default and by flag, read back by
``node_class_from_node`` and accepted by ``envoy --mode validate``; the upstreams taken
from the host's resolv.conf without loops; the resolver snippets and files; bad flags
refused with the flag named; ``--no-dns`` giving exactly the bootstrap of before."""

from __future__ import annotations

import contextlib
import io
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.harness import envoy_accepts
from xdsd import resolver
from xdsd.cli import main
from xdsd.errors import UsageError
from xdsd.translate import ConfigSourceKind, NodeClass, bootstrap
from xdsd.translate.node import node_class_from_node
from xdsd.translate.static import node_message


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake host resolver configuration: ``resolv.conf`` naming two servers, and no
    systemd-resolved file; the test may rewrite both."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\nnameserver 192.0.2.1\nnameserver 2001:db8::1\nsearch lan\n")
    monkeypatch.setattr(resolver, "RESOLV_CONF", str(conf))
    monkeypatch.setattr(resolver, "RESOLVED_UPSTREAMS", str(tmp_path / "resolved.conf"))
    return tmp_path


def boot(*flags: str) -> tuple[dict[str, Any], str, str]:
    """A bootstrap for ``reviews`` with ``flags``: (document, its text, stderr)."""
    code, out, err = run(["bootstrap", "--service", "reviews", *flags])
    assert code == 0, err
    return yaml.safe_load(out), out, err


def read_back(doc: dict[str, Any]) -> NodeClass:
    node = json_format.ParseDict(doc["node"], base_pb2.Node())
    return node_class_from_node(node, config_source=ConfigSourceKind.ADS)


def test_a_sidecar_gets_virtual_addresses_dns_and_the_hosts_upstreams(
    host: Path, tmp_path: Path
) -> None:
    doc, text, _ = boot("--outbound-ip", "127.0.0.1")
    metadata = doc["node"]["metadata"]
    assert metadata["virtual_addresses"] == "127.240.0.0/16"
    assert metadata["dns"] == "127.0.0.1:15053"
    assert metadata["dns_upstream"] == ["192.0.2.1", "2001:db8::1"]
    node = read_back(doc)
    assert node.virtual_addresses == "127.240.0.0/16"
    assert node.dns == "127.0.0.1:15053"
    assert node.dns_upstream == ("192.0.2.1", "2001:db8::1")
    # the advice, as comments: port 15053 cannot go in resolv.conf; the drop-in can
    assert text.startswith("# Mesh DNS: this sidecar answers mesh names on 127.0.0.1:15053")
    assert "# DNS=127.0.0.1:15053\n" in text
    assert "# Domains=~cluster.local default.svc.cluster.local svc.cluster.local" in text
    assert "# nameserver" not in text and "can only name port 53" in text
    envoy_accepts(doc, tmp_path / "envoy.json")


def test_flags_set_the_block_the_dns_address_and_upstreams(host: Path, tmp_path: Path) -> None:
    doc, text, _ = boot(
        "--namespace",
        "shop",
        "--virtual-addresses",
        "127.241.0.0/16",
        "--dns",
        "127.0.10.53:53",
        "--dns-upstream",
        "198.51.100.7",
        "--dns-upstream",
        "198.51.100.8:5353",
        "--dns-upstream",
        "[2001:db8::53]:53",
    )
    node = read_back(doc)
    assert node.virtual_addresses == "127.241.0.0/16"
    assert node.dns == "127.0.10.53:53"
    assert node.dns_upstream == ("198.51.100.7", "198.51.100.8:5353", "2001:db8::53")
    assert "# nameserver 127.0.10.53\n# nameserver 198.51.100.7\n" in text
    assert "# search shop.svc.cluster.local svc.cluster.local cluster.local\n" in text
    envoy_accepts(doc, tmp_path / "envoy.json")


def test_no_dns_is_exactly_the_bootstrap_of_before(host: Path) -> None:
    _, text, err = boot("--no-dns", "--instance-ip", "127.0.0.11")
    node = NodeClass(service="reviews", instance_ip="127.0.0.11")
    before = bootstrap(
        "reviews-sidecar",
        node,
        xds_host="127.0.0.1",
        xds_port=18000,
        transport="grpc",
        admin_port=15000,
    )
    assert yaml.safe_load(text) == before
    assert "#" not in text and "Mesh DNS" not in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--role", "gateway"],
        ["--format", "grpc"],
    ],
)
def test_gateways_and_grpc_clients_get_no_dns(host: Path, flags: list[str]) -> None:
    code, out, err = run(["bootstrap", "--service", "reviews", *flags])
    assert code == 0, err
    assert "virtual_addresses" not in out and "dns" not in out and "Mesh DNS" not in out
    code, _, err = run(["bootstrap", "--service", "reviews", *flags, "--dns", "127.0.0.1:53"])
    assert code == 2 and "--dns is for an Envoy sidecar's mesh DNS" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--virtual-addresses", "127.240.0.1/16"], "host bits zero"),
        (["--virtual-addresses", "127.240.0.0"], "too small"),
        (["--virtual-addresses", "banana"], "CIDR notation"),
        (["--virtual-addresses", "fd00::/64"], "wants an IPv4 network"),
        (["--virtual-addresses", "127.240.0.0/24"], "smaller than the settings' block"),
        (["--dns", "127.0.0.1"], "--dns wants IP:PORT"),
        (["--dns", "127.0.0.1:0"], "--dns wants IP:PORT"),
        (["--dns", "127.0.0.1:99999"], "--dns wants IP:PORT"),
        (["--dns", "localhost:53"], "--dns wants IP:PORT"),
        (["--dns", "::1:53"], "--dns wants IP:PORT"),
        (["--dns", "0.0.0.0:53"], "open resolver"),
        (["--dns", "[::]:53"], "open resolver"),
        (["--dns", "224.0.0.251:5353"], "one address of this host"),
        (["--dns-upstream", "0.0.0.0"], "--dns-upstream: must be a list of at most 8"),
        (["--dns-upstream", "255.255.255.255:53"], "--dns-upstream: must be"),
        (["--dns-upstream", "dns.example"], "--dns-upstream wants IP or IP:PORT"),
        (["--dns-upstream", "1.1.1.1:x"], "--dns-upstream wants IP or IP:PORT"),
        (["--dns", "127.0.0.9:53", "--dns-upstream", "127.0.0.9"], "forward names to itself"),
        (["--dns-upstream", "192.0.2.1"] * 9, "at most 8"),
        (["--no-dns", "--virtual-addresses", "127.241.0.0/16"], "contradict"),
        (["--resolver-config", "resolved"], "go together"),
        (["--resolver-file", "x"], "go together"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(host: Path, flags: list[str], message: str) -> None:
    code, out, err = run(["bootstrap", "--service", "reviews", *flags])
    assert code == 2 and out == ""
    assert message in err


def test_resolver_files(host: Path, tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "resolv.conf"
    _, _, err = boot(
        "--dns",
        "127.0.10.53:53",
        "--resolver-config",
        "resolv.conf",
        "--resolver-file",
        str(conf),
    )
    assert f"{conf}: written (resolv.conf)" in err
    assert resolver.nameservers(conf.read_text()) == ["127.0.10.53", "192.0.2.1", "2001:db8::1"]
    assert "search default.svc.cluster.local svc.cluster.local cluster.local\n" in (
        conf.read_text()
    )
    assert oct(conf.stat().st_mode & 0o777) == "0o644"

    dropin = tmp_path / "resolved.conf.d" / "xdsd.conf"
    boot("--resolver-config", "resolved", "--resolver-file", str(dropin))
    lines = dropin.read_text().splitlines()
    assert "[Resolve]" in lines and "DNS=127.0.0.1:15053" in lines

    # resolv.conf cannot name port 15053: refused, and nothing written
    other = tmp_path / "other.conf"
    code, _, err = run(
        [
            "bootstrap",
            "--service",
            "reviews",
            "--resolver-config",
            "resolv.conf",
            "--resolver-file",
            str(other),
        ]
    )
    assert code == 2 and "resolv.conf can only name port 53" in err
    assert not other.exists()

    # nor when the bootstrap is refused (here: a service the config does not have)
    (tmp_path / "config").mkdir()
    code, _, err = run(
        [
            "bootstrap",
            "--config-dir",
            str(tmp_path / "config"),
            "--service",
            "reviews",
            "--resolver-config",
            "resolved",
            "--resolver-file",
            str(other),
        ]
    )
    assert code == 1 and "no service default/reviews" in err
    assert not other.exists()


def test_upstreams_skip_addresses_no_query_can_go_to(host: Path) -> None:
    (host / "resolv.conf").write_text("nameserver 0.0.0.0\nnameserver 192.0.2.1\n")
    doc, _, err = boot()
    assert doc["node"]["metadata"]["dns_upstream"] == ["192.0.2.1"]
    assert "names 0.0.0.0: not an address a query can be sent to" in err


def test_upstreams_skip_the_sidecar_itself(host: Path) -> None:
    (host / "resolv.conf").write_text("nameserver 127.0.10.53\nnameserver 192.0.2.1\n")
    doc, _, err = boot("--dns", "127.0.10.53:53")
    assert doc["node"]["metadata"]["dns_upstream"] == ["192.0.2.1"]
    assert "not forwarding to itself" in err
    # on another port the same address is another server (say, a local dnsmasq)
    doc, _, _ = boot("--dns", "127.0.10.53:15053")
    assert doc["node"]["metadata"]["dns_upstream"] == ["127.0.10.53", "192.0.2.1"]


def test_upstreams_behind_systemd_resolveds_stub(host: Path) -> None:
    (host / "resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    (host / "resolved.conf").write_text("nameserver 203.0.113.5\nnameserver 127.0.0.53\n")
    doc, _, err = boot()
    assert doc["node"]["metadata"]["dns_upstream"] == ["203.0.113.5"]
    assert "stub" not in err  # the documented choice, said nothing of
    (host / "resolved.conf").unlink()
    doc, _, err = boot()
    assert "dns_upstream" not in doc["node"]["metadata"]
    assert "no upstream resolver" in err and "not forwarding to the stub" in err


def test_nameservers_are_read_strictly() -> None:
    text = (
        "nameserver 192.0.2.1\n"
        "  nameserver 192.0.2.2 # trailing\n"
        "nameserver fe80::1%eth0\n"  # a zone: Envoy cannot use it
        "nameserver not-an-ip\n"
        "nameserver\n"
        "#nameserver 192.0.2.9\n"
        "nameserver 192.0.2.1\n"  # again
        "nameserver2 192.0.2.3\n"
    )
    assert resolver.nameservers(text) == ["192.0.2.1", "192.0.2.2"]
    # bounded: a huge file is read to its first 64 KiB only
    huge = (
        "nameserver 192.0.2.4\n" + "#" * (resolver.MAX_RESOLV_CONF_BYTES) + "\nnameserver 1.1.1.1"
    )
    assert resolver.nameservers(huge) == ["192.0.2.4"]


def test_unreadable_resolv_conf_and_many_servers(tmp_path: Path) -> None:
    missing = resolver.host_upstreams(("127.0.0.1", 15053), resolv_conf=str(tmp_path / "no"))
    assert missing.resolvers == () and "cannot be read" in missing.notes[0]
    many = tmp_path / "many"
    many.write_text("".join(f"nameserver 192.0.2.{i}\n" for i in range(1, 20)))
    found = resolver.host_upstreams(("127.0.0.1", 15053), resolv_conf=str(many))
    assert len(found.resolvers) == resolver.MAX_UPSTREAMS


def test_snippets() -> None:
    with pytest.raises(UsageError, match="can only name port 53"):
        resolver.resolv_conf(("127.0.0.1", 15053), "default", ())
    text = resolver.resolv_conf(
        ("127.0.10.53", 53), "shop", ("192.0.2.1", "192.0.2.2:5353", "192.0.2.3", "192.0.2.4")
    )
    # at most three nameservers (glibc's MAXNS); a server on another port cannot be one
    assert resolver.nameservers(text) == ["127.0.10.53", "192.0.2.1", "192.0.2.3"]
    dropin = resolver.resolved_dropin(("::1", 5353), "shop")
    assert "DNS=[::1]:5353\n" in dropin
    assert "Domains=~cluster.local shop.svc.cluster.local svc.cluster.local cluster.local\n" in (
        dropin
    )
    assert resolver.search_domains("a") == (
        "a.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    )


_LINE = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a: f"nameserver {a}", st.ip_addresses().map(str)),
    st.builds(lambda a: f"nameserver {a}", st.text(max_size=40)),
    st.sampled_from(
        [
            "nameserver 127.0.0.53",
            "nameserver fe80::1%eth0",
            "nameserver",
            "nameserver 0.0.0.0",
            "nameserver ff02::1",
        ]
    ),
)


@fuzz_settings()
@given(lines=st.lists(_LINE, max_size=20), own_port=st.sampled_from([53, 15053]))
def test_fuzz_host_resolv_conf(tmp_path_factory: Any, lines: list[str], own_port: int) -> None:
    """Whatever the host's resolv.conf holds: the upstreams are unicast IP literals xdsd's
    node metadata accepts, at most 8, never the sidecar itself nor resolved's stub."""
    with deadline("test_fuzz_host_resolv_conf"):
        path = tmp_path_factory.mktemp("resolv") / "resolv.conf"
        path.write_text("\n".join(lines), errors="surrogatepass")
        own = ("127.0.0.53", own_port)
        found = resolver.host_upstreams(
            own, resolv_conf=str(path), resolved_upstreams="/nonexistent"
        )
        assert len(found.resolvers) <= resolver.MAX_UPSTREAMS
        for address in found.resolvers:
            assert ipaddress.ip_address(address) and address not in resolver.RESOLVED_STUBS
        node = NodeClass(service="a", dns="127.0.0.53:15053", dns_upstream=found.resolvers)
        read_back({"node": json_format.MessageToDict(node_message("a", node))})


def test_capture_flag_gives_the_capture_port(host: Path) -> None:
    doc, _, _ = boot("--capture", "15002")
    assert read_back(doc).capture == 15002
    assert read_back(boot()[0]).capture == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--capture", "0"], None),
        (["--capture", "70000"], "--capture wants a port"),
        (["--capture", "-1"], "--capture wants a port"),
        (["--role", "gateway", "--capture", "15002"], "--capture is for an Envoy sidecar"),
    ],
)
def test_capture_flag_refuses_what_cannot_work(
    host: Path, flags: list[str], message: str | None
) -> None:
    if message is None:  # 0 is "none"
        doc, _, _ = boot(*flags)
        assert read_back(doc).capture == 0
        return
    code, out, err = run(["bootstrap", "--service", "reviews", *flags])
    assert code == 2 and out == "" and message in err
