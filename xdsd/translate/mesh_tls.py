"""Mesh mutual TLS: what it adds to a cluster, and a class's own secrets.

How this works: with ``[mesh.mtls]`` on, every cluster to a service inside the mesh (an
xdsd Service, a MESH_INTERNAL ServiceEntry host) originates ISTIO_MUTUAL unless its
DestinationRule says otherwise (``with_mesh_tls``, applied to a cluster's spec before it
is built, so the memo key holds the TLS it gets; endpoints whose workload is DISABLE get
plaintext, see ``peer_authentication``), and every Envoy or MOSN class gets two
secrets of its own, its workload certificate and the mesh CA (``mesh_identity``), which
the base's clusters name without holding them (``shared.CLASS_SECRETS``). When xdsd's CA
issues the certificates (``MeshTLS.issued``), a class gets only the CA's trust bundle:
its ``default`` is each connected proxy's own, added by the server to that client's view
(``xdsd.identities``), so a class snapshot names it without holding it
(``issued_secrets``).
"""

from __future__ import annotations

import dataclasses

from xdsd.errors import Problem, TranslationError
from xdsd.model import ClientTLS, Location, TLSMode, TrafficPolicy
from xdsd.model.mesh_config import ISTIO_MUTUAL_WITHOUT_MESH_TLS, WORKLOAD_SECRET, MeshTLS
from xdsd.resources import SECRET, Resource
from xdsd.translate.clusters import ClusterFlavor, OutboundCluster
from xdsd.translate.node import NodeClass, is_wildcard
from xdsd.translate.secrets import Secrets


def with_mesh_tls(spec: OutboundCluster, flavor: ClusterFlavor, mtls: MeshTLS) -> OutboundCluster:
    """``spec`` with the TLS mesh mutual TLS gives it: ISTIO_MUTUAL to the services
    inside the mesh (xdsd Services, MESH_INTERNAL ServiceEntry hosts) unless their
    DestinationRule says otherwise, and wherever a rule asks for ISTIO_MUTUAL;
    checking the callee's identity: the rule's subject alt names, else the entry's,
    else (a Service) its SPIFFE id; a MESH_INTERNAL entry that names none is checked
    against the mesh CA only. Proxyless gRPC reads certificates only through the
    certificate providers of its bootstrap: a client that has the mesh's
    (``ClusterFlavor.GRPC_MTLS``) is treated as Envoy, any other is left out (its
    ISTIO_MUTUAL is plaintext, which STRICT sidecars refuse). Mutual TLS added here
    without a rule asking for it is marked ``auto_mtls``: the cluster then sends
    plaintext to the endpoints whose workload's PeerAuthentication mode is DISABLE (see
    ``peer_authentication``), as Istio's auto mTLS does; a rule's own ``tls`` wins."""
    policy = spec.policy
    tls = policy.tls if policy is not None else None
    if policy is not None and tls is not None and tls.mode is TLSMode.ISTIO_MUTUAL:
        if not mtls.enabled:  # the loader refuses such rules: a mesh built by hand
            raise TranslationError([istio_mutual_problem(spec)])
        if flavor is ClusterFlavor.GRPC:
            return dataclasses.replace(spec, policy=dataclasses.replace(policy, tls=None))
    if not mtls.enabled or flavor is ClusterFlavor.GRPC:
        return spec  # (a GRPC_MTLS client has the mesh's certificates: as Envoy)
    service = spec.service
    auto = tls is None and service.location is Location.MESH_INTERNAL
    if auto:
        tls = ClientTLS(TLSMode.ISTIO_MUTUAL)
    if tls is None or tls.mode is not TLSMode.ISTIO_MUTUAL:
        return spec
    if not tls.subject_alt_names:
        sans = service.subject_alt_names
        if not sans and not service.entry:
            sans = (mtls.identity(service.namespace, service.name),)
        tls = dataclasses.replace(tls, subject_alt_names=sans)
    policy = dataclasses.replace(policy or TrafficPolicy(), tls=tls)
    return dataclasses.replace(spec, policy=policy, auto_mtls=auto)


def issued_secrets(mtls: MeshTLS) -> frozenset[tuple[str, str]]:
    """What a class snapshot may name without holding it: ``default`` when xdsd's CA
    issues it per connected proxy (else nothing)."""
    return frozenset({(SECRET, WORKLOAD_SECRET)}) if mtls.enabled and mtls.issued else frozenset()


def mesh_identity(
    node: NodeClass, ip: str, mtls: MeshTLS, secrets: Secrets
) -> tuple[Resource, ...]:
    """The mesh mutual TLS secrets of ``node``: its own certificate (from the
    ``[mesh.mtls]`` templates filled in with its namespace, service and inbound
    address ``ip``) and the mesh CA; with ``issued`` only the CA's trust bundle
    (``bundle``). Raises TranslationError (naming the settings) when its files were not
    found, or the bundle is not set."""
    where = mtls.origin
    if mtls.issued:
        if not mtls.bundle:
            raise TranslationError(
                [
                    Problem(
                        where.path,
                        where.line,
                        "mesh.ca",
                        "xdsd's CA issues the mesh certificates, and its trust bundle is "
                        "not loaded",
                    )
                ]
            )
        return (secrets.mesh_bundle(mtls.bundle),)
    if mtls.per_workload and (not ip or is_wildcard(ip)):
        raise TranslationError(
            [
                Problem(
                    where.path,
                    where.line,
                    "mesh.mtls.certificate",
                    f"names each workload by {{instance_ip}}, and {node} has none: set the "
                    "node's instance_ip (xdsd bootstrap --instance-ip)",
                )
            ]
        )
    certificate, key = mtls.workload_files(node.namespace, node.service, ip)
    try:
        return secrets.mesh_identity(certificate, key, mtls.ca)
    except KeyError as missing:
        raise TranslationError(
            [
                Problem(
                    where.path,
                    where.line,
                    "mesh.mtls.certificate",
                    f"no mesh certificate for {node}: {missing.args[0]} was not found or is "
                    "not usable (see the load's warnings; xdsd looks for new files when services "
                    "are added, when something changes under the templates' directory, and on "
                    "SIGHUP)",
                )
            ]
        ) from None


def istio_mutual_problem(spec: OutboundCluster) -> Problem:
    """The problem of a rule asking for ISTIO_MUTUAL while mesh mutual TLS is off."""
    rule = spec.rule
    path, line = (rule.origin.path, rule.origin.line) if rule is not None else ("<none>", 0)
    return Problem(path, line, "trafficPolicy.tls.mode", ISTIO_MUTUAL_WITHOUT_MESH_TLS)
