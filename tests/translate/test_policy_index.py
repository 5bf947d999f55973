"""The policy index selects exactly what a scan of every policy selects, for every
namespace and label set, across root-namespace, namespace-wide, empty and multi-label
selectors of all three kinds."""

from __future__ import annotations

import itertools
import random

from xdsd.model import Mesh
from xdsd.model.mesh_config import DEFAULT_MESH_CONFIG, MTLSMode
from xdsd.model.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    WorkloadSelector,
)
from xdsd.translate.policy_index import PolicyIndex
from xdsd.translate.workload_security import workload_policies

NAMESPACES = ("default", "shop", "istio-system")
PAIRS = (("app", "a"), ("app", "b"), ("version", "v1"), ("tier", "web"))


def _selector(rng: random.Random) -> WorkloadSelector | None:
    choice = rng.randrange(4)
    if choice == 0:
        return None
    if choice == 1:
        return WorkloadSelector(())
    return WorkloadSelector(tuple(rng.sample(PAIRS, choice - 1)))


def _mesh(seed: int) -> Mesh:
    rng = random.Random(seed)
    return Mesh(
        authorization_policies=tuple(
            AuthorizationPolicy(f"a{i}", namespace=rng.choice(NAMESPACES), selector=_selector(rng))
            for i in range(40)
        ),
        peer_authentications=tuple(
            PeerAuthentication(
                f"p{i}",
                namespace=rng.choice(NAMESPACES),
                selector=_selector(rng),
                mode=MTLSMode.DISABLE,
            )
            for i in range(15)
        ),
        request_authentications=tuple(
            RequestAuthentication(
                f"r{i}", namespace=rng.choice(NAMESPACES), selector=_selector(rng)
            )
            for i in range(15)
        ),
    )


def test_the_index_selects_what_a_full_scan_selects() -> None:
    label_sets = [
        tuple(sorted(c)) for n in range(len(PAIRS) + 1) for c in itertools.combinations(PAIRS, n)
    ]
    label_sets = [ls for ls in label_sets if len({k for k, _ in ls}) == len(ls)]  # one per key
    for seed in range(5):
        mesh = _mesh(seed)
        index = PolicyIndex(mesh)
        selected = 0
        for namespace in (*NAMESPACES, "elsewhere"):
            for labels in label_sets:
                expected = workload_policies(mesh, namespace, labels, DEFAULT_MESH_CONFIG)
                assert index.select(namespace, labels, DEFAULT_MESH_CONFIG) == expected
                selected += len(expected.authorization)
        assert selected > 0


def test_a_mesh_without_policies() -> None:
    mesh = Mesh()
    assert PolicyIndex(mesh).select("default", (), DEFAULT_MESH_CONFIG) == workload_policies(
        mesh, "default", (), DEFAULT_MESH_CONFIG
    )
