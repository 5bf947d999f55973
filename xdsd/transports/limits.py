"""What the transports refuse, and why: the limits every listener applies and the node
authorization of clients with certificates.

How this works: a limit or an authorization check that fails raises ``Refused``, which
carries the gRPC status and the HTTP status to answer with and a short ``reason`` (the
label refusals are counted under). Transports catch it at their edge, log it with the
client's address and node, report it to ``on_refused`` and end only that stream or
request. ``AddressCount`` counts the streams open per client address; ``NodeAuthorizer``
decides whether a client certificate may speak for a node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from xdsd.errors import XdsdError
from xdsd.settings import NodeGrant, Settings

#: Called with (listener, reason) for every refusal: ``grpc``, ``rest`` or ``admin``, and
#: ``request_too_large``, ``too_many_streams``, ``first_request_timeout``,
#: ``permission_denied``, ``slow_reader``, ``too_many_node_classes``, with ``[mesh.ca]``
#: (``xdsd.transports.identity``) ``token_absent``, ``token_malformed``, ``token_forged``,
#: ``token_expired``, ``token_revoked`` and ``identity_not_issued``, or for connections
#: (``xdsd.transports.connections``) ``too_many_connections``,
#: ``too_many_connections_from_address``, ``out_of_descriptors``, ``handshake_timeout``,
#: ``idle_timeout`` and ``rapid_reset``; REST under ``[mesh.ca]`` without a client
#: certificate: ``identity_over_rest``.
RefusalObserver = Callable[[str, str], None]


def ignore_refusal(listener: str, reason: str) -> None:
    """The default ``RefusalObserver``: refusals are only logged."""


class Refused(XdsdError):
    """A client's stream or request is refused: answered with the gRPC status ``code``
    (a status name) or HTTP ``http_status``, and ``message``; ``reason`` names the limit
    or check (see ``RefusalObserver``)."""

    def __init__(self, code: str, http_status: int, reason: str, message: str) -> None:
        self.code = code
        self.http_status = http_status
        self.reason = reason
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The limits of one gRPC server (see ``Settings``): the largest request message in
    bytes, the streams open at once per client address, the seconds a new stream may
    wait before its first request (0: no limit), the requests a stream may have read but
    not handled (``max_queued_requests``) and the stream resets a client may make per
    second on one HTTP/2 connection (grpclib). The connection limits are
    ``xdsd.transports.connections.ConnectionLimits``."""

    max_request_bytes: int = 4 << 20
    max_streams_per_address: int = 1024
    first_request_timeout: float = 10.0
    max_queued_requests: int = 16
    max_stream_resets_per_second: float = 50.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        """The limits ``settings`` give (a key per field, of the same name)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def too_large(size: int | None, limit: int) -> Refused:
    """The refusal of a request of ``size`` bytes (None: not known) over ``limit``."""
    what = f"request of {size} bytes" if size is not None else "request"
    return Refused(
        "RESOURCE_EXHAUSTED",
        413,
        "request_too_large",
        f"{what} is larger than the limit of {limit} bytes (max_request_bytes)",
    )


class AddressCount:
    """The streams open per client address, bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> None:
        """Count one more stream from ``address``; raises Refused (RESOURCE_EXHAUSTED)
        when that address already has ``limit`` open."""
        count = self._open.get(address, 0)
        if count >= self.limit:
            raise Refused(
                "RESOURCE_EXHAUSTED",
                429,
                "too_many_streams",
                f"{address} already has {count} streams open, the limit (max_streams_per_address)",
            )
        self._open[address] = count + 1

    def release(self, address: str) -> None:
        """One stream from ``address`` ended."""
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def __getitem__(self, address: str) -> int:
        return self._open.get(address, 0)


