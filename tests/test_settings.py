"""The daemon's settings file: values apply, unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main
from xdsd.errors import ConfigError
from xdsd.model.mesh_config import (
    AccessLog,
    LogEncoding,
    MeshConfig,
    PrometheusStats,
    Tracing,
    TracingProvider,
)
from xdsd.model.networking import OutboundPolicy
from xdsd.settings import Address, Settings


def test_file_values_apply_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(
        'config_dir = "/etc/xdsd/mesh"\ngrpc = "0.0.0.0:18000"\nrest = ""\nquiet_period = 0.1\n'
    )
    settings = Settings.from_file(str(path))
    assert settings.config_dir == "/etc/xdsd/mesh"
    assert settings.grpc == Address("0.0.0.0", 18000)
    assert settings.rest is None and settings.quiet_period == 0.1
    assert settings.admin == Address("127.0.0.1", 19001)
    flagged = settings.merged({"config_dir": "other"}, source="command line")
    assert flagged.config_dir == "other" and flagged.grpc == settings.grpc


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('grcp = "127.0.0.1:1"\n', "grcp: unknown setting"),
        ('grpc = "no-port"\n', "grpc: expected HOST:PORT"),
        ("quiet_period = -1\n", "quiet_period: must be a non-negative number"),
        ("grpc_backlog = true\n", "grpc_backlog: must be a positive integer (got boolean True)"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert fragment in str(info.value)


def test_serve_with_bad_settings_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text("bogus = 1\n")
    assert main(["serve", "--settings", str(path)]) == 1
    assert "xdsd.toml:1: bogus: unknown setting" in capsys.readouterr().err


MESH = """\
grpc = "127.0.0.1:18000"

[mesh]
outbound_traffic_policy = "REGISTRY_ONLY"

[mesh.access_log]
path = "/var/log/envoy/access.log"
encoding = "JSON"
fields = { code = "%RESPONSE_CODE%", host = "%UPSTREAM_HOST%" }

[mesh.prometheus]
enabled = true
port = 9102

