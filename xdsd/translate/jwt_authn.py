"""RequestAuthentication → Envoy's ``jwt_authn`` HTTP filter (and the clusters its
``jwksUri``s are fetched through).

Istio's behaviour: an invalid token is a 401; a request without a token passes this
filter and is left to AuthorizationPolicy (``requestPrincipals``, ``request.auth.*``,
read from the filter's metadata).

How this works: every ``jwtRules[]`` entry of every RequestAuthentication that applies to
a workload is one provider of one ``jwt_authn`` filter (named ``NAMESPACE/NAME/INDEX``,
policies in key order). One rule for every path requires any provider's valid token *or
no token at all* (``requires_any`` of the providers and ``allow_missing``): a request
with a token no provider accepts (bad signature, expired, wrong issuer or audience) is
refused with 401, one without a token passes. CORS preflight requests pass as Istio lets
them.

Agreement with the AuthorizationPolicy translation: each provider writes the verified
token's payload into the filter's dynamic metadata (namespace
``envoy.filters.http.jwt_authn``) under the one key ``PAYLOAD_METADATA_KEY``
(``"payload"``), whichever provider verified it; ``requestPrincipals`` (``iss/sub``) and
``request.auth.*`` are read from there. One key serves every issuer because only one
token is verified per request (``requires_any`` stops at the first provider that
accepts), and the payload carries its ``iss``.

Tokens are read where Envoy reads them by default (``Authorization: Bearer`` and the
``access_token`` query parameter), as Istio leaves it, unless ``fromHeaders``,
``fromParams`` or ``fromCookies`` name places. Two rules of one workload for the same
issuer (in different policies) are refused (``TranslationError`` at the second's line):
which of them judges a token would otherwise depend on the order of files. The sources
refuse the same at load for the workloads the files show
(``sources.crosscheck.jwt_issuers``); this check stays for nodes whose labels no file
shows.

A ``jwksUri`` is fetched by Envoy when a token first needs it (and again when its cache,
Envoy's default duration, runs out), through the cluster ``jwks|HOST|PORT`` that
``jwks_clusters`` builds: STATIC for an IP address, LOGICAL_DNS for a name; for
``https``, TLS with the host as SNI, the server's certificate checked against the
proxy's system trust bundle (``SYSTEM_CA_BUNDLE``) and the host as its subject
alternative name — a key set fetched without checking who served it would let anyone on
the path mint tokens.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from xdsd.errors import Problem, TranslationError
from xdsd.located import is_ip
from xdsd.model.security import JwtRule, RequestAuthentication, line_of
from xdsd.resources import Resource
from xdsd.translate.cluster_policy import set_tls_socket
from xdsd.translate.config_sources import duration
from xdsd.translate.memo import Memo
from xdsd.translate.workload_security import NamedFilter, WorkloadPolicies

#: The HTTP filter's name.
JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
#: The dynamic metadata key (in the filter's namespace, ``JWT_AUTHN_FILTER``) a verified
#: token's payload is written under, for the authorization filters.
PAYLOAD_METADATA_KEY = "payload"
#: How long a ``jwksUri`` fetch may take when the rule says nothing (Istio's default).
DEFAULT_JWKS_TIMEOUT = timedelta(seconds=5)
#: The trust bundle ``https`` key set servers are checked against, on the proxy's
#: filesystem (Debian, Ubuntu, Alpine and Istio's proxy image keep it there).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_CONNECT_TIMEOUT = timedelta(seconds=5)

#: Where a ``jwksUri`` is fetched from: (host, port, TLS).
JwksOrigin = tuple[str, int, bool]


def http_filters(policies: WorkloadPolicies) -> list[NamedFilter]:
    """The HTTP filters (``jwt_authn``) validating the tokens ``policies``'
    RequestAuthentications accept; they run first, before the authorization filters.
    Empty when no RequestAuthentication (or none with rules) applies. Raises
    TranslationError when two of them accept the same issuer."""
    providers = _providers(policies.request_authentication)
    if not providers:
        return []
    config = jwt_pb2.JwtAuthentication(bypass_cors_preflight=True)
    requires = jwt_pb2.JwtRequirement()
    choices = requires.requires_any.requirements
    for name, rule in providers:
        config.providers[name].CopyFrom(_provider(rule))
        choices.add(provider_name=name)
    choices.add().allow_missing.SetInParent()
    everything = config.rules.add()
    everything.match.CopyFrom(route_components_pb2.RouteMatch(prefix="/"))
    everything.requires.CopyFrom(requires)
    return [(JWT_AUTHN_FILTER, config)]


def jwks_clusters(policies: WorkloadPolicies, memo: Memo | None = None) -> list[Resource]:
    """The clusters Envoy fetches ``policies``' ``jwksUri``s through (one per host,
    port and scheme, named ``jwks|HOST|PORT``), to be added to the class's snapshot;
    built through ``memo`` (``jwks_cluster`` by its origin) when given."""
    out: list[Resource] = []
    for origin in jwks_origins(policies):
        if memo is not None:
            out.append(memo.resource(jwks_cluster, *origin))
        else:
            out.append(Resource.of(jwks_cluster_name(origin[0], origin[1]), jwks_cluster(*origin)))
    return out


def jwks_origins(policies: WorkloadPolicies) -> tuple[JwksOrigin, ...]:
    """Where ``policies``' ``jwksUri``s are fetched from, each once, in order."""
    found: dict[JwksOrigin, None] = {}
    for policy in policies.request_authentication:
        for rule in policy.jwt_rules:
            if rule.jwks_uri:
                found[jwks_origin(rule.jwks_uri)] = None
    return tuple(found)


