"""Fuzzing the merge of workers' admin answers: any JSON value (or text, for /metrics)
with any status from any worker is merged without an exception; a worker whose answer
is not usable is named, never counted ready; and the status page renders from whatever
the merges kept."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.admin.status_page import render_status_page
from xdsd.workers.merge import (
    Answer,
    PageInputs,
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
    status_view,
)

KEYS = st.sampled_from(
    [
        "ready",
        "reason",
        "degraded",
        "client_id",
        "node_id",
        "class",
        "transport",
        "connected",
        "connected_at",
        "types",
        "clusters",
        "sent_version",
        "nack",
        "identity",
        "expected",
        "absent",
        "last_seen",
        "disconnected_at",
        "replica",
        "registrations",
        "severity",
        "path",
        "line",
        "version",
        "started_at",
        "classes",
        "snapshot",
        "policies",
        "workload",
        "count",
    ]
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)


@st.composite
def answers(draw: st.DrawFn, body: st.SearchStrategy[Any] = JSON) -> list[Answer]:
    out = []
    for n in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            out.append(Answer(str(n), error="no answer within 5 s"))
        else:
            out.append(Answer(str(n), draw(st.sampled_from([200, 200, 503, 404, 500])), draw(body)))
    return out


@fuzz_settings()
@given(answers())
def test_any_worker_answers_merge_without_an_exception(given_answers: list[Answer]) -> None:
    with deadline("workers merge"):
        errored = {a.worker for a in given_answers if a.error}
        for merge in (
            merge_health,
            merge_clients,
            merge_problems,
            merge_expected,
            merge_registrations,
            merge_identical,
            merge_timings,
        ):
            merged = merge(given_answers)
            assert errored <= set(merged.unusable)
        ready, merged = merge_ready(given_answers)
        if ready:
            assert given_answers and not merged.unusable
            assert all(a.status == 200 and a.body.get("ready") is True for a in given_answers)
        summary, _ = merge_daemon(given_answers)
        inputs = PageInputs(
            summary,
            merge_clients(given_answers).body,
            merge_problems(given_answers).body,
            merge_expected(given_answers).body,
            merge_registrations(given_answers).body,
            {w: "x" for w in errored},
        )
        render_status_page(status_view(inputs, now=0.0))


METRICS_TEXT = st.text(
    alphabet=st.sampled_from(list('xdsd_total{}="01.e+-# \nTYPEHELPcounter gauge le')), max_size=200
)


@fuzz_settings()
@given(answers(METRICS_TEXT | JSON))
def test_any_metrics_text_merges_or_names_its_worker(given_answers: list[Answer]) -> None:
    with deadline("workers metrics"):
        families, unusable = merge_metrics(given_answers)
        up = next(f for f in families if f.name == "xdsd_worker_up")
        assert len(up.samples) == len(given_answers)
        for s in up.samples:
            assert s.value == (0.0 if s.labels["worker"] in unusable else 1.0)
