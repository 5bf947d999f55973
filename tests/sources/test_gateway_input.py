"""Gateway files as the loader reads them: certificate files resolved against the config
directory and checked, each wrong value named by file, line and field
(``path:line: field: message``), and what Istio tolerates a warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pem import write_fake_pem
from xdsd.errors import ConfigError
from xdsd.model.networking import ServerTLSMode
from xdsd.sources import load_directory

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
      mode: MUTUAL
      serverCertificate: certs/gw.pem
      privateKey: certs/gw-key.pem
      caCertificates: certs/ca.pem
      minProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: ["*.internal"]
    tls: {mode: PASSTHROUGH}
"""


def write(root: Path, text: str) -> None:
    (root / "certs").mkdir(parents=True, exist_ok=True)
    for name in ("gw.pem", "gw-key.pem", "ca.pem"):
        write_fake_pem(root / "certs" / name)
    (root / "gw.yaml").write_text(text)


def test_certificate_paths_are_relative_to_the_config_directory(tmp_path: Path) -> None:
    write(tmp_path, GATEWAY)
    result = load_directory(str(tmp_path))
    [gw] = result.mesh.gateways
    tls = gw.servers[1].tls
    assert tls is not None and tls.mode is ServerTLSMode.MUTUAL
    assert tls.server_certificate == str(tmp_path / "certs" / "gw.pem")
    assert tls.ca_certificates == str(tmp_path / "certs" / "ca.pem")
    assert (tls.min_protocol_version, tls.cipher_suites) == (
        "TLSV1_2",
        ("ECDHE-RSA-AES128-GCM-SHA256",),
    )
    # Gateway is applied now: no "not applied" warning
    assert not [w for w in result.warnings if "not applied" in w.message]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "certs/gw.pem",
            "certs/missing.pem",
            "gw.yaml:14: servers[1].tls.serverCertificate: file 'certs/missing.pem' does not exist",
        ),
        (
            "minProtocolVersion: TLSV1_2",
            "minProtocolVersion: TLS1.2",
            "gw.yaml:17: servers[1].tls.minProtocolVersion: must be one of TLS_AUTO",
        ),
        (
            "minProtocolVersion: TLSV1_2",
            "minProtocolVersion: TLSV1_3\n      maxProtocolVersion: TLSV1_2",
            "servers[1].tls.minProtocolVersion: TLSV1_3 is above maxProtocolVersion",
        ),
        (
            "name: tls,",
            "name: https,",
            "gw.yaml:19: servers[2].port.name: port names must be unique in a Gateway",
        ),
        (
            "{number: 80, name: http, protocol: HTTP}",
            "{number: 80, protocol: HTTP}",
            "servers[0].port.name: is required",
        ),
        (
            "{number: 80, name: http, protocol: HTTP}",
            "{number: 80, name: http, protocol: HTTP, targetPort: 8080}",
            "servers[0].port.targetPort: has no effect on a Gateway server",
        ),
        (
            'hosts: ["*.internal"]',
            'hosts: ["a/b/c"]',
            "servers[2].hosts[0]: must be HOST or NAMESPACE/HOST",
        ),
        (
            "protocol: HTTP}\n    hosts",
            "protocol: TCP}\n    hosts",
            "servers[0].tls: a TCP server takes no tls settings",
        ),
        (
            "    tls: {httpsRedirect: true}\n",
            "    tls: {mode: SIMPLE}\n",
            "servers[0].tls: a HTTP server does not speak TLS",
        ),
        (
            "mode: MUTUAL",
            "mode: ISTIO_MUTUAL",
            "servers[1].tls.serverCertificate: does not apply with mode ISTIO_MUTUAL",
        ),
        (
            "      caCertificates: certs/ca.pem\n",
            "",
            "servers[1].tls.caCertificates: is required for mode MUTUAL",
        ),
        (
            "caCertificates:",
            "credentialName: gw-secret\n      caCertificates:",
            "servers[1].tls.credentialName: ",
        ),
        (
            "hosts: [bookinfo.example.com]",
            "hosts: [bookinfo.example.com]\n    bind: here",
            "servers[1].bind: must be an IP address",
        ),
    ],
)
def test_bad_gateway_values(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GATEWAY
    write(tmp_path, GATEWAY.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_directory(str(tmp_path))
    messages = [str(p) for p in info.value.problems]
    assert any(expected in m for m in messages), messages


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]",
            "cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, NOPE, ECDHE-RSA-AES128-GCM-SHA256]",
            [
                "servers[1].tls.cipherSuites[1]: 'NOPE' is not a cipher suite Envoy knows",
                "servers[1].tls.cipherSuites[2]: 'ECDHE-RSA-AES128-GCM-SHA256' repeats",
            ],
        ),
        (
            "{mode: PASSTHROUGH}",
            "{mode: PASSTHROUGH, serverCertificate: x.pem}",
            ["servers[2].tls.mode: PASSTHROUGH does not terminate TLS"],
        ),
        (
            'protocol: TLS}\n    hosts: ["*.internal"]\n    tls: {mode: PASSTHROUGH}',
            'protocol: TLS}\n    hosts: ["*.internal"]\n    tls: {mode: PASSTHROUGH, '
            "httpsRedirect: true}",
            ["servers[2].tls.httpsRedirect: applies only to HTTP servers"],
        ),
    ],
)
def test_what_istio_tolerates_is_a_warning(
    tmp_path: Path, old: str, new: str, expected: list[str]
) -> None:
    assert old in GATEWAY
    write(tmp_path, GATEWAY.replace(old, new, 1))
    result = load_directory(str(tmp_path))
    warnings = [str(w) for w in result.warnings]
    for fragment in expected:
        assert any(fragment in w for w in warnings), warnings
    tls = result.mesh.gateways[0].servers[1].tls
    assert tls is not None and tls.cipher_suites == ("ECDHE-RSA-AES128-GCM-SHA256",)


