"""Envoy resource types: type URLs, REST paths, and ``Resource``, an encoded message.

A ``Resource`` is built once per snapshot: its deterministic wire encoding and the content
hash of that encoding are computed when it is made and reused by every client it is sent
to. This module knows protobuf; it does no I/O.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NewType

from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import any_pb2, descriptor_pool, json_format, symbol_database
from google.protobuf.message import Message

TypeUrl = NewType("TypeUrl", str)
Version = NewType("Version", str)

TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = TypeUrl(TYPE_PREFIX + "envoy.config.cluster.v3.Cluster")
ENDPOINT = TypeUrl(TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment")
LISTENER = TypeUrl(TYPE_PREFIX + "envoy.config.listener.v3.Listener")
ROUTE = TypeUrl(TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration")
SECRET = TypeUrl(TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret")
#: A virtual host served on its own (VHDS, delta clients only): not in ``PUSH_ORDER``,
#: ``SHORT_NAMES`` or ``MESSAGE_CLASSES`` (no REST path, no raw resource of this type).
VIRTUAL_HOST = TypeUrl(TYPE_PREFIX + "envoy.config.route.v3.VirtualHost")

#: The types a snapshot holds, in make-before-break push order (CDS, EDS, LDS, RDS, SDS).
PUSH_ORDER: tuple[TypeUrl, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

#: Short names used in logs, the CLI and REST paths.
SHORT_NAMES: dict[TypeUrl, str] = {
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    LISTENER: "listeners",
    ROUTE: "routes",
    SECRET: "secrets",
}

#: Types for which an empty subscription is a wildcard and every response is complete.
WILDCARD_TYPES: frozenset[TypeUrl] = frozenset({CLUSTER, LISTENER})

if TYPE_CHECKING:
    #: The message class of each type in ``PUSH_ORDER`` (imported on first use: see
    #: ``__getattr__``).
    MESSAGE_CLASSES: dict[TypeUrl, type[Message]]


def _message_classes() -> dict[TypeUrl, type[Message]]:
    """``MESSAGE_CLASSES``, made (and the cluster, endpoint, listener and secret
    modules imported: ~0.1 s, cluster_pb2 most of it) on first use. Serving sends
    resources' bytes and never needs them; parsing, rendering and JSON views do. A start
    from the restart cache serves before that (``docs/architecture.md``)."""
    found = globals().get("MESSAGE_CLASSES")
    if found is None:
        from envoy.config.cluster.v3 import cluster_pb2
        from envoy.config.endpoint.v3 import endpoint_pb2
        from envoy.config.listener.v3 import listener_pb2
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

        found = {
            CLUSTER: cluster_pb2.Cluster,
            ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            LISTENER: listener_pb2.Listener,
            ROUTE: route_pb2.RouteConfiguration,
            SECRET: secret_pb2.Secret,
        }
        globals()["MESSAGE_CLASSES"] = found
    return found


def __getattr__(name: str) -> Any:
    """``MESSAGE_CLASSES``, made on first use (``_message_classes``)."""
    if name == "MESSAGE_CLASSES":
        return _message_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def message_class(type_url: TypeUrl) -> type[Message]:
    """The message class of a served type (``MESSAGE_CLASSES``, or the virtual host of
    VHDS). Raises KeyError for any other type."""
    if type_url == VIRTUAL_HOST:
        vhost: type[Message] = route_components_pb2.VirtualHost
        return vhost
    return _message_classes()[type_url]


def type_url_of(message: Message) -> TypeUrl:
    """The type URL of a message."""
    return TypeUrl(TYPE_PREFIX + message.DESCRIPTOR.full_name)


_sha256 = hashlib.sha256


def content_hash(data: bytes) -> str:
    """A short, stable hash of encoded content (16 hex digits of SHA-256)."""
    return _sha256(data).hexdigest()[:16]


def token_of(name: str, digest: str) -> int:
    """A resource's ``token``: 64 bits (big-endian) of the SHA-256 of its name, a NUL
    and its digest, UTF-8 encoded."""
    return int.from_bytes(_sha256((name + "\0" + digest).encode()).digest()[:8], "big")


def encode(message: Message) -> bytes:
    """The deterministic wire encoding of a message (maps in key order)."""
    data: bytes = message.SerializeToString(deterministic=True)
    return data


@dataclass(frozen=True, slots=True)
class Resource:
    """A named xDS resource with its encoding and content hash.

    Treat ``message`` as read-only: it is shared by every snapshot that selects this
    resource. ``payload`` is ``encode(message)``; ``digest`` is ``content_hash(payload)``.
    A resource made from its encoding (``Resource.encoded``) parses ``message`` from
    ``payload`` the first time it is asked for (only ``xdsd render`` and static bootstraps
    ask; serving sends ``payload``).
    """

    name: str
    type_url: TypeUrl
    #: The message, or None until ``message`` parses it from ``payload``.
    parsed: Message | None = field(compare=False, repr=False)
    payload: bytes = field(repr=False)
    digest: str
    references: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    #: 64 bits of a hash of (name, digest): a type's version is the sum of its resources'
    #: tokens (see ``xdsd.cache.snapshot``), so adding, removing or replacing one resource
    #: updates a version without visiting the others. Derived (``token_of``) unless given
    #: by ``restored``; never passed otherwise.
    token: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.token < 0:
            object.__setattr__(self, "token", token_of(self.name, self.digest))

    @property
    def message(self) -> Message:
        """The resource's message (parsed from ``payload`` on first use when the resource
        was made from its encoding)."""
        found = self.parsed
        if found is None:
            found = message_class(self.type_url).FromString(self.payload)
            object.__setattr__(self, "parsed", found)
        return found

    @classmethod
    def of(cls, name: str, message: Message) -> Resource:
        """Encode ``message`` once and wrap it, recording what it references."""
        from xdsd.resources.references import references_of

        payload = encode(message)
        digest = content_hash(payload)
        return _made(
            name,
            type_url_of(message),
            message,
            payload,
            digest,
            references_of(message),
            token_of(name, digest),
        )

    @classmethod
    def encoded(
        cls, name: str, type_url: TypeUrl, payload: bytes, references: tuple[tuple[str, str], ...]
    ) -> Resource:
        """A resource from its deterministic encoding, which the caller guarantees:
        ``payload`` must be exactly what ``encode`` gives for the message it holds, and
        ``references`` what ``references_of`` finds in it (the writers of such payloads
        test both against ``Resource.of``)."""
        digest = _sha256(payload).hexdigest()[:16]  # content_hash
        return _made(name, type_url, None, payload, digest, references, token_of(name, digest))

    @classmethod
    def restored(
        cls,
        name: str,
        type_url: TypeUrl,
        payload: bytes,
        digest: str,
        references: tuple[tuple[str, str], ...],
        token: int,
    ) -> Resource:
        """A resource as ``encoded`` made it, from what a trusted record of it kept (the
        restart cache, whose keyed hash covers them): the caller guarantees ``digest`` is
        ``content_hash(payload)`` and ``token`` is ``token_of(name, digest)``; neither is
        recomputed here."""
        return _made(name, type_url, None, payload, digest, references, token)

    @classmethod
    def restored_all(
        cls,
        names: Iterable[str],
        type_urls: Iterable[TypeUrl],
        payloads: Iterable[bytes],
        digests: Iterable[str],
        references: Iterable[tuple[tuple[str, str], ...]],
        tokens: Iterable[int],
    ) -> list[Resource]:
        """``restored`` for many resources at once (the restart cache's tens of
        thousands), under the same guarantees from the caller; the iterables must have
        one item per resource (ValueError otherwise). Fills the slots directly: half the
        cost of the frozen dataclass's ``__init__``, which sets each field through
        ``object.__setattr__`` and runs ``__post_init__`` (nothing to derive here)."""
        made = _made
        return [
            made(name, type_url, None, payload, digest, refs, token)
            for name, type_url, payload, digest, refs, token in zip(
                names, type_urls, payloads, digests, references, tokens, strict=True
            )
        ]

    def to_any(self) -> any_pb2.Any:
        """The resource as a ``google.protobuf.Any`` built from the cached bytes."""
        return any_pb2.Any(type_url=self.type_url, value=self.payload)


def _setters() -> Callable[..., Resource]:
    """A maker of ``Resource`` objects from every field (token included), which sets
    each slot through its descriptor: what the frozen dataclass' ``__init__`` does, in
    a third of the time (60,000 resources make a large mesh's snapshot)."""
    slot = Resource.__dict__
    set_name, set_type, set_parsed, set_payload, set_digest, set_refs, set_token = (
        slot[f].__set__
        for f in ("name", "type_url", "parsed", "payload", "digest", "references", "token")
    )
    new = object.__new__

    def made(
        name: str,
        type_url: TypeUrl,
        parsed: Message | None,
        payload: bytes,
        digest: str,
        references: tuple[tuple[str, str], ...],
        token: int,
    ) -> Resource:
        r: Resource = new(Resource)
        set_name(r, name)
        set_type(r, type_url)
        set_parsed(r, parsed)
        set_payload(r, payload)
        set_digest(r, digest)
        set_refs(r, references)
        set_token(r, token)
        return r

    return made


_made = _setters()


def pack(message: Message) -> any_pb2.Any:
    """Pack a message into an Any (for ``typed_config`` fields)."""
    out = any_pb2.Any()
    out.Pack(message)
    return out


def to_json(message: Message) -> dict[str, Any]:
    """proto3 JSON of a message, ``@type`` inside every Any, fields as Envoy spells them."""
    ensure_any_types_known(message)
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def ensure_type_known(full_name: str) -> bool:
    """Make sure the generated module defining message ``full_name`` is imported, so that
    ``Any`` values of that type can be packed, unpacked and printed. Returns False when no
    installed module defines it."""
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(full_name)
        return True
    except KeyError:
        pass
    parts = full_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:cut])
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if info.name.endswith("_pb2"):
                try:
                    importlib.import_module(f"{package}.{info.name}")
                except ImportError:
                    continue
        break
    try:
        pool.FindMessageTypeByName(full_name)
        return True
    except KeyError:
        return False


