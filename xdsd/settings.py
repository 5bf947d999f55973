"""The daemon's own settings: where to listen, what to watch, how to coalesce edits, and
the mesh-wide proxy defaults (the ``[mesh]`` section, see ``xdsd.model.mesh_config``).

Settings come from defaults, then an optional TOML file (``--settings``), then command-line
flags, later ones winning. Unknown keys and wrong types in the file are errors naming the
file, the line and the key, like config errors.
"""

from __future__ import annotations

import math
import os
import stat
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from xdsd.errors import ConfigError, Problem
from xdsd.located import index_toml, toml_error
from xdsd.model.mesh_config import (
    DEFAULT_MESH_CONFIG,
    MTLS_PLACEHOLDERS,
    AccessLog,
    LogEncoding,
    MeshConfig,
    MeshTLS,
    MTLSMode,
    PrometheusStats,
    Tracing,
    TracingProvider,
)
from xdsd.model.networking import OutboundPolicy
from xdsd.model.service import Origin

#: The largest settings file read.
MAX_SETTINGS_BYTES = 1 << 20

#: The gRPC server implementations ``grpc_impl`` may name.
GRPC_IMPLS = ("grpclib", "grpcio")


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP listen address."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6); port 0 asks for a free port.
        Raises ValueError."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"expected HOST:PORT (got {text!r})")
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(f"port out of range in {text!r}")
        return cls(host.strip("[]"), number)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``xdsd serve`` needs to know, with its defaults (``docs/operations.md``).

    ``quiet_period`` is how long the watcher waits for a burst of file events to go quiet
    before rebuilding (seconds); ``max_delay`` caps that wait during a long burst.
    ``grpc_impl`` picks the gRPC server: ``grpclib`` (pure Python) or ``grpcio``.
    ``root_namespace`` is Istio's MeshConfig ``rootNamespace``: a Sidecar there without
    ``workloadSelector`` applies to every namespace that has none of its own.
    ``mesh`` holds the mesh-wide proxy defaults (the ``[mesh]`` table of the file).
    ``shutdown_grace`` is how long, after SIGTERM, open streams get to end with their
    UNAVAILABLE status before they are cut (seconds).

    Limits (``docs/operations.md``, "Limits and hostile clients"): ``max_request_bytes``
    bounds one gRPC message and one REST body; ``max_streams_per_address`` the gRPC
    streams open at once from one client address; ``first_request_timeout`` how long a
    new gRPC stream may stay silent before its first request (seconds, 0: no limit);
    ``rest_idle_timeout`` how long a REST (and admin) connection may stay idle;
    ``log_queue_lines`` how many log lines may wait for a slow log stream before new
    ones are dropped and counted (``xdsd.logs.QueueingHandler``).
    ``max_queued_requests`` bounds the requests one gRPC stream may have read but not yet
    handled (a client that sends without reading is cut off with RESOURCE_EXHAUSTED).
    ``max_connections`` bounds the connections open at once over the gRPC, REST and admin
    listeners together (0: derived from the descriptor limit, see
    ``xdsd.transports.connections``) and ``max_connections_per_address`` those from one
    client address; a connection beyond is closed as it is accepted.
    ``handshake_timeout`` is how long a new connection may take to finish its TLS
    handshake and start its first request or stream, ``idle_connection_timeout`` how long
    a connection may then stay without one (seconds; 0: no limit).
    ``max_stream_resets_per_second`` is the rate of streams a client may reset on one
    HTTP/2 connection (bursts of ten seconds' worth); beyond it the connection is closed
    with GOAWAY. ``max_node_classes`` bounds the node classes with a snapshot; a client
    of a new class beyond it is refused (RESOURCE_EXHAUSTED, HTTP 429) while every class
    is held by a client.

    Config file limits (``docs/operations.md``, "Limits"; ``xdsd.sources.limits``):
    ``max_file_bytes`` one config file's size, ``max_config_bytes`` the directory's
    config files together, ``max_documents_per_file`` the documents of one file,
    ``max_nesting_depth`` the levels of lists and mappings of a document,
    ``max_integer_digits`` the longest run of digits, ``max_yaml_alias_nodes`` the nodes
    a file's YAML aliases may expand to. A file beyond any of them is an error (the load
    is refused), found before the parser that could not take it sees it.

    TLS (``docs/operations.md``, "TLS and node authorization"): ``tls_cert`` and
    ``tls_key`` (PEM files) turn TLS on for the gRPC and REST listeners, and for admin
    unless ``admin_tls`` is false; ``tls_client_ca`` then requires client certificates
    issued by that CA. ``authorized_nodes`` maps a client certificate's SAN to the nodes
    it may speak for and the roles and labels they may claim (``NodeGrant``; needs
    ``tls_client_ca``). Under admin mutual TLS a node's resources
    (``/debug/config_dump?node=ID``) are shown only to a certificate that may speak for
    that node, or that has one of the SANs of ``admin_sans`` (full admin access; needs
    ``tls_client_ca``). Both ``grpc_impl``s serve TLS. The
    three files are read again, without a restart, when they change and on SIGHUP
    (``xdsd.tls.ServerCertificates``); the settings themselves are read at start.
    """

    config_dir: str = "config"
    grpc: Address | None = field(default_factory=lambda: Address("127.0.0.1", 18000))
    rest: Address | None = field(default_factory=lambda: Address("127.0.0.1", 18001))
    admin: Address | None = field(default_factory=lambda: Address("127.0.0.1", 19001))
    quiet_period: float = 0.01
    max_delay: float = 0.5
    grpc_backlog: int = 4096
    grpc_impl: str = "grpclib"
    root_namespace: str = "istio-system"  # model.networking.ROOT_NAMESPACE
    mesh: MeshConfig = DEFAULT_MESH_CONFIG
    shutdown_grace: float = 5.0
    max_request_bytes: int = 4 << 20
    max_streams_per_address: int = 1024
    first_request_timeout: float = 10.0
    rest_idle_timeout: float = 60.0
    max_queued_requests: int = 16
    max_connections: int = 0
    max_connections_per_address: int = 1024
    handshake_timeout: float = 10.0
    idle_connection_timeout: float = 60.0
    max_stream_resets_per_second: float = 50.0
    max_node_classes: int = 10000
    # The defaults of xdsd.sources.limits.ParseLimits (tests/test_settings.py checks).
    max_file_bytes: int = 16 << 20
    max_config_bytes: int = 256 << 20
    max_documents_per_file: int = 20_000
    max_nesting_depth: int = 100
    max_integer_digits: int = 1_000
    max_yaml_alias_nodes: int = 100_000
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    admin_tls: bool = True
    authorized_nodes: tuple[NodeGrant, ...] = ()
    admin_sans: tuple[str, ...] = ()
    log_queue_lines: int = 10_000

    @property
    def tls(self) -> bool:
        """True when xdsd's listeners speak TLS."""
        return bool(self.tls_cert)

    @classmethod
    def from_file(cls, path: str) -> Settings:
        """Read a TOML settings file (top-level keys are the field names, addresses as
        ``"HOST:PORT"`` strings or ``""`` to disable; the ``[mesh]`` table as
        ``docs/operations.md`` describes). Raises ConfigError naming file, line and key,
        also for a file over ``MAX_SETTINGS_BYTES`` or one ``tomllib`` cannot take
        (nested too deeply for its recursion, an integer of more than 4,300 digits)."""
        try:
            # not blocking in open(): SIGHUP reads the file again on the event loop
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise ConfigError([Problem(path, 0, "", "settings: not a regular file")])
                raw = fh.read(MAX_SETTINGS_BYTES + 1)
            if len(raw) > MAX_SETTINGS_BYTES:
                message = f"settings file is larger than {MAX_SETTINGS_BYTES} bytes: not read"
                raise ConfigError([Problem(path, 0, "", message)])
            data = tomllib.loads(raw.decode())
        except OSError as e:
            raise ConfigError(
                [Problem(path, 0, "", f"cannot read settings: {e.strerror}")]
            ) from None
        except UnicodeDecodeError:
            raise ConfigError([Problem(path, 0, "", "settings are not UTF-8 text")]) from None
        except tomllib.TOMLDecodeError as e:
            at, message = toml_error(e)
            line = at if at is not None else 0
            raise ConfigError([Problem(path, line, "", f"TOML syntax error: {message}")]) from None
        except RecursionError:
            raise ConfigError([Problem(path, 0, "", "settings nested too deeply")]) from None
        except ValueError as e:  # what tomllib meets beyond its parsing (Python's int limit)
            raise ConfigError([Problem(path, 0, "", f"settings cannot be parsed: {e}")]) from None
        return cls().merged(data, source=path, lines=key_lines(raw.decode()))

    def merged(
        self, data: Mapping[str, Any], *, source: str, lines: Mapping[str, int] | None = None
    ) -> Settings:
        """These settings with ``data`` applied; ``source`` names where data came from and
        ``lines`` the line of each dotted key in it (see ``key_lines``). Raises
        ConfigError listing every unknown key and wrong value."""
        known = {f.name: f for f in fields(self)}
        where = _Where(source, lines or {})
        problems: list[Problem] = []
        changes: dict[str, Any] = {}
        for key, value in data.items():
            key_name = key.replace("-", "_")
            if key_name not in known:
                problems.append(where.problem(key, f"unknown setting; known: {', '.join(known)}"))
                continue
            if key_name == "mesh":
                mesh = _mesh_config(value, key, where, problems)
                if mesh is not None:
                    changes["mesh"] = mesh
                continue
            if key_name == "authorized_nodes":
                grants = _authorized_nodes(value, key, where, problems)
                if grants is not None:
                    changes["authorized_nodes"] = grants
                continue
            if key_name == "admin_sans":
                if _check(value, lambda v: isinstance(v, list) and all(_is_str(x) and x for x in v),
                          "a list of SANs", key, where, problems):  # fmt: skip
                    changes["admin_sans"] = tuple(value)
                continue
            current = getattr(self, key_name)
            try:
                changes[key_name] = _coerce(key_name, current, value)
            except ValueError as e:
                problems.append(where.problem(key, str(e)))
        if problems:
            raise ConfigError(problems)
        result = replace(self, **changes)
        problems.extend(result._tls_problems(where))
        if problems:
            raise ConfigError(problems)
        return result

    def _tls_problems(self, where: _Where) -> list[Problem]:
        """What is wrong with the TLS settings taken together."""
        out: list[Problem] = []
        if bool(self.tls_cert) != bool(self.tls_key):
            key = "tls_key" if self.tls_cert else "tls_cert"
            out.append(where.problem(key, "tls_cert and tls_key go together"))
        if self.tls_client_ca and not self.tls_cert:
            out.append(where.problem("tls_client_ca", "needs tls_cert and tls_key"))
        if self.admin_sans and not self.tls_client_ca:
            out.append(
                where.problem(
                    "admin_sans",
                    "needs tls_client_ca: admin clients are known by their client certificate",
                )
            )
        if self.authorized_nodes and not self.tls_client_ca:
            out.append(
                where.problem(
                    "authorized_nodes",
                    "needs tls_client_ca: nodes are authorized by their client certificate",
                )
            )
        return out


