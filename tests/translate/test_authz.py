"""AuthorizationPolicy → RBAC and ext_authz filters: order, names, dry run, TCP ports,
and the metadata key request principals are read from (evaluated with the evaluator
of ``test_authz_goldens``)."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict

from tests.translate.test_authz_goldens import Request, evaluate
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
from xdsd.model.service import Protocol
from xdsd.translate import authz
from xdsd.translate.workload_security import WorkloadPolicies

HTTP = Port(80, Protocol.HTTP)
TCP = Port(81, Protocol.TCP)
ALL = AuthorizationRule()
GET = AuthorizationRule(operations=(Operation(methods=("GET",)),))
CALLER = "spiffe://cluster.local/ns/a/sa/caller"


def _policy(
    name: str, action: AuthorizationAction, *rules: AuthorizationRule, **kw: object
) -> AuthorizationPolicy:
    return AuthorizationPolicy(name, "foo", action=action, rules=rules, **kw)  # type: ignore[arg-type]


def _wp(*policies: AuthorizationPolicy, **kw: object) -> WorkloadPolicies:
    return WorkloadPolicies(authorization=policies, **kw)  # type: ignore[arg-type]


def test_no_policy_no_filter() -> None:
    assert authz.http_filters(WorkloadPolicies(), HTTP) == []
    assert authz.network_filters(WorkloadPolicies(), TCP) == []


def test_order_audit_custom_deny_allow_and_names() -> None:
    provider = ExtensionProvider("ext", ExtAuthzKind.GRPC, "ext.foo.svc.cluster.local", 9000)
    policies = _wp(
        _policy("allow", AuthorizationAction.ALLOW, ALL),
        _policy("deny", AuthorizationAction.DENY, GET),
        _policy("audit", AuthorizationAction.AUDIT, ALL),
        _policy("custom", AuthorizationAction.CUSTOM, GET, provider="ext"),
        providers=(provider,),
    )
    filters = authz.filter_dicts(policies, False)
    assert [n for n, _ in filters] == [
        authz.HTTP_RBAC,
        authz.HTTP_RBAC,
        authz.HTTP_EXT_AUTHZ,
        authz.HTTP_RBAC,
        authz.HTTP_RBAC,
    ]
    assert [
        (c.get("rules") or c.get("shadowRules") or {}).get("action")
        for n, c in filters
        if n == authz.HTTP_RBAC
    ] == [
        "LOG",
        "DENY",
        "DENY",
        "ALLOW",
    ]
    assert list(filters[1][1]["shadowRules"]["policies"]) == [
        "istio-ext-authz-ext-ns[foo]-policy[custom]-rule[0]"
    ]
    assert (
        filters[2][1]["grpcService"]["envoyGrpc"]["clusterName"]
        == "outbound|9000||ext.foo.svc.cluster.local"
    )
    assert list(filters[3][1]["rules"]["policies"]) == ["ns[foo]-policy[deny]-rule[0]"]
    # GET goes to ext_authz; anything else skips it and is allowed.
    assert evaluate(filters, Request(headers={":method": "GET"}))[0] == "ext_authz"
    assert evaluate(filters, Request(headers={":method": "POST"}))[0] == "allow"
    # The typed configs are the messages the listener packs.
    assert len(authz.http_filters(policies, HTTP)) == 5


def test_allow_without_rules_denies_and_deny_without_rules_denies_nothing() -> None:
    nothing = _wp(AuthorizationPolicy("none", "foo"))
    assert evaluate(authz.filter_dicts(nothing, False), Request(principal=CALLER))[0] == "deny"
    deny = _wp(AuthorizationPolicy("d", "foo", action=AuthorizationAction.DENY))
    assert evaluate(authz.filter_dicts(deny, False), Request())[0] == "allow"


def test_dry_run_is_shadow_only() -> None:
    policies = _wp(_policy("dry", AuthorizationAction.DENY, ALL, dry_run=True))
    ((name, config),) = authz.filter_dicts(policies, False)
    assert "rules" not in config
    assert config["shadowRulesStatPrefix"] == authz.DRY_RUN_DENY_PREFIX
    verdict, matched = evaluate([(name, config)], Request())
    assert verdict == "allow"
    assert matched == {"shadow DENY ns[foo]-policy[dry]-rule[0]"}


def test_tcp_drops_allow_rules_needing_http_and_http_parts_of_deny_rules() -> None:
    allow = _wp(_policy("a", AuthorizationAction.ALLOW, GET))
    ((_, config),) = authz.filter_dicts(allow, True)
    assert config["rules"]["policies"] == {}
    assert config["statPrefix"] == authz.TCP_STAT_PREFIX
    assert evaluate([(authz.NETWORK_RBAC, config)], Request(headers=None))[0] == "deny"
    deny = _wp(_policy("d", AuthorizationAction.DENY, GET))
    assert evaluate(authz.filter_dicts(deny, True), Request(headers=None))[0] == "deny"
    assert (
        evaluate(authz.filter_dicts(deny, False), Request(headers={":method": "PUT"}))[0] == "allow"
    )


def test_request_principal_reads_jwt_authn_payload() -> None:
    rule = AuthorizationRule(
        sources=(Source(request_principals=("https://issuer.example/sub-1",)),)
    )
    filters = authz.filter_dicts(_wp(_policy("jwt", AuthorizationAction.ALLOW, rule)), False)
    payload = {"iss": "https://issuer.example", "sub": "sub-1"}
    good = Request(metadata={authz.JWT_FILTER: {authz.JWT_PAYLOAD_KEY: payload}})
    assert evaluate(filters, good)[0] == "allow"
    other = Request(metadata={authz.JWT_FILTER: {authz.JWT_PAYLOAD_KEY: {**payload, "sub": "x"}}})
    assert evaluate(filters, other)[0] == "deny"
    assert evaluate(filters, Request())[0] == "deny"


def test_namespaces_service_accounts_and_aliases() -> None:
    rule = AuthorizationRule(sources=(Source(namespaces=("a",)),))
    filters = authz.filter_dicts(_wp(_policy("ns", AuthorizationAction.ALLOW, rule)), False)
    assert evaluate(filters, Request(principal=CALLER))[0] == "allow"
    assert (
        evaluate(filters, Request(principal="spiffe://cluster.local/ns/ab/sa/caller"))[0] == "deny"
    )
    assert evaluate(filters, Request(principal=None))[0] == "deny"
    sa = AuthorizationRule(sources=(Source(service_accounts=("caller",)),))
    filters = authz.filter_dicts(_wp(AuthorizationPolicy("sa", "a", rules=(sa,))), False)
    assert evaluate(filters, Request(principal=CALLER))[0] == "allow"
    assert evaluate(filters, Request(principal=CALLER + "2"))[0] == "deny"
    old = AuthorizationRule(sources=(Source(principals=("old/ns/a/sa/caller",)),))
    aliased = _wp(
        _policy("p", AuthorizationAction.ALLOW, old),
        trust_domain="cluster.local",
        trust_domain_aliases=("old",),
    )
    assert evaluate(authz.filter_dicts(aliased, False), Request(principal=CALLER))[0] == "allow"


def test_conditions_headers_ports_and_escaping() -> None:
    rule = AuthorizationRule(
        conditions=(
            Condition("request.headers[x-token]", ("a.b*",)),
            Condition("destination.port", not_values=("9000",)),
        )
    )
    filters = authz.filter_dicts(_wp(_policy("c", AuthorizationAction.ALLOW, rule)), False)
    assert evaluate(filters, Request(headers={"x-token": "a.bc"}))[0] == "allow"
    assert evaluate(filters, Request(headers={"x-token": "aXbc"}))[0] == "deny"
    assert (
        evaluate(filters, Request(headers={"x-token": "a.bc"}, destination_port=9000))[0] == "deny"
    )
    ns = AuthorizationRule(sources=(Source(namespaces=("a.b",)),))
    filters = authz.filter_dicts(_wp(_policy("e", AuthorizationAction.ALLOW, ns)), False)
    assert evaluate(filters, Request(principal="spiffe://td/ns/aXb/sa/s"))[0] == "deny"


def test_custom_without_usable_provider_denies() -> None:
    custom = _policy("c", AuthorizationAction.CUSTOM, GET, provider="missing")
    filters = authz.filter_dicts(_wp(custom), False)
    assert [n for n, _ in filters] == [authz.HTTP_RBAC]
    assert evaluate(filters, Request(headers={":method": "GET"}))[0] == "deny"
    assert evaluate(filters, Request(headers={":method": "POST"}))[0] == "allow"


def _verdict(policies: WorkloadPolicies, port: Port, destination_port: int) -> str:
    """The verdict of ``policies``' filters on the listener of ``port`` for a request
    Envoy sees on ``destination_port`` (the port the listener binds)."""
    filters = [(name, MessageToDict(typed)) for name, typed in authz.http_filters(policies, port)]
    return evaluate(filters, Request(destination_port=destination_port))[0]


def test_ports_name_the_workload_port_not_the_service_port() -> None:
    # Service port 80 (the listener's), targetPort 8080 (the workload's): policies name
    # 8080, Envoy sees 80.
    port = Port(80, Protocol.HTTP, "http", 8080)
    on = AuthorizationRule(operations=(Operation(ports=("8080",)),))
    service = AuthorizationRule(operations=(Operation(ports=("80",)),))
    other = AuthorizationRule(operations=(Operation(not_ports=("8080",)),))
    when = AuthorizationRule(conditions=(Condition("destination.port", ("8080",)),))
    deny = AuthorizationAction.DENY
    allow = AuthorizationAction.ALLOW
    assert _verdict(_wp(_policy("d", deny, on)), port, 80) == "deny"
    assert _verdict(_wp(_policy("d", deny, when)), port, 80) == "deny"
    # the service port names no port of the workload: a DENY denies nothing there...
    assert _verdict(_wp(_policy("d", deny, service)), port, 80) == "allow"
    # ... and an ALLOW allows nothing there
    assert _verdict(_wp(_policy("a", allow, service)), port, 80) == "deny"
    assert _verdict(_wp(_policy("a", allow, on)), port, 80) == "allow"
    # notPorts [targetPort]: not this workload port, so an ALLOW of it allows nothing
    assert _verdict(_wp(_policy("a", allow, other)), port, 80) == "deny"
    assert _verdict(_wp(_policy("d", deny, other)), port, 80) == "allow"


def test_ports_of_a_sidecar_ingress_port_are_its_number() -> None:
    # A Sidecar ingress port 9080 forwarding to 127.0.0.1:8080: the workload port is 9080.
    port = Port(9080, Protocol.TCP, "tcp", 8080, policy_port=9080)
    assert port.workload_port == 9080
    deny_ingress = _policy(
        "d", AuthorizationAction.DENY, AuthorizationRule(operations=(Operation(ports=("9080",)),))
    )
    deny_endpoint = _policy(
        "d", AuthorizationAction.DENY, AuthorizationRule(operations=(Operation(ports=("8080",)),))
    )
    filters = [(n, MessageToDict(t)) for n, t in authz.network_filters(_wp(deny_ingress), port)]
    assert evaluate(filters, Request(destination_port=9080, headers=None))[0] == "deny"
    filters = [(n, MessageToDict(t)) for n, t in authz.network_filters(_wp(deny_endpoint), port)]
    assert evaluate(filters, Request(destination_port=9080, headers=None))[0] == "allow"


def test_ports_as_written_where_the_workload_port_is_the_listeners() -> None:
    # no targetPort (and gateways): the filters are those of the goldens, shared
    rule = AuthorizationRule(operations=(Operation(ports=("80",)),))
    policies = _wp(_policy("d", AuthorizationAction.DENY, rule))
    plain = [(n, MessageToDict(t)) for n, t in authz.http_filters(policies, HTTP)]
    assert plain == authz.filter_dicts(policies, False)
    # a targetPort without any port in the policies: shared with the plain port's
    targeted = authz.http_filters(
        _wp(_policy("x", AuthorizationAction.DENY, GET)), Port(81, Protocol.HTTP, "", 8081)
    )
    assert targeted == authz.http_filters(_wp(_policy("x", AuthorizationAction.DENY, GET)), HTTP)
