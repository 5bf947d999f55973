"""The builders of a class's base: one cluster per outbound spec, one assignment per EDS
cluster (stage *base*; ``shared.SharedClusters`` gathers them per flavor).

How this works: a cluster's spec is first given the TLS mesh mutual TLS adds
(``mesh_tls.with_mesh_tls``), then built through the translation's ``memo.Memo``, keyed by
the spec and the flavor it is built in. An EDS cluster does not hold its endpoints (its
ClusterLoadAssignment does): it is keyed by its name and its flavor's template
(``clusters.EdsTemplate``), so an endpoint edit re-encodes the assignment only. A
service's assignments (the whole service's, each subset's) are joined from one encoding
of the service's endpoints per port (``endpoints.ordered_rows``: each endpoint encoded
once, in the order ``select_endpoints`` gives), filtered; they are built once per spec
in a translation, not memoized (the next translation takes unchanged services'
assignments over with their ``ServiceParts``). A DNS cluster carries no config source
(unless its TLS certificates come by SDS), so Envoy classes of either config source share
one, built in the ADS flavor.
"""

from __future__ import annotations

from itertools import compress

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
from xdsd.translate.endpoints import (
    EndpointRow,
    assignment_of_rows,
    assignment_resource,
    filter_endpoints,
    ordered_rows,
)
from xdsd.translate.memo import Memo
from xdsd.translate.mesh_tls import with_mesh_tls
from xdsd.translate.peer_authentication import CalleeModes


class BaseBuilders:
    """``cluster`` and ``assignment`` for ``SharedClusters.base``, each built once per
    translation (see the module docstring)."""

    def __init__(self, memo: Memo, mtls: MeshTLS, callee: CalleeModes | None = None) -> None:
        """``callee``: which endpoints callers reach in plaintext (None: none)."""
        self._memo = memo
        self._mtls = mtls
        self._callee = callee
        # The last (service, port) ordered, its endpoints in ``select_endpoints`` order
        # and their ``endpoint_rows`` (a service's specs come in a row).
        self._ordered: (
            tuple[Service, Port, tuple[Endpoint, ...], tuple[EndpointRow, ...]] | None
        ) = None

        # ``assignment`` of plaintext-free specs, by the spec's id.
        self._assignments: dict[int, tuple[OutboundCluster, Resource]] = {}

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
        service, port, selector = spec.service, spec.port, spec.selector
        callee = self._callee
        if callee is not None and callee.inputs(service.namespace):
            endpoints = self._endpoints(service, port, selector)
            plaintext = callee.plaintext(service, port, endpoints)
            if plaintext:
                return self._memo.resource(
                    assignment_resource, spec.name, port, endpoints, plaintext
                )
        # Built once per spec object in this translation (the flavors of a mesh share
        # the specs of its ServiceParts; the spec is kept, so its id is not reused),
        # not memoized: a key would hold every encoded endpoint alive, and the next
        # translation takes unchanged services' assignments over with their parts.
        found = self._assignments.get(id(spec))
        if found is None:
            found = (spec, assignment_of_rows(spec.name, self._rows(service, port, selector)))
            self._assignments[id(spec)] = found
        return found[1]

    def _ordering(
        self, service: Service, port: Port
    ) -> tuple[tuple[Endpoint, ...], tuple[EndpointRow, ...]]:
        """``select_endpoints(service, port)`` and its ``endpoint_rows``, made once per
        (service, port): a service's specs come in a row."""
        last = self._ordered
        if last is not None and last[0] is service and last[1] is port:
            return last[2], last[3]
        ordered, rows = ordered_rows(port, service.endpoints)
        self._ordered = (service, port, ordered, rows)
        return ordered, rows

    def _endpoints(
        self, service: Service, port: Port, selector: tuple[tuple[str, str], ...]
    ) -> tuple[Endpoint, ...]:
        """``select_endpoints(service, port, selector)``: the service's endpoints ordered
        once per (service, port) and filtered by ``selector`` (filtering keeps the
        order of a stable sort, so the result is the same)."""
        return filter_endpoints(self._ordering(service, port)[0], selector)

    def _rows(
        self, service: Service, port: Port, selector: tuple[tuple[str, str], ...]
    ) -> tuple[EndpointRow, ...]:
        """``endpoint_rows(port, select_endpoints(service, port, selector))``: the rows
        of the whole service's endpoints, those ``selector`` chooses."""
        ordered, rows = self._ordering(service, port)
        if not selector:
            return rows
        if len(selector) == 1:  # a subset's one label: Endpoint.matches without a call
            pair = selector[0]
            return tuple(compress(rows, [pair in e.labels for e in ordered]))
        return tuple(compress(rows, [e.matches(selector) for e in ordered]))
