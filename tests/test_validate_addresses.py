"""``xdsd validate --addresses``: the table of every service's virtual address after
validation, and a block too small for the mesh as an error at the settings' line."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    config.mkdir()
    (config / "web.yaml").write_text(
        "kind: Service\nname: web\nports: [{number: 80, protocol: HTTP}]\n"
        "endpoints: [{address: 10.1.0.1}]\n"
    )
    (config / "db.yaml").write_text(
        "kind: Service\nname: db\nnamespace: data\naddress: 127.1.2.3\n"
        "ports: [{number: 5432, protocol: TCP}]\nendpoints: [{address: 10.1.0.2}]\n"
    )
    (config / "ext.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\n"
        "spec:\n  hosts: [api.example.com]\n  addresses: [10.20.0.0/16]\n"
        "  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n"
    )
    return config


def test_the_table_lists_every_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "xdsd.toml"
    settings.write_text('[mesh.dns]\nvirtual_addresses = "10.99.0.0/24"\n')
    assert (
        main(["validate", "--addresses", "--settings", str(settings), str(_config(tmp_path))]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(
        "ok: 3 files, 3 services, 0 virtual services, 0 destination rules, 0 raw Envoy resources"
    )
    table = out[2:]
    assert table[0].split() == ["ADDRESS", "SERVICE", "NAMES"]
    rows = {line.split()[1]: line.split()[0] for line in table[1:-1]}
    assert rows["data/db"] == "127.1.2.3*"
    assert rows["default/web"].startswith("10.99.0.")
    assert rows["default/ext/api.example.com"].startswith("10.99.0.")  # a range pins nothing
    assert any("ext/api.example.com  api.example.com" in line for line in table)
    assert table[-1] == "* pinned by its file; the others allocated from 10.99.0.0/24"
    # The same table again: addresses are a function of the directory.
    assert (
        main(["validate", "--addresses", "--settings", str(settings), str(tmp_path / "config")])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[2:] == table


def test_a_block_too_small_is_an_error_at_the_settings_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "xdsd.toml"
    settings.write_text('[mesh]\n[mesh.dns]\nttl = "5s"\nvirtual_addresses = "10.99.0.0/30"\n')
    assert main(["validate", "--settings", str(settings), str(_config(tmp_path))]) == 0
    # web and the entry host need one (db pins its own): a /30 has two, so it fits;
    # one more service does not.
    (tmp_path / "config" / "more.yaml").write_text(
        "kind: Service\nname: more\nports: [{number: 80, protocol: HTTP}]\n"
        "endpoints: [{address: 10.1.0.3}]\n"
    )
    assert main(["validate", "--settings", str(settings), str(tmp_path / "config")]) == 1
    assert (
        f"{settings}:4: mesh.dns.virtual_addresses: 3 services need a virtual address but "
        "10.99.0.0/30 has 2 free" in capsys.readouterr().err
    )
    # With [mesh.dns] off the block is not allocated from: nothing to refuse.
    settings.write_text('[mesh.dns]\nenabled = false\nvirtual_addresses = "10.99.0.0/30"\n')
    assert main(["validate", "--settings", str(settings), str(tmp_path / "config")]) == 0
