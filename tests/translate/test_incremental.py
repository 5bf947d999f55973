"""Translations chained with ``previous=`` give exactly what a cold translation gives."""

from __future__ import annotations

import gc
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import ConfigError, TranslationError
from xdsd.model import Locality
from xdsd.resources import CLUSTER, ENDPOINT
from xdsd.sources import DirectoryLoader, load_directory
from xdsd.translate import ClientKind, ConfigSourceKind, MeshTranslation, NodeClass, Role

CLASSES = [
    NodeClass("productpage", labels=(("version", "v1"),)),
    NodeClass("reviews", labels=(("version", "v2"),), config_source=ConfigSourceKind.REST),
    NodeClass("details", outbound_ip="127.0.5.5", instance_ip="127.0.5.6"),
    NodeClass("ratings", client=ClientKind.GRPC),
    NodeClass("reviews", client=ClientKind.MOSN, instance_ip="127.0.6.1"),
    NodeClass("edge", role=Role.GATEWAY),
    NodeClass(
        "details",
        locality=Locality("eu-west", "zone-b"),
        outbound_ip="127.0.5.7",
        instance_ip="127.0.5.8",
    ),
]
DETAILS = "outbound|9080||details.default.svc.cluster.local"
RAW_DETAILS = f"""\
'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster
name: {DETAILS}
type: STATIC
load_assignment:
  cluster_name: {DETAILS}
  endpoints:
  - lb_endpoints:
    - endpoint: {{address: {{socket_address: {{address: 10.7.7.7, port_value: 80}}}}}}
"""


def contents(snap: Snapshot) -> dict[str, list[tuple[str, str]]]:
    return {t: [(n, r.digest) for n, r in b.items()] for t, b in snap.resources.items()}


def outcome(translation: MeshTranslation, node: NodeClass) -> object:
    try:
        snap = translation.snapshot_for(node)
    except TranslationError as e:
        return sorted(str(p) for p in e.problems)
    return contents(snap), dict(snap.versions)


def replace_in(path: Path, old: str, new: str) -> Callable[[Path], set[str]]:
    def edit(root: Path) -> set[str]:
        target = root / path
        target.write_text(target.read_text().replace(old, new))
        return {str(target)}

    return edit


def write(path: str, text: str) -> Callable[[Path], set[str]]:
    def edit(root: Path) -> set[str]:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return {str(target)}

    return edit


def delete(path: str) -> Callable[[Path], set[str]]:
    def edit(root: Path) -> set[str]:
        (root / path).unlink()
        return {str(root / path)}

    return edit


NEW_SERVICE = (
    'kind = "Service"\nname = "extra"\n\n[[ports]]\nnumber = 9080\nprotocol = "HTTP"\n\n'
    '[[endpoints]]\naddress = "10.0.9.1"\n'
)
ENTRIES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms}
spec:
  hosts: [vm.example.com]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls}
spec:
  hosts: [a.example.com, b.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS, targetPort: 8443}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: anything}
spec:
  hosts: ["*.example.org"]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: NONE
"""
WORKLOAD = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm1}
spec: {address: 10.0.8.1, labels: {app: other}}
"""
WILDCARD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: everything}
spec:
  hosts: ["*.default.svc.cluster.local"]
  http:
  - route:
    - destination: {host: details, port: {number: 9080}}