def certificate_sans(peer_cert: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The URI and DNS subject alternative names of a certificate as Python's
    ``SSLSocket.getpeercert()`` gives it (empty without a certificate)."""
    if not peer_cert:
        return ()
    return tuple(
        str(value) for kind, value in peer_cert.get("subjectAltName", ()) if kind in ("URI", "DNS")
    )


class NodeIdentity(NamedTuple):
    """What a node claims to be, as far as authorization looks at it: its ``node.id``,
    the ``service`` it fronts (``node.cluster``), its ``namespace``, its ``role``
    (``sidecar``, ``gateway`` or ``proxyless``, see ``settings.NODE_ROLES``) and its
    ``labels`` (sorted)."""

    node_id: str
    service: str
    namespace: str = "default"
    role: str = "sidecar"
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def gateway(self) -> bool:
        """True when the node claims to be a gateway."""
        return self.role == "gateway"


class NodeAuthorizer:
    """Decides whether a client may speak for a node — its id, service and namespace,
    and also its role and labels, which decide what it receives (a gateway the server
    keys of the Gateways its labels select) — from its certificate's SANs and the grants
    of ``authorized_nodes`` (``settings.NodeGrant``). With a ``trust_domain`` (mesh
    mutual TLS, client certificates required) a mesh identity
    ``spiffe://TRUST_DOMAIN/ns/NS/sa/SERVICE`` may also speak for the sidecars (and
    proxyless clients) of SERVICE in NS, and nothing else by itself: a gateway needs a
    grant. With neither, every client is allowed (TLS alone decides who connects).
    ``trust_domain`` may change while serving (SIGHUP re-reads ``[mesh]``)."""

    def __init__(self, grants: tuple[NodeGrant, ...], *, trust_domain: str = "") -> None:
        self._grants: dict[str, list[NodeGrant]] = {}
        for grant in grants:
            self._grants.setdefault(grant.san, []).append(grant)
        self.trust_domain = trust_domain

    @property
    def enforcing(self) -> bool:
        """True when nodes are checked (some grant, or mesh identities)."""
        return bool(self._grants) or bool(self.trust_domain)

    def allowed(self, peer_cert: Mapping[str, Any] | None, node: NodeIdentity) -> bool:
        """True when the client whose certificate is ``peer_cert`` may speak for
        ``node`` (always, when not ``enforcing``)."""
        if not self.enforcing:
            return True
        mesh_id = (
            f"spiffe://{self.trust_domain}/ns/{node.namespace}/sa/{node.service}"
            if self.trust_domain and not node.gateway
            else ""
        )
        labels = dict(node.labels)
        for san in certificate_sans(peer_cert):
            if mesh_id and san == mesh_id:
                return True
            for grant in self._grants.get(san, ()):
                if grant.allows(
                    node.node_id, node.service, node.namespace, role=node.role, labels=labels
                ):
                    return True
        return False

    def check(self, peer_cert: Mapping[str, Any] | None, node: NodeIdentity) -> None:
        """Return when the client whose certificate is ``peer_cert`` may speak for
        ``node``; else raise Refused (PERMISSION_DENIED, 403) naming the certificate's
        SANs and what the node claimed."""
        if self.allowed(peer_cert, node):
            return
        names = ", ".join(certificate_sans(peer_cert)) or "none"
        labels = ",".join(f"{k}={v}" for k, v in node.labels)
        raise Refused(
            "PERMISSION_DENIED",
            403,
            "permission_denied",
            f"the client certificate (SANs: {names}) may not speak for {node.role} "
            f"{node.node_id!r} of service {node.service!r} in namespace {node.namespace!r}"
            + (f" with labels {{{labels}}}" if labels else "")
            + " (authorized_nodes"
            + (", mesh identities" if self.trust_domain else "")
            + ")",
        )


def node_identity(node: Any) -> NodeIdentity:
    """What an xDS node (``envoy.config.core.v3.Node``) claims, read the way node classes
    read it (``translate.node.node_class_from_node``): ``gateway`` when
    ``metadata.role`` says so (any case), else ``proxyless`` when ``metadata.client``
    or else ``user_agent_name`` names gRPC, else ``sidecar``; labels as strings. What
    the node class would refuse (a role or label that is not a string) is read as
    nothing here: such a node is served nothing."""
    fields = node.metadata.fields
    role = "sidecar"
    if _text(fields, "role").lower() == "gateway":
        role = "gateway"
    else:
        client = _text(fields, "client").strip().lower() or node.user_agent_name.strip().lower()
        if client.startswith("grpc"):
            role = "proxyless"
    labels: dict[str, str] = {}
    raw = fields.get("labels")
    if raw is not None and raw.WhichOneof("kind") == "struct_value":
        for key, value in raw.struct_value.fields.items():
            kind = value.WhichOneof("kind")
            if kind == "string_value":
                labels[key] = value.string_value
            elif kind == "bool_value":
                labels[key] = "true" if value.bool_value else "false"
            elif kind == "number_value":
                number = value.number_value
                labels[key] = str(int(number)) if float(number).is_integer() else str(number)
    namespace = _text(fields, "namespace") or "default"
    return NodeIdentity(node.id, node.cluster, namespace, role, tuple(sorted(labels.items())))


def _text(fields: Any, key: str) -> str:
    """The string ``node.metadata`` holds at ``key`` (empty when none or not a string)."""
    value = fields.get(key)
    if value is not None and value.WhichOneof("kind") == "string_value":
        return str(value.string_value)
    return ""
