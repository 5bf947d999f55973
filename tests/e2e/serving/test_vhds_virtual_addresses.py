"""VHDS on virtual addresses, with a real Envoy on delta ADS: a sidecar bootstrapped the
default way for delta (``xdsd bootstrap --transport delta`` with mesh DNS: virtual
addresses and a DNS listener, here on a free port) is served its route configurations
without virtual hosts; a request to a service's virtual address makes Envoy fetch the
virtual host named by the Host header it sees (``web:PORT``, or ``web``) and is routed;
a route edit is sent as that virtual host alone and moves the traffic on the VIP. A
resolution NONE entry's VIP listener (the HTTP proxy's route configuration and the
dynamic forward proxy) is served the same way."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from tests.e2e.traffic_mesh import TrafficMesh
from tests.harness import free_port, wait_until
from xdsd.sources.loader import load_directory
from xdsd.translate import MeshTranslation
from xdsd.translate.virtual_addresses import AddressBlock

SENT = re.compile(r"sending delta (\w+) version=\S+ nonce=\S+ resources=(\d+) removed=(\d+)")
WEB = "web.default.svc.cluster.local"


def rules(subset: str) -> str:
    """web's subsets v1/v2 and a VirtualService sending everything to ``subset``."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web}}
spec:
  host: web
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - route: [{{destination: {{host: web, subset: {subset}}}}}]
"""


def entry(port: int) -> str:
    """A ServiceEntry of resolution NONE for ``localhost:port`` (HTTP)."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext}}
spec:
  hosts: [localhost]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: NONE
  location: MESH_EXTERNAL
"""


def sent(log: str) -> list[tuple[str, int, int]]:
    """(type, resources, removed) of every delta response in an xdsd log, in order."""
    return [(t, int(n), int(r)) for t, n, r in SENT.findall(log)]


def route_config(dump: Any, name: str) -> dict[str, Any] | None:
    """The dynamic route configuration ``name`` in an Envoy ``/config_dump``."""
    for section in dump["configs"]:
        for entry in section.get("dynamic_route_configs", ()):
            config: dict[str, Any] = entry["route_config"]
            if config.get("name") == name:
                return config
    return None


def test_a_vip_request_fetches_its_virtual_host_and_follows_edits(tmp_path: Path) -> None:
    m = TrafficMesh(tmp_path)
    try:
        taken = int(m.block.split(".")[1])
        block = f"127.{random.choice([n for n in range(100, 240) if n != taken])}.0.0/16"
        m.service("web", [m.upstream("web-1", version="v1"), m.upstream("web-2", version="v2")])
        m.rule("web", rules("v1"))
        ext = m.upstream_on("ext")  # on 127.0.0.1, where ``localhost`` resolves
        m.rule("ext", entry(ext.port))
        dns = ("--virtual-addresses", block, "--dns", f"127.0.0.1:{free_port()}")
        c = m.start(transport="delta", bootstrap_args=dns)
        assert m.xdsd is not None
        xdsd, port = m.xdsd, m.port
        loaded = load_directory(str(m.config)).mesh
        web = loaded.service_by_name("default", "web")
        assert web is not None
        allocation = MeshTranslation(loaded).virtual_addresses()
        (vip,) = allocation.addresses_of(web.key, AddressBlock.parse(block))
        none = next(s for s in loaded.services if s.name == "localhost")
        (ext_vip,) = allocation.addresses_of(none.key, AddressBlock.parse(block))
        c.wait_for(lambda: (vip, port) in c.envoy.listener_addresses(), "the VIP listener")
        wait_until(
            lambda: route_config(c.envoy.admin_json("/config_dump"), str(port)) is not None,
            what="the port's route configuration",
        )
        (client,) = xdsd.admin("/debug/clients")
        assert client["transport"] == "delta-ads"
        assert "vhds" in str(client["class"]).split(), client
        dump = c.envoy.admin_json("/config_dump")
        config = route_config(dump, str(port))
        assert config is not None and "vhds" in config and not config.get("virtual_hosts")
        assert not [n for t, n, _ in sent(xdsd.log()) if t == "virtual_hosts" and n], "pushed"

        # The first request to the VIP fetches web's virtual host on demand and is routed.
        def backend(host: str) -> str:
            reply = c.request(host, port=port, address=vip)
            return reply.headers.get("x-backend", str(reply.status))

        c.wait_for(lambda: backend(f"web:{port}") == "web-1", "web via its VIP")
        assert {backend(f"web:{port}") for _ in range(5)} == {"web-1"}
        assert backend("web") == "web-1"  # Host without the port: the same virtual host
        fetched = [n for t, n, _ in sent(xdsd.log()) if t == "virtual_hosts" and n]
        assert fetched and sum(fetched) == 1, fetched  # web's, once
        config = route_config(c.envoy.admin_json("/config_dump"), str(port))
        assert config is not None
        held = [v["name"] for v in config.get("virtual_hosts", ())]
        assert held == [f"{port}/{WEB}:{port}"], held  # the one host asked for
        assert c.request("nowhere.example", port=port, address=vip).status == 404

        # The NONE entry's VIP: its virtual host fetched from the HTTP proxy's routes.
        before = len(sent(xdsd.log()))
        c.wait_for(
            lambda: (
                c.request(f"localhost:{ext.port}", port=ext.port, address=ext_vip).headers.get(
                    "x-backend"
                )
                == "ext"
            ),
            "the NONE entry via its VIP",
        )
        fetched = [n for t, n, _ in sent(xdsd.log())[before:] if t == "virtual_hosts" and n]
        assert sum(fetched) == 1, fetched
        proxy = route_config(c.envoy.admin_json("/config_dump"), "http_proxy")
        assert proxy is not None
        assert [v["name"] for v in proxy.get("virtual_hosts", ())] == [
            f"http_proxy/localhost:{ext.port}"
        ]

        # A route edit: sent as web's virtual host alone; the VIP follows it.
        before = len(sent(xdsd.log()))
        m.rule("web", rules("v2"))
        c.wait_for(
            lambda: all(backend(f"web:{port}") == "web-2" for _ in range(5)), "web moved to v2"
        )
        wait_until(lambda: len(sent(xdsd.log())) > before, what="the edit's responses")
        after = sent(xdsd.log())[before:]
        assert {t for t, _, _ in after} == {"virtual_hosts"}, after
        assert c.stats().get("listener_manager.lds.update_rejected", 0) == 0
        # no VHDS subscription waited out its initial fetch (every configuration started)
        assert "initial fetch timed out" not in c.envoy.log()
        assert m.errors() == []
    finally:
        m.stop()
