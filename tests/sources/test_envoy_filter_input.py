"""Bad EnvoyFilters: ``xdsd validate`` exits 1 naming file, line and field (patch values
are checked against the Envoy message their applyTo patches, as Istio's validation does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main

SERVICE = (
    'kind = "Service"\nname = "reviews"\n\n[[ports]]\nnumber = 9080\nprotocol = "HTTP"\n'
    '\n[[endpoints]]\naddress = "10.0.0.1"\n'
)

GOOD = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ef}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code: {inline_string: "function envoy_on_request(h) end"}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {service: reviews}}
    patch: {operation: MERGE, value: {connect_timeout: 3s}}
"""

# (old, new) in GOOD → fragments of the error
CASES: dict[str, tuple[str, str, list[str]]] = {
    "wrong value type": (
        "connect_timeout: 3s",
        "connect_timeout: soon",
        ["ef.yaml:22:", "configPatches[1].patch.value", "envoy.config.cluster.v3.Cluster", "soon"],
    ),
    "unknown value field": (
        "connect_timeout: 3s",
        "connect_timeot: 3s",
        ["ef.yaml:22:", "configPatches[1].patch.value", "connect_timeot"],
    ),
    "unknown @type": (
        "lua.v3.Lua",
        "lua.v3.Luna",
        [
            "ef.yaml:15:",
            "configPatches[0].patch.value",
            "unknown type",
            "envoy.extensions.filters.http.lua.v3.Luna",
        ],
    ),
    "bad typed_config field": (
        "default_source_code:",
        "default_sauce_code:",
        ["ef.yaml:15:", "configPatches[0].patch.value", "default_sauce_code"],
    ),
    "operation not for applyTo": (
        "operation: MERGE",
        "operation: INSERT_AFTER",
        ["ef.yaml:22:", "configPatches[1].patch.operation", "does not apply to CLUSTER"],
    ),
    "filter match without name": (
        "            name: envoy.filters.network.http_connection_manager\n",
        "",
        ["configPatches[0].match.listener.filterChain.filter.name", "required"],
    ),
    "subFilter under another filter": (
        "name: envoy.filters.network.http_connection_manager",
        "name: envoy.filters.network.tcp_proxy",
        [
            "configPatches[0].match.listener.filterChain.filter.name",
            "must be envoy.filters.network.http_connection_manager",
        ],
    ),
    "subFilter on a NETWORK_FILTER patch": (
        "applyTo: HTTP_FILTER",
        "applyTo: NETWORK_FILTER",
        ["configPatches[0].match.listener", "subFilter selects HTTP filters"],
    ),
    "unknown proxy metadata key": (
        "match: {context: SIDECAR_OUTBOUND,",
        "match: {proxy: {metadata: {ISTIO_VERSION: '1'}},",
        ["configPatches[1].match.proxy.metadata", "'ISTIO_VERSION'"],
    ),
    "targetRefs": (
        "  configPatches:",
        "  targetRefs: [{kind: Gateway, name: gw}]\n  configPatches:",
        ["ef.yaml:5:", "targetRefs", "not supported"],
    ),
}


def test_good_filter_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.toml").write_text(SERVICE)
    (tmp_path / "ef.yaml").write_text(GOOD)
    assert main(["validate", "--strict", str(tmp_path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_envoy_filter_names_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new, expected = CASES[case]
    assert old in GOOD
    (tmp_path / "s.toml").write_text(SERVICE)
    (tmp_path / "ef.yaml").write_text(GOOD.replace(old, new, 1))
    code = main(["validate", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
