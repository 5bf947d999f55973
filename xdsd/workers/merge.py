"""Several worker daemons' admin answers merged into what one daemon would answer.

How this works: the merged admin (``xdsd.workers.admin``) asks every worker the same path
over its unix socket and hands the answers here, one ``Answer`` per worker, in worker
order. Every function is pure and never raises for what a worker answered: an answer
that is not what the path gives (not JSON, the wrong shape, wrong types) makes that
worker *unusable* for this request, named with the reason in ``Merged.unusable``, and
the merge goes on with the others. What each path's merge does:

- ``/healthz`` (``merge_health``): alive while the supervisor answers; each worker's
  state is shown.
- ``/readyz`` (``merge_ready``): ready only when every worker answered ready; the body
  names each worker that is not and why; ``degraded`` reasons passed through, each
  prefixed with its worker.
- ``/debug/clients`` (``merge_clients``): the union of every worker's clients, each with
  ``worker`` (its worker's name) added and its ``client_id`` prefixed ``WORKER/`` (each
  worker numbers its clients from 1).
- ``/debug/errors`` (``merge_problems``): entries every usable worker reports once;
  one reported by some only (a worker that loaded a newer configuration than another)
  is shown too, with ``workers`` naming those that report it: both versions show.
- ``/debug/expected`` (``merge_expected``): ``expected`` the largest count; an expected
  proxy is absent only when it is absent in every usable worker (a proxy connected to
  one worker is absent from the others' views), with the latest ``last_seen``.
- ``/debug/registrations`` (``merge_registrations``): the union of the registrations,
  ``connected`` when any worker's stream holds one; ``replica`` the workers' one name
  (their names joined by ``,`` when they differ).
- ``/debug/addresses`` and any view every worker should answer alike
  (``merge_identical``): identical → that answer; different → the first usable
  worker's, with ``other_versions`` holding each differing worker's: both show.
- ``/debug/rest/timings`` (``merge_timings``): per status, ``count`` and ``samples``
  summed, each percentile and maximum the largest of the workers' (an upper bound: a
  percentile of the union is not computable from the parts), and ``workers`` with each
  worker's own figures.
- ``/debug/daemon`` (``merge_daemon``) and the status page (``status_view``): see there.
- ``/metrics`` (``merge_metrics``): one exposition; how each family combines is
  ``METRIC_RULES`` (sum by name and labels unless named there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from xdsd.admin.proxies import Absence, ExpectedProxy, Workload
from xdsd.admin.status_page import ClassSnapshot, StatusView
from xdsd.cache.cache import ClientIdentity, ClientStatus, NackInfo, TypeStatus
from xdsd.errors import Problem, Severity
from xdsd.resources import SHORT_NAMES, TypeUrl, Version

#: A type's URL by the short name ``/debug/clients`` uses for it.
TYPE_URLS: Mapping[str, TypeUrl] = {short: url for url, short in SHORT_NAMES.items()}


@dataclass(frozen=True, slots=True)
class Answer:
    """One worker's answer to one admin path: ``worker`` its name, ``status`` the HTTP
    status (0 when none came), ``body`` the parsed JSON (the text for ``/metrics``;
    None when nothing usable came), ``error`` why there is none ("" when one came)."""

    worker: str
    status: int = 0
    body: Any = None
    error: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Merged:
    """A merged view: ``body`` (JSON, or text for ``/metrics``) and the workers whose
    answer could not be used, with why (``unusable``; empty when all were)."""

    body: Any
    unusable: Mapping[str, str] = field(default_factory=dict)


class Garbage(ValueError):
    """A worker's answer is not of the shape its path gives."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise Garbage(what)


def _usable(
    answers: Sequence[Answer], statuses: tuple[int, ...] = (200,)
) -> tuple[list[Answer], dict[str, str]]:
    """The answers that came with one of ``statuses``, and the others with why not."""
    ok: list[Answer] = []
    bad: dict[str, str] = {}
    for a in answers:
        if a.error:
            bad[a.worker] = a.error
        elif a.status not in statuses:
            bad[a.worker] = f"answered HTTP {a.status}"
        else:
            ok.append(a)
    return ok, bad


