"""Registrations as JSON (``/debug/registrations``) and read back (``validate``/``render
--registrations``), hostile snapshots refused; ``[registry]`` settings;
``bootstrap --workload-group``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.cli import main
from xdsd.errors import ConfigError
from xdsd.model import ResourceKey
from xdsd.model.registrations import Health, Locality, Registration
from xdsd.registry.views import parse_registrations, registrations_json
from xdsd.settings import Settings

REG = Registration(
    ResourceKey("WorkloadGroup", "default", "api"),
    "10.0.0.7",
    "n1",
    (("version", "v1"),),
    Locality("eu", "a"),
    "r1",
    100.0,
    0.0,
    Health.HEALTHY,
)


def test_the_view_reads_back() -> None:
    view = registrations_json("r1", [REG], lambda key: True)
    assert view["replica"] == "r1"
    (item,) = view["registrations"]
    assert item["group"] == "api" and item["node"] == "n1" and item["connected"] is True
    assert parse_registrations(json.loads(json.dumps(view))) == (REG,)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, "registrations"),
        ({"registrations": [1]}, "must be an object"),
        ({"registrations": [{"namespace": "d", "group": "g"}]}, "address"),
        ({"registrations": [{"namespace": "d", "group": "g", "address": "x"}]}, "not an IP"),
        (
            {
                "registrations": [
                    {"namespace": "d", "group": "g", "address": "1.1.1.1", "since": math.inf}
                ]
            },
            "finite",
        ),
        (
            {
                "registrations": [
                    {"namespace": "d", "group": "g", "address": "1.1.1.1", "health": "MEH"}
                ]
            },
            "health",
        ),
        (
            {
                "registrations": [
                    {"namespace": "d", "group": "g", "address": "1.1.1.1", "labels": {"a": 1}}
                ]
            },
            "labels",
        ),
    ],
)
def test_hostile_snapshots_are_refused(data: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_registrations(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        k: JSON | st.just("10.0.0.1")
        for k in ("namespace", "group", "address", "node", "labels", "locality", "since", "health")
    },
)


@fuzz_settings()
@given(st.lists(FIELDS, max_size=5) | JSON)
def test_fuzz_snapshots_parse_or_refuse(data: Any) -> None:
    with deadline("test_fuzz_snapshots_parse_or_refuse"):
        try:
            parsed = parse_registrations(
                {"registrations": data} if isinstance(data, list) else data
            )
        except ValueError:
            return
        for r in parsed:
            assert r.key.count("/") >= 2


def test_registry_settings() -> None:
    s = Settings().merged(
        {"registry": {"grace": "2.5s", "max_registrations": 7, "replica": "a-1"}}, source="t"
    )
    assert s.registry.grace.total_seconds() == 2.5
    assert (s.registry.max_registrations, s.registry.replica) == (7, "a-1")
    assert Settings().merged({"registry": {"grace": 4}}, source="t").registry.grace.seconds == 4
    for bad in (
        {"grace": -1},
        {"grace": "soon"},
        {"max_registrations": 0},
        {"replica": "a b"},
        {"x": 1},
    ):
        with pytest.raises(ConfigError):
            Settings().merged({"registry": bad}, source="t")


def _boot(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "bootstrap",
            "--service",
            "api",
            "--output",
            str(tmp_path / "b.yaml"),
            *extra,
        ]
    )


def test_bootstrap_writes_the_group(tmp_path: Path) -> None:
    assert _boot(tmp_path, "--workload-group", "api", "--instance-ip", "127.0.0.1") == 0
    doc = yaml.safe_load((tmp_path / "b.yaml").read_text())
    assert doc["node"]["metadata"]["workload_group"] == "api"
    assert doc["node"]["metadata"]["instance_ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    "extra",
    [
        ("--workload-group", "api"),  # no --instance-ip
        ("--workload-group", "Api", "--instance-ip", "127.0.0.1"),
        ("--workload-group", "api", "--instance-ip", "127.0.0.1", "--transport", "rest"),
        ("--workload-group", "api", "--instance-ip", "127.0.0.1", "--role", "gateway"),
    ],
)
def test_bootstrap_refuses_what_cannot_register(tmp_path: Path, extra: tuple[str, ...]) -> None:
    assert _boot(tmp_path, *extra) != 0


def test_bootstrap_checks_the_group_against_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c"
    config.mkdir()
    (config / "s.toml").write_text(
        'kind = "Service"\nname = "api"\n[[ports]]\nnumber = 80\nprotocol = "HTTP"\n'
    )
    (config / "g.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: web}\n"
        "spec: {metadata: {labels: {app: web}}, template: {}}\n"
    )
    ip = ("--instance-ip", "127.0.0.1", "--config-dir", str(config))
    assert _boot(tmp_path, "--workload-group", "web", *ip) == 1
    assert _boot(tmp_path, "--workload-group", "nope", *ip) == 1


def test_render_with_a_registrations_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c"
    config.mkdir()
    (config / "s.toml").write_text(
        'kind = "Service"\nname = "api"\n[[ports]]\nname = "http"\nnumber = 80\nprotocol = "HTTP"\n'
    )
    (config / "g.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: api}\n"
        "spec: {metadata: {labels: {app: api}}, template: {}}\n"
    )
    snap = tmp_path / "regs.json"
    snap.write_text(json.dumps(registrations_json("r1", [REG], lambda k: True)))
    args = ["render", "--config-dir", str(config), "--service", "client", "--compact"]
    assert main([*args, "--registrations", str(snap)]) == 0
    out = json.loads(capsys.readouterr().out)
    (cla,) = [c for c in out["resources"]["endpoints"] if "api" in c["cluster_name"]]
    addresses = [
        lb["endpoint"]["address"]["socket_address"]["address"]
        for g in cla["endpoints"]
        for lb in g["lb_endpoints"]
    ]
    assert addresses == ["10.0.0.7"]
    assert main(["validate", str(config), "--registrations", str(snap)]) == 0
    snap.write_text("{not json")
    assert main([*args, "--registrations", str(snap)]) == 1
