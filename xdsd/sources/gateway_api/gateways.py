"""GatewayClass and Gateway (``gateway.networking.k8s.io``) specs → model objects.

Every field of the spec is read and checked as the API validates it; the fields xdsd's
conversion does not honour are refused by name (``GATEWAY_REFUSED`` and the others
below, listed in ``docs/rules.md``). Pure: no I/O (certificate references are names
here; the conversion resolves them).
"""

from __future__ import annotations

import re

from xdsd.located import Fields, is_ip
from xdsd.model import Origin
from xdsd.model.gateway_api import (
    CONTROLLER_NAME,
    FILE_REF_GROUP,
    FILE_REF_KIND,
    AllowedRoutes,
    GatewayClass,
    KubeGateway,
    LabelRequirement,
    Listener,
    ListenerTLS,
    ObjectRef,
)
from xdsd.sources.destination_rule import certificate_file
from xdsd.sources.gateway_api.common import (
    KIND,
    MAX_ADDRESSES,
    MAX_CERTIFICATE_REFS,
    MAX_EXPRESSIONS,
    MAX_LABELS,
    MAX_LISTENERS,
    bounded_list,
    group_field,
    hostname,
    item_lines,
    kind_field,
    label_key_problem,
    label_map,
    label_value_problem,
    name_field,
    namespace_field,
    secret_object_ref,
)

#: GatewayClass fields xdsd refuses in a class of its own (``CONTROLLER_NAME``):
#: nothing it reads is parameterised. Another controller's class keeps them.
CLASS_REFUSED = ("parametersRef",)
#: Gateway fields the conversion does not honour: refused when the Gateway is xdsd's
#: (``KubeGateway.refused``), as another controller's Gateway is not served.
GATEWAY_REFUSED = ("infrastructure", "backendTLS", "allowedListeners", "tls")
#: Listener TLS fields the conversion does not honour.
LISTENER_TLS_REFUSED = ("frontendValidation",)
#: A label selector's ``matchExpressions`` operators, as Kubernetes defines them.
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
LISTENER_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP", "UDP")
ADDRESS_TYPES = ("IPAddress", "Hostname", "NamedAddress")
_CONTROLLER = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/.+$")
_MAX_TLS_OPTIONS = 16
_MAX_OPTION_VALUE = 4096
_MAX_ROUTE_KINDS = 8


def parse_gateway_class(spec: Fields, name: str, namespace: str, origin: Origin) -> GatewayClass:
    """A GatewayClass: ``controllerName`` (a domain-prefixed path, e.g.
    ``xdsd.dev/gateway-controller``), ``description``. Cluster-scoped: the namespace is
    not used."""
    controller = spec.string("controllerName", required=True)
    if controller and (len(controller) > 253 or not _CONTROLLER.match(controller)):
        spec.error(
            "controllerName", f"must be a domain-prefixed path (DOMAIN/PATH): {controller!r:.80}"
        )
    description = spec.string("description")
    if len(description) > 64:
        spec.error("description", "must be at most 64 characters")
    if controller != CONTROLLER_NAME:
        params = spec.obj("parametersRef")
        if params is not None:
            group_field(params, required=True)
            kind_field(params, required=True)
            name_field(params, "name", required=True)
            namespace_field(params)
            params.finish()
    spec.finish(CLASS_REFUSED)
    return GatewayClass(name, controller, origin=origin)


def parse_kube_gateway(
    spec: Fields,
    name: str,
    namespace: str,
    origin: Origin,
    *,
    labels: tuple[tuple[str, str], ...] = (),
    config_dir: str | None = None,
) -> KubeGateway:
    """A Gateway: ``gatewayClassName``, ``listeners`` (1 to 64, names unique, no two with
    the same port, protocol and hostname), ``addresses`` (at most 16); ``labels`` are the
    document's ``metadata.labels``. With ``config_dir``, a certificate given by file path
    becomes absolute (relative to it) and must exist, as Istio Gateway certificate files
    (``sources.destination_rule.certificate_file``); without it, it is kept as written."""
    class_name = name_field(spec, "gatewayClassName", required=True)
    listeners = bounded_list(
        spec,
        "listeners",
        lambda f: _listener(f, config_dir),
        MAX_LISTENERS,
        minimum=1,
        required=True,
    )
    _check_listeners(spec, listeners)
    addresses = bounded_list(spec, "addresses", _address, MAX_ADDRESSES)
    refused = tuple(key for key in GATEWAY_REFUSED if key in spec.data)
    spec.read.update(refused)
    spec.finish()
    doc, base = spec.report.doc, spec.report.base
    lines = tuple((key, doc.line_of((*base, key))) for key in refused) + item_lines(
        spec, (("listeners", MAX_LISTENERS, ()),)
    )
    return KubeGateway(
        name,
        namespace,
        class_name,
        listeners,
        addresses,
        labels,
        refused,
        origin=origin,
        lines=lines,
    )


