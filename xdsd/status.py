"""``xdsd status``: every connected proxy's sync state, as a table (like ``istioctl
proxy-status``) or JSON, read from a running daemon's admin server.

How this works: ``fetch`` reads ``/debug/clients``, ``/debug/errors`` and
``/debug/expected`` over HTTP, or HTTPS with a ``client_context`` (an admin listener with
``admin_tls``); ``summarize`` (pure) gives each connected client, per type, one state,
the daemon's (the words of the status page, upper-cased):

- ``SYNCED``: the version last sent is the version last acknowledged;
- ``NACKED``: the client rejected the version last sent (its error is kept);
- ``NOT APPLIED``: a REST client did not advance to the version it was served (REST's way
  of rejecting: it carries no error);
- ``STALE``: sent, neither acknowledged nor rejected for longer than the daemon's
  ``stale_after`` setting (``X-Xdsd-Stale-After``; ``--stale-after`` decides here
  instead when given);
- ``PENDING``: sent, not acknowledged yet, more recently than that;
- ``NOT SENT``: nothing of that type was sent (not asked for, or nothing to send).

A proxy is *failing* when any of its types is NACKED, NOT APPLIED or STALE, or when the
workload certificate xdsd's CA issued it is expiring soon (past the point where it should
have been renewed, see ``identity`` of ``/debug/clients``) or expired; the command exits 1
then (0 when none is), 3 when the admin server cannot be reached. Each proxy also carries
the security policies that apply to it and its inbound ports' mutual TLS modes
(``policies`` of ``/debug/clients``), listed below the table, and its identity (SPIFFE
id, credential, certificate serial and expiry: the ``CERT`` column says how long its
certificate has left), listed below that; its ``AGENT`` column is what it says it is
(``envoy/1.36.2``).

Below them: proxies that disconnected in the last ``DISCONNECTED_SHOWN`` seconds and have
not come back under the same node id (``DISCONNECTED``, with when), and the endpoints
the configuration expects that no connected sidecar covers (*expected but absent*, the
daemon's ``/debug/expected``). Neither makes the exit code 1: an endpoint may run without
a sidecar on purpose, and a proxy may leave for good.

A daemon of several workers (``xdsd serve --workers N``) answers for all of them, naming
in ``X-Xdsd-Workers-Unusable`` any worker whose answer it could not use (dead, hung past
its 5 s deadline, or answering garbage): their proxies are missing from what it says, so
the command prints which workers those are and exits 1, never a partial list as if
whole. The command waits ``FETCH_TIMEOUT`` seconds per request, longer than that
deadline, so one hung worker gives a named partial view, not "cannot reach".
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from xdsd.errors import UsageError, XdsdError
from xdsd.plurals import counted

SYNCED, NACKED, NOT_APPLIED, STALE, PENDING, NOT_SENT = (
    "SYNCED",
    "NACKED",
    "NOT APPLIED",
    "STALE",
    "PENDING",
    "NOT SENT",
)
DISCONNECTED, ABSENT = "DISCONNECTED", "ABSENT"
FAILING = frozenset({NACKED, NOT_APPLIED, STALE})
#: The daemon's state names (``/debug/clients`` ``state``) and their words here.
DAEMON_STATES = {
    "in_sync": SYNCED,
    "nacked": NACKED,
    "not_applied": NOT_APPLIED,
    "stale": STALE,
    "pending": PENDING,
}
#: Disconnected proxies are listed for this long (seconds) after they left.
DISCONNECTED_SHOWN = 3600.0

#: Column order and heading of the types /debug/clients names; others follow, upper-cased.
TYPE_COLUMNS = {
    "clusters": "CDS",
    "endpoints": "EDS",
    "listeners": "LDS",
    "routes": "RDS",
    "secrets": "SDS",
}
ALWAYS_SHOWN = ("clusters", "endpoints", "listeners", "routes")

#: The kinds of a client's ``policies`` (their JSON keys) and the kind's name as shown.
POLICY_KINDS = (
    ("authorization_policies", "AuthorizationPolicy"),
    ("peer_authentications", "PeerAuthentication"),
    ("request_authentications", "RequestAuthentication"),
)

#: Exit codes.
EXIT_OK, EXIT_FAILING, EXIT_UNREACHABLE = 0, 1, 3
#: Seconds ``fetch`` waits for each answer: above a multi-worker daemon's per-worker
#: deadline (5 s), after which it answers without the workers that did not.
FETCH_TIMEOUT = 10.0
#: The header naming the workers left out of an answer, and the most of it kept.
UNUSABLE_HEADER = "X-Xdsd-Workers-Unusable"
MAX_UNUSABLE_TEXT = 2000


class AdminUnreachable(XdsdError):
    """The admin server did not answer (with what went wrong)."""


@dataclass(frozen=True, slots=True)
class TypeState:
    """One type of one proxy."""

    state: str
    sent_version: str | None
    acked_version: str | None
    age: float | None  # seconds since the last send
    error: str = ""


@dataclass(frozen=True, slots=True)
class ProxyState:
    """One connected proxy."""

    node_id: str
    client_id: str
    service: str
    transport: str
    types: dict[str, TypeState] = field(default_factory=dict)
    #: The security policies that select it: ``KIND NAMESPACE/NAME`` (``(ACTION)`` for
    #: an AuthorizationPolicy).
    policies: tuple[str, ...] = ()
    #: Each inbound port's mutual TLS mode (port as a string → mode).
    mtls: dict[str, str] = field(default_factory=dict)
    #: The workload identity xdsd issued it (None: it has none).
    identity: Identity | None = None
    #: What it says it is (``envoy 1.36.2``; "" when it says nothing).
    agent: str = ""

    @property
    def failing(self) -> bool:
        """Some type is NACKED, NOT APPLIED or STALE, or its certificate is expiring soon
        (or expired)."""
        return any(t.state in FAILING for t in self.types.values()) or (
            self.identity is not None and self.identity.expiring_soon
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """A proxy's workload identity as ``/debug/clients`` reports it."""

    spiffe_id: str
    serial: str
    #: ``token`` or ``certificate`` (the xDS client certificate), as the daemon says.
    credential: str
    token_id: str
    #: Seconds until its certificate expires at the daemon's ``now`` (negative: expired).
    expires_in: float | None
    #: The daemon's flag: the certificate is past the point it should have been renewed.
    expiring_soon: bool