def jwks_origin(uri: str) -> JwksOrigin:
    """(host, port, TLS) of a ``jwksUri`` the source accepted (``https``: TLS, default
    port 443; ``http``: 80)."""
    parts = urlsplit(uri)
    tls = parts.scheme == "https"
    return (parts.hostname or "", parts.port or (443 if tls else 80), tls)


def jwks_cluster_name(host: str, port: int) -> str:
    """``jwks|HOST|PORT``: the cluster a key set at ``host:port`` is fetched through."""
    return f"jwks|{host}|{port}"


def jwks_cluster(host: str, port: int, tls: bool) -> Any:
    """The cluster to ``host:port`` (see the module docstring)."""
    name = jwks_cluster_name(host, port)
    address = is_ip(host)
    kind = cluster_pb2.Cluster.STATIC if address else cluster_pb2.Cluster.LOGICAL_DNS
    cluster = cluster_pb2.Cluster(name=name, type=kind)
    cluster.connect_timeout.CopyFrom(duration(_CONNECT_TIMEOUT))
    if not address:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.load_assignment.cluster_name = name
    sock = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address
    sock.socket_address.address = host
    sock.socket_address.port_value = port
    if tls:
        context = tls_pb2.UpstreamTlsContext(sni="" if address else host)
        validation = context.common_tls_context.validation_context
        validation.trusted_ca.filename = SYSTEM_CA_BUNDLE
        san = validation.match_typed_subject_alt_names.add(
            san_type=(
                common_pb2.SubjectAltNameMatcher.IP_ADDRESS
                if address
                else common_pb2.SubjectAltNameMatcher.DNS
            )
        )
        san.matcher.CopyFrom(string_pb2.StringMatcher(exact=host))
        set_tls_socket(cluster.transport_socket, context)
    return cluster


def _providers(
    policies: tuple[RequestAuthentication, ...],
) -> list[tuple[str, JwtRule]]:
    """(provider name, rule) of every rule of ``policies``; TranslationError when two
    rules accept one issuer."""
    out: list[tuple[str, JwtRule]] = []
    seen: dict[str, tuple[RequestAuthentication, int]] = {}
    schemes: dict[tuple[str, int], bool] = {}
    problems: list[Problem] = []
    for policy in policies:
        for index, rule in enumerate(policy.jwt_rules):
            first = seen.setdefault(rule.issuer, (policy, index))
            if first != (policy, index):
                other, other_index = first
                field = f"jwtRules[{index}].issuer"
                problems.append(
                    Problem(
                        policy.origin.path,
                        line_of(policy.lines, field, policy.origin.line),
                        field,
                        f"issuer {rule.issuer!r} is also accepted by RequestAuthentication "
                        f"{other.namespace}/{other.name} (jwtRules[{other_index}], "
                        f"{other.origin.path}), which applies to the same workloads: "
                        "one rule per issuer",
                    )
                )
                continue
            if rule.jwks_uri:
                host, port, tls = jwks_origin(rule.jwks_uri)
                if schemes.setdefault((host, port), tls) != tls:
                    field = f"jwtRules[{index}].jwksUri"
                    problems.append(
                        Problem(
                            policy.origin.path,
                            line_of(policy.lines, field, policy.origin.line),
                            field,
                            f"{host}:{port} is fetched from over both http and https by the "
                            "RequestAuthentications of one workload: use one scheme",
                        )
                    )
            out.append((f"{policy.namespace}/{policy.name}/{index}", rule))
    if problems:
        raise TranslationError(problems)
    return out


def _provider(rule: JwtRule) -> Any:
    """The ``JwtProvider`` of one rule."""
    provider = jwt_pb2.JwtProvider(
        issuer=rule.issuer,
        audiences=rule.audiences,
        forward=rule.forward_original_token,
        payload_in_metadata=PAYLOAD_METADATA_KEY,
        forward_payload_header=rule.output_payload_to_header,
        from_params=rule.from_params,
        from_cookies=rule.from_cookies,
    )
    for header in rule.from_headers:
        provider.from_headers.add(name=header.name, value_prefix=header.prefix)
    for claim in rule.output_claim_to_headers:
        provider.claim_to_headers.add(header_name=claim.header, claim_name=claim.claim)
    if rule.jwks:
        provider.local_jwks.inline_string = rule.jwks
    else:
        host, port, _ = jwks_origin(rule.jwks_uri)
        http_uri = provider.remote_jwks.http_uri
        http_uri.uri = rule.jwks_uri
        http_uri.cluster = jwks_cluster_name(host, port)
        timeout = (
            timedelta(seconds=rule.timeout_seconds)
            if rule.timeout_seconds > 0
            else DEFAULT_JWKS_TIMEOUT
        )
        http_uri.timeout.CopyFrom(duration(timeout))
    return provider