def ensure_any_types_known(message: Message) -> None:
    """Import the modules of every Any type nested in ``message``."""
    for desc, value in message.ListFields():
        if desc.message_type is None:
            continue
        values = value if desc.is_repeated else [value]
        if desc.message_type.GetOptions().map_entry:
            values = list(value.values()) if hasattr(value, "values") else []
            if values and not isinstance(values[0], Message):
                continue
        for item in values:
            if isinstance(item, any_pb2.Any):
                full = item.type_url.rsplit("/", 1)[-1]
                if ensure_type_known(full):
                    inner = symbol_database.Default().GetSymbol(full)()
                    item.Unpack(inner)
                    ensure_any_types_known(inner)
            elif isinstance(item, Message):
                ensure_any_types_known(item)


def ensure_json_types_known(value: Any) -> list[str]:
    """Import the modules of every ``@type`` named inside a JSON value. Returns the type
    names that no installed module defines."""
    missing: list[str] = []
    if isinstance(value, dict):
        t = value.get("@type")
        if isinstance(t, str) and not ensure_type_known(t.rsplit("/", 1)[-1]):
            missing.append(t)
        for v in value.values():
            missing.extend(ensure_json_types_known(v))
    elif isinstance(value, list):
        for v in value:
            missing.extend(ensure_json_types_known(v))
    return missing
