"""ReferenceGrant and BackendTLSPolicy specs → model objects, and the Kubernetes
``Secret`` of type ``kubernetes.io/tls`` a Gateway listener's certificates name.

A Secret's bytes never reach a message: problems name its fields, not their values.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii

from xdsd.located import Fields
from xdsd.model import Origin
from xdsd.model.gateway_api import BackendTLSPolicy, ObjectRef, ReferenceGrant, TLSSecret
from xdsd.sources.gateway_api.common import (
    bounded_list,
    group_field,
    hostname,
    kind_field,
    name_field,
    namespace_field,
)

#: BackendTLSPolicy fields the conversion does not honour.
BACKEND_TLS_REFUSED = ("options",)
VALIDATION_REFUSED = ()
_MAX_GRANT_ITEMS = 16
_MAX_TARGETS = 16
_MAX_CA_REFS = 8
_MAX_SANS = 5
#: The Secret type read, and the keys of its data.
TLS_SECRET_TYPE = "kubernetes.io/tls"
_SECRET_KEYS = ("tls.crt", "tls.key", "ca.crt")
#: The most bytes one Secret value may hold (decoded).
MAX_SECRET_BYTES = 1 << 20


def parse_reference_grant(
    spec: Fields, name: str, namespace: str, origin: Origin
) -> ReferenceGrant:
    """A ReferenceGrant: ``from`` (1 to 16 group/kind/namespace) may refer to ``to``
    (1 to 16 group/kind/name, name optional: any) in this namespace."""
    from_ = bounded_list(spec, "from", _grant_from, _MAX_GRANT_ITEMS, minimum=1, required=True)
    to = bounded_list(spec, "to", _grant_to, _MAX_GRANT_ITEMS, minimum=1, required=True)
    spec.finish()
    return ReferenceGrant(name, namespace, from_, to, origin=origin)


def _grant_from(f: Fields) -> tuple[str, str, str] | None:
    if "group" not in f.data:
        f.error("group", 'is required ("" for the core group)')
    group = group_field(f)
    kind = kind_field(f, required=True)
    namespace = namespace_field(f, required=True)
    f.finish()
    return (group, kind, namespace) if kind and namespace else None


def _grant_to(f: Fields) -> tuple[str, str, str] | None:
    if "group" not in f.data:
        f.error("group", 'is required ("" for the core group)')
    group = group_field(f)
    kind = kind_field(f, required=True)
    target = name_field(f, "name")
    f.finish()
    return (group, kind, target) if kind else None


def parse_backend_tls_policy(
    spec: Fields, name: str, namespace: str, origin: Origin
) -> BackendTLSPolicy:
    """A BackendTLSPolicy: ``targetRefs`` (1 to 16 local references, a Service by
    default), ``validation`` (``hostname`` required; ``caCertificateRefs`` (at most 8)
    or ``wellKnownCACertificates: System``, exactly one; ``subjectAltNames`` at most 5)."""
    targets = bounded_list(spec, "targetRefs", _target_ref, _MAX_TARGETS, minimum=1, required=True)
    cas: tuple[ObjectRef, ...] = ()
    well_known = host = ""
    sans: tuple[str, ...] = ()
    v = spec.obj("validation", required=True)
    if v is not None:
        cas = bounded_list(v, "caCertificateRefs", _ca_ref, _MAX_CA_REFS)
        well_known = v.choice("wellKnownCACertificates", ("System",)) or ""
        host = hostname(v, "hostname", v.data.get("hostname")) if v.has("hostname") else ""
        if not v.has("hostname"):
            v.error("hostname", "is required")
        v.read.add("hostname")
        sans = bounded_list(v, "subjectAltNames", _san, _MAX_SANS)
        v.finish(VALIDATION_REFUSED)
        if v.has("caCertificateRefs") == bool(well_known):
            v.error(None, "give exactly one of caCertificateRefs and wellKnownCACertificates")
    spec.finish(BACKEND_TLS_REFUSED)
    return BackendTLSPolicy(name, namespace, targets, cas, well_known, host, sans, origin=origin)


def _target_ref(f: Fields) -> ObjectRef | None:
    group = group_field(f)
    kind = kind_field(f, default="Service")
    target = name_field(f, "name", required=True)
    section = name_field(f, "sectionName")
    f.finish()
    return ObjectRef(target, kind, group, "", section) if target else None


def _ca_ref(f: Fields) -> ObjectRef | None:
    if "group" not in f.data:
        f.error("group", 'is required ("" for the core group)')
    group = group_field(f)
    kind = kind_field(f, required=True)
    target = name_field(f, "name", required=True)
    f.finish()
    return ObjectRef(target, kind, group) if target and kind else None


def _san(f: Fields) -> str | None:
    kind = f.choice("type", ("Hostname", "URI"))
    if kind is None and not f.has("type"):
        f.error("type", "is required")
    host = f.string("hostname")
    uri = f.string("uri")
    f.finish()
    if kind == "Hostname":
        if uri:
            f.error("uri", "does not go with type Hostname")
        return hostname(f, "hostname", host) or None
    if kind == "URI":
        if host:
            f.error("hostname", "does not go with type URI")
        if not uri or ":" not in uri or len(uri) > 253:
            f.error("uri", f"must be a URI of at most 253 characters (got {uri!r:.60})")
            return None
        return uri
    return None


def parse_secret(spec: Fields, name: str, namespace: str, origin: Origin) -> TLSSecret:
    """A Secret of type ``kubernetes.io/tls``: ``data`` (base64) or ``stringData``
    (plain) with ``tls.crt`` and ``tls.key`` (and optionally ``ca.crt``), each a key in
    one of them only. ``immutable`` is read and has no meaning here. ``spec`` holds the
    document's top level (a Secret has no spec)."""
    kind = spec.string("type", required=True)
    if kind and kind != TLS_SECRET_TYPE:
        spec.error(
            "type", f"must be {TLS_SECRET_TYPE}: xdsd reads no other Secret (got {kind!r:.60})"
        )
    spec.boolean("immutable")
    values: dict[str, bytes] = {}
    for section in ("data", "stringData"):
        if section in spec.data and not isinstance(spec.data[section], dict):
            spec.read.add(section)
            spec.error(section, "must be a mapping of keys to values")  # no value: secret
            continue
        f = spec.obj(section)
        if f is None:
            continue
        for key in _SECRET_KEYS:
            raw = f.data.get(key)
            if raw is None:
                continue
            f.read.add(key)
            if not isinstance(raw, str):
                f.error(key, "must be a string")
                continue
            if key in values:
                f.error(key, "is also given in the other of data and stringData")
                continue
            if len(raw) > 2 * MAX_SECRET_BYTES:
                f.error(key, f"is larger than {MAX_SECRET_BYTES} bytes")
                continue
            if section == "data":
                try:
                    decoded = base64.b64decode("".join(raw.split()), validate=True)
                except (binascii.Error, ValueError):
                    f.error(key, "is not base64 (use stringData for PEM text)")
                    continue
            else:
                decoded = raw.encode()
            if b"-----BEGIN " not in decoded:
                f.error(key, "does not hold PEM data")
                continue
            values[key] = decoded
        f.finish()
    spec.finish()
    for key in ("tls.crt", "tls.key"):
        if key not in values and not spec.report.failed:
            spec.error("data", f"must hold {key}")
    return TLSSecret(
        name,
        namespace,
        values.get("tls.crt", b""),
        values.get("tls.key", b""),
        values.get("ca.crt", b""),
        origin=origin,
    )
