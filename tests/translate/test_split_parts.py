"""A cold translation's per-service clusters and assignments built partly in a forked
child (``SharedClusters.prepare``, ``xdsd.forked.ForkSplit``) give exactly what the
serial build gives: every resource, version and problem in its order, whatever the
child does, and the translations that follow behave the same."""

from __future__ import annotations

import itertools
import marshal
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.meshgen import write_mesh
from tests.paths import CONFORMANCE, EXAMPLE_CONFIG
from tests.translate.test_mesh_mtls import CONFIG as MTLS_CONFIG
from tests.translate.test_mesh_mtls import mesh_tls, pki
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import ConfigError, Problem, TranslationError
from xdsd.forked import ForkSplit
from xdsd.model import Mesh
from xdsd.model.mesh_config import MeshConfig
from xdsd.resources import Resource
from xdsd.sources import DirectoryLoader, load_directory
from xdsd.translate import ClientKind, ConfigSourceKind, MeshTranslation, NodeClass, Role, shared
from xdsd.translate.base import BaseBuilders
from xdsd.translate.clusters import ClusterFlavor, OutboundCluster
from xdsd.translate.shared import Split

Work = Callable[[], bytes]
Collect = Callable[[], bytes | None]

IP = "127.0.6.1"  # inbound listeners apart from the outbound ones (127.0.0.1)
CLASSES = [
    NodeClass("svc-00001", instance_ip=IP),
    NodeClass("svc-00002", config_source=ConfigSourceKind.REST, instance_ip=IP),
    NodeClass("svc-00003", client=ClientKind.GRPC),
    NodeClass("edge", role=Role.GATEWAY),
    NodeClass("svc-00004", labels=(("app", "scoped"),), instance_ip=IP),
    NodeClass("svc-00005", client=ClientKind.MOSN, instance_ip=IP),
]
SCOPED_SIDECAR = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: scoped, namespace: default}
spec:
  workloadSelector: {labels: {app: scoped}}
  egress:
  - hosts: [./svc-00001.default.svc.cluster.local, ./svc-00029.default.svc.cluster.local]
"""
SERVICES = 30
#: Istio's translation test inputs that load alone: together, services in two
#: namespaces (one with a Sidecar), ServiceEntries, DestinationRules and routes.
CONFORMANCE_FILES = ("none.yaml", "byon.yaml", "external_services.yaml", "rule-default-route.yaml")


@pytest.fixture(autouse=True)
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "SPLIT_THRESHOLD", 2)


class Counted:
    """A split that records what its children gave (None: no bytes)."""

    def __init__(self, change: Callable[[Work], Collect | None] | None = None) -> None:
        self.fork = ForkSplit(when_idle=False)
        self.change = change
        self.given: list[bytes | None] = []

    def __call__(self, work: Work) -> Collect | None:
        collect = self.change(work) if self.change is not None else self.fork(work)
        if collect is None:
            return None

        def counted() -> bytes | None:
            data = collect()
            self.given.append(data)
            return data

        return counted

    def abandon(self) -> int:
        """``ForkSplit.abandon`` of the real split (what ``MeshState`` calls)."""
        return self.fork.abandon()


def generated(root: Path, sidecar: bool = True) -> Path:
    config = write_mesh(root, SERVICES)
    if sidecar:
        (config / "rules" / "scoped-sidecar.yaml").write_text(SCOPED_SIDECAR)
    return config


def full(snap: Snapshot) -> object:
    """Every resource's name, payload, digest, references and token, and the versions."""
    resources = {
        t: [(n, r.payload, r.digest, r.references, r.token) for n, r in b.items()]
        for t, b in snap.resources.items()
    }
    return resources, dict(snap.versions)


def outcome(translation: MeshTranslation, node: NodeClass) -> object:
    try:
        return full(translation.snapshot_for(node))
    except TranslationError as e:
        return list(e.problems)


def outcomes(translation: MeshTranslation, classes: list[NodeClass]) -> list[object]:
    return [outcome(translation, node) for node in classes]


def compare(
    mesh: Mesh, classes: list[NodeClass], split: Split, mesh_config: MeshConfig | None = None
) -> list[object]:
    """The outcomes with ``split`` (asserted equal to the serial ones); returned."""
    extra = {"mesh_config": mesh_config} if mesh_config is not None else {}
    serial = outcomes(MeshTranslation(mesh, **extra), classes)
    forked = outcomes(MeshTranslation(mesh, split=split, **extra), classes)
    assert forked == serial
    return serial


def test_generated_mesh_every_class_identical(tmp_path: Path) -> None:
    mesh = load_directory(str(generated(tmp_path))).mesh
    split = Counted()
    got = compare(mesh, CLASSES, split)
    assert all(isinstance(o, tuple) for o in got)  # every class translated
    # A child per flavor (ADS, REST, gRPC), each giving its share.
    assert len(split.given) == 3 and all(split.given)


