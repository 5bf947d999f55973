"""DestinationRule files → model: every traffic-policy field read into its dataclass."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.pem import write_fake_pem
from xdsd.model import (
    ClientTLS,
    ConnectionPool,
    ConsistentHash,
    HashKind,
    HttpPool,
    LoadBalancer,
    LocalityFailover,
    LocalityLbSetting,
    LocalityWeights,
    OutlierDetection,
    PortTrafficPolicy,
    TcpKeepalive,
    TcpPool,
    TLSMode,
    TrafficPolicy,
)
from xdsd.model.rules import SimpleLB
from xdsd.sources import load_directory

SERVICE = """\
kind = "Service"
name = "reviews"

[[ports]]
number = 9080
protocol = "HTTP"

[[endpoints]]
address = "10.0.0.1"
labels = { version = "v1" }
"""

RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: session, path: /, ttl: 30s}
        maglev: {tableSize: 65537}
      localityLbSetting:
        failover: [{from: r1, to: r2}]
        failoverPriority: [tier, "env=prod"]
        enabled: true
    connectionPool:
      tcp:
        maxConnections: 10
        connectTimeout: 250ms
        tcpKeepalive: {probes: 3, time: 60s, interval: 5s}
        maxConnectionDuration: 1h
        idleTimeout: 30s
      http:
        http1MaxPendingRequests: 1
        http2MaxRequests: 2
        maxRequestsPerConnection: 3
        maxRetries: 4
        idleTimeout: 5s
        h2UpgradePolicy: upgrade
        useClientProtocol: false
        maxConcurrentStreams: 6
    outlierDetection:
      consecutive5xxErrors: 0
      consecutiveGatewayErrors: 3
      consecutiveLocalOriginFailures: 2
      splitExternalLocalOriginErrors: true
      interval: 1s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
      minHealthPercent: 20
    tls:
      mode: MUTUAL
      caCertificates: certs/ca.pem
      clientCertificate: certs/cert.pem
      privateKey: KEY
      subjectAltNames: [reviews.example]
      sni: reviews.example
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer:
        consistentHash: {useSourceIp: true, minimumRingSize: 64}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
        localityLbSetting:
          distribute: [{from: "r1/*", to: {"r1/*": 75, "r2/*": 25}}]
      tls: {mode: SIMPLE, insecureSkipVerify: true}
"""


def test_every_policy_field_reaches_the_model(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        write_fake_pem(tmp_path / "certs" / name)
    key = tmp_path / "certs" / "key.pem"
    (tmp_path / "s.toml").write_text(SERVICE)
    (tmp_path / "d.yaml").write_text(RULE.replace("KEY", str(key)))
    (rule,) = load_directory(str(tmp_path)).mesh.destination_rules
    certs = str(tmp_path / "certs")
    assert rule.traffic_policy == TrafficPolicy(
        load_balancer=LoadBalancer(
            consistent_hash=ConsistentHash(
                HashKind.COOKIE,
                "session",
                timedelta(seconds=30),
                "/",
                maglev=True,
                table_size=65537,
            ),
            locality=LocalityLbSetting(
                failover=(LocalityFailover("r1", "r2"),),
                failover_priority=("tier", "env=prod"),
                enabled=True,
            ),
        ),
        connection_pool=ConnectionPool(
            TcpPool(
                10,
                timedelta(milliseconds=250),
                TcpKeepalive(3, timedelta(seconds=60), timedelta(seconds=5)),
                timedelta(hours=1),
                timedelta(seconds=30),
            ),
            HttpPool(1, 2, 3, 4, timedelta(seconds=5), "UPGRADE", False, 6),
        ),
        outlier_detection=OutlierDetection(
            0, 3, 2, True, timedelta(seconds=1), timedelta(minutes=1), 50, 20
        ),
        tls=ClientTLS(
            TLSMode.MUTUAL,
            f"{certs}/cert.pem",
            f"{certs}/key.pem",
            f"{certs}/ca.pem",
            ("reviews.example",),
            "reviews.example",
        ),
        port_level_settings=(
            PortTrafficPolicy(
                9080,
                LoadBalancer(
                    consistent_hash=ConsistentHash(HashKind.SOURCE_IP, minimum_ring_size=64)
                ),
            ),
        ),
    )
    subset = rule.subsets[0].traffic_policy
    assert subset == TrafficPolicy(
        load_balancer=LoadBalancer(
            SimpleLB.ROUND_ROBIN,
            locality=LocalityLbSetting(
                distribute=(LocalityWeights("r1/*", (("r1/*", 75), ("r2/*", 25))),)
            ),
        ),
        tls=ClientTLS(TLSMode.SIMPLE, insecure_skip_verify=True),
    )


def test_relative_certificate_paths_are_relative_to_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same files load the same paths whatever the current directory is."""
    root = tmp_path / "config"
    (root / "certs").mkdir(parents=True)
    write_fake_pem(root / "certs" / "ca.pem")
    (root / "s.toml").write_text(SERVICE)
    (root / "d.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
        "spec:\n  host: reviews\n  trafficPolicy:\n"
        "    tls: {mode: SIMPLE, caCertificates: certs/ca.pem}\n"
    )
    monkeypatch.chdir(tmp_path)
    (rule,) = load_directory("config").mesh.destination_rules
    assert rule.traffic_policy is not None and rule.traffic_policy.tls is not None
    assert rule.traffic_policy.tls.ca_certificates == str(root / "certs" / "ca.pem")