#: The roles a grant may let a certificate claim (``NodeGrant.roles``): a sidecar, a
#: gateway (``metadata.role: gateway``) and a proxyless gRPC client.
NODE_ROLES = ("sidecar", "gateway", "proxyless")
#: The roles of a grant that names none: never a gateway.
DEFAULT_ROLES = ("sidecar", "proxyless")


@dataclass(frozen=True, slots=True)
class NodeGrant:
    """Which nodes a client certificate with the SAN ``san`` (a URI or DNS name) may
    speak for, and what they may claim to be.

    The node: its ``node.id`` is in ``node_ids`` and its ``node.cluster`` (the service
    it fronts) is in ``services``, written ``NAMESPACE/SERVICE`` (that namespace only)
    or ``SERVICE`` (any namespace); a grant naming only one of the two leaves the other
    free, and ``"*"`` in either means any. The claim: its role is in ``roles``
    (``sidecar``, ``gateway``, ``proxyless``; ``DEFAULT_ROLES`` when the grant names
    none, so never a gateway by default). A gateway may claim only labels of
    ``gateway_labels`` (same key, same value), so the only Gateways whose server keys it
    receives are those a node with exactly those labels would receive; a grant with the
    gateway role must name them. ``labels``, when given, bounds a sidecar's and a
    proxyless client's labels the same way (the value ``"*"``: any value of that key);
    without it they may claim any labels."""

    san: str
    node_ids: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    roles: tuple[str, ...] = DEFAULT_ROLES
    gateway_labels: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] | None = None

    def allows(
        self, node_id: str, service: str, namespace: str = "default", *,
        role: str = "sidecar", labels: Mapping[str, str] | None = None,
    ) -> bool:  # fmt: skip
        """True when this grant lets its certificate speak for the node ``node_id``
        fronting ``service`` in ``namespace`` with ``role`` and ``labels``."""
        return (
            self.allows_node(node_id, service, namespace)
            and role in self.roles
            and self.allows_labels(role, labels or {})
        )

    def allows_node(self, node_id: str, service: str, namespace: str = "default") -> bool:
        """True when the node's id and service are among those this grant names."""
        by_id = "*" in self.node_ids or node_id in self.node_ids
        by_service = (
            "*" in self.services
            or ("/" not in service and service in self.services)
            or f"{namespace}/{service}" in self.services
        )
        if self.node_ids and self.services:
            return by_id and by_service
        return by_id if self.node_ids else by_service

    def allows_labels(self, role: str, labels: Mapping[str, str]) -> bool:
        """True when a node of ``role`` may claim ``labels``."""
        if role == "gateway":
            allowed = dict(self.gateway_labels)
            return bool(allowed) and all(allowed.get(k) == v for k, v in labels.items())
        if self.labels is None:
            return True
        bound = dict(self.labels)
        return all(k in bound and bound[k] in ("*", v) for k, v in labels.items())


