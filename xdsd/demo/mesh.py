"""The demo mesh: four workloads, an ingress gateway, and the files that describe them.

How this works: one ``Layout`` says where each workload lives (its address, the address
its sidecar's outbound listeners bind, the loopback port its application listens on) and
where xdsd and the gateway are. ``config_files`` turns a layout into xdsd config files and
``bootstrap_files`` into one Envoy bootstrap per proxy. The same functions write the files
of ``xdsd demo`` (everything on a ``127.A.B.x`` loopback block), of the docker-compose demo
(``demo/``: a compose network, one network namespace per workload) and of the network
namespace test, so the three cannot drift apart.

The mesh is a small bookinfo: the gateway sends every request to ``productpage``, which
calls ``reviews``; ``reviews`` v2 calls ``ratings``. ``rules/reviews.yaml`` is the canary:
its weights decide how much of the traffic reaches ``reviews`` v2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xdsd.model.gateway_api import CONTROLLER_NAME
from xdsd.sources.gateway_api.names import GATEWAY_NAME_LABEL
from xdsd.translate import NodeClass, Role, bootstrap

#: Every service port of the demo (what callers use; sidecars' inbound listeners bind it).
SERVICE_PORT = 9080
#: The port of the gateway's HTTP server (a Gateway resource).
GATEWAY_PORT = 8080
#: The xDS gRPC, REST and admin ports of xdsd (as ``xdsd serve``'s defaults).
XDS_PORT, REST_PORT, ADMIN_PORT = 18000, 18001, 19001
#: The outbound HTTP proxy listener every sidecar offers its application.
PROXY_PORT = 15001
#: Envoy's admin port (on the proxy's own address where the layout says so).
ENVOY_ADMIN_PORT = 15000
#: The labels a gateway proxy carries, and which the demo's Gateway selects.
GATEWAY_LABELS = (("istio", "ingressgateway"),)
#: The file to edit to move traffic between reviews v1 and v2.
CANARY_FILE = "rules/reviews.yaml"


@dataclass(frozen=True, slots=True)
class Workload:
    """One instance of a demo service: an application and its sidecar.

    ``address`` is the endpoint address (the sidecar's inbound listeners bind it);
    ``outbound_ip`` is where the sidecar's outbound listeners and HTTP proxy bind (what the
    application's ``HTTP_PROXY`` names); ``app_port`` is the port the application listens
    on at 127.0.0.1 (a Sidecar resource's ``ingress.defaultEndpoint`` for this workload);
    ``calls`` are the URLs the application fetches, through its sidecar, on each request.
    """

    service: str
    version: str
    address: str
    outbound_ip: str
    app_port: int
    calls: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``service-version``: the workload's name (node id, process and file names)."""
        return f"{self.service}-{self.version}"

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        return (("app", self.service), ("version", self.version))

    @property
    def proxy_url(self) -> str:
        return f"http://{self.outbound_ip}:{PROXY_PORT}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything of one demo mesh lives.

    ``xds_host`` is how proxies reach xdsd (an address, or a name DNS resolves);
    ``gateway_address`` is what the gateway's listener binds; ``admin_on_own_address``
    puts each Envoy's admin on its workload's address instead of 127.0.0.1 (needed when
    several Envoys share one loopback).
    """

    workloads: tuple[Workload, ...]
    xds_host: str
    gateway_address: str
    admin_on_own_address: bool = False
    #: Mesh DNS: the one workload whose sidecar gets virtual addresses and a DNS
    #: listener ("": none), its block, its DNS ``IP:PORT`` and the upstreams its DNS
    #: forwards other names to. One sidecar only: several sidecars on one host would
    #: each need a block of their own.
    dns_workload: str = ""
    virtual_addresses: str = ""
    dns: str = ""
    dns_upstream: tuple[str, ...] = ()
    #: Which API the routing files are written in: ``istio`` (Gateway, VirtualService,
    #: DestinationRule subsets) or ``gateway`` (the Gateway API: GatewayClass, Gateway,
    #: HTTPRoutes, one of them a GAMMA route for the canary; ``xdsd demo --api gateway``).
    api: str = "istio"

    def dns_address(self) -> tuple[str, int]:
        """(IP, PORT) of the DNS listener of ``dns_workload``'s sidecar."""
        host, _, port = self.dns.rpartition(":")
        return host, int(port)

    def workload(self, name: str) -> Workload:
        """The workload named ``service-version``; KeyError if there is none."""
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)


def standard_layout(
    address: dict[str, str],
    outbound: dict[str, str],
    app_ports: dict[str, int],
    *,
    xds_host: str,
    gateway_address: str,
    admin_on_own_address: bool = False,
) -> Layout:
    """The demo's four workloads (``productpage-v1``, ``reviews-v1``, ``reviews-v2``,
    ``ratings-v1``) placed by the three maps, which are keyed by workload name."""
    reviews = f"http://reviews:{SERVICE_PORT}/"
    ratings = f"http://ratings:{SERVICE_PORT}/"
    plan = (
        ("productpage", "v1", (reviews,)),
        ("reviews", "v1", ()),
        ("reviews", "v2", (ratings,)),
        ("ratings", "v1", ()),
    )
    workloads = []
    for service, version, calls in plan:
        name = f"{service}-{version}"
        workloads.append(
            Workload(service, version, address[name], outbound[name], app_ports[name], calls)
        )
    return Layout(tuple(workloads), xds_host, gateway_address, admin_on_own_address)


#: The workload of ``xdsd demo`` whose sidecar answers DNS and listens on virtual
#: addresses (the user's shell calls the mesh through it).
DNS_WORKLOAD = "productpage-v1"


def virtual_address_block(block: str) -> str:
    """The virtual addresses of ``xdsd demo`` on loopback block ``127.A.B``: the /16
    ``127.(A+1).0.0/16`` (as large as the default block, which a node's must be),
    outside ``127.A.B`` and never the default ``127.240.0.0/16``, which a sidecar of the
    user's own on this host may have (241 then; 254 for A = 255)."""
    second = int(block.split(".")[1]) + 1
    if second == 240:
        second = 241
    elif second == 256:
        second = 254
    return f"127.{second}.0.0/16"


def loopback_layout(
    block: str,
    app_ports: dict[str, int],
    *,
    dns_port: int = 0,
    dns_upstream: tuple[str, ...] = (),
) -> Layout:
    """The layout of ``xdsd demo``: everything on the loopback block ``block``
    (``127.A.B``): xdsd on ``.1``, the gateway on ``.2``, workloads on ``.11``, ``.21``,
    ``.22``, ``.31`` with their sidecars' outbound listeners on ``.111`` ... ``.131``.
    With ``dns_port``, productpage's sidecar answers DNS on ``.53:DNS_PORT`` (forwarding
    other names to ``dns_upstream``) and listens on the virtual addresses of
    ``virtual_address_block``."""
    hosts = {"productpage-v1": 11, "reviews-v1": 21, "reviews-v2": 22, "ratings-v1": 31}
    layout = standard_layout(
        {name: f"{block}.{n}" for name, n in hosts.items()},
        {name: f"{block}.{n + 100}" for name, n in hosts.items()},
        app_ports,
        xds_host=f"{block}.1",
        gateway_address=f"{block}.2",
        admin_on_own_address=True,
    )
    if not dns_port:
        return layout
    return dataclasses.replace(
        layout,
        dns_workload=DNS_WORKLOAD,
        virtual_addresses=virtual_address_block(block),
        dns=f"{block}.53:{dns_port}",
        dns_upstream=dns_upstream,
    )


#: The compose network of ``demo/docker-compose.yaml``.
COMPOSE_SUBNET = "172.30.0.0/24"
#: Where each application listens in its own network namespace (compose and netns).
NAMESPACED_APP_PORTS = {
    "productpage-v1": 9181,
    "reviews-v1": 9182,
    "reviews-v2": 9183,
    "ratings-v1": 9184,
}


def namespaced_layout(prefix: str, *, xds_host: str) -> Layout:
    """The layout when each workload has its own network namespace (docker-compose, the
    network namespace test): workloads at ``prefix.11`` ... ``prefix.31``, the gateway at
    ``prefix.3``; each sidecar's outbound listeners on the namespace's own 127.0.0.1."""
    hosts = {"productpage-v1": 11, "reviews-v1": 21, "reviews-v2": 22, "ratings-v1": 31}
    return standard_layout(
        {name: f"{prefix}.{n}" for name, n in hosts.items()},
        dict.fromkeys(hosts, "127.0.0.1"),
        NAMESPACED_APP_PORTS,
        xds_host=xds_host,
        gateway_address=f"{prefix}.3",
    )


def compose_layout() -> Layout:
    """The layout of ``demo/docker-compose.yaml`` (xdsd is reached by its service name)."""
    return namespaced_layout(COMPOSE_SUBNET.rsplit(".", 1)[0], xds_host="xdsd")


def config_files(layout: Layout) -> dict[str, str]:
    """The xdsd config directory of the demo: relative path → file text."""
    services = sorted({w.service for w in layout.workloads})
    docs = []
    for service in services:
        instances = [w for w in layout.workloads if w.service == service]
        endpoints = "".join(
            f"    - address: {w.address}\n"
            f"      labels: {{app: {w.service}, version: {w.version}}}\n"
            for w in instances
        )
        docs.append(
            f"apiVersion: xdsd.io/v1\nkind: Service\nmetadata: {{name: {service}}}\nspec:\n"
            f"  ports:\n  - {{name: http, number: {SERVICE_PORT}, protocol: HTTP}}\n"
            f"  endpoints:\n{endpoints}"
        )
    rules = [
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {service}}}\nspec:\n  host: {service}\n  subsets:\n"
        + "".join(
            f"  - {{name: {v}, labels: {{version: {v}}}}}\n"
            for v in sorted({w.version for w in layout.workloads if w.service == service})
        )
        for service in services
    ]
    sidecars = [
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
        f"metadata: {{name: {w.name}}}\nspec:\n"
        f"  workloadSelector:\n    labels: {{app: {w.service}, version: {w.version}}}\n"
        f"  ingress:\n  - port: {{number: {SERVICE_PORT}, protocol: HTTP, name: http}}\n"
        f"    defaultEndpoint: 127.0.0.1:{w.app_port}\n"
        for w in layout.workloads
    ]
    files = {
        "services.yaml": "# The demo's services: one endpoint per workload.\n" + "---\n".join(docs),
        "sidecars.yaml": "# Where each workload's application listens, behind its sidecar.\n"
        + "---\n".join(sidecars),
    }
    if layout.api == "gateway":
        return files | gateway_api_files(layout)
    labels = ", ".join(f"{k}: {v}" for k, v in GATEWAY_LABELS)
    gateway = f"""\
# The ingress gateway: one HTTP server on port {GATEWAY_PORT}, and every request to productpage.
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: demo-gateway}}
spec:
  selector: {{{labels}}}
  servers:
  - port: {{number: {GATEWAY_PORT}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: productpage-ingress}}
spec:
  hosts: ["*"]
  gateways: [demo-gateway]
  http:
  - route:
    - destination: {{host: productpage, port: {{number: {SERVICE_PORT}}}}}
"""
    canary = """\
# The canary: how the traffic to reviews is split between v1 and v2.
# Weights are relative (a subset gets weight / sum of weights). Try 50/50, then 0/100:
# xdsd sees the change when you save, and every proxy follows within a second.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 100
    - destination: {host: reviews, subset: v2}
      weight: 0
"""
    return files | {
        "destination-rules.yaml": "# Subsets by version label.\n" + "---\n".join(rules),
        "gateway.yaml": gateway,
        CANARY_FILE: canary,
    }


