"""The workers' admin answers merged into one daemon's (``xdsd.workers.merge``): each
path's rule, table-driven, and hostile answers (unreachable, wrong status, garbage,
wrong shapes) that leave out only their worker."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xdsd.admin import client_json
from xdsd.admin.status_page import render_status_page
from xdsd.cache.cache import ClientStatus, NackInfo, TypeStatus
from xdsd.resources import CLUSTER, Version
from xdsd.workers.merge import (
    Answer,
    PageInputs,
    client_status,
    merge_clients,
    merge_daemon,
    merge_expected,
    merge_health,
    merge_identical,
    merge_metrics,
    merge_problems,
    merge_ready,
    merge_registrations,
    merge_timings,
    metric_rule,
    status_view,
)

#: Answers no path takes: each must leave out only its worker.
HOSTILE: list[Answer] = [
    Answer("9", error="unreachable (ClientConnectorError: gone)"),
    Answer("9", 500, {"error": "boom"}),
    Answer("9", 200, None),
    Answer("9", 200, "a string"),
    Answer("9", 200, 42),
    Answer("9", 200, [1, 2, 3]),
    Answer("9", 200, {"ready": "yes", "expected": "many", "absent": {}}),
    Answer("9", 200, [{"types": "x"}]),
]


def _client(node: str, version: str = "v1", *, connected: bool = True) -> dict[str, Any]:
    status = ClientStatus(
        client_id="ads-1",
        node_id=node,
        key="sidecar web",
        transport="ads",
        connected=connected,
        connected_at=100.0,
        types={
            CLUSTER: TypeStatus(
                sent_version=Version(version),
                sent_at=100.0,
                acked_version=Version(version),
                acked_at=101.0,
            )
        },
    )
    return client_json(status, {}, now=102.0)


@pytest.mark.parametrize(
    ("answers", "ready", "not_ready"),
    [
        ([Answer("0", 200, {"ready": True}), Answer("1", 200, {"ready": True})], True, None),
        (
            [Answer("0", 200, {"ready": True}), Answer("1", 503, {"ready": False, "reason": "x"})],
            False,
            ["1"],
        ),
        (
            [Answer("0", 200, {"ready": True}), Answer("1", error="no answer within 5 s")],
            False,
            ["1"],
        ),
        ([], False, None),
        *[([Answer("0", 200, {"ready": True}), bad], False, ["9"]) for bad in HOSTILE],
    ],
)
def test_ready_only_when_every_worker_is(
    answers: list[Answer], ready: bool, not_ready: list[str] | None
) -> None:
    got, merged = merge_ready(answers)
    assert got is ready and merged.body["ready"] is ready
    assert merged.body.get("not_ready") == not_ready
    if not ready:
        assert merged.body["reason"]


def test_ready_passes_degraded_reasons_through_with_their_worker() -> None:
    ready, merged = merge_ready(
        [
            Answer("0", 200, {"ready": True, "degraded": "registrations: etcd unreachable"}),
            Answer("1", 200, {"ready": True}),
        ]
    )
    assert ready and merged.body["degraded"] == "worker 0: registrations: etcd unreachable"


def test_health_is_the_supervisors_and_names_each_worker() -> None:
    merged = merge_health([Answer("0", 200, {"status": "ok"}), Answer("1", error="gone")])
    assert merged.body["status"] == "ok" and merged.body["alive"] == "supervisor"
    assert merged.body["workers"] == {"0": "ok", "1": "gone"}


@pytest.mark.parametrize("bad", HOSTILE)
def test_clients_are_the_union_marked_by_worker(bad: Answer) -> None:
    merged = merge_clients(
        [Answer("0", 200, [_client("a")]), Answer("1", 200, [_client("b")]), bad]
    )
    assert [(c["node_id"], c["worker"], c["client_id"]) for c in merged.body] == [
        ("a", "0", "0/ads-1"),
        ("b", "1", "1/ads-1"),
    ]
    assert set(merged.unusable) == {"9"}


def test_problems_once_and_newer_versions_both_shown() -> None:
    shared = {"severity": "warning", "path": "a.yaml", "line": 1, "message": "w"}
    newer = {"severity": "error", "path": "b.yaml", "line": 2, "message": "e"}
    merged = merge_problems(
        [Answer("0", 200, [shared]), Answer("1", 200, [shared, newer]), HOSTILE[3]]
    )
    assert merged.body == [shared, {**newer, "workers": ["1"]}]
    assert set(merged.unusable) == {"9"}


def test_expected_absent_only_where_every_worker_misses_it() -> None:
    def absent(address: str, seen: float | None = None) -> dict[str, Any]:
        return {
            "namespace": "default",
            "service": "web",
            "address": address,
            "origin": "Service web",
            "last_seen": None
            if seen is None
            else {"node_id": "n", "agent": "", "disconnected_at": seen},
        }

    merged = merge_expected(
        [
            Answer(
                "0", 200, {"expected": 3, "absent": [absent("10.0.0.1"), absent("10.0.0.2", 5)]}
            ),
            Answer(
                "1", 200, {"expected": 3, "absent": [absent("10.0.0.2", 9), absent("10.0.0.3")]}
            ),
            *HOSTILE,
        ]
    )
    # .1 is covered by worker 1's proxy, .3 by worker 0's: only .2 is absent everywhere
    assert merged.body == {"expected": 3, "absent": [absent("10.0.0.2", 9)]}


def test_registrations_union_connected_anywhere() -> None:
    r = {"group": "default/web", "address": "10.0.0.9", "node": "n"}
    merged = merge_registrations(
        [
            Answer("0", 200, {"replica": "h", "registrations": [{**r, "connected": False}]}),
            Answer("1", 200, {"replica": "h", "registrations": [{**r, "connected": True}]}),
            Answer("2", 200, {"replica": 7, "registrations": []}),
        ]
    )
    assert merged.body == {"replica": "h", "registrations": [{**r, "connected": True}]}
    assert set(merged.unusable) == {"2"}


@pytest.mark.parametrize(
    ("bodies", "expected"),
    [
        ([{"a": 1}, {"a": 1}], {"a": 1}),
        ([{"a": 1}, {"a": 2}], {"a": 1, "other_versions": {"1": {"a": 2}}}),
        ([], {}),
    ],
)
def test_identical_views_once_else_both(
    bodies: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    answers = [Answer(str(n), 200, b) for n, b in enumerate(bodies)]
    assert merge_identical([*answers, HOSTILE[5]]).body == expected


def test_timings_sum_counts_and_bound_percentiles() -> None:
    merged = merge_timings(
        [
            Answer("0", 200, {"200": {"count": 10, "samples": 10, "p99_us": 50.0}}),
            Answer("1", 200, {"200": {"count": 5, "samples": 5, "p99_us": 80.0}}),
            Answer("2", 200, {"200": {"count": "ten"}}),
        ]
    )
    assert merged.body["200"] == {"count": 15, "samples": 15, "p99_us": 80.0}
    assert set(merged.body["workers"]) == {"0", "1"} and set(merged.unusable) == {"2"}


def _daemon(version: str, *, count: int = 3, loaded: bool = True) -> dict[str, Any]:
    return {
        "version": "0.1",
        "started_at": 50.0 if version == "v1" else 40.0,
        "config_dir": "/etc/xdsd",
        "loaded": loaded,
        "stale_after": 300.0,
        "renew_fraction": 0.5,
        "classes": {
            "sidecar web": {
                "snapshot": {CLUSTER: [version, count]},
                "policies": {},
                "workload": {
                    "namespace": "default",
                    "service": "web",
                    "role": "sidecar",
                    "address": "",
                },
            }
        },
    }


def test_daemon_summary_shows_both_versions_while_workers_disagree() -> None:
    summary, unusable = merge_daemon(
        [Answer("0", 200, _daemon("v1")), Answer("1", 200, _daemon("v2", count=4)), HOSTILE[6]]
    )
    assert summary.snapshots["sidecar web"].version(CLUSTER) == "v1 | v2"
    assert len(summary.snapshots["sidecar web"].get(CLUSTER)) == 4
    assert summary.started_at == 40.0 and summary.loaded
    assert set(unusable) == {"9"}
    same, _ = merge_daemon([Answer("0", 200, _daemon("v1")), Answer("1", 200, _daemon("v1"))])
    assert same.snapshots["sidecar web"].version(CLUSTER) == "v1"


def test_a_client_reads_back_as_it_was_shown() -> None:
    status = ClientStatus(
        client_id="ads-1",
        node_id="a",
        key="k",
        transport="ads",
        connected=True,
        connected_at=1.0,
        types={
            CLUSTER: TypeStatus(
                sent_version=Version("v2"),
                sent_at=2.0,
                acked_version=Version("v1"),
                nack=NackInfo(Version("v2"), "", 3, "bad", 3.0),
            )
        },
        agent="envoy 1.36",
    )
    back = client_status(client_json(status, now=4.0))
    assert back.types[CLUSTER].nack is not None and back.types[CLUSTER].nack.message == "bad"
    assert back.types[CLUSTER].sent_version == "v2" and back.agent == "envoy 1.36"
    assert client_json(back, now=4.0) == client_json(status, now=4.0)


def test_the_status_page_renders_from_merged_views_and_names_unusable_workers() -> None:
    summary, unusable = merge_daemon([Answer("0", 200, _daemon("v1")), Answer("1", error="gone")])
    inputs = PageInputs(
        summary,
        [*merge_clients([Answer("0", 200, [_client("a")])]).body, {"node_id": 5}],
        [{"severity": "condition", "object": "Gateway x"}, {"severity": "error", "path": 3}],
        {"expected": 0, "absent": [{"namespace": 1}]},
        {"replica": "", "registrations": []},
        unusable,
    )
    page = render_status_page(status_view(inputs, now=102.0))
    assert "1 proxy" in page and "&lt;worker 1&gt;" in page and "gone" in page


# -- metrics ------------------------------------------------------------------------


def _exposition(clients: int, acks: int, version: str, loaded: int) -> str:
    r = CollectorRegistry()
    Gauge("xdsd_connected_clients", "c", ["transport"], registry=r).labels("ads").set(clients)
    Counter("xdsd_acks", "a", ["type"], registry=r).labels("clusters").inc(acks)
    Gauge("xdsd_config_loaded", "l", registry=r).set(loaded)
    Gauge("xdsd_config_errors", "e", registry=r).set(2)
    Gauge("xdsd_snapshot_version_info", "v", ["class", "version"], registry=r).labels(
        "web", version
    ).set(1)
    Histogram("xdsd_push_ack_seconds", "h", registry=r, buckets=(0.1, 1.0)).observe(0.05)
    return generate_latest(r).decode()


def _samples(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = CollectorRegistry()

    class Fixed:
        def collect(self) -> Any:
            return families

    r.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(r).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


@pytest.mark.parametrize(
    "garbage",
    [
        "not { prometheus",
        'xdsd_acks_total{type="clusters" 1',
        b"\xff\xfe".decode("latin-1"),
        12345,
    ],
)
def test_metrics_sum_per_client_take_config_once_and_parse(garbage: Any) -> None:
    families, unusable = merge_metrics(
        [
            Answer("0", 200, _exposition(3, 10, "v1", 1)),
            Answer("1", 200, _exposition(4, 5, "v2", 0)),
            Answer("2", 200, garbage),
            Answer("3", error="no answer within 5 s"),
        ]
    )
    s = _samples(families)
    assert s[("xdsd_connected_clients", (("transport", "ads"),))] == 7
    assert s[("xdsd_acks_total", (("type", "clusters"),))] == 15
    assert s[("xdsd_config_loaded", ())] == 0  # min: one worker has none
    assert s[("xdsd_config_errors", ())] == 2  # max: the same errors, once
    assert s[("xdsd_snapshot_version_info", (("class", "web"), ("version", "v1")))] == 1
    assert s[("xdsd_snapshot_version_info", (("class", "web"), ("version", "v2")))] == 1
    assert s[("xdsd_push_ack_seconds_count", ())] == 2
    assert s[("xdsd_push_ack_seconds_bucket", (("le", "0.1"),))] == 2
    assert s[("xdsd_worker_up", (("worker", "0"),))] == 1
    assert s[("xdsd_worker_up", (("worker", "2"),))] == 0
    assert s[("xdsd_worker_up", (("worker", "3"),))] == 0
    assert set(unusable) == {"2", "3"}


def test_metric_rules() -> None:
    assert metric_rule("xdsd_acks", "xdsd_acks_total") == "sum"
    assert metric_rule("xdsd_acks", "xdsd_acks_created") == "min"
    assert metric_rule("xdsd_start_time_seconds", "xdsd_start_time_seconds") == "min"
    assert metric_rule("xdsd_build_info", "xdsd_build_info") == "union"


def test_only_gateway_api_conditions_are_shown_as_conditions() -> None:
    """The restart cache's notice (``severity: info``) is no Gateway API condition: the
    merged page files only ``condition`` items as conditions."""
    summary, unusable = merge_daemon([Answer("0", 200, _daemon("v1"))])
    condition = {"severity": "condition", "object": "Gateway x"}
    info = {"severity": "info", "path": "", "message": "serving the cached build, verifying"}
    inputs = PageInputs(summary, [], [condition, info], {"expected": 0}, {}, unusable)
    view = status_view(inputs, now=1.0)
    assert list(view.conditions) == [condition] and not view.errors
