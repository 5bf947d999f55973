"""DestinationRule specs → model objects (Istio's networking.istio.io API).

Reads the fields xdsd implements, records a problem for every wrong value, and lists the
fields it does not implement so that they are reported by name (``Fields.finish``).
"""

from __future__ import annotations

from xdsd.model import DestinationRule, LoadBalancer, Origin, Subset, TrafficPolicy
from xdsd.model.rules import SimpleLB
from xdsd.sources.fields import Fields

# Fields of Istio's API that xdsd does not translate yet: named in errors, never dropped.
DR_UNSUPPORTED = ("exportTo", "workloadSelector")
POLICY_UNSUPPORTED = (
    "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel", "proxyProtocol",
)  # fmt: skip
LB_UNSUPPORTED = ("consistentHash", "localityLbSetting", "warmupDurationSecs", "warmup")


def parse_destination_rule(
    spec: Fields, name: str, namespace: str, origin: Origin
) -> DestinationRule:
    """The supported core of an Istio DestinationRule."""
    host = spec.string("host", required=True)
    policy = _parse_policy(spec.obj("trafficPolicy"))
    subsets = spec.parse_list("subsets", _parse_subset)
    seen: set[str] = set()
    for i, subset in enumerate(subsets):
        if subset.name in seen:
            spec.report.add(("subsets", i, "name"), f"subset {subset.name!r} is defined twice")
        seen.add(subset.name)
    spec.finish(DR_UNSUPPORTED)
    return DestinationRule(name, host, namespace, policy, subsets, origin=origin)


def _parse_subset(f: Fields) -> Subset:
    name = f.string("name", required=True)
    labels = f.labels("labels")
    policy = _parse_policy(f.obj("trafficPolicy"))
    f.finish()
    return Subset(name, labels, policy)


def _parse_policy(f: Fields | None) -> TrafficPolicy | None:
    if f is None:
        return None
    lb = None
    lb_fields = f.obj("loadBalancer")
    if lb_fields is not None:
        simple = lb_fields.enum("simple", SimpleLB, SimpleLB.UNSPECIFIED)
        if simple is SimpleLB.PASSTHROUGH:
            lb_fields.error(
                "simple",
                "PASSTHROUGH needs original-destination capture (iptables), "
                "which xdsd's VM sidecars do not have",
            )
        lb_fields.finish(LB_UNSUPPORTED)
        lb = LoadBalancer(simple)
    f.finish(POLICY_UNSUPPORTED)
    return TrafficPolicy(lb)
