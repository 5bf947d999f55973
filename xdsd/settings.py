"""The daemon's own settings: where to listen, what to watch, how to coalesce edits, and
the mesh-wide proxy defaults (the ``[mesh]`` section, see ``xdsd.model.mesh_config``).

Settings come from defaults, then an optional TOML file (``--settings``), then command-line
flags, later ones winning. Unknown keys and wrong types in the file are errors naming the
file, the line and the key, like config errors: both are read with ``xdsd.located``'s
``Fields`` over a ``Document`` (``merged``; flags are a document without lines).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from envoy.type.v3 import http_status_pb2

from xdsd.errors import ConfigError, Problem
from xdsd.located import (
    Document,
    FieldPath,
    Fields,
    Report,
    index_toml,
    is_ip,
    split_host_port,
    toml_error,
)
from xdsd.model.mesh_config import (
    DEFAULT_MESH_CONFIG,
    MTLS_PLACEHOLDERS,
    WORKLOAD_KEY_TYPES,
    AccessLog,
    CAAuthority,
    ExtAuthzKind,
    ExtensionProvider,
    LogEncoding,
    MeshCA,
    MeshConfig,
    MeshDNS,
    MeshTLS,
    MTLSMode,
    PrometheusStats,
    Tracing,
    TracingProvider,
)
from xdsd.model.networking import OutboundPolicy
from xdsd.model.registrations import DEFAULT_REGISTRY_SETTINGS, EtcdSettings, RegistrySettings
from xdsd.model.service import Origin

#: The largest settings file read.
MAX_SETTINGS_BYTES = 1 << 20

#: The most serving processes ``workers`` may ask for.
MAX_WORKERS = 256
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


#: ``stale_after``'s default: seconds without an answer before a proxy is stale.
DEFAULT_STALE_AFTER = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``xdsd serve`` needs to know, with its defaults (``docs/operations.md``).

    ``quiet_period`` is how long the watcher waits for file events to pause before it
    starts a (speculative) load (seconds); ``max_delay`` is the longest a change waits
    to be published while events keep coming (``sources.watch``).
    ``grpc_impl`` picks the gRPC server: ``grpclib`` (pure Python) or ``grpcio``.
    ``root_namespace`` is Istio's MeshConfig ``rootNamespace``: a Sidecar there without
    ``workloadSelector`` applies to every namespace that has none of its own.
    ``mesh`` holds the mesh-wide proxy defaults (the ``[mesh]`` table of the file).
    ``shutdown_grace`` is how long, after SIGTERM, open streams get to end with their
    UNAVAILABLE status before they are cut (seconds). ``workers`` is how many serving
    processes share the gRPC and REST ports (``xdsd.workers``; ``"auto"`` in the file or
    on the command line: one per core); 1 runs the single process.

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
    ``refuse_unknown_kinds`` makes a document of a kind xdsd does not implement (a
    Kubernetes kind, WorkloadGroup, another API group: a warning by default) an error,
    under ``serve`` (the reload refused, the last good configuration kept) and under
    ``validate --settings``; unknown ``security.istio.io`` kinds are errors regardless.

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

    ``stale_after`` is how long (seconds) a proxy may leave a version it was sent
    neither acknowledged nor rejected before the status page, ``/debug/clients`` and
    ``xdsd status`` call it *stale* (a problem: ``xdsd status`` exits 1).
    """

    config_dir: str = "config"
    grpc: Address | None = field(default_factory=lambda: Address("127.0.0.1", 18000))
    rest: Address | None = field(default_factory=lambda: Address("127.0.0.1", 18001))
    admin: Address | None = field(default_factory=lambda: Address("127.0.0.1", 19001))
    quiet_period: float = 0.001
    max_delay: float = 0.5
    grpc_backlog: int = 4096
    grpc_impl: str = "grpclib"
    root_namespace: str = "istio-system"  # model.networking.ROOT_NAMESPACE
    mesh: MeshConfig = DEFAULT_MESH_CONFIG
    shutdown_grace: float = 5.0
    workers: int = 1
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
    refuse_unknown_kinds: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    admin_tls: bool = True
    authorized_nodes: tuple[NodeGrant, ...] = ()
    admin_sans: tuple[str, ...] = ()
    log_queue_lines: int = 10_000
    stale_after: float = DEFAULT_STALE_AFTER
    #: Where xdsd keeps its restart cache (``xdsd.build_cache``); "" (the default when
    #: systemd sets no ``$STATE_DIRECTORY``): no cache, every start is a cold build.
    state_dir: str = ""
    #: False: no restart cache is read or written even with a ``state_dir``.
    restart_cache: bool = True
    #: The largest restart cache written or read (bytes).
    max_restart_cache_bytes: int = 1 << 30
    #: ``[registry]``: registered workloads (WorkloadGroup auto-registration).
    registry: RegistrySettings = DEFAULT_REGISTRY_SETTINGS

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
        return cls().merged(data, source=path, index=lambda: _spellings(index_toml(raw.decode())))

    def merged(
        self,
        data: Mapping[str, Any],
        *,
        source: str,
        index: dict[FieldPath, int] | Callable[[], dict[FieldPath, int]] | None = None,
    ) -> Settings:
        """These settings with ``data`` applied; ``source`` names where data came from and
        ``index`` the line of each key path in it (a ``located.Document`` index, or a
        function that makes it when a problem needs a line). Keys may be spelled with
        ``-`` for ``_``. Raises ConfigError listing every unknown key and wrong value,
        each naming source, line and dotted key."""
        known = tuple(f.name for f in fields(self))
        report = Report(Document(source, 0, dict(data), index if index is not None else {}), ())
        top = _spelled(report, (), data, known)
        changes = {
            name: _read_setting(top, name, getattr(self, name))
            for name in top.data
            if name in known
        }
        _refuse_unknown(top, known)
        if report.problems:
            raise ConfigError(report.problems)
        result = replace(self, **changes)
        result._check_tls(top)
        if report.problems:
            raise ConfigError(report.problems)
        return result

    def _check_tls(self, top: Fields) -> None:
        """Record in ``top`` what is wrong with the TLS settings taken together."""
        if bool(self.tls_cert) != bool(self.tls_key):
            key = "tls_key" if self.tls_cert else "tls_cert"
            top.error(key, "tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            top.error("tls_client_ca", "needs tls_cert and tls_key")
        if self.admin_sans and not self.tls_client_ca:
            top.error(
                "admin_sans",
                "needs tls_client_ca: admin clients are known by their client certificate",
            )
        if self.authorized_nodes and not self.tls_client_ca:
            top.error(
                "authorized_nodes",
                "needs tls_client_ca: nodes are authorized by their client certificate",
            )


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
        self,
        node_id: str,
        service: str,
        namespace: str = "default",
        *,
        role: str = "sidecar",
        labels: Mapping[str, str] | None = None,
    ) -> bool:
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


