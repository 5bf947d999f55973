"""The warning an AuthorizationPolicy's HTTP-only field gets when the policy applies to a
workload with a TCP or TLS port: at the field's own line, saying what the rule does there
(an ALLOW rule never matches, a DENY rule matches without the field); an error under
``xdsd validate --strict``; kept current by reloads as a cold load finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sources.test_bad_input import _materialize
from xdsd.cli import main
from xdsd.errors import Severity
from xdsd.sources import DirectoryLoader, load_directory

MYSQL = (
    "kind: Service\nname: mysql\n"
    "ports: [{number: 80, protocol: HTTP}, {number: 3306, protocol: TCP}]\n"
    "endpoints: [{address: 10.0.0.1, labels: {app: mysql}}]\n"
)
WEB = (
    "kind: Service\nname: web\nnamespace: shop\n"
    "ports: [{number: 80, protocol: HTTP}]\n"
    "endpoints: [{address: 10.0.0.2, labels: {app: web}}]\n"
)


def policy(spec: str, namespace: str = "default", name: str = "p") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\n" + spec
    )


ALLOW_PATHS = policy(
    "spec:\n"  # line 6
    "  rules:\n"
    "  - to:\n"
    "    - operation:\n"
    "        paths: [/a]\n"  # line 10
    "        methods: [GET]\n"  # line 11
)
DENY_SPEC = (
    "spec:\n"
    "  action: DENY\n"
    "  rules:\n"
    "  - from:\n"
    "    - source:\n"
    "        notRequestPrincipals: ['*']\n"  # line 11
    "    when:\n"
    "    - key: request.auth.claims[group]\n"  # line 13
    "      values: [admins]\n"
)
DENY_TOKEN = policy(DENY_SPEC)


def warnings(root: Path) -> list[str]:
    result = load_directory(str(root))
    assert all(w.severity is Severity.WARNING for w in result.warnings)
    return [str(w) for w in result.warnings if "HTTP-only" in w.message]


def test_an_allow_rule_warns_at_each_http_only_field(tmp_path: Path) -> None:
    _materialize(tmp_path, {"mysql.yaml": MYSQL, "authz.yaml": ALLOW_PATHS})
    path = tmp_path / "authz.yaml"
    effect = "HTTP-only: on TCP port 3306 of mysql.default this ALLOW rule never matches"
    assert warnings(tmp_path) == [
        f"{path}:10: warning: rules[0].to[0].operation.paths: {effect}",
        f"{path}:11: warning: rules[0].to[0].operation.methods: {effect}",
    ]


def test_a_deny_rule_warns_that_it_matches_without_the_field(tmp_path: Path) -> None:
    _materialize(tmp_path, {"mysql.yaml": MYSQL, "authz.yaml": DENY_TOKEN})
    path = tmp_path / "authz.yaml"
    effect = "HTTP-only: on TCP port 3306 of mysql.default this DENY rule matches without it"
    assert warnings(tmp_path) == [
        f"{path}:11: warning: rules[0].from[0].source.notRequestPrincipals: {effect}",
        f"{path}:13: warning: rules[0].when[0]: {effect}",
    ]


def test_several_ports_are_counted_and_tls_is_named(tmp_path: Path) -> None:
    gate = (
        "kind: Service\nname: gate\nports: [{number: 8443, protocol: TLS}]\n"
        "endpoints: [{address: 10.0.0.3}]\n"
    )
    _materialize(tmp_path, {"a.yaml": gate, "mysql.yaml": MYSQL, "authz.yaml": ALLOW_PATHS})
    [paths, _] = warnings(tmp_path)
    assert paths.endswith(
        "HTTP-only: on TLS port 8443 of gate.default this ALLOW rule never matches "
        "(and on 1 more TCP/TLS port)"
    )


@pytest.mark.parametrize(
    ("namespace", "selector", "warned"),
    [
        ("default", "", True),  # the namespace's workloads
        ("shop", "", False),  # another namespace: mysql is not in scope
        ("istio-system", "", True),  # the root namespace: every workload
        ("default", "  selector: {matchLabels: {app: mysql}}\n", True),
        ("default", "  selector: {matchLabels: {app: web}}\n", False),
        ("istio-system", "  selector: {matchLabels: {app: mysql}}\n", True),
        ("shop", "  selector: {matchLabels: {app: mysql}}\n", False),
    ],
)
def test_scope_is_namespace_and_endpoint_labels(
    tmp_path: Path, namespace: str, selector: str, warned: bool
) -> None:
    spec = f"spec:\n{selector}  rules:\n  - to: [{{operation: {{paths: [/a]}}}}]\n"
    _materialize(
        tmp_path, {"mysql.yaml": MYSQL, "web.yaml": WEB, "authz.yaml": policy(spec, namespace)}
    )
    assert bool(warnings(tmp_path)) is warned


def test_workload_entries_of_a_mesh_internal_entry_are_in_scope(tmp_path: Path) -> None:
    entry = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nname: db\n"
        "hosts: [db.internal]\nports: [{{number: 5432, name: pg, protocol: TCP}}]\n"
        "location: {location}\nresolution: STATIC\nworkloadSelector: {{labels: {{app: db}}}}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nname: vm\n"
        "address: 10.0.9.1\nlabels: {{app: db, tier: data}}\n"
    )
    spec = "spec:\n  selector: {matchLabels: {tier: data}}\n  rules:\n  - to: [{operation: {hosts: [x]}}]\n"
    _materialize(
        tmp_path / "in",
        {"db.yaml": entry.format(location="MESH_INTERNAL"), "authz.yaml": policy(spec)},
    )
    [found] = warnings(tmp_path / "in")
    assert "rules[0].to[0].operation.hosts: HTTP-only: on TCP port 5432 of db.internal" in found
    _materialize(
        tmp_path / "out",
        {"db.yaml": entry.format(location="MESH_EXTERNAL"), "authz.yaml": policy(spec)},
    )
    assert warnings(tmp_path / "out") == []  # no sidecar fronts an external host


@pytest.mark.parametrize(
    ("rule", "warned"),
    [
        ("  - to: [{operation: {ports: ['80'], paths: [/a]}}]\n", False),
        ("  - to: [{operation: {ports: ['3306'], paths: [/a]}}]\n", True),
        ("  - to: [{operation: {ports: ['80'], paths: [/a]}}, {operation: {paths: [/b]}}]\n", True),
        ("  - to: [{operation: {ports: ['3306']}}]\n", False),  # nothing HTTP-only
        ("  - from: [{source: {namespaces: [a]}}]\n", False),
        ("  - {}\n", False),
    ],
)
def test_rules_that_cannot_apply_or_need_no_http_do_not_warn(
    tmp_path: Path, rule: str, warned: bool
) -> None:
    _materialize(tmp_path, {"mysql.yaml": MYSQL, "authz.yaml": policy(f"spec:\n  rules:\n{rule}")})
    assert bool(warnings(tmp_path)) is warned


@pytest.mark.parametrize(("port", "warned"), [("13306", True), ("3306", False)])
def test_a_rule_names_the_workload_port(tmp_path: Path, port: str, warned: bool) -> None:
    # policies name the workload's port (targetPort), not the Service's
    targeted = MYSQL.replace(
        "number: 3306, protocol: TCP", "number: 3306, protocol: TCP, targetPort: 13306"
    )
    spec = f"spec:\n  rules:\n  - to: [{{operation: {{ports: ['{port}'], paths: [/a]}}}}]\n"
    _materialize(tmp_path, {"mysql.yaml": targeted, "authz.yaml": policy(spec)})
    assert bool(warnings(tmp_path)) is warned


def test_http_ports_only_do_not_warn(tmp_path: Path) -> None:
    _materialize(tmp_path, {"web.yaml": WEB, "authz.yaml": policy(DENY_SPEC, "shop")})
    assert warnings(tmp_path) == []


def test_validate_strict_refuses_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _materialize(tmp_path, {"mysql.yaml": MYSQL, "authz.yaml": ALLOW_PATHS})
    assert main(["validate", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["validate", "--strict", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'authz.yaml'}:10: rules[0].to[0].operation.paths: HTTP-only" in err


def test_reloads_follow_services_and_policies_as_a_cold_load(tmp_path: Path) -> None:
    """The warning comes and goes with the TCP port, the labels the selector needs, the
    policy and its namespace, whichever file changes; each reload equals a cold load."""
    root = tmp_path / "config"
    _materialize(root, {"mysql.yaml": WEB, "authz.yaml": ALLOW_PATHS})
    loader = DirectoryLoader(str(root))
    mysql, authz = root / "mysql.yaml", root / "authz.yaml"
    steps = [
        (mysql, MYSQL, 2),
        (authz, DENY_TOKEN, 2),
        (mysql, MYSQL.replace("TCP", "HTTP"), 0),
        (mysql, MYSQL, 2),
        (authz, DENY_TOKEN.replace("namespace: default", "namespace: istio-system"), 2),
        (mysql, MYSQL.replace("name: mysql", "name: mysql\nnamespace: shop"), 2),
        (
            authz,
            DENY_TOKEN.replace("spec:\n", "spec:\n  selector: {matchLabels: {app: x}}\n"),
            0,
        ),
        (
            mysql,
            MYSQL.replace("name: mysql", "name: mysql\nnamespace: shop").replace(
                "app: mysql", "app: x"
            ),
            0,
        ),
        (mysql, MYSQL.replace("app: mysql", "app: x"), 2),
        (authz, ALLOW_PATHS.replace("spec:\n", "spec:\n  selector: {matchLabels: {app: x}}\n"), 2),
        (mysql, None, 0),
        (mysql, MYSQL.replace("app: mysql", "app: x"), 2),
        (authz, None, 0),
    ]
    loader.load(None)
    for i, (path, text, count) in enumerate(steps):
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
        warm = loader.load({str(path)})
        cold = load_directory(str(root))
        assert (warm.mesh, warm.warnings) == (cold.mesh, cold.warnings), f"step {i}"
        found = [w for w in warm.warnings if "HTTP-only" in w.message]
        assert len(found) == count, f"step {i}: {found}"
