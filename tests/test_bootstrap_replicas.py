"""``xdsd bootstrap --xds`` with several xdsd replicas: one cluster, a priority each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import envoy_accepts


def bootstrap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "bootstrap", "--service", "api", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def xds_cluster(doc: dict[str, Any]) -> dict[str, Any]:
    clusters = doc["static_resources"]["clusters"]
    return next(c for c in clusters if c["name"] == "xds_cluster")


def addresses(cluster: dict[str, Any]) -> list[tuple[int, str, int]]:
    out = []
    for group in cluster["load_assignment"]["endpoints"]:
        sock = group["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        out.append((group.get("priority", 0), sock["address"], sock["port_value"]))
    return out


def test_repeated_and_comma_separated_replicas_in_order(tmp_path: Path) -> None:
    done = bootstrap("--xds", "127.0.0.1:18000,127.0.0.2:18000", "--xds", "[::1]:18001")
    assert done.returncode == 0, done.stderr
    doc = yaml.safe_load(done.stdout)
    cluster = xds_cluster(doc)
    assert addresses(cluster) == [
        (0, "127.0.0.1", 18000),
        (1, "127.0.0.2", 18000),
        (2, "::1", 18001),
    ]
    assert cluster["type"] == "STATIC"
    outlier = cluster["outlier_detection"]
    assert outlier["consecutive_local_origin_failure"] == 1
    assert outlier["split_external_local_origin_errors"] is True
    assert outlier["max_ejection_percent"] == 100
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {}  # 0: no panic
    grpc = doc["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
    assert grpc["retry_policy"]["retry_back_off"] == {
        "base_interval": "0.250s",
        "max_interval": "2s",
    }
    envoy_accepts(doc, tmp_path / "replicas.json")


def test_one_address_keeps_the_plain_cluster() -> None:
    done = bootstrap("--xds", "127.0.0.1:18000")
    cluster = xds_cluster(yaml.safe_load(done.stdout))
    assert addresses(cluster) == [(0, "127.0.0.1", 18000)]
    assert "outlier_detection" not in cluster and "health_checks" not in cluster


def test_names_make_a_dns_cluster_and_grpc_lists_every_server() -> None:
    done = bootstrap("--xds", "xdsd-1.internal:18000,xdsd-2.internal:18000")
    assert xds_cluster(yaml.safe_load(done.stdout))["type"] == "STRICT_DNS"
    done = bootstrap("--format", "grpc", "--xds", "127.0.0.1:1,[::1]:2")
    servers = [s["server_uri"] for s in json.loads(done.stdout)["xds_servers"]]
    assert servers == ["127.0.0.1:1", "[::1]:2"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "--xds wants HOST:PORT (got '127.0.0.1')"),
        ("127.0.0.1:1,", "--xds wants HOST:PORT (got '')"),
        ("127.0.0.1:70000", "--xds wants HOST:PORT"),
        ("a:1,a:1", "--xds names a:1 twice"),
        (",".join(f"h{n}:1" for n in range(17)), "--xds names 17 addresses; at most 16"),
    ],
)
def test_bad_addresses_are_refused(value: str, message: str) -> None:
    done = bootstrap("--xds", value)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