"""
CHECK = 'healthCheck = { path = "/healthz", interval = "5s" }'
EDITS = [
    replace_in(Path("services/details.toml"), "10.0.0.21", "10.0.0.77"),  # endpoints only
    replace_in(Path("rules/reviews.yaml"), "weight: 50", "weight: 25"),  # routes only
    write("services/extra.toml", NEW_SERVICE),  # a service appears
    write("envoy/details.yaml", RAW_DETAILS),  # a raw cluster replaces a generated one
    replace_in(Path("services/details.toml"), "10.0.0.77", "10.0.0.78"),
    delete("envoy/details.yaml"),
    replace_in(Path("services/extra.toml"), "9080", "9090"),  # a port group appears
    delete("services/extra.toml"),  # ... and goes
    replace_in(Path("rules/destination-rules.yaml"), "name: v3", "name: v4"),  # subset gone
    replace_in(Path("rules/destination-rules.yaml"), "name: v4", "name: v3"),
    # Outlier detection makes the reviews assignments depend on the caller's locality.
    replace_in(
        Path("rules/destination-rules.yaml"),
        "simple: ROUND_ROBIN",
        "simple: ROUND_ROBIN\n    outlierDetection: {consecutive5xxErrors: 3}",
    ),
    replace_in(Path("services/reviews.yaml"), "eu-west/zone-b", "eu-east/zone-b"),
    replace_in(
        Path("rules/destination-rules.yaml"),
        "outlierDetection: {consecutive5xxErrors: 3}",
        "outlierDetection: {}",
    ),
    replace_in(Path("rules/destination-rules.yaml"), "\n    outlierDetection: {}", ""),
    # A consistent hash changes routes (hash_policy) as well as clusters.
    replace_in(
        Path("rules/destination-rules.yaml"),
        "simple: ROUND_ROBIN",
        "consistentHash: {httpHeaderName: x-user}",
    ),
    replace_in(
        Path("rules/destination-rules.yaml"), "httpHeaderName: x-user", "httpQueryParameterName: u"
    ),
    replace_in(
        Path("rules/destination-rules.yaml"),
        "consistentHash: {httpQueryParameterName: u}",
        "simple: ROUND_ROBIN",
    ),  # ... also on the default route of a service without a VirtualService.
    replace_in(
        Path("rules/destination-rules.yaml"),
        "host: productpage\n",
        "host: productpage\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}\n",
    ),
    # ServiceEntries: services appear (a NONE one adds the forward proxy filter), a
    # WorkloadEntry edit changes an entry's endpoints, a health check comes and changes.
    write("rules/entries.yaml", ENTRIES),
    write("rules/workloads.yaml", WORKLOAD),
    replace_in(Path("rules/workloads.yaml"), "app: other", "app: vm"),
    replace_in(Path("rules/workloads.yaml"), "10.0.8.1", "10.0.8.2"),
    replace_in(Path("rules/entries.yaml"), "targetPort: 8443", "targetPort: 9443"),
    replace_in(Path("services/details.toml"), "\n[[ports]]", f"{CHECK}\n\n[[ports]]"),
    replace_in(Path("services/details.toml"), 'interval = "5s"', 'interval = "7s"'),
    replace_in(Path("rules/entries.yaml"), "resolution: NONE", "resolution: STATIC"),
    delete("rules/workloads.yaml"),
    delete("rules/entries.yaml"),
    # A wildcard VirtualService routes every service without its own (reviews keeps its
    # own), then a service it matches appears, its destination changes, and it goes.
    write("rules/wildcard.yaml", WILDCARD),
    write("services/extra.toml", NEW_SERVICE),
    replace_in(Path("rules/wildcard.yaml"), "host: details", "host: ratings"),
    replace_in(Path("rules/wildcard.yaml"), '"*.default.svc.cluster.local"', '"*"'),
    delete("services/extra.toml"),
    delete("rules/wildcard.yaml"),
]
#: The edits that must be loaded (not refused): a refused one would test nothing.
MUST_LOAD = {len(EDITS) - 6, len(EDITS) - 5, len(EDITS) - 4, len(EDITS) - 3}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, root)
    return root


def test_chained_translations_equal_cold_ones_after_every_edit(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    translation = MeshTranslation(loader.load().mesh)
    for node in CLASSES:
        outcome(translation, node)
    for number, edit in enumerate(EDITS):
        changed = edit(config)
        try:
            mesh = loader.load(changed).mesh
        except ConfigError:
            assert number not in MUST_LOAD
            continue  # refused: the previous translation stays, as in MeshState
        translation = MeshTranslation(mesh, previous=translation)
        fresh = MeshTranslation(load_directory(str(config)).mesh)
        for node in CLASSES:
            assert outcome(translation, node) == outcome(fresh, node), (number, node)


def test_a_raw_cluster_takes_the_generated_assignment_out(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    first = MeshTranslation(loader.load().mesh)
    assert DETAILS in first.snapshot_for(CLASSES[0]).get(ENDPOINT)
    second = MeshTranslation(
        loader.load(write("envoy/d.yaml", RAW_DETAILS)(config)).mesh, previous=first
    )
    snap = second.snapshot_for(CLASSES[0])
    assert DETAILS not in snap.get(ENDPOINT)
    assert snap.get(CLUSTER)[DETAILS].message.type == snap.get(CLUSTER)[DETAILS].message.STATIC


def test_an_endpoint_edit_reencodes_only_that_service(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    first = MeshTranslation(loader.load().mesh)
    old = first.snapshot_for(CLASSES[0])
    edit = replace_in(Path("services/details.toml"), "10.0.0.21", "10.0.0.77")
    second = MeshTranslation(loader.load(edit(config)).mesh, previous=first)
    new = second.snapshot_for(CLASSES[0])
    changed = [
        (t, n)
        for t, bucket in new.resources.items()
        for n, r in bucket.items()
        if old.get(t).get(n) is not r
    ]
    details = DETAILS.rsplit("|", 1)[1]
    assert changed == [(ENDPOINT, n) for n in new.get(ENDPOINT) if n.endswith(details)]
    assert len(changed) == 2  # the whole service and its subset
    assert [t for t in new.versions if new.version(t) != old.version(t)] == [ENDPOINT]


def test_translations_are_freed_without_the_cycle_collector(config: Path) -> None:
    mesh = load_directory(str(config)).mesh
    gc.disable()
    try:
        first = MeshTranslation(mesh)
        for node in CLASSES:
            outcome(first, node)
        second = MeshTranslation(mesh, previous=first)
        for node in CLASSES:
            outcome(second, node)
        ref = weakref.ref(first)
        del first
        assert ref() is None
    finally:
        gc.enable()


def test_a_flavor_first_asked_for_after_a_reload_is_complete(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    first = MeshTranslation(loader.load().mesh)
    outcome(first, CLASSES[0])  # ADS only
    edit = replace_in(Path("services/details.toml"), "10.0.0.21", "10.0.0.77")
    mesh = loader.load(edit(config)).mesh
    second = MeshTranslation(mesh, previous=first)
    fresh = MeshTranslation(mesh)
    for node in CLASSES:  # REST and gRPC flavors appear only now
        assert outcome(second, node) == outcome(fresh, node), node
