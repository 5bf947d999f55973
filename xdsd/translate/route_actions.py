"""What an HTTP rule does besides choosing clusters, as Envoy route fields.

Pure functions from model objects (``Redirect``, ``DirectResponse``, ``Fault``,
``CorsPolicy``, ``HeaderOperations``, ``Mirror`` percentages) to the Envoy messages a
``Route`` carries. Fault and CORS settings are per-route configurations of the HTTP
filters named ``FAULT_FILTER`` and ``CORS_FILTER``, which every outbound HTTP connection
manager runs before its router (see ``listeners``). Istio's translation
(pilot/pkg/networking/core/route/route.go) was the reference for semantics.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2

from xdsd.model import CorsPolicy, DirectResponse, Fault, Headers, Redirect, StringMatch
from xdsd.model.rules import GRPC_STATUS_NAMES, HeaderOperations, MatchKind
from xdsd.resources import pack
from xdsd.translate.config_sources import duration

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
#: Istio's limit for direct response bodies (Envoy's default is 4 KiB).
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024
_REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}
#: Header names Envoy will not add or remove; ``host``/``:authority`` become a host rewrite.
_AUTHORITY = ("host", ":authority")


def string_matcher(condition: StringMatch) -> Any:
    """An Envoy ``StringMatcher`` for an Istio StringMatch."""
    matcher = string_pb2.StringMatcher()
    if condition.kind is MatchKind.EXACT:
        matcher.exact = condition.value
    elif condition.kind is MatchKind.PREFIX:
        matcher.prefix = condition.value
    else:
        matcher.safe_regex.regex = condition.value
    return matcher


def fractional_percent(percent: float) -> Any:
    """``percent`` (0-100, fractions kept to 1e-4) as a FractionalPercent per million."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def apply_headers(target: Any, headers: Headers | None) -> str:
    """Add Istio's header operations to ``target`` (a ``Route`` or a weighted cluster's
    ``ClusterWeight``, which have the same four fields): ``set`` overwrites, ``add``
    appends, ``remove`` drops, on the request and on the response. Returns the value
    a request ``set`` (else ``add``) gives ``Host``/``:authority`` ("" if none): Envoy
    does not let header operations change those, so the caller turns it into a host
    rewrite, as Istio does. Other ``:``-prefixed names are left out."""
    if headers is None:
        return ""
    authority = ""
    if headers.request is not None:
        authority = _apply_operations(
            headers.request, target.request_headers_to_add, target.request_headers_to_remove
        )
    if headers.response is not None:
        _apply_operations(
            headers.response, target.response_headers_to_add, target.response_headers_to_remove
        )
    return authority


def _apply_operations(ops: HeaderOperations, to_add: Any, to_remove: Any) -> str:
    authority = {"set": "", "add": ""}
    for kind, pairs, action in (
        ("set", ops.set, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("add", ops.add, base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    ):
        for name, value in pairs:
            if name.lower() in _AUTHORITY:
                authority[kind] = value
                continue
            if name.startswith(":"):
                continue
            option = to_add.add(append_action=action)
            option.header.key = name
            option.header.value = value
    to_remove.extend(n for n in ops.remove if not n.startswith(":") and n.lower() not in _AUTHORITY)
    return authority["set"] or authority["add"]


def redirect_action(redirect: Redirect, port: int) -> Any:
    """Istio's HTTPRedirect as an Envoy ``RedirectAction`` for a route served on ``port``.

    ``uri`` replaces the path (query kept), ``authority`` the host, ``scheme`` the
    scheme; ``port`` (or ``derivePort: FROM_REQUEST_PORT``, which is ``port``) sets the
    port, left out when it is the scheme's default (80 for http, 443 for https);
    ``FROM_PROTOCOL_DEFAULT`` leaves it out."""
    action = route_components_pb2.RedirectAction(response_code=_REDIRECT_CODES[redirect.code])
    if redirect.uri:
        action.path_redirect = redirect.uri
    elif redirect.prefix:
        action.prefix_rewrite = redirect.prefix
    if redirect.authority:
        action.host_redirect = redirect.authority
    if redirect.scheme:
        action.scheme_redirect = redirect.scheme
    number = redirect.port
    if redirect.derive_port == "FROM_REQUEST_PORT":
        number = port
    scheme = redirect.scheme or "http"
    if number and (number, scheme) not in ((80, "http"), (443, "https")):
        action.port_redirect = number
    return action


def direct_response_action(response: DirectResponse) -> Any:
    """A ``DirectResponseAction``: the status, and the body inline (as a string when it
    is UTF-8, as bytes otherwise)."""
    action = route_components_pb2.DirectResponseAction(status=response.status)
    if response.body is not None:
        try:
            action.body.inline_string = response.body.decode()
        except UnicodeDecodeError:
            action.body.inline_bytes = response.body
    return action


def fault_config(fault: Fault) -> Any:
    """The fault filter's per-route configuration (packed): a fixed delay and/or an abort
    with an HTTP status or a gRPC status, each on its percentage of requests."""
    config = fault_pb2.HTTPFault()
    if fault.delay is not None:
        config.delay.fixed_delay.CopyFrom(duration(fault.delay.fixed_delay))
        config.delay.percentage.CopyFrom(fractional_percent(fault.delay.percentage))
    if fault.abort is not None:
        if fault.abort.grpc_status:
            config.abort.grpc_status = GRPC_STATUS_NAMES.index(fault.abort.grpc_status)
        else:
            config.abort.http_status = fault.abort.http_status
        config.abort.percentage.CopyFrom(fractional_percent(fault.abort.percentage))
    return pack(config)


def cors_config(cors: CorsPolicy) -> Any:
    """The CORS filter's per-route policy (packed), wrapped in an optional
    ``FilterConfig`` so that proxyless gRPC clients, which share route configurations
    with sidecars and have no CORS filter, ignore it instead of rejecting the routes."""
    policy = cors_pb2.CorsPolicy(
        allow_methods=",".join(cors.allow_methods),
        allow_headers=",".join(cors.allow_headers),
        expose_headers=",".join(cors.expose_headers),
    )
    policy.allow_origin_string_match.extend(string_matcher(o) for o in cors.allow_origins)
    if cors.max_age is not None:
        policy.max_age = str(int(cors.max_age.total_seconds()))
    if cors.allow_credentials is not None:
        policy.allow_credentials.value = cors.allow_credentials
    # Istio's default: preflights that match no origin go on to the upstream.
    policy.forward_not_matching_preflights.value = cors.unmatched_preflights != "IGNORE"
    policy.filter_enabled.default_value.numerator = 100
    wrapper = route_components_pb2.FilterConfig(config=pack(policy), is_optional=True)
    return pack(wrapper)


def mirror_policy(cluster: str, percentage: float) -> Any:
    """A request mirror policy copying ``percentage`` % of requests to ``cluster``."""
    policy = route_components_pb2.RouteAction.RequestMirrorPolicy(cluster=cluster)
    policy.runtime_fraction.default_value.CopyFrom(fractional_percent(percentage))
    policy.trace_sampled.value = False
    return policy
