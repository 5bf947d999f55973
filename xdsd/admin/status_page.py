"""The status page: one plain HTML page of proxies, configuration and versions.

Each proxy with a workload identity from xdsd's CA shows it in an *Identity* column: its
SPIFFE id, how it proved it (token id, or its client certificate), the certificate's
serial and how long it has left, flagged *expiring soon* (``identities.expiring_soon``);
the header counts those expiring soon.

``render_status_page`` is a pure function of a ``StatusView`` (what the admin server read
from the cache and the configuration at request time) and returns the whole page. Every
value that comes from a client or a config file (node ids, NACK messages, paths, class
descriptions) is escaped. The page refreshes itself with a ``<meta http-equiv=refresh>``.

States use one vocabulary with ``xdsd status`` (``proxies.STATE_WORDS``): a type sent
and unanswered for longer than ``stale_after`` is *stale*, as there. Below the proxies,
*Expected but absent* lists the endpoints no connected sidecar covers
(``proxies.absent``), with the client last seen there. The tab title starts with the
count of problems, ``(3) xdsd ...``: proxies NACKing, not applying or stale, absent
endpoints, and configuration errors.

Filtering by service and state: every proxy and absent row carries ``data-service`` and
``data-state``; a plain GET form (``?service=&state=``) hides the other rows on the
server, so it works without script; a small inline script applies the same filter at
once when a choice changes (and reads ``#service=...&state=...`` too), keeping the
choice in the address so the refresh keeps it.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Hashable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

from xdsd.admin.identities import DEFAULT_RENEW_FRACTION, expiring_soon
from xdsd.admin.proxies import (
    DEFAULT_STALE_AFTER,
    FAILING_STATES,
    PROXY_STATES,
    STATE_WORDS,
    Absence,
    ProxyState,
    Workload,
    client_state,
    type_state,
)
from xdsd.cache.cache import ClientIdentity, ClientStatus, TypeStatus
from xdsd.errors import Problem
from xdsd.resources import PUSH_ORDER, SHORT_NAMES, TypeUrl

#: Seconds between the page's own refreshes.
REFRESH_SECONDS = 5
#: At most this many proxies are listed (the worst first); the rest are counted.
MAX_ROWS = 500
#: The kinds of security policies a class's ``policies`` lists (their JSON keys), with
#: the kind's name as shown.
POLICY_KINDS = (
    ("authorization_policies", "AuthorizationPolicy"),
    ("peer_authentications", "PeerAuthentication"),
    ("request_authentications", "RequestAuthentication"),
)

#: The states the filter offers: a proxy's, and ``absent`` (an expected endpoint).
FILTER_STATES: tuple[str, ...] = (*PROXY_STATES, "absent")
_STATE_TEXT: Mapping[str, str] = {**{str(k): v for k, v in STATE_WORDS.items()}, "absent": "absent"}

_SCRIPT = """
(function () {
  var form = document.getElementById('filter');
  if (!form) return;
  var given = new URLSearchParams(location.search);
  new URLSearchParams(location.hash.slice(1)).forEach(function (v, k) { given.set(k, v); });
  ['service', 'state'].forEach(function (k) {
    if (given.has(k)) form.elements[k].value = given.get(k);
  });
  function apply() {
    var service = form.elements.service.value, state = form.elements.state.value;
    var shown = 0;
    document.querySelectorAll('tr[data-state]').forEach(function (row) {
      var hide = (service && row.dataset.service !== service) ||
                 (state && row.dataset.state !== state);
      row.hidden = !!hide;
      if (!hide) shown += 1;
    });
    document.getElementById('filter-shown').textContent =
      service || state ? shown + ' rows shown' : '';
    var query = new URLSearchParams();
    if (service) query.set('service', service);
    if (state) query.set('state', state);
    var q = query.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : ''));
  }
  form.addEventListener('change', apply);
  form.addEventListener('submit', function (e) { e.preventDefault(); apply(); });
  document.getElementById('filter-apply').hidden = true;
  apply();
})();
"""

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em 2em; color: #1d232b; }
h1 { font-size: 1.5em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.6em 0 .5em; }
header p { margin: 0; color: #4a5563; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35em .6em;
         border-bottom: 1px solid #dfe3e8; }
th { background: #f3f5f7; font-weight: 600; }
code { font: 12px ui-monospace, monospace; }
.class { color: #4a5563; font-size: 12px; }
.state { white-space: nowrap; }
span.in_sync, p.in_sync { color: #17663a; } span.pending { color: #8a5a00; }
span.nacked, span.not_applied, span.stale, span.absent, .error, .message { color: #b3261e; }
td.nacked, td.not_applied, td.stale { background: #fdecea; white-space: normal; }
form#filter { margin: .6em 0; } form#filter label { margin-right: 1em; }
tr[hidden] { display: none; }
.warning { color: #8a5a00; }
.message { font: 12px ui-monospace, monospace; white-space: pre-wrap; max-width: 60em; }
.summary span { margin-right: 1.2em; }
ul.problems { padding-left: 1.2em; } ul.problems li { margin: .2em 0; }
td.policy ul { margin: 0; padding-left: 1.1em; } .policies { font-size: 12px; }
td.identity { font-size: 12px; } td.identity.expiring { background: #fdecea; }
.expiring { color: #b3261e; font-weight: 600; }
footer { margin-top: 2em; color: #6b7380; font-size: 12px; }
"""


