"""Gateway API status conditions placed at their files' lines and worded for
``xdsd validate``, ``/debug/errors`` and the status page (``gateway_api/status.py``)."""

from __future__ import annotations

from xdsd.model.gateway_api import (
    Condition,
    GatewayAPI,
    GatewayClass,
    KubeGateway,
    Listener,
    ObjectRef,
    Route,
)
from xdsd.model.service import Origin, ResourceKey
from xdsd.sources.gateway_api.status import (
    condition_json,
    condition_line,
    object_name,
    place,
    summary,
)

ROUTE = Route(
    "HTTPRoute",
    "canary",
    "shop",
    parent_refs=(ObjectRef("web", "Gateway"), ObjectRef("web", "Gateway", section_name="x")),
    origin=Origin("routes.yaml", 3),
    lines=(("spec.parentRefs[1]", 11),),
)
GATEWAY = KubeGateway(
    "web",
    "shop",
    listeners=(Listener("http", 80, "HTTP"), Listener("https", 443, "HTTPS")),
    origin=Origin("gw.yaml", 20),
    lines=(("listeners[1]", 31),),
)
CLASS = GatewayClass("xdsd", "xdsd.dev/gateway-controller", origin=Origin("class.yaml", 1))
API = GatewayAPI(classes=(CLASS,), gateways=(GATEWAY,), routes=(ROUTE,))


def test_conditions_are_placed_at_the_line_of_what_they_are_about() -> None:
    conditions = (
        Condition(
            ROUTE.key, "Accepted", False, "NotAllowedByListeners", "no listener", "parentRefs[1]"
        ),
        Condition(ROUTE.key, "Accepted", True, "Accepted", "", "parentRefs[0]"),
        Condition(GATEWAY.key, "Programmed", False, "Invalid", "bad cert", "listeners[https]"),
        Condition(GATEWAY.key, "Accepted", True, "Accepted"),
        Condition(CLASS.key, "Accepted", True, "Accepted"),
        Condition(ResourceKey("HTTPRoute", "shop", "gone"), "Accepted", True, "Accepted"),
    )
    placed = place(conditions, API)
    assert [(p.path, p.line) for p in placed] == [
        ("routes.yaml", 11),
        ("routes.yaml", 3),  # parentRefs[0]'s line not recorded: the document's
        ("gw.yaml", 31),
        ("gw.yaml", 20),
        ("class.yaml", 1),
        ("<gateway-api>", 0),
    ]
    assert condition_line(placed[0]) == (
        "routes.yaml:11: HTTPRoute shop/canary: parentRefs[1]: "
        "Accepted=False NotAllowedByListeners: no listener"
    )
    assert condition_line(placed[3]) == "gw.yaml:20: Gateway shop/web: Accepted=True Accepted"
    assert condition_line(placed[4]) == "class.yaml:1: GatewayClass xdsd: Accepted=True Accepted"
    assert [p.holds for p in placed] == [False, True, False, True, True, True]
    assert summary(placed) == "Gateway API status: 4 objects, 6 conditions, 2 not met"
    assert summary(()) == ""


def test_conflicted_holds_when_false() -> None:
    (good, bad) = place(
        (
            Condition(GATEWAY.key, "Conflicted", False, "NoConflicts", "", "listeners[http]"),
            Condition(GATEWAY.key, "Conflicted", True, "HostnameConflict", "", "listeners[http]"),
        ),
        API,
    )
    assert good.holds and not bad.holds


def test_json_as_kubernetes_writes_status() -> None:
    (placed,) = place(
        (
            Condition(
                ROUTE.key,
                "ResolvedRefs",
                False,
                "BackendNotFound",
                "no Service shop/x",
                "parentRefs[1]",
            ),
        ),
        API,
    )
    assert condition_json(placed) == {
        "severity": "condition",
        "object": "HTTPRoute shop/canary",
        "scope": "parentRefs[1]",
        "type": "ResolvedRefs",
        "status": "False",
        "reason": "BackendNotFound",
        "message": "no Service shop/x",
        "holds": False,
        "path": "routes.yaml",
        "line": 11,
        "text": "routes.yaml:11: HTTPRoute shop/canary: parentRefs[1]: "
        "ResolvedRefs=False BackendNotFound: no Service shop/x",
    }
    assert object_name(GATEWAY.key) == "Gateway shop/web"
