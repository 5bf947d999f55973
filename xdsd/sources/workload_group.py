"""WorkloadGroup specs → ``WorkloadGroup`` (Istio's networking.istio.io API).

A WorkloadGroup describes the workloads that register themselves into it (``xdsd
bootstrap --workload-group``): ``metadata`` (the entries' labels and annotations),
``template`` (a WorkloadEntry spec without an address, read by the WorkloadEntry reader)
and ``probe`` (how xdsd judges their health). Every field is read or refused at its line:
``probe.exec`` by name (xdsd runs no command on a workload), ``probe.grpc`` and
``tcpSocket.host`` as not honoured, anything unknown as unknown.
"""

from __future__ import annotations

import re
from typing import Any

from xdsd.located import Fields
from xdsd.model import Origin
from xdsd.model.networking import (
    HttpProbe,
    ProbeScheme,
    ReadinessProbe,
    TcpProbe,
    WorkloadEndpoint,
    WorkloadGroup,
)
from xdsd.sources.service_entry import parse_workload

#: An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: The most seconds a probe's timing field may say (a day: beyond that, a typo).
_MAX_SECONDS = 86_400
#: The most headers a probe may send.
_MAX_HEADERS = 32


def parse_workload_group(spec: Fields, name: str, namespace: str, origin: Origin) -> WorkloadGroup:
    """An Istio WorkloadGroup (see the module doc). Rules checked here: ``template`` is
    required and has no address; a ``probe`` has exactly one of ``httpGet`` and
    ``tcpSocket``; timing fields are whole seconds in Kubernetes' ranges."""
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    meta = spec.obj("metadata")
    if meta is not None:
        labels = meta.labels("labels")
        annotations = _annotations(meta)
        meta.finish()
    template_fields = spec.obj("template", required=True)
    template = WorkloadEndpoint("")
    if template_fields is not None:
        template = parse_workload(template_fields, template=True) or template
    probe_fields = spec.obj("probe")
    probe = _parse_probe(probe_fields) if probe_fields is not None else None
    spec.finish()
    return WorkloadGroup(
        name,
        namespace,
        labels=labels,
        annotations=annotations,
        template=template,
        probe=probe,
        origin=origin,
    )


def _annotations(meta: Fields) -> tuple[tuple[str, str], ...]:
    """``metadata.annotations``: a mapping of strings (kept and shown, not acted on)."""
    table = meta.obj("annotations")
    if table is None:
        return ()
    out = []
    for key in sorted(table.data, key=str):
        value = table.string(str(key))
        out.append((str(key), value))
    table.finish()
    return tuple(out)


def _parse_probe(f: Fields) -> ReadinessProbe:
    """``probe``: ``httpGet`` or ``tcpSocket`` and the timing fields (Kubernetes'
    defaults: initialDelaySeconds 0, timeoutSeconds 1, periodSeconds 10,
    successThreshold 1, failureThreshold 3)."""
    default = ReadinessProbe()
    initial = f.integer(
        "initialDelaySeconds",
        default=default.initial_delay_seconds,
        minimum=0,
        maximum=_MAX_SECONDS,
    )
    timeout = f.integer(
        "timeoutSeconds", default=default.timeout_seconds, minimum=1, maximum=_MAX_SECONDS
    )
    period = f.integer(
        "periodSeconds", default=default.period_seconds, minimum=1, maximum=_MAX_SECONDS
    )
    success = f.integer(
        "successThreshold", default=default.success_threshold, minimum=1, maximum=1000
    )
    failure = f.integer(
        "failureThreshold", default=default.failure_threshold, minimum=1, maximum=1000
    )
    if f.has("exec"):
        f.read.add("exec")
        f.error(
            "exec",
            "is refused: xdsd cannot run commands on the workload (it probes from the "
            "control plane); use httpGet or tcpSocket",
        )
    if f.has("grpc"):
        f.read.add("grpc")
        f.error("grpc", "is not honoured by xdsd: use httpGet or tcpSocket")
    http_fields = f.obj("httpGet")
    tcp_fields = f.obj("tcpSocket")
    http = _parse_http(http_fields) if http_fields is not None else None
    tcp = _parse_tcp(tcp_fields) if tcp_fields is not None else None
    if http_fields is not None and tcp_fields is not None:
        f.error("tcpSocket", "excludes httpGet: a probe has exactly one check")
    elif http_fields is None and tcp_fields is None and not f.has("exec") and not f.has("grpc"):
        f.error("httpGet", "or tcpSocket is required: a probe has exactly one check")
    f.finish()
    return ReadinessProbe(http, tcp, initial, timeout, period, success, failure)


def _parse_http(f: Fields) -> HttpProbe | None:
    port = f.port("port", required=True)
    path = f.string("path", default="/") or "/"
    if not path.startswith("/"):
        f.error("path", f"must start with '/' (got {path!r})")
    elif any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        f.error("path", "must not hold spaces or control characters")
    host = f.string("host")
    if host and (any(c.isspace() for c in host) or "/" in host):
        f.error("host", f"must be a host name or IP address (got {host!r})")
    scheme = f.enum("scheme", ProbeScheme, ProbeScheme.HTTP)
    headers: list[tuple[str, str]] = []
    for i, item in f.items("httpHeaders"):
        if i >= _MAX_HEADERS:
            f.report.add(
                (*f.path, "httpHeaders", i), f"a probe sends at most {_MAX_HEADERS} headers"
            )
            break
        header = _header(f, i, item)
        if header is not None:
            headers.append(header)
    f.finish()
    if not port:
        return None
    return HttpProbe(port, path, host, scheme, tuple(headers))


def _header(f: Fields, i: int, item: Any) -> tuple[str, str] | None:
    """One ``httpHeaders`` item, ``{name, value}``."""
    path = (*f.path, "httpHeaders", i)
    if not isinstance(item, dict):
        f.report.add(path, "must be a mapping with name and value")
        return None
    h = Fields(f.report, path, item)
    name = h.string("name", required=True)
    value = h.string("value")
    h.finish()
    if name and not _TOKEN.match(name):
        h.error("name", f"must be an HTTP header name (got {name!r})")
        return None
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        h.error("value", "must not hold control characters")
        return None
    return (name, value) if name else None


def _parse_tcp(f: Fields) -> TcpProbe | None:
    port = f.port("port", required=True)
    if f.has("host"):
        f.read.add("host")
        f.error(
            "host",
            "is not honoured: a TCP probe connects to the workload's own address; remove it",
        )
    f.finish()
    return TcpProbe(port) if port else None