def _authorized_nodes(
    value: Any, key: str, where: _Where, problems: list[Problem]
) -> tuple[NodeGrant, ...] | None:
    """The ``[authorized_nodes]`` table: SAN = { node_ids = [...], services = [...],
    roles = [...], gateway_labels = { ... }, labels = { ... } }."""
    if not isinstance(value, dict):
        problems.append(where.problem(key, "must be a table of SAN = { node_ids, services }"))
        return None
    before = len(problems)
    grants: list[NodeGrant] = []
    known = ("node_ids", "services", "roles", "gateway_labels", "labels")
    for san, entry in value.items():
        at = f"{key}.{san}"
        table = _table(entry, at, where, problems, known)
        if table is None:
            continue
        lists: dict[str, tuple[str, ...]] = {}
        for name in ("node_ids", "services", "roles"):
            items = table.get(name, [])
            if _check(items, lambda v: isinstance(v, list) and all(_is_str(x) and x for x in v),
                      "a list of names", f"{at}.{name}", where, problems):  # fmt: skip
                lists[name] = tuple(items)
        if not table.get("node_ids") and not table.get("services"):
            problems.append(where.problem(at, "names no node_ids and no services"))
            continue
        roles = lists.get("roles") or DEFAULT_ROLES
        unknown = [r for r in roles if r not in NODE_ROLES]
        if unknown:
            problems.append(where.problem(
                f"{at}.roles", f"unknown role {unknown[0]!r}; known: {', '.join(NODE_ROLES)}"
            ))  # fmt: skip
        if "roles" in table and not table["roles"]:
            problems.append(where.problem(f"{at}.roles", "is empty: name at least one role"))
        tables: dict[str, tuple[tuple[str, str], ...]] = {}
        for name in ("gateway_labels", "labels"):
            if name in table and _check(
                table[name], lambda v: isinstance(v, dict) and all(
                    _is_str(x) and x and _is_str(y) and y for x, y in v.items()
                ), "a table of label = value strings", f"{at}.{name}", where, problems,
            ):  # fmt: skip
                tables[name] = tuple(sorted(table[name].items()))
        if "gateway" in roles and not tables.get("gateway_labels"):
            problems.append(where.problem(
                at, "grants the gateway role without gateway_labels: name the labels "
                "(e.g. { istio = \"ingressgateway\" }) its gateways may claim",
            ))  # fmt: skip
        if "gateway_labels" in table and "gateway" not in roles:
            problems.append(where.problem(
                f"{at}.gateway_labels", "needs roles to include \"gateway\""
            ))  # fmt: skip
        if any(v == "*" for _, v in tables.get("gateway_labels", ())):
            problems.append(where.problem(
                f"{at}.gateway_labels", "names each value exactly (\"*\" is for labels)"
            ))  # fmt: skip
        grants.append(
            NodeGrant(
                san,
                lists.get("node_ids", ()),
                lists.get("services", ()),
                tuple(roles),
                tables.get("gateway_labels", ()),
                tables.get("labels"),
            )
        )
    return tuple(grants) if len(problems) == before else None


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of each table header and ``key =`` line of TOML ``text``, by
    dotted key (``mesh.access_log.path``), as ``located.index_toml`` finds them. Keys
    inside inline tables are not listed: their problems name the line of the key holding
    the table."""
    return {".".join(map(str, path)): line for path, line in index_toml(text).items()}


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a settings key was written: the source and the line of each dotted key."""

    source: str
    lines: Mapping[str, int]

    def problem(self, key: str, message: str) -> Problem:
        """A problem at ``key`` (dotted), on its line or its nearest table's."""
        path = key
        while path:
            line = self.lines.get(path) or self.lines.get(path.replace("_", "-"))
            if line:
                return Problem(self.source, line, key, message)
            path = path.rpartition(".")[0]
        return Problem(self.source, 0, key, message)


