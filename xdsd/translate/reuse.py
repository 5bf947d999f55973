"""What one translation hands to the next: per-service resources and route configurations.

How this works: a reload that changes one service's file gives a mesh in which every
other ``Service`` and ``DestinationRule`` is the very same object as before (the loader
keeps the model objects of unchanged files). ``ServiceParts`` holds what is built from one
service and its rule alone — its outbound cluster specs, and per cluster flavor its
clusters and ClusterLoadAssignments — and the next translation takes it over when the
service and the rule are the same objects (or equal ones), without hashing or rebuilding
anything. Route configurations depend on many services at once: each is remembered with
``inputs``, a tuple of what each of its virtual hosts is made of (the service's names and
ports and what its routes are made of); tuples of mostly identical objects compare in
C, so an unchanged route configuration is recognised cheaply (see docs/performance.md)
and is not rebuilt nor encoded again.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from xdsd.model import DestinationRule, Service
from xdsd.model.security import PeerAuthentication
from xdsd.resources import Resource
from xdsd.translate.clusters import OutboundCluster, outbound_clusters


@dataclass(slots=True)
class ServiceParts:
    """The resources built from one service, its DestinationRule and ``peer`` (the
    PeerAuthentications that decide which of its endpoints callers reach in plaintext:
    ``peer_authentication.CalleeModes.inputs``, usually none) alone."""

    service: Service
    rule: DestinationRule | None
    specs: tuple[OutboundCluster, ...]
    #: By ``ClusterFlavor`` value.
    clusters: dict[str, tuple[Resource, ...]] = field(default_factory=dict)
    assignments: dict[str, tuple[Resource, ...]] = field(default_factory=dict)
    peer: tuple[PeerAuthentication, ...] = ()

    @classmethod
    def of(
        cls,
        service: Service,
        rule: DestinationRule | None,
        peer: tuple[PeerAuthentication, ...] = (),
    ) -> ServiceParts:
        """Nothing built yet for ``service`` with ``rule`` and ``peer``."""
        return cls(service, rule, tuple(outbound_clusters(service, rule)), peer=peer)

    def reusable_for(
        self,
        service: Service,
        rule: DestinationRule | None,
        peer: tuple[PeerAuthentication, ...] = (),
    ) -> bool:
        """True when ``service``, ``rule`` and ``peer`` would give exactly these
        resources."""
        return (
            (self.service is service or self.service == service)
            and (self.rule is rule or self.rule == rule)
            and (self.peer is peer or self.peer == peer)
        )

    def rebound(
        self,
        service: Service,
        rule: DestinationRule | None,
        peer: tuple[PeerAuthentication, ...] = (),
    ) -> ServiceParts:
        """These parts, for equal objects read again (their origins may differ)."""
        if self.service is service and self.rule is rule and self.peer is peer:
            return self
        return ServiceParts(
            service,
            rule,
            tuple(outbound_clusters(service, rule)),
            dict(self.clusters),
            dict(self.assignments),
            peer,
        )


@dataclass(frozen=True, slots=True)
class RouteConfigEntry:
    """A route configuration and what it was built from."""

    inputs: tuple[Hashable, ...]
    resource: Resource