def _check_listeners(spec: Fields, listeners: tuple[Listener, ...]) -> None:
    raw = spec.data.get("listeners")
    if not isinstance(raw, list) or len(raw) != len(listeners):
        return  # a listener was refused: indexes would not match
    names: dict[str, int] = {}
    triples: dict[tuple[int, str, str], int] = {}
    for i, listener in enumerate(listeners):
        if listener.name in names:
            spec.report.add(
                (*spec.path, "listeners", i, "name"),
                f"listener names must be unique: {listener.name!r} is also "
                f"listeners[{names[listener.name]}]",
            )
        names.setdefault(listener.name, i)
        triple = (listener.port, listener.protocol, listener.hostname)
        if triple in triples:
            spec.report.add(
                (*spec.path, "listeners", i),
                f"same port, protocol and hostname as listeners[{triples[triple]}]",
            )
        triples.setdefault(triple, i)


def _listener(f: Fields, config_dir: str | None) -> Listener | None:
    name = name_field(f, "name", required=True)
    host = ""
    if f.has("hostname"):
        host = hostname(f, "hostname", f.data.get("hostname"))
    f.read.add("hostname")
    port = f.port("port", required=True)
    protocol = f.string("protocol", required=True)
    if protocol and protocol not in LISTENER_PROTOCOLS:
        f.error(
            "protocol",
            f"must be one of {', '.join(LISTENER_PROTOCOLS)} (got {protocol!r:.60}): xdsd "
            "serves no other protocol",
        )
        protocol = ""
    tls_f = f.obj("tls")
    tls = _listener_tls(tls_f, config_dir) if tls_f is not None else None
    allowed_f = f.obj("allowedRoutes")
    allowed = _allowed_routes(allowed_f) if allowed_f is not None else AllowedRoutes()
    f.finish()
    if protocol in ("TCP", "UDP") and host:
        f.error("hostname", f"must not be set for protocol {protocol}")
    if protocol in ("HTTP", "TCP", "UDP") and tls is not None:
        f.error("tls", f"must not be set for protocol {protocol}")
    if protocol in ("HTTPS", "TLS") and tls is None and tls_f is None:
        f.error("tls", f"is required for protocol {protocol}")
    if protocol == "HTTPS" and tls is not None and tls.mode == "Passthrough":
        f.error("tls", "an HTTPS listener terminates TLS: use protocol TLS for Passthrough")
    if not name or not port or not protocol:
        return None
    return Listener(name, port, protocol, host, tls, allowed)


def _listener_tls(f: Fields, config_dir: str | None) -> ListenerTLS | None:
    mode = f.choice("mode", ("Terminate", "Passthrough"), default="Terminate") or "Terminate"
    refs = bounded_list(
        f, "certificateRefs", lambda r: _certificate_ref(r, config_dir), MAX_CERTIFICATE_REFS
    )
    options = f.labels("options")
    if len(options) > _MAX_TLS_OPTIONS:
        f.error("options", f"holds {len(options)} entries: the Gateway API allows at most 16")
    for key, value in options[: _MAX_TLS_OPTIONS + 1]:
        where = (*f.path, "options", key) if len(key) <= 253 else (*f.path, "options")
        if len(key) > 253 or not _CONTROLLER.match(key):
            f.report.add(where, "option names must be domain-prefixed (DOMAIN/NAME)")
        elif len(value) > _MAX_OPTION_VALUE:
            f.report.add(where, f"option values are at most {_MAX_OPTION_VALUE} characters")
    f.finish(LISTENER_TLS_REFUSED)
    if mode == "Terminate" and not refs and not f.has("certificateRefs"):
        f.error("certificateRefs", "is required for mode Terminate: give a certificate")
    if mode == "Passthrough" and f.has("certificateRefs"):
        f.error("certificateRefs", "must not be set for mode Passthrough (nothing is terminated)")
    return ListenerTLS(mode, refs, options)


