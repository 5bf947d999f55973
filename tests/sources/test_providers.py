"""CUSTOM AuthorizationPolicies name a declared extension provider whose service and
port the mesh has; anything else is an error at the policy's ``provider.name``."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main
from xdsd.model import Mesh, Origin, Port, Protocol, Service
from xdsd.model.mesh_config import ExtAuthzKind, ExtensionProvider
from xdsd.model.security import AuthorizationAction, AuthorizationPolicy, AuthorizationRule
from xdsd.sources.crosscheck.providers import provider_problems

AUTHZ = Service("ext-authz", "foo", ports=(Port(8000, Protocol.HTTP), Port(9000, Protocol.GRPC)))
MESH_ORIGIN = Origin("/etc/xdsd/xdsd.toml", 7)


def _provider(
    service: str = "ext-authz.foo.svc.cluster.local", port: int = 8000
) -> ExtensionProvider:
    return ExtensionProvider("authz", ExtAuthzKind.HTTP, service, port, origin=MESH_ORIGIN)


def _policy(
    provider: str = "authz", action: AuthorizationAction = AuthorizationAction.CUSTOM
) -> AuthorizationPolicy:
    return AuthorizationPolicy(
        "ext",
        "bar",
        action=action,
        provider=provider,
        rules=(AuthorizationRule(),),
        origin=Origin("cfg/policy.yaml", 1),
        lines=(("provider.name", 9),),
    )


def test_a_declared_provider_of_a_mesh_service_is_fine() -> None:
    mesh = Mesh(services=(AUTHZ,), authorization_policies=(_policy(),))
    assert provider_problems(mesh, (_provider(),)) == []
    assert provider_problems(mesh, (_provider(port=9000),)) == []


@pytest.mark.parametrize(
    ("providers", "message"),
    [
        ((), "no extension provider 'authz' is declared in the settings"),
        (
            (_provider(service="other.foo.svc.cluster.local"),),
            "provider 'authz' (declared at /etc/xdsd/xdsd.toml:7) names service "
            "other.foo.svc.cluster.local, which no Service or ServiceEntry",
        ),
        ((_provider(service="ext-authz.foo"),), "write its full name ext-authz.foo.svc"),
        ((_provider(port=8080),), "names port 8080, which ext-authz.foo.svc.cluster.local lacks"),
    ],
)
def test_what_cannot_be_enforced_is_an_error_at_provider_name(
    providers: tuple[ExtensionProvider, ...], message: str
) -> None:
    mesh = Mesh(services=(AUTHZ,), authorization_policies=(_policy(),))
    (problem,) = provider_problems(mesh, providers)
    assert str(problem).startswith("cfg/policy.yaml:9: provider.name: ")
    assert message in problem.message


def test_only_custom_policies_are_checked_and_unnamed_providers_are_not() -> None:
    deny = _policy(provider="", action=AuthorizationAction.DENY)
    mesh = Mesh(authorization_policies=(deny,))
    assert provider_problems(mesh, (_provider(service="nowhere.example"),)) == []


AUTHZ_SERVICE = """\
kind = "Service"
name = "ext-authz"
namespace = "foo"

[[ports]]
name = "http"
number = 8000
protocol = "HTTP"

[[endpoints]]
address = "127.0.0.1"
"""

CUSTOM_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext
  namespace: bar
spec:
  action: CUSTOM
  provider:
    name: {provider}
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
"""

SETTINGS = """\
[[mesh.extension_providers]]
name = "authz"
envoy_ext_authz_http = {{ service = "ext-authz.foo.svc.cluster.local", port = {port} }}
"""


@pytest.mark.parametrize(
    ("provider", "port", "message"),
    [
        ("authz", 8000, ""),
        ("other", 8000, "cfg/policy.yaml:9: provider.name: no extension provider 'other'"),
        ("authz", 9999, "cfg/policy.yaml:9: provider.name: provider 'authz' (declared at "),
    ],
)
def test_validate_names_the_provider_line_and_exits_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    provider: str,
    port: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "authz.toml").write_text(AUTHZ_SERVICE)
    (tmp_path / "cfg" / "policy.yaml").write_text(CUSTOM_POLICY.format(provider=provider))
    (tmp_path / "xdsd.toml").write_text(SETTINGS.format(port=port))
    code = main(["validate", "--settings", "xdsd.toml", "cfg"])
    err = capsys.readouterr().err
    if not message:
        assert code == 0, err
        return
    assert code == 1
    assert message in err
    # Without the settings no provider is declared at all.
    assert main(["validate", "cfg"]) == 1
    assert "declared: none" in capsys.readouterr().err
