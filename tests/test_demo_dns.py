"""``xdsd demo``'s mesh DNS without running it: one sidecar gets virtual addresses and
DNS, in a block of its own; the DNS port follows what Envoy may bind; the banner's
by-name step as root and not; the address it prints is the one xdsd serves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from tests.harness import envoy_accepts
from xdsd.demo import runner
from xdsd.demo.mesh import (
    DNS_WORKLOAD,
    bootstrap_files,
    config_files,
    loopback_layout,
    virtual_address_block,
    write_files,
)
from xdsd.model.mesh_config import DEFAULT_VIRTUAL_ADDRESSES
from xdsd.sources import load_directory
from xdsd.translate import ConfigSourceKind, MeshTranslation
from xdsd.translate.node import node_class_from_node
from xdsd.translate.virtual_addresses import AddressBlock

PORTS = {"productpage-v1": 9181, "reviews-v1": 9182, "reviews-v2": 9183, "ratings-v1": 9184}


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("127.0.10", "127.1.0.0/16"),
        ("127.239.5", "127.241.0.0/16"),  # never the default block of a sidecar of one's own
        ("127.254.0", "127.255.0.0/16"),
        ("127.255.0", "127.254.0.0/16"),
    ],
)
def test_the_virtual_address_block_is_the_demos_own(block: str, expected: str) -> None:
    assert virtual_address_block(block) == expected
    assert expected != DEFAULT_VIRTUAL_ADDRESSES
    assert not expected.startswith(block.rsplit(".", 1)[0] + ".")


def test_only_productpages_sidecar_gets_mesh_dns(tmp_path: Path) -> None:
    layout = loopback_layout("127.0.10", PORTS, dns_port=53, dns_upstream=("192.0.2.1",))
    files = bootstrap_files(layout)
    with_dns = []
    for name, text in files.items():
        doc = yaml.safe_load(text)
        if "dns" in doc["node"]["metadata"]:
            with_dns.append(name)
            node = node_class_from_node(
                json_format.ParseDict(doc["node"], base_pb2.Node()),
                config_source=ConfigSourceKind.ADS,
            )
            assert node.dns == "127.0.10.53:53"
            assert node.virtual_addresses == "127.1.0.0/16"
            assert node.dns_upstream == ("192.0.2.1",)
            envoy_accepts(doc, tmp_path / "envoy.json")
    assert with_dns == [f"{DNS_WORKLOAD}.yaml"]
    # without a DNS port: the bootstraps of before
    plain = bootstrap_files(loopback_layout("127.0.10", PORTS))
    assert not any("dns" in yaml.safe_load(t)["node"]["metadata"] for t in plain.values())


def test_the_dns_port_follows_what_envoy_may_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert runner.dns_port() == 53
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    expected = 53 if start.exists() and int(start.read_text()) <= 53 else 15053
    assert runner.dns_port() == expected


def test_the_banner_by_name_step(tmp_path: Path) -> None:
    """As root: curl --resolve with productpage's address (the one xdsd allocates) and
    a shell over DIR/resolv.conf; not root (DNS on 15053): curl --resolve and dig only."""
    for port in (53, 15053):
        workdir = tmp_path / str(port)
        layout = loopback_layout("127.0.10", PORTS, dns_port=port)
        write_files(workdir / "config", config_files(layout))
        written = runner.write_resolv_conf(layout, workdir)
        lines = "\n".join(runner.by_name(layout, workdir))
        mesh = load_directory(str(workdir / "config")).mesh
        productpage = mesh.service_by_name("default", "productpage")
        assert productpage is not None
        slot = MeshTranslation(mesh).virtual_addresses().slots[productpage.key]
        vip = AddressBlock.parse("127.1.0.0/16").address(slot)
        assert f"curl --resolve productpage:9080:{vip} http://productpage:9080/" in lines
        if port == 53:
            assert written == workdir / "resolv.conf"
            assert "nameserver 127.0.10.53\n" in written.read_text()
            assert f"mount --bind {written} /etc/resolv.conf" in lines
            assert "dig @127.0.10.53 productpage" in lines
        else:
            assert written is None and "unshare" not in lines
            assert "dig @127.0.10.53 -p 15053 productpage" in lines
            assert "as root the demo's DNS is on port 53" in lines
