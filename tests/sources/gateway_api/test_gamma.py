"""GAMMA: routes whose parent is a Service, as VirtualServices bound to ``mesh``
(``sources/gateway_api/gamma.py``), over model objects and a stand-in rule conversion;
and the refusal of an Istio VirtualService and a GAMMA route for one service."""

from __future__ import annotations

from pathlib import Path

from xdsd.errors import Severity
from xdsd.model import Service, VirtualService
from xdsd.model.gateway_api import BackendRef, ObjectRef, Route, RouteMatch, RouteRule, StringMatch
from xdsd.model.rules import Destination, HTTPMatch, HTTPRoute, MatchKind, RouteDestination
from xdsd.model.rules import StringMatch as IstioMatch
from xdsd.model.service import Origin, Port, Protocol
from xdsd.sources.config_file import FileResult, parse_config_file
from xdsd.sources.crosscheck.directory import CrossCheck
from xdsd.sources.gateway_api.gamma import (
    ConvertedRules,
    MeshRoutes,
    gamma_source,
    is_service_parent,
    mesh_routes,
)

HTTP = Port(9080, Protocol.HTTP, "http")
SERVICES = (
    Service("reviews", ports=(HTTP, Port(9090, Protocol.TCP, "tcp"))),
    Service("reviews-v1", ports=(HTTP,)),
    Service("reviews-v2", ports=(HTTP,)),
    Service("ratings", namespace="other", ports=(HTTP,)),
    Service("db", ports=(Port(5432, Protocol.TCP),)),
)
KNOWN = {(s.namespace, s.name) for s in SERVICES}


def fake_rules(route: Route) -> ConvertedRules:
    """A stand-in for the shared rule conversion: path prefix matches, weighted
    Service backends (unknown ones unresolved)."""
    rules, unresolved = [], []
    for rule in route.rules:
        matches = tuple(
            HTTPMatch(uri=IstioMatch(MatchKind.PREFIX, m.path.value))
            for m in rule.matches
            if m.path is not None
        )
        dests = []
        for b in rule.backend_refs:
            ns = b.ref.namespace or route.namespace
            if (ns, b.ref.name) not in KNOWN:
                unresolved.append(("BackendNotFound", f"no Service {ns}/{b.ref.name}"))
            host = f"{b.ref.name}.{ns}.svc.cluster.local"
            dests.append(RouteDestination(Destination(host, port=b.ref.port), b.weight))
        rules.append(HTTPRoute(match=matches, route=tuple(dests)))
    return ConvertedRules(tuple(rules), tuple(unresolved))


def service_ref(name: str = "reviews", **kw: object) -> ObjectRef:
    return ObjectRef(name, "Service", **kw)  # type: ignore[arg-type]


def route(
    name: str = "canary",
    parents: tuple[ObjectRef, ...] = (service_ref(),),
    kind: str = "HTTPRoute",
    namespace: str = "default",
    hostnames: tuple[str, ...] = (),
    rules: tuple[RouteRule, ...] | None = None,
) -> Route:
    if rules is None:
        rules = (
            RouteRule(
                backend_refs=(
                    BackendRef(ObjectRef("reviews-v1", "Service", port=9080), weight=90),
                    BackendRef(ObjectRef("reviews-v2", "Service", port=9080), weight=10),
                )
            ),
        )
    return Route(
        kind,
        name,
        namespace,
        parent_refs=parents,
        hostnames=hostnames,
        rules=rules,
        origin=Origin(f"{name}.yaml", 1),
        lines=tuple((f"parentRefs[{i}]", 7 + i) for i in range(len(parents))),
    )


def conditions_of(result: object) -> list[tuple[str, str, bool, str]]:
    return [(c.scope, c.type, c.status, c.reason) for c in result.conditions]  # type: ignore[attr-defined]


def test_a_service_parent_routes_the_callers_of_that_service() -> None:
    result = mesh_routes([route()], SERVICES, fake_rules)
    (vs,) = result.virtual_services
    assert vs.hosts == ("reviews.default.svc.cluster.local",)
    assert vs.gateways == ("mesh",)
    assert vs.namespace == "default"
    assert [(d.destination.host, d.weight) for d in vs.http[0].route] == [
        ("reviews-v1.default.svc.cluster.local", 90),
        ("reviews-v2.default.svc.cluster.local", 10),
    ]
    assert vs.http[0].match == ()  # every port of the service
    assert vs.origin == Origin("canary.yaml", 1)
    assert dict(vs.lines)["hosts[0]"] == 7
    assert conditions_of(result) == [
        ("parentRefs[0]", "Accepted", True, "Accepted"),
        ("parentRefs[0]", "ResolvedRefs", True, "ResolvedRefs"),
    ]
    assert result.conditions[0].target.name == "canary"
    assert result.problems == ()
    assert gamma_source(vs) == "HTTPRoute default/canary"


