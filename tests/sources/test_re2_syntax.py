"""``re2_syntax.re2_problem`` against the real judge: for each pattern, xdsd's verdict
is Envoy's (``envoy --mode validate`` of a route matching by that regex), including
the RE2 program size limit at its boundary; and the Gateway API refuses at the
field's line what Envoy would refuse."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.harness import envoy_binary
from xdsd.errors import ConfigError
from xdsd.sources import load_directory
from xdsd.sources.re2_syntax import ENVOY_MAX_PROGRAM_SIZE, re2_problem

PATTERNS = (
    r"^/v[0-9]+/.*$",
    r"\d+",
    r"(?i)abc",
    r"[[:alpha:]]+",
    r"\p{Greek}",
    r"(?P<name>a)b",
    "a{96}",  # a program of exactly the limit
    "a{97}",  # one over
    "a{200}",
    r"(a)\1",
    r"a(?=b)",
    r"(?<!a)b",
    "a++",
    "a{1001}",
    "[",
)


def envoy_takes(pattern: str, path: Path) -> bool:
    """Whether Envoy's validation accepts a route matching paths by ``pattern``."""
    router = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "re2",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": router}],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "re2",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"safe_regex": {"regex": pattern}},
                            "direct_response": {"status": 200},
                        }
                    ],
                }
            ]
        },
    }
    listener = {
        "name": "re2",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    path.write_text(json.dumps({"static_resources": {"listeners": [listener]}}))
    run = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return run.returncode == 0


@pytest.mark.parametrize("pattern", PATTERNS)
def test_xdsd_judges_a_regex_as_envoy_does(pattern: str, tmp_path: Path) -> None:
    assert (re2_problem(pattern) == "") is envoy_takes(pattern, tmp_path / "envoy.json")


def test_the_boundary_is_envoys_default_limit() -> None:
    assert ENVOY_MAX_PROGRAM_SIZE == 100
    assert re2_problem("a{96}") == ""
    assert "size 101" in re2_problem("a{97}")


ROUTES = """\
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: r}}
spec:
  rules:
  - matches:
    - {match}
"""


@pytest.mark.parametrize(
    ("kind", "match", "field", "expected"),
    [
        (
            "HTTPRoute",
            "path: {type: RegularExpression, value: '/(a)\\1'}",
            "rules[0].matches[0].path.value",
            "invalid escape sequence",
        ),
        (
            "HTTPRoute",
            "headers: [{type: RegularExpression, name: x, value: 'a(?=b)'}]",
            "rules[0].matches[0].headers[0].value",
            "invalid perl operator",
        ),
        (
            "GRPCRoute",
            "method: {type: RegularExpression, service: 'a++'}",
            "rules[0].matches[0].method.service",
            "bad repetition operator",
        ),
        # each part fits, the path Envoy matches (/SERVICE/METHOD) does not
        (
            "GRPCRoute",
            "method: {type: RegularExpression, service: 'a{60}', method: 'b{60}'}",
            "rules[0].matches[0].method",
            "over Envoy's limit",
        ),
    ],
)
def test_a_regex_envoy_refuses_is_an_error_at_its_field(
    tmp_path: Path, kind: str, match: str, field: str, expected: str
) -> None:
    (tmp_path / "r.yaml").write_text(ROUTES.format(kind=kind, match=match))
    with pytest.raises(ConfigError) as e:
        load_directory(str(tmp_path))
    (problem,) = e.value.problems
    assert (problem.field, problem.line) == (field, 7), problem
    assert expected in problem.message


@pytest.mark.parametrize(
    ("match", "field", "expected"),
    [
        ("uri: {regex: '/(a)\\1'}", "http[0].match[0].uri.regex", "invalid escape sequence"),
        ("headers: {x: {regex: 'a(?=b)'}}", "http[0].match[0].headers.x.regex", "invalid perl"),
        ("uri: {regex: 'a{200}'}", "http[0].match[0].uri.regex", "over Envoy's limit"),
    ],
)
def test_an_istio_regex_envoy_refuses_is_an_error_at_its_field(
    tmp_path: Path, match: str, field: str, expected: str
) -> None:
    """The same judge for Istio's VirtualService regexes."""
    (tmp_path / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n"
        "spec:\n  hosts: [web]\n  http:\n  - match:\n    - "
        + match
        + "\n    route: [{destination: {host: web}}]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_directory(str(tmp_path))
    found = [p for p in e.value.problems if expected in p.message]
    assert found and found[0].field == field and found[0].line == 8, e.value.problems
