"""Stage *filters* (``filters.EnvoyFilters``): which classes EnvoyFilters apply to, what
is shared, what ADD and REMOVE do to a snapshot, and the errors that name the filter to
change."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.translate.meshes import FQDN, bookinfo
from xdsd.errors import TranslationError
from xdsd.located import Fields, Report
from xdsd.model import Mesh, Origin
from xdsd.model.networking import EnvoyFilter
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xdsd.sources.documents import parse_file
from xdsd.sources.envoy_filter import parse_envoy_filter
from xdsd.translate import ClientKind, MeshTranslation, NodeClass, Role

REVIEWS = FQDN.format("reviews")
PRODUCTPAGE = NodeClass("productpage", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
LABELLED = dataclasses.replace(PRODUCTPAGE, labels=(("app", "pp"),))


def envoy_filters(text: str, namespace: str = "default") -> tuple[EnvoyFilter, ...]:
    """The EnvoyFilters of a YAML text (each document in ``ef/NAME.yaml``), parsed as the
    loader parses them; fails on any problem."""
    out = []
    for doc in parse_file("ef.yaml", text.encode()):
        report = Report(doc, ("spec",))
        name = doc.value["metadata"]["name"]
        ns = doc.value["metadata"].get("namespace", namespace)
        flt = parse_envoy_filter(
            Fields(report, (), doc.value["spec"]), name, ns, Origin(f"ef/{name}.yaml", doc.line)
        )
        assert report.problems == [], report.problems
        out.append(flt)
    return tuple(out)


def mesh_with(text: str) -> Mesh:
    return dataclasses.replace(bookinfo(), envoy_filters=envoy_filters(text))


TIMEOUT = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: NAME, namespace: NS}
spec:
  SELECTOR
  priority: PRIO
  configPatches:
  - applyTo: CLUSTER
    match: {cluster: {service: reviews.default, subset: v1}}
    patch: {operation: MERGE, value: {connect_timeout: SECONDS}}
"""


def timeout_filter(
    name: str, ns: str = "default", selector: str = "", prio: int = 0, seconds: str = "3s"
) -> str:
    return (
        TIMEOUT.replace("NAME", name)
        .replace("NS", ns)
        .replace("PRIO", str(prio))
        .replace("SELECTOR", selector)
        .replace("SECONDS", seconds)
    )


def timeout_of(snapshot: Any, name: str = f"outbound|9080|v1|{REVIEWS}") -> float:
    seconds: float = snapshot.get(CLUSTER)[name].message.connect_timeout.ToMilliseconds() / 1000
    return seconds


@pytest.mark.parametrize(
    ("docs", "node", "expected"),
    [
        # no selector: every node of the namespace
        ([("a", "default", "", 0, "3s")], PRODUCTPAGE, 3),
        # another namespace: not this node
        ([("a", "prod", "", 0, "3s")], PRODUCTPAGE, 10),
        # the root namespace: every node
        ([("a", "istio-system", "", 0, "3s")], PRODUCTPAGE, 3),
        # a selector the node's labels lack / have
        ([("a", "default", "workloadSelector: {labels: {app: pp}}", 0, "3s")], PRODUCTPAGE, 10),
        ([("a", "default", "workloadSelector: {labels: {app: pp}}", 0, "3s")], LABELLED, 3),
        # order: the later MERGE wins; by priority, then root namespace first, then name
        ([("a", "default", "", 0, "3s"), ("b", "default", "", 0, "4s")], PRODUCTPAGE, 4),
        ([("a", "default", "", 1, "3s"), ("b", "default", "", 0, "4s")], PRODUCTPAGE, 3),
        ([("a", "default", "", 0, "3s"), ("z", "istio-system", "", 0, "4s")], PRODUCTPAGE, 3),
    ],
)
def test_which_filters_apply_and_in_which_order(
    docs: list[tuple[str, str, str, int, str]], node: NodeClass, expected: float
) -> None:
    text = "---\n".join(timeout_filter(*d) for d in docs)
    snapshot = MeshTranslation(mesh_with(text)).snapshot_for(node)
    assert timeout_of(snapshot) == expected


def test_unselected_classes_share_the_unpatched_resources_and_selected_ones_share_patched() -> None:
    text = timeout_filter("a", selector="workloadSelector: {labels: {app: pp}}")
    translation = MeshTranslation(mesh_with(text))
    plain = MeshTranslation(bookinfo()).snapshot_for(PRODUCTPAGE)
    unpatched = translation.snapshot_for(PRODUCTPAGE)
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert {n: r.digest for n, r in unpatched.get(type_url).items()} == {
            n: r.digest for n, r in plain.get(type_url).items()
        }
    one = translation.snapshot_for(LABELLED)
    other = translation.snapshot_for(
        dataclasses.replace(LABELLED, service="curl", outbound_ip="127.0.0.20", instance_ip="")
    )
    name = f"outbound|9080|v1|{REVIEWS}"
    assert one.get(CLUSTER)[name] is other.get(CLUSTER)[name]
    assert one.get(CLUSTER)[name] is not unpatched.get(CLUSTER)[name]
    # the next mesh's translation reuses the patched resource
    again = MeshTranslation(mesh_with(text), previous=translation).snapshot_for(LABELLED)
    assert again.get(CLUSTER)[name] is one.get(CLUSTER)[name]


def test_proxyless_grpc_clients_get_no_patches() -> None:
    node = NodeClass("productpage", client=ClientKind.GRPC)
    snapshot = MeshTranslation(mesh_with(timeout_filter("a"))).snapshot_for(node)
    assert timeout_of(snapshot) == 10


