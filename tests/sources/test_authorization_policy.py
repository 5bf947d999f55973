"""AuthorizationPolicy files: what loads and what it means, and every refusal naming
file, line and field (``xdsd validate`` exits 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sources.test_bad_input import _materialize
from xdsd.cli import main
from xdsd.model.security import AuthorizationAction, AuthorizationPolicy, AuthorizationRule
from xdsd.sources import load_directory


def policy(spec: str, annotations: str = "") -> str:
    meta = "metadata:\n  name: p\n  namespace: foo\n"
    if annotations:
        meta += f"  annotations: {{{annotations}}}\n"
    return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n" + meta + spec


def _load(tmp_path: Path, text: str) -> AuthorizationPolicy:
    _materialize(tmp_path, {"x.yaml": text})
    policies = load_directory(str(tmp_path)).mesh.authorization_policies
    assert len(policies) == 1
    return policies[0]


def test_spec_empty_rules_absent_and_rules_of_an_empty_rule(tmp_path: Path) -> None:
    assert _load(tmp_path / "a", policy("spec: {}\n")).rules is None
    empty = _load(tmp_path / "b", policy("spec:\n  rules: []\n"))
    assert empty.rules == ()
    everything = _load(tmp_path / "c", policy("spec:\n  rules:\n  - {}\n"))
    assert everything.rules == (AuthorizationRule(),)


def test_fields_and_http_only_lines(tmp_path: Path) -> None:
    text = policy(
        "spec:\n"  # line 7
        "  selector: {matchLabels: {app: a}}\n"
        "  action: DENY\n"
        "  rules:\n"
        "  - from:\n"  # line 11
        "    - source:\n"
        "        requestPrincipals: [iss/sub]\n"
        "        serviceAccounts: [ns/sa]\n"
        "        ipBlocks: [10.1.2.3/8]\n"
        "    to:\n"
        "    - operation:\n"
        "        ports: ['80', 81]\n"
        "        paths: ['/a/{*}']\n"  # line 19
        "    when:\n"
        "    - key: request.auth.claims[groups][0]\n"  # line 21
        "      values: [admin]\n",
        '"istio.io/dry-run": "true"',
    )
    p = _load(tmp_path, text)
    assert p.action is AuthorizationAction.DENY
    assert p.dry_run is True
    assert p.rules is not None
    rule = p.rules[0]
    assert rule.sources[0].ip_blocks == ("10.0.0.0/8",)
    assert rule.sources[0].service_accounts == ("ns/sa",)
    assert rule.operations[0].ports == ("80", "81")
    assert dict(rule.http_only) == {
        "rules[0].from[0].source.requestPrincipals": 13,
        "rules[0].to[0].operation.paths": 19,
        "rules[0].when[0]": 21,
    }


CASES: dict[str, tuple[str, str, list[str]]] = {
    "target ref": (
        "spec:\n  targetRef: {kind: Gateway, name: g}\n",
        "",
        ["x.yaml:7:", "targetRef", "Kubernetes"],
    ),
    "target refs": (
        "spec:\n  targetRefs: []\n",
        "",
        ["x.yaml:7:", "targetRefs", "selector.matchLabels"],
    ),
    "unknown field": ("spec:\n  rulez: []\n", "", ["x.yaml:7:", "rulez", "did you mean 'rules'"]),
    "bad action": (
        "spec:\n  action: MAYBE\n",
        "",
        ["x.yaml:7:", "action", "ALLOW, DENY, AUDIT, CUSTOM"],
    ),
    "custom without provider": (
        "spec:\n  action: CUSTOM\n",
        "",
        ["x.yaml:7:", "action", "provider.name"],
    ),
    "provider on allow": (
        "spec:\n  provider: {name: x}\n",
        "",
        ["x.yaml:7:", "provider", "only for action CUSTOM"],
    ),
    "custom dry run": (
        "spec:\n  action: CUSTOM\n  provider: {name: x}\n",
        '"istio.io/dry-run": "true"',
        ["x.yaml:8:", "action", "dry run"],
    ),
    "bad dry run": (
        "spec: {}\n",
        '"istio.io/dry-run": "yes"',
        ["x.yaml:6:", "istio.io/dry-run", '"true" or "false"'],
    ),
    "bad cidr": (
        "spec:\n  rules:\n  - from:\n    - source: {ipBlocks: [1.2.3.4/33]}\n",
        "",
        ["x.yaml:9:", "rules[0].from[0].source.ipBlocks[0]", "CIDR"],
    ),
    "bad remote cidr": (
        "spec:\n  rules:\n  - from:\n    - source: {notRemoteIpBlocks: [x]}\n",
        "",
        ["x.yaml:9:", "notRemoteIpBlocks[0]", "CIDR"],
    ),
    "bad port": (
        "spec:\n  rules:\n  - to:\n    - operation: {ports: ['65536']}\n",
        "",
        ["x.yaml:9:", "operation.ports[0]", "0-65535"],
    ),
    "port not a number": (
        "spec:\n  rules:\n  - to:\n    - operation: {notPorts: [http]}\n",
        "",
        ["x.yaml:9:", "notPorts[0]", "0-65535"],
    ),
    "unknown when key": (
        "spec:\n  rules:\n  - when:\n    - key: request.body\n      values: [x]\n",
        "",
        ["x.yaml:9:", "when[0].key", "not a key Istio documents"],
    ),
    "bad header name": (
        "spec:\n  rules:\n  - when:\n    - key: request.headers[a b]\n      values: [x]\n",
        "",
        ["x.yaml:9:", "when[0].key", "HTTP header name"],
    ),
    "bad experimental key": (
        "spec:\n  rules:\n  - when:\n    - key: experimental.foo\n      values: [x]\n",
        "",
        ["x.yaml:9:", "experimental.envoy.filters"],
    ),
    "condition without values": (
        "spec:\n  rules:\n  - when:\n    - key: source.ip\n",
        "",
        ["x.yaml:9:", "when[0]", "values or notValues"],
    ),
    "source.ip not an address": (
        "spec:\n  rules:\n  - when:\n    - key: source.ip\n      notValues: [abc]\n",
        "",
        ["x.yaml:10:", "when[0].notValues[0]", "CIDR"],
    ),
    "destination.port": (
        "spec:\n  rules:\n  - when:\n    - key: destination.port\n      values: ['-1']\n",
        "",
        ["x.yaml:10:", "when[0].values[0]", "port number"],
    ),
    "empty from": (
        "spec:\n  rules:\n  - from: []\n",
        "",
        ["x.yaml:8:", "rules[0].from", "must not be empty"],
    ),
    "empty source": (
        "spec:\n  rules:\n  - from:\n    - source: {}\n",
        "",
        ["x.yaml:9:", "source", "must not be empty"],
    ),
    "from without source": (
        "spec:\n  rules:\n  - from:\n    - {}\n",
        "",
        ["x.yaml:9:", "rules[0].from[0]", "needs a source"],
    ),
    "empty operation": (
        "spec:\n  rules:\n  - to:\n    - operation: {}\n",
        "",
        ["x.yaml:9:", "operation", "must not be empty"],
    ),
    "wildcard inside": (
        "spec:\n  rules:\n  - to:\n    - operation: {hosts: [a*b]}\n",
        "",
        ["x.yaml:9:", "hosts[0]", "wildcard"],
    ),
    "bad template": (
        "spec:\n  rules:\n  - to:\n    - operation: {paths: ['/a{*}']}\n",
        "",
        ["x.yaml:9:", "paths[0]", "whole path segments"],
    ),
    "double glob not last": (
        "spec:\n  rules:\n  - to:\n    - operation: {paths: ['/{**}/{*}']}\n",
        "",
        ["x.yaml:9:", "paths[0]", "last operator"],
    ),
    "service account and principal": (
        "spec:\n  rules:\n  - from:\n    - source: {serviceAccounts: [a], principals: [b]}\n",
        "",
        ["x.yaml:9:", "serviceAccounts", "principals"],
    ),
    "service account wildcard": (
        "spec:\n  rules:\n  - from:\n    - source: {serviceAccounts: ['ns/*']}\n",
        "",
        ["x.yaml:9:", "serviceAccounts[0]", "NAMESPACE/NAME"],
    ),
    "empty string value": (
        "spec:\n  rules:\n  - from:\n    - source: {principals: ['']}\n",
        "",
        ["x.yaml:9:", "principals[0]", "non-empty"],
    ),
    "unknown operation field": (
        "spec:\n  rules:\n  - to:\n    - operation: {method: [GET]}\n",
        "",
        ["x.yaml:9:", "operation.method", "did you mean 'methods'"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_policy_names_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, annotations, expected = CASES[case]
    _materialize(tmp_path, {"x.yaml": policy(spec, annotations)})
    code = main(["validate", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