class ClassSnapshot(Protocol):
    """What the page reads of a node class's snapshot: its versions by type, how many
    resources of a type it holds (``len(get(type))``) and a type's version. A
    ``cache.snapshot.Snapshot`` is one; so is a summary read back from a worker's
    ``/debug/daemon`` (``xdsd.workers.merge``)."""

    @property
    def versions(self) -> Mapping[TypeUrl, str]:
        """The version of each type held."""
        ...

    def get(self, type_url: TypeUrl) -> Sized:
        """The resources of a type (only counted here)."""
        ...

    def version(self, type_url: TypeUrl) -> str:
        """The version of a type."""
        ...


@dataclass(frozen=True, slots=True)
class StatusView:
    """Everything the page shows, read at request time."""

    version: str
    started_at: float
    now: float
    config_dir: str
    loaded: bool
    errors: Sequence[Problem]
    warnings: Sequence[Problem]
    clients: Sequence[ClientStatus]
    snapshots: Mapping[Hashable, ClassSnapshot]
    #: The security policies of each class shown (``admin.ClassPolicies``' JSON).
    policies: Mapping[Hashable, Mapping[str, Any]] = field(default_factory=dict)
    #: ``[mesh.ca] renew_fraction``: when a certificate counts as expiring soon.
    renew_fraction: float = DEFAULT_RENEW_FRACTION
    #: The ``stale_after`` setting: seconds a version may go unanswered.
    stale_after: float = DEFAULT_STALE_AFTER
    #: Where each node class's proxies are (``proxies.Workload``), by class.
    workloads: Mapping[Hashable, Workload] = field(default_factory=dict)
    #: The expected proxies no connected client covers.
    absent: Sequence[Absence] = ()
    #: The filter asked for (``?service=NAMESPACE/NAME&state=STATE``; "" shows all).
    service_filter: str = ""
    state_filter: str = ""
    #: The registered workloads (``/debug/registrations``' items).
    registrations: Sequence[Mapping[str, Any]] = ()
    #: The Gateway API objects' status conditions (``/debug/errors``' ``condition``
    #: entries: object, scope, type, status, reason, message, holds, path, line).
    conditions: Sequence[Mapping[str, Any]] = ()
    #: The node classes the loaded configuration cannot configure (``MeshState``'s
    #: ``class_errors``): errors, though the last reload was not refused.
    class_errors: Sequence[Problem] = ()


def problem_count(view: StatusView) -> int:
    """What the tab title counts: connected proxies NACKing, not applying or stale,
    absent expected proxies, and configuration errors."""
    failing = sum(
        client_state(c, view.now, view.stale_after) in FAILING_STATES
        for c in view.clients
        if c.connected
    )
    return failing + len(view.absent) + len(view.errors) + len(view.class_errors)


