"""AuthorizationPolicy → Envoy's RBAC filters (HTTP and network) and, for CUSTOM, the
``ext_authz`` filters of the extension providers.

Filters run in Istio's order: AUDIT (an RBAC filter with action LOG: it marks requests for
the access log, never denies), CUSTOM (an RBAC filter whose *shadow* rules mark the
requests the CUSTOM policies match, then the provider's ``ext_authz`` filter, enabled by
that mark only), then DENY, then ALLOW. No ALLOW policy means no ALLOW filter (allow);
ALLOW policies that match nothing mean an ALLOW filter without a matching policy (deny).
A dry-run policy (``istio.io/dry-run``) goes to its filter's shadow rules, counted under
Envoy's ``istio_dry_run_allow_``/``istio_dry_run_deny_`` shadow stats, and never
enforces. Each rule is an RBAC policy named as Istio names it,
``ns[NS]-policy[NAME]-rule[N]`` (CUSTOM: ``istio-ext-authz-PROVIDER-`` before it), so
Envoy's RBAC stats and its ``shadow_effective_policy_id`` carry the names.

What each field becomes (docs/rules.md has the table): principals and
``source.principal`` match the peer certificate's URI SAN (``spiffe://`` + the value,
expanded over the trust domain and its aliases); namespaces, ``source.namespace`` and
service accounts a regex on ``/ns/NS/``; trust domains the SAN's prefix; request
principals, ``request.auth.*`` claims the JWT payload ``jwt_authn`` leaves in dynamic
metadata — filter ``envoy.filters.http.jwt_authn``, key ``JWT_PAYLOAD_KEY`` (``payload``),
whatever the issuer, so ``jwt_authn`` must be configured with ``payload_in_metadata:
payload`` (a request principal ``ISS/SUB`` is the payload's ``iss`` and ``sub``); ipBlocks
and ``source.ip`` the direct peer address; remoteIpBlocks and ``remote.ip`` the
client address Envoy trusts (XFF); hosts ``:authority`` (any case); ports and
``destination.port`` the destination port (see below); methods ``:method``; paths the path without
query (``{*}``/``{**}`` templates through Envoy's ``uri_template``); headers the header;
``destination.ip``, ``connection.sni`` and ``experimental.envoy.filters.*`` what Envoy
names so. Values: ``*`` is presence, ``*x`` a suffix, ``x*`` a prefix, else exact.

Ports name the *workload's* port, as in Istio (``Port.workload_port``: a Service port's
``targetPort``, a Sidecar ingress listener's own number), while Envoy sees the port its
listener binds (a sidecar's inbound listener binds the Service port's ``number``). So on
a listener of port ``number`` whose workload port differs, a policy port equal to that
workload port becomes ``destinationPort: number`` and any other policy port a rule that
never matches (no port of this listener has it): an ALLOW naming only other ports allows
nothing here, a DENY naming only other ports denies nothing here, ``notPorts`` of another
port holds. Where the two are equal (and on gateways, whose listeners bind the port the
policy names) ports are written as given.

On a TCP port (network filters) the fields only HTTP has are Istio's way: an ALLOW rule
that needs one never matches (it is left out); DENY, AUDIT and CUSTOM rules match without
them (those fields are left out of the rule). A CUSTOM policy whose provider cannot be
asked (several providers for one workload, a provider the settings lack, an HTTP
provider on a TCP port) denies the requests it matches instead (fail closed).

Pure: builds protobuf messages from frozen inputs, memoized by them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as net_ext_authz_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from google.protobuf import json_format

from xdsd.model import Port
from xdsd.model.mesh_config import ExtAuthzKind, ExtensionProvider
from xdsd.model.security import (
    AuthorizationAction,
    AuthorizationPolicy,
    AuthorizationRule,
    Condition,
    Operation,
    Source,
)
from xdsd.translate.workload_security import NamedFilter, WorkloadPolicies

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
#: Where ``jwt_authn`` leaves a verified token's payload: the filter's dynamic metadata
#: under this key (``JwtAuthentication``'s ``payload_in_metadata``), for every issuer.
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "payload"
#: Istio's shadow stat prefixes: dry-run policies and the CUSTOM marker.
DRY_RUN_ALLOW_PREFIX = "istio_dry_run_allow_"
DRY_RUN_DENY_PREFIX = "istio_dry_run_deny_"
EXT_AUTHZ_PREFIX = "istio_ext_authz_"
#: The network RBAC filter's stat prefix (Istio's).
TCP_STAT_PREFIX = "tcp."
#: What the CUSTOM RBAC filter's shadow rules leave in dynamic metadata (its shadow
#: stat prefix + Envoy's key), which enables the ext_authz filter.
EXT_AUTHZ_MARK = EXT_AUTHZ_PREFIX + "shadow_effective_policy_id"
#: An ext_authz server's timeout when the provider sets none (Istio's default).
DEFAULT_TIMEOUT = 600.0
_URI_TEMPLATE_TYPE = (
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
)
#: The typed config above, imported so that its type is known when parsing JSON.
_REGISTERED = (uri_template_match_pb2.UriTemplateMatchConfig,)

_ANY: dict[str, Any] = {"any": True}
#: A permission nothing matches.
_NEVER: dict[str, Any] = {"notRule": _ANY}
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")
JsonDict = dict[str, Any]


#: A policy port as Envoy sees it on one listener: (workload port, listener port).
PortMap = tuple[tuple[int, int], ...]


def http_filters(policies: WorkloadPolicies, port: Port) -> list[NamedFilter]:
    """The HTTP filters enforcing ``policies``' AuthorizationPolicies on the listener of
    HTTP ``port`` (bound on ``port.number``; policies name ``port.workload_port``), in
    the order they run (before the router; after ``jwt_authn``)."""
    if not policies.authorization:
        return []
    return list(_filters(policies, False, _port_map(policies, port)))


def network_filters(policies: WorkloadPolicies, port: Port) -> list[NamedFilter]:
    """The network filters enforcing ``policies``' AuthorizationPolicies on the listener
    of TCP/TLS ``port`` (as for ``http_filters``), in the order they run (before the TCP
    proxy)."""
    if not policies.authorization:
        return []
    return list(_filters(policies, True, _port_map(policies, port)))


def _port_map(policies: WorkloadPolicies, port: Port) -> PortMap | None:
    """How policy ports translate on the listener of ``port``: None (as written) when
    the workload port is the listener's or no policy names a port, so that listeners
    share their filters whenever ports make no difference."""
    if port.workload_port == port.number or not any(
        _names_ports(p) for p in policies.authorization
    ):
        return None
    return ((port.workload_port, port.number),)


def _names_ports(policy: AuthorizationPolicy) -> bool:
    return any(
        any(op.ports or op.not_ports for op in rule.operations)
        or any(c.key == "destination.port" for c in rule.conditions)
        for rule in policy.rules or ()
    )


@functools.lru_cache(maxsize=4096)
def _filters(
    policies: WorkloadPolicies, tcp: bool, ports: PortMap | None
) -> tuple[NamedFilter, ...]:
    """The filters, as JSON then messages (memoized: shared by every port and class with
    the same policies and port map)."""
    out: list[NamedFilter] = []
    for name, config in filter_dicts(policies, tcp, ports):
        out.append((name, json_format.ParseDict(config, _message(name))))
    return tuple(out)


def _message(name: str) -> Any:
    return {
        HTTP_RBAC: http_rbac_pb2.RBAC,
        NETWORK_RBAC: net_rbac_pb2.RBAC,
        HTTP_EXT_AUTHZ: http_ext_authz_pb2.ExtAuthz,
        NETWORK_EXT_AUTHZ: net_ext_authz_pb2.ExtAuthz,
    }[name]()


def filter_dicts(
    policies: WorkloadPolicies, tcp: bool, ports: PortMap | None = None
) -> list[tuple[str, JsonDict]]:
    """The filters as (name, proto3 JSON of the typed config), in order: what
    ``http_filters``/``network_filters`` return before conversion (tests compare these
    with Istio's goldens). ``ports``: the listener's (workload port, bound port) pairs,
    policy ports matching only those (see the module docstring); None: as written."""
    ctx = _Context(policies.trust_domain, policies.trust_domain_aliases, tcp, ports)
    rbac = NETWORK_RBAC if tcp else HTTP_RBAC
    by_action: dict[AuthorizationAction, list[AuthorizationPolicy]] = {
        a: [] for a in AuthorizationAction
    }
    for policy in policies.authorization:
        by_action[policy.action].append(policy)
    out: list[tuple[str, JsonDict]] = []
    audit = _rbac_filter(ctx, by_action[AuthorizationAction.AUDIT], "LOG", DRY_RUN_ALLOW_PREFIX)
    if audit is not None:
        out.append((rbac, audit))
    out.extend(_custom_filters(ctx, by_action[AuthorizationAction.CUSTOM], policies.providers))
    deny = _rbac_filter(ctx, by_action[AuthorizationAction.DENY], "DENY", DRY_RUN_DENY_PREFIX)
    if deny is not None:
        out.append((rbac, deny))
    allow = _rbac_filter(ctx, by_action[AuthorizationAction.ALLOW], "ALLOW", DRY_RUN_ALLOW_PREFIX)
    if allow is not None:
        out.append((rbac, allow))
    return out


class _Context:
    """What translating one workload's rules needs besides the rules."""

    def __init__(
        self, trust_domain: str, aliases: Sequence[str], tcp: bool, ports: PortMap | None
    ) -> None:
        self.trust_domains = (trust_domain, *(a for a in aliases if a != trust_domain))
        self.aliased = len(self.trust_domains) > 1
        self.tcp = tcp
        self.ports = ports

    def destination_port(self, value: str) -> list[JsonDict]:
        """The permissions matching workload port ``value`` (see the module docstring)."""
        number = int(value)
        if self.ports is None:
            return [{"destinationPort": number}]
        bound = [{"destinationPort": n} for w, n in self.ports if w == number]
        return bound or [_NEVER]


def _rbac_filter(
    ctx: _Context, policies: list[AuthorizationPolicy], action: str, shadow_prefix: str
) -> JsonDict | None:
    """One RBAC filter for the policies of one action (None when there are none):
    enforced ones in ``rules``, dry-run ones in ``shadow_rules``."""
    if not policies:
        return None
    config: JsonDict = {"shadowRulesStatPrefix": shadow_prefix}
    if ctx.tcp:
        config["statPrefix"] = TCP_STAT_PREFIX
    for dry_run, field in ((False, "rules"), (True, "shadowRules")):
        chosen = [p for p in policies if p.dry_run is dry_run]
        if not chosen:
            continue
        named: JsonDict = {}
        for policy in chosen:
            named.update(_policies_of(ctx, policy, action, ""))
        config[field] = {"action": action, "policies": named}
    return config


def _base_name(policy: AuthorizationPolicy) -> str:
    return f"ns[{policy.namespace}]-policy[{policy.name}]"


def _policies_of(
    ctx: _Context, policy: AuthorizationPolicy, action: str, prefix: str, suffix: str = ""
) -> JsonDict:
    """The RBAC policies of ``policy``'s rules, by name."""
    base = prefix + _base_name(policy)
    if not policy.rules:
        if action == "ALLOW":
            # Istio: an ALLOW policy without rules matches nothing (and so denies all).
            return {
                f"{base}-rule[0]{suffix}": {
                    "permissions": [{"notRule": _ANY}],
                    "principals": [{"notId": _ANY}],
                }
            }
        return {}
    out: JsonDict = {}
    for i, rule in enumerate(policy.rules):
        built = _rule(ctx, rule, policy.namespace, drop_http=action == "ALLOW")
        if built is not None:
            out[f"{base}-rule[{i}]{suffix}"] = built
    return out


# -- CUSTOM ----------------------------------------------------------------------------


def _custom_filters(
    ctx: _Context, policies: list[AuthorizationPolicy], providers: Sequence[ExtensionProvider]
) -> list[tuple[str, JsonDict]]:
    enforced = [p for p in policies if not p.dry_run]
    if not enforced:
        return []
    names = sorted({p.provider for p in enforced})
    provider = next((p for p in providers if p.name == names[0]), None)
    usable = (
        len(names) == 1
        and provider is not None
        and not (ctx.tcp and provider.kind is not ExtAuthzKind.GRPC)
    )
    rbac = NETWORK_RBAC if ctx.tcp else HTTP_RBAC
    if not usable or provider is None:
        named: JsonDict = {}
        for policy in enforced:
            named.update(
                _policies_of(
                    ctx,
                    policy,
                    "DENY",
                    f"istio-ext-authz-{policy.provider}-",
                    "-deny-due-to-bad-CUSTOM-action",
                )
            )
        config: JsonDict = {"rules": {"action": "DENY", "policies": named}}
        if ctx.tcp:
            config["statPrefix"] = TCP_STAT_PREFIX
        return [(rbac, config)]
    marker = f"istio-ext-authz-{provider.name}"
    named = {}
    for policy in enforced:
        named.update(_policies_of(ctx, policy, "DENY", marker + "-"))
    config = {
        "shadowRules": {"action": "DENY", "policies": named},
        "shadowRulesStatPrefix": EXT_AUTHZ_PREFIX,
    }
    if ctx.tcp:
        config["statPrefix"] = TCP_STAT_PREFIX
    return [(rbac, config), ext_authz_filter(provider, ctx.tcp)]


def provider_cluster(provider: ExtensionProvider) -> str:
    """The cluster an ext_authz filter of ``provider`` sends checks to (the agreed name:
    ``outbound|PORT||HOST``)."""
    return f"outbound|{provider.port}||{provider.service}"


def ext_authz_filter(provider: ExtensionProvider, tcp: bool) -> tuple[str, JsonDict]:
    """The ext_authz filter asking ``provider`` (network filter on TCP ports: gRPC
    providers only), enabled by the CUSTOM RBAC filter's mark."""
    rbac = NETWORK_RBAC if tcp else HTTP_RBAC
    config: JsonDict = {
        "transportApiVersion": "V3",
        "filterEnabledMetadata": {
            "filter": rbac,
            "path": [{"key": EXT_AUTHZ_MARK}],
            "value": {"stringMatch": {"prefix": f"istio-ext-authz-{provider.name}"}},
        },
    }
    if provider.fail_open:
        config["failureModeAllow"] = True
    cluster = provider_cluster(provider)
    if provider.kind is ExtAuthzKind.GRPC:
        grpc: JsonDict = {"envoyGrpc": {"clusterName": cluster, "authority": provider.service}}
        grpc["timeout"] = _duration(provider.timeout_seconds or DEFAULT_TIMEOUT)
        config["grpcService"] = grpc
    if tcp:
        config["statPrefix"] = TCP_STAT_PREFIX
        return NETWORK_EXT_AUTHZ, config
    config["statusOnError"] = {"code": provider.status_on_error or 403}
    if provider.kind is ExtAuthzKind.HTTP:
        service: JsonDict = {
            "serverUri": {
                "uri": f"http://{provider.service}",
                "cluster": cluster,
                "timeout": _duration(provider.timeout_seconds or DEFAULT_TIMEOUT),
            }
        }
        if provider.path_prefix:
            service["pathPrefix"] = provider.path_prefix
        if provider.include_additional_headers_in_check:
            service["authorizationRequest"] = {
                "headersToAdd": [
                    {"key": k, "value": v} for k, v in provider.include_additional_headers_in_check
                ]
            }
        response: JsonDict = {}
        for key, names in (
            ("allowedUpstreamHeaders", provider.headers_to_upstream_on_allow),
            ("allowedClientHeaders", provider.headers_to_downstream_on_deny),
            ("allowedClientHeadersOnSuccess", provider.headers_to_downstream_on_allow),
        ):
            if names:
                response[key] = {"patterns": [_string(n, ignore_case=True) for n in names]}
        if response:
            service["authorizationResponse"] = response
        config["httpService"] = service
        if provider.include_request_headers_in_check:
            config["allowedHeaders"] = {
                "patterns": [
                    _string(n, ignore_case=True) for n in provider.include_request_headers_in_check
                ]
            }
    if provider.max_request_bytes:
        body: JsonDict = {"maxRequestBytes": provider.max_request_bytes}
        if provider.allow_partial_message:
            body["allowPartialMessage"] = True
        if provider.pack_as_bytes:
            body["packAsBytes"] = True
        config["withRequestBody"] = body
    return HTTP_EXT_AUTHZ, config


def _duration(seconds: float) -> str:
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


# -- rules -----------------------------------------------------------------------------


def _is_http_key(key: str) -> bool:
    return key.startswith("request.")


def _rule(
    ctx: _Context, rule: AuthorizationRule, namespace: str, *, drop_http: bool
) -> JsonDict | None:
    """One rule as an RBAC policy (None: on TCP, an ALLOW rule that needs HTTP)."""
    if ctx.tcp and drop_http and _needs_http(rule):
        return None
    principal_conditions: list[JsonDict] = []
    permission_conditions: list[JsonDict] = []
    for condition in rule.conditions:
        if ctx.tcp and _is_http_key(condition.key):
            continue
        if condition.key in (
            "destination.ip",
            "destination.port",
            "connection.sni",
        ) or condition.key.startswith("experimental."):
            permission_conditions.extend(_permission_condition(ctx, condition))
        else:
            principal_conditions.extend(_principal_condition(ctx, condition, namespace))
    permissions = [
        {"andRules": {"rules": _operation(ctx, op) + permission_conditions or [_ANY]}}
        for op in rule.operations
    ] or [{"andRules": {"rules": permission_conditions or [_ANY]}}]
    principals = [
        {"andIds": {"ids": _source(ctx, src, namespace) + principal_conditions or [_ANY]}}
        for src in rule.sources
    ] or [{"andIds": {"ids": principal_conditions or [_ANY]}}]
    return {"permissions": permissions, "principals": principals}


def _needs_http(rule: AuthorizationRule) -> bool:
    """True when ``rule`` names a field only HTTP requests have."""
    if any(_is_http_key(c.key) for c in rule.conditions):
        return True
    if any(s.request_principals or s.not_request_principals for s in rule.sources):
        return True
    return any(
        o.hosts or o.not_hosts or o.methods or o.not_methods or o.paths or o.not_paths
        for o in rule.operations
    )


def _pair(
    ids: list[JsonDict],
    values: Sequence[str],
    not_values: Sequence[str],
    make: Any,
    *,
    principal: bool,
) -> None:
    """Append the OR of ``make(values)`` and the NOT of the OR of ``make(not_values)``."""
    either, negate = ("orIds", "notId") if principal else ("orRules", "notRule")
    key = "ids" if principal else "rules"
    if values:
        ids.append({either: {key: [m for v in values for m in make(v)]}})
    if not_values:
        ids.append({negate: {either: {key: [m for v in not_values for m in make(v)]}}})


def _source(ctx: _Context, src: Source, namespace: str) -> list[JsonDict]:
    ids: list[JsonDict] = []
    _pair(ids, src.principals, src.not_principals, lambda v: _principal(ctx, v), principal=True)
    if not ctx.tcp:
        _pair(
            ids,
            src.request_principals,
            src.not_request_principals,
            _request_principal,
            principal=True,
        )
    _pair(ids, src.namespaces, src.not_namespaces, _namespace, principal=True)
    _pair(
        ids,
        src.service_accounts,
        src.not_service_accounts,
        lambda v: _service_account(v, namespace),
        principal=True,
    )
    _pair(ids, src.trust_domains, src.not_trust_domains, _trust_domain, principal=True)
    _pair(
        ids,
        src.remote_ip_blocks,
        src.not_remote_ip_blocks,
        lambda v: [_cidr("remoteIp", v)],
        principal=True,
    )
    _pair(
        ids,
        src.ip_blocks,
        src.not_ip_blocks,
        lambda v: [_cidr("directRemoteIp", v)],
        principal=True,
    )
    return ids


def _operation(ctx: _Context, op: Operation) -> list[JsonDict]:
    rules: list[JsonDict] = []
    if not ctx.tcp:
        _pair(
            rules,
            op.hosts,
            op.not_hosts,
            lambda v: [_header(":authority", v, ignore_case=True)],
            principal=False,
        )
        _pair(rules, op.methods, op.not_methods, lambda v: [_header(":method", v)], principal=False)
        _pair(rules, op.paths, op.not_paths, lambda v: [_path(v)], principal=False)
    _pair(rules, op.ports, op.not_ports, ctx.destination_port, principal=False)
    return rules


def _principal_condition(ctx: _Context, c: Condition, namespace: str) -> list[JsonDict]:
    ids: list[JsonDict] = []
    key = c.key
    if key == "source.ip":
        _pair(ids, c.values, c.not_values, lambda v: [_cidr("directRemoteIp", v)], principal=True)
    elif key == "remote.ip":
        _pair(ids, c.values, c.not_values, lambda v: [_cidr("remoteIp", v)], principal=True)
    elif key == "source.namespace":
        _pair(ids, c.values, c.not_values, _namespace, principal=True)
    elif key == "source.principal":
        _pair(ids, c.values, c.not_values, lambda v: _principal(ctx, v), principal=True)
    elif key == "request.auth.principal":
        _pair(ids, c.values, c.not_values, _request_principal, principal=True)
    elif key.startswith("request.headers["):
        name = key[len("request.headers[") : -1]
        _pair(
            ids,
            c.values,
            c.not_values,
            lambda v: [{"header": _header_matcher(name, v)}],
            principal=True,
        )
    else:
        claims = {
            "request.auth.audiences": ["aud"],
            "request.auth.presenter": ["azp"],
        }.get(key) or _claim_path(key)
        for values, negate in ((c.values, False), (c.not_values, True)):
            if values:
                matcher = {"metadata": _claim_matcher(claims, values)}
                ids.append({"notId": matcher} if negate else matcher)
    return ids


def _permission_condition(ctx: _Context, c: Condition) -> list[JsonDict]:
    rules: list[JsonDict] = []
    key = c.key
    if key == "destination.ip":
        _pair(rules, c.values, c.not_values, lambda v: [_cidr("destinationIp", v)], principal=False)
    elif key == "destination.port":
        _pair(rules, c.values, c.not_values, ctx.destination_port, principal=False)
    elif key == "connection.sni":
        _pair(
            rules,
            c.values,
            c.not_values,
            lambda v: [{"requestedServerName": _string(v)}],
            principal=False,
        )
    else:  # experimental.envoy.filters.NAME[KEY]
        filter_name, _, rest = key[len("experimental.") :].partition("[")
        path = [{"key": rest[:-1]}]
        for values, negate in ((c.values, False), (c.not_values, True)):
            if values:
                matchers = [_metadata_value(v) for v in values]
                value = (
                    matchers[0] if len(matchers) == 1 else {"orMatch": {"valueMatchers": matchers}}
                )
                matcher = {"metadata": {"filter": filter_name, "path": path, "value": value}}
                rules.append({"notRule": matcher} if negate else matcher)
    return rules


def _metadata_value(value: str) -> JsonDict:
    if value.startswith("[") and value.endswith("]"):
        return {"listMatch": {"oneOf": {"stringMatch": _string(value[1:-1])}}}
    return {"stringMatch": _string(value)}


def _claim_path(key: str) -> list[str]:
    """``request.auth.claims[a][b]`` → ``["a", "b"]``."""
    inner = key[len("request.auth.claims[") : -1]
    return inner.split("][")


def _claim_matcher(claims: list[str], values: Sequence[str]) -> JsonDict:
    """A claim of the JWT payload that is one of ``values`` or a list holding one."""
    matchers = [{"stringMatch": _string(v)} for v in values]
    # Envoy's OrMatcher takes two matchers or more.
    strings = matchers[0] if len(matchers) == 1 else {"orMatch": {"valueMatchers": matchers}}
    return {
        "filter": JWT_FILTER,
        "path": [{"key": JWT_PAYLOAD_KEY}, *({"key": c} for c in claims)],
        "value": {"orMatch": {"valueMatchers": [{"listMatch": {"oneOf": strings}}, strings]}},
    }


# -- matchers --------------------------------------------------------------------------


def _re(text: str) -> str:
    """``text`` as an RE2 literal."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def _string(value: str, *, ignore_case: bool = False) -> JsonDict:
    """Istio's string match: ``*`` any non-empty, ``*x`` suffix, ``x*`` prefix, else exact."""
    if value == "*":
        out: JsonDict = {"safeRegex": {"regex": ".+"}}
    elif value.startswith("*"):
        out = {"suffix": value[1:]}
    elif value.endswith("*"):
        out = {"prefix": value[:-1]}
    else:
        out = {"exact": value}
    if ignore_case and "safeRegex" not in out:
        out["ignoreCase"] = True
    return out


def _header_matcher(name: str, value: str, *, ignore_case: bool = False) -> JsonDict:
    if value == "*":
        return {"name": name, "presentMatch": True}
    return {"name": name, "stringMatch": _string(value, ignore_case=ignore_case)}


def _header(name: str, value: str, *, ignore_case: bool = False) -> JsonDict:
    return {"header": _header_matcher(name, value, ignore_case=ignore_case)}


def _path(value: str) -> JsonDict:
    if "{*}" in value or "{**}" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        return {
            "uriTemplate": {
                "name": "uri-template",
                "typedConfig": {"@type": _URI_TEMPLATE_TYPE, "pathTemplate": template},
            }
        }
    return {"urlPath": {"path": _string(value)}}


def _cidr(kind: str, value: str) -> JsonDict:
    address, _, length = value.partition("/")
    return {kind: {"addressPrefix": address, "prefixLen": int(length)}}


def _authenticated(matcher: JsonDict) -> JsonDict:
    return {"authenticated": {"principalName": matcher}}


def _regex(pattern: str) -> JsonDict:
    return _authenticated({"safeRegex": {"regex": pattern}})


def _spiffe(value: str) -> JsonDict:
    """A peer principal ``spiffe://`` + ``value`` (Istio's wildcards)."""
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        return _regex("spiffe://.*" + _re(value[1:]))
    if value.endswith("*"):
        return _authenticated({"prefix": "spiffe://" + value[:-1]})
    return _authenticated({"exact": "spiffe://" + value})


def _principal(ctx: _Context, value: str) -> list[JsonDict]:
    """``value`` and, under trust domain aliases, the same principal in every trust
    domain of the mesh when ``value``'s trust domain is one of them."""
    out = [_spiffe(value)]
    if not ctx.aliased or value == "*" or "/ns/" not in value:
        return out
    domain, _, rest = value.partition("/ns/")
    if not any(_wildcard_match(domain, td) for td in ctx.trust_domains):
        return out
    for td in ctx.trust_domains:
        if not _wildcard_match(domain, td):
            out.append(_spiffe(f"{td}/ns/{rest}"))
    return out


def _wildcard_match(pattern: str, text: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return text.endswith(pattern[1:])
    if pattern.endswith("*"):
        return text.startswith(pattern[:-1])
    return pattern == text


def _namespace(value: str) -> list[JsonDict]:
    pattern = ".*".join(_re(part) for part in value.split("*"))
    return [_regex(f".*/ns/{pattern}/.*")]


def _service_account(value: str, namespace: str) -> list[JsonDict]:
    ns, _, name = value.rpartition("/")
    return [_regex(f"spiffe://.+/ns/{_re(ns or namespace)}/(.+/|)sa/{_re(name)}(/.+)?")]


def _trust_domain(value: str) -> list[JsonDict]:
    if value == "*":
        return [_regex("spiffe://[^/]+/.*")]
    if value.startswith("*"):
        return [_regex(f"spiffe://[^/]*{_re(value[1:])}/.*")]
    if value.endswith("*"):
        return [_regex(f"spiffe://{_re(value[:-1])}[^/]*/.*")]
    return [_authenticated({"prefix": f"spiffe://{value}/"})]


def _claim(claim: str, matcher: JsonDict) -> JsonDict:
    return {
        "metadata": {
            "filter": JWT_FILTER,
            "path": [{"key": JWT_PAYLOAD_KEY}, {"key": claim}],
            "value": {"stringMatch": matcher},
        }
    }


_MATCH_ANY: JsonDict = {"safeRegex": {"regex": ".+"}}


def _request_principal(value: str) -> list[JsonDict]:
    """``ISS/SUB`` (the issuer may hold ``/``: the last one splits) with Istio's
    wildcards, as the payload's ``iss`` and ``sub`` claims."""
    cut = value.rfind("/")
    iss, sub = (value[:cut], value[cut + 1 :]) if cut >= 0 else (value, "")
    if value == "*":
        pair = (_MATCH_ANY, _MATCH_ANY)
    elif value.startswith("*"):
        if cut >= 0:
            pair = (_MATCH_ANY if iss == "*" else {"suffix": iss[1:]}, {"exact": sub})
        else:
            pair = (_MATCH_ANY, {"suffix": value[1:]})
    elif value.endswith("*"):
        if cut >= 0:
            pair = ({"exact": iss}, _MATCH_ANY if sub == "*" else {"prefix": sub[:-1]})
        else:
            pair = ({"prefix": value[:-1]}, _MATCH_ANY)
    else:
        pair = ({"exact": iss}, {"exact": sub})
    return [{"andIds": {"ids": [_claim("iss", pair[0]), _claim("sub", pair[1])]}}]


def policy_names(filters: Iterable[tuple[str, JsonDict]]) -> list[str]:
    """Every RBAC policy name in ``filters`` (enforced and shadow), for status output."""
    names: list[str] = []
    for name, config in filters:
        if name in (HTTP_RBAC, NETWORK_RBAC):
            for field in ("rules", "shadowRules"):
                names.extend(config.get(field, {}).get("policies", {}))
    return names