def _authorized_nodes(top: Fields) -> tuple[NodeGrant, ...]:
    """The ``[authorized_nodes]`` table: SAN = { node_ids = [...], services = [...],
    roles = [...], gateway_labels = { ... }, labels = { ... } }."""
    what = "a table of SAN = { node_ids, services }"
    value = top.value("authorized_nodes", _is_table, what)
    if value is None:
        return ()
    grants = Fields(top.report, (*top.path, "authorized_nodes"), value)
    found = (_grant(grants, str(san)) for san in value)
    return tuple(grant for grant in found if grant is not None)


_GRANT_KEYS = ("node_ids", "services", "roles", "gateway_labels", "labels")


def _grant(grants: Fields, san: str) -> NodeGrant | None:
    """The grant of ``san`` (None, with problems, when it cannot be used)."""
    entry = _table(grants, san, _GRANT_KEYS)
    if entry is None:
        return None
    lists = {
        name: tuple(entry.value(name, _is_names, "a list of names", []))
        for name in ("node_ids", "services", "roles")
    }
    tables = {
        name: tuple(
            sorted(entry.value(name, _is_labels, "a table of label = value strings", {}).items())
        )
        for name in ("gateway_labels", "labels")
        if name in entry.data
    }
    _refuse_unknown(entry, _GRANT_KEYS)
    given = entry.data
    if not given.get("node_ids") and not given.get("services"):
        entry.error(None, "names no node_ids and no services")
        return None
    roles = lists["roles"] or DEFAULT_ROLES
    unknown = [r for r in roles if r not in NODE_ROLES]
    if unknown:
        entry.error("roles", f"unknown role {unknown[0]!r}; known: {', '.join(NODE_ROLES)}")
    if "roles" in given and not given["roles"]:
        entry.error("roles", "is empty: name at least one role")
    if "gateway" in roles and not tables.get("gateway_labels"):
        entry.error(
            None,
            "grants the gateway role without gateway_labels: name the labels "
            '(e.g. { istio = "ingressgateway" }) its gateways may claim',
        )
    if "gateway_labels" in given and "gateway" not in roles:
        entry.error("gateway_labels", 'needs roles to include "gateway"')
    if any(v == "*" for _, v in tables.get("gateway_labels", ())):
        entry.error("gateway_labels", 'names each value exactly ("*" is for labels)')
    return NodeGrant(
        san,
        lists["node_ids"],
        lists["services"],
        roles,
        tables.get("gateway_labels", ()),
        tables.get("labels"),
    )


# -- reading tables ---------------------------------------------------------------------


def _spelled(
    report: Report, path: FieldPath, table: Mapping[str, Any], known: tuple[str, ...]
) -> Fields:
    """``table`` read at ``path``, each key that names one of ``known`` once ``-`` is read
    as ``_`` (``grpc-impl``) spelled as ``known`` does, other keys as written. A key
    given in both spellings is an error."""
    out: dict[str, Any] = {}
    spelled = Fields(report, path, out)
    for key, value in table.items():
        name = key.replace("-", "_")
        name = name if name in known else key
        if name in out:
            spelled.error(key, f"repeats {name}: give it once")
        out[name] = value
    return spelled


def _spellings(lines: dict[FieldPath, int]) -> dict[FieldPath, int]:
    """A TOML line index (``located.index_toml``) with each path also under its ``_``
    spelling, the one the settings are read by (``_spelled``)."""
    out = dict(lines)
    for path, line in lines.items():
        out.setdefault(tuple(p.replace("-", "_") if isinstance(p, str) else p for p in path), line)
    return out


def _table(parent: Fields, key: str, known: tuple[str, ...]) -> Fields | None:
    """The table at ``key`` of ``parent``, its keys spelled by ``_spelled`` (None when
    absent, or when not a table, which is recorded)."""
    value = parent.value(key, _is_table, "a table")
    if value is None:
        return None
    return _spelled(parent.report, (*parent.path, key), value, known)


def _refuse_unknown(table: Fields, known: tuple[str, ...]) -> None:
    """Record every key of ``table`` not read as an unknown setting."""
    for key in table.unread():
        table.error(key, f"unknown setting; known: {', '.join(known)}")


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_text(value: Any) -> bool:
    """A non-empty string."""
    return isinstance(value, str) and bool(value)


def _is_names(value: Any) -> bool:
    """A list of non-empty strings."""
    return isinstance(value, list) and all(_is_text(x) for x in value)