def test_grpc_routes_and_the_core_group_are_mesh_parents() -> None:
    result = mesh_routes(
        [route(kind="GRPCRoute", parents=(service_ref(group="core"),))], SERVICES, fake_rules
    )
    assert len(result.virtual_services) == 1
    assert gamma_source(result.virtual_services[0]) == "GRPCRoute default/canary"


def test_other_parents_and_kinds_are_not_mesh_routes() -> None:
    gateway = ObjectRef("ingress", "Gateway", group="gateway.networking.k8s.io")
    assert not is_service_parent(gateway)
    assert mesh_routes([route(parents=(gateway,))], SERVICES, fake_rules) == MeshRoutes()


def test_parents_no_conversion_takes_are_refused_by_name() -> None:
    """A Service with the group left out (the Gateway API's group), an Istio kind, a
    Service parent of a TCPRoute: not silently dropped."""
    cases = [
        (
            route(parents=(ObjectRef("reviews", "Service", group="gateway.networking.k8s.io"),)),
            'neither a Gateway nor a Service (a Service parent is group "")',
        ),
        (
            route(parents=(ObjectRef("reviews", "ServiceEntry", group="networking.istio.io"),)),
            "group networking.istio.io and kind ServiceEntry is neither",
        ),
        (route(kind="TCPRoute"), "a TCPRoute cannot have a Service parent"),
    ]
    for bad, words in cases:
        result = mesh_routes([bad], SERVICES, fake_rules)
        assert result.virtual_services == ()
        (condition,) = result.conditions
        assert (condition.type, condition.status, condition.reason) == (
            "Accepted",
            False,
            "UnsupportedValue",
        )
        assert words in condition.message, condition.message
        (problem,) = result.problems
        assert problem.severity is Severity.WARNING and words in problem.message


def test_a_port_restricts_every_rule_to_it() -> None:
    rules = (
        RouteRule(
            matches=(RouteMatch(path=StringMatch("PathPrefix", "/a")),),
            backend_refs=(BackendRef(ObjectRef("reviews-v2", "Service", port=9080)),),
        ),
        RouteRule(backend_refs=(BackendRef(ObjectRef("reviews-v1", "Service", port=9080)),)),
    )
    for parent in (service_ref(port=9080), service_ref(section_name="http")):
        (vs,) = mesh_routes(
            [route(parents=(parent,), rules=rules)], SERVICES, fake_rules
        ).virtual_services
        assert [m.port for m in vs.http[0].match] == [9080]
        assert vs.http[0].match[0].uri == IstioMatch(MatchKind.PREFIX, "/a")
        assert vs.http[1].match == (HTTPMatch(port=9080),)


def test_routes_of_one_service_make_one_virtual_service_in_route_order() -> None:
    first = route(
        "a-first", rules=(RouteRule(backend_refs=(BackendRef(service_ref("reviews-v1")),)),)
    )
    second = route(
        "b-second", rules=(RouteRule(backend_refs=(BackendRef(service_ref("reviews-v2")),)),)
    )
    (vs,) = mesh_routes([second, first], SERVICES, fake_rules).virtual_services
    assert [r.route[0].destination.host.split(".")[0] for r in vs.http] == [
        "reviews-v1",
        "reviews-v2",
    ]
    assert gamma_source(vs) == "HTTPRoute default/a-first"
    assert vs.origin.path == "a-first.yaml"


def test_one_route_with_two_service_parents_routes_both() -> None:
    result = mesh_routes(
        [route(parents=(service_ref(), service_ref("reviews-v1")))], SERVICES, fake_rules
    )
    assert [vs.hosts[0].split(".")[0] for vs in result.virtual_services] == [
        "reviews",
        "reviews-v1",
    ]
    assert dict(result.virtual_services[1].lines)["hosts[0]"] == 8


def test_parents_not_served_are_not_accepted_and_warned() -> None:
    cases = {
        service_ref("nope"): ("NoMatchingParent", "no Service default/nope"),
        service_ref(port=1234): ("NoMatchingParent", "has no port 1234"),
        service_ref(section_name="grpc"): ("NoMatchingParent", "no port named 'grpc'"),
        service_ref(section_name="http", port=9090): ("NoMatchingParent", "is not 9090"),
        service_ref(port=9090): ("UnsupportedValue", "is TCP"),
        service_ref("db"): ("UnsupportedValue", "no HTTP port"),
        service_ref("ratings", namespace="other"): ("UnsupportedValue", "consumer routes"),
    }
    for parent, (reason, words) in cases.items():
        result = mesh_routes([route(parents=(parent,))], SERVICES, fake_rules)
        assert result.virtual_services == ()
        (condition,) = result.conditions
        assert (condition.type, condition.status, condition.reason) == ("Accepted", False, reason)
        assert words in condition.message
        (problem,) = result.problems
        assert problem.severity is Severity.WARNING
        assert (problem.path, problem.line, problem.field) == ("canary.yaml", 7, "parentRefs[0]")
        assert "HTTPRoute default/canary" in problem.message and words in problem.message