@dataclass(frozen=True, slots=True)
class Gone:
    """A proxy that disconnected and has not come back under its node id."""

    node_id: str
    service: str
    transport: str
    agent: str
    ago: float  # seconds since it disconnected


@dataclass(frozen=True, slots=True)
class Absent:
    """An endpoint the configuration expects a proxy at, with none connected."""

    service: str  # NAMESPACE/NAME, NAMESPACE/* for a WorkloadEntry
    address: str
    origin: str
    last_seen: str  # the node id last seen there ("" never)
    ago: float | None  # seconds since it disconnected


@dataclass(frozen=True, slots=True)
class Status:
    """What the daemon reported: proxies, config problems, recently disconnected proxies
    and absent ones; ``stale_after`` the threshold states were decided with (None: the
    daemon did not say), ``expected`` how many proxies the configuration expects (None:
    the daemon did not say)."""

    proxies: tuple[ProxyState, ...]
    errors: tuple[dict[str, Any], ...]
    warnings: tuple[dict[str, Any], ...]
    stale_after: float | None
    disconnected: tuple[Gone, ...] = ()
    absent: tuple[Absent, ...] = ()
    expected: int | None = None
    #: The registered workloads (``/debug/registrations``' items, as they came).
    registrations: tuple[dict[str, Any], ...] = ()
    #: The daemon's clock when read (seconds since the epoch; 0: unknown), for "since".
    now: float = 0.0
    #: The workers whose answers the daemon left out, with why ("" when none was).
    unusable_workers: str = ""

    @property
    def exit_code(self) -> int:
        """1 when any proxy is failing or some worker's view is missing, else 0."""
        if self.unusable_workers or any(p.failing for p in self.proxies):
            return EXIT_FAILING
        return EXIT_OK


