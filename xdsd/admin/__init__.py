"""The admin HTTP server: health, readiness, metrics, a status page and debug views.

Read-only views over the snapshot cache and the configuration's state:

- ``/`` the status page (HTML, refreshes itself: ``status_page.py``);
- ``/healthz``; ``/readyz`` (200 once a configuration has loaded and the xDS listeners are
  bound, 503 while the reloader cannot make progress);
- ``/metrics`` in Prometheus' text format (``metrics.py``);
- ``/debug/clients`` (per client: node, class, transport, when it connected and, per type,
  the version sent and acknowledged with their wall-clock times (seconds since the epoch),
  the sync state and the last NACK; the workload identity xdsd's CA issued it, if any —
  SPIFFE id, serial, validity, credential, token id, ``expiring_soon``, never a key:
  ``identities.py``; what the client says it is, ``agent``, e.g. ``envoy 1.36.2``;
  ``?node=ID`` keeps one node's); each type's ``state`` is ``in_sync``, ``pending``,
  ``stale`` (no answer for longer than the ``stale_after`` setting, which the
  ``X-Xdsd-Stale-After`` header gives), ``nacked`` or ``not_applied`` (``proxies.py``);
- ``/debug/expected`` (the proxies the configuration expects, one per Service endpoint
  and WorkloadEntry, and those of them no connected proxy covers, ``absent``, with the
  client last seen there: ``proxies.absent``);
- ``/debug/config_dump?node=ID`` (what that node is served, every type, proto3 JSON, with
  every secret redacted: ``resources.redaction``; under admin mutual TLS only for a
  client certificate that may speak for that node, see ``NodeAccess``);
- ``/debug/errors`` (the current config errors, then the warnings, with file and line,
  then the Gateway API objects' status conditions: ``gateway_status`` hook);
- ``/debug/registrations`` (the registered workloads: group, address, node, since,
  health, the replica holding each; ``registrations`` hook; a node's own are in its
  ``/debug/config_dump`` too).
- ``/debug/daemon`` (what the status page shows beyond the views above — versions and
  resource counts per node class, each class's policies and workload, start time,
  whether a configuration is loaded — for the merged admin of ``xdsd serve --workers``,
  ``xdsd.workers.admin``, to render the page from every worker's).
- ``/debug/addresses`` (``[mesh.dns]``'s blocks and every service's virtual addresses:
  key, namespace, fqdn, names, addresses, pinned by its file or allocated, and its slot;
  the ``addresses`` hook the daemon sets, ``MeshState.addresses``).

Each client of ``/debug/clients`` and ``/debug/config_dump``, and each class on the status
page, carries the security policies that apply to its node class (``policies``, a hook
the daemon sets: the admin server does not read the mesh itself).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from prometheus_client.aiohttp import make_aiohttp_handler

from xdsd.admin.identities import DEFAULT_RENEW_FRACTION, identity_json
from xdsd.admin.metrics import ConfigState, Metrics
from xdsd.admin.proxies import (
    DEFAULT_STALE_AFTER,
    Absence,
    ExpectedProxy,
    Workload,
    absent,
    type_state,
)
from xdsd.admin.status_page import StatusView, render_status_page
from xdsd.cache.cache import ClientStatus, SnapshotCache
from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem
from xdsd.resources import SHORT_NAMES, Resource, message_class, to_json
from xdsd.resources.redaction import redact

#: Decides whether the admin client with this certificate (``getpeercert()``; None
#: without one) may see what this client's node is served.
NodeAccess = Callable[[Mapping[str, Any] | None, ClientStatus], bool]
#: The security policies that apply to a node class, as JSON (``MeshState.policies``).
ClassPolicies = Callable[[Hashable], Mapping[str, Any]]
#: The proxies the current configuration expects (one per Service endpoint and
#: WorkloadEntry).
ExpectedProxies = Callable[[], Sequence[ExpectedProxy]]
#: Where a node class puts its proxies (None: a class that is no workload's).
WorkloadOf = Callable[[Hashable], Workload | None]
#: Every service's virtual addresses, as ``/debug/addresses`` shows them.
Addresses = Callable[[], Mapping[str, Any]]


def no_addresses() -> Mapping[str, Any]:
    """The ``addresses`` hook of views over no mesh: no service."""
    return {"enabled": False, "block": "", "block_v6": "", "services": []}


def no_policies(_key: Hashable) -> Mapping[str, Any]:
    """The ``policies`` hook of views over no mesh: nothing applies."""
    return {}


def no_expected() -> Sequence[ExpectedProxy]:
    """The ``expected`` hook of views over no mesh: no proxy is expected."""
    return ()


def no_workload(_key: Hashable) -> Workload | None:
    """The ``workload`` hook of views over no mesh: no class is placed."""
    return None


class AdminViews:
    """The admin handlers over ``cache`` and ``config``; ``metrics`` is exposed at
    ``/metrics``; ``version`` and ``config_dir`` are shown on the status page.
    ``node_access`` (None: everyone) decides who may see a node's resources
    (``/debug/config_dump``); a refusal is answered 403 and counted as
    ``xdsd_refused_total{listener="admin",reason="permission_denied"}``. ``policies``
    gives the security policies of a node class (``ClassPolicies``); ``expected`` the
    proxies the configuration expects and ``workload`` where a class's proxies are
    (``/debug/expected``); ``addresses`` every service's virtual addresses
    (``/debug/addresses``); ``stale_after`` (the setting) when a proxy that does not
    answer is stale."""

    def __init__(
        self,
        cache: SnapshotCache[Any],
        *,
        config: ConfigState,
        metrics: Metrics,
        version: str,
        config_dir: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.config = config
        self.metrics = metrics
        self.version = version
        self.config_dir = config_dir
        self.clock = clock
        self.listening = False
        self.node_access: NodeAccess | None = None
        #: Whether the admin client's certificate is the one forwarded in the
        #: ``PEER_CERTIFICATE_HEADER`` (a worker's admin behind ``xdsd.workers.admin``, on
        #: a socket only the supervisor reaches) instead of the connection's own.
        self.forwarded_certificate = False
        self.policies: ClassPolicies = no_policies
        self.expected: ExpectedProxies = no_expected
        self.workload: WorkloadOf = no_workload
        #: Every service's virtual addresses (``/debug/addresses``).
        self.addresses: Addresses = no_addresses
        #: Seconds a version may go unanswered before its client is stale.
        self.stale_after = DEFAULT_STALE_AFTER
        #: ``[mesh.ca] renew_at`` as it is now (a hook the daemon sets): when a
        #: certificate counts as expiring soon (``identities.expiring_soon``).
        self.renew_fraction: Callable[[], float] = lambda: DEFAULT_RENEW_FRACTION
        #: The restart cache's build served until the first full load ("" when none):
        #: ready meanwhile, and said on ``/debug/errors`` and the status page.
        self.cached: Callable[[], str] = lambda: ""
        #: Why the daemon cannot take edits ("" when it can): ``/readyz`` is 503 meanwhile.
        self.trouble: Callable[[], str] = lambda: ""
        #: Why the daemon serves with less than it should, though ready ("" when it
        #: does not): ``/readyz`` stays 200 and says it as ``degraded``.
        self.degraded: Callable[[], str] = lambda: ""
        #: The registered workloads as ``/debug/registrations`` shows them (a hook the
        #: daemon sets: ``xdsd.registry.views.registrations_json``).
        self.registrations: Callable[[], Mapping[str, Any]] = lambda: {
            "replica": "",
            "registrations": [],
        }
        #: The status conditions of the Gateway API objects of the configuration being
        #: served (a hook the daemon sets: ``MeshState.gateway_status``), each as
        #: ``sources.gateway_api.status.condition_json`` makes it.
        self.gateway_status: Callable[[], Sequence[Mapping[str, Any]]] = tuple

    def app(self) -> web.Application:
        """The aiohttp application."""
        application = web.Application()
        application.router.add_get("/", self.status_page)
        application.router.add_get("/healthz", self.healthz)
        application.router.add_get("/readyz", self.readyz)
        application.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        application.router.add_get("/debug/clients", self.clients)
        application.router.add_get("/debug/config_dump", self.config_dump)
        application.router.add_get("/debug/errors", self.config_errors)
        application.router.add_get("/debug/expected", self.expected_proxies)
        application.router.add_get("/debug/registrations", self.registered)
        application.router.add_get("/debug/addresses", self.virtual_addresses)
        application.router.add_get("/debug/daemon", self.daemon_view)
        return application

    async def daemon_view(self, _request: web.Request) -> web.Response:
        """What the status page shows beyond the other views, as JSON, so that a merged
        admin in front of several worker daemons (``xdsd.workers``) can render it:
        version, start time, config directory, ``loaded``, ``stale_after``,
        ``renew_fraction``, and per node class (by its text) that has a snapshot or a
        connected client: ``snapshot`` (per type URL, ``[version, resources]``; null
        without one), ``policies`` and ``workload`` (null when the class is no
        workload's)."""
        classes: dict[str, dict[str, Any]] = {}
        keys: list[Hashable] = list(self.cache.keys())
        keys += [c.key for c in self.cache.clients() if c.connected]
        for key in keys:
            label = str(key)
            if label in classes:
                continue
            snapshot = self.cache.get(key)
            workload = self.workload(key)
            classes[label] = {
                "snapshot": None
                if snapshot is None
                else {t: [v, len(snapshot.get(t))] for t, v in snapshot.versions.items()},
                "policies": self.policies(key),
                "workload": None
                if workload is None
                else {
                    "namespace": workload.namespace,
                    "service": workload.service,
                    "role": workload.role,
                    "address": workload.address,
                },
            }
        return web.json_response(
            {
                "version": self.version,
                "started_at": self.metrics.started_at,
                "config_dir": self.config_dir,
                "loaded": self.config.loaded is not None,
                "stale_after": self.stale_after,
                "renew_fraction": self.renew_fraction(),
                "classes": classes,
            }
        )

    async def healthz(self, _request: web.Request) -> web.Response:
        """The process is up."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """503 until a configuration loaded and the xDS listeners are bound, and while
        the reloader cannot make progress (``trouble``, given as ``reason``); what makes
        it serve with less without being unready (``degraded``: etcd unreachable) is
        given as ``degraded``, still 200."""
        trouble = self.trouble()
        serving = self.config.loaded is not None or bool(self.cached())
        ready = self.listening and serving and not trouble
        body: dict[str, Any] = {"ready": ready}
        if trouble:
            body["reason"] = trouble
        degraded = self.degraded()
        if degraded:
            body["degraded"] = degraded
        return web.json_response(body, status=200 if ready else 503)

    async def status_page(self, request: web.Request) -> web.Response:
        """The HTML status page."""
        snapshots = {}
        for key in self.cache.keys():  # noqa: SIM118 - a cache, not a dict
            snapshot = self.cache.get(key)
            if snapshot is not None:
                snapshots[key] = snapshot
        clients = self.cache.clients()
        keys = {*snapshots, *(c.key for c in clients if c.connected)}
        workloads = self._workloads(clients)
        view = StatusView(
            version=self.version,
            started_at=self.metrics.started_at,
            now=self.clock(),
            config_dir=self.config_dir,
            loaded=self.config.loaded is not None or bool(self.cached()),
            errors=tuple(self.config.errors),
            class_errors=tuple(self.config.class_errors),
            warnings=tuple(self.config.warnings),
            clients=clients,
            snapshots=snapshots,
            policies={key: self.policies(key) for key in keys},
            renew_fraction=self.renew_fraction(),
            stale_after=self.stale_after,
            workloads=workloads,
            absent=tuple(absent(self.expected(), clients, workloads)),
            registrations=tuple(self.registrations().get("registrations", ())),
            conditions=tuple(self.gateway_status()),
            service_filter=request.query.get("service", ""),
            state_filter=request.query.get("state", ""),
        )
        return web.Response(
            text=render_status_page(view),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def clients(self, request: web.Request) -> web.Response:
        """Every client's sync state and its class's security policies (``?node=ID``:
        that node's clients only); the ``X-Xdsd-Stale-After`` header is the
        ``stale_after`` its states were decided with."""
        node = request.query.get("node")
        now = self.clock()
        return web.json_response(
            [
                client_json(
                    c,
                    self.policies(c.key),
                    now=now,
                    renew_fraction=self.renew_fraction(),
                    stale_after=self.stale_after,
                )
                for c in self.cache.clients()
                if node is None or c.node_id == node
            ],
            headers={"X-Xdsd-Stale-After": f"{self.stale_after:g}"},
        )

    async def expected_proxies(self, _request: web.Request) -> web.Response:
        """``expected``: how many proxies the configuration expects; ``absent``: those no
        connected client covers (``proxies.absent``), each with the client last seen
        there (node id, agent, when it disconnected) or null."""
        clients = self.cache.clients()
        expected = self.expected()
        found = absent(expected, clients, self._workloads(clients))
        return web.json_response(
            {"expected": len(expected), "absent": [absence_json(a) for a in found]}
        )

    async def virtual_addresses(self, _request: web.Request) -> web.Response:
        """``[mesh.dns]``'s blocks and every service's virtual addresses (the
        ``addresses`` hook)."""
        # Rows for a large mesh take a while (tens of ms per 10,000 services, once per
        # configuration): off the serving loop.
        shown = await asyncio.to_thread(self.addresses)
        return web.json_response(dict(shown))

    def _workloads(self, clients: Sequence[ClientStatus]) -> dict[Hashable, Workload]:
        """The ``workload`` of each client's class (classes without one left out)."""
        out: dict[Hashable, Workload] = {}
        for client in clients:
            if client.key not in out:
                w = self.workload(client.key)
                if w is not None:
                    out[client.key] = w
        return out

    async def config_dump(self, request: web.Request) -> web.Response:
        """What node ``?node=ID`` is served: the snapshot of its class (every type, proto3
        JSON, secrets redacted) with the versions its client was sent and acknowledged.
        400 without a node, 404 naming the node when no client has that id or its class
        has no snapshot, 403 when ``node_access`` refuses the admin client's certificate.

        A node with several clients (per-type gRPC streams, or a reconnect) is shown
        through its connected client that connected last."""
        node = request.query.get("node")
        if not node:
            return _error(400, "name the node: /debug/config_dump?node=ID")
        found = [c for c in self.cache.clients() if c.node_id == node]
        if not found:
            return _error(
                404, f"no proxy with node id {node!r} is connected or recently disconnected"
            )
        client = max(found, key=lambda c: (c.connected, c.connected_at))
        if self.node_access is not None:
            if self.forwarded_certificate:
                cert = forwarded_peer(request.headers.get(PEER_CERTIFICATE_HEADER))
            else:
                transport = request.transport
                cert = transport.get_extra_info("peercert") if transport is not None else None
            if not self.node_access(cert, client):
                self.metrics.on_refused("admin", "permission_denied")
                return _error(
                    403,
                    f"this client certificate may not read node {node!r} "
                    "(authorized_nodes, admin_sans)",
                )
        snapshot = self.cache.get(client.key)
        if snapshot is None:
            return _error(
                404,
                f"node {node!r} is disconnected and its class no longer has a snapshot",
            )
        # Rendering a large snapshot as JSON takes a while: off the serving loop.
        dump = await asyncio.to_thread(_snapshot_json, snapshot)
        return web.json_response(
            {
                "node_id": client.node_id,
                "class": str(client.key),
                "transport": client.transport,
                "connected": client.connected,
                "policies": self.policies(client.key),
                "registrations": [
                    r
                    for r in self.registrations().get("registrations", ())
                    if r.get("node") == node
                ],
                "clients": [
                    client_json(
                        c,
                        self.policies(c.key),
                        now=self.clock(),
                        renew_fraction=self.renew_fraction(),
                        stale_after=self.stale_after,
                    )
                    for c in found
                ],
                **dump,
            }
        )

    async def registered(self, _request: web.Request) -> web.Response:
        """The registered workloads: this replica's name and every registration the
        store holds (group, address, node, since, health, replica; ``connected`` when a
        stream of this replica holds it)."""
        return web.json_response(self.registrations())

    async def config_errors(self, _request: web.Request) -> web.Response:
        """The errors of the last refused reload (none when the last one loaded), the
        node classes the loaded configuration cannot configure (errors naming their
        class), then the warnings of the last reload, then the status conditions of the
        Gateway API objects served (``severity: condition``, ``holds`` false for one not
        met)."""
        problems = [*self.config.errors, *self.config.class_errors, *self.config.warnings]
        out = [problem_json(p) for p in problems]
        cached = self.cached()
        if cached and self.config.loaded is None:
            text = f"serving the cached build ({cached}), verifying"
            out.insert(
                0,
                {
                    "severity": "info",
                    "path": self.config_dir,
                    "line": 0,
                    "field": "",
                    "message": text,
                    "text": text,
                },
            )
        out.extend(dict(c) for c in self.gateway_status())
        return web.json_response(out)


#: The header in which the merged admin of ``xdsd serve --workers`` forwards its admin
#: client's certificate names to a worker: ``peer_header`` of ``getpeercert()``.
PEER_CERTIFICATE_HEADER = "X-Xdsd-Peer-Certificate"
#: The longest forwarded certificate header read; a longer one is no certificate.
MAX_PEER_HEADER = 4096


def peer_header(cert: Mapping[str, Any] | None) -> str:
    """The certificate's subject alternative names (all node access reads of it) as
    the ``PEER_CERTIFICATE_HEADER`` value: JSON, ``null`` without a certificate."""
    if not cert:
        return "null"
    names = [[str(k), str(v)] for k, v in cert.get("subjectAltName", ())]
    return json.dumps({"subjectAltName": names}, separators=(",", ":"))


def forwarded_peer(value: str | None) -> Mapping[str, Any] | None:
    """``peer_header``'s value read back as ``getpeercert()`` gives it; None (no
    certificate: node access refuses) when absent, too long or of any other shape."""
    if not value or len(value) > MAX_PEER_HEADER:
        return None
    try:
        found = json.loads(value)
    except ValueError:
        return None
    if not isinstance(found, dict) or not isinstance(found.get("subjectAltName"), list):
        return None
    names = found["subjectAltName"]
    if not all(
        isinstance(n, list) and len(n) == 2 and all(isinstance(p, str) for p in n) for n in names
    ):
        return None
    return {"subjectAltName": tuple((k, v) for k, v in names)}


def problem_json(problem: Problem) -> dict[str, Any]:
    """A config problem as JSON (``text`` is the ``path:line: field: message`` line)."""
    return {
        "severity": problem.severity.value,
        "path": problem.path,
        "line": problem.line,
        "field": problem.field,
        "message": problem.message,
        "text": str(problem),
    }


def absence_json(absence: Absence) -> dict[str, Any]:
    """An expected proxy that is absent, as JSON (``service`` "" for a WorkloadEntry)."""
    e, seen = absence.expected, absence.last_seen
    return {
        "namespace": e.namespace,
        "service": e.service,
        "address": e.address,
        "origin": e.origin,
        "last_seen": None
        if seen is None
        else {
            "node_id": seen.node_id,
            "agent": seen.agent,
            "disconnected_at": seen.disconnected_at,
        },
    }


def client_json(
    client: ClientStatus,
    policies: Mapping[str, Any] | None = None,
    *,
    now: float | None = None,
    renew_fraction: float = DEFAULT_RENEW_FRACTION,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> dict[str, Any]:
    """A client's status as JSON, with ``policies`` (its class's security policies,
    ``ClassPolicies``) when given, and ``identity`` (``identities.identity_json`` at
    ``now``, the current time when None; null without one). Each type's ``state`` is
    ``proxies.type_state`` at ``now`` with ``stale_after``."""
    at = time.time() if now is None else now
    types = {}
    for type_url, status in client.types.items():
        nack = status.nack
        types[SHORT_NAMES.get(type_url, type_url)] = {
            "state": type_state(status, at, stale_after),
            "sent_version": status.sent_version,
            "sent_nonce": status.sent_nonce,
            "sent_at": status.sent_at,
            "acked_version": status.acked_version,
            "acked_at": status.acked_at,
            "not_applied": status.not_applied,
            "nack": None
            if nack is None
            else {
                "version": nack.version,
                "code": nack.code,
                "message": nack.message,
                "at": nack.at,
            },
        }
    return {
        "client_id": client.client_id,
        "node_id": client.node_id,
        "class": str(client.key),
        "transport": client.transport,
        "agent": client.agent,
        "connected": client.connected,
        "connected_at": client.connected_at,
        "disconnected_at": client.disconnected_at,
        "types": types,
        "identity": None
        if client.identity is None
        else identity_json(client.identity, at, renew_fraction),
        **({"policies": policies} if policies is not None else {}),
    }


def _snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot's versions and resources as proto3 JSON, by short type name (the shape
    of ``xdsd render``'s output), with every secret redacted (``resources.redaction``:
    private keys, passwords, session ticket keys, generic secrets, in Secrets and inline
    in listeners and clusters alike): the admin server is not where keys are handed
    out."""
    out: dict[str, Any] = {"versions": {}, "resources": {}}
    for type_url, resources in snapshot.resources.items():
        short = SHORT_NAMES.get(type_url, type_url)
        out["versions"][short] = snapshot.version(type_url)
        out["resources"][short] = [
            redact({"@type": type_url, **to_json(_message_of(r))}) for r in resources.values()
        ]
    return out


def _message_of(resource: Resource) -> Message:
    """The resource's message, parsed afresh when it is held only encoded (so that a dump
    does not keep a parsed copy of every resource alive)."""
    if resource.parsed is not None:
        return resource.parsed
    return message_class(resource.type_url).FromString(resource.payload)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