def _is_labels(value: Any) -> bool:
    """A table of non-empty strings to non-empty strings."""
    return isinstance(value, dict) and all(_is_text(k) and _is_text(v) for k, v in value.items())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_url_path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("/")


# -- the top level ------------------------------------------------------------------------


def _read_setting(top: Fields, name: str, current: Any) -> Any:
    """The value of the top-level setting ``name``; ``current`` (its value so far) says
    how a plain value is read: true or false, a number, a count, a string."""
    if name == "mesh":
        return _mesh_config(top)
    if name == "registry":
        return _registry_settings(top, current)
    if name == "authorized_nodes":
        return _authorized_nodes(top)
    if name == "admin_sans":
        return tuple(top.value(name, _is_names, "a list of SANs", ()))
    if name in ("grpc", "rest", "admin"):
        return _address(top, name)
    if name == "grpc_impl":
        return top.choice(name, GRPC_IMPLS, default=current)
    if name == "workers":
        value = top.value(name, _is_workers, 'a positive integer or "auto"', current)
        return cores() if value == "auto" else int(value)
    if isinstance(current, bool):
        return top.boolean(name, default=current)
    if isinstance(current, float):
        return float(top.value(name, _is_non_negative, "a non-negative number", current))
    if isinstance(current, int):
        # max_connections 0: derived from the descriptor limit
        ok = _is_count if name == "max_connections" else _is_positive
        return int(top.value(name, ok, "a positive integer", current))
    return top.string(name, default=current)


def _is_workers(value: Any) -> bool:
    return value == "auto" or (_is_positive(value) and value <= MAX_WORKERS)


