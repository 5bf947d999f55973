"""Traffic rules: the core of Istio's VirtualService and DestinationRule.

Only what xdsd translates is modelled; sources report any other field by name instead of
dropping it. Durations are ``timedelta``; weights are relative (a destination gets
weight / sum of weights), as in Istio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from xdsd.model.service import DEFAULT_NAMESPACE, NO_ORIGIN, Origin, ResourceKey


class MatchKind(Enum):
    """How a StringMatch compares."""

    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's StringMatch: exactly one of exact, prefix, regex (RE2 syntax)."""

    kind: MatchKind
    value: str


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A request header condition: the header ``name`` (lower-cased) matches ``match``."""

    name: str
    match: StringMatch


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    """One match block: all conditions must hold (AND). Blocks of a route are ORed."""

    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()
    port: int = 0


@dataclass(frozen=True, slots=True)
class Destination:
    """Where traffic goes: a host (resolved against services), an optional subset and
    port (0 = the service's only port)."""

    host: str
    subset: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class RouteDestination:
    """A weighted destination of an HTTP route."""

    destination: Destination
    weight: int = 0


@dataclass(frozen=True, slots=True)
class Retries:
    """Istio's HTTPRetry. ``attempts`` 0 disables retries."""

    attempts: int
    per_try_timeout: timedelta | None = None
    retry_on: str = ""


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """One HTTP rule of a VirtualService: matches (ORed) and weighted destinations."""

    name: str = ""
    match: tuple[HTTPMatch, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    timeout: timedelta | None = None
    retries: Retries | None = None


@dataclass(frozen=True, slots=True)
class VirtualService:
    """Routing rules for a set of hosts; the first matching HTTP rule wins."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    hosts: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    #: The rule's identity (derived once, never compared nor passed).
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("VirtualService", self.namespace, self.name))


class SimpleLB(Enum):
    """Istio's LoadBalancerSettings.SimpleLB."""

    UNSPECIFIED = "UNSPECIFIED"
    LEAST_REQUEST = "LEAST_REQUEST"
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"
    LEAST_CONN = "LEAST_CONN"


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """Load-balancer policy (the ``simple`` form)."""

    simple: SimpleLB = SimpleLB.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Per-destination policy. Only the load balancer is modelled so far."""

    load_balancer: LoadBalancer | None = None


@dataclass(frozen=True, slots=True)
class Subset:
    """A named group of a service's endpoints, chosen by labels."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """Policies for traffic to one host, and its subsets."""

    name: str
    host: str
    namespace: str = DEFAULT_NAMESPACE
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    #: The rule's identity (derived once, never compared nor passed).
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ResourceKey("DestinationRule", self.namespace, self.name))

    def subset(self, name: str) -> Subset | None:
        """The subset with this name, if defined."""
        for s in self.subsets:
            if s.name == name:
                return s
        return None

    def policy_for(self, subset: str) -> TrafficPolicy | None:
        """The effective policy for a subset (the subset's own, else the rule's)."""
        s = self.subset(subset) if subset else None
        if s is not None and s.traffic_policy is not None:
            return s.traffic_policy
        return self.traffic_policy