def render_status_page(view: StatusView) -> str:
    """The whole page, as HTML text."""
    connected = [c for c in view.clients if c.connected]
    gone = [c for c in view.clients if not c.connected]
    types = _types_shown(connected, view.snapshots)
    problems = problem_count(view)
    flag = f"({problems}) " if problems else ""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{flag}xdsd status: {_proxies(len(connected))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        _header(view, connected),
        _config_section(view),
        _conditions_section(view),
        _filter_form(view, connected),
        _proxies_section(connected, types, view),
        _absent_section(view),
        _registrations_section(view),
        _versions_section(view, connected, types),
        _policies_section(view, connected),
        _disconnected_section(gone, view.now),
        "<footer>This page refreshes every "
        f'{REFRESH_SECONDS} s. As JSON: <a href="/debug/clients">/debug/clients</a>, '
        '<a href="/debug/errors">/debug/errors</a>, '
        '<a href="/debug/expected">/debug/expected</a>, '
        '<a href="/debug/registrations">/debug/registrations</a>, '
        "<code>/debug/config_dump?node=ID</code>; for Prometheus: "
        '<a href="/metrics">/metrics</a>.</footer>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _header(view: StatusView, connected: Sequence[ClientStatus]) -> str:
    states: dict[str, int] = dict.fromkeys(PROXY_STATES, 0)
    for client in connected:
        states[client_state(client, view.now, view.stale_after)] += 1
    states["absent"] = len(view.absent)
    if not view.loaded:
        config = '<span class="error">no configuration loaded</span>'
    elif view.errors:
        config = (
            f'<span class="error">{len(view.errors)} errors: last reload refused, serving the '
            "last good configuration</span>"
        )
    elif view.class_errors:
        config = (
            f'<span class="error">{len(view.class_errors)} errors: some node classes cannot '
            "be configured, each serving its last good configuration</span>"
        )
    else:
        config = '<span class="in_sync">loaded</span>'
    summary = " ".join(
        f'<span class="{s}" id="count-{s}">{n} {_STATE_TEXT[s]}</span>'
        for s, n in states.items()
        if n or s == "in_sync"
    )
    if states["stale"]:
        summary += f" <span>(stale: no answer for over {view.stale_after:g} s)</span>"
    identities = [c.identity for c in connected if c.identity is not None]
    if identities:
        soon = sum(expiring_soon(i, view.now, view.renew_fraction) for i in identities)
        summary += (
            f' <span id="count-identities">{len(identities)} with an identity</span>'
            f'<span id="count-expiring" class="{"expiring" if soon else "in_sync"}">'
            f"{soon} expiring soon</span>"
        )
    return (
        "<header><h1>xdsd</h1>"
        f"<p>version {_e(view.version)} · up {_duration(view.now - view.started_at)} · "
        f"config <code>{_e(view.config_dir)}</code>: {config}</p>"
        f'<p class="summary"><span id="count-proxies">{_proxies(len(connected))} connected'
        f"</span>{summary}</p></header>"
    )


def _config_section(view: StatusView) -> str:
    out = ['<section id="config"><h2>Configuration errors and warnings</h2>']
    if not view.errors and not view.class_errors and not view.warnings:
        out.append('<p class="in_sync">No errors or warnings.</p>')
    else:
        out.append('<ul class="problems">')
        for problem in [*view.errors, *view.class_errors]:
            out.append(f'<li class="error">{_e(str(problem))}</li>')
        for problem in view.warnings:
            out.append(f'<li class="warning">{_e(str(problem))}</li>')
        out.append("</ul>")
    out.append("</section>")
    return "".join(out)


def _conditions_section(view: StatusView) -> str:
    """The Gateway API objects' status conditions, those not met first (nothing without
    Gateway API objects)."""
    if not view.conditions:
        return ""
    rows = sorted(view.conditions, key=lambda c: bool(c.get("holds")))
    failing = sum(1 for c in rows if not c.get("holds"))
    objects = len({c.get("object") for c in rows})
    out = [
        '<section id="gateway-status"><h2>Gateway API status</h2>',
        f'<p><span id="count-conditions">{objects} objects, {len(rows)} conditions</span>, '
        f'<span id="count-conditions-failing" class="{"error" if failing else "in_sync"}">'
        f"{failing} not met</span></p>",
        "<table><thead><tr><th>object</th><th>of</th><th>condition</th><th>reason</th>"
        "<th>message</th><th>file</th></tr></thead><tbody>",
    ]
    for c in rows:
        state = "in_sync" if c.get("holds") else "error"
        where = f"{c.get('path', '')}:{c.get('line', 0)}" if c.get("line") else c.get("path", "")
        out.append(
            f'<tr class="condition {state}"><td>{_e(str(c.get("object", "")))}</td>'
            f"<td>{_e(str(c.get('scope', '')))}</td>"
            f'<td class="{state}">{_e(str(c.get("type", "")))}={_e(str(c.get("status", "")))}</td>'
            f"<td>{_e(str(c.get('reason', '')))}</td><td>{_e(str(c.get('message', '')))}</td>"
            f"<td><code>{_e(str(where))}</code></td></tr>"
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _filter_form(view: StatusView, connected: Sequence[ClientStatus]) -> str:
    """The service and state filter: a GET form (works without script)."""
    services = sorted(
        {w.name for c in connected if (w := view.workloads.get(c.key)) is not None}
        | {a.expected.name for a in view.absent}
        | ({view.service_filter} if view.service_filter else set())
    )
    service_options = ['<option value="">all services</option>'] + [
        f'<option value="{_e(n)}"{" selected" if n == view.service_filter else ""}>{_e(n)}</option>'
        for n in services
    ]
    state_options = ['<option value="">all states</option>'] + [
        f'<option value="{s}"{" selected" if s == view.state_filter else ""}>'
        f"{_e(_STATE_TEXT[s])}</option>"
        for s in FILTER_STATES
    ]
    return (
        '<form id="filter" method="get" action="/">'
        f'<label>Service <select name="service">{"".join(service_options)}</select></label>'
        f'<label>State <select name="state">{"".join(state_options)}</select></label>'
        '<button type="submit" id="filter-apply">Filter</button> '
        '<span id="filter-shown"></span></form>'
    )


def _hidden(view: StatusView, service: str, state: str) -> str:
    """`` hidden`` when the filter asked for leaves the row out."""
    out = (view.service_filter and service != view.service_filter) or (
        view.state_filter and state != view.state_filter
    )
    return " hidden" if out else ""


def _proxies_section(
    connected: Sequence[ClientStatus], types: Sequence[TypeUrl], view: StatusView
) -> str:
    now, policies, renew_fraction = view.now, view.policies, view.renew_fraction
    out = ['<section id="proxies"><h2>Proxies</h2>']
    if not connected:
        out.append("<p>No proxy is connected.</p></section>")
        return "".join(out)
    rank = {s: i for i, s in enumerate(PROXY_STATES)}
    states = {c.client_id: client_state(c, now, view.stale_after) for c in connected}
    ordered = sorted(connected, key=lambda c: (rank[states[c.client_id]], c.node_id, c.client_id))
    with_identity = any(c.identity is not None for c in connected)
    out.append("<table><thead><tr><th>Node</th><th>Envoy</th><th>Transport</th><th>Connected</th>")
    if with_identity:
        out.append("<th>Identity</th>")
    out.extend(f"<th>{_e(_short(t))}</th>" for t in types)
    out.append("</tr></thead><tbody>")
    for client in ordered[:MAX_ROWS]:
        link = "/debug/config_dump?" + urllib.parse.urlencode({"node": client.node_id})
        state = states[client.client_id]
        workload = view.workloads.get(client.key)
        service = workload.name if workload is not None else ""
        out.append(
            f'<tr class="proxy {state}" data-node="{_e(client.node_id)}" '
            f'data-service="{_e(service)}" data-state="{state}"'
            f"{_hidden(view, service, state)}>"
            f'<td><a href="{_e(link)}">{_e(client.node_id or "(no id)")}</a>'
            f'<div class="class">{_e(str(client.key))}</div>'
            f"{_policies_line(policies.get(client.key))}</td>"
            f'<td class="agent">{_e(client.agent) or "—"}</td>'
            f"<td>{_e(client.transport)}</td>"
            f"<td>{_ago(now, client.connected_at)}</td>"
        )
        if with_identity:
            out.append(_identity_cell(client.identity, now, renew_fraction))
        for type_url in types:
            status = client.types.get(type_url)
            out.append(_type_cell(type_url, status, now, view.stale_after))
        out.append("</tr>")
    out.append("</tbody></table>")
    if len(ordered) > MAX_ROWS:
        out.append(
            f"<p>… and {len(ordered) - MAX_ROWS} more (all of them in "
            '<a href="/debug/clients">/debug/clients</a>).</p>'
        )
    out.append("</section>")
    return "".join(out)


def _registrations_section(view: StatusView) -> str:
    """The registered workloads (WorkloadGroup auto-registration); nothing without any."""
    if not view.registrations:
        return ""
    out = [
        '<section id="registrations"><h2>Registered workloads</h2>'
        "<table><thead><tr><th>Group</th><th>Address</th><th>Node</th><th>Since</th>"
        "<th>Health</th><th>Replica</th><th>State</th></tr></thead><tbody>"
    ]
    for r in view.registrations[:MAX_ROWS]:
        disconnected = float(r.get("disconnected") or 0)
        state = f"left {_ago(view.now, disconnected)}" if disconnected else "connected"
        health = str(r.get("health", ""))
        out.append(
            f'<tr class="registration" data-health="{_e(health)}">'
            f"<td>{_e(str(r.get('namespace')))}/{_e(str(r.get('group')))}</td>"
            f"<td><code>{_e(str(r.get('address')))}</code></td>"
            f"<td><code>{_e(str(r.get('node')))}</code></td>"
            f"<td>{_ago(view.now, float(r.get('since') or 0))}</td>"
            f"<td>{_e(health)}</td><td>{_e(str(r.get('replica')))}</td>"
            f"<td>{_e(state)}</td></tr>"
        )
    out.append("</tbody></table>")
    if len(view.registrations) > MAX_ROWS:
        out.append(f"<p>... and {len(view.registrations) - MAX_ROWS} more.</p>")
    out.append("</section>")
    return "".join(out)


def _absent_section(view: StatusView) -> str:
    """The expected proxies no connected client covers."""
    out = ['<section id="absent"><h2>Expected but absent</h2>']
    if not view.absent:
        out.append(
            '<p class="in_sync">Every endpoint of the configuration has a connected '
            "proxy.</p></section>"
        )
        return "".join(out)
    out.append(
        "<p>Endpoints of the configuration (Service endpoints, WorkloadEntries) that no "
        "connected sidecar covers: matched by namespace, service and the node's "
        "<code>instance_ip</code>.</p>"
        "<table><thead><tr><th>Service</th><th>Address</th><th>From</th>"
        "<th>Last seen</th></tr></thead><tbody>"
    )
    for absence in view.absent[:MAX_ROWS]:
        e, seen = absence.expected, absence.last_seen
        last = "never (since xdsd started)"
        if seen is not None:
            agent = f", {_e(seen.agent)}" if seen.agent else ""
            last = (
                f"<code>{_e(seen.node_id or '(no id)')}</code>{agent}, disconnected "
                f"{_ago(view.now, seen.disconnected_at)}"
            )
        out.append(
            f'<tr class="absent" data-service="{_e(e.name)}" data-state="absent" '
            f'data-address="{_e(e.address)}"{_hidden(view, e.name, "absent")}>'
            f"<td>{_e(e.name)}</td><td><code>{_e(e.address)}</code></td>"
            f'<td class="class">{_e(e.origin)}</td><td>{last}</td></tr>'
        )
    out.append("</tbody></table>")
    if len(view.absent) > MAX_ROWS:
        out.append(
            f"<p>… and {len(view.absent) - MAX_ROWS} more (all of them in "
            '<a href="/debug/expected">/debug/expected</a>).</p>'
        )
    out.append("</section>")
    return "".join(out)


def _identity_cell(identity: ClientIdentity | None, now: float, renew_fraction: float) -> str:
    if identity is None:
        return '<td class="identity none">—</td>'
    soon = expiring_soon(identity, now, renew_fraction)
    left = identity.not_after.timestamp() - now
    proof = f"token <code>{_e(identity.token_id)}</code>" if identity.token_id else ""
    if not proof:
        proof = "client certificate" if identity.credential == "certificate" else "token"
    expiry = f"expires in {_duration(left)}" if left > 0 else "EXPIRED"
    if soon:
        expiry = f'<span class="expiring">{expiry} · expiring soon</span>'
    return (
        f'<td class="identity{" expiring" if soon else ""}" '
        f'data-spiffe="{_e(identity.spiffe_id)}" data-serial="{_e(identity.serial)}">'
        f"<code>{_e(identity.spiffe_id)}</code><br>by {proof}<br>"
        f"serial <code>{_e(identity.serial)}</code><br>{expiry}</td>"
    )


def _type_cell(type_url: TypeUrl, status: TypeStatus | None, now: float, stale_after: float) -> str:
    name = _e(_short(type_url))
    if status is None:
        return f'<td class="state none" data-type="{name}">—</td>'
    state: ProxyState = type_state(status, now, stale_after)
    lines = [f'<span class="{state}">{_STATE_TEXT[state]}</span>']
    if state == "in_sync":
        lines.append(f"<code>{_e(status.acked_version or '')}</code>")
    elif state == "pending" and status.sent_version is None:
        lines.append("nothing sent yet")
    elif state in ("pending", "stale"):
        sent = status.sent_version or ""
        lines.append(f"sent <code>{_e(sent)}</code> {_ago(now, status.sent_at)}")
        if status.acked_version:
            lines.append(f"holds <code>{_e(status.acked_version)}</code>")
    elif state == "nacked" and status.nack is not None:
        nack = status.nack
        lines.append(f"rejected <code>{_e(nack.version)}</code> {_ago(now, nack.at)}")
        lines.append(f"holds <code>{_e(status.acked_version or 'nothing')}</code>")
        lines.append(f'<div class="message">{_e(nack.message)}</div>')
    elif state == "not_applied":
        lines.append(f"served <code>{_e(status.sent_version or '')}</code>, not taken up")
        lines.append(f"holds <code>{_e(status.acked_version or 'nothing')}</code>")
    return f'<td class="state {state}" data-type="{name}">{"<br>".join(lines)}</td>'


def _versions_section(
    view: StatusView, connected: Sequence[ClientStatus], types: Sequence[TypeUrl]
) -> str:
    out = ['<section id="versions"><h2>Versions per node class</h2>']
    if not view.snapshots:
        out.append(
            "<p>No node class has a snapshot yet (one is built when a proxy of it "
            "connects).</p></section>"
        )
        return "".join(out)
    clients: dict[Hashable, int] = {}
    for client in connected:
        clients[client.key] = clients.get(client.key, 0) + 1
    out.append("<table><thead><tr><th>Node class</th><th>Proxies</th>")
    out.extend(f"<th>{_e(_short(t))}</th>" for t in types)
    out.append("</tr></thead><tbody>")
    for key, snapshot in sorted(view.snapshots.items(), key=lambda kv: str(kv[0])):
        out.append(f'<tr><td class="class">{_e(str(key))}</td><td>{clients.get(key, 0)}</td>')
        for type_url in types:
            count = len(snapshot.get(type_url))
            out.append(
                f"<td><code>{_e(snapshot.version(type_url))}</code><br>"
                f'<span class="class">{count} resources</span></td>'
            )
        out.append("</tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


def policy_names(policies: Mapping[str, Any] | None) -> list[str]:
    """``KIND NAMESPACE/NAME`` (and ``(ACTION)`` for an AuthorizationPolicy) of each
    policy in a class's ``policies`` JSON, in kind order."""
    out = []
    for key, kind in POLICY_KINDS:
        for policy in (policies or {}).get(key) or ():
            action = f" ({policy['action']})" if policy.get("action") else ""
            out.append(f"{kind} {policy.get('namespace')}/{policy.get('name')}{action}")
    return out


def _policies_line(policies: Mapping[str, Any] | None) -> str:
    """The policies of a proxy's class, under its class in the proxies table."""
    names = policy_names(policies)
    if not names:
        return ""
    return f'<div class="policies">{_e(", ".join(names))}</div>'


def _policies_section(view: StatusView, connected: Sequence[ClientStatus]) -> str:
    """Per node class: the security policies that select it, and the mutual TLS mode of
    each inbound port."""
    out = ['<section id="policies"><h2>Security policies per node class</h2>']
    clients: dict[Hashable, int] = {}
    for client in connected:
        clients[client.key] = clients.get(client.key, 0) + 1
    shown = sorted(
        (
            (key, policies)
            for key, policies in view.policies.items()
            if policy_names(policies) or policies.get("mtls")
        ),
        key=lambda kv: str(kv[0]),
    )
    if not shown:
        out.append("<p>No security policy applies to any node class.</p></section>")
        return "".join(out)
    out.append("<table><thead><tr><th>Node class</th><th>Proxies</th>")
    out.extend(f"<th>{kind}</th>" for _, kind in POLICY_KINDS)
    out.append("<th>mTLS per inbound port</th></tr></thead><tbody>")
    for key, policies in shown[:MAX_ROWS]:
        out.append(
            f'<tr class="policies" data-class="{_e(str(key))}">'
            f'<td class="class">{_e(str(key))}</td><td>{clients.get(key, 0)}</td>'
        )
        for json_key, kind in POLICY_KINDS:
            items = []
            for policy in policies.get(json_key) or ():
                action = f" ({policy['action']})" if policy.get("action") else ""
                where = f' title="{_e(str(policy.get("origin", "")))}"'
                items.append(
                    f"<li{where}>{_e(str(policy.get('namespace')))}/"
                    f"{_e(str(policy.get('name')))}{_e(action)}</li>"
                )
            cell = f"<ul>{''.join(items)}</ul>" if items else "—"
            out.append(f'<td class="policy" data-kind="{kind}">{cell}</td>')
        modes = ", ".join(f"{port} {mode}" for port, mode in (policies.get("mtls") or {}).items())
        out.append(f'<td class="mtls">{_e(modes) or "—"}</td></tr>')
    out.append("</tbody></table>")
    if len(shown) > MAX_ROWS:
        out.append(f"<p>… and {len(shown) - MAX_ROWS} more classes.</p>")
    out.append("</section>")
    return "".join(out)


def _disconnected_section(gone: Sequence[ClientStatus], now: float) -> str:
    if not gone:
        return ""
    recent = sorted(gone, key=lambda c: -(c.disconnected_at or 0.0))[:20]
    items = "".join(
        f"<li>{_e(c.node_id or '(no id)')} ({_e(c.transport)}), {_ago(now, c.disconnected_at)}</li>"
        for c in recent
    )
    return (
        f'<section id="disconnected"><h2>Recently disconnected ({len(gone)})</h2>'
        f"<ul>{items}</ul></section>"
    )


def _types_shown(
    connected: Sequence[ClientStatus], snapshots: Mapping[Hashable, ClassSnapshot]
) -> list[TypeUrl]:
    """The types any connected client was served or any snapshot holds, in push order."""
    seen: set[str] = set()
    for client in connected:
        seen.update(client.types)
    for snapshot in snapshots.values():
        seen.update(t for t in snapshot.versions if snapshot.get(t))
    return [t for t in PUSH_ORDER if t in seen] + sorted(
        TypeUrl(t) for t in seen if t not in PUSH_ORDER
    )


def _proxies(n: int) -> str:
    return "1 proxy" if n == 1 else f"{n} proxies"


def _short(type_url: TypeUrl) -> str:
    return SHORT_NAMES.get(type_url, type_url)


def _ago(now: float, at: float | None) -> str:
    if at is None:
        return ""
    return f"{_duration(now - at)} ago"


def _duration(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