def cores() -> int:
    """How many cores this process may run on (``workers = "auto"``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _is_non_negative(value: Any) -> bool:
    return _is_number(value) and not value < 0


def _is_positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_count(value: Any) -> bool:
    """A positive integer, or 0 (0.0 too)."""
    return _is_positive(value) or (not isinstance(value, bool) and value == 0)


def _address(top: Fields, name: str) -> Address | None:
    """A listen address, ``"HOST:PORT"``; ``""`` (or false) turns the listener off."""
    value = top.value(name, _is_address, '"HOST:PORT" or "" to disable', "")
    if value in ("", False):
        return None
    try:
        return Address.parse(value)
    except ValueError as e:
        top.error(name, str(e))
        return None


def _is_address(value: Any) -> bool:
    return value in ("", False) or isinstance(value, str)


# -- the [registry] table -------------------------------------------------------------

_REGISTRY_KEYS = ("grace", "max_registrations", "replica", "etcd")


def _registry_settings(top: Fields, current: RegistrySettings) -> RegistrySettings:
    """The ``[registry]`` table (``current`` when absent): ``grace`` (seconds, or a
    duration like ``"10s"``; how long a registration outlives its sidecar's
    disconnection), ``max_registrations`` (positive), ``replica`` (this daemon's name
    among replicas; default host name and process id)."""
    table = _table(top, "registry", _REGISTRY_KEYS)
    if table is None:
        return current
    out = current
    if table.has("grace"):
        raw: Any = table.data.get("grace")
        if _is_number(raw) and math.isfinite(raw) and 0 <= raw <= 86_400:
            table.read.add("grace")
            out = replace(out, grace=timedelta(seconds=float(raw)))
        elif _is_number(raw):
            table.read.add("grace")
            table.error("grace", f"must be from 0 to 86400 seconds (got {raw})")
        else:
            grace = table.duration("grace")
            if grace is not None:
                out = replace(out, grace=grace)
    count = table.value("max_registrations", _is_positive, "a positive integer", None)
    if count is not None:
        out = replace(out, max_registrations=int(count))
    replica = table.value("replica", _is_replica, "a name (letters, digits, '.', '_', '-')", None)
    if replica is not None:
        out = replace(out, replica=replica)
    if table.has("etcd"):
        out = replace(out, etcd=_registry_etcd(table))
    _refuse_unknown(table, _REGISTRY_KEYS)
    return out


def _is_replica(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 253
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
    )


# -- the [registry.etcd] table -------------------------------------------------------

_ETCD_KEYS = ("endpoints", "prefix", "lease_ttl", "timeout")
#: The most etcd endpoints listed.
MAX_ETCD_ENDPOINTS = 16
#: The range of ``lease_ttl`` (seconds): etcd's shortest lease, an hour.
ETCD_LEASE_TTL_RANGE = (2.0, 3600.0)
#: The range of ``timeout`` (seconds).
ETCD_TIMEOUT_RANGE = (0.05, 60.0)
_ETCD_ENDPOINT = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/?")
_ETCD_PREFIX = re.compile(r"/[A-Za-z0-9._/-]{0,200}")


def _registry_etcd(registry: Fields) -> EtcdSettings | None:
    """``[registry.etcd]``: where replicas share registrations (None when absent or not a
    table, which is recorded). ``endpoints`` a list of etcd client URLs
    (``"http://HOST:PORT"``; tried in order, the next after a failure), ``prefix`` the
    key prefix (``"/xdsd"``), ``lease_ttl`` the TTL of each replica's lease and
    ``timeout`` for one request (seconds, or durations like ``"10s"``); the timeout must
    be under a third of the TTL (the keep-alive's period)."""
    table = _table(registry, "etcd", _ETCD_KEYS)
    if table is None:
        return None
    default = EtcdSettings(endpoints=())
    what = f'a list of etcd client URLs like "http://127.0.0.1:2379" (at most {MAX_ETCD_ENDPOINTS})'
    endpoints = table.value("endpoints", _is_etcd_endpoints, what, [])
    if not table.has("endpoints"):
        table.error(None, 'needs endpoints, e.g. endpoints = ["http://127.0.0.1:2379"]')
    what = "a key prefix starting with '/' (letters, digits, '.', '_', '-', '/')"
    prefix = table.value("prefix", lambda v: bool(_is_text(v) and _ETCD_PREFIX.fullmatch(v)), what)
    ttl = _bounded_seconds(table, "lease_ttl", ETCD_LEASE_TTL_RANGE, default.lease_ttl)
    timeout = _bounded_seconds(table, "timeout", ETCD_TIMEOUT_RANGE, default.timeout)
    if timeout * 3 > ttl:
        key = "timeout" if table.has("timeout") else "lease_ttl"
        table.error(
            key,
            f"timeout ({timeout.total_seconds():g}s) must be at most a third of lease_ttl "
            f"({ttl.total_seconds():g}s): the lease is kept alive every third of it",
        )
    _refuse_unknown_hinted(table, _ETCD_KEYS)
    return EtcdSettings(
        endpoints=tuple(e.rstrip("/") for e in endpoints),
        prefix=(prefix.rstrip("/") or "/") if prefix else default.prefix,
        lease_ttl=ttl,
        timeout=timeout,
    )


def _is_etcd_endpoints(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 0 < len(value) <= MAX_ETCD_ENDPOINTS
        and all(isinstance(x, str) and _ETCD_ENDPOINT.fullmatch(x) for x in value)
    )


def _bounded_seconds(
    table: Fields, key: str, bounds: tuple[float, float], default: timedelta
) -> timedelta:
    """A duration ``key`` (seconds, or ``"10s"``) within ``bounds``; ``default`` when
    absent or wrong (recorded)."""
    if not table.has(key):
        return default
    before = len(table.report.problems)
    seconds = _seconds(table, key)
    if len(table.report.problems) > before:
        return default
    low, high = bounds
    if not low <= seconds <= high:
        table.error(key, f"must be from {low:g}s to {high:g}s (got {seconds:g}s)")
        return default
    return timedelta(seconds=seconds)


# -- the [mesh] table -----------------------------------------------------------------

_MESH_KEYS = (
    "outbound_traffic_policy",
    "access_log",
    "prometheus",
    "tracing",
    "mtls",
    "extension_providers",
    "ca",
    "dns",
)
_POLICIES = tuple(p.value for p in OutboundPolicy)
_ENCODINGS = tuple(e.value for e in LogEncoding)
_PROVIDERS = tuple(p.value for p in TracingProvider)
_MTLS_MODES = tuple(m.value for m in MTLSMode)


def _mesh_config(top: Fields) -> MeshConfig | None:
    """The ``[mesh]`` table as a MeshConfig (None when absent or not a table)."""
    table = _table(top, "mesh", _MESH_KEYS)
    if table is None:
        return None
    config = DEFAULT_MESH_CONFIG
    policy = table.choice("outbound_traffic_policy", _POLICIES, fold=str.upper)
    if policy is not None:
        config = replace(config, outbound_traffic_policy=OutboundPolicy(policy))
    parts: dict[str, Any] = {
        "access_log": _access_log(table),
        "prometheus": _prometheus(table),
        "tracing": _tracing(table),
        "mtls": _mesh_tls(table, issued=table.has("ca")),
        "extension_providers": _extension_providers(table),
        "dns": _mesh_dns(table),
    }
    parts["ca"] = _mesh_ca(table, parts["mtls"])
    _refuse_unknown(table, _MESH_KEYS)
    return replace(config, **{name: part for name, part in parts.items() if part is not None})


def _access_log(mesh: Fields) -> AccessLog | None:
    known = ("enabled", "path", "encoding", "format", "fields")
    table = _table(mesh, "access_log", known)
    if table is None:
        return None
    default = AccessLog(enabled=True)
    encoding = table.choice("encoding", _ENCODINGS, fold=str.upper) or default.encoding.value
    what = "a table of field name = format string"
    fields_ = table.value("fields", _is_log_fields, what, {})
    out = AccessLog(
        enabled=table.boolean("enabled", default=default.enabled),
        path=table.value("path", _is_text, "a file path", default.path),
        encoding=LogEncoding(encoding),
        format=table.value("format", _is_text, "an Envoy format string", default.format),
        fields=tuple(fields_.items()),
    )
    if out.format and out.encoding is not LogEncoding.TEXT:
        table.error("format", "is for TEXT logs; JSON logs take fields")
    if out.fields and out.encoding is not LogEncoding.JSON:
        table.error("fields", 'is for JSON logs: set encoding = "JSON"')
    _refuse_unknown(table, known)
    return out


def _is_log_fields(value: Any) -> bool:
    return (
        isinstance(value, dict) and bool(value) and all(isinstance(x, str) for x in value.values())
    )


def _prometheus(mesh: Fields) -> PrometheusStats | None:
    known = ("enabled", "port", "path")
    table = _table(mesh, "prometheus", known)
    if table is None:
        return None
    default = PrometheusStats(enabled=True)
    out = PrometheusStats(
        enabled=table.boolean("enabled", default=default.enabled),
        port=table.value("port", _is_port, "a port number (1-65535)", default.port),
        path=table.value("path", _is_url_path, 'a path starting with "/"', default.path),
    )
    _refuse_unknown(table, known)
    return out


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _tracing(mesh: Fields) -> Tracing | None:
    known = ("provider", "address", "sampling", "zipkin_path")
    table = _table(mesh, "tracing", known)
    if table is None:
        return None
    for required in ("provider", "address"):
        if not table.has(required):
            table.error(required, "missing: tracing needs it")
    provider = table.choice("provider", _PROVIDERS)
    address = _collector(table)
    what = "a percentage from 0 to 100"
    sampling = table.value("sampling", _is_percentage, what, 1.0)
    path = table.value("zipkin_path", _is_url_path, 'a path starting with "/"', "/api/v2/spans")
    _refuse_unknown(table, known)
    if provider is None or address is None:
        return None
    return Tracing(TracingProvider(provider), address.host, address.port, float(sampling), path)


def _is_percentage(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and 0 <= value <= 100


def _collector(tracing: Fields) -> Address | None:
    """The tracing collector's ``"HOST:PORT"`` (a port, not 0)."""
    text = tracing.value("address", lambda v: isinstance(v, str), '"HOST:PORT"')
    if text is None:
        return None
    try:
        address = Address.parse(text)
        if address.port == 0:
            raise ValueError("the collector's port must not be 0")
    except ValueError as e:
        tracing.error("address", str(e))
        return None
    return address


def _mesh_tls(mesh: Fields, *, issued: bool = False) -> MeshTLS | None:
    """The ``[mesh.mtls]`` table. Paths are made absolute against the settings file's
    directory; the certificate and key paths must be templates naming the proxy
    (``{service}`` or ``{instance_ip}``), since a service's identity is in its
    certificate. ``issued``: ``[mesh.ca]`` is given, so xdsd's CA issues the
    certificates and the files must not be named (the two are alternatives)."""
    known = ("mode", "ca", "certificate", "private_key", "trust_domain", "trust_domain_aliases")
    table = _table(mesh, "mtls", known)
    if table is None:
        return None
    source = table.report.doc.path
    base = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()
    out = MeshTLS(origin=Origin(source, table.report.doc.lines.get(table.path, 0)))
    mode = table.choice("mode", _MTLS_MODES, fold=str.upper)
    if mode is not None:
        out = replace(out, mode=MTLSMode(mode))
    paths: dict[str, str] = {}
    for name in ("ca", "certificate", "private_key"):
        if issued and table.has(name):
            table.error(
                name,
                "[mesh.ca] issues the mesh's certificates: certificate files and [mesh.ca] "
                "are alternatives; remove one",
            )
            continue
        if not table.has(name):
            if out.enabled and not issued:
                table.error(name, "missing: mutual TLS needs it")
            continue
        item = table.value(name, _is_text, "a file path")
        if item is None:
            continue
        paths[name] = os.path.normpath(os.path.join(base, item))
        problem = "" if name == "ca" else _template_problem(item)
        if problem:
            table.error(name, problem)
    what = "a trust domain name (no '/' or ':')"
    trust_domain = table.value("trust_domain", _is_trust_domain, what, out.trust_domain)
    aliases = table.value(
        "trust_domain_aliases",
        lambda v: isinstance(v, list) and all(_is_trust_domain(a) for a in v),
        "a list of trust domain names (no '/' or ':')",
        [],
    )
    _refuse_unknown(table, known)
    return replace(
        out,
        ca=paths.get("ca", ""),
        certificate=paths.get("certificate", ""),
        private_key=paths.get("private_key", ""),
        trust_domain=trust_domain,
        trust_domain_aliases=tuple(aliases),
        issued=issued,
    )


def _is_trust_domain(value: Any) -> bool:
    return _is_text(value) and "/" not in value and ":" not in value


def _template_problem(template: str) -> str:
    """What is wrong with a certificate or key path template ("" when nothing is)."""
    try:
        fields_ = [
            (f, spec, conv)
            for _, f, spec, conv in string.Formatter().parse(template)
            if f is not None
        ]
    except ValueError as e:
        return f"is not a path template: {e}"
    if any(spec or conv for _, spec, conv in fields_):
        return "placeholders take no format (write {service}, not {service:x})"
    used = {f for f, _, _ in fields_}
    unknown = sorted(used - set(MTLS_PLACEHOLDERS))
    if unknown:
        return f"unknown placeholder {{{unknown[0]}}}; known: " + ", ".join(
            f"{{{p}}}" for p in MTLS_PLACEHOLDERS
        )
    if not used & {"service", "instance_ip"}:
        return (
            "must name the proxy with {service} (a certificate per service) or "
            "{instance_ip} (per workload): every service has its own identity"
        )
    return ""


# -- [[mesh.extension_providers]] ---------------------------------------------------------

_PROVIDER_KINDS = tuple(k.value for k in ExtAuthzKind)
_PROVIDER_COMMON = ("service", "port", "timeout", "fail_open", "status_on_error")
_PROVIDER_BODY = "include_request_body_in_check"
_PROVIDER_KEYS: dict[ExtAuthzKind, tuple[str, ...]] = {
    ExtAuthzKind.HTTP: (
        *_PROVIDER_COMMON,
        "path_prefix",
        "include_request_headers_in_check",
        "include_additional_headers_in_check",
        "headers_to_upstream_on_allow",
        "headers_to_downstream_on_deny",
        "headers_to_downstream_on_allow",
        _PROVIDER_BODY,
    ),
    ExtAuthzKind.GRPC: (*_PROVIDER_COMMON, _PROVIDER_BODY),
}
_BODY_KEYS = ("max_request_bytes", "allow_partial_message", "pack_as_bytes")
#: The HTTP status codes Envoy takes as ``status_on_error``.
_STATUS_CODES = frozenset(v.number for v in http_status_pb2.StatusCode.DESCRIPTOR.values) - {0}
#: An HTTP header name (RFC 9110 token characters).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _extension_providers(mesh: Fields) -> tuple[ExtensionProvider, ...] | None:
    """``[[mesh.extension_providers]]``: the external authorization servers CUSTOM
    AuthorizationPolicies may name (Istio's ``extensionProviders``), each with a unique
    ``name`` and exactly one of the tables ``envoy_ext_authz_http`` /
    ``envoy_ext_authz_grpc``. None when absent."""
    what = "a list of tables ([[mesh.extension_providers]])"
    value = mesh.value("extension_providers", _is_tables, what)
    if value is None:
        return None
    out: list[ExtensionProvider] = []
    seen: dict[str, int] = {}
    source = mesh.report.doc
    for index, item in enumerate(value):
        path = (*mesh.path, "extension_providers", index)
        entry = _spelled(mesh.report, path, item, ("name", *_PROVIDER_KINDS))
        provider = _extension_provider(entry, Origin(source.path, source.line_of(path)))
        name = entry.data.get("name")
        if isinstance(name, str) and name in seen:
            entry.error("name", f"repeats provider {name!r} (first at line {seen[name]})")
            continue
        if isinstance(name, str):
            seen[name] = source.line_of((*path, "name"))
        if provider is not None:
            out.append(provider)
    return tuple(out)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, dict) for x in value)