[mesh.tracing]
provider = "opentelemetry"
address = "otel.example:4317"
sampling = 12.5
"""


def test_mesh_section_applies(tmp_path: Path) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(MESH)
    mesh = Settings.from_file(str(path)).mesh
    assert mesh.outbound_traffic_policy is OutboundPolicy.REGISTRY_ONLY
    assert mesh.access_log == AccessLog(
        enabled=True,
        path="/var/log/envoy/access.log",
        encoding=LogEncoding.JSON,
        fields=(("code", "%RESPONSE_CODE%"), ("host", "%UPSTREAM_HOST%")),
    )
    assert mesh.prometheus == PrometheusStats(enabled=True, port=9102)
    assert mesh.tracing == Tracing(TracingProvider.OPENTELEMETRY, "otel.example", 4317, 12.5)
    assert Settings().mesh == MeshConfig()  # nothing on by default, ALLOW_ANY
    # A table present means "on" unless it says otherwise.
    path.write_text("[mesh.access_log]\n[mesh.prometheus]\nenabled = false\n")
    mesh = Settings.from_file(str(path)).mesh
    assert mesh.access_log.enabled and mesh.access_log.path == "/dev/stdout"
    assert not mesh.prometheus.enabled


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            '[mesh]\noutbound_traffic_policy = "DENY"\n',
            ":2: mesh.outbound_traffic_policy: must be one of REGISTRY_ONLY, ALLOW_ANY",
        ),
        ("[mesh]\n\naccess_logs = true\n", ":3: mesh.access_logs: unknown setting"),
        ("[mesh.access_log]\nenabled = true\npth = 'x'\n", ":3: mesh.access_log.pth: unknown"),
        (
            '[mesh.access_log]\nformat = "%START_TIME%"\nencoding = "JSON"\n',
            ":2: mesh.access_log.format: is for TEXT logs",
        ),
        ("[mesh.access_log]\nfields = { a = 1 }\n", ":2: mesh.access_log.fields: must be a table"),
        ("[mesh.prometheus]\nport = 70000\n", ":2: mesh.prometheus.port: must be a port number"),
        ('[mesh.prometheus]\npath = "metrics"\n', ":2: mesh.prometheus.path: must be a path"),
        (
            '[mesh.tracing]\nprovider = "jaeger"\naddress = "a:1"\n',
            ":2: mesh.tracing.provider: must be one of zipkin, opentelemetry",
        ),
        ('[mesh.tracing]\nprovider = "zipkin"\n', ":1: mesh.tracing.address: missing"),
        (
            '[mesh.tracing]\nprovider = "zipkin"\naddress = "a:1"\nsampling = 101\n',
            ":4: mesh.tracing.sampling: must be a percentage from 0 to 100",
        ),
        (
            '[mesh.tracing]\nprovider = "zipkin"\naddress = "nocolon"\n',
            ":3: mesh.tracing.address: expected HOST:PORT",
        ),
        ("mesh = 1\n", ":1: mesh: must be a table"),
        ("[mesh]\naccess_log = { enabled = 1 }\n", ":2: mesh.access_log.enabled: must be true"),
        ("[mesh\n", ":1: TOML syntax error"),
    ],
)
def test_bad_mesh_settings_name_line_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert f"xdsd.toml{fragment}" in str(info.value)


def _docs_settings(tmp_path: Path) -> Settings:
    """The TLS example of docs/operations.md, read as xdsd reads a settings file."""
    from tests.paths import REPO

    text = (REPO / "docs" / "operations.md").read_text()
    start = text.index("## TLS and node authorization")
    block = text[text.index("```toml\n", start) + 8 :]
    path = tmp_path / "docs.toml"
    path.write_text(block[: block.index("```")])
    return Settings.from_file(str(path))


def test_the_docs_grants_are_safe_as_written(tmp_path: Path) -> None:
    """issue 14 #6: productpage's grant does not make it a gateway; the gateway's grant
    names its labels and its service."""
    from xdsd.transports.limits import NodeAuthorizer, NodeIdentity

    authorizer = NodeAuthorizer(_docs_settings(tmp_path).authorized_nodes)
    productpage = {"subjectAltName": (("URI", "spiffe://mesh.example/productpage"),)}
    gateway = {"subjectAltName": (("DNS", "gateway.mesh.example"),)}
    ingress = (("istio", "ingressgateway"),)
    assert authorizer.allowed(productpage, NodeIdentity("p-1", "productpage"))
    assert not authorizer.allowed(
        productpage, NodeIdentity("p-1", "productpage", role="gateway", labels=ingress)
    )
    assert not authorizer.allowed(productpage, NodeIdentity("p-1", "reviews"))
    gw = NodeIdentity("ingress-gateway", "istio-ingressgateway", "istio-system", "gateway", ingress)
    assert authorizer.allowed(gateway, gw)
    assert not authorizer.allowed(gateway, gw._replace(service="productpage", namespace="default"))
    assert not authorizer.allowed(gateway, gw._replace(labels=(("istio", "egressgateway"),)))


@pytest.mark.parametrize(
    ("grant", "fragment"),
    [
        (
            '{ services = ["a"], roles = ["router"] }',
            "authorized_nodes.a.roles: unknown role 'router'; known: sidecar, gateway, proxyless",
        ),
        ('{ services = ["a"], roles = [] }', "authorized_nodes.a.roles: is empty"),
        (
            '{ services = ["a"], roles = ["gateway"] }',
            "authorized_nodes.a: grants the gateway role without gateway_labels",
        ),
        (
            '{ services = ["a"], gateway_labels = { istio = "x" } }',
            'authorized_nodes.a.gateway_labels: needs roles to include "gateway"',
        ),
        (
            '{ services = ["a"], roles = ["gateway"], gateway_labels = { istio = "*" } }',
            "names each value exactly",
        ),
        (
            '{ services = ["a"], labels = { app = 1 } }',
            "authorized_nodes.a.labels: must be a table of label = value strings",
        ),
        ('{ services = ["a"], role = ["gateway"] }', "authorized_nodes.a.role: unknown setting"),
    ],
)
def test_bad_grants_name_line_and_key(tmp_path: Path, grant: str, fragment: str) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(
        f'tls_cert = "c"\ntls_key = "k"\ntls_client_ca = "ca"\n[authorized_nodes]\n"a" = {grant}\n'
    )
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert fragment in str(info.value)
    assert "xdsd.toml:5:" in str(info.value)


def test_a_gateway_grant_reads_its_roles_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(
        'tls_cert = "c"\ntls_key = "k"\ntls_client_ca = "ca"\n[authorized_nodes]\n'
        '"g" = { node_ids = ["gw"], roles = ["gateway"], gateway_labels = { istio = "in" } }\n'
        '"s" = { services = ["ns/web"], labels = { app = "web", version = "*" } }\n'
    )
    g, s = Settings.from_file(str(path)).authorized_nodes
    assert (g.roles, g.gateway_labels, g.labels) == (("gateway",), (("istio", "in"),), None)
    assert (s.roles, s.labels) == (("sidecar", "proxyless"), (("app", "web"), ("version", "*")))


def test_keys_may_be_spelled_with_dashes_and_keep_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text(
        'grpc-impl = "grpcio"\nmax-connections = 0\n[mesh.access-log]\n'
        'encoding = "json"\nenabld = true\n'
    )
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert [str(p).split("xdsd.toml")[1] for p in info.value.problems] == [
        ":5: mesh.access_log.enabld: unknown setting; known: enabled, path, encoding, format, "
        "fields"
    ]
    path.write_text('grpc-impl = "grpcio"\nmax-connections = 0\n[mesh.access-log]\n')
    settings = Settings.from_file(str(path))
    assert (settings.grpc_impl, settings.max_connections) == ("grpcio", 0)
    assert settings.mesh.access_log.enabled


def test_a_key_given_in_both_spellings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "xdsd.toml"
    path.write_text('grpc_impl = "grpclib"\ngrpc-impl = "grpcio"\n')
    with pytest.raises(ConfigError) as info:
        Settings.from_file(str(path))
    assert "xdsd.toml:2: grpc-impl: repeats grpc_impl: give it once" in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"admin_tls": 1}, "admin_tls: must be true or false (got number 1)"),
        ({"max_delay": True}, "max_delay: must be a non-negative number (got boolean True)"),
        ({"max_connections": -1}, "max_connections: must be a positive integer (got number -1)"),
        ({"config_dir": 3}, "config_dir: must be a string (got number 3)"),
        ({"grpc": 5}, 'grpc: must be "HOST:PORT" or "" to disable (got number 5)'),
        ({"grpc_impl": "grpc"}, "grpc_impl: must be one of grpclib, grpcio (got 'grpc')"),
        (
            {"mesh": {"prometheus": {"port": 0}}},
            "mesh.prometheus.port: must be a port number (1-65535) (got number 0)",
        ),
    ],
)
def test_flags_are_read_as_the_file_is(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings().merged(data, source="command line")
    assert str(info.value) == f"command line: {message}"
