"""The builders of a class's base: one cluster per outbound spec, one assignment per EDS
cluster (stage *base*; ``shared.SharedClusters`` gathers them per flavor).

How this works: a cluster's spec is first given the TLS mesh mutual TLS adds
(``mesh_tls.with_mesh_tls``), then built through the translation's ``memo.Memo``, keyed by
the spec and the flavor it is built in. An EDS cluster does not hold its endpoints (its
ClusterLoadAssignment does), so it is built from a spec whose service has none: an
endpoint edit re-encodes the assignment only. A DNS cluster carries no config source
(unless its TLS certificates come by SDS), so Envoy classes of either config source share
one, built in the ADS flavor.
"""

from __future__ import annotations

import dataclasses

from xdsd.model import Endpoint, Service
from xdsd.model.mesh_config import MeshTLS
from xdsd.resources import Resource
from xdsd.translate.cluster_policy import uses_sds
from xdsd.translate.clusters import ClusterFlavor, OutboundCluster, build_outbound_cluster, is_eds
from xdsd.translate.endpoints import assignment_resource, select_endpoints
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
        # The last service given, and it without endpoints (a service's specs come in a
        # row).
        self._last: tuple[Service, Service] | None = None

    def cluster(self, spec: OutboundCluster, flavor: ClusterFlavor) -> Resource:
        """The outbound cluster of ``spec`` for ``flavor``. Raises TranslationError when
        a rule asks for ISTIO_MUTUAL and mesh mutual TLS is off."""
        spec = with_mesh_tls(spec, flavor, self._mtls)
        if is_eds(spec, flavor):
            spec = dataclasses.replace(spec, service=self._without_endpoints(spec.service))
        elif not flavor.grpc and not uses_sds(spec.policy):
            flavor = ClusterFlavor.ENVOY_ADS
        return self._memo.resource(build_outbound_cluster, spec, flavor)

    def _without_endpoints(self, service: Service) -> Service:
        """``service`` without its endpoints (the last one is remembered)."""
        last = self._last
        if last is not None and last[0] is service:
            return last[1]
        bare = dataclasses.replace(service, endpoints=()) if service.endpoints else service
        self._last = (service, bare)
        return bare

    def assignment(self, spec: OutboundCluster) -> Resource:
        """The ClusterLoadAssignment of the EDS cluster of ``spec``, its endpoints whose
        workload is DISABLE marked for plaintext (``peer_authentication``)."""
        endpoints: tuple[Endpoint, ...] = select_endpoints(spec.service, spec.port, spec.selector)
        callee = self._callee
        plaintext = callee.plaintext(spec.service, spec.port, endpoints) if callee else None
        if plaintext:
            return self._memo.resource(
                assignment_resource, spec.name, spec.port, endpoints, plaintext
            )
        return self._memo.resource(assignment_resource, spec.name, spec.port, endpoints)