def _extension_provider(entry: Fields, origin: Origin) -> ExtensionProvider | None:
    """One provider (None, with problems, when it cannot be used)."""
    name = entry.value("name", _is_text, "a non-empty string")
    if not entry.has("name"):
        entry.error(None, "names no provider: give it a name")
    given = [k for k in ExtAuthzKind if entry.has(k.value)]
    for kind in ExtAuthzKind:
        entry.value(kind.value, _is_table, "a table")
    _refuse_unknown(entry, ("name", *_PROVIDER_KINDS))
    if len(given) != 1:
        how = "both" if given else "neither of"
        entry.error(None, f"has {how} {' and '.join(_PROVIDER_KINDS)}: give exactly one")
        return None
    kind = given[0]
    table = _table(entry, kind.value, _PROVIDER_KEYS[kind])
    if table is None or name is None:
        return None
    return _provider_server(table, kind, name, origin)


def _provider_server(
    table: Fields, kind: ExtAuthzKind, name: str, origin: Origin
) -> ExtensionProvider | None:
    """The provider ``name`` of ``kind`` from its server table."""
    problems = len(table.report.problems)
    service = table.value("service", _is_host, "a host name of the mesh")
    port = table.value("port", _is_port, "a port number (1-65535)")
    for required in ("service", "port"):
        if not table.has(required):
            table.error(required, "missing: the provider needs it")
    timeout = _seconds(table, "timeout")
    status = table.value("status_on_error", _is_status, "an HTTP status code (e.g. 503)", 0)
    http = _http_fields(table) if kind is ExtAuthzKind.HTTP else {}
    body = _request_body(table)
    provider = ExtensionProvider(
        name=name,
        kind=kind,
        service=service or "",
        port=port or 0,
        timeout_seconds=timeout,
        fail_open=table.boolean("fail_open"),
        status_on_error=int(status),
        **http,
        max_request_bytes=body[0],
        allow_partial_message=body[1],
        pack_as_bytes=body[2],
        origin=origin,
    )
    _refuse_unknown(table, _PROVIDER_KEYS[kind])
    return provider if len(table.report.problems) == problems else None


