"""Parsers of ServiceEntry, WorkloadEntry, Gateway, Sidecar and EnvoyFilter: the Istio
conformance inputs parse cleanly, and each wrong value is named by line and field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.paths import CONFORMANCE
from xdsd.errors import Problem, Severity
from xdsd.located import Fields, Report
from xdsd.model.networking import (
    ApplyTo,
    EntryResolution,
    OutboundPolicy,
    PatchOperation,
    ServerTLSMode,
)
from xdsd.model.service import Origin, Protocol
from xdsd.sources.documents import parse_file
from xdsd.sources.envoy_filter import parse_envoy_filter
from xdsd.sources.gateway import parse_gateway, parse_sidecar
from xdsd.sources.service_entry import parse_service_entry, parse_workload_entry

PARSERS: dict[str, Callable[..., Any]] = {
    "ServiceEntry": parse_service_entry,
    "WorkloadEntry": parse_workload_entry,
    "Gateway": parse_gateway,
    "Sidecar": parse_sidecar,
    "EnvoyFilter": parse_envoy_filter,
}


def parse(text: str, path: str = "x.yaml") -> list[tuple[Any, list[Problem]]]:
    """Each document of ``text`` through its kind's parser, as the loader calls it."""
    out = []
    for doc in parse_file(path, text.encode()):
        value = doc.value
        report = Report(doc, ("spec",))
        spec = Fields(report, (), value.get("spec") or {})
        obj = PARSERS[value["kind"]](spec, value["metadata"]["name"], "default", Origin(path))
        out.append((obj, report.problems))
    return out


def one(text: str) -> tuple[Any, list[Problem]]:
    [found] = parse(text)
    return found


def errors(text: str) -> list[tuple[int, str, str]]:
    """(line, field, message) of each error of a one-document ``text``."""
    _, problems = one(text)
    return [(p.line, p.field, p.message) for p in problems if p.severity is Severity.ERROR]


def conformance_documents() -> list[tuple[str, int]]:
    found = []
    for path in sorted(Path(CONFORMANCE, "istio").rglob("*.yaml")):
        for i, doc in enumerate(parse_file(str(path), path.read_bytes())):
            if isinstance(doc.value, dict) and doc.value.get("kind") in PARSERS:
                found.append((str(path), i))
    return found


@pytest.mark.parametrize(("path", "index"), conformance_documents())
def test_conformance_documents_parse_without_errors(path: str, index: int) -> None:
    doc = parse_file(path, Path(path).read_bytes())[index]
    report = Report(doc, ("spec",))
    value = doc.value
    PARSERS[value["kind"]](
        Fields(report, (), value.get("spec") or {}), value["metadata"]["name"], "ns", Origin(path)
    )
    assert [p for p in report.problems if p.severity is Severity.ERROR] == []
    # the only warnings: TCP ports of resolution NONE, which need the original
    # destination address (addresses, virtual IPs and CIDR ranges, are read silently)
    assert [p for p in report.problems if "resolution NONE" not in p.message] == []


SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports:
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 27017, name: mongo, protocol: MONGO, targetPort: 27018}
  location: MESH_EXTERNAL
  resolution: DNS
  endpoints:
  - {address: a.example.com, ports: {https: 8443}, locality: r1/z1, weight: 3,
     labels: {version: v1}}
"""


def test_service_entry_model() -> None:
    entry, problems = one(SE)
    assert problems == []
    assert entry.hosts == ("api.example.com",)
    assert entry.resolution is EntryResolution.DNS
    https, mongo = entry.ports
    assert (https.protocol, https.protocol_name) == (Protocol.TLS, "HTTPS")
    assert (mongo.protocol, mongo.protocol_name, mongo.target_port) == (
        Protocol.TCP,
        "MONGO",
        27018,
    )
    [endpoint] = entry.endpoints
    assert endpoint.ports == (("https", 8443),) and endpoint.weight == 3
    assert endpoint.labels == (("version", "v1"),) and endpoint.locality.zone == "z1"


@pytest.mark.parametrize(
    ("change", "line", "field", "message"),
    [
        ("resolution: DNS", 10, "resolution", "must be one of NONE, STATIC"),
        ("protocol: MONGO", 8, "ports[1].protocol", "must be one of HTTP,"),
        ("ports: {https: 8443}", 12, "endpoints[0].ports.http", "names no port"),
        ("weight: 3", 12, "endpoints[0].weight", None),
    ],
)
def test_service_entry_bad_values(change: str, line: int, field: str, message: str | None) -> None:
    bad = {
        "resolution: DNS": "resolution: SOMETIMES",
        "protocol: MONGO": "protocol: UDP",
        "ports: {https: 8443}": "ports: {http: 8443}",
        "weight: 3": "weight: 0",
    }[change]
    found = errors(SE.replace(change, bad))
    assert [(ln, f) for ln, f, _ in found] == [(line, field)], found
    if message:
        assert message in found[0][2]


def test_service_entry_rules() -> None:
    static_host = SE.replace("resolution: DNS", "resolution: STATIC")
    assert errors(static_host) == [
        (
            12,
            "endpoints[0].address",
            "must be an IP address or unix:///path for resolution STATIC (got 'a.example.com')",
        )
    ]
    wildcard = SE.replace("[api.example.com]", '["*.example.com"]').replace(
        "  endpoints:\n  - {address: a.example.com, ports: {https: 8443}, locality: r1/z1, weight: 3,\n"
        "     labels: {version: v1}}\n",
        "",
    )
    [(line, field, message)] = errors(wildcard)
    assert (line, field) == (5, "hosts[0]") and "cannot be resolved by DNS" in message
    both = SE + "  workloadSelector: {labels: {app: x}}\n"
    assert [(ln, f) for ln, f, _ in errors(both)] == [(14, "workloadSelector")]
    no_ports = SE.split("  ports:")[0] + "  resolution: DNS\n"
    assert errors(no_ports) == [(4, "ports", "is required: a ServiceEntry needs at least one port")]


def test_workload_entry() -> None:
    entry, problems = one(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm1}\n"
        "spec: {address: 10.0.0.5, labels: {app: ratings}, ports: {http: 9080}}\n"
    )
    assert problems == []
    assert entry.endpoint.address == "10.0.0.5" and entry.endpoint.ports == (("http", 9080),)


GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls:
      mode: SIMPLE
      serverCertificate: certs/gw.pem
      privateKey: certs/gw-key.pem
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: ["*.internal"]
    tls: {mode: PASSTHROUGH}
"""