def test_a_child_for_the_first_flavor_only_then_serial(tmp_path: Path) -> None:
    """The REST and gRPC flavors built here after a child built the ADS flavor's share
    (their assignments taken over from it) are the serial ones."""
    mesh = load_directory(str(generated(tmp_path))).mesh
    fork = ForkSplit(when_idle=False)
    calls: list[int] = []

    def once(work: Work) -> Collect | None:
        calls.append(1)
        return fork(work) if len(calls) == 1 else None

    split = Counted(once)
    compare(mesh, CLASSES, split)
    assert len(split.given) == 1 and split.given[0]


def test_each_class_first(tmp_path: Path) -> None:
    """Whichever class comes first (its flavor's child overlapping its parts)."""
    mesh = load_directory(str(generated(tmp_path))).mesh
    for node in CLASSES:
        split = Counted()
        compare(mesh, [node, *CLASSES], split)
        assert split.given and all(split.given)


def test_example_config_and_conformance_inputs(tmp_path: Path) -> None:
    from tests.translate.test_incremental import CLASSES as EXAMPLE_CLASSES

    mesh = load_directory(str(EXAMPLE_CONFIG)).mesh
    split = Counted()
    compare(mesh, EXAMPLE_CLASSES, split)
    assert split.given and all(split.given)
    config = tmp_path / "conformance"
    config.mkdir()
    for name in CONFORMANCE_FILES:
        shutil.copy(CONFORMANCE / "istio" / "testdata" / name, config)
    mesh = load_directory(str(config)).mesh
    classes = [
        NodeClass("app", namespace="none", instance_ip=IP),  # its namespace's Sidecar
        NodeClass("app", namespace="testns", instance_ip=IP),
        NodeClass("gw", namespace="testns", role=Role.GATEWAY),
        NodeClass("app", namespace="testns", client=ClientKind.GRPC),
        NodeClass("app", namespace="testns", config_source=ConfigSourceKind.REST),
    ]
    split = Counted()
    got = compare(mesh, classes, split)
    assert sum(isinstance(o, tuple) for o in got) >= 3
    assert split.given and all(split.given)


def test_mesh_mtls_on(tmp_path: Path) -> None:
    pki(tmp_path)
    tls = mesh_tls(tmp_path)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MTLS_CONFIG)
    mesh = load_directory(str(config), mesh_tls=tls).mesh
    classes = [
        NodeClass("web", outbound_ip="127.0.5.5"),
        NodeClass("api", config_source=ConfigSourceKind.REST, outbound_ip="127.0.5.5"),
        NodeClass("ingress", role=Role.GATEWAY),
        NodeClass("api", client=ClientKind.GRPC),
    ]
    split = Counted()
    got = compare(mesh, classes, split, MeshConfig(mtls=tls))
    assert all(isinstance(o, tuple) for o in got)
    assert split.given and all(split.given)


def _tampered(change: Callable[[tuple[list[object], ...]], tuple[object, ...]]) -> Split:
    """A split whose child's bytes are decoded, changed and encoded again."""
    fork = ForkSplit(when_idle=False)

    def split(work: Work) -> Collect | None:
        collect = fork(work)
        assert collect is not None

        def changed() -> bytes | None:
            data = collect()
            assert data is not None
            return marshal.dumps(change(marshal.loads(data)))

        return changed

    return split


def _child_does(make: Callable[[Work], Work]) -> Split:
    fork = ForkSplit(when_idle=False)
    return lambda work: fork(make(work))


def _boom() -> bytes:
    raise RuntimeError("boom")


