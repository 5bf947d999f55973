"""``[[mesh.extension_providers]]``: the ext_authz servers CUSTOM policies name, read
from the settings with every mistake an error at its own line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.errors import ConfigError
from xdsd.model.mesh_config import ExtAuthzKind, ExtensionProvider
from xdsd.settings import Settings

PROVIDERS = """\
[mesh]
outbound_traffic_policy = "ALLOW_ANY"

[[mesh.extension_providers]]
name = "http-authz"
[mesh.extension_providers.envoy_ext_authz_http]
service = "ext-authz.foo.svc.cluster.local"
port = 8000
timeout = "0.5s"
fail_open = true
status_on_error = "503"
path_prefix = "/check"
include_request_headers_in_check = ["x-ext-authz", "cookie"]
include_additional_headers_in_check = { "x-from" = "mesh" }
headers_to_upstream_on_allow = ["x-user"]
headers_to_downstream_on_deny = ["x-reason"]
headers_to_downstream_on_allow = ["x-seen"]
[mesh.extension_providers.envoy_ext_authz_http.include_request_body_in_check]
max_request_bytes = 4096
allow_partial_message = true

[[mesh.extension_providers]]
name = "grpc-authz"
envoy-ext-authz-grpc = { service = "authz.example.com", port = 9000, timeout = 2 }
"""


def _read(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "xdsd.toml"
    path.write_text(text)
    return Settings.from_file(str(path))


def test_providers_are_read_with_every_field(tmp_path: Path) -> None:
    mesh = _read(tmp_path, PROVIDERS).mesh
    http, grpc = mesh.extension_providers
    assert http == ExtensionProvider(
        name="http-authz",
        kind=ExtAuthzKind.HTTP,
        service="ext-authz.foo.svc.cluster.local",
        port=8000,
        timeout_seconds=0.5,
        fail_open=True,
        status_on_error=503,
        path_prefix="/check",
        include_request_headers_in_check=("x-ext-authz", "cookie"),
        include_additional_headers_in_check=(("x-from", "mesh"),),
        headers_to_upstream_on_allow=("x-user",),
        headers_to_downstream_on_deny=("x-reason",),
        headers_to_downstream_on_allow=("x-seen",),
        max_request_bytes=4096,
        allow_partial_message=True,
    )
    assert grpc == ExtensionProvider(
        name="grpc-authz",
        kind=ExtAuthzKind.GRPC,
        service="authz.example.com",
        port=9000,
        timeout_seconds=2.0,
    )
    assert mesh.extension_provider("grpc-authz") is grpc
    assert mesh.extension_provider("nope") is None
    # Where each was declared, for the errors about them.
    assert (http.origin.line, grpc.origin.line) == (4, 22)


_ONE = '[[mesh.extension_providers]]\nname = "a"\n'
_HTTP = "[mesh.extension_providers.envoy_ext_authz_http]\n"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            _ONE + _HTTP + 'service = "s.ns.svc.cluster.local"\nport = 80\nretries = 3\n',
            ":6: mesh.extension_providers[0].envoy_ext_authz_http.retries: unknown setting",
        ),
        (_ONE + "colour = 1\n", ":3: mesh.extension_providers[0].colour: unknown setting"),
        (_ONE, ":1: mesh.extension_providers[0]: has neither of envoy_ext_authz_http"),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\n'
            "[mesh.extension_providers.envoy_ext_authz_grpc]\n"
            'service = "s"\nport = 1\n',
            ":1: mesh.extension_providers[0]: has both envoy_ext_authz_http and",
        ),
        (
            _ONE + _HTTP + 'service = "s"\n',
            ":3: mesh.extension_providers[0].envoy_ext_authz_http.port: missing",
        ),
        (
            _ONE + _HTTP + 'service = "http://s"\nport = 1\n',
            ":4: mesh.extension_providers[0].envoy_ext_authz_http.service: must be a host",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 70000\n',
            ":5: mesh.extension_providers[0].envoy_ext_authz_http.port: must be a port",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\nstatus_on_error = 299\n',
            ":6: mesh.extension_providers[0].envoy_ext_authz_http.status_on_error: must be",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\ntimeout = "soon"\n',
            ":6: mesh.extension_providers[0].envoy_ext_authz_http.timeout: must be a duration",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\ntimeout = -1\n',
            ":6: mesh.extension_providers[0].envoy_ext_authz_http.timeout: must be a non-neg",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\nheaders_to_upstream_on_allow = ["a b"]\n',
            ":6: mesh.extension_providers[0].envoy_ext_authz_http.headers_to_upstream_on_allow",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\npath_prefix = "check"\n',
            ":6: mesh.extension_providers[0].envoy_ext_authz_http.path_prefix: must be a path",
        ),
        (
            # HTTP's fields are not the gRPC provider's
            _ONE + "[mesh.extension_providers.envoy_ext_authz_grpc]\n"
            'service = "s"\nport = 1\npath_prefix = "/x"\n',
            ":6: mesh.extension_providers[0].envoy_ext_authz_grpc.path_prefix: unknown setting",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\n'
            "[mesh.extension_providers.envoy_ext_authz_http.include_request_body_in_check]\n"
            "allow_partial_message = true\n",
            ":6: mesh.extension_providers[0].envoy_ext_authz_http.include_request_body_in_check"
            ".max_request_bytes: missing",
        ),
        (
            _ONE + _HTTP + 'service = "s"\nport = 1\n'
            "[mesh.extension_providers.envoy_ext_authz_http.include_request_body_in_check]\n"
            "max_request_bytes = 10\npack = true\n",
            ":8: mesh.extension_providers[0].envoy_ext_authz_http.include_request_body_in_check"
            ".pack: unknown setting",
        ),
        (
            _ONE + 'envoy_ext_authz_grpc = { service = "s", port = 1 }\n'
            '[[mesh.extension_providers]]\nname = "a"\n'
            'envoy_ext_authz_grpc = { service = "t", port = 2 }\n',
            ":5: mesh.extension_providers[1].name: repeats provider 'a' (first at line 2)",
        ),
        (
            '[[mesh.extension_providers]]\nenvoy_ext_authz_grpc = { service = "s", port = 1 }\n',
            ":1: mesh.extension_providers[0]: names no provider",
        ),
        ("[mesh]\nextension_providers = 1\n", ":2: mesh.extension_providers: must be a list"),
    ],
)
def test_bad_providers_name_line_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _read(tmp_path, text)
    assert f"xdsd.toml{fragment}" in str(info.value)


_KEYS = st.sampled_from(
    [
        "name",
        "envoy_ext_authz_http",
        "envoy_ext_authz_grpc",
        "service",
        "port",
        "timeout",
        "fail_open",
        "status_on_error",
        "path_prefix",
        "include_request_headers_in_check",
        "include_additional_headers_in_check",
        "headers_to_upstream_on_allow",
        "include_request_body_in_check",
        "max_request_bytes",
        "pack_as_bytes",
        "bogus",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["0.5s", "-1s", "503", "/check", "a.example", "x-token"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@fuzz_settings()
@given(st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=3))
def test_fuzz_providers_are_read_or_refused_by_name(providers: list[dict[str, object]]) -> None:
    """Any [[mesh.extension_providers]] value gives providers or a ConfigError whose
    every problem names a key under mesh (never another exception)."""
    with deadline("test_fuzz_providers_are_read_or_refused_by_name"):
        try:
            read = Settings().merged({"mesh": {"extension_providers": providers}}, source="s")
        except ConfigError as e:
            assert all(p.field.startswith("mesh") for p in e.problems), e
            return
        names = [p.name for p in read.mesh.extension_providers]
        assert len(names) == len(set(names)) == len(providers)
        assert all(p.service and 1 <= p.port <= 65535 for p in read.mesh.extension_providers)