#: The demo's Gateway (Gateway API); its proxy carries ``GATEWAY_NAME_LABEL: GATEWAY_NAME``.
GATEWAY_NAME = "demo-gateway"


def gateway_api_files(layout: Layout) -> dict[str, str]:
    """The routing files of ``xdsd demo --api gateway``: a Service per version of a
    service with several (the Gateway API has no subsets: a backend is a Service), the
    GatewayClass, the Gateway and the ingress HTTPRoute, and the canary, a GAMMA
    HTTPRoute whose parent is the ``reviews`` Service."""
    versioned = []
    for service in sorted({w.service for w in layout.workloads}):
        instances = [w for w in layout.workloads if w.service == service]
        if len(instances) < 2:
            continue
        versioned += [
            f"apiVersion: xdsd.io/v1\nkind: Service\nmetadata: {{name: {w.name}}}\nspec:\n"
            f"  ports:\n  - {{name: http, number: {SERVICE_PORT}, protocol: HTTP}}\n"
            f"  endpoints:\n    - address: {w.address}\n"
            f"      labels: {{app: {w.service}, version: {w.version}}}\n"
            for w in instances
        ]
    gateway = f"""\
# The ingress gateway (Gateway API): xdsd's GatewayClass, a Gateway with one HTTP
# listener on port {GATEWAY_PORT} (served by the proxy labelled
# {GATEWAY_NAME_LABEL}: {GATEWAY_NAME}), and every request to productpage.
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: xdsd}}
spec: {{controllerName: {CONTROLLER_NAME}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {GATEWAY_NAME}}}
spec:
  gatewayClassName: xdsd
  listeners:
  - {{name: http, port: {GATEWAY_PORT}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: productpage-ingress}}
spec:
  parentRefs:
  - {{name: {GATEWAY_NAME}}}
  rules:
  - backendRefs:
    - {{name: productpage, port: {SERVICE_PORT}}}
"""
    canary = f"""\
# The canary (GAMMA): an HTTPRoute whose parent is the reviews Service applies to every
# sidecar calling reviews. Weights are relative. Try 50/50, then 0/100: xdsd sees the
# change when you save, and every proxy follows within a second.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews}}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: reviews, port: {SERVICE_PORT}}}
  rules:
  - backendRefs:
    - name: reviews-v1
      port: {SERVICE_PORT}
      weight: 100
    - name: reviews-v2
      port: {SERVICE_PORT}
      weight: 0
"""
    return {
        "versions.yaml": "# A Service per version: what the canary's backends name.\n"
        + "---\n".join(versioned),
        "gateway.yaml": gateway,
        CANARY_FILE: canary,
    }