# -- the [mesh] table -----------------------------------------------------------------

_MESH_KEYS = ("outbound_traffic_policy", "access_log", "prometheus", "tracing", "mtls")
_POLICIES = tuple(p.value for p in OutboundPolicy)


def _mesh_config(value: Any, key: str, where: _Where, problems: list[Problem]) -> MeshConfig | None:
    """The ``[mesh]`` table as a MeshConfig (None, with ``problems``, when it is wrong)."""
    table = _table(value, key, where, problems, _MESH_KEYS)
    if table is None:
        return None
    before = len(problems)
    config = DEFAULT_MESH_CONFIG
    if "outbound_traffic_policy" in table:
        mode = _choice(table["outbound_traffic_policy"], _POLICIES, where,
                       f"{key}.outbound_traffic_policy", problems, upper=True)  # fmt: skip
        if mode is not None:
            config = replace(config, outbound_traffic_policy=OutboundPolicy(mode))
    if "access_log" in table:
        access_log = _access_log(table["access_log"], f"{key}.access_log", where, problems)
        if access_log is not None:
            config = replace(config, access_log=access_log)
    if "prometheus" in table:
        stats = _prometheus(table["prometheus"], f"{key}.prometheus", where, problems)
        if stats is not None:
            config = replace(config, prometheus=stats)
    if "tracing" in table:
        tracing = _tracing(table["tracing"], f"{key}.tracing", where, problems)
        if tracing is not None:
            config = replace(config, tracing=tracing)
    if "mtls" in table:
        mtls = _mesh_tls(table["mtls"], f"{key}.mtls", where, problems)
        if mtls is not None:
            config = replace(config, mtls=mtls)
    return config if len(problems) == before else None


