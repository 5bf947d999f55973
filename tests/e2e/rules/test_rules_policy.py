"""Behaviour of DestinationRule traffic policies, proven by real requests through a real
Envoy sidecar configured by xdsd (one mesh for the module; each test its own host).

The client sidecar runs in locality ``r1/z1``; upstreams without a locality are equally
far from it, so only the locality tests see a difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.e2e.upstreams import Reply

RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool}
spec:
  host: pool
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 100}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier}
spec:
  host: outlier
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hash}
spec:
  host: hash
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
        ringHash: {minimumRingSize: 1024}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: failover}
spec:
  host: failover
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover: [{from: r1, to: r2}]
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: distribute}
spec:
  host: distribute
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: r1/z1/*
          to: {"r1/z1/*": 80, "r2/z1/*": 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tls-simple}
spec:
  host: tls-simple
  trafficPolicy:
    tls:
      mode: SIMPLE
      caCertificates: certs/ca.pem
      sni: backend.tls.test
      subjectAltNames: [backend.tls.test]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tls-mutual}
spec:
  host: tls-mutual
  trafficPolicy:
    portLevelSettings:
    - port: {number: PORT}
      tls:
        mode: MUTUAL
        caCertificates: certs/ca.pem
        clientCertificate: certs/client.pem
        privateKey: certs/client-key.pem
        sni: backend.tls.test
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tls-wrong-ca}
spec:
  host: tls-wrong-ca
  trafficPolicy:
    tls:
      mode: MUTUAL
      caCertificates: other-ca/ca.pem
      clientCertificate: certs/client.pem
      privateKey: certs/client-key.pem
      sni: backend.tls.test
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: port-own-policy}
spec:
  host: port-own-policy
  trafficPolicy:
    tls:
      mode: SIMPLE
      caCertificates: certs/ca.pem
      sni: backend.tls.test
    portLevelSettings:
    - port: {number: PORT}
      connectionPool:
        tcp: {maxConnections: 100}
"""


class World:
    def __init__(self, tmp: Path) -> None:
        self.mesh = TrafficMesh(tmp)
        m = self.mesh
        ca = CertAuthority(m.config / "certs")
        CertAuthority(m.config / "other-ca", name="another CA")
        server = ca.issue("server", dns_names=["backend.tls.test"])
        ca.issue("client", uris=["spiffe://xdsd.test/client"])
        self.pool = m.upstream("pool")
        self.outlier = {n: m.upstream(f"outlier-{n}") for n in ("good", "bad")}
        self.hash = [m.upstream(f"hash-{i}") for i in range(4)]
        self.local = m.upstream("failover-local", locality="r1/z1")
        self.remote = m.upstream("failover-remote", locality="r2/z1")
        self.near = m.upstream("distribute-near", locality="r1/z1")
        self.far = m.upstream("distribute-far", locality="r2/z1")
        self.tls_simple = m.upstream("tls-simple", tls=ca.server_context(server))
        mutual = ca.server_context(server, require_client_cert=True)
        self.tls_mutual = m.upstream("tls-mutual", tls=mutual)
        self.tls_wrong = m.upstream("tls-wrong-ca", tls=mutual)
        m.service("pool", [self.pool])
        m.service("outlier", self.outlier.values())
        m.service("hash", self.hash)
        m.service("failover", [self.local, self.remote])
        m.service("distribute", [self.near, self.far])
        m.service("tls-simple", [self.tls_simple])
        m.service("tls-mutual", [self.tls_mutual])
        m.service("tls-wrong-ca", [self.tls_wrong])
        self.port_own = m.upstream("port-own-policy")  # plaintext
        m.service("port-own-policy", [self.port_own])
        m.rule("policies", RULES.replace("PORT", str(m.port)))
        self.client: Sidecar = m.start(locality="r1/z1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("rules-policy"))
    try:
        yield w
    finally:
        w.mesh.stop()


def serving(client: Sidecar, host: str) -> None:
    """Wait until ``host`` answers 200 through the sidecar."""
    client.wait_for(lambda: client.request(host).status == 200, f"{host} to be served")


def cluster_stat(client: Sidecar, host: str, stat: str) -> int:
    name = f"cluster.outbound|{client.default_port}||{host}.default.svc.cluster.local.{stat}"
    return client.stats().get(name, 0)


def test_connection_pool_overflow_gives_503(world: World) -> None:
    """trafficPolicy.connectionPool.tcp.maxConnections and
    http.http1MaxPendingRequests (→ circuit_breakers): with one connection and one
    pending request allowed, slow requests in parallel overflow with 503."""
    c = world.client
    serving(c, "pool")
    before = world.pool.hits

    def slow(_: int) -> Reply:
        return c.request("pool", headers={"x-echo-delay-ms": "1500"})

    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(slow, range(6)))
    statuses = Counter(r.status for r in replies)
    assert statuses[200] >= 1 and statuses[503] >= 1, statuses
    overflowed = [r for r in replies if r.status == 503]
    assert all(r.headers.get("x-envoy-overloaded") == "true" for r in overflowed), overflowed
    assert cluster_stat(c, "pool", "upstream_rq_pending_overflow") >= statuses[503]
    assert world.pool.hits - before == statuses[200]  # overflowed ones never left Envoy


