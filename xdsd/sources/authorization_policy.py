"""Istio's AuthorizationPolicy (``security.istio.io``) → ``model.security.AuthorizationPolicy``.

Fail closed: a field or value xdsd does not enforce is an error at its own line, never a
warning, so a directory that loads is enforced as written. What is checked here beyond
the shape of each field: IP addresses and CIDR ranges, port numbers, ``when`` keys (the
ones Istio documents, and only those), the values a key takes, wildcards (``*`` only as a
whole value, a prefix or a suffix), path templates (``{*}``/``{**}`` segments as Envoy's
``uri_template`` takes them), service accounts (``NAME`` or ``NAMESPACE/NAME``, not with
principals in one source), ``provider`` only on CUSTOM (which needs one), and the
``istio.io/dry-run`` annotation (``true`` or ``false``).

Semantics kept from Istio: a policy without ``rules`` (or with ``rules: []``) matches no
request, so an ALLOW one denies everything (``spec: {}``); ``rules: [{}]`` matches every
request. Each rule records which of its fields only HTTP requests have
(``AuthorizationRule.http_only``), for what translation does on a TCP port.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

from xdsd.errors import Problem
from xdsd.located import Fields, format_path
from xdsd.model import Origin
from xdsd.model.security import (
    AuthorizationAction,
    AuthorizationPolicy,
    AuthorizationRule,
    Condition,
    Operation,
    Source,
    WorkloadSelector,
)

#: Istio's dry-run annotation.
DRY_RUN_ANNOTATION = "istio.io/dry-run"
#: Fields Istio has that attach a policy to Kubernetes objects: refused by name.
KUBERNETES_ONLY = {
    "targetRef": "attaches the policy to a Kubernetes Gateway or Service, which xdsd's "
    "files do not have; select workloads with selector.matchLabels",
    "targetRefs": "attach the policy to Kubernetes Gateways or Services, which xdsd's "
    "files do not have; select workloads with selector.matchLabels",
}
#: ``from.source`` and ``to.operation`` fields only HTTP requests have.
HTTP_ONLY_SOURCE = ("requestPrincipals", "notRequestPrincipals")
HTTP_ONLY_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
#: ``when`` keys without brackets, and the kind of value each takes.
PLAIN_KEYS: dict[str, str] = {
    "source.ip": "ip",
    "remote.ip": "ip",
    "source.namespace": "string",
    "source.principal": "string",
    "request.auth.principal": "string",
    "request.auth.audiences": "string",
    "request.auth.presenter": "string",
    "destination.ip": "ip",
    "destination.port": "port",
    "connection.sni": "string",
}
_NAME_IN_BRACKETS = r"\[([^\[\]]+)\]"
HEADER_KEY = re.compile(rf"request\.headers{_NAME_IN_BRACKETS}")
CLAIMS_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
ENVOY_FILTER_KEY = re.compile(rf"experimental\.(envoy\.filters\.[A-Za-z0-9_.]+){_NAME_IN_BRACKETS}")
#: An HTTP header name (RFC 9110 token; pseudo-headers with their colon).
_HEADER_NAME = re.compile(r":?[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A literal path-template segment: what Envoy's ``uri_template`` takes (pchar).
_TEMPLATE_LITERAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;=:@]|%[0-9A-Fa-f]{2})*")
_SERVICE_ACCOUNT_PART = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def parse_authorization_policy(
    spec: Fields, name: str, namespace: str, origin: Origin, *, annotations: Mapping[str, object]
) -> AuthorizationPolicy:
    """An AuthorizationPolicy from its ``spec`` (``annotations``: the document's metadata
    annotations). Every problem is recorded on ``spec`` (or, for the dry-run annotation,
    at the annotation's line in the same report)."""
    lines: list[tuple[str, int]] = []
    for key, why in KUBERNETES_ONLY.items():
        spec.read.add(key)
        if key in spec.data:
            spec.error(key, why)
    selector = None
    sel = spec.obj("selector")
    if sel is not None:
        selector = WorkloadSelector(sel.labels("matchLabels"))
        sel.finish()
    action = spec.enum("action", AuthorizationAction, AuthorizationAction.ALLOW)
    if spec.has("action"):
        lines.append(("action", _line(spec, "action")))
    provider = ""
    prov = spec.obj("provider")
    if prov is not None:
        provider = prov.string("name", required=True)
        lines.append(("provider.name", _line(prov, "name")))
        prov.finish()
        if action is not AuthorizationAction.CUSTOM:
            spec.error("provider", f"is only for action CUSTOM (this policy's is {action.value})")
    elif action is AuthorizationAction.CUSTOM:
        spec.error("action", "CUSTOM needs provider.name (an extension provider of the settings)")
    rules: tuple[AuthorizationRule, ...] | None = None
    if "rules" in spec.data and spec.data["rules"] is not None:
        parsed = []
        for rule in spec.objects("rules"):
            lines.append((format_path(rule.path), _line(rule)))
            parsed.append(_parse_rule(rule))
        rules = tuple(parsed)
    else:
        spec.read.add("rules")
    spec.finish()
    dry_run = _dry_run(spec, annotations)
    if dry_run and action is AuthorizationAction.CUSTOM:
        spec.error(
            "action",
            f"CUSTOM cannot be a dry run ({DRY_RUN_ANNOTATION}): the provider would still "
            "be asked, and its answer enforced",
        )
    return AuthorizationPolicy(
        name,
        namespace,
        selector=selector,
        action=action,
        provider=provider,
        rules=rules,
        dry_run=dry_run,
        origin=origin,
        lines=tuple(lines),
    )


def _line(f: Fields, *path: str | int) -> int:
    """The line of ``path`` under ``f`` (of ``f`` itself without one)."""
    return f.report.doc.line_of((*f.report.base, *f.path, *path))


def _dry_run(spec: Fields, annotations: Mapping[str, object]) -> bool:
    value = annotations.get(DRY_RUN_ANNOTATION)
    if value is None:
        return False
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    where = ("metadata", "annotations", DRY_RUN_ANNOTATION)
    doc = spec.report.doc
    spec.report.problems.append(
        Problem(
            doc.path,
            doc.line_of(where),
            f"metadata.annotations.{DRY_RUN_ANNOTATION}",
            f'must be "true" or "false" (got {value!r})',
        )
    )
    return False


def _parse_rule(rule: Fields) -> AuthorizationRule:
    http_only: list[tuple[str, int]] = []
    sources = []
    for item in _entries(rule, "from"):
        source_f = item.obj("source")
        item.finish()
        if source_f is None:
            item.error(None, "needs a source")
            continue
        sources.append(_parse_source(source_f, http_only))
    operations = []
    for item in _entries(rule, "to"):
        operation_f = item.obj("operation")
        item.finish()
        if operation_f is None:
            item.error(None, "needs an operation")
            continue
        operations.append(_parse_operation(operation_f, http_only))
    conditions = []
    for when in _entries(rule, "when"):
        condition = _parse_condition(when)
        if condition is not None:
            conditions.append(condition)
            if condition.key.startswith("request."):
                http_only.append((format_path(when.path), _line(when, "key")))
    rule.finish()
    return AuthorizationRule(
        tuple(sources), tuple(operations), tuple(conditions), http_only=tuple(http_only)
    )


def _entries(rule: Fields, key: str) -> list[Fields]:
    """The mappings of list ``key``; an empty list is an error (Istio's too)."""
    value = rule.data.get(key)
    if isinstance(value, list) and not value:
        rule.read.add(key)
        rule.error(key, "must not be empty (leave it out to match every request)")
        return []
    return list(rule.objects(key))


def _parse_source(f: Fields, http_only: list[tuple[str, int]]) -> Source:
    def values(key: str, check: Callable[[Fields, str, int, str], str | None]) -> tuple[str, ...]:
        return _values(f, key, check)

    source = Source(
        principals=values("principals", _wildcard),
        not_principals=values("notPrincipals", _wildcard),
        request_principals=values("requestPrincipals", _wildcard),
        not_request_principals=values("notRequestPrincipals", _wildcard),
        namespaces=values("namespaces", _wildcard),
        not_namespaces=values("notNamespaces", _wildcard),
        service_accounts=values("serviceAccounts", _service_account),
        not_service_accounts=values("notServiceAccounts", _service_account),
        ip_blocks=values("ipBlocks", _cidr),
        not_ip_blocks=values("notIpBlocks", _cidr),
        remote_ip_blocks=values("remoteIpBlocks", _cidr),
        not_remote_ip_blocks=values("notRemoteIpBlocks", _cidr),
        trust_domains=values("trustDomains", _wildcard),
        not_trust_domains=values("notTrustDomains", _wildcard),
    )
    f.finish()
    if not any(f.data.get(key) for key in f.read):
        f.error(None, "must not be empty (leave the source out to match every caller)")
    if (source.service_accounts or source.not_service_accounts) and (
        source.principals or source.not_principals
    ):
        key = "serviceAccounts" if source.service_accounts else "notServiceAccounts"
        f.error(key, "cannot be set with principals or notPrincipals in one source")
    _note_http_only(f, HTTP_ONLY_SOURCE, http_only)
    return source


def _parse_operation(f: Fields, http_only: list[tuple[str, int]]) -> Operation:
    operation = Operation(
        hosts=_values(f, "hosts", _wildcard),
        not_hosts=_values(f, "notHosts", _wildcard),
        ports=_values(f, "ports", _port),
        not_ports=_values(f, "notPorts", _port),
        methods=_values(f, "methods", _wildcard),
        not_methods=_values(f, "notMethods", _wildcard),
        paths=_values(f, "paths", _path),
        not_paths=_values(f, "notPaths", _path),
    )
    f.finish()
    if not any(f.data.get(key) for key in f.read):
        f.error(None, "must not be empty (leave the operation out to match every request)")
    _note_http_only(f, HTTP_ONLY_OPERATION, http_only)
    return operation


def _note_http_only(f: Fields, keys: tuple[str, ...], http_only: list[tuple[str, int]]) -> None:
    for key in keys:
        if f.data.get(key):
            http_only.append((format_path((*f.path, key)), _line(f, key)))


def _parse_condition(f: Fields) -> Condition | None:
    key = f.string("key", required=True)
    check = _key_check(f, key) if key else None
    if check is None:
        f.read.update(("values", "notValues"))
        f.finish()
        return None
    values = _values(f, "values", check)
    not_values = _values(f, "notValues", check)
    f.finish()
    if not f.data.get("values") and not f.data.get("notValues"):
        f.error(None, "needs values or notValues")
    return Condition(key, values, not_values)


def _key_check(f: Fields, key: str) -> Callable[[Fields, str, int, str], str | None] | None:
    """How the values of ``when`` key ``key`` are checked (None: the key is refused)."""
    kind = PLAIN_KEYS.get(key)
    if kind == "ip":
        return _cidr
    if kind == "port":
        return _port
    if kind == "string":
        return _wildcard
    header = HEADER_KEY.fullmatch(key)
    if header is not None:
        if not _HEADER_NAME.fullmatch(header.group(1)):
            f.error("key", f"{header.group(1)!r} is not an HTTP header name")
            return None
        return _wildcard
    if CLAIMS_KEY.fullmatch(key) is not None:
        return _wildcard
    if key.startswith("experimental."):
        if ENVOY_FILTER_KEY.fullmatch(key) is None:
            f.error("key", "must be experimental.envoy.filters.NAME[KEY] (Envoy filter metadata)")
            return None
        return _metadata_value
    known = sorted(
        (
            *PLAIN_KEYS,
            "request.headers[NAME]",
            "request.auth.claims[NAME]",
            "experimental.envoy.filters.NAME[KEY]",
        )
    )
    f.error("key", f"{key!r} is not a key Istio documents; one of: {', '.join(known)}")
    return None


def _values(
    f: Fields, key: str, check: Callable[[Fields, str, int, str], str | None]
) -> tuple[str, ...]:
    """The strings of list ``key``, each checked (and normalized) by ``check``, which
    records its own error and returns None for a value it refuses."""
    out: list[str] = []
    for i, item in f.items(key):
        if isinstance(item, int) and not isinstance(item, bool) and check is _port:
            item = str(item)
        if not isinstance(item, str) or not item:
            f.report.add((*f.path, key, i), f"must be a non-empty string (got {item!r:.60})")
            continue
        value = check(f, key, i, item)
        if value is not None:
            out.append(value)
    return tuple(out)


def _bad(f: Fields, key: str, i: int, message: str) -> None:
    f.report.add((*f.path, key, i), message)


def _wildcard(f: Fields, key: str, i: int, value: str) -> str | None:
    """A string matched exactly, or with ``*`` alone (present), at its start (suffix
    match) or at its end (prefix match)."""
    stars = value.count("*")
    if value == "*" or stars == 0 or (stars == 1 and (value[0] == "*" or value[-1] == "*")):
        return value
    _bad(f, key, i, f"{value!r}: '*' is a wildcard only as the whole value or at one end")
    return None


def _metadata_value(f: Fields, key: str, i: int, value: str) -> str | None:
    """An ``experimental.envoy.filters`` value: a string, or ``[v]`` for a list holding it."""
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not inner or _wildcard(f, key, i, inner) is None:
        if not inner:
            _bad(f, key, i, "[] holds no value")
        return None
    return value


def _cidr(f: Fields, key: str, i: int, value: str) -> str | None:
    """An IP address or CIDR range, normalized to ``network/length``."""
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        _bad(f, key, i, f"{value!r} is not an IP address or a CIDR range")
        return None
    return str(network)


def _port(f: Fields, key: str, i: int, value: str) -> str | None:
    """A port number 0-65535 (a string of digits, as Istio has it)."""
    if not value.isascii() or not value.isdigit() or int(value) > 65535:
        _bad(f, key, i, f"{value!r} is not a port number (0-65535)")
        return None
    return str(int(value))


def _service_account(f: Fields, key: str, i: int, value: str) -> str | None:
    """``NAME`` (in the policy's namespace) or ``NAMESPACE/NAME``; no wildcards."""
    parts = value.split("/")
    if len(parts) > 2 or not all(_SERVICE_ACCOUNT_PART.fullmatch(p) for p in parts):
        _bad(f, key, i, f"{value!r} must be NAME or NAMESPACE/NAME (no wildcards)")
        return None
    return value


def _path(f: Fields, key: str, i: int, value: str) -> str | None:
    """A path matched as ``_wildcard`` does, or a template with ``{*}`` (one segment) and
    ``{**}`` (any number of segments, once, as the last operator) as whole segments."""
    if "{" not in value and "}" not in value:
        return _wildcard(f, key, i, value)
    problem = _template_problem(value)
    if problem:
        _bad(f, key, i, f"{value!r}: {problem}")
        return None
    return value


def _template_problem(value: str) -> str:
    """What is wrong with path template ``value`` ('' when nothing is)."""
    if not value.startswith("/"):
        return "a path template must start with '/'"
    segments = value[1:].split("/")
    operators = [s for s in segments if s in ("{*}", "{**}")]
    for segment in segments:
        if segment in ("{*}", "{**}"):
            continue
        if not _TEMPLATE_LITERAL.fullmatch(segment):
            return "{*} and {**} must be whole path segments, and other segments plain text"
    if operators.count("{**}") > 1:
        return "{**} may appear only once"
    if "{**}" in operators and operators[-1] != "{**}":
        return "{**} must be the last operator"
    return ""