def _certificate_ref(f: Fields, config_dir: str | None) -> ObjectRef | None:
    """A certificate reference: a Secret (group "", kind ``Secret``), or a file by path
    (``{group: xdsd.dev, kind: File, name: PATH}``: the certificate chain's PEM file,
    its private key's being the listener's ``tls.options`` entry ``xdsd.dev/private-key``;
    made absolute against ``config_dir`` and checked to exist when it is given)."""
    group = f.data.get("group")
    kind = f.data.get("kind")
    if kind == FILE_REF_KIND or group == FILE_REF_GROUP:
        g = f.string("group")
        k = f.string("kind")
        raw = f.data.get("name")
        if isinstance(raw, str) and ("\x00" in raw or len(raw) > 4096):
            f.read.add("name")
            f.error("name", "must be a file path")
            return None
        if config_dir is not None and isinstance(raw, str) and raw:
            path = certificate_file(f, "name", config_dir)
        else:
            path = f.string("name", required=True)
        f.finish()
        if g != FILE_REF_GROUP or k != FILE_REF_KIND:
            f.error(None, f"a file reference is group {FILE_REF_GROUP}, kind {FILE_REF_KIND}")
            return None
        return ObjectRef(path, FILE_REF_KIND, FILE_REF_GROUP) if path else None
    ref = secret_object_ref(f)
    if ref is not None and (ref.group, ref.kind) != ("", "Secret"):
        f.error(
            "kind",
            f'certificates are Secrets (group "", kind Secret) or files (group '
            f"{FILE_REF_GROUP}, kind {FILE_REF_KIND}): got {ref.group}/{ref.kind}",
        )
        return None
    return ref


def _allowed_routes(f: Fields) -> AllowedRoutes:
    namespaces_from = "Same"
    selector: tuple[tuple[str, str], ...] = ()
    expressions: tuple[LabelRequirement, ...] = ()
    ns = f.obj("namespaces")
    if ns is not None:
        namespaces_from = ns.choice("from", ("All", "Same", "Selector"), default="Same") or "Same"
        sel = ns.obj("selector")
        if sel is not None:
            selector = label_map(sel, "matchLabels")
            expressions = bounded_list(sel, "matchExpressions", _label_requirement, MAX_EXPRESSIONS)
            sel.finish()
        ns.finish()
        if namespaces_from == "Selector" and sel is None:
            ns.error("selector", "is required when from is Selector")
        if namespaces_from != "Selector" and sel is not None:
            ns.error("selector", f"applies only when from is Selector (got {namespaces_from})")
    kinds: list[tuple[str, str]] = []
    raw = f.data.get("kinds")
    if isinstance(raw, list) and len(raw) > _MAX_ROUTE_KINDS:
        f.read.add("kinds")
        f.error("kinds", f"holds {len(raw)} items: the Gateway API allows at most 8")
    else:
        for item in f.objects("kinds"):
            group = group_field(item, default="gateway.networking.k8s.io")
            kind = item.string("kind", required=True)
            if kind and not KIND.match(kind):
                item.error("kind", f"must be a kind name: {kind!r:.60}")
            item.finish()
            if kind:
                kinds.append((group, kind))
    f.finish()
    return AllowedRoutes(namespaces_from, selector, tuple(kinds), expressions)


def _label_requirement(f: Fields) -> LabelRequirement | None:
    """One ``matchExpressions`` entry: ``key`` a label name, ``operator`` In, NotIn
    (``values`` 1 to ``MAX_LABELS`` label values), Exists, DoesNotExist (no
    ``values``), as Kubernetes validates a label selector."""
    key = f.string("key", required=True)
    if "operator" not in f.data:
        f.error("operator", "is required")
    operator = f.choice("operator", SELECTOR_OPERATORS)
    raw = f.data.get("values")
    values: tuple[str, ...] = ()
    if isinstance(raw, list) and len(raw) > MAX_LABELS:
        f.read.add("values")
        f.error("values", f"holds {len(raw)} items: xdsd reads at most {MAX_LABELS}")
    else:
        values = f.strings("values")
    f.finish()
    if key:
        problem = label_key_problem(key)
        if problem:
            f.error("key", f"{key!r:.80} is not a label name: {problem}")
            return None
    for index, value in enumerate(values):
        problem = label_value_problem(value)
        if problem:
            f.error("values", f"[{index}] {value!r:.80} {problem}")
            return None
    if operator in ("In", "NotIn") and not values:
        f.error("values", f"must hold at least one value for operator {operator}")
        return None
    if operator in ("Exists", "DoesNotExist") and "values" in f.data:
        f.error("values", f"must be left out for operator {operator}")
        return None
    if not key or not operator:
        return None
    return LabelRequirement(key, operator, values)


def _address(f: Fields) -> str | None:
    kind = f.choice("type", ADDRESS_TYPES, default="IPAddress") or "IPAddress"
    value = f.string("value", required=True)
    f.finish()
    if not value:
        return None
    if kind == "IPAddress" and not is_ip(value):
        f.error("value", f"must be an IP address for type IPAddress (got {value!r:.60})")
        return None
    if kind == "Hostname":
        return hostname(f, "value", value, wildcard=False) or None
    if kind == "NamedAddress":
        f.error("type", "NamedAddress is not supported by xdsd: give an IPAddress or Hostname")
        return None
    return value
