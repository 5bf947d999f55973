"""EDS clusters and assignments made without messages: ``clusters.EdsTemplate`` and
``BaseBuilders``' one ordering per service port.

An EDS cluster's resource is written from a template's bytes with its name spliced in
(``eds_cluster_resource``); it must be exactly ``Resource.of`` of the cluster built field
by field (payload, digest, token, references), for every policy, flavor and mesh mutual
TLS setting. A service's subsets take their endpoints from one ordering of the service's
endpoints: the same tuples ``select_endpoints`` gives.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from tests.translate.meshes import http, service
from tests.translate.test_cluster_policy import CASES
from tests.translate.test_mesh_mtls import mesh_tls
from xdsd.errors import TranslationError
from xdsd.model import DestinationRule, Endpoint, HealthCheck, Locality, Subset, TrafficPolicy
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, MeshTLS
from xdsd.resources import Resource
from xdsd.translate.base import BaseBuilders
from xdsd.translate.clusters import (
    ClusterFlavor,
    EdsTemplate,
    OutboundCluster,
    _configure,
    build_outbound_cluster,
    eds_cluster_resource,
    eds_template,
    is_eds,
)
from xdsd.translate.config_sources import config_source
from xdsd.translate.endpoints import (
    _sorted_payload,
    assignment_payload,
    assignment_resource,
    load_assignment,
    select_endpoints,
)
from xdsd.translate.memo import Memo
from xdsd.translate.mesh_tls import with_mesh_tls
from xdsd.translate.node import ConfigSourceKind
from xdsd.translate.wire import top_level_fields

FLAVORS = (ClusterFlavor.ENVOY_ADS, ClusterFlavor.ENVOY_REST, ClusterFlavor.GRPC_MTLS)
SVC = service("reviews", http(9080), endpoints=(Endpoint("10.0.0.1"),))
CHECKED = dataclasses.replace(
    service("checked", http(8080), endpoints=(Endpoint("10.0.0.2"),)),
    health_check=HealthCheck(path="/healthz"),
)


def field_by_field(spec: OutboundCluster, flavor: ClusterFlavor) -> Resource:
    """The EDS cluster as a message built field by field, then ``Resource.of``."""
    cluster = cluster_pb2.Cluster(name=spec.name, type=cluster_pb2.Cluster.EDS)
    rest = flavor is ClusterFlavor.ENVOY_REST
    source = config_source(ConfigSourceKind.REST if rest else ConfigSourceKind.ADS)
    cluster.eds_cluster_config.eds_config.CopyFrom(source)
    cluster.eds_cluster_config.service_name = spec.name
    _configure(cluster, spec, flavor)
    return Resource.of(spec.name, cluster)


def assert_same(made: Resource, want: Resource) -> None:
    assert made.payload == want.payload
    assert (made.name, made.type_url, made.digest, made.token, made.references) == (
        want.name,
        want.type_url,
        want.digest,
        want.token,
        want.references,
    )
    assert made.parsed is None and made.message == want.message


def specs(tls: MeshTLS) -> list[tuple[OutboundCluster, ClusterFlavor]]:
    out = []
    for policy, svc, _ in CASES.values():
        for flavor in FLAVORS:
            for target in (svc, CHECKED):
                spec = OutboundCluster(target, target.ports[0], None, policy)
                try:
                    spec = with_mesh_tls(spec, flavor, tls)
                    eds_template(spec, flavor)
                except TranslationError:
                    continue  # refused for this flavor: the same with or without templates
                if is_eds(spec, flavor):
                    out.append((spec, flavor))
    return out


@pytest.mark.parametrize("mtls", [False, True])
def test_template_resource_equals_cluster_built_field_by_field(tmp_path: Path, mtls: bool) -> None:
    tls = mesh_tls(tmp_path) if mtls else DEFAULT_MESH_CONFIG.mtls
    cases = specs(tls)
    assert len(cases) > 2 * len(CASES)
    secrets = 0
    for spec, flavor in cases:
        want = field_by_field(spec, flavor)
        for name in (spec.name, "outbound|9080|v1|" + "é" * 300):  # multi-byte lengths
            made = eds_cluster_resource(name, eds_template(spec, flavor))
            if name == spec.name:
                assert_same(made, want)
            # the parsed message is the same cluster, whatever its name
            parsed = cluster_pb2.Cluster.FromString(made.payload)
            assert Resource.of(name, parsed).payload == made.payload
            assert parsed.name == parsed.eds_cluster_config.service_name == name
        built = Resource.of(spec.name, build_outbound_cluster(spec, flavor))
        assert (built.payload, built.references) == (want.payload, want.references)
        secrets += any(ref[0].endswith("Secret") for ref in want.references)
    assert secrets or not mtls  # mesh mutual TLS names SDS secrets: their references kept


def test_template_refuses_bytes_of_another_shape() -> None:
    named = cluster_pb2.Cluster(name="x", type=cluster_pb2.Cluster.EDS)
    named.eds_cluster_config.eds_config.CopyFrom(config_source(ConfigSourceKind.ADS))
    with pytest.raises(ValueError, match="unnamed EDS"):
        EdsTemplate.of(named.SerializeToString(deterministic=True))
    no_eds = cluster_pb2.Cluster(type=cluster_pb2.Cluster.STRICT_DNS)
    with pytest.raises(ValueError, match="unnamed EDS"):
        EdsTemplate.of(no_eds.SerializeToString(deterministic=True))
    served = cluster_pb2.Cluster(type=cluster_pb2.Cluster.EDS)
    served.eds_cluster_config.service_name = "s"
    with pytest.raises(ValueError, match="more than its config source"):
        EdsTemplate.of(served.SerializeToString(deterministic=True))


def test_top_level_fields_reads_every_wire_type_and_refuses_truncation() -> None:
    cluster = cluster_pb2.Cluster(name="n", type=cluster_pb2.Cluster.EDS)
    cluster.lb_subset_config.locality_weight_aware = True
    cluster.upstream_connection_options.tcp_keepalive.keepalive_time.value = 7
    data = cluster.SerializeToString(deterministic=True)
    fields = top_level_fields(data)
    assert [n for n, _ in fields] == [f.number for f, _ in cluster.ListFields()]
    assert b"".join(data[s:e] for _, (s, _, e) in fields) == data
    for cut in range(1, len(data)):
        try:
            top_level_fields(data[:cut])
        except ValueError:
            continue
        # a prefix that ends on a field boundary is a message of fewer fields
        assert cut in {e for _, (_, _, e) in fields}
    with pytest.raises(ValueError, match="wire type"):
        top_level_fields(b"\x0b")  # a group start


def random_service(rng: random.Random, name: str) -> Any:
    endpoints = tuple(
        Endpoint(
            f"10.0.{rng.randrange(3)}.{rng.randrange(4)}",
            labels=tuple(
                sorted({("version", rng.choice(["v1", "v2"])), ("tier", rng.choice("ab"))})
            ),
            locality=rng.choice([Locality(), Locality("r1", "z1"), Locality("r0")]),
            weight=rng.randrange(1, 4),
        )
        for _ in range(rng.randrange(0, 12))
    )
    return service(name, http(9080), http(9090, 7000), endpoints=endpoints)


def test_builders_take_subsets_from_one_ordering_of_the_service() -> None:
    rng = random.Random(7)
    builders = BaseBuilders(Memo(), DEFAULT_MESH_CONFIG.mtls)
    subsets = (
        Subset("v1", (("version", "v1"),)),
        Subset("v2b", (("tier", "b"), ("version", "v2"))),
        Subset("none", (("version", "v9"),)),
    )
    for i in range(200):
        svc = random_service(rng, f"s{i}")
        rule = DestinationRule("r", svc.name, subsets=subsets)
        for port in svc.ports:
            for subset in (None, *subsets):
                spec = OutboundCluster(svc, port, subset, TrafficPolicy(), rule)
                want = select_endpoints(svc, port, spec.selector)
                made = builders.assignment(spec)
                assert made == assignment_resource(spec.name, spec.port, want)
                assert made.payload == assignment_resource(spec.name, spec.port, want).payload


def test_assignment_bytes_in_one_pass_or_sorted_are_the_message_built_by_fields() -> None:
    """In ``select_endpoints`` order (one pass) or any other (sorted first), with equal
    localities as distinct objects, repeated addresses, named ports and plaintext
    endpoints: the same bytes as sorting first (``_sorted_payload``, which
    ``test_endpoints`` holds to the message built field by field), ties in the given
    order."""
    rng = random.Random(11)
    port = http(9080)
    for _ in range(300):
        endpoints = [
            Endpoint(
                f"10.0.0.{rng.randrange(4)}",
                locality=rng.choice([Locality(), Locality("r1", "z1"), Locality("r1", "z1")]),
                weight=rng.randrange(1, 3),
                ports=rng.choice([(), (("http", 7000 + rng.randrange(2)),)]),
                healthy=rng.random() > 0.2,
            )
            for _ in range(rng.randrange(0, 9))
        ]
        plaintext = frozenset(e for e in endpoints if rng.random() < 0.3)
        svc = service("s", port, endpoints=tuple(endpoints))
        for given in (select_endpoints(svc, port), endpoints):
            want = _sorted_payload("c", port, given, plaintext)
            assert assignment_payload("c", port, given, plaintext) == want
            assert assignment_payload("c", port, iter(given), plaintext) == want
            message = load_assignment("c", port, given, plaintext)
            assert message.SerializeToString(deterministic=True) == want
