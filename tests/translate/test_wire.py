"""``wire``: varints, length-delimited and repeated string fields, byte for byte as
protobuf's own encoder writes them."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from google.protobuf.internal.encoder import _VarintBytes

from xdsd.translate.wire import delimited, strings, tag, varint

EDGES = [0, 1, 0x7F, 0x80, 0xFF, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 2**32 - 1, 2**63]


def test_varints_are_protobufs() -> None:
    for value in [*range(0, 0x4100), *EDGES]:
        assert varint(value) == _VarintBytes(value), value


def test_fields_are_protobufs() -> None:
    key = tag(route_components_pb2.VirtualHost, "domains")[1]
    for n in [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 70000]:
        domains = ["d" * n, "é" * (n // 2), "x"]
        vhost = route_components_pb2.VirtualHost(domains=domains)
        assert strings(key, domains) == vhost.SerializeToString(deterministic=True)
        assert delimited(key, domains[0].encode()) == route_components_pb2.VirtualHost(
            domains=domains[:1]
        ).SerializeToString(deterministic=True)