def _http_fields(table: Fields) -> dict[str, Any]:
    """The fields only an HTTP provider has, by ``ExtensionProvider`` field name."""
    out: dict[str, Any] = {
        key: tuple(table.value(key, _is_header_names, "a list of header names", ()))
        for key in (
            "include_request_headers_in_check",
            "headers_to_upstream_on_allow",
            "headers_to_downstream_on_deny",
            "headers_to_downstream_on_allow",
        )
    }
    what = "a table of header name = value strings"
    additional = table.value("include_additional_headers_in_check", _is_header_values, what, {})
    out["include_additional_headers_in_check"] = tuple(sorted(additional.items()))
    out["path_prefix"] = table.value("path_prefix", _is_url_path, 'a path starting with "/"', "")
    return out


def _request_body(table: Fields) -> tuple[int, bool, bool]:
    """``include_request_body_in_check``: (max_request_bytes, allow_partial_message,
    pack_as_bytes); (0, False, False) when absent (the body is not sent)."""
    body = _table(table, _PROVIDER_BODY, _BODY_KEYS)
    if body is None:
        return 0, False, False
    size = body.value("max_request_bytes", _is_positive, "a positive number of bytes")
    if size is None and not body.has("max_request_bytes"):
        body.error("max_request_bytes", "missing: how many bytes of the body to send")
    out = (
        int(size or 0),
        body.boolean("allow_partial_message"),
        body.boolean("pack_as_bytes"),
    )
    _refuse_unknown(body, _BODY_KEYS)
    return out


def _seconds(table: Fields, key: str) -> float:
    """A duration: a number of seconds, or a string like ``"0.5s"`` or ``"250ms"`` (0:
    absent)."""
    raw = table.data.get(key)
    if _is_number(raw):
        return float(table.value(key, _is_finite_non_negative, "a non-negative duration", 0.0))
    found = table.duration(key)
    return found.total_seconds() if found is not None else 0.0


def _is_finite_non_negative(value: Any) -> bool:
    return _is_non_negative(value) and math.isfinite(value)


def _is_host(value: Any) -> bool:
    """A DNS name (letters, digits, ``-``, ``.``; no scheme, port or path)."""
    host = r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?"
    return _is_text(value) and re.fullmatch(host, value) is not None


