"""Snapshot: versions from resource tokens, ``extend`` equal to ``build``, consistency."""

from __future__ import annotations

import itertools

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import InconsistentSnapshotError
from xdsd.resources import CLUSTER, ENDPOINT, Resource, TypeUrl


def eds(name: str) -> Resource:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    return Resource.of(name, cluster)


def static(name: str, timeout: int = 1) -> Resource:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.seconds = timeout
    return Resource.of(name, cluster)


def cla(name: str, port: int = 80) -> Resource:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    sock = assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    sock.address, sock.port_value = "10.0.0.1", port
    return Resource.of(name, assignment)


def contents(snap: Snapshot) -> dict[TypeUrl, list[tuple[str, str]]]:
    """Every type's (name, digest) pairs in the snapshot's order."""
    return {t: [(n, r.digest) for n, r in b.items()] for t, b in snap.resources.items()}


BASE = [eds("b"), cla("b"), eds("d"), cla("d"), static("f")]

CASES = {
    "nothing": ([], []),
    "replace": ([static("f", 2), cla("b", 81)], []),
    "add in the middle and at the ends": ([static("a"), static("c"), static("z")], []),
    "remove": ([], [(CLUSTER, "f")]),
    "remove a pair and add another": ([eds("e"), cla("e")], [(CLUSTER, "d"), (ENDPOINT, "d")]),
    "remove and add back changed": ([static("f", 3)], [(CLUSTER, "f")]),
}


@pytest.mark.parametrize(("added", "removed"), CASES.values(), ids=CASES.keys())
def test_extend_gives_what_build_gives(
    added: list[Resource], removed: list[tuple[TypeUrl, str]]
) -> None:
    base = Snapshot.build(BASE)
    extended = Snapshot.extend(base, added, removed=removed)
    final = {(r.type_url, r.name): r for r in BASE}
    for key in removed:
        final.pop(key, None)
    final.update({(r.type_url, r.name): r for r in added})
    built = Snapshot.build(final.values())
    assert contents(extended) == contents(built)
    assert dict(extended.versions) == dict(built.versions)
    assert extended.version_for(CLUSTER, ["b", "f"]) == built.version_for(CLUSTER, ["f", "b"])


def test_versions_do_not_depend_on_order_and_follow_content() -> None:
    versions = {Snapshot.build(p).version(CLUSTER) for p in itertools.permutations(BASE[:4])}
    assert len(versions) == 1
    assert Snapshot.build([static("f", 2)]).version(CLUSTER) != Snapshot.build(
        [static("f", 1)]
    ).version(CLUSTER)
    # A name is part of the version: the same content under another name differs.
    assert Snapshot.build([static("x")]).version(CLUSTER) != Snapshot.build([static("y")]).version(
        CLUSTER
    )
    assert Snapshot.build([]).version(CLUSTER) == Snapshot.build([cla("x")]).version(CLUSTER)


def test_untouched_types_are_shared_with_the_base() -> None:
    base = Snapshot.build(BASE)
    extended = Snapshot.extend(base, [static("g")])
    assert extended.get(ENDPOINT) is base.get(ENDPOINT)
    assert extended.version(ENDPOINT) == base.version(ENDPOINT)


def test_extend_checks_what_it_adds_and_what_it_removes() -> None:
    base = Snapshot.build(BASE)
    with pytest.raises(InconsistentSnapshotError, match="missing endpoints 'x'"):
        Snapshot.extend(base, [eds("x")])
    with pytest.raises(InconsistentSnapshotError, match="'b' references missing endpoints 'b'"):
        Snapshot.extend(base, [], removed=[(ENDPOINT, "b")])
    with pytest.raises(InconsistentSnapshotError, match="two clusters named 'x'"):
        Snapshot.extend(base, [static("x", 1), static("x", 2)])
    unchecked = Snapshot.extend(base, [eds("x")], check=False)
    with pytest.raises(InconsistentSnapshotError):
        unchecked.check_consistency()
