"""``xdsd bootstrap --token-file``: the token reaches Envoy's ADS ``initial_metadata``,
the bootstrap is written 0600 and said to hold a credential, bad token files and
transports that cannot carry a token are refused; ``--certificate-dir`` gives a
proxyless gRPC client the files ``xdsd certificate`` keeps."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from tests.harness import envoy_accepts
from xdsd.cli import main

TOKEN = "eyJhbGciOi.payload-part_1.signature~x"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n\n")  # surrounding whitespace is trimmed
    return path


@pytest.mark.parametrize("transport", ["grpc", "delta"])
def test_token_goes_into_ads_initial_metadata_and_envoy_accepts_it(
    tmp_path: Path, token_file: Path, transport: str
) -> None:
    out = tmp_path / "boot" / "envoy.yaml"
    out.parent.mkdir()
    code, stdout, stderr = run(
        [
            "bootstrap",
            "--service",
            "reviews",
            "--transport",
            transport,
            "--token-file",
            str(token_file),
            "--output",
            str(out),
        ]
    )
    assert code == 0, stderr
    assert stdout == ""  # the credential went to the file only
    assert "holds a credential" in stderr and TOKEN not in stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["envoy.yaml"]  # no temporary left
    doc = yaml.safe_load(out.read_text())
    (service,) = doc["dynamic_resources"]["ads_config"]["grpc_services"]
    assert service["initial_metadata"] == [{"key": "authorization", "value": f"Bearer {TOKEN}"}]
    envoy_accepts(doc, tmp_path / "check.json")


def test_without_output_stdout_carries_it_with_a_warning(token_file: Path) -> None:
    code, stdout, stderr = run(["bootstrap", "--service", "a", "--token-file", str(token_file)])
    assert code == 0
    assert f"Bearer {TOKEN}" in stdout
    lines = stderr.splitlines()
    assert any(line.startswith("warning: this bootstrap holds a credential") for line in lines)
    assert TOKEN not in stderr


def test_output_replaces_a_readable_file_with_a_private_one(
    tmp_path: Path, token_file: Path
) -> None:
    out = tmp_path / "envoy.yaml"
    out.write_text("old")
    os.chmod(out, 0o644)
    assert (
        run(["bootstrap", "--service", "a", "--token-file", str(token_file), "--output", str(out)])[
            0
        ]
        == 0
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # without a token the bootstrap is no secret
    assert run(["bootstrap", "--service", "a", "--output", str(out)])[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert "initial_metadata" not in out.read_text()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b" \n\t\n", "empty"),
        (b"abc def", "whitespace or a control character inside"),
        (b"abc\ndef\n", "whitespace or a control character inside"),
        (b"abc\x00def", "whitespace or a control character inside"),
        (b"\xff\xfe", "ASCII"),
        (b"a" * (16 * 1024 + 1), "larger than 16384 bytes"),
    ],
)
def test_token_files_that_cannot_be_a_token_are_refused(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    out = tmp_path / "envoy.yaml"
    code, stdout, stderr = run(
        ["bootstrap", "--service", "a", "--token-file", str(path), "--output", str(out)]
    )
    assert code == 1 and stdout == ""
    assert stderr.count("\n") == 1 and fragment in stderr and str(path) in stderr
    assert not out.exists()


def test_missing_token_file_is_one_line(tmp_path: Path) -> None:
    code, _, stderr = run(["bootstrap", "--service", "a", "--token-file", str(tmp_path / "no")])
    assert code == 1 and "cannot read the token" in stderr and stderr.count("\n") == 1


def test_rest_and_proxyless_grpc_cannot_carry_a_token(token_file: Path) -> None:
    code, _, stderr = run(
        ["bootstrap", "--service", "a", "--transport", "rest", "--token-file", str(token_file)]
    )
    assert code == 2 and "REST-JSON polls cannot carry a token" in stderr
    assert "client certificate" in stderr and "tls_client_ca" in stderr
    code, _, stderr = run(
        ["bootstrap", "--service", "a", "--format", "grpc", "--token-file", str(token_file)]
    )
    assert code == 2 and "xdsd certificate" in stderr


def test_grpc_bootstrap_reads_the_certificate_directory(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    code, stdout, stderr = run(
        [
            "bootstrap",
            "--service",
            "client",
            "--namespace",
            "shop",
            "--format",
            "grpc",
            "--certificate-dir",
            str(directory),
        ]
    )
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["certificate_providers"] == {
        "mesh": {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": f"{directory}/cert.pem",
                "private_key_file": f"{directory}/key.pem",
                "ca_certificate_file": f"{directory}/ca.pem",
                "refresh_interval": "60s",
            },
        }
    }
    assert doc["node"]["metadata"]["mesh_tls"] is True
    code, _, stderr = run(["bootstrap", "--service", "a", "--certificate-dir", str(directory)])
    assert code == 2 and "--format grpc" in stderr