def _table(
    value: Any, key: str, where: _Where, problems: list[Problem], known: tuple[str, ...]
) -> dict[str, Any] | None:
    """``value`` as a table with its keys normalized (``-`` → ``_``); unknown keys are
    problems."""
    if not isinstance(value, dict):
        problems.append(where.problem(key, "must be a table"))
        return None
    out: dict[str, Any] = {}
    for name, item in value.items():
        normal = name.replace("-", "_")
        if normal not in known:
            problems.append(
                where.problem(f"{key}.{name}", f"unknown setting; known: {', '.join(known)}")
            )
            continue
        out[normal] = item
    return out


def _check(
    value: Any, ok: Callable[[Any], bool], what: str, key: str, where: _Where,
    problems: list[Problem],
) -> bool:  # fmt: skip
    if ok(value):
        return True
    problems.append(where.problem(key, f"must be {what} (got {value!r})"))
    return False


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _choice(
    value: Any, choices: tuple[str, ...], where: _Where, key: str, problems: list[Problem],
    *, upper: bool = False,
) -> str | None:  # fmt: skip
    text = value.upper() if upper and isinstance(value, str) else value
    if isinstance(text, str) and text in choices:
        return text
    problems.append(where.problem(key, f"must be one of {', '.join(choices)} (got {value!r})"))
    return None