def test_gateway_model() -> None:
    gateway, problems = one(GATEWAY)
    assert problems == []
    assert gateway.selector == (("istio", "ingressgateway"),)
    plain, https, passthrough = gateway.servers
    assert plain.tls is not None and plain.tls.https_redirect and plain.tls.mode is None
    assert https.tls is not None and https.tls.mode is ServerTLSMode.SIMPLE
    assert https.tls.server_certificate == "certs/gw.pem"
    assert passthrough.tls is not None and passthrough.tls.mode is ServerTLSMode.PASSTHROUGH


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        (
            "mode: SIMPLE",
            "mode: ISTIO_MUTUAL",
            14,
            "servers[1].tls.serverCertificate",
            "does not apply with mode ISTIO_MUTUAL",
        ),
        ("mode: SIMPLE", "mode: MUTUAL", 12, "servers[1].tls.caCertificates", "is required"),
        (
            "      privateKey: certs/gw-key.pem\n",
            "",
            12,
            "servers[1].tls.privateKey",
            "is required",
        ),
        ("{mode: PASSTHROUGH}", "{}", 18, "servers[2].tls", "needs tls.mode"),
        (
            "httpsRedirect: true",
            "httpsRedirect: yes please",
            9,
            "servers[0].tls.httpsRedirect",
            "true or false",
        ),
        (
            "serverCertificate:",
            "credentialName: x\n      serverCertificate:",
            14,
            "servers[1].tls.credentialName",
            "not supported",
        ),
        ('hosts: ["*"]', "hostz: ['*']", 7, "servers[0].hosts", "is required"),
    ],
)
def test_gateway_bad_values(old: str, new: str, line: int, field: str, message: str) -> None:
    found = errors(GATEWAY.replace(old, new, 1))
    assert (line, field) in [(ln, f) for ln, f, _ in found], found
    assert any(message in m for ln, f, m in found if f == field), found


SIDECAR = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.2
    hosts: ["prod/ratings.prod.svc.cluster.local"]
  - hosts: ["./*", "istio-system/*"]
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""


def test_sidecar_model_and_errors() -> None:
    sidecar, problems = one(SIDECAR)
    assert problems == []
    assert sidecar.workload_selector == (("app", "reviews"),)
    assert sidecar.egress[0].port.number == 9080 and sidecar.egress[0].bind == "127.0.0.2"
    assert sidecar.ingress[0].default_endpoint == "127.0.0.1:8080"
    assert sidecar.outbound_policy is OutboundPolicy.REGISTRY_ONLY
    assert [(ln, f) for ln, f, _ in errors(SIDECAR.replace('"./*", ', '"ratings", '))] == [
        (10, "egress[1].hosts[0]")
    ]
    assert [(ln, f) for ln, f, _ in errors(SIDECAR.replace("127.0.0.1:8080", "10.0.0.1:80"))] == [
        (13, "ingress[0].defaultEndpoint")
    ]


LUA = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua}
spec:
  workloadSelector: {labels: {app: reviews}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: 9080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: "function envoy_on_response(h) h:headers():add('x-lua', 'yes') end"
  - applyTo: CLUSTER
    match: {cluster: {service: reviews, portNumber: 9080}}
    patch: {operation: MERGE, value: {connect_timeout: 3s}}
"""


def test_envoy_filter_model() -> None:
    flt, problems = one(LUA)
    assert problems == []
    http, cluster = flt.patches
    assert (http.apply_to, http.operation) == (ApplyTo.HTTP_FILTER, PatchOperation.INSERT_BEFORE)
    assert http.match.kind == "listener" and http.match.port_number == 9080
    assert http.match.sub_filter_name == "envoy.filters.http.router"
    assert http.value["name"] == "envoy.lua"
    assert cluster.match.kind == "cluster" and cluster.match.service == "reviews"
    assert cluster.value == {"connect_timeout": "3s"}


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        (
            "operation: MERGE",
            "operation: INSERT_FIRST",
            25,
            "configPatches[1].patch.operation",
            "does not apply to CLUSTER",
        ),
        (
            "applyTo: CLUSTER",
            "applyTo: ROUTE_CONFIGURATION",
            24,
            "configPatches[1].match.cluster",
            "does not select",
        ),
        (
            "operation: INSERT_BEFORE",
            "operation: SPLICE",
            17,
            "configPatches[0].patch.operation",
            "must be one of",
        ),
        (
            "value: {connect_timeout: 3s}",
            "valu: {}",
            25,
            "configPatches[1].patch.value",
            "is required",
        ),
        (
            "applyTo: HTTP_FILTER",
            "applyTo: HTTP_FILTERS",
            7,
            "configPatches[0].applyTo",
            "must be one of",
        ),
    ],
)
def test_envoy_filter_bad_values(old: str, new: str, line: int, field: str, message: str) -> None:
    found = errors(LUA.replace(old, new, 1))
    assert any((ln, f) == (line, field) and message in m for ln, f, m in found), found
