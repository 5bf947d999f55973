"""Kinds xdsd does not implement: a warning by default (a mixed Istio directory loads),
an error under ``validate --strict`` and under the ``refuse_unknown_kinds`` setting —
for ``xdsd validate --settings`` and for a running ``xdsd serve``, which then refuses
the reload, keeps serving the last good configuration and names the file in
``/debug/errors``. ``security.istio.io`` kinds it does not read are errors regardless."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import Xdsd, wait_until, write_atomically
from tests.xds_clients import AdsClient
from xdsd.cli import main

SERVICE = """\
kind = "Service"
name = "{name}"

[[ports]]
name = "http"
number = 80
protocol = "http"

[[endpoints]]
address = "10.0.0.1"
"""

PROXY_CONFIG = """\
apiVersion: networking.istio.io/v1
kind: ProxyConfig
metadata: {name: reviews}
spec: {}
"""

CONFIG_MAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: extra}
data: {a: b}
"""

#: A Service xdsd reads, then an unknown kind (its ``kind`` on line 7) in the same file.
WITH_UNKNOWN = "kind: Service\nname: books\nports: [{name: http, number: 80, protocol: http}]\n"
WITH_UNKNOWN += "endpoints: [{address: 10.0.0.2}]\n---\n" + CONFIG_MAP


def _directory(root: Path) -> Path:
    config = root / "config"
    config.mkdir()
    (config / "reviews.toml").write_text(SERVICE.format(name="reviews"))
    (config / "group.yaml").write_text(PROXY_CONFIG)
    return config


def _settings(root: Path, refuse: bool) -> Path:
    path = root / "settings.toml"
    path.write_text(f"refuse_unknown_kinds = {str(refuse).lower()}\n")
    return path


def test_validate_warns_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _directory(tmp_path)
    assert main(["validate", str(config)]) == 0
    captured = capsys.readouterr()
    assert (
        f"{config / 'group.yaml'}:2: warning: kind: ProxyConfig is not supported by xdsd "
        "yet: ignored" in captured.err
    ), captured.err
    assert "1 warning" in captured.out
    settings = _settings(tmp_path, refuse=False)
    assert main(["validate", "--settings", str(settings), str(config)]) == 0


def test_validate_strict_makes_an_unknown_kind_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _directory(tmp_path)
    assert main(["validate", "--strict", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config / 'group.yaml'}:2: kind: ProxyConfig is not supported" in err, err


@pytest.mark.parametrize(
    ("name", "text", "line", "field", "message"),
    [
        ("group.yaml", PROXY_CONFIG, 2, "kind", "ProxyConfig is not supported by xdsd yet"),
        ("extra.yaml", CONFIG_MAP, 2, "kind", "ConfigMap (v1) is not supported by xdsd"),
        (
            "k8s.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {}\n",
            1,
            "apiVersion",
            "a Kubernetes v1 Service is not an xdsd Service",
        ),
    ],
)
def test_validate_with_the_setting_refuses_an_unknown_kind(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
    line: int,
    field: str,
    message: str,
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "reviews.toml").write_text(SERVICE.format(name="reviews"))
    (config / name).write_text(text)
    settings = _settings(tmp_path, refuse=True)
    assert main(["validate", "--settings", str(settings), str(config)]) == 1
    err = capsys.readouterr().err
    expected = f"{config / name}:{line}: {field}: {message}: refused (refuse_unknown_kinds is set)"
    assert expected in err, err
    assert "warning" not in err


def test_an_unknown_security_kind_is_an_error_without_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "p.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolcy\nmetadata: {name: p}\n"
    )
    assert main(["validate", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config / 'p.yaml'}:2: kind: unknown security.istio.io kind" in err, err


def _clusters(client: AdsClient) -> set[str]:
    """The cluster names of the last response ``client`` received."""
    from envoy.config.cluster.v3 import cluster_pb2

    if not client.responses:
        return set()
    names = set()
    for any_message in client.responses[-1].resources:
        cluster = cluster_pb2.Cluster()
        any_message.Unpack(cluster)
        names.add(cluster.name)
    return names


def _serves(client: AdsClient, service: str) -> bool:
    return any(f"||{service}." in name for name in _clusters(client))


def test_serve_with_the_setting_refuses_a_reload_with_an_unknown_kind(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "reviews.toml").write_text(SERVICE.format(name="reviews"))
    settings = _settings(tmp_path, refuse=True)
    xdsd = Xdsd(config, tmp_path, extra=["--settings", str(settings)])
    client = AdsClient(xdsd.grpc_port, "ratings-1", "ratings")
    try:
        wait_until(lambda: _serves(client, "reviews"), what="reviews served")
        books = config / "books.yaml"
        write_atomically(books, WITH_UNKNOWN)
        errors = wait_until(lambda: xdsd.admin("/debug/errors"), what="the error reported")
        assert [(e["severity"], e["path"], e["line"], e["field"]) for e in errors] == [
            ("error", str(books), 7, "kind")
        ], errors
        assert "ConfigMap (v1) is not supported by xdsd: refused" in errors[0]["message"]
        wait_until(lambda: "refused" in xdsd.log() and str(books) in xdsd.log(), what="log")
        assert not _serves(client, "books")  # the whole reload refused: last good kept
        assert _serves(client, "reviews")
        write_atomically(books, WITH_UNKNOWN.split("---\n")[0])
        wait_until(lambda: _serves(client, "books"), what="the fixed file served")
        assert xdsd.admin("/debug/errors") == []
    finally:
        client.stop()
        assert xdsd.stop() == 0


def test_serve_without_the_setting_warns_and_loads(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "reviews.toml").write_text(SERVICE.format(name="reviews"))
    xdsd = Xdsd(config, tmp_path, extra=["--settings", str(_settings(tmp_path, refuse=False))])
    client = AdsClient(xdsd.grpc_port, "ratings-1", "ratings")
    try:
        wait_until(lambda: _serves(client, "reviews"), what="reviews served")
        write_atomically(config / "books.yaml", WITH_UNKNOWN)
        wait_until(lambda: _serves(client, "books"), what="books served")
        errors = xdsd.admin("/debug/errors")
        assert [(e["severity"], e["line"], e["field"]) for e in errors] == [
            ("warning", 7, "kind")
        ], errors
    finally:
        client.stop()
        assert xdsd.stop() == 0
