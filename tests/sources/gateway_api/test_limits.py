"""The standard channel's limits (the CRDs' ``MaxItems``, ``MaxLength`` and CEL
bounds), each enforced at its field: what the API takes loads, one more is an error
at the field's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.errors import ConfigError, Problem
from xdsd.sources import load_directory

V1 = "apiVersion: gateway.networking.k8s.io/v1\n"


def _route(kind: str, rules: list[str], hostnames: list[str] | None = None) -> str:
    version = "v1alpha2" if kind == "TLSRoute" else "v1"
    text = f"apiVersion: gateway.networking.k8s.io/{version}\nkind: {kind}\nmetadata: {{name: r}}\nspec:\n"
    if hostnames is not None:
        text += "  hostnames: [" + ", ".join(hostnames) + "]\n"
    text += "  rules:\n" + "".join(f"  - {r}\n" for r in rules)
    return text


def _grpc_matches(n: int) -> str:
    return "matches: [" + ", ".join(f"{{method: {{service: s.S{i}}}}}" for i in range(n)) + "]"


def _http_matches(n: int) -> str:
    return "matches: [" + ", ".join(f"{{path: {{value: /p{i}}}}}" for i in range(n)) + "]"


def _loads(tmp_path: Path, text: str) -> list[Problem] | None:
    """None when the document loads, else its problems."""
    (tmp_path / "doc.yaml").write_text(text)
    try:
        load_directory(str(tmp_path))
    except ConfigError as e:
        return list(e.problems)
    return None


BACKEND = "backendRefs: [{name: b, port: 80}]"
QUERY = "matches: [{queryParams: [{name: q, value: '%s'}]}]"
HEADER = "matches: [{headers: [{name: h, value: '%s'}]}]"


@pytest.mark.parametrize(
    ("fits", "beyond", "field", "message"),
    [
        # GRPCRoute: 64 matches per rule (the API's MaxItems), 128 in all rules (CEL)
        (
            _route("GRPCRoute", [_grpc_matches(64)]),
            _route("GRPCRoute", [_grpc_matches(65)]),
            "rules[0].matches",
            "at most 64",
        ),
        (
            _route("GRPCRoute", [_grpc_matches(64), _grpc_matches(64)]),
            _route("GRPCRoute", [_grpc_matches(64), _grpc_matches(64), _grpc_matches(1)]),
            "rules",
            "hold 129 matches together",
        ),
        # a rule without matches counts none toward the 128 (as the API's rule counts)
        (
            _route("HTTPRoute", [_http_matches(64), _http_matches(64), BACKEND]),
            _route("HTTPRoute", [_http_matches(64), _http_matches(64), _http_matches(1)]),
            "rules",
            "hold 129 matches together",
        ),
        # a TLSRoute takes up to 1024 SNI names (other routes 16)
        (
            _route("TLSRoute", [BACKEND], [f"h{i}.example.com" for i in range(1024)]),
            _route("TLSRoute", [BACKEND], [f"h{i}.example.com" for i in range(1025)]),
            "hostnames",
            "at most 1024",
        ),
        (
            _route("HTTPRoute", [BACKEND], [f"h{i}.example.com" for i in range(16)]),
            _route("HTTPRoute", [BACKEND], [f"h{i}.example.com" for i in range(17)]),
            "hostnames",
            "at most 16",
        ),
        # a query parameter's value: 1024 characters; a header's: 4096
        (
            _route("HTTPRoute", [QUERY % ("q" * 1024)]),
            _route("HTTPRoute", [QUERY % ("q" * 1025)]),
            "rules[0].matches[0].queryParams[0].value",
            "at most 1024",
        ),
        (
            _route("HTTPRoute", [HEADER % ("h" * 4096)]),
            _route("HTTPRoute", [HEADER % ("h" * 4097)]),
            "rules[0].matches[0].headers[0].value",
            "at most 4096",
        ),
    ],
)
def test_a_limit_is_enforced_at_its_field(
    tmp_path: Path, fits: str, beyond: str, field: str, message: str
) -> None:
    assert _loads(tmp_path, fits) is None
    found = _loads(tmp_path, beyond)
    assert found is not None
    assert any(p.field == field and message in p.message for p in found), found
    assert all(p.line > 1 for p in found), found


def test_a_tls_option_value_is_bounded(tmp_path: Path) -> None:
    def gateway(value: str) -> str:
        return (
            V1
            + "kind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: other\n"
            + "  listeners:\n  - name: h\n    port: 443\n    protocol: HTTPS\n"
            + "    tls:\n      certificateRefs: [{name: c}]\n"
            + f"      options: {{example.com/o: '{value}'}}\n"
        )

    assert _loads(tmp_path, gateway("v" * 4096)) is None
    found = _loads(tmp_path, gateway("v" * 4097))
    assert found is not None and any("at most 4096" in p.message for p in found), found
