"""RequestAuthentication → ``jwt_authn``: one provider per rule, any valid token or none,
every field where Envoy takes it, the clusters ``jwksUri``s are fetched through, and the
workload's inbound listeners and snapshot carrying both."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from tests.translate.meshes import hcm_of, http, service, tcp
from xdsd.errors import TranslationError
from xdsd.model import Endpoint, Mesh, Origin
from xdsd.model.security import (
    ClaimToHeader,
    JwtHeader,
    JwtRule,
    RequestAuthentication,
    WorkloadSelector,
)
from xdsd.resources import CLUSTER, LISTENER
from xdsd.resources.references import references_of
from xdsd.translate import MeshTranslation, NodeClass
from xdsd.translate.jwt_authn import (
    JWT_AUTHN_FILTER,
    PAYLOAD_METADATA_KEY,
    SYSTEM_CA_BUNDLE,
    http_filters,
    jwks_cluster,
    jwks_clusters,
)
from xdsd.translate.memo import Memo
from xdsd.translate.workload_security import WorkloadPolicies

JWKS = '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'


def policy(name: str, *rules: JwtRule, namespace: str = "default", **kw: Any) -> Any:
    lines = tuple((f"jwtRules[{i}].issuer", 10 + i) for i in range(len(rules)))
    lines += tuple((f"jwtRules[{i}].jwksUri", 20 + i) for i in range(len(rules)))
    return RequestAuthentication(
        name,
        namespace,
        jwt_rules=rules,
        origin=Origin(f"rules/{name}.yaml", 1),
        lines=lines,
        **kw,
    )


def config_of(policies: WorkloadPolicies) -> Any:
    [(name, config)] = http_filters(policies)
    assert name == JWT_AUTHN_FILTER
    assert isinstance(config, jwt_pb2.JwtAuthentication)
    return config


def test_no_policy_no_filter_no_cluster() -> None:
    empty = WorkloadPolicies()
    assert http_filters(empty) == [] and jwks_clusters(empty) == []
    assert http_filters(WorkloadPolicies(request_authentication=(policy("none"),))) == []


def test_any_valid_token_or_none_at_all() -> None:
    config = config_of(
        WorkloadPolicies(
            request_authentication=(
                policy("a", JwtRule("https://a", jwks=JWKS), JwtRule("https://b", jwks=JWKS)),
                policy("c", JwtRule("https://c", jwks_uri="http://k.test/keys")),
            )
        )
    )
    assert sorted(config.providers) == ["default/a/0", "default/a/1", "default/c/0"]
    assert config.bypass_cors_preflight
    [rule] = config.rules
    assert rule.match.prefix == "/"
    requirements = rule.requires.requires_any.requirements
    assert [r.provider_name for r in requirements[:-1]] == sorted(config.providers)
    assert requirements[-1].HasField("allow_missing")
    for provider in config.providers.values():
        assert provider.payload_in_metadata == PAYLOAD_METADATA_KEY
        assert not provider.forward  # the token is stripped unless forwardOriginalToken


def test_every_field_of_a_rule() -> None:
    rule = JwtRule(
        "https://a",
        audiences=("web", "admin"),
        jwks=JWKS,
        from_headers=(JwtHeader("x-jwt", "Token "), JwtHeader("x-alt")),
        from_params=("tok",),
        from_cookies=("session",),
        output_payload_to_header="x-payload",
        output_claim_to_headers=(ClaimToHeader("x-sub", "sub"),),
        forward_original_token=True,
    )
    config = config_of(WorkloadPolicies(request_authentication=(policy("a", rule),)))
    provider = config.providers["default/a/0"]
    assert provider.issuer == "https://a" and list(provider.audiences) == ["web", "admin"]
    assert provider.local_jwks.inline_string == JWKS
    assert [(h.name, h.value_prefix) for h in provider.from_headers] == [
        ("x-jwt", "Token "),
        ("x-alt", ""),
    ]
    assert list(provider.from_params) == ["tok"] and list(provider.from_cookies) == ["session"]
    assert provider.forward_payload_header == "x-payload"
    assert [(c.header_name, c.claim_name) for c in provider.claim_to_headers] == [("x-sub", "sub")]
    assert provider.forward


@pytest.mark.parametrize(
    ("uri", "timeout", "cluster", "seconds"),
    [
        ("http://127.0.0.1:9000/keys", 0.0, "jwks|127.0.0.1|9000", 5),
        ("https://login.test/keys", 2.5, "jwks|login.test|443", 2.5),
        ("http://login.test/keys", 0.0, "jwks|login.test|80", 5),
    ],
)
def test_jwks_uri_is_fetched_through_its_cluster(
    uri: str, timeout: float, cluster: str, seconds: float
) -> None:
    rule = JwtRule("https://a", jwks_uri=uri, timeout_seconds=timeout)
    policies = WorkloadPolicies(request_authentication=(policy("a", rule),))
    remote = config_of(policies).providers["default/a/0"].remote_jwks
    assert remote.http_uri.uri == uri and remote.http_uri.cluster == cluster
    assert remote.http_uri.timeout.ToTimedelta().total_seconds() == seconds
    [resource] = jwks_clusters(policies)
    assert resource.name == cluster


def test_jwks_clusters_by_address_and_by_name() -> None:
    static = jwks_cluster("127.0.0.1", 9000, False)
    assert static.type == cluster_pb2.Cluster.STATIC and not static.HasField("transport_socket")
    address = static.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.1",
        9000,
    )
    named = jwks_cluster("login.test", 443, True)
    assert named.type == cluster_pb2.Cluster.LOGICAL_DNS
    context = tls_pb2.UpstreamTlsContext()
    assert named.transport_socket.typed_config.Unpack(context)
    assert context.sni == "login.test"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == SYSTEM_CA_BUNDLE
    [san] = validation.match_typed_subject_alt_names
    assert san.san_type == common_pb2.SubjectAltNameMatcher.DNS and san.matcher.exact == (
        "login.test"
    )
    by_ip = tls_pb2.UpstreamTlsContext()
    assert jwks_cluster("10.0.0.9", 443, True).transport_socket.typed_config.Unpack(by_ip)
    assert by_ip.sni == ""
    assert (
        by_ip.common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type
        == common_pb2.SubjectAltNameMatcher.IP_ADDRESS
    )


def test_one_cluster_per_origin_built_through_the_memo() -> None:
    policies = WorkloadPolicies(
        request_authentication=(
            policy("a", JwtRule("https://a", jwks_uri="http://k.test/a")),
            policy("b", JwtRule("https://b", jwks_uri="http://k.test:80/b")),
        )
    )
    memo = Memo(check=True)
    [first] = jwks_clusters(policies, memo)
    [again] = jwks_clusters(policies, memo)
    assert first is again and first.name == "jwks|k.test|80"


def test_two_policies_of_one_workload_for_one_issuer_are_refused() -> None:
    policies = WorkloadPolicies(
        request_authentication=(
            policy("a", JwtRule("https://a", jwks=JWKS)),
            policy("b", JwtRule("https://x", jwks=JWKS), JwtRule("https://a", jwks=JWKS)),
        )
    )
    with pytest.raises(TranslationError) as err:
        http_filters(policies)
    [problem] = err.value.problems
    assert (problem.path, problem.line, problem.field) == (
        "rules/b.yaml",
        11,
        "jwtRules[1].issuer",
    )
    assert "default/a" in problem.message and "one rule per issuer" in problem.message


def test_one_host_and_port_over_two_schemes_is_refused() -> None:
    policies = WorkloadPolicies(
        request_authentication=(
            policy("a", JwtRule("https://a", jwks_uri="http://k.test:8443/keys")),
            policy("b", JwtRule("https://b", jwks_uri="https://k.test:8443/keys")),
        )
    )
    with pytest.raises(TranslationError) as err:
        http_filters(policies)
    [problem] = err.value.problems
    assert (problem.path, problem.line, problem.field) == (
        "rules/b.yaml",
        20,
        "jwtRules[0].jwksUri",
    )


def test_the_workloads_inbound_http_listeners_validate_tokens_and_get_the_clusters() -> None:
    web = service(
        "web",
        http(8080, 9080),
        tcp(9000, 9001),
        endpoints=(Endpoint("10.0.0.1", labels=(("app", "web"),)),),
    )
    other = service("other", http(8081, 9081), endpoints=(Endpoint("10.0.0.2"),))
    jwt = policy(
        "jwt",
        JwtRule("https://a", jwks_uri="http://127.0.0.1:9999/keys"),
        selector=WorkloadSelector((("app", "web"),)),
    )
    tr = MeshTranslation(Mesh(services=(web, other), request_authentications=(jwt,)))
    snapshot = tr.snapshot_for(
        NodeClass("web", instance_ip="10.0.0.1", outbound_ip="127.0.0.2", labels=(("app", "web"),))
    )
    listeners = snapshot.get(LISTENER)
    hcm = hcm_of(listeners["inbound|10.0.0.1|8080"].message)
    assert hcm.http_filters[0].name == JWT_AUTHN_FILTER
    assert (CLUSTER, "jwks|127.0.0.1|9999") in references_of(
        listeners["inbound|10.0.0.1|8080"].message
    )
    assert "jwks|127.0.0.1|9999" in snapshot.get(CLUSTER)
    # A workload the selector does not pick gets neither.
    plain = tr.snapshot_for(NodeClass("other", instance_ip="10.0.0.2", outbound_ip="127.0.0.3"))
    hcm = hcm_of(plain.get(LISTENER)["inbound|10.0.0.2|8081"].message)
    assert JWT_AUTHN_FILTER not in [f.name for f in hcm.http_filters]
    assert "jwks|127.0.0.1|9999" not in plain.get(CLUSTER)