def test_unresolved_backends_are_resolved_refs_false() -> None:
    rules = (RouteRule(backend_refs=(BackendRef(service_ref("gone")),)),)
    result = mesh_routes([route(rules=rules)], SERVICES, fake_rules)
    assert conditions_of(result) == [
        ("parentRefs[0]", "Accepted", True, "Accepted"),
        ("parentRefs[0]", "ResolvedRefs", False, "BackendNotFound"),
    ]
    assert result.conditions[1].message == "no Service default/gone"


def test_hostnames_of_a_mesh_route_are_warned_ignored() -> None:
    result = mesh_routes([route(hostnames=("reviews.example",))], SERVICES, fake_rules)
    assert len(result.virtual_services) == 1
    (problem,) = result.problems
    assert problem.field == "hostnames" and "ignored" in problem.message


class Contents:
    """A synthetic file's contents, as the loader merges the conversion's."""

    def __init__(self, *virtual: VirtualService) -> None:
        self.resources = tuple((vs, vs.origin) for vs in virtual)
        self.raw = ()
        self.problems = ()


ISTIO_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews-v1
"""


def test_an_istio_virtual_service_and_a_gamma_route_for_one_service_are_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "vs.yaml").write_text(ISTIO_VS)
    (gamma,) = mesh_routes([route()], SERVICES, fake_rules).virtual_services
    istio = parse_config_file(str(tmp_path), str(tmp_path / "vs.yaml"))
    assert istio.problems == ()
    services = FileResult(None, tuple((s, Origin("svc.yaml", 1)) for s in SERVICES), (), ())
    check = CrossCheck()
    changes = [("svc.yaml", None, services), (str(tmp_path / "vs.yaml"), None, istio)]
    changes.append(("<gateway-api>", None, Contents(gamma)))
    order = {"svc.yaml": 0, str(tmp_path / "vs.yaml"): 1, "<gateway-api>": 2}
    check.update(changes, order)  # type: ignore[arg-type]
    errors = [p for p in check.problems() if p.severity is Severity.ERROR]
    (error,) = errors
    assert (error.path, error.line, error.field) == (str(tmp_path / "vs.yaml"), 7, "hosts[0]")
    assert error.message == (
        "Service default/reviews is routed both by HTTPRoute default/canary (canary.yaml:7) "
        "and by VirtualService 'reviews'; route a service with the Gateway API or with a "
        "VirtualService, not both"
    )
    # Whatever the Istio rule's name, GAMMA's come first (Kubernetes names are lower
    # case): the error is on the Istio file's line, naming the route's.
    istio_last = Contents(VirtualService("a", hosts=("reviews",), origin=Origin("vs2.yaml", 3)))
    check = CrossCheck()
    changes[1] = ("vs2.yaml", None, istio_last)
    order = {"svc.yaml": 0, "vs2.yaml": 1, "<gateway-api>": 2}
    check.update(changes, order)  # type: ignore[arg-type]
    (error,) = [p for p in check.problems() if p.severity is Severity.ERROR]
    assert str(error).startswith("vs2.yaml:3: hosts[0]: Service default/reviews is routed both ")
    assert "HTTPRoute default/canary (canary.yaml:7)" in error.message


def test_a_grpc_route_and_an_http_route_for_one_service_are_not_merged() -> None:
    """GEP-1294: the GRPCRoute applies, the HTTPRoute's parent is ``Accepted`` False
    ``Conflicted`` with a warning naming the GRPCRoute; an HTTPRoute for another
    Service is not in conflict."""
    grpc = route("g", kind="GRPCRoute", parents=(service_ref(port=9080),))
    http = route("a-http")
    other_port = route("b-http", parents=(service_ref("reviews-v1"),))
    out = mesh_routes([grpc, http, other_port], SERVICES, fake_rules)
    accepted = {
        (c.target.kind, c.target.name): (c.status, c.reason)
        for c in out.conditions
        if c.type == "Accepted"
    }
    assert accepted[("GRPCRoute", "g")] == (True, "Accepted")
    assert accepted[("HTTPRoute", "a-http")] == (False, "Conflicted")
    assert accepted[("HTTPRoute", "b-http")] == (True, "Accepted")
    (warning,) = [
        p for p in out.problems if "a-http" in p.message or "GRPCRoute default/g" in p.message
    ]
    assert "GRPCRoute default/g" in warning.message and warning.severity is Severity.WARNING
    assert sorted(vs.name for vs in out.virtual_services) == [
        "GRPCRoute~g~reviews",
        "HTTPRoute~b-http~reviews-v1",
    ]