def _is_status(value: Any) -> bool:
    """An HTTP status code Envoy knows (``envoy.type.v3.StatusCode``), given as a number
    or a string of digits (Istio writes ``"503"``)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and value in _STATUS_CODES


def _is_header_names(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, str) and _HEADER_NAME.fullmatch(x) is not None for x in value
    )


def _is_header_values(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _HEADER_NAME.fullmatch(k) is not None and isinstance(v, str) for k, v in value.items()
    )


# -- [mesh.ca] ------------------------------------------------------------------------------

_CA_KEYS = (
    "state_dir",
    "workload_ttl",
    "renew_at",
    "key_type",
    "token_key",
    "revoked_tokens",
    "signing",
    "authorities",
)
_AUTHORITY_KEYS = ("name", "cert", "key")
#: The shortest and longest ``workload_ttl`` (seconds: tests rotate in seconds; 90 days).
MIN_WORKLOAD_TTL_SECONDS = 1.0
MAX_WORKLOAD_TTL_SECONDS = 90 * 86400.0
#: A name xdsd keeps a generated authority under (a directory of ``state_dir``).
_AUTHORITY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
#: A token id (``xdsd token`` prints it).
_TOKEN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _mesh_ca(mesh: Fields, mtls: MeshTLS | None) -> MeshCA | None:
    """The ``[mesh.ca]`` table (None when absent): xdsd's own CA. It needs ``[mesh.mtls]``
    with a mode (its trust domain names the identities). Paths are made absolute against
    the settings file's directory; what the files hold is checked when the CA loads."""
    table = _table(mesh, "ca", _CA_KEYS)
    if table is None:
        return None
    if mtls is None or not mtls.enabled:
        table.error(
            None,
            "xdsd's CA issues mesh mutual TLS certificates: it needs [mesh.mtls] with "
            "mode PERMISSIVE or STRICT (and its trust_domain)",
        )
    base = _base_directory(table)
    origin = Origin(table.report.doc.path, table.report.doc.lines.get(table.path, 0))
    state_dir = table.value("state_dir", _is_text, "a directory path")
    if not table.has("state_dir"):
        table.error("state_dir", "missing: xdsd's CA keeps what it generates there")
    ttl = _seconds(table, "workload_ttl") if table.has("workload_ttl") else 86400.0
    if table.has("workload_ttl") and not (
        MIN_WORKLOAD_TTL_SECONDS <= ttl <= MAX_WORKLOAD_TTL_SECONDS
    ):
        table.error(
            "workload_ttl",
            f"must be from {MIN_WORKLOAD_TTL_SECONDS:g}s to {MAX_WORKLOAD_TTL_SECONDS / 86400:g} "
            f"days (got {ttl:g}s)",
        )
    renew = table.value(
        "renew_at", _is_fraction, "a fraction of the certificate's life, between 0 and 1", 0.5
    )
    key_type = table.choice("key_type", WORKLOAD_KEY_TYPES, default=WORKLOAD_KEY_TYPES[0])
    token_key = table.value("token_key", _is_text, "a file path", "")
    revoked = table.value(
        "revoked_tokens",
        lambda v: (
            isinstance(v, list) and all(isinstance(x, str) and _TOKEN_ID.fullmatch(x) for x in v)
        ),
        "a list of token ids (as xdsd token prints them)",
        [],
    )
    authorities = _ca_authorities(table, base)
    names = [a.name for a in authorities] or ["default"]
    signing = table.value("signing", _is_text, "the name of an authority", "")
    if signing and signing not in names:
        hint = difflib.get_close_matches(signing, names, n=1, cutoff=0.6)
        did = f"did you mean {hint[0]!r}? " if hint else ""
        table.error("signing", f"names no authority; {did}authorities: {', '.join(names)}")
    _refuse_unknown_hinted(table, _CA_KEYS)
    return MeshCA(
        state_dir=os.path.normpath(os.path.join(base, state_dir or ".")),
        authorities=authorities,
        signing=signing,
        workload_ttl_seconds=ttl if ttl else 86400.0,
        renew_fraction=float(renew),
        key_type=key_type or WORKLOAD_KEY_TYPES[0],
        token_key=os.path.normpath(os.path.join(base, token_key)) if token_key else "",
        revoked_tokens=tuple(revoked),
        origin=origin,
    )


def _ca_authorities(table: Fields, base: str) -> tuple[CAAuthority, ...]:
    """``[[mesh.ca.authorities]]``: each a unique ``name`` with ``cert`` and ``key``
    (the operator's CA) or neither (generated in the state directory)."""
    what = "a list of tables ([[mesh.ca.authorities]])"
    value = table.value("authorities", _is_tables, what)
    if value is None:
        return ()
    out: list[CAAuthority] = []
    seen: dict[str, int] = {}
    source = table.report.doc
    for index, item in enumerate(value):
        path = (*table.path, "authorities", index)
        entry = _spelled(table.report, path, item, _AUTHORITY_KEYS)
        what = "a name (letters, digits, '.', '_' and '-'; at most 64)"
        name = entry.value(
            "name", lambda v: isinstance(v, str) and bool(_AUTHORITY_NAME.fullmatch(v)), what
        )
        if not entry.has("name"):
            entry.error(None, "names no authority: give it a name")
        files = {k: entry.value(k, _is_text, "a file path", "") for k in ("cert", "key")}
        if bool(files["cert"]) != bool(files["key"]):
            missing = "key" if files["cert"] else "cert"
            entry.error(
                missing,
                "missing: give cert and key (the operator's CA), or neither (xdsd generates one)",
            )
        _refuse_unknown_hinted(entry, _AUTHORITY_KEYS)
        if name is None:
            continue
        if name in seen:
            entry.error("name", f"repeats authority {name!r} (first at line {seen[name]})")
            continue
        seen[name] = source.line_of((*path, "name"))
        paths = {k: os.path.normpath(os.path.join(base, v)) if v else "" for k, v in files.items()}
        out.append(CAAuthority(name, paths["cert"], paths["key"]))
    if value == []:
        table.error("authorities", "is empty: leave it out for one generated authority")
    return tuple(out)


