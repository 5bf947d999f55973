"""Mesh DNS answered by a real Envoy sidecar configured by xdsd, queried with a real
resolver library (dnspython) over UDP: short, namespaced and full names, a ServiceEntry
host and a wildcard get their virtual addresses; an external name is forwarded to an
upstream resolver (a small server on loopback standing for the internet) and answered;
a missing mesh name is NXDOMAIN; a service added to the directory is answered after the
push."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from tests.harness import Envoy, Xdsd, free_port, loopback_block, wait_until, write_atomically
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate.static import bootstrap
from xdsd.translate.virtual_addresses import AddressBlock

#: What the stand-in for the internet answers: A for names under this suffix.
INTERNET = "internet.test"
INTERNET_ADDRESS = "192.0.2.7"

SERVICE = """\
kind = "Service"
name = "{name}"
namespace = "{namespace}"

[[ports]]
name = "http"
number = {port}
protocol = "HTTP"

[[endpoints]]
address = "{ip}"
"""

ENTRIES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.external.test]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wild}}
spec:
  hosts: ["*.wild.test"]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: NONE
"""


class Upstream:
    """A UDP DNS server on ``host``: A ``INTERNET_ADDRESS`` for names under
    ``INTERNET``, an empty answer for their other types, NXDOMAIN for everything else;
    it records every name asked (what the sidecar forwarded)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.asked: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            with contextlib.suppress(Exception):
                self.sock.sendto(self._answer(data), peer)

    def _answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        self.asked.append(name)
        if name.endswith(f".{INTERNET}"):
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text(question.name, 60, "IN", "A", INTERNET_ADDRESS)
                )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return bytes(response.to_wire())

    def stop(self) -> None:
        self.sock.close()


def free_udp_port(host: str) -> int:
    """A UDP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class World:
    """The directory, xdsd, the upstream resolver and one sidecar with a DNS listener."""

    def __init__(self, root: Path) -> None:
        self.root = root
        block = loopback_block()
        self.config = root / "config"
        (self.config / "services").mkdir(parents=True)
        (self.config / "rules").mkdir()
        self.port = free_port(f"{block}.11")
        self.backend_ip = f"{block}.11"
        self.add_service("productpage", "default")
        self.add_service("reviews", "default")
        self.add_service("ratings", "shop")
        (self.config / "rules" / "entries.yaml").write_text(ENTRIES.format(port=self.port))
        self.upstream = Upstream(f"{block}.40")
        self.dns_ip = f"{block}.32"
        self.dns_port = free_udp_port(self.dns_ip)
        self.xdsd = Xdsd(self.config, root)
        admin_port = free_port()
        node = NodeClass("productpage", instance_ip=f"{block}.30", outbound_ip=f"{block}.31")
        config = bootstrap(
            "productpage-1",
            node,
            xds_host="127.0.0.1",
            xds_port=self.xdsd.grpc_port,
            transport="grpc",
            admin_port=admin_port,
        )
        # what the resolver helper's `xdsd bootstrap` flags write
        config["node"]["metadata"]["dns"] = f"{self.dns_ip}:{self.dns_port}"
        config["node"]["metadata"]["dns_upstream"] = [f"{self.upstream.host}:{self.upstream.port}"]
        path = root / "envoy.json"
        path.write_text(json.dumps(config))
        self.envoy = Envoy(path, admin_port, root)
        self.envoy.ready()
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = [self.dns_ip]
        self.resolver.port = self.dns_port
        self.resolver.lifetime = 5.0

    def add_service(self, name: str, namespace: str) -> None:
        write_atomically(
            self.config / "services" / f"{name}-{namespace}.toml",
            SERVICE.format(name=name, namespace=namespace, port=self.port, ip=self.backend_ip),
        )

    def vip(self, namespace: str, name: str) -> str:
        """The virtual address xdsd gives a service of the directory as it is now."""
        mesh = load_directory(str(self.config)).mesh
        virtual = MeshTranslation(mesh).virtual_addresses()
        [service] = [s for s in mesh.services if (s.namespace, s.name) == (namespace, name)]
        return AddressBlock.parse("127.240.0.0/16").address(virtual.slots[service.key])

    def a(self, name: str) -> list[str]:
        """The A records the sidecar answers for ``name`` (raises NXDOMAIN...)."""
        answer = self.resolver.resolve(name, "A", search=False, raise_on_no_answer=False)
        return sorted(r.address for r in answer)

    def stop(self) -> None:
        for thing in (self.envoy, self.xdsd, self.upstream):
            with contextlib.suppress(Exception):
                thing.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    found = World(tmp_path_factory.mktemp("dns"))
    try:
        wait_until(lambda: found.a("reviews") != [], timeout=60, what="the DNS listener to answer")
        yield found
    finally:
        found.stop()


def test_mesh_names_are_answered_with_virtual_addresses(world: World) -> None:
    reviews = world.vip("default", "reviews")
    for name in (
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
    ):
        assert world.a(name) == [reviews], name
    ratings = world.vip("shop", "ratings")
    assert world.a("ratings.shop") == world.a("ratings.shop.svc.cluster.local") == [ratings]
    assert world.a("api.external.test") == [world.vip("default", "api.external.test")]
    wild = world.vip("default", "*.wild.test")
    assert world.a("a.wild.test") == world.a("b.a.wild.test") == [wild]
    assert len({reviews, ratings, wild, world.vip("default", "productpage")}) == 4
    answer = world.resolver.resolve("reviews", "A", search=False)
    assert answer.rrset is not None and answer.rrset.ttl == 30  # [mesh.dns] ttl
    # none of it went upstream
    assert not [n for n in world.upstream.asked if "reviews" in n or "wild" in n]


def test_an_external_name_is_forwarded_upstream(world: World) -> None:
    assert world.a(f"www.{INTERNET}") == [INTERNET_ADDRESS]
    assert f"www.{INTERNET}" in world.upstream.asked


def test_missing_mesh_names_are_nxdomain(world: World) -> None:
    """Envoy forwards a name its table lacks, under a mesh suffix or not (its "known
    domains" only decide whether the table is read first): the NXDOMAIN comes from the
    upstream, which is why the sidecar's upstream must never lead back to it."""
    for name in ("nope.default.svc.cluster.local", "nope.shop", "ratings.default", "ratings"):
        with pytest.raises(dns.resolver.NXDOMAIN):
            world.a(name)
        assert name in world.upstream.asked
    # a short name is the caller's namespace only: ratings lives in shop
    # an AAAA query for an IPv4-only name: Envoy answers NXDOMAIN itself (not NODATA)
    asked = len(world.upstream.asked)
    with pytest.raises(dns.resolver.NXDOMAIN):
        world.resolver.resolve("reviews", "AAAA", search=False)
    assert "reviews" not in world.upstream.asked[asked:]


def test_a_service_added_is_answered_after_the_push(world: World) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        world.a("details")
    world.add_service("details", "default")
    details = world.vip("default", "details")
    wait_until(lambda: world.a("details") == [details], timeout=30, what="details to be answered")
    assert world.a("details.default.svc.cluster.local") == [details]
    assert world.a("reviews") == [world.vip("default", "reviews")]  # unmoved