FAULTS: dict[str, Split] = {
    "no child": lambda work: None,
    "collect gives None": lambda work: lambda: None,
    "child raises": _child_does(lambda work: _boom),
    "child returns nothing": _child_does(lambda work: lambda: b""),
    "truncated": _child_does(lambda work: lambda: work()[:-9]),
    "garbled": _child_does(lambda work: lambda: bytes(b ^ 0x5A for b in work())),
    "not a tuple": _child_does(lambda work: lambda: marshal.dumps([1, 2, 3])),
    "one service dropped": _tampered(
        lambda d: (d[0][1:], d[1][2:], *(x[d[1][0] + d[1][1] :] for x in d[2:]))
    ),
    "a service before the share": _tampered(lambda d: ([0, *d[0][1:]], *d[1:])),
    "a service twice": _tampered(lambda d: ([d[0][0], *d[0][:-1]], *d[1:])),
    "a service past the end": _tampered(lambda d: ([*d[0][:-1], 10**6], *d[1:])),
    "a cluster too many": _tampered(
        lambda d: (d[0], [d[1][0] + 1, d[1][1] - 1, *d[1][2:]], *d[2:])
    ),
    "a payload not bytes": _tampered(lambda d: (*d[:3], ["x", *d[3][1:]], *d[4:])),
    "lists of other lengths": _tampered(lambda d: (*d[:6], d[6][:-1])),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_child_that_fails_leaves_the_result_identical(tmp_path: Path, fault: str) -> None:
    mesh = load_directory(str(generated(tmp_path))).mesh
    compare(mesh, CLASSES, FAULTS[fault])


def test_a_dropped_service_is_built_here(tmp_path: Path) -> None:
    """The tamper helper really changes what is adopted: dropping the first service of
    the share gives bytes that decode, and the parent builds the service itself."""
    mesh = load_directory(str(generated(tmp_path))).mesh
    split = Counted(FAULTS["one service dropped"])
    compare(mesh, CLASSES[:1], split)
    assert split.given and split.given[0]


class Failing(BaseBuilders):
    """The translation's builders, whose clusters of ``FAILING`` services raise."""

    def cluster(self, spec: OutboundCluster, flavor: ClusterFlavor) -> Resource:
        if spec.service.name in FAILING:
            problem = Problem(f"{spec.service.name}.toml", 1, "ports", f"no {spec.name}")
            raise TranslationError([problem, problem])  # reported once
        return super().cluster(spec, flavor)


#: One service before the child's share, the others in it.
FAILING = ("svc-00002", "svc-00017", "svc-00025", "svc-00028")


def failing(translation: MeshTranslation) -> MeshTranslation:
    old = translation._base_builders
    translation._base_builders = Failing(
        translation._memo, translation.mesh_config.mtls, old._callee
    )
    return translation


def test_clusters_that_raise_in_the_share_give_the_same_problems(tmp_path: Path) -> None:
    mesh = load_directory(str(generated(tmp_path))).mesh
    split = Counted()
    serial = outcomes(failing(MeshTranslation(mesh)), CLASSES)
    forked = outcomes(failing(MeshTranslation(mesh, split=split)), CLASSES)
    assert forked == serial
    problems = serial[0]
    assert isinstance(problems, list)
    assert [p.path for p in problems] == [f"{name}.toml" for name in FAILING]
    assert split.given and all(split.given)
    shares = [marshal.loads(data)[0] for data in split.given if data]
    # The child's share began before svc-00017 and left the failing services out.
    assert shares[0][0] < 17
    assert not {17, 25, 28} & {i for indices in shares for i in indices}


def _edits(config: Path) -> Iterator[set[str]]:
    """One service changed, one removed, one DestinationRule changed, one added back."""
    target = config / "services" / "svc-00027.toml"
    target.write_text(target.read_text().replace('address = "10.', 'address = "11.', 1))
    yield {str(target)}
    gone = [config / "services" / "svc-00021.toml", config / "rules" / "svc-00021.yaml"]
    for path in gone:
        path.unlink()
    yield {str(p) for p in gone}
    rule = config / "rules" / "svc-00024.yaml"
    rule.write_text(rule.read_text().replace("version: v2}", "version: v3}"))
    yield {str(rule)}
    rule.write_text(
        rule.read_text().replace(
            "  subsets:", "  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n  subsets:"
        )
    )
    yield {str(rule)}


def test_incremental_translations_after_a_split_cold_build(tmp_path: Path) -> None:
    chains: list[list[object]] = []
    for split in (None, Counted()):
        root = tmp_path / ("forked" if split else "serial")
        config = generated(root)
        loader = DirectoryLoader(str(config))
        translation = MeshTranslation(loader.load().mesh, split=split)
        got = [outcomes(translation, CLASSES)]
        for changed in _edits(config):
            try:
                mesh = loader.load(changed).mesh
            except ConfigError as e:  # pragma: no cover - the edits are valid
                raise AssertionError(e.problems) from e
            translation = MeshTranslation(mesh, previous=translation, split=split)
            got.append(outcomes(translation, CLASSES))
        chains.append(got)
        if split is not None:
            assert len(split.given) == 3 and all(split.given)  # the cold build only
    serial, forked = chains
    assert len(serial) == 5
    assert all(a != b for a, b in itertools.pairwise(serial))  # each edit shows
    assert forked == serial


def test_mesh_state_with_a_split_serves_the_serial_snapshots(tmp_path: Path) -> None:
    """Through the daemon's ``MeshState`` (which hands its split to the translation):
    the first classes' snapshots and a reload's are the serial ones."""
    from xdsd.state import MeshState

    config = generated(tmp_path)
    split = Counted()
    states = [MeshState(str(config)), MeshState(str(config), split=split)]
    got = []
    for state in states:
        state.reload()
        first = [full(s) for s in map(state.snapshot, CLASSES) if s is not None]
        got.append(first)
    assert len(got[0]) == len(CLASSES) and got[1] == got[0]
    assert split.given and all(split.given)
    target = config / "services" / "svc-00027.toml"
    target.write_text(target.read_text().replace('address = "10.', 'address = "11.', 1))
    again = []
    for state in states:
        state.reload()
        again.append([full(s) for s in map(state.snapshot, CLASSES) if s is not None])
    assert again[1] == again[0] != got[0]