def _base_directory(table: Fields) -> str:
    """The directory relative paths of ``table`` are read from: the settings file's."""
    source = table.report.doc.path
    return os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()


def _is_fraction(value: Any) -> bool:
    return _is_number(value) and 0 < value < 1


def _refuse_unknown_hinted(table: Fields, known: tuple[str, ...]) -> None:
    """Record every key of ``table`` not read as unknown, with the closest known key."""
    for key in table.unread():
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        did = f"did you mean {hint[0]!r}? " if hint else ""
        table.error(key, f"unknown setting; {did}known: {', '.join(known)}")


# -- [mesh.dns] ------------------------------------------------------------------------------

_DNS_KEYS = ("enabled", "virtual_addresses", "virtual_addresses_v6", "upstream", "ttl")
#: The prefix lengths an IPv4 block of virtual addresses may have: a /8 at most (the whole
#: of 127.0.0.0/8), a /30 at least (two addresses).
MIN_BLOCK_PREFIX, MAX_BLOCK_PREFIX = 8, 30
#: The most resolvers ``upstream`` may name (what Envoy's DNS filter is sensibly given).
MAX_UPSTREAM_RESOLVERS = 8
#: The longest TTL of the answers for mesh names (a day), in seconds.
MAX_DNS_TTL_SECONDS = 86400


def _mesh_dns(mesh: Fields) -> MeshDNS | None:
    """The ``[mesh.dns]`` table (None when absent): the block virtual addresses are
    allocated from, an optional IPv6 block (at least as many addresses: a service's slot
    is the same in both), the upstream resolvers (``IP`` or ``IP:PORT``, at most
    ``MAX_UPSTREAM_RESOLVERS``) and the TTL of mesh answers (whole seconds, 0 to a day).
    ``origin`` is the line of ``virtual_addresses`` (the table's without it)."""
    table = _table(mesh, "dns", _DNS_KEYS)
    if table is None:
        return None
    default = MeshDNS()
    enabled = table.boolean("enabled", default=default.enabled)
    block = table.value(
        "virtual_addresses",
        _is_v4_block,
        f"an IPv4 network in CIDR notation, /{MIN_BLOCK_PREFIX} to /{MAX_BLOCK_PREFIX}, "
        "host bits zero (e.g. 127.240.0.0/16)",
        default.virtual_addresses,
    )
    block_v6 = table.value(
        "virtual_addresses_v6",
        _is_v6_block,
        'an IPv6 network in CIDR notation, host bits zero (e.g. "fd00:ec::/112"), or ""',
        default.virtual_addresses_v6,
    )
    if block_v6 and _slots(block_v6) < _slots(block):
        table.error(
            "virtual_addresses_v6",
            f"has fewer addresses than virtual_addresses ({block}): give it at least "
            f"/{128 - (32 - int(block.rsplit('/', 1)[1]))}, so every service's slot has an "
            "IPv6 address too",
        )
    upstream = table.value(
        "upstream",
        lambda v: (
            isinstance(v, list)
            and len(v) <= MAX_UPSTREAM_RESOLVERS
            and all(_is_resolver(x) for x in v)
        ),
        f'a list of at most {MAX_UPSTREAM_RESOLVERS} resolvers, "IP" or "IP:PORT" ("[IPv6]:PORT")',
        [],
    )
    ttl = default.ttl
    if table.has("ttl"):
        seconds = _seconds(table, "ttl")
        if not (seconds.is_integer() and 0 <= seconds <= MAX_DNS_TTL_SECONDS):
            table.error("ttl", f"must be whole seconds from 0s to 24h (got {seconds:g}s)")
        else:
            ttl = timedelta(seconds=seconds)
    doc = table.report.doc
    line = doc.lines.get((*table.path, "virtual_addresses")) or doc.lines.get(table.path, 0)
    _refuse_unknown_hinted(table, _DNS_KEYS)
    return MeshDNS(
        enabled=enabled,
        virtual_addresses=block,
        virtual_addresses_v6=block_v6,
        upstream=tuple(upstream),
        ttl=ttl,
        origin=Origin(doc.path, line),
    )


def _network(value: Any, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network ``value`` names in CIDR notation with host bits zero (of IP
    ``version``), else None."""
    if not isinstance(value, str) or "/" not in value or len(value) > 64:
        return None
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return None
    return network if network.version == version else None


def _is_v4_block(value: Any) -> bool:
    network = _network(value, 4)
    return network is not None and MIN_BLOCK_PREFIX <= network.prefixlen <= MAX_BLOCK_PREFIX


def _is_v6_block(value: Any) -> bool:
    if value == "":
        return True
    network = _network(value, 6)
    return network is not None and network.prefixlen <= 126


def _slots(block: str) -> int:
    """How many services a block has room for (``translate.virtual_addresses``'s
    ``AddressBlock.size``: the network address, and IPv4's broadcast, are never used;
    capped at 2**32)."""
    network = ipaddress.ip_network(block)
    reserved = 2 if network.version == 4 else 1
    return int(min(network.num_addresses - reserved, 2**32))


def _is_resolver(value: Any) -> bool:
    """A resolver: an IP literal, or ``IP:PORT`` (``[IPv6]:PORT``)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 64
        and (is_ip(value) or split_host_port(value) is not None)
    )