def _each(
    answers: Sequence[Answer],
    read: Callable[[Answer], Any],
    statuses: tuple[int, ...] = (200,),
) -> tuple[list[tuple[Answer, Any]], dict[str, str]]:
    """``read`` of each usable answer; an answer it raises Garbage (or a type or key
    error) for is unusable, with the reason."""
    ok, bad = _usable(answers, statuses)
    out: list[tuple[Answer, Any]] = []
    for a in ok:
        try:
            out.append((a, read(a)))
        except (Garbage, TypeError, KeyError, ValueError, AttributeError) as e:
            bad[a.worker] = f"answered garbage: {_short(str(e) or type(e).__name__)}"
    return out, bad


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _dict(value: Any, what: str) -> dict[str, Any]:
    _check(isinstance(value, dict), f"{what} is not an object")
    return value  # type: ignore[no-any-return]


def _list_of_dicts(value: Any, what: str) -> list[dict[str, Any]]:
    _check(isinstance(value, list), f"{what} is not a list")
    for item in value:
        _check(isinstance(item, dict), f"an item of {what} is not an object")
    return value  # type: ignore[no-any-return]


def _number(value: Any, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    _check(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        f"{what} is not a number",
    )
    return float(value)


def _text(value: Any, what: str) -> str:
    _check(isinstance(value, str), f"{what} is not a string")
    return str(value)


# -- health and readiness ---------------------------------------------------------------


def merge_health(answers: Sequence[Answer]) -> Merged:
    """``/healthz``: the supervisor answering is what is alive (always ``ok``); each
    worker's own health is shown (``ok`` or why not)."""
    workers = {}
    for a in answers:
        healthy = not a.error and a.status == 200 and isinstance(a.body, dict)
        workers[a.worker] = "ok" if healthy else (a.error or f"answered HTTP {a.status}")
    return Merged(
        {"status": "ok", "alive": "supervisor", "workers": workers},
        {w: s for w, s in workers.items() if s != "ok"},
    )


def merge_ready(answers: Sequence[Answer]) -> tuple[bool, Merged]:
    """``/readyz``: ready when there is a worker and every one answered ready. ``reason``
    names each worker that is not ready and why (its own reason, or why it could not
    be asked); ``degraded`` each worker's, prefixed by its name; ``workers`` each one's
    readiness."""
    reasons: dict[str, str] = {}
    degraded: list[str] = []
    workers: dict[str, bool] = {}

    def read(a: Answer) -> dict[str, Any]:
        body = _dict(a.body, "the answer")
        _check(isinstance(body.get("ready"), bool), "ready is not a boolean")
        return body

    read_ok, bad = _each(answers, read, statuses=(200, 503))
    for w, why in bad.items():
        reasons[w] = why
        workers[w] = False
    for a, body in read_ok:
        ready = bool(body["ready"]) and a.status == 200
        workers[a.worker] = ready
        if not ready:
            reason = body.get("reason")
            reasons[a.worker] = reason if isinstance(reason, str) and reason else "not ready"
        if isinstance(body.get("degraded"), str) and body["degraded"]:
            degraded.append(f"worker {a.worker}: {body['degraded']}")
    ready = bool(answers) and not reasons
    out: dict[str, Any] = {"ready": ready, "workers": dict(sorted(workers.items()))}
    if not answers:
        out["reason"] = "no worker is running"
    elif reasons:
        out["reason"] = "; ".join(f"worker {w}: {why}" for w, why in sorted(reasons.items()))
        out["not_ready"] = sorted(reasons)
    if degraded:
        out["degraded"] = "; ".join(degraded)
    return ready, Merged(out, bad)


# -- the debug views --------------------------------------------------------------------


def merge_clients(answers: Sequence[Answer]) -> Merged:
    """``/debug/clients``: every worker's clients, each with ``worker`` added and its
    ``client_id`` made ``WORKER/ID`` (unique across workers). A worker with a client
    that does not read back (``client_status``) is unusable."""

    def read(a: Answer) -> list[dict[str, Any]]:
        clients = _list_of_dicts(a.body, "the clients")
        for client in clients:
            client_status(client)  # raises Garbage for a client not of its shape
        return clients

    found, bad = _each(answers, read)
    out = [
        {**client, "client_id": f"{a.worker}/{client.get('client_id')}", "worker": a.worker}
        for a, clients in found
        for client in clients
    ]
    return Merged(out, bad)


def merge_problems(answers: Sequence[Answer]) -> Merged:
    """``/debug/errors``: each entry once, in first-seen order; an entry some usable
    workers report and others do not carries ``workers`` (those reporting it)."""
    found, bad = _each(answers, lambda a: _list_of_dicts(a.body, "the errors"))
    seen: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for a, entries in found:
        for entry in entries:
            key = _canonical(entry)
            if key in seen:
                if a.worker not in seen[key][1]:
                    seen[key][1].append(a.worker)
            else:
                seen[key] = (entry, [a.worker])
    everyone = len(found)
    out = [
        entry if len(workers) == everyone else {**entry, "workers": workers}
        for entry, workers in seen.values()
    ]
    return Merged(out, bad)


def merge_expected(answers: Sequence[Answer]) -> Merged:
    """``/debug/expected``: ``expected`` the largest count; ``absent`` the expected
    proxies absent in every usable worker (by namespace, service, address and origin),
    each with the ``last_seen`` that disconnected last among the workers'."""

    def read(a: Answer) -> tuple[int, list[dict[str, Any]]]:
        body = _dict(a.body, "the answer")
        expected = _number(body.get("expected"), "expected")
        absent = _list_of_dicts(body.get("absent"), "absent")
        for item in absent:
            seen = item.get("last_seen")
            if seen is not None:
                _number(_dict(seen, "last_seen").get("disconnected_at"), "disconnected_at")
        return int(expected or 0), absent

    found, bad = _each(answers, read)
    if not found:
        return Merged({"expected": 0, "absent": []}, bad)
    counts: dict[tuple[Any, ...], int] = {}
    first: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _, (_, absent) in found:
        for item in absent:
            key = tuple(item.get(k) for k in ("namespace", "service", "address", "origin"))
            counts[key] = counts.get(key, 0) + 1
            kept = first.get(key)
            if kept is None or _seen_at(item) > _seen_at(kept):
                first[key] = item
    out = [first[key] for key, n in counts.items() if n == len(found)]
    return Merged({"expected": max(n for _, (n, _) in found), "absent": out}, bad)


def _seen_at(item: Mapping[str, Any]) -> float:
    seen = item.get("last_seen")
    return float(seen["disconnected_at"]) if isinstance(seen, dict) else -math.inf


def merge_registrations(answers: Sequence[Answer]) -> Merged:
    """``/debug/registrations``: the union of the registrations (one per entry but
    ``connected``, which is true when any worker's stream holds it); ``replica`` the
    workers' common name, or their names joined by ``,``."""

    def read(a: Answer) -> tuple[str, list[dict[str, Any]]]:
        body = _dict(a.body, "the answer")
        return _text(body.get("replica", ""), "replica"), _list_of_dicts(
            body.get("registrations"), "registrations"
        )

    found, bad = _each(answers, read)
    replicas: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    for _, (replica, items) in found:
        if replica not in replicas:
            replicas.append(replica)
        for item in items:
            key = _canonical({k: v for k, v in item.items() if k != "connected"})
            if key in merged:
                merged[key]["connected"] = bool(merged[key].get("connected")) or bool(
                    item.get("connected")
                )
            else:
                merged[key] = dict(item)
    return Merged({"replica": ",".join(replicas), "registrations": list(merged.values())}, bad)


def merge_identical(answers: Sequence[Answer]) -> Merged:
    """A view every worker should answer alike (``/debug/addresses``): when they do,
    that answer; when some differ (a reload reached one worker first), the first usable
    worker's with ``other_versions``: each differing worker's answer by its name."""
    found, bad = _each(answers, lambda a: _dict(a.body, "the answer"))
    if not found:
        return Merged({}, bad)
    (_, base), *rest = found
    key = _canonical(base)
    others = {a.worker: body for a, body in rest if _canonical(body) != key}
    return Merged({**base, "other_versions": others} if others else base, bad)


#: ``/debug/rest/timings`` figures that add up across workers (the others: the largest).
_SUMMED_FIGURES = frozenset({"count", "samples"})


def merge_timings(answers: Sequence[Answer]) -> Merged:
    """``/debug/rest/timings``: per status, ``count`` and ``samples`` summed and every
    other figure the largest of the workers' (an upper bound); ``workers`` holds each
    worker's own summary."""

    def read(a: Answer) -> dict[str, dict[str, float]]:
        body = _dict(a.body, "the answer")
        out: dict[str, dict[str, float]] = {}
        for status, figures in body.items():
            out[status] = {
                name: _number(value, name) or 0.0 for name, value in _dict(figures, status).items()
            }
        return out

    found, bad = _each(answers, read)
    merged: dict[str, Any] = {}
    for _, summary in found:
        for status, figures in summary.items():
            into = merged.setdefault(status, {})
            for name, value in figures.items():
                if name in _SUMMED_FIGURES:
                    into[name] = into.get(name, 0) + value
                else:
                    into[name] = max(into.get(name, value), value)
    merged["workers"] = {a.worker: summary for a, summary in found}
    return Merged(merged, bad)


# -- the status page --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClassSummary:
    """A node class's snapshot as a worker's ``/debug/daemon`` tells it: the version and
    resource count of each type (a ``status_page.ClassSnapshot``). Versions that
    differ across workers are shown joined: ``A | B``."""

    versions: Mapping[TypeUrl, str]
    counts: Mapping[TypeUrl, int]

    def get(self, type_url: TypeUrl) -> range:
        """As many items as the class holds resources of ``type_url``."""
        return range(self.counts.get(type_url, 0))

    def version(self, type_url: TypeUrl) -> str:
        """The version of ``type_url`` ("" when none)."""
        return self.versions.get(type_url, "")


@dataclass(frozen=True, slots=True)
class DaemonSummary:
    """The workers' ``/debug/daemon`` merged: the version(s) running, the earliest start,
    the config directory, ``loaded`` when every worker loaded, the settings, and per
    class its snapshot (``ClassSummary``), policies and workload."""

    version: str = ""
    started_at: float = 0.0
    config_dir: str = ""
    loaded: bool = False
    stale_after: float = 300.0
    renew_fraction: float = 0.5
    snapshots: Mapping[str, ClassSummary] = field(default_factory=dict)
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    workloads: Mapping[str, Workload] = field(default_factory=dict)


def merge_daemon(answers: Sequence[Answer]) -> tuple[DaemonSummary, dict[str, str]]:
    """``/debug/daemon`` of every worker as one ``DaemonSummary`` and the unusable
    workers. A class's types take every worker's version (``A | B`` when they differ,
    sorted) and the largest resource count; its policies and workload the first
    worker's that has the class."""

    def read(a: Answer) -> dict[str, Any]:
        body = _dict(a.body, "the answer")
        _text(body.get("version"), "version")
        _number(body.get("started_at"), "started_at")
        _text(body.get("config_dir"), "config_dir")
        _number(body.get("stale_after"), "stale_after")
        _number(body.get("renew_fraction"), "renew_fraction")
        for label, item in _dict(body.get("classes"), "classes").items():
            entry = _dict(item, label)
            snapshot = entry.get("snapshot")
            if snapshot is not None:
                for type_url, pair in _dict(snapshot, "snapshot").items():
                    _check(isinstance(pair, list) and len(pair) == 2, f"{type_url} is no pair")
                    _text(pair[0], "a version")
                    _number(pair[1], "a count")
            _dict(entry.get("policies"), "policies")
            workload = entry.get("workload")
            if workload is not None:
                for key in ("namespace", "service", "role", "address"):
                    _text(_dict(workload, "workload").get(key), key)
        return body

    found, bad = _each(answers, read)
    if not found:
        return DaemonSummary(), bad
    versions: dict[str, dict[TypeUrl, set[str]]] = {}
    counts: dict[str, dict[TypeUrl, int]] = {}
    policies: dict[str, Mapping[str, Any]] = {}
    workloads: dict[str, Workload] = {}
    for _, body in found:
        for label, entry in body["classes"].items():
            policies.setdefault(label, entry["policies"])
            w = entry.get("workload")
            if w is not None and label not in workloads:
                workloads[label] = Workload(w["namespace"], w["service"], w["role"], w["address"])
            for type_url, (version, count) in (entry.get("snapshot") or {}).items():
                versions.setdefault(label, {}).setdefault(TypeUrl(type_url), set()).add(version)
                held = counts.setdefault(label, {})
                held[TypeUrl(type_url)] = max(held.get(TypeUrl(type_url), 0), int(count))
    bodies = [body for _, body in found]
    running = sorted({b["version"] for b in bodies})
    return (
        DaemonSummary(
            version=" | ".join(running),
            started_at=min(float(b["started_at"]) for b in bodies),
            config_dir=bodies[0]["config_dir"],
            loaded=all(b.get("loaded") is True for b in bodies),
            stale_after=float(bodies[0]["stale_after"]),
            renew_fraction=float(bodies[0]["renew_fraction"]),
            snapshots={
                label: ClassSummary(
                    {t: " | ".join(sorted(v)) for t, v in by_type.items()}, counts[label]
                )
                for label, by_type in versions.items()
            },
            policies=policies,
            workloads=workloads,
        ),
        bad,
    )


def client_status(item: Mapping[str, Any]) -> ClientStatus:
    """A client of ``/debug/clients`` (``admin.client_json``) read back; its class key
    is the class's text. Raises Garbage (a ValueError) when it is not of that shape."""
    types: dict[TypeUrl, TypeStatus] = {}
    for short, status in _dict(item.get("types", {}), "types").items():
        s = _dict(status, short)
        nack = s.get("nack")
        types[TYPE_URLS.get(short, TypeUrl(short))] = TypeStatus(
            sent_version=_version(s.get("sent_version")),
            sent_nonce=_text(s.get("sent_nonce", ""), "sent_nonce"),
            sent_at=_number(s.get("sent_at"), "sent_at", optional=True),
            acked_version=_version(s.get("acked_version")),
            acked_at=_number(s.get("acked_at"), "acked_at", optional=True),
            not_applied=s.get("not_applied") is True,
            nack=None
            if nack is None
            else NackInfo(
                version=Version(_text(_dict(nack, "nack").get("version"), "nack version")),
                nonce="",
                code=int(_number(nack.get("code"), "nack code") or 0),
                message=_text(nack.get("message"), "nack message"),
                at=_number(nack.get("at"), "nack at") or 0.0,
            ),
        )
    identity = item.get("identity")
    return ClientStatus(
        client_id=_text(item.get("client_id"), "client_id"),
        node_id=_text(item.get("node_id"), "node_id"),
        key=_text(item.get("class"), "class"),
        transport=_text(item.get("transport"), "transport"),
        connected=item.get("connected") is True,
        connected_at=_number(item.get("connected_at"), "connected_at") or 0.0,
        disconnected_at=_number(item.get("disconnected_at"), "disconnected_at", optional=True),
        types=types,
        identity=None if identity is None else _identity(_dict(identity, "identity")),
        agent=_text(item.get("agent", ""), "agent"),
    )


def _version(value: Any) -> Version | None:
    return None if value is None else Version(_text(value, "a version"))


def _identity(item: Mapping[str, Any]) -> ClientIdentity:
    def when(key: str) -> datetime:
        return datetime.fromtimestamp(_number(item.get(key), key) or 0.0, UTC)

    credential = _text(item.get("credential"), "credential")
    _check(credential in ("token", "certificate"), "credential is neither kind")
    issued_at = item.get("issued_at")
    return ClientIdentity(
        spiffe_id=_text(item.get("spiffe_id"), "spiffe_id"),
        serial=_text(item.get("serial"), "serial"),
        not_before=when("not_before"),
        not_after=when("not_after"),
        credential=credential,  # type: ignore[arg-type]  # checked just above
        token_id=_text(item.get("token_id", ""), "token_id"),
        issued=int(_number(item.get("issued", 1), "issued") or 1),
        issued_at=None if issued_at is None else when("issued_at"),
    )


def problem_of(item: Mapping[str, Any]) -> Problem:
    """An entry of ``/debug/errors`` of severity error or warning (``admin.problem_json``)
    read back. Raises Garbage when it is not of that shape."""
    severity = _text(item.get("severity"), "severity")
    _check(severity in ("error", "warning"), "severity is neither error nor warning")
    return Problem(
        _text(item.get("path"), "path"),
        int(_number(item.get("line"), "line") or 0),
        _text(item.get("field"), "field"),
        _text(item.get("message"), "message"),
        Severity(severity),
    )


def _absence(item: Mapping[str, Any]) -> Absence:
    seen = item.get("last_seen")
    last = None
    if seen is not None:
        last = ClientStatus(
            client_id="",
            node_id=_text(seen.get("node_id"), "node_id"),
            key="",
            transport="",
            connected=False,
            connected_at=0.0,
            disconnected_at=_number(seen.get("disconnected_at"), "disconnected_at"),
            agent=_text(seen.get("agent", ""), "agent"),
        )
    return Absence(
        ExpectedProxy(
            _text(item.get("namespace"), "namespace"),
            _text(item.get("service"), "service"),
            _text(item.get("address"), "address"),
            _text(item.get("origin"), "origin"),
        ),
        last,
    )


@dataclass(frozen=True, slots=True)
class PageInputs:
    """The merged views a status page is rendered from (each ``Merged.body``)."""

    daemon: DaemonSummary
    clients: Sequence[Mapping[str, Any]]
    problems: Sequence[Mapping[str, Any]]
    expected: Mapping[str, Any]
    registrations: Mapping[str, Any]
    #: Workers that could not be asked or answered garbage, with why.
    unusable: Mapping[str, str] = field(default_factory=dict)


def status_view(
    inputs: PageInputs, *, now: float, service_filter: str = "", state_filter: str = ""
) -> StatusView:
    """The status page's ``StatusView`` of the merged views, as one daemon's would be.
    A client, problem or absence that cannot be read back is left out (its worker's
    other items stay); each unusable worker is shown as a configuration error at the
    top (path ``<worker N>``), so the page and its title count it."""
    d = inputs.daemon
    clients: list[ClientStatus] = []
    for item in inputs.clients:
        try:
            clients.append(client_status(item))
        except (Garbage, TypeError, ValueError):
            continue
    errors: list[Problem] = [
        Problem(f"<worker {w}>", 0, "", f"worker unreachable: {why}")
        for w, why in sorted(inputs.unusable.items())
    ]
    warnings: list[Problem] = []
    conditions: list[Mapping[str, Any]] = []
    for item in inputs.problems:
        if item.get("severity") in ("error", "warning"):
            try:
                problem = problem_of(item)
            except (Garbage, TypeError, ValueError):
                continue
            (errors if problem.severity is Severity.ERROR else warnings).append(problem)
        elif item.get("severity") == "condition":  # Gateway API status conditions
            conditions.append(item)
    absent: list[Absence] = []
    for item in inputs.expected.get("absent", ()):
        try:
            absent.append(_absence(item))
        except (Garbage, TypeError, ValueError, AttributeError):
            continue
    keys: set[Hashable] = {*d.snapshots, *(c.key for c in clients if c.connected)}
    snapshots: dict[Hashable, ClassSnapshot] = {k: v for k, v in d.snapshots.items()}
    workloads: dict[Hashable, Workload] = {k: v for k, v in d.workloads.items()}
    return StatusView(
        version=d.version,
        started_at=d.started_at,
        now=now,
        config_dir=d.config_dir,
        loaded=d.loaded,
        errors=tuple(errors),
        warnings=tuple(warnings),
        clients=tuple(clients),
        snapshots=snapshots,
        policies={k: d.policies.get(str(k), {}) for k in keys},
        renew_fraction=d.renew_fraction,
        stale_after=d.stale_after,
        workloads=workloads,
        absent=tuple(absent),
        registrations=tuple(inputs.registrations.get("registrations", ())),
        conditions=tuple(conditions),
        service_filter=service_filter,
        state_filter=state_filter,
    )


# -- metrics ----------------------------------------------------------------------------

#: How a sample combines across workers: ``sum`` (by name and labels), ``max``, ``min``,
#: or ``union`` (value 1 per distinct label set: info-like families).
Rule = Literal["sum", "max", "min", "union"]

#: Each family's rule by family name (as the text parser names it); any family not here
#: is summed: counters, histograms and the per-client gauges (connected clients, sync
#: states, identities) add up across workers, each worker serving its own clients.
#: Per-daemon figures every worker computes of the same configuration are taken once
#: (``max``): a configuration's errors, warnings, refused reloads, address moves,
#: resources per class, the registrations the shared store holds. ``min`` where the
#: daemon is only as good as its worst worker or the earliest counts: loaded,
#: store connected, the soonest certificate expiry, the start time (and every
#: ``*_created`` sample). ``union`` for the families of value 1 whose labels carry the
#: value: the build info and each class's snapshot versions (two versions of one class
#: and type show both while workers disagree).
METRIC_RULES: Mapping[str, Rule] = {
    "xdsd_build_info": "union",
    "xdsd_snapshot_version_info": "union",
    "xdsd_config_errors": "max",
    "xdsd_config_warnings": "max",
    "xdsd_config_reloads_refused": "max",
    "xdsd_virtual_address_moves": "max",
    "xdsd_snapshot_resources": "max",
    "xdsd_node_classes": "max",
    "xdsd_registrations_current": "max",
    "xdsd_config_loaded": "min",
    "xdsd_registry_store_connected": "min",
    "xdsd_certificate_soonest_expiry_timestamp_seconds": "min",
    "xdsd_start_time_seconds": "min",
}

#: The family the merged exposition adds: each worker's state (1 answered, 0 not).
WORKER_UP = "xdsd_worker_up"


def metric_rule(family: str, sample: str) -> Rule:
    """How ``sample`` of ``family`` combines across workers (see ``METRIC_RULES``)."""
    if sample.endswith("_created"):
        return "min"
    return METRIC_RULES.get(family, "sum")


def merge_metrics(
    answers: Sequence[Answer], extra: Sequence[Metric] = ()
) -> tuple[list[Metric], dict[str, str]]:
    """Every worker's ``/metrics`` text (``Answer.body``) as one set of families (to
    expose with ``prometheus_client``), with ``xdsd_worker_up`` per worker and the
    ``extra`` families (the supervisor's own) merged in by the same rules. A worker
    whose text does not parse is unusable (and down in ``xdsd_worker_up``); a family
    whose type differs from the first worker's is left out of that worker's share."""
    ok, bad = _usable(answers)
    parsed: list[tuple[str, list[Metric]]] = []
    for a in ok:
        try:
            _check(isinstance(a.body, str), "the metrics are not text")
            parsed.append((a.worker, list(text_string_to_metric_families(a.body))))
        except Exception as e:  # the parser raises what it likes on garbage
            bad[a.worker] = f"answered garbage: {_short(str(e) or type(e).__name__)}"
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for _, metrics in [*parsed, ("", list(extra))]:
        for family in metrics:
            held = families.get(family.name)
            if held is None:
                held = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif held.type != family.type:
                continue
            into = values.setdefault(family.name, {})
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                rule = metric_rule(family.name, s.name)
                if key not in into:
                    into[key] = 1.0 if rule == "union" else s.value
                elif rule == "sum":
                    into[key] += s.value
                elif rule == "max":
                    into[key] = max(into[key], s.value)
                elif rule == "min":
                    into[key] = min(into[key], s.value)
    out = []
    for name, family in families.items():
        for (sample, labels), value in sorted(values.get(name, {}).items()):
            family.add_sample(sample, dict(labels), value)
        out.append(family)
    up = Metric(WORKER_UP, "Each worker daemon: 1 when its admin answered, 0 when not.", "gauge")
    for a in answers:
        up.add_sample(WORKER_UP, {"worker": a.worker}, 0.0 if a.worker in bad else 1.0)
    out.append(up)
    return out, bad
