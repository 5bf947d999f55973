"""Documents → model objects: dispatch on (apiVersion, kind) to the parser of the kind.

How this works: a document is either flat (``kind``, ``name``, spec fields at top level)
or Istio-shaped (``apiVersion``, ``kind``, ``metadata``, ``spec``); both mean the same.
``parse_document`` first tries ``parse_plain_document``, which takes a plainly well-formed
Service, VirtualService or DestinationRule without ``Fields`` for its top level (the
plain readers of ``plain_readers``); at the first doubt it reads the document the careful
way: top level and metadata through ``Fields``, then the parser ``_parser_for`` picks.
Kinds xdsd does not read are warnings (a mixed Istio directory loads) unless the load
refuses them (``ParseLimits.refuse_unknown_kinds``, the setting of the same name), unknown
kinds of its own API groups and of ``security.istio.io`` always errors.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from xdsd.errors import Problem
from xdsd.located import Document, FieldPath, Fields, Report
from xdsd.model import DEFAULT_NAMESPACE, MeshObject, Origin
from xdsd.sources.authorization_policy import parse_authorization_policy
from xdsd.sources.destination_rule import parse_destination_rule
from xdsd.sources.envoy_filter import parse_envoy_filter
from xdsd.sources.gateway import parse_gateway, parse_sidecar
from xdsd.sources.gateway_api.gateways import parse_kube_gateway
from xdsd.sources.gateway_api.kinds import GROUP as GATEWAY_API_GROUP
from xdsd.sources.gateway_api.kinds import PARSERS as GATEWAY_API_PARSERS
from xdsd.sources.gateway_api.kinds import gateway_api_parser
from xdsd.sources.gateway_api.namespaces import (
    NAMESPACE_API_VERSION,
    NAMESPACE_KIND,
    parse_namespace,
)
from xdsd.sources.gateway_api.policies import TLS_SECRET_TYPE, parse_secret
from xdsd.sources.peer_authentication import parse_peer_authentication
from xdsd.sources.plain_readers import parse_plain_destination_rule, parse_plain_service
from xdsd.sources.reference_lines import with_reference_lines
from xdsd.sources.request_authentication import parse_request_authentication
from xdsd.sources.service import parse_service
from xdsd.sources.service_entry import parse_service_entry, parse_workload_entry
from xdsd.sources.virtual_service import parse_virtual_service
from xdsd.sources.workload_group import parse_workload_group

#: A kind's parser: (spec, name, namespace, origin) → the model object.
Parser = Callable[[Fields, str, str, Origin], MeshObject]

XDSD_API = "xdsd.io/v1"
ISTIO_NETWORKING = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
#: networking.istio.io kinds that later xdsd versions implement; ignored with a warning.
LATER_KINDS = frozenset({"ProxyConfig"})
#: Istio kinds parsed into the mesh besides VirtualService and DestinationRule.
OTHER_PARSERS: dict[str, Parser] = {
    "ServiceEntry": parse_service_entry,
    "WorkloadEntry": parse_workload_entry,
    "WorkloadGroup": parse_workload_group,
    "Gateway": parse_gateway,
    "Sidecar": parse_sidecar,
    "EnvoyFilter": parse_envoy_filter,
}
ISTIO_SECURITY = "security.istio.io"
SECURITY_VERSIONS = ("v1", "v1beta1")
#: security.istio.io kinds: each parser also takes the document's annotations (Istio's
#: ``istio.io/dry-run``). Any other kind of the group is an error: security fails closed.
SECURITY_PARSERS: dict[str, Callable[..., MeshObject]] = {
    "AuthorizationPolicy": parse_authorization_policy,
    "PeerAuthentication": parse_peer_authentication,
    "RequestAuthentication": parse_request_authentication,
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_METADATA_KEYS = ("name", "namespace", "labels", "annotations")
_K8S_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
    "deletionTimestamp",
    "generateName",
)


def parse_document(
    doc: Document, problems: list[Problem], root: str, *, refuse_unknown: bool = False
) -> MeshObject | None:
    """One document → a model object (None when it has an error or is not for xdsd),
    its problems appended to ``problems``; paths the document names (certificate files)
    are relative to the config directory ``root``. A kind xdsd does not implement is a
    warning, an error when ``refuse_unknown``. Never raises for what the document
    holds."""
    value = doc.value
    if not isinstance(value, dict):
        problems.append(
            Problem(doc.path, doc.line, "", "a resource must be a mapping with kind and name")
        )
        return None
    base: FieldPath = ("spec",) if "spec" in value or "metadata" in value else ()
    fast = parse_plain_document(doc, value, problems, root)
    if fast is not None:
        return with_reference_lines(fast, doc, base)
    top = Fields(Report(doc, ()), (), value)
    kind = top.string("kind", required=True)
    api_version = top.string("apiVersion")
    istio_shaped = "spec" in value or "metadata" in value
    result: MeshObject | None = None
    if kind == NAMESPACE_KIND and api_version == NAMESPACE_API_VERSION:
        # a Namespace (for its labels): cluster-scoped, its fields in metadata
        meta = top.obj("metadata", required=True)
        spec_fields = top.obj("spec")
        top.read.add("status")  # Kubernetes' output
        if meta is not None:
            meta.read.update(_K8S_METADATA)
            result = parse_namespace(meta, spec_fields, Origin(doc.path, doc.line))
        top.finish()
    elif kind and not top.report.failed:
        parser = _parser_for(top, api_version, kind, refuse_unknown)
        if parser is parse_destination_rule:
            parser = functools.partial(parse_destination_rule, config_dir=root)
        elif parser is parse_gateway:
            parser = functools.partial(parse_gateway, config_dir=root)
        elif kind in SECURITY_PARSERS and parser is SECURITY_PARSERS[kind]:
            parser = functools.partial(SECURITY_PARSERS[kind], annotations=_annotations(value))
        elif parser is parse_kube_gateway:
            parser = functools.partial(parse_kube_gateway, labels=_labels(value), config_dir=root)
        if parser is not None and (
            api_version.startswith(GATEWAY_API_GROUP + "/") or parser is parse_secret
        ):
            top.read.add("status")  # Kubernetes' output: not the operator's input
        if parser is parse_secret and istio_shaped:
            # a Secret has no spec: its fields are at the top level, beside metadata
            name, namespace = _read_metadata(top)
            top.read.update(value)
            top.finish()
            report = Report(doc, ())
            skip = ("apiVersion", "kind", "metadata", "status")
            spec = Fields(report, (), {k: v for k, v in value.items() if k not in skip})
            result = parser(spec, name, namespace, Origin(doc.path, doc.line))
            problems.extend(report.problems)
        elif parser is not None:
            if istio_shaped:
                name, namespace = _read_metadata(top)
                spec_value = value.get("spec")
                top.read.add("spec")
                if spec_value is None:
                    spec_value = {}
                report = Report(doc, ("spec",))
                if not isinstance(spec_value, dict):
                    top.error("spec", "must be a mapping")
                    spec_value = {}
                top.finish()
                spec = Fields(report, (), spec_value)
            else:
                name = top.string("name", required=True)
                namespace = top.string("namespace") or DEFAULT_NAMESPACE
                for key in ("name", "namespace", "kind", "apiVersion", "status"):
                    if key != "status" or "status" in top.read:
                        top.read.add(key)
                report = Report(doc, ())
                spec = Fields(report, (), {k: v for k, v in value.items() if k not in top.read})
            if name and kind == "Service" and not _DNS_LABEL.match(name):
                top.error(
                    "metadata.name" if istio_shaped else "name",
                    f"must be a DNS label (lower-case letters, digits, '-'): got {name!r}",
                )
            result = parser(spec, name, namespace, Origin(doc.path, doc.line))
            problems.extend(report.problems)
    problems.extend(top.report.problems)
    if top.report.failed or result is None:
        return None
    return with_reference_lines(result, doc, base)


_ISTIO_API_VERSIONS = frozenset(f"{ISTIO_NETWORKING}/{v}" for v in ISTIO_VERSIONS)
_FLAT_KEYS = frozenset({"name", "namespace", "kind", "apiVersion"})
_ISTIO_KEYS = frozenset({"kind", "apiVersion", "metadata", "spec"})
_PLAIN_METADATA = frozenset({*_METADATA_KEYS, *_K8S_METADATA})


def parse_plain_document(
    doc: Document, value: dict[str, Any], problems: list[Problem], root: str
) -> MeshObject | None:
    """``parse_document``'s result for a plainly well-formed document of a Service, a
    VirtualService or a DestinationRule, read without ``Fields`` for its top level and
    metadata (and without them at all for a Service or a plain DestinationRule, see
    ``parse_plain_service`` and ``parse_plain_destination_rule``); None for anything else
    or at the first doubt, and the caller then reads the document the careful way, which
    reports every problem (tested equal, in ``tests/sources/test_fast_parsing.py``)."""
    kind = value.get("kind")
    api_version = value.get("apiVersion")
    if api_version is None:
        api_version = ""
    if type(kind) is not str or type(api_version) is not str:
        return None
    if "spec" in value or "metadata" in value:
        if not _ISTIO_KEYS.issuperset(value):
            return None
        meta = value.get("metadata")
        if type(meta) is not dict or not _PLAIN_METADATA.issuperset(meta):
            return None
        name = meta.get("name")
        namespace = meta.get("namespace")
        labels = meta.get("labels")
        if labels is not None and (
            type(labels) is not dict or any(type(v) is not str for v in labels.values())
        ):
            return None
        annotations = meta.get("annotations")
        if annotations is not None and type(annotations) is not dict:
            return None
        spec = value.get("spec")
        if spec is None:
            spec = {}
        elif type(spec) is not dict:
            return None
        base: FieldPath = ("spec",)
    else:
        name = value.get("name")
        namespace = value.get("namespace")
        spec = {k: v for k, v in value.items() if k not in _FLAT_KEYS}
        base = ()
    if type(name) is not str or not name:
        return None
    if namespace is not None and type(namespace) is not str:
        return None
    namespace = namespace or DEFAULT_NAMESPACE
    origin = Origin(doc.path, doc.line)
    if kind == "Service" and api_version in ("", XDSD_API):
        if not _DNS_LABEL.match(name):
            return None
        return parse_plain_service(spec, name, namespace, origin)
    if kind not in ("VirtualService", "DestinationRule") or (
        api_version and api_version not in _ISTIO_API_VERSIONS
    ):
        return None
    if kind == "DestinationRule":
        rule = parse_plain_destination_rule(spec, name, namespace, origin)
        if rule is not None:
            return rule
    report = Report(doc, base)
    fields = Fields(report, (), spec)
    result: MeshObject
    if kind == "VirtualService":
        result = parse_virtual_service(fields, name, namespace, origin)
    else:
        result = parse_destination_rule(fields, name, namespace, origin, config_dir=root)
    problems.extend(report.problems)
    return result


def _parser_for(top: Fields, api_version: str, kind: str, refuse_unknown: bool) -> Parser | None:
    """The parser of documents of ``kind`` in ``api_version``; None, with an error or a
    warning (an error when ``refuse_unknown``) recorded on ``top``, for a kind xdsd does
    not read."""
    group, _, version = api_version.rpartition("/") if "/" in api_version else ("", "", api_version)
    if kind == "Service" and api_version in ("", XDSD_API):
        return parse_service
    api_parser = gateway_api_parser(group, version, kind)
    if api_parser is parse_secret and top.data.get("type") != TLS_SECRET_TYPE:
        shown = top.data.get("type")
        _not_implemented(
            top,
            "type" if shown is not None else "kind",
            f"a Secret of type {shown if isinstance(shown, str) else 'Opaque'!r:.80} is not "
            "read by xdsd",
            f"(it reads Secrets of type {TLS_SECRET_TYPE}, for Gateway API certificates)",
            refuse_unknown,
        )
        return None
    if api_parser is not None:
        return api_parser
    if group == GATEWAY_API_GROUP and kind in GATEWAY_API_PARSERS:
        versions = ", ".join(GATEWAY_API_PARSERS[kind][0])
        _not_implemented(
            top,
            "apiVersion",
            f"{kind} ({api_version}) is not read by xdsd",
            f"(it reads {kind} of {GATEWAY_API_GROUP} {versions})",
            refuse_unknown,
        )
        return None
    if kind == "Service" and api_version == "v1":
        _not_implemented(
            top,
            "apiVersion",
            "a Kubernetes v1 Service is not an xdsd Service",
            f"(use apiVersion {XDSD_API} and list its ports and endpoints)",
            refuse_unknown,
        )
        return None
    if group == ISTIO_NETWORKING or (
        not api_version and kind in ("VirtualService", "DestinationRule")
    ):
        if api_version and version not in ISTIO_VERSIONS:
            top.error("apiVersion", f"unsupported version of {ISTIO_NETWORKING}: {version!r}")
            return None
        if kind == "VirtualService":
            return parse_virtual_service
        if kind in OTHER_PARSERS:
            return OTHER_PARSERS[kind]
        if kind == "DestinationRule":
            return parse_destination_rule
        if kind in LATER_KINDS:
            _not_implemented(
                top, "kind", f"{kind} is not supported by xdsd yet", "", refuse_unknown
            )
            return None
        top.error("kind", f"unknown {ISTIO_NETWORKING} kind {kind!r}")
        return None
    if api_version in ("", XDSD_API):
        top.error(
            "kind", f"unknown kind {kind!r} (xdsd kinds: Service, VirtualService, DestinationRule)"
        )
        return None
    if group == ISTIO_SECURITY:
        if version not in SECURITY_VERSIONS:
            top.error("apiVersion", f"unsupported version of {ISTIO_SECURITY}: {version!r}")
            return None
        if kind in SECURITY_PARSERS:
            return SECURITY_PARSERS[kind]
        top.error(
            "kind",
            f"unknown {ISTIO_SECURITY} kind {kind!r}: xdsd refuses security configuration it "
            f"cannot enforce (it reads {', '.join(SECURITY_PARSERS)})",
        )
        return None
    _not_implemented(
        top, "kind", f"{kind} ({api_version}) is not supported by xdsd", "", refuse_unknown
    )
    return None


#: What an error for a kind xdsd does not implement adds, under ``refuse_unknown_kinds``.
REFUSED_BY_SETTING = "refused (refuse_unknown_kinds is set)"


def _not_implemented(top: Fields, key: str, what: str, hint: str, refuse: bool) -> None:
    """Record on ``top`` at ``key`` that the document is of a kind xdsd does not
    implement (``what``, then ``hint`` when not empty): a warning (``ignored``), or an
    error when ``refuse``."""
    outcome = REFUSED_BY_SETTING if refuse else "ignored"
    message = f"{what}: {outcome}" + (f" {hint}" if hint else "")
    if refuse:
        top.error(key, message)
    else:
        top.warn(key, message)


def _annotations(value: dict[str, Any]) -> dict[str, object]:
    """The ``metadata.annotations`` of an Istio-shaped document (empty when absent or not
    a mapping: ``_read_metadata`` reports that)."""
    meta = value.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    return dict(annotations) if isinstance(annotations, dict) else {}


def _labels(value: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The string ``metadata.labels`` of an Istio-shaped document, sorted (others are
    errors ``_read_metadata`` reports)."""
    meta = value.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict):
        return ()
    return tuple(sorted((str(k), v) for k, v in labels.items() if isinstance(v, str)))


def _read_metadata(top: Fields) -> tuple[str, str]:
    """The name and namespace of an Istio-shaped document's ``metadata``."""
    meta = top.obj("metadata", required=True)
    if meta is None:
        return "", DEFAULT_NAMESPACE
    name = meta.string("name", required=True)
    namespace = meta.string("namespace") or DEFAULT_NAMESPACE
    meta.labels("labels")
    meta.obj("annotations")
    for key in _K8S_METADATA:
        meta.read.add(key)
    meta.finish()
    return name, namespace