def test_gateway_context() -> None:
    text = timeout_filter("a").replace("match: {", "match: {context: GATEWAY, ")
    translation = MeshTranslation(mesh_with(text))
    assert timeout_of(translation.snapshot_for(PRODUCTPAGE)) == 10
    gateway = NodeClass("ingress", role=Role.GATEWAY)
    assert timeout_of(translation.snapshot_for(gateway)) == 3


def test_proxy_metadata_match() -> None:
    text = timeout_filter("a").replace(
        "match: {", "match: {proxy: {metadata: {outbound_ip: 127.0.0.10}}, "
    )
    translation = MeshTranslation(mesh_with(text))
    assert timeout_of(translation.snapshot_for(PRODUCTPAGE)) == 3
    other = dataclasses.replace(PRODUCTPAGE, outbound_ip="127.0.0.11", instance_ip="127.0.0.3")
    assert timeout_of(translation.snapshot_for(other)) == 10


ADD_AND_REMOVE = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: shape}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {cluster: {service: ratings}}
    patch: {operation: REMOVE}
  - applyTo: VIRTUAL_HOST
    match: {routeConfiguration: {}}
    patch: {operation: REMOVE}
  - applyTo: CLUSTER
    patch:
      operation: ADD
      value:
        name: extra
        type: STATIC
        connect_timeout: 1s
        load_assignment:
          cluster_name: extra
          endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
            {address: 127.0.0.9, port_value: 80}}}}]}]
  - applyTo: LISTENER
    patch:
      operation: ADD
      value:
        name: extra
        address: {socket_address: {address: 127.0.0.10, port_value: 7000}}
        filter_chains:
        - filters:
          - name: envoy.filters.network.tcp_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
              stat_prefix: extra
              cluster: extra
"""


def test_add_and_remove_shape_the_snapshot() -> None:
    snapshot = MeshTranslation(mesh_with(ADD_AND_REMOVE)).snapshot_for(PRODUCTPAGE)
    ratings = "outbound|9081||" + FQDN.format("ratings")
    assert ratings not in snapshot.get(CLUSTER) and ratings not in snapshot.get(ENDPOINT)
    assert "extra" in snapshot.get(CLUSTER) and "extra" in snapshot.get(LISTENER)
    assert all(not r.message.virtual_hosts for r in snapshot.get(ROUTE).values())


def problems_of(text: str, node: NodeClass = PRODUCTPAGE) -> list[tuple[str, int, str, str]]:
    with pytest.raises(TranslationError) as err:
        MeshTranslation(mesh_with(text)).snapshot_for(node)
    return [(p.path, p.line, p.field, p.message) for p in err.value.problems]


def test_removing_a_cluster_a_route_uses_names_the_patch() -> None:
    text = ADD_AND_REMOVE.split("  - applyTo: VIRTUAL_HOST")[0]
    found = problems_of(text)
    assert [(path, line, field) for path, line, field, _ in found] == [
        ("ef/shape.yaml", 8, "configPatches[0].patch.operation")
    ] * 2
    ratings = "outbound|9081||" + FQDN.format("ratings")
    assert [m for *_, m in found] == [
        f"removes cluster {ratings!r}, which route {name!r} still references"
        for name in ("9081", "http_proxy")
    ]


EDS_ADD = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: eds}
spec:
  configPatches:
  - applyTo: CLUSTER
    patch:
      operation: ADD
      value:
        name: extra
        type: EDS
        eds_cluster_config: {eds_config: {ads: {}}}
"""


def test_an_added_eds_cluster_without_endpoints_names_the_patch() -> None:
    [(path, line, field, message)] = problems_of(EDS_ADD)
    assert (path, line, field) == ("ef/eds.yaml", 9, "configPatches[0].patch.value")
    assert "cluster 'extra' references endpoint 'extra', which the node does not have" in message


def test_adding_what_exists_is_an_error() -> None:
    text = ADD_AND_REMOVE.replace(
        "name: extra\n        address", "name: outbound_http_proxy\n        address"
    )
    [(path, _, field, message)] = problems_of(text)
    assert (path, field) == ("ef/shape.yaml", "configPatches[3].patch.value.name")
    assert "adds listener 'outbound_http_proxy', which the node already has" in message


def test_a_value_that_is_not_a_message_of_its_type_names_file_line_and_field() -> None:
    [flt] = envoy_filters(timeout_filter("a"))
    bad = dataclasses.replace(flt.patches[0], value_json='{"connect_timeout": "soon"}')
    mesh = dataclasses.replace(
        bookinfo(), envoy_filters=(dataclasses.replace(flt, patches=(bad,)),)
    )
    with pytest.raises(TranslationError) as err:
        MeshTranslation(mesh).snapshot_for(PRODUCTPAGE)
    [problem] = err.value.problems
    assert (problem.path, problem.line, problem.field) == (
        "ef/a.yaml",
        10,
        "configPatches[0].patch.value",
    )
    assert "envoy.config.cluster.v3.Cluster" in problem.message and "soon" in problem.message


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (timeout_filter("a"), timeout_filter("a", seconds="4s")),
        (timeout_filter("a"), ""),
        ("", ADD_AND_REMOVE),
        (ADD_AND_REMOVE, timeout_filter("a")),
    ],
)
def test_reloads_give_what_a_cold_translation_gives(before: str, after: str) -> None:
    nodes = (PRODUCTPAGE, LABELLED, NodeClass("ingress", role=Role.GATEWAY))
    first = MeshTranslation(mesh_with(before) if before else bookinfo())
    for node in nodes:
        first.snapshot_for(node)
    mesh = mesh_with(after) if after else bookinfo()
    warm = MeshTranslation(mesh, previous=first)
    cold = MeshTranslation(mesh)
    for node in nodes:
        assert warm.snapshot_for(node).versions == cold.snapshot_for(node).versions