def test_outlier_detection_ejects_a_failing_endpoint(world: World) -> None:
    """trafficPolicy.outlierDetection consecutive5xxErrors, interval, baseEjectionTime,
    maxEjectionPercent: an endpoint answering 503 is ejected, then every request
    succeeds on the other one and the failing one gets no more requests."""
    c = world.client
    serving(c, "outlier")
    world.outlier["bad"].status = 503
    try:
        c.wait_for(
            lambda: all(c.request("outlier").status == 200 for _ in range(10)),
            "the failing endpoint to be ejected",
        )
        before = world.outlier["bad"].hits
        replies = [c.request("outlier") for _ in range(30)]
        assert all(r.status == 200 and r.backend == "outlier-good" for r in replies)
        assert world.outlier["bad"].hits == before
        assert cluster_stat(c, "outlier", "outlier_detection.ejections_enforced_total") >= 1
    finally:
        world.outlier["bad"].reset()


def test_consistent_hash_keeps_a_header_on_one_endpoint(world: World) -> None:
    """trafficPolicy.loadBalancer.consistentHash.httpHeaderName (→ RING_HASH cluster and
    a header hash_policy on the route): requests with one x-user value all land on one
    endpoint; different values spread over several."""
    c = world.client
    serving(c, "hash")
    chosen: dict[str, str] = {}
    for user in (f"user-{i}" for i in range(12)):
        backends = {c.request("hash", headers={"x-user": user}).backend for _ in range(6)}
        assert len(backends) == 1 and "" not in backends, (user, backends)
        chosen[user] = backends.pop()
    assert len(set(chosen.values())) >= 2, chosen


def test_locality_failover_moves_traffic_when_local_endpoints_fail(world: World) -> None:
    """trafficPolicy.loadBalancer.localityLbSetting.failover with outlierDetection (→
    per-caller priorities in the ClusterLoadAssignment): a caller in r1/z1 uses only the
    r1/z1 endpoint; once it fails and is ejected, traffic moves to r2."""
    c = world.client
    serving(c, "failover")
    assert {c.request("failover").backend for _ in range(30)} == {"failover-local"}
    world.local.status = 503
    try:
        c.wait_for(
            lambda: all(c.request("failover").backend == "failover-remote" for _ in range(10)),
            "traffic to fail over to r2",
        )
        before = world.local.hits
        assert all(c.request("failover").status == 200 for _ in range(20))
        assert world.local.hits == before
    finally:
        world.local.reset()