def _access_log(value: Any, key: str, where: _Where, problems: list[Problem]) -> AccessLog | None:
    known = ("enabled", "path", "encoding", "format", "fields")
    table = _table(value, key, where, problems, known)
    if table is None:
        return None
    before = len(problems)
    out = AccessLog(enabled=True)
    if "enabled" in table and _check(table["enabled"], _is_bool, "true or false",
                                     f"{key}.enabled", where, problems):  # fmt: skip
        out = replace(out, enabled=table["enabled"])
    if "path" in table and _check(table["path"], lambda v: _is_str(v) and bool(v),
                                  "a file path", f"{key}.path", where, problems):  # fmt: skip
        out = replace(out, path=table["path"])
    if "encoding" in table:
        encoding = _choice(table["encoding"], tuple(e.value for e in LogEncoding), where,
                           f"{key}.encoding", problems, upper=True)  # fmt: skip
        if encoding is not None:
            out = replace(out, encoding=LogEncoding(encoding))
    if "format" in table and _check(table["format"], lambda v: _is_str(v) and bool(v),
                                    "an Envoy format string", f"{key}.format", where,
                                    problems):  # fmt: skip
        out = replace(out, format=table["format"])
    if "fields" in table:
        fields_ = table["fields"]
        if _check(fields_, lambda v: isinstance(v, dict) and bool(v)
                  and all(_is_str(x) for x in v.values()),
                  "a table of field name = format string", f"{key}.fields", where,
                  problems):  # fmt: skip
            out = replace(out, fields=tuple(fields_.items()))
    if out.format and out.encoding is not LogEncoding.TEXT:
        problems.append(where.problem(f"{key}.format", "is for TEXT logs; JSON logs take fields"))
    if out.fields and out.encoding is not LogEncoding.JSON:
        problems.append(where.problem(f"{key}.fields", 'is for JSON logs: set encoding = "JSON"'))
    return out if len(problems) == before else None


def _prometheus(
    value: Any, key: str, where: _Where, problems: list[Problem]
) -> PrometheusStats | None:
    table = _table(value, key, where, problems, ("enabled", "port", "path"))
    if table is None:
        return None
    before = len(problems)
    out = PrometheusStats(enabled=True)
    if "enabled" in table and _check(table["enabled"], _is_bool, "true or false",
                                     f"{key}.enabled", where, problems):  # fmt: skip
        out = replace(out, enabled=table["enabled"])
    if "port" in table and _check(table["port"], _is_port, "a port number (1-65535)",
                                  f"{key}.port", where, problems):  # fmt: skip
        out = replace(out, port=table["port"])
    if "path" in table and _check(table["path"], lambda v: _is_str(v) and v.startswith("/"),
                                  'a path starting with "/"', f"{key}.path", where,
                                  problems):  # fmt: skip
        out = replace(out, path=table["path"])
    return out if len(problems) == before else None


def _tracing(value: Any, key: str, where: _Where, problems: list[Problem]) -> Tracing | None:
    known = ("provider", "address", "sampling", "zipkin_path")
    table = _table(value, key, where, problems, known)
    if table is None:
        return None
    before = len(problems)
    provider = None
    address = None
    for required in ("provider", "address"):
        if required not in table:
            problems.append(where.problem(f"{key}.{required}", "missing: tracing needs it"))
    if "provider" in table:
        name = _choice(table["provider"], tuple(p.value for p in TracingProvider), where,
                       f"{key}.provider", problems)  # fmt: skip
        provider = TracingProvider(name) if name is not None else None
    if "address" in table:
        try:
            if not isinstance(table["address"], str):
                raise ValueError('must be "HOST:PORT"')
            address = Address.parse(table["address"])
            if address.port == 0:
                raise ValueError("the collector's port must not be 0")
        except ValueError as e:
            problems.append(where.problem(f"{key}.address", str(e)))
    sampling = 1.0
    if "sampling" in table and _check(
        table["sampling"],
        lambda v: isinstance(v, int | float) and not isinstance(v, bool)
        and math.isfinite(v) and 0 <= v <= 100,
        "a percentage from 0 to 100", f"{key}.sampling", where, problems,
    ):  # fmt: skip
        sampling = float(table["sampling"])
    zipkin_path = "/api/v2/spans"
    if "zipkin_path" in table and _check(
        table["zipkin_path"], lambda v: _is_str(v) and v.startswith("/"),
        'a path starting with "/"', f"{key}.zipkin_path", where, problems,
    ):  # fmt: skip
        zipkin_path = table["zipkin_path"]
    if len(problems) != before or provider is None or address is None:
        return None
    return Tracing(provider, address.host, address.port, sampling, zipkin_path)