@dataclass(frozen=True, slots=True)
class Reading:
    """What ``fetch`` read from a daemon (JSON as it came)."""

    clients: list[Any]
    problems: list[Any]
    expected: Any  # /debug/expected, None from a daemon without it
    now: float
    stale_after: float | None
    registrations: Any = None  # /debug/registrations, None from a daemon without it
    #: ``X-Xdsd-Workers-Unusable`` of the answers, distinct parts joined ("": none).
    unusable_workers: str = ""


def client_context(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    server_name: str | None = None,
) -> ssl.SSLContext:
    """The TLS context ``fetch`` reaches an admin server with: trusting ``ca`` (PEM), else
    the system's trusted CAs; presenting ``cert``/``key`` when given. The server's
    certificate must name ``server_name`` when given; without it, with ``ca`` only the
    chain is checked (as ``xdsd bootstrap --xds-tls-ca`` does: xdsd is often reached by
    address), and without ``ca`` the host name of the address is checked (ordinary
    HTTPS). Raises UsageError naming a file that cannot be used."""
    if bool(cert) != bool(key):
        raise UsageError("--admin-tls-cert and --admin-tls-key go together")
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"--admin-tls-ca {ca}: cannot use it: {e}") from None
    context.check_hostname = bool(server_name) or not ca
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(
                f"--admin-tls-cert {cert} / --admin-tls-key {key}: cannot use them: {e}"
            ) from None
    return context


class _HttpsConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks ``server_name`` (not the address's host) in the
    server's certificate, and sends it as SNI."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        tls: ssl.SSLContext,
        server_name: str | None,
        timeout: float,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self.tls = tls
        self.server_name = server_name or host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.server_name)


