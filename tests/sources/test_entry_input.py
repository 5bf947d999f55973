"""ServiceEntry, WorkloadEntry and healthCheck input: what loads into which services, and
every wrong value refused (or warned about) naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main
from xdsd.model import Location, Resolution
from xdsd.sources import load_directory

SERVICE = """\
kind = "Service"
name = "web"

[[ports]]
number = 80
protocol = "HTTP"

[[endpoints]]
address = "10.0.0.1"
"""


def entry(spec: str, name: str = "ext", namespace: str = "default") -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )


def workload(name: str, spec: str, namespace: str = "default") -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )


PORTS = "  ports: [{number: 443, name: https, protocol: TLS, targetPort: 8443}]\n"


def test_an_entry_becomes_one_service_per_host(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text(
        entry(
            "  hosts: [a.example.com, b.example.com]\n" + PORTS + "  resolution: DNS\n"
            "  location: MESH_INTERNAL\n"
        )
    )
    mesh = load_directory(str(tmp_path)).mesh
    a, b = mesh.services
    assert (a.name, a.fqdn, a.host_names, a.entry) == (
        "a.example.com",
        "a.example.com",
        ("a.example.com",),
        "ext",
    )
    assert str(a.key) == "ServiceEntry default/ext/a.example.com"
    assert a.location is Location.MESH_INTERNAL and a.resolution is Resolution.DNS
    # DNS without endpoints: the host itself, on the targetPort
    assert [(e.address, e.ports) for e in b.endpoints] == [("b.example.com", (("https", 8443),))]
    assert mesh.service("a.example.com", "other") is a
    assert mesh.service("a", "default") is None  # no short names


def test_workload_selector_picks_workloads_of_its_namespace(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text(
        entry(
            "  hosts: [vm.example.com]\n" + PORTS + "  resolution: STATIC\n"
            "  workloadSelector: {labels: {app: vm}}\n"
        )
    )
    (tmp_path / "w.yaml").write_text(
        "---\n".join(
            [
                workload(
                    "one", "{address: 10.0.0.1, labels: {app: vm, v: '1'}, ports: {https: 9443}}"
                ),
                workload("two", "{address: 10.0.0.2, labels: {app: other}}"),
                workload("three", "{address: 10.0.0.3, labels: {app: vm}}", namespace="elsewhere"),
                workload(
                    "four", "{address: 10.0.0.4, labels: {app: vm}, locality: r/z, weight: 3}"
                ),
            ]
        )
    )
    [svc] = load_directory(str(tmp_path)).mesh.services
    assert [(e.address, e.ports, str(e.locality), e.weight) for e in svc.endpoints] == [
        ("10.0.0.4", (("https", 8443),), "r/z", 3),
        ("10.0.0.1", (("https", 9443),), "", 1),
    ]


# name → (files, expected fragments of the message)
CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    "host of a service": (
        {
            "s.toml": SERVICE,
            "e.yaml": entry(
                "  hosts: [x.example.com, web.default.svc.cluster.local]\n"
                + PORTS
                + "  resolution: DNS\n"
            ),
        },
        [
            "e.yaml:5: hosts[1]:",
            "host 'web.default.svc.cluster.local' is already a name of Service default/web (",
            "s.toml:1)",
        ],
    ),
    "host of another entry": (
        {
            "a.yaml": entry("  hosts: [x.example.com]\n" + PORTS + "  resolution: DNS\n", "a"),
            "b.yaml": entry(
                "  hosts: [x.example.com]\n" + PORTS + "  resolution: DNS\n", "b", namespace="other"
            ),
        },
        [
            "b.yaml:5: hosts[0]:",
            "already a name of ServiceEntry default/a/x.example.com",
            "a.yaml:1",
        ],
    ),
    "host listed twice": (
        {
            "e.yaml": entry(
                "  hosts: [x.example.com, x.example.com]\n" + PORTS + "  resolution: DNS\n"
            )
        },
        ["e.yaml:5: hosts[1]:", "listed twice"],
    ),
    "port without a name": (
        {
            "e.yaml": entry(
                "  hosts: [x.example.com]\n  ports: [{number: 80, protocol: HTTP}]\n"
                "  resolution: DNS\n"
            )
        },
        ["e.yaml:6: ports[0].name:", "is required"],
    ),
    "static workload with a host name": (
        {
            "e.yaml": entry(
                "  hosts: [x.example.com]\n" + PORTS + "  resolution: STATIC\n"
                "  workloadSelector: {labels: {app: vm}}\n"
            ),
            "w.yaml": workload("vm", "{address: vm.example.net, labels: {app: vm}}"),
        },
        [
            "e.yaml:8: workloadSelector:",
            "WorkloadEntry default/vm (",
            "w.yaml:1)",
            "'vm.example.net' is not an IP address",
        ],
    ),
    "empty workload selector": (
        {
            "e.yaml": entry(
                "  hosts: [x.example.com]\n" + PORTS + "  resolution: STATIC\n"
                "  workloadSelector: {labels: {}}\n"
            )
        },
        ["e.yaml:8: workloadSelector.labels:", "at least one label"],
    ),
    "endpoints with resolution NONE": (
        {
            "e.yaml": entry(
                "  hosts: [x.example.com]\n" + PORTS + "  resolution: NONE\n"
                "  endpoints: [{address: 10.0.0.1}]\n"
            )
        },
        ["e.yaml:8: endpoints:", "must be empty for resolution NONE"],
    ),
    "two endpoints for DNS_ROUND_ROBIN": (
        {
            "e.yaml": entry(
                "  hosts: [x.example.com]\n" + PORTS + "  resolution: DNS_ROUND_ROBIN\n"
                "  endpoints: [{address: a.example.net}, {address: b.example.net}]\n"
            )
        },
        ["e.yaml:8: endpoints:", "at most one endpoint"],
    ),
    "rule naming an unknown subset of an entry": (
        {
            "e.yaml": entry(
                "  hosts: [x.example.com]\n  ports: [{number: 80, name: http, "
                "protocol: HTTP}]\n  resolution: DNS\n"
            ),
            "v.yaml": "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            "metadata: {name: v}\nspec:\n  hosts: [x.example.com]\n  http:\n"
            "  - route: [{destination: {host: x.example.com, subset: v9}}]\n",
        },
        ["v.yaml:", "subset 'v9' of ServiceEntry default/ext/x.example.com"],
    ),
    "resolution NONE on a Service": (
        {"s.toml": SERVICE.replace('name = "web"', 'name = "web"\nresolution = "NONE"')},
        ["s.toml:3: resolution:", "NONE is for ServiceEntries"],
    ),
    "health check interval": (
        {
            "s.toml": SERVICE.replace(
                "\n[[ports]]", 'healthCheck = { path = "/h", interval = "0s" }\n\n[[ports]]'
            )
        },
        ["s.toml:3: healthCheck.interval:", "above zero"],
    ),
    "health check path": (
        {"s.toml": SERVICE.replace("\n[[ports]]", 'healthCheck = { path = "h" }\n\n[[ports]]')},
        ["s.toml:3: healthCheck.path:", "must start with '/'"],
    ),
    "health check status": (
        {
            "s.toml": SERVICE.replace(
                "\n[[ports]]",
                'healthCheck = { path = "/h", expectedStatuses = ["200-1"] }\n\n[[ports]]',
            )
        },
        ["s.toml:3: healthCheck.expectedStatuses[0]:", "HTTP status"],
    ),
    "health check expected statuses without path": (
        {
            "s.toml": SERVICE.replace(
                "\n[[ports]]", "healthCheck = { expectedStatuses = [200] }\n\n[[ports]]"
            )
        },
        ["s.toml:3: healthCheck.expectedStatuses:", "needs path"],
    ),
    "health check threshold": (
        {
            "s.toml": SERVICE.replace(
                "\n[[ports]]", "healthCheck = { healthyThreshold = 0 }\n\n[[ports]]"
            )
        },
        ["s.toml:3: healthCheck.healthyThreshold:", "at least 1"],
    ),
    "health check unknown field": (
        {"s.toml": SERVICE.replace("\n[[ports]]", 'healthCheck = { pth = "/h" }\n\n[[ports]]')},
        ["s.toml:3: healthCheck.pth:", "did you mean 'path'"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, expected = CASES[case]
    for rel, content in files.items():
        (tmp_path / rel).write_text(content)
    code = main(["validate", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


def test_resolution_none_keeps_tcp_and_tls_ports_out_of_routes(tmp_path: Path) -> None:
    """A NONE entry's TCP/TLS ports are in the model but not routed (per-port listeners,
    clusters, destinations leave them out); a concrete host's is no warning."""
    (tmp_path / "e.yaml").write_text(
        entry(
            "  hosts: [x.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP},"
            " {number: 5432, name: pg, protocol: TCP}, {number: 443, name: tls, protocol: TLS}]"
            "\n  resolution: NONE\n"
        )
    )
    result = load_directory(str(tmp_path))
    [svc] = result.mesh.services
    assert [p.number for p in svc.ports] == [80, 5432, 443] and svc.endpoints == ()
    assert [p.number for p in svc.routed_ports] == [80]
    assert [svc.address_only(p) for p in svc.ports] == [False, True, True]
    assert not result.warnings


def test_resolution_none_on_a_wildcard_tcp_port_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text(
        entry(
            '  hosts: ["*.example.com"]\n  ports: [{number: 443, name: tls, protocol: TLS},'
            " {number: 5432, name: pg, protocol: TCP}]\n  resolution: NONE\n"
        )
    )
    result = load_directory(str(tmp_path))
    [svc] = result.mesh.services
    assert [p.number for p in svc.ports] == [443, 5432] and svc.routed_ports == ()
    [warning] = result.warnings
    assert (warning.line, warning.field) == (6, "ports[1]")
    assert "port 5432 (TCP) of wildcard host '*.example.com' has no virtual" in warning.message
    assert "capture" in warning.message
