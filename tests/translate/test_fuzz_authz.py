"""Fuzzing AuthorizationPolicy: mutated policies are refused with a located error, or
translate into filters of valid messages.

Seeds are Istio's golden inputs (``conformance/istio/authz``); each example mutates one
(``test_fuzz_loader.mutate``: values of another type, keys deleted, duplicated or added,
deep nesting), serializes it as YAML and parses it the way the loader does. Properties:
parsing never raises; a refused policy has only errors that name a line; an accepted one
translates, for an HTTP and a TCP port, with and without an extension provider, into
filters whose typed configs are valid messages (``json_format.ParseDict`` raises on
anything that is not), with Envoy's rule that an OrMatcher holds two matchers or more.
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.paths import CONFORMANCE
from tests.sources.test_fuzz_loader import mutate
from xdsd.errors import Problem
from xdsd.model import Port
from xdsd.model.mesh_config import ExtAuthzKind, ExtensionProvider
from xdsd.model.security import AuthorizationPolicy
from xdsd.model.service import Protocol
from xdsd.sources.dispatch import parse_document
from xdsd.sources.documents import parse_file
from xdsd.translate import authz
from xdsd.translate.workload_security import WorkloadPolicies

SEEDS = [
    d
    for p in sorted((CONFORMANCE / "istio" / "authz").rglob("*-in.yaml"))
    for d in yaml.safe_load_all(p.read_text())
    if d
]
PROVIDERS = (
    ExtensionProvider("default", ExtAuthzKind.GRPC, "e.foo.svc.cluster.local", 9000),
    ExtensionProvider("another", ExtAuthzKind.HTTP, "h.foo.svc.cluster.local", 80),
)


def _or_matchers_hold_two(node: Any) -> None:
    if isinstance(node, dict):
        if "orMatch" in node:
            assert len(node["orMatch"]["valueMatchers"]) >= 2
        for value in node.values():
            _or_matchers_hold_two(value)
    elif isinstance(node, list):
        for value in node:
            _or_matchers_hold_two(value)


@fuzz_settings(scale=2)
@given(st.sampled_from(SEEDS).flatmap(mutate))
def test_fuzz_authorization_policy(doc: Any) -> None:
    with deadline("test_fuzz_authorization_policy"):
        data = yaml.safe_dump(doc).encode()
        problems: list[Problem] = []
        policies: list[AuthorizationPolicy] = []
        for parsed in parse_file("x.yaml", data):
            result = parse_document(parsed, problems, "/nonexistent")
            if isinstance(result, AuthorizationPolicy):
                policies.append(result)
        errors = [p for p in problems if p.severity.value == "error"]
        assert all(p.line > 0 for p in errors), errors
        if errors:
            return
        for providers in ((), PROVIDERS):
            policy_set = WorkloadPolicies(authorization=tuple(policies), providers=providers)
            for tcp, port in ((False, Port(80, Protocol.HTTP)), (True, Port(81, Protocol.TCP))):
                _or_matchers_hold_two(authz.filter_dicts(policy_set, tcp))
                made = (authz.network_filters if tcp else authz.http_filters)(policy_set, port)
                assert all(message.IsInitialized() for _, message in made)