def test_virtual_service_naming_an_unknown_gateway_is_a_warning(tmp_path: Path) -> None:
    write(tmp_path, GATEWAY)
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n"
        "spec:\n  hosts: [bookinfo.example.com]\n  gateways: [gw, other/gw, missing]\n"
        "  http:\n  - route: [{destination: {host: nowhere}}]\n"
    )
    result = load_directory(str(tmp_path))
    warnings = [str(w) for w in result.warnings]
    assert any("vs.yaml:6: warning: gateways[1]: no Gateway other/gw" in w for w in warnings), (
        warnings
    )
    assert any("gateways[2]: no Gateway default/missing" in w for w in warnings), warnings
    assert not any("gateways[0]" in w for w in warnings), warnings
    # a destination no service answers to is a warning for a rule bound to gateways only
    # (the route answers 503, as Istio); its hosts are not looked up as services
    assert any("no service named 'nowhere'" in w for w in warnings), warnings
    assert not any("bookinfo.example.com" in w for w in warnings), warnings
    # without the Gateway, its name is warned about too
    (tmp_path / "gw.yaml").unlink()
    again = [str(w) for w in load_directory(str(tmp_path)).warnings]
    assert any("gateways[0]: no Gateway default/gw" in w for w in again), again


def test_gateway_warnings_follow_edits_incrementally(tmp_path: Path) -> None:
    """Adding or removing a Gateway re-checks the VirtualServices naming it, even when
    their own files did not change."""
    from xdsd.sources import DirectoryLoader

    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n"
        "spec:\n  hosts: [a.example.com]\n  gateways: [gw]\n"
        "  http:\n  - directResponse: {status: 200}\n"
    )
    loader = DirectoryLoader(str(tmp_path))

    def warned() -> bool:
        return any("no Gateway default/gw" in str(w) for w in loader.load().warnings)

    assert warned()
    write(tmp_path, GATEWAY)
    assert not warned()
    (tmp_path / "gw.yaml").unlink()
    assert warned()