def fetch(
    admin: str,
    *,
    timeout: float = FETCH_TIMEOUT,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Reading:
    """``/debug/clients``, ``/debug/errors``, ``/debug/expected`` (None from a daemon
    without it), the daemon's ``stale_after`` (its ``X-Xdsd-Stale-After`` header) and
    clock (its ``Date`` header, else ours) from the admin server at ``HOST:PORT`` or
    ``http(s)://HOST:PORT``. With
    ``tls`` (``client_context``), or an ``https://`` address, it is reached over TLS,
    checking ``server_name`` in its certificate when given. Raises AdminUnreachable;
    UsageError for an address that is not one."""
    base = admin if "://" in admin else f"{'https' if tls else 'http'}://{admin}"
    url = urllib.parse.urlsplit(base)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--admin wants HOST:PORT or https://HOST:PORT (got {admin!r})")
    if url.scheme == "http" and tls is not None:
        raise UsageError(f"--admin {admin} is http://, but --admin-tls-* flags ask for TLS")
    try:
        port = url.port
    except ValueError:
        raise UsageError(f"--admin wants HOST:PORT (got {admin!r})") from None
    if port is None and "://" not in admin:
        raise UsageError(f"--admin wants HOST:PORT, with the port (got {admin!r})")
    results: list[Any] = []
    now = time.time()
    stale_after: float | None = None
    unusable: list[str] = []
    optional = ("/debug/expected", "/debug/registrations")
    for path in ("/debug/clients", "/debug/errors", *optional):
        where = f"{base.rstrip('/')}{path}"
        connection: http.client.HTTPConnection
        if url.scheme == "https":
            connection = _HttpsConnection(
                url.hostname,
                port,
                tls=tls or client_context(),
                server_name=server_name,
                timeout=timeout,
            )
        else:
            connection = http.client.HTTPConnection(url.hostname, port, timeout=timeout)
        try:
            connection.request("GET", url.path.rstrip("/") + path)
            response = connection.getresponse()
            body = response.read()
            if response.status == 404 and path in optional:
                results.append(None)  # a daemon from before it
                continue
            if response.status != 200:
                raise AdminUnreachable(
                    f"{where} answered {response.status} {response.reason}: is it xdsd's "
                    "admin address?"
                )
            results.append(json.loads(body))
            said = response.getheader(UNUSABLE_HEADER) or ""
            said = "".join(c if " " <= c <= "~" else "?" for c in said[:MAX_UNUSABLE_TEXT])
            for part in said.split("; "):
                if part and part not in unusable:
                    unusable.append(part)
            threshold = response.getheader("X-Xdsd-Stale-After")
            if threshold:
                with contextlib.suppress(ValueError):
                    stale_after = float(threshold)
            date = response.getheader("Date")
            if date:
                now = max(now, email.utils.parsedate_to_datetime(date).timestamp())
        except ssl.SSLError as e:
            detail = getattr(e, "verify_message", None) or e.reason or e
            raise AdminUnreachable(
                f"TLS with xdsd's admin server at {admin} failed ({detail}): does "
                "--admin-tls-ca trust its certificate (and --admin-tls-server-name match "
                "it), and does it want a client certificate (--admin-tls-cert/--admin-tls-key)?"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            hint = ""
            if isinstance(e, http.client.BadStatusLine | ConnectionResetError):
                # RemoteDisconnected is both; a TLS server hangs up on plaintext, and an
                # mTLS server on a client without a certificate (TLS 1.3: after the
                # handshake, as the request is read)
                hint = (
                    " (if its admin listener speaks TLS: --admin https://HOST:PORT)"
                    if url.scheme == "http"
                    else " (if it wants a client certificate: --admin-tls-cert/--admin-tls-key)"
                )
            raise AdminUnreachable(
                f"cannot reach xdsd's admin server at {admin} ({e}){hint}: is xdsd running, "
                "and is --admin its admin address?"
            ) from None
        except ValueError as e:
            raise AdminUnreachable(
                f"{where} did not answer JSON ({e}): is it xdsd's admin address?"
            ) from None
        finally:
            connection.close()
    return Reading(
        results[0],
        results[1],
        results[2],
        now,
        stale_after,
        results[3],
        "; ".join(unusable)[:MAX_UNUSABLE_TEXT],
    )


def summarize(
    clients: list[Any],
    problems: list[Any],
    *,
    now: float,
    stale_after: float | None = None,
    daemon_stale_after: float | None = None,
    expected: Any = None,
    registrations: Any = None,
    unusable_workers: str = "",
) -> Status:
    """The status of every connected client in ``clients`` (``/debug/clients``) at
    ``now`` (seconds since the epoch, the daemon's clock); ``problems`` is
    ``/debug/errors`` (entries with ``severity: warning`` are warnings), ``expected``
    ``/debug/expected`` (None: not known), ``unusable_workers`` the workers the daemon
    left out (``Reading.unusable_workers``). Each type's state is the daemon's (decided
    with ``daemon_stale_after``), or, with ``stale_after``, decided here with it."""
    proxies = []
    connected_ids = {c.get("node_id") for c in clients if c.get("connected", True)}
    gone: dict[str, Gone] = {}
    for client in clients:
        if not client.get("connected", True):
            left = _gone(client, now)
            known = gone.get(left.node_id) if left is not None else None
            if left is not None and left.node_id not in connected_ids:
                gone[left.node_id] = left if known is None or left.ago < known.ago else known
            continue
        types = {
            name: _type_state(status, now, stale_after)
            for name, status in (client.get("types") or {}).items()
        }
        proxies.append(
            ProxyState(
                node_id=client.get("node_id") or "?",
                client_id=client.get("client_id", ""),
                service=_service(client.get("class", "")),
                transport=client.get("transport", ""),
                types=types,
                policies=policy_names(client.get("policies")),
                mtls=_mtls(client.get("policies")),
                identity=_identity(client.get("identity"), now),
                agent=str(client.get("agent") or ""),
            )
        )
    proxies.sort(key=lambda p: (p.node_id, p.client_id))
    warnings = tuple(p for p in problems if p.get("severity") == "warning")
    # Gateway API status conditions (``severity: condition``) are neither.
    # the restart cache's build being verified (``severity: info``) is neither either
    errors = tuple(p for p in problems if p.get("severity") not in ("warning", "condition", "info"))
    return Status(
        tuple(proxies),
        errors,
        warnings,
        stale_after if stale_after is not None else daemon_stale_after,
        disconnected=tuple(sorted(gone.values(), key=lambda g: (g.ago, g.node_id))),
        absent=_absent(expected, now),
        expected=expected.get("expected") if isinstance(expected, dict) else None,
        registrations=_registrations(registrations),
        now=now,
        unusable_workers=unusable_workers,
    )


def _registrations(view: Any) -> tuple[dict[str, Any], ...]:
    """The items of ``/debug/registrations`` (nothing when it is not that)."""
    items = view.get("registrations") if isinstance(view, dict) else None
    if not isinstance(items, list):
        return ()
    return tuple(i for i in items if isinstance(i, dict))


def _gone(client: dict[str, Any], now: float) -> Gone | None:
    """A disconnected client of ``/debug/clients`` as ``Gone`` (None: it left more than
    ``DISCONNECTED_SHOWN`` seconds ago, or says not when)."""
    at = client.get("disconnected_at")
    if not isinstance(at, int | float) or now - at > DISCONNECTED_SHOWN:
        return None
    return Gone(
        node_id=client.get("node_id") or "?",
        service=_service(client.get("class", "")),
        transport=str(client.get("transport", "")),
        agent=str(client.get("agent") or ""),
        ago=max(0.0, now - at),
    )


def _absent(expected: Any, now: float) -> tuple[Absent, ...]:
    """The ``absent`` of ``/debug/expected`` (nothing when it is not that)."""
    if not isinstance(expected, dict):
        return ()
    out = []
    for item in expected.get("absent") or ():
        if not isinstance(item, dict):
            continue
        seen = item.get("last_seen")
        seen = seen if isinstance(seen, dict) else {}
        at = seen.get("disconnected_at")
        out.append(
            Absent(
                service=f"{item.get('namespace')}/{item.get('service') or '*'}",
                address=str(item.get("address", "")),
                origin=str(item.get("origin", "")),
                last_seen=str(seen.get("node_id") or ""),
                ago=max(0.0, now - at) if isinstance(at, int | float) else None,
            )
        )
    return tuple(out)


def policy_names(policies: Any) -> tuple[str, ...]:
    """``KIND NAMESPACE/NAME`` (with ``(ACTION)`` for an AuthorizationPolicy) of each
    policy of a client's ``policies`` JSON (nothing when it is absent or not a
    mapping)."""
    if not isinstance(policies, dict):
        return ()
    out = []
    for key, kind in POLICY_KINDS:
        for policy in policies.get(key) or ():
            if not isinstance(policy, dict):
                continue
            action = f" ({policy['action']})" if policy.get("action") else ""
            out.append(f"{kind} {policy.get('namespace')}/{policy.get('name')}{action}")
    return tuple(out)


def _mtls(policies: Any) -> dict[str, str]:
    """The ``mtls`` of a client's ``policies`` JSON (port → mode)."""
    found = policies.get("mtls") if isinstance(policies, dict) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _identity(found: Any, now: float) -> Identity | None:
    """A client's ``identity`` JSON as an ``Identity`` (None when absent or not a
    mapping). ``expires_in`` is computed from ``not_after`` at ``now``; a certificate
    already expired counts as expiring soon whatever the daemon said."""
    if not isinstance(found, dict):
        return None
    not_after = found.get("not_after")
    expires_in = not_after - now if isinstance(not_after, int | float) else None
    return Identity(
        spiffe_id=str(found.get("spiffe_id") or "?"),
        serial=str(found.get("serial") or ""),
        credential=str(found.get("credential") or ""),
        token_id=str(found.get("token_id") or ""),
        expires_in=expires_in,
        expiring_soon=bool(found.get("expiring_soon"))
        or (expires_in is not None and expires_in <= 0),
    )


def duration_text(seconds: float) -> str:
    """``2d3h``, ``5h12m``, ``4m30s``, ``12s`` (the two largest units); ``expired`` at or
    below zero."""
    if seconds <= 0:
        return "expired"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{s}s"
    return f"{s}s"


def cert_cell(identity: Identity | None) -> str:
    """The ``CERT`` column: ``-`` without an identity, else how long its certificate has
    left, upper-case ``EXPIRING`` (or ``EXPIRED``) when it is expiring soon."""
    if identity is None:
        return "-"
    if identity.expires_in is None:
        return "?"
    left = duration_text(identity.expires_in)
    if identity.expires_in <= 0:
        return "EXPIRED"
    return f"EXPIRING {left}" if identity.expiring_soon else left


def _type_state(status: dict[str, Any], now: float, stale_after: float | None) -> TypeState:
    sent, acked = status.get("sent_version"), status.get("acked_version")
    sent_at = status.get("sent_at")
    age = max(0.0, now - sent_at) if isinstance(sent_at, int | float) else None
    nack = status.get("nack")
    if sent is None:
        state = NOT_SENT
    elif nack and nack.get("version") == sent:
        return TypeState(NACKED, sent, acked, age, str(nack.get("message", "")))
    elif status.get("not_applied"):
        state = NOT_APPLIED
    elif acked == sent:
        state = SYNCED
    elif stale_after is None and status.get("state") == "stale":
        state = STALE  # the daemon's verdict
    elif stale_after is not None and age is not None and age > stale_after:
        state = STALE
    else:
        state = PENDING
    return TypeState(state, sent, acked, age)


_CLASS_FIELD = re.compile(r"(service|namespace)='([^']*)'|role=<Role\.\w+: '(\w+)'>")


def _service(text: str) -> str:
    """``namespace/service (role)`` from a node class's text (its one-line form,
    ``ROLE SERVICE.NAMESPACE ...``, or a dataclass repr), else the text itself."""
    words = text.split()
    if len(words) >= 2 and words[0] in ("sidecar", "gateway") and "." in words[1]:
        service, _, namespace = words[1].rpartition(".")
        name = f"{namespace}/{service}"
        return f"{name} ({words[0]})" if words[0] != "sidecar" else name
    found: dict[str, str] = {}
    for m in _CLASS_FIELD.finditer(text):
        if m.group(1):
            found.setdefault(m.group(1), m.group(2))
        else:
            found.setdefault("role", m.group(3))
    if "service" not in found:
        return text
    name = f"{found.get('namespace', 'default')}/{found['service']}"
    return f"{name} ({found['role']})" if found.get("role", "sidecar") != "sidecar" else name


def render_table(status: Status, *, error_width: int = 100) -> str:
    """The status as a terminal table, NACK errors below it, and a summary line."""
    names = list(ALWAYS_SHOWN)
    for proxy in status.proxies:
        names += [n for n in proxy.types if n not in names]
    headings = [TYPE_COLUMNS.get(n, n.upper()) for n in names]
    with_identity = any(p.identity is not None for p in status.proxies)
    with_agent = any(p.agent for p in status.proxies)
    rows = [
        [
            "NAME",
            "SERVICE",
            "TRANSPORT",
            *headings,
            *(["CERT"] if with_identity else []),
            *(["AGENT"] if with_agent else []),
        ]
    ]
    details = []
    for p in status.proxies:
        cells = []
        for n in names:
            t = p.types.get(n)
            if t is None:
                cells.append(NOT_SENT)
                continue
            cells.append(f"{t.state} ({t.age:.0f}s)" if t.state == STALE and t.age else t.state)
            if t.state in (NACKED, NOT_APPLIED):
                text = " ".join(t.error.split()) or "(no error text: REST cannot carry one)"
                if len(text) > error_width:
                    text = text[: error_width - 3] + "..."
                heading = TYPE_COLUMNS.get(n, n.upper())
                details.append(f"  {p.node_id} {heading} version {t.sent_version}: {text}")
        if with_identity:
            cells.append(cert_cell(p.identity))
        if with_agent:
            cells.append(p.agent.replace(" ", "/") or "-")
        rows.append([p.node_id, p.service, p.transport, *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not status.proxies:
        lines = ["no proxies connected"]
    if details:
        lines += ["", "rejections:", *details]
    secured = [p for p in status.proxies if p.policies or _enforced(p.mtls)]
    if secured:
        lines += ["", "security policies:"]
        for p in secured:
            modes = ", ".join(f"{port} {mode}" for port, mode in p.mtls.items())
            lines.append(f"  {p.node_id}: {', '.join(p.policies) or 'none'}")
            if modes:
                lines.append(f"  {' ' * len(p.node_id)}  mTLS: {modes}")
    identities = [(p.node_id, p.identity) for p in status.proxies if p.identity is not None]
    if identities:
        lines += ["", "identities:"]
        lines += [f"  {node}: {_identity_text(identity)}" for node, identity in identities]
    if status.disconnected:
        lines += ["", f"disconnected (in the last {DISCONNECTED_SHOWN / 60:g} minutes):"]
        for g in status.disconnected:
            agent = f", {g.agent}" if g.agent else ""
            lines.append(
                f"  {g.node_id} ({g.service}, {g.transport}{agent}) {DISCONNECTED} "
                f"{duration_text(g.ago) if g.ago >= 1 else '0s'} ago"
            )
    if status.absent:
        lines += ["", "expected but absent (no connected sidecar at the address):"]
        for a in status.absent:
            seen = "never seen"
            if a.last_seen:
                when = f" {duration_text(a.ago) if a.ago >= 1 else '0s'} ago" if a.ago else ""
                seen = f"last seen: {a.last_seen}, disconnected{when}"
            lines.append(f"  {a.service} {a.address} {ABSENT} - {seen} - from {a.origin}")
    if status.registrations:
        lines += ["", "registered workloads:"]
        for r in status.registrations:
            left = r.get("disconnected") or 0
            state = "connected" if not left else "left, in its grace period"
            since = r.get("since")
            if status.now and isinstance(since, int | float) and since > 0:
                ago = status.now - since
                state += f", registered {duration_text(ago) if ago >= 1 else '0s'} ago"
            lines.append(
                f"  {r.get('namespace')}/{r.get('group')} {r.get('address')} "
                f"node {r.get('node')} ({state}, {r.get('health')}, held by replica "
                f"{r.get('replica')})"
            )
    for problem in status.errors:
        lines.append(f"config error: {_problem_text(problem)}")
    for problem in status.warnings:
        lines.append(f"config warning: {_problem_text(problem)}")
    if status.unusable_workers:
        lines += [
            "",
            f"not shown, their workers did not answer usably: {status.unusable_workers}",
        ]
    lines += ["", summary_line(status)]
    return "\n".join(lines) + "\n"


def _identity_text(identity: Identity) -> str:
    """``SPIFFE_ID (token ID) serial S, expires in 23h59m`` (``EXPIRING SOON`` flagged)."""
    credential = identity.credential or "?"
    if identity.token_id:
        credential += f" {identity.token_id}"
    text = f"{identity.spiffe_id} ({credential}) serial {identity.serial or '?'}"
    if identity.expires_in is not None:
        text += (
            ", EXPIRED"
            if identity.expires_in <= 0
            else f", expires in {duration_text(identity.expires_in)}"
        )
    if identity.expiring_soon and (identity.expires_in or 0) > 0:
        text += " - EXPIRING SOON (not renewed in time)"
    return text


def _enforced(mtls: dict[str, str]) -> bool:
    """True when some inbound port takes mutual TLS (worth listing without policies)."""
    return any(mode != "DISABLE" for mode in mtls.values())


def _problem_text(problem: dict[str, Any]) -> str:
    return str(
        problem.get("text")
        or f"{problem.get('path')}:{problem.get('line')}: {problem.get('message')}"
    )


def summary_counts(status: Status) -> dict[str, int | None]:
    """The counts ``summary_line`` says, as ``--json``'s ``summary``: proxies
    (``total``, ``synced``, ``pending``, ``stale``, ``nacked`` — NACKed or not applied —,
    ``failing``), ``disconnected``, ``expected`` and ``absent`` proxies (``expected`` None
    when the daemon did not say), ``identities`` and ``expiring_soon``,
    ``config_errors`` and ``config_warnings``."""

    def count(states: frozenset[str] | set[str]) -> int:
        return sum(any(t.state in states for t in p.types.values()) for p in status.proxies)

    identified = [p.identity for p in status.proxies if p.identity is not None]
    return {
        "total": len(status.proxies),
        "synced": sum(
            all(t.state in (SYNCED, NOT_SENT) for t in p.types.values()) for p in status.proxies
        ),
        "pending": count({PENDING}),
        "stale": count({STALE}),
        "nacked": count({NACKED, NOT_APPLIED}),
        "failing": sum(p.failing for p in status.proxies),
        "disconnected": len(status.disconnected),
        "expected": status.expected,
        "absent": len(status.absent),
        "identities": len(identified),
        "expiring_soon": sum(i.expiring_soon for i in identified),
        "config_errors": len(status.errors),
        "config_warnings": len(status.warnings),
    }


def summary_line(status: Status) -> str:
    """``N proxies: S synced, K NACKing, T stale (no ACK after Xs), P pending; D
    disconnected, A of E expected absent; config: E errors, W warnings`` (the parts
    about disconnected and absent proxies only when there are some)."""
    c = summary_counts(status)
    n = c["total"]
    after = f"{status.stale_after:g}s" if status.stale_after is not None else "the daemon's limit"
    text = (
        f"{n} prox{'y' if n == 1 else 'ies'}: {c['synced']} synced, {c['nacked']} NACKing, "
        f"{c['stale']} stale (no ACK after {after}), {c['pending']} pending"
    )
    if c["disconnected"]:
        text += f"; {c['disconnected']} disconnected"
    if c["absent"]:
        of = f" of {c['expected']} expected" if c["expected"] is not None else ""
        text += f"; {c['absent']}{of} absent"
    text += f"; config: {counted(c['config_errors'] or 0, 'error')}, "
    text += counted(c["config_warnings"] or 0, "warning")
    if c["identities"]:
        text += f"; identities: {c['identities']}, {c['expiring_soon']} expiring soon"
    if status.errors:
        text += " (the last good configuration is being served)"
    return text


def to_json(status: Status) -> dict[str, Any]:
    """The status as JSON (what ``--json`` prints)."""
    return {
        "proxies": [
            {
                "node_id": p.node_id,
                "client_id": p.client_id,
                "service": p.service,
                "transport": p.transport,
                "agent": p.agent,
                "failing": p.failing,
                "policies": list(p.policies),
                "mtls": p.mtls,
                "identity": None
                if p.identity is None
                else {
                    "spiffe_id": p.identity.spiffe_id,
                    "serial": p.identity.serial,
                    "credential": p.identity.credential,
                    "token_id": p.identity.token_id,
                    "expires_in": p.identity.expires_in,
                    "expiring_soon": p.identity.expiring_soon,
                },
                "types": {
                    n: {
                        "state": t.state,
                        "sent_version": t.sent_version,
                        "acked_version": t.acked_version,
                        "age": t.age,
                        "error": t.error,
                    }
                    for n, t in p.types.items()
                },
            }
            for p in status.proxies
        ],
        "disconnected": [
            {
                "node_id": g.node_id,
                "service": g.service,
                "transport": g.transport,
                "agent": g.agent,
                "state": DISCONNECTED,
                "ago": g.ago,
            }
            for g in status.disconnected
        ],
        "absent": [
            {
                "service": a.service,
                "address": a.address,
                "origin": a.origin,
                "state": ABSENT,
                "last_seen": a.last_seen or None,
                "ago": a.ago,
            }
            for a in status.absent
        ],
        "registrations": list(status.registrations),
        "config": {"errors": list(status.errors), "warnings": list(status.warnings)},
        "stale_after": status.stale_after,
        "unusable_workers": status.unusable_workers,
        "summary": summary_counts(status),
        "exit_code": status.exit_code,
    }