def test_locality_distribute_weights(world: World) -> None:
    """trafficPolicy.loadBalancer.localityLbSetting.distribute (→ per-caller locality
    load_balancing_weight and locality_weighted_lb_config): from r1/z1, 80 % stays in
    r1/z1 and 20 % goes to r2/z1."""
    c = world.client
    serving(c, "distribute")
    counts = Counter(c.request("distribute").backend for _ in range(400))
    # 320 expected near: binomial sd 8; ±40 is 5 sd
    assert 280 <= counts["distribute-near"] <= 360, counts
    assert counts["distribute-near"] + counts["distribute-far"] == 400, counts


def test_tls_simple_origination(world: World) -> None:
    """trafficPolicy.tls mode SIMPLE with caCertificates (relative to the config
    directory), sni and subjectAltNames (→ UpstreamTlsContext): plain HTTP from the
    caller reaches a TLS backend."""
    c = world.client
    serving(c, "tls-simple")
    reply = c.request("tls-simple", "/secure")
    assert reply.status == 200 and reply.backend == "tls-simple"
    assert world.tls_simple.seen[-1].path == "/secure"


def test_tls_mutual_origination_and_wrong_ca(world: World) -> None:
    """trafficPolicy.portLevelSettings[].tls mode MUTUAL with clientCertificate,
    privateKey and caCertificates: a backend requiring client certificates is reached;
    with a CA that did not sign the backend's certificate the connection is refused."""
    c = world.client
    serving(c, "tls-mutual")
    assert c.request("tls-mutual").backend == "tls-mutual"
    # the certificates came over SDS (xdsd read the files), not as file names
    dump = c.envoy.admin_json("/config_dump?resource=dynamic_active_secrets")
    secrets = sorted(s["name"].split(":")[0] for s in dump.get("configs", []))
    assert "file-cert" in secrets and "file-root" in secrets, secrets
    clusters = c.envoy.admin_text("/config_dump?resource=dynamic_active_clusters")
    assert "tls_certificate_sds_secret_configs" in clusters and '"filename"' not in clusters
    reply = c.request("tls-wrong-ca")
    assert reply.status == 503 and reply.backend == "", reply
    assert world.tls_wrong.hits == 0
    assert cluster_stat(c, "tls-wrong-ca", "ssl.fail_verify_error") >= 1


def test_port_level_settings_do_not_inherit_the_top_level_tls(world: World) -> None:
    """A ``portLevelSettings`` entry replaces the top-level policy for its port, as in
    Istio: the top-level ``tls: SIMPLE`` does not reach a port whose entry sets only a
    connection pool, so the sidecar speaks plaintext to the plaintext upstream."""
    c = world.client
    serving(c, "port-own-policy")
    reply = c.request("port-own-policy", "/plain")
    assert reply.status == 200 and reply.backend == "port-own-policy"
    assert cluster_stat(c, "port-own-policy", "ssl.handshake") == 0


def test_tls_origination_by_a_rest_client_polls_its_secrets(world: World) -> None:
    """A REST-polling sidecar's TLS contexts fetch their SDS secrets by REST too: it
    reaches the MUTUAL backend with certificates it polled from xdsd."""
    c = world.mesh.start("rest-caller", transport="rest")
    serving(c, "tls-mutual")
    assert c.request("tls-mutual").backend == "tls-mutual"
    dump = c.envoy.admin_json("/config_dump?resource=dynamic_active_clusters")
    [cluster] = [
        d["cluster"]
        for d in dump["configs"]
        if d["cluster"]["name"].endswith("tls-mutual.default.svc.cluster.local")
    ]
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    [certificate] = common["tls_certificate_sds_secret_configs"]
    assert certificate["name"].startswith("file-cert:")
    assert certificate["sds_config"]["api_config_source"]["api_type"] == "REST"
    secrets = c.envoy.admin_json("/config_dump?resource=dynamic_active_secrets")
    assert certificate["name"] in [s["name"] for s in secrets["configs"]]