def _mesh_tls(value: Any, key: str, where: _Where, problems: list[Problem]) -> MeshTLS | None:
    """The ``[mesh.mtls]`` table. Paths are made absolute against the settings file's
    directory; the certificate and key paths must be templates naming the proxy
    (``{service}`` or ``{instance_ip}``), since a service's identity is in its
    certificate."""
    known = ("mode", "ca", "certificate", "private_key", "trust_domain")
    table = _table(value, key, where, problems, known)
    if table is None:
        return None
    before = len(problems)
    from_file = os.path.isfile(where.source)
    base = os.path.dirname(os.path.abspath(where.source)) if from_file else os.getcwd()
    out = MeshTLS(origin=Origin(where.source, where.lines.get(key, 0)))
    if "mode" in table:
        mode = _choice(table["mode"], tuple(m.value for m in MTLSMode), where,
                       f"{key}.mode", problems, upper=True)  # fmt: skip
        if mode is not None:
            out = replace(out, mode=MTLSMode(mode))
    paths: dict[str, str] = {}
    for name in ("ca", "certificate", "private_key"):
        if name not in table:
            if out.enabled:
                problems.append(where.problem(f"{key}.{name}", "missing: mutual TLS needs it"))
            continue
        item = table[name]
        if not _check(item, lambda v: _is_str(v) and bool(v), "a file path", f"{key}.{name}",
                      where, problems):  # fmt: skip
            continue
        paths[name] = os.path.normpath(os.path.join(base, item))
        if name == "ca":
            continue
        try:
            fields_ = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(item)
                       if f is not None]  # fmt: skip
        except ValueError as e:
            problems.append(where.problem(f"{key}.{name}", f"is not a path template: {e}"))
            continue
        if any(spec or conv for _, spec, conv in fields_):
            problems.append(where.problem(
                f"{key}.{name}", "placeholders take no format (write {service}, not {service:x})"
            ))  # fmt: skip
            continue
        used = {f for f, _, _ in fields_}
        unknown = sorted(used - set(MTLS_PLACEHOLDERS))
        if unknown:
            problems.append(where.problem(
                f"{key}.{name}",
                f"unknown placeholder {{{unknown[0]}}}; known: "
                + ", ".join(f"{{{p}}}" for p in MTLS_PLACEHOLDERS),
            ))  # fmt: skip
        elif not used & {"service", "instance_ip"}:
            problems.append(where.problem(
                f"{key}.{name}",
                "must name the proxy with {service} (a certificate per service) or "
                "{instance_ip} (per workload): every service has its own identity",
            ))  # fmt: skip
    if "trust_domain" in table and _check(
        table["trust_domain"],
        lambda v: _is_str(v) and bool(v) and "/" not in v and ":" not in v,
        "a trust domain name (no '/' or ':')", f"{key}.trust_domain", where, problems,
    ):  # fmt: skip
        out = replace(out, trust_domain=table["trust_domain"])
    out = replace(out, ca=paths.get("ca", ""), certificate=paths.get("certificate", ""),
                  private_key=paths.get("private_key", ""))  # fmt: skip
    return out if len(problems) == before else None


def _coerce(name: str, current: Any, value: Any) -> Any:
    if name in ("grpc", "rest", "admin"):
        if value in ("", None, False):
            return None
        if not isinstance(value, str):
            raise ValueError('must be "HOST:PORT" or "" to disable')
        return Address.parse(value)
    if name == "grpc_impl":
        if value not in GRPC_IMPLS:
            raise ValueError(f"must be one of {', '.join(GRPC_IMPLS)}")
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if isinstance(value, bool):
        raise ValueError("must not be a boolean")
    if isinstance(current, float):
        if not isinstance(value, int | float) or value < 0:
            raise ValueError("must be a non-negative number")
        return float(value)
    if isinstance(current, int):
        if name == "max_connections" and value == 0:  # 0: from the descriptor limit
            return 0
        if not isinstance(value, int) or value < 1:
            raise ValueError("must be a positive integer")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value
