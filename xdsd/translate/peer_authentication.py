"""PeerAuthentication → the mutual TLS mode of each of a workload's inbound ports, and
what its callers send it.

How this works: Istio's precedence (``mode_of``) — a workload's own policy (same
namespace, with a selector) over its namespace's (no selector) over the mesh's (root
namespace, no selector), a port-level mode over its policy's; UNSET inherits the level
below, and the mode of ``[mesh.mtls]`` is the default under everything. A root-namespace
policy with a selector counts for nothing (Istio ignores it; the sources refuse it).

A port-level key is the *workload's* port (``Port.workload_port``), as in Istio: the port
the application listens on behind its sidecar, which is a Service port's ``targetPort``
(its ``number`` when it has none), not the number callers dial; for a Sidecar ingress
listener, the ingress port's ``number`` (not its ``defaultEndpoint``'s port).

The callee's side (``effective_mode``) is the inbound listener's mode. The callers' side
is Istio's auto mTLS turned around: every cluster to a mesh service to which mesh mutual
TLS is added automatically (no DestinationRule ``tls``) keeps ISTIO_MUTUAL as its
transport socket and gets one ``transport_socket_matches`` entry, plaintext for
endpoints whose metadata ``envoy.transport_socket_match`` holds ``tlsMode: disabled``
(``add_plaintext_match``); ``CalleeModes.plaintext`` says which endpoints of a
ClusterLoadAssignment get that metadata: those whose workload's mode on the port is
DISABLE. So clusters stay shared and independent of the policies, only the assignments
of the services concerned change, and a DestinationRule that sets ``tls`` wins (its
cluster has no match). A PERMISSIVE callee gets mutual TLS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from google.protobuf import struct_pb2

from xdsd.model import Endpoint, Mesh, Port, Service
from xdsd.model.mesh_config import MeshTLS, MTLSMode
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.model.security import PeerAuthentication
from xdsd.resources import pack
from xdsd.translate.workload_security import WorkloadPolicies, applies

#: The endpoint metadata namespace Envoy matches ``transport_socket_matches`` against.
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
#: The key and value marking an endpoint its callers reach in plaintext (Istio's label
#: name ``tlsMode``, with the value its plaintext match stands for).
TLS_MODE_KEY = "tlsMode"
PLAINTEXT = "disabled"
#: The name of the plaintext entry of a cluster's ``transport_socket_matches``.
PLAINTEXT_MATCH = "tlsMode-disabled"
RAW_BUFFER = "envoy.transport_sockets.raw_buffer"


def mode_of(
    policies: Iterable[PeerAuthentication], workload_port: int, default: MTLSMode
) -> MTLSMode:
    """The mode of ``workload_port`` of a workload under ``policies`` (the ones that
    select it, in key order) over ``default`` (the settings' mode); see the module
    docstring. Of two policies at one level the first counts (the sources refuse such
    pairs)."""
    mesh: PeerAuthentication | None = None
    namespace: PeerAuthentication | None = None
    workload: PeerAuthentication | None = None
    for policy in policies:
        if policy.selector is None:
            if policy.namespace == ROOT_NAMESPACE:
                mesh = mesh or policy
            else:
                namespace = namespace or policy
        elif policy.namespace != ROOT_NAMESPACE:
            workload = workload or policy
    mode = default
    for level in (mesh, namespace, workload):
        if level is not None and level.mode is not None:
            mode = level.mode
    if workload is not None:
        for port, port_mode in workload.port_modes:
            if port == workload_port:
                return port_mode or mode
    return mode


def effective_mode(policies: WorkloadPolicies, port: Port, default: MTLSMode) -> MTLSMode:
    """The mutual TLS mode of inbound ``port`` of a workload under ``policies``
    (``default``: the settings' mode), keyed by the port's ``workload_port``."""
    if not policies.peer_authentication:
        return default
    return mode_of(policies.peer_authentication, port.workload_port, default)


def _disables(policy: PeerAuthentication) -> bool:
    """True when ``policy`` says DISABLE somewhere."""
    return policy.mode is MTLSMode.DISABLE or any(
        m is MTLSMode.DISABLE for _, m in policy.port_modes
    )


class CalleeModes:
    """Which endpoints of a mesh their callers reach in plaintext (see the module
    docstring), for one mesh and ``[mesh.mtls]``. Pure; not thread-safe (caches per
    namespace)."""

    def __init__(self, mesh: Mesh, mtls: MeshTLS) -> None:
        self._mtls = mtls
        self._by_namespace: dict[str, list[PeerAuthentication]] = {}
        for policy in mesh.peer_authentications if mtls.enabled else ():
            self._by_namespace.setdefault(policy.namespace, []).append(policy)
        self._inputs: dict[str, tuple[PeerAuthentication, ...]] = {}

    def inputs(self, namespace: str) -> tuple[PeerAuthentication, ...]:
        """Every policy that may make a workload of ``namespace`` DISABLE (its namespace's
        and the root namespace's), or nothing when none says DISABLE: what ``plaintext``
        reads for that namespace's endpoints (equal inputs, equal answers)."""
        found = self._inputs.get(namespace)
        if found is None:
            by = self._by_namespace
            chosen = [*by.get(namespace, ())]
            if namespace != ROOT_NAMESPACE:
                chosen += by.get(ROOT_NAMESPACE, ())
            found = tuple(chosen) if any(_disables(p) for p in chosen) else ()
            self._inputs[namespace] = found
        return found

    def plaintext(
        self, service: Service, port: Port, endpoints: Sequence[Endpoint]
    ) -> frozenset[Endpoint]:
        """The ``endpoints`` (of ``service``, serving ``port``) whose workload's mode on
        that port is DISABLE: their callers must not originate mutual TLS."""
        policies = self.inputs(service.namespace)
        if not policies:
            return frozenset()
        workload_port = port.workload_port
        default = self._mtls.mode
        out = set()
        for endpoint in endpoints:
            chosen = [p for p in policies if applies(p, service.namespace, endpoint.labels)]
            if mode_of(chosen, workload_port, default) is MTLSMode.DISABLE:
                out.add(endpoint)
        return frozenset(out)


def add_plaintext_match(cluster: Any) -> None:
    """Give ``cluster`` (whose transport socket is mesh mutual TLS) a plaintext transport
    socket for the endpoints marked by ``plaintext_metadata``."""
    match = cluster.transport_socket_matches.add(name=PLAINTEXT_MATCH)
    match.match.fields[TLS_MODE_KEY].string_value = PLAINTEXT
    match.transport_socket.name = RAW_BUFFER
    match.transport_socket.typed_config.CopyFrom(pack(raw_buffer_pb2.RawBuffer()))


def plaintext_metadata() -> bytes:
    """The encoded ``Metadata`` of an endpoint its callers reach in plaintext."""
    metadata = base_pb2.Metadata()
    fields = struct_pb2.Struct()
    fields.fields[TLS_MODE_KEY].string_value = PLAINTEXT
    metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].CopyFrom(fields)
    encoded: bytes = metadata.SerializeToString(deterministic=True)
    return encoded
