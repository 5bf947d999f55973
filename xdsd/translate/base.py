"""The builders of a class's base: one cluster per outbound spec, one assignment per EDS
cluster (stage *base*; ``shared.SharedClusters`` gathers them per flavor).

How this works: a cluster's spec is first given the TLS mesh mutual TLS adds
(``mesh_tls.with_mesh_tls``), then built through the translation's ``memo.Memo``, keyed by
the spec and the flavor it is built in. An EDS cluster does not hold its endpoints (its
ClusterLoadAssignment does): it is keyed by its name and its flavor's template
(``clusters.EdsTemplate``), so an endpoint edit re-encodes the assignment only. A
service's assignments (the whole service's, each subset's) take their endpoints from one
ordering of the service's endpoints per port, filtered (the order ``select_endpoints``
gives). A DNS cluster carries no config source
(unless its TLS certificates come by SDS), so Envoy classes of either config source share
one, built in the ADS flavor.
"""

from __future__ import annotations

from xdsd.model import Endpoint, Port, Service
from xdsd.model.mesh_config import MeshTLS
from xdsd.resources import Resource
from xdsd.translate.cluster_policy import uses_sds
from xdsd.translate.clusters import (
    ClusterFlavor,
    OutboundCluster,
    build_outbound_cluster,
    eds_cluster_resource,
    eds_template,
    is_eds,
)
from xdsd.translate.endpoints import assignment_resource, filter_endpoints, select_endpoints
from xdsd.translate.memo import Memo
from xdsd.translate.mesh_tls import with_mesh_tls
from xdsd.translate.peer_authentication import CalleeModes


class BaseBuilders:
    """``cluster`` and ``assignment`` for ``SharedClusters.base``, memoized."""

    def __init__(self, memo: Memo, mtls: MeshTLS, callee: CalleeModes | None = None) -> None:
        """``callee``: which endpoints callers reach in plaintext (None: none)."""
        self._memo = memo
        self._mtls = mtls
        self._callee = callee
        # The last (service, port) ordered, and its endpoints in ``select_endpoints``
        # order (a service's specs come in a row).
        self._ordered: tuple[Service, Port, tuple[Endpoint, ...]] | None = None

    def cluster(self, spec: OutboundCluster, flavor: ClusterFlavor) -> Resource:
        """The outbound cluster of ``spec`` for ``flavor``. Raises TranslationError when
        a rule asks for ISTIO_MUTUAL and mesh mutual TLS is off."""
        spec = with_mesh_tls(spec, flavor, self._mtls)
        if is_eds(spec, flavor):
            # Keyed by name and template: what the cluster is made of, without hashing
            # the service and its endpoints (the assignment holds those).
            return self._memo.resource(eds_cluster_resource, spec.name, eds_template(spec, flavor))
        if not flavor.grpc and not uses_sds(spec.policy):
            flavor = ClusterFlavor.ENVOY_ADS
        return self._memo.resource(build_outbound_cluster, spec, flavor)

    def assignment(self, spec: OutboundCluster) -> Resource:
        """The ClusterLoadAssignment of the EDS cluster of ``spec``, its endpoints whose
        workload is DISABLE marked for plaintext (``peer_authentication``)."""
        endpoints = self._endpoints(spec.service, spec.port, spec.selector)
        callee = self._callee
        plaintext = callee.plaintext(spec.service, spec.port, endpoints) if callee else None
        if plaintext:
            return self._memo.resource(
                assignment_resource, spec.name, spec.port, endpoints, plaintext
            )
        return self._memo.resource(assignment_resource, spec.name, spec.port, endpoints)

    def _endpoints(
        self, service: Service, port: Port, selector: tuple[tuple[str, str], ...]
    ) -> tuple[Endpoint, ...]:
        """``select_endpoints(service, port, selector)``: the service's endpoints ordered
        once per (service, port) and filtered by ``selector`` (filtering keeps the
        order of a stable sort, so the result is the same)."""
        last = self._ordered
        if last is not None and last[0] is service and last[1] is port:
            ordered = last[2]
        else:
            ordered = select_endpoints(service, port)
            self._ordered = (service, port, ordered)
        return filter_endpoints(ordered, selector)