def gateway_node(layout: Layout) -> NodeClass:
    """The gateway proxy's node class."""
    address = layout.gateway_address
    labels: tuple[tuple[str, str], ...] = GATEWAY_LABELS
    if layout.api == "gateway":
        labels = tuple(sorted((*labels, (GATEWAY_NAME_LABEL, GATEWAY_NAME))))
    return NodeClass(
        service="ingressgateway",
        role=Role.GATEWAY,
        labels=labels,
        instance_ip=address,
        outbound_ip=address,
    )


def workload_node(workload: Workload, layout: Layout | None = None) -> NodeClass:
    """A workload's sidecar node class (with the layout's mesh DNS when it is the
    layout's ``dns_workload``)."""
    node = NodeClass(
        service=workload.service,
        labels=workload.labels,
        instance_ip=workload.address,
        outbound_ip=workload.outbound_ip,
    )
    if layout is None or workload.name != layout.dns_workload:
        return node
    return dataclasses.replace(
        node,
        virtual_addresses=layout.virtual_addresses,
        dns=layout.dns,
        dns_upstream=layout.dns_upstream,
    )


def bootstrap_files(layout: Layout) -> dict[str, str]:
    """One Envoy bootstrap (YAML) per proxy: ``ingressgateway.yaml`` and
    ``WORKLOAD.yaml`` (e.g. ``reviews-v2.yaml``), all pointing at ``layout.xds_host``."""
    nodes = [("ingressgateway", gateway_node(layout), layout.gateway_address)]
    nodes += [(w.name, workload_node(w, layout), w.address) for w in layout.workloads]
    out: dict[str, str] = {}
    for name, node, address in nodes:
        doc: dict[str, Any] = bootstrap(
            name,
            node,
            xds_host=layout.xds_host,
            xds_port=XDS_PORT,
            transport="grpc",
            admin_port=ENVOY_ADMIN_PORT,
        )
        # a Struct (labels inside it too): its keys come in no stable order
        doc["node"]["metadata"] = _sorted_keys(doc["node"]["metadata"])
        if layout.admin_on_own_address:
            doc["admin"]["address"]["socket_address"]["address"] = address
        out[f"{name}.yaml"] = yaml.safe_dump(doc, sort_keys=False)
    return out


def _sorted_keys(value: Any) -> Any:
    """``value`` with every mapping's keys in sorted order, at every depth."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def write_files(directory: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path → text) under ``directory``."""
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def write_compose_files(demo_dir: Path) -> None:
    """Write the config directory and bootstraps of the docker-compose demo
    (``demo/config/``, ``demo/bootstrap/``)."""
    layout = compose_layout()
    write_files(demo_dir / "config", config_files(layout))
    write_files(demo_dir / "bootstrap", bootstrap_files(layout))


if __name__ == "__main__":  # python -m xdsd.demo.mesh demo: regenerate the compose files
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m xdsd.demo.mesh",
        description="Write the compose demo's config and Envoy bootstraps into DIR.",
    )
    parser.add_argument("dir", nargs="?", default="demo", help="the demo directory (demo)")
    write_compose_files(Path(parser.parse_args().dir))
