"""Clusters: one per service port and per DestinationRule subset, plus inbound clusters.

How this works: an outbound cluster is described by an ``OutboundCluster`` (service,
port, subset, effective traffic policy) and built for a ``ClusterFlavor``, the only thing
about a client that changes a cluster's bytes:

- ``ENVOY_ADS`` (Envoy over ADS, delta or rendered static, and MOSN): STATIC services are
  ``EDS`` clusters fetched with ``ads: {}``;
- ``ENVOY_REST``: the same, fetched by REST polling of ``xds_cluster``;
- ``GRPC`` (proxyless gRPC): EDS over ADS; gRPC implements only EDS and LOGICAL_DNS
  clusters and the ROUND_ROBIN/RING_HASH ``lb_policy`` values, so DNS services become
  LOGICAL_DNS and other load balancers are written as a ``load_balancing_policy`` list
  that falls back to round robin where the client lacks them.

DNS services get STRICT_DNS clusters (LOGICAL_DNS for DNS_ROUND_ROBIN) with their
endpoints inline (Envoy refuses host names in EDS), resolving IPv4 first. A LOGICAL_DNS
cluster resolves a single name, so it gets the first endpoint (as Istio does). Services
of resolution NONE (from ServiceEntries) get dynamic forward proxy clusters
(``forward_proxy``); gRPC, which has none, an empty EDS assignment. A service with an
active health check gets it on every cluster but gRPC's (proxyless gRPC does not
health-check). Names follow Istio: ``outbound|PORT|SUBSET|FQDN`` and ``inbound|PORT||``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2

from xdsd.errors import Problem, TranslationError
from xdsd.model import (
    DestinationRule,
    HealthCheck,
    Port,
    Resolution,
    Service,
    Subset,
    TrafficPolicy,
)
from xdsd.model.rules import SimpleLB
from xdsd.resources import CLUSTER, ENDPOINT, SECRET, Resource, pack
from xdsd.resources.references import references_of
from xdsd.translate.cluster_policy import (
    CONNECT_TIMEOUT,
    apply_health_check,
    apply_traffic_policy,
)
from xdsd.translate.config_sources import (
    HTTP_PROTOCOL_OPTIONS_KEY,
    config_source,
    duration,
    http2_protocol_options,
)
from xdsd.translate.endpoints import load_assignment, select_endpoints
from xdsd.translate.forward_proxy import make_forward_proxy_cluster
from xdsd.translate.node import ClientKind, ConfigSourceKind, NodeClass
from xdsd.translate.peer_authentication import add_plaintext_match
from xdsd.translate.wire import delimited, tag, top_level_fields

#: Where an application listens behind its sidecar.
LOCALHOST = "127.0.0.1"
#: How DNS clusters resolve names: IPv4 addresses when a name has any. Istio asks for
#: V4_ONLY on IPv4 proxies; xdsd does not know a proxy's address family, and Envoy's
#: default (AUTO: IPv6 first) resolves ``localhost`` to ``::1``, where IPv4 services do
#: not listen.
DNS_LOOKUP_FAMILY = cluster_pb2.Cluster.V4_PREFERRED


class ClusterFlavor(Enum):
    """The variants of a cluster that different clients need (see the module doc)."""

    ENVOY_ADS = "envoy-ads"
    ENVOY_REST = "envoy-rest"
    GRPC = "grpc"
    #: Proxyless gRPC with the mesh's certificates (``NodeClass.mesh_tls``).
    GRPC_MTLS = "grpc-mtls"

    @property
    def grpc(self) -> bool:
        """True for proxyless gRPC's flavors."""
        return self in (ClusterFlavor.GRPC, ClusterFlavor.GRPC_MTLS)


def cluster_flavor(node: NodeClass) -> ClusterFlavor:
    """The cluster flavor a node class receives."""
    if node.client is ClientKind.GRPC:
        return ClusterFlavor.GRPC_MTLS if node.mesh_tls else ClusterFlavor.GRPC
    if node.config_source is ConfigSourceKind.REST:
        return ClusterFlavor.ENVOY_REST
    return ClusterFlavor.ENVOY_ADS


def outbound_cluster_name(port: int, subset: str, fqdn: str) -> str:
    """Istio's outbound cluster name: ``outbound|9080|v1|reviews.default.svc.cluster.local``
    (empty subset: ``outbound|9080||…``)."""
    return f"outbound|{port}|{subset}|{fqdn}"


def inbound_cluster_name(port: int) -> str:
    """The cluster that leads to the local application behind service port ``port``."""
    return f"inbound|{port}||"


@dataclass(frozen=True, slots=True)
class OutboundCluster:
    """What an outbound cluster is made of: a service port, optionally narrowed to a
    subset, with the traffic policy that applies to it and the rule it came from.
    ``auto_mtls``: the policy's mesh mutual TLS was added by ``mesh_tls.with_mesh_tls``
    (no rule asked for TLS), so endpoints whose workload is DISABLE get plaintext
    (``peer_authentication.add_plaintext_match``)."""

    service: Service
    port: Port
    subset: Subset | None = None
    policy: TrafficPolicy | None = None
    rule: DestinationRule | None = None
    auto_mtls: bool = False

    @property
    def name(self) -> str:
        """The cluster (and ClusterLoadAssignment) name."""
        subset = self.subset.name if self.subset is not None else ""
        return outbound_cluster_name(self.port.number, subset, self.service.fqdn)

    @property
    def selector(self) -> tuple[tuple[str, str], ...]:
        """The labels an endpoint needs to belong to this cluster."""
        return self.subset.labels if self.subset is not None else ()

    @property
    def health_check(self) -> HealthCheck | None:
        """The service's active health check as this cluster sends it: an HTTP check
        without a ``host`` asks for the service's canonical name."""
        check = self.service.health_check
        if check is not None and check.is_http and not check.host:
            return replace(check, host=self.service.fqdn)
        return check


def outbound_clusters(service: Service, rule: DestinationRule | None) -> list[OutboundCluster]:
    """Every outbound cluster of ``service``: per port (its UDP ports after the others),
    the whole service and then each subset of ``rule`` in the rule's order."""
    out: list[OutboundCluster] = []
    # UDP ports get clusters too (a gateway's UDP listener forwards to them), but one
    # number is one cluster: a UDP port beside a stream port of its number shares it
    numbers = {p.number for p in service.routed_ports}
    datagrams = tuple(p for p in service.datagram_ports if p.number not in numbers)
    for port in (*service.routed_ports, *datagrams):
        if rule is None:
            out.append(OutboundCluster(service, port))
            continue
        number = port.number
        out.append(OutboundCluster(service, port, None, rule.policy_for("", number), rule))
        for subset in rule.subsets:
            policy = rule.policy_for(subset.name, number)
            out.append(OutboundCluster(service, port, subset, policy, rule))
    return out


def is_eds(spec: OutboundCluster, flavor: ClusterFlavor) -> bool:
    """True when the cluster built for ``flavor`` fetches its endpoints by EDS (then a
    ClusterLoadAssignment named like the cluster must be served with it)."""
    if spec.service.resolution is Resolution.STATIC:
        return True
    # gRPC has no STRICT_DNS and LOGICAL_DNS needs one endpoint: with none, an empty EDS
    # assignment says "no endpoints" in a form gRPC accepts.
    return flavor.grpc and not select_endpoints(spec.service, spec.port, spec.selector)


def build_outbound_cluster(spec: OutboundCluster, flavor: ClusterFlavor) -> Any:
    """The Envoy ``Cluster`` for ``spec`` as ``flavor`` clients need it.

    Raises TranslationError (path: the DestinationRule's file) for a load balancer xdsd
    cannot configure (PASSTHROUGH) and for TLS origination to a proxyless gRPC client.
    """
    name = spec.name
    if is_eds(spec, flavor):
        # Only the name differs between EDS clusters of one flavor, port and policy: their
        # wire bytes are a template's with the name written in (see ``EdsTemplate``).
        return cluster_pb2.Cluster.FromString(eds_template(spec, flavor).payload(name))
    cluster = cluster_pb2.Cluster(name=name)
    if spec.service.resolution is Resolution.NONE:
        _configure(cluster, spec, flavor)
        cluster.ClearField("lb_config")
        make_forward_proxy_cluster(cluster)
        return cluster
    endpoints = select_endpoints(spec.service, spec.port, spec.selector)
    logical = flavor.grpc or (spec.service.resolution is Resolution.DNS_ROUND_ROBIN)
    if logical and endpoints:
        cluster.type = cluster_pb2.Cluster.LOGICAL_DNS
        endpoints = endpoints[:1]
    else:
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
    if not flavor.grpc:
        cluster.dns_lookup_family = DNS_LOOKUP_FAMILY
    cluster.load_assignment.CopyFrom(load_assignment(name, spec.port, endpoints))
    _configure(cluster, spec, flavor)
    return cluster


def _configure(cluster: Any, spec: OutboundCluster, flavor: ClusterFlavor) -> None:
    """Everything of an outbound cluster that follows from its flavor, port, health check
    and policy."""
    check = spec.health_check
    if check is not None and not flavor.grpc:
        apply_health_check(cluster, spec.port, check)
    _set_load_balancer(cluster, spec, flavor)
    source = ConfigSourceKind.REST if flavor is ClusterFlavor.ENVOY_REST else ConfigSourceKind.ADS
    apply_traffic_policy(
        cluster,
        spec.port,
        spec.policy,
        grpc=flavor.grpc,
        rule=spec.rule,
        source=source,
    )
    if spec.auto_mtls and not flavor.grpc:
        add_plaintext_match(cluster)


_CLUSTER_NAME = tag(cluster_pb2.Cluster, "name")[1]
_EDS_CONFIG = tag(cluster_pb2.Cluster, "eds_cluster_config")[1]
_EDS_SERVICE_NAME = tag(cluster_pb2.Cluster.EdsClusterConfig, "service_name")[1]


@dataclass(frozen=True, slots=True)
class EdsTemplate:
    """The deterministic encoding of an EDS cluster without its name, cut where the name
    goes: a cluster named N is ``name(N) + before + eds_cluster_config(eds_config +
    service_name(N)) + after``, which is what ``encode`` gives for it (the encoder writes
    fields in number order; ``name`` is field 1, ``eds_cluster_config`` the field that
    follows ``type``, ``service_name`` the field after ``eds_config``; tested equal to
    ``Resource.of`` of the parsed cluster). ``secrets``: the SDS secrets the template's
    transport socket names (``references_of``), the same for every name."""

    before: bytes
    eds_config: bytes
    after: bytes
    secrets: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, encoded: bytes) -> EdsTemplate:
        """Cut the deterministic encoding of an unnamed EDS cluster (no ``name``, an
        ``eds_cluster_config`` without ``service_name``). Raises ValueError when the
        bytes are not of that shape."""
        fields = top_level_fields(encoded)
        spans = [span for number, span in fields if number == _EDS_CONFIG_NUMBER]
        if len(spans) != 1 or any(number == _NAME_NUMBER for number, _ in fields):
            raise ValueError("not an unnamed EDS cluster's encoding")
        start, body, end = spans[0]
        config = encoded[body:end]
        if any(number != _EDS_CONFIG_SOURCE_NUMBER for number, _ in top_level_fields(config)):
            raise ValueError("eds_cluster_config holds more than its config source")
        refs = references_of(cluster_pb2.Cluster.FromString(encoded))
        secrets = tuple(ref for ref in refs if ref[0] == SECRET)
        return cls(encoded[:start], config, encoded[end:], secrets)

    def payload(self, name: str) -> bytes:
        """The deterministic encoding of this cluster named ``name``."""
        raw = name.encode()
        return b"".join(
            (
                delimited(_CLUSTER_NAME, raw),
                self.before,
                delimited(_EDS_CONFIG, self.eds_config + delimited(_EDS_SERVICE_NAME, raw)),
                self.after,
            )
        )


_NAME_NUMBER = cluster_pb2.Cluster.DESCRIPTOR.fields_by_name["name"].number
_EDS_CONFIG_NUMBER = cluster_pb2.Cluster.DESCRIPTOR.fields_by_name["eds_cluster_config"].number
_EDS_CONFIG_SOURCE_NUMBER = cluster_pb2.Cluster.EdsClusterConfig.DESCRIPTOR.fields_by_name[
    "eds_config"
].number


def eds_cluster_resource(name: str, template: EdsTemplate) -> Resource:
    """``Resource.of`` the EDS cluster ``name`` of ``template``, made from its encoding
    without building, parsing or encoding a message (a memo build: ``BaseBuilders``)."""
    return Resource.encoded(
        name, CLUSTER, template.payload(name), ((ENDPOINT, name), *template.secrets)
    )


#: Unnamed EDS clusters' templates by (flavor, port, policy, health check); only
#: successes are kept, so a policy that cannot be translated raises again, naming each
#: rule that uses it.
_EDS_TEMPLATES: dict[
    tuple[ClusterFlavor, Port, TrafficPolicy | None, HealthCheck | None, bool], EdsTemplate
] = {}
_MAX_TEMPLATES = 4096


def eds_template(spec: OutboundCluster, flavor: ClusterFlavor) -> EdsTemplate:
    """The template of ``spec``'s EDS cluster for ``flavor`` (meshes have few distinct
    (flavor, port, policy, health check, auto mTLS) keys: each is built once). Raises
    TranslationError as ``build_outbound_cluster`` does."""
    key = (flavor, spec.port, spec.policy, spec.health_check, spec.auto_mtls)
    found = _EDS_TEMPLATES.get(key)
    if found is None:
        cluster = cluster_pb2.Cluster(type=cluster_pb2.Cluster.EDS)
        rest = flavor is ClusterFlavor.ENVOY_REST
        kind = ConfigSourceKind.REST if rest else ConfigSourceKind.ADS
        cluster.eds_cluster_config.eds_config.CopyFrom(config_source(kind))
        _configure(cluster, spec, flavor)
        found = EdsTemplate.of(cluster.SerializeToString(deterministic=True))
        if len(_EDS_TEMPLATES) >= _MAX_TEMPLATES:
            _EDS_TEMPLATES.clear()
        _EDS_TEMPLATES[key] = found
    return found


def build_inbound_cluster(port: Port) -> Any:
    """The STATIC cluster ``inbound|PORT||`` leading to ``127.0.0.1:targetPort``, where the
    application listens behind its sidecar (HTTP/2 upstream for HTTP2 and GRPC ports)."""
    name = inbound_cluster_name(port.number)
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.CopyFrom(duration(CONNECT_TIMEOUT))
    cla = cluster.load_assignment
    cla.cluster_name = name
    lb = cla.endpoints.add().lb_endpoints.add()
    sock = lb.endpoint.address.socket_address
    sock.address = LOCALHOST
    sock.port_value = port.effective_target_port
    if port.protocol.is_http2:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY].CopyFrom(
            http2_protocol_options()
        )
    return cluster


_ENVOY_LB = {
    SimpleLB.UNSPECIFIED: cluster_pb2.Cluster.LEAST_REQUEST,
    SimpleLB.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    SimpleLB.LEAST_CONN: cluster_pb2.Cluster.LEAST_REQUEST,
    SimpleLB.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    SimpleLB.RANDOM: cluster_pb2.Cluster.RANDOM,
}


def simple_lb(policy: TrafficPolicy | None) -> SimpleLB:
    """The simple load balancer a policy asks for (UNSPECIFIED when it says nothing)."""
    if policy is None or policy.load_balancer is None:
        return SimpleLB.UNSPECIFIED
    return policy.load_balancer.simple


def _set_load_balancer(cluster: Any, spec: OutboundCluster, flavor: ClusterFlavor) -> None:
    """Write ``spec``'s simple load balancer as ``flavor`` clients take it. Raises
    TranslationError for PASSTHROUGH."""
    simple = simple_lb(spec.policy)
    if simple is SimpleLB.PASSTHROUGH:
        raise TranslationError([_passthrough_problem(spec)])
    if not flavor.grpc:
        cluster.lb_policy = _ENVOY_LB[simple]
        return
    # Istio's default for proxyless gRPC is round robin, the one policy every gRPC
    # implementation has as an lb_policy value.
    if simple in (SimpleLB.UNSPECIFIED, SimpleLB.ROUND_ROBIN):
        cluster.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
        return
    preferred: Any = (
        random_pb2.Random() if simple is SimpleLB.RANDOM else least_request_pb2.LeastRequest()
    )
    picking = cluster_pb2.LoadBalancingPolicy()
    for message in (preferred, round_robin_pb2.RoundRobin()):
        policy = picking.policies.add()
        policy.typed_extension_config.name = message.DESCRIPTOR.full_name
        policy.typed_extension_config.typed_config.CopyFrom(pack(message))
    wrapper = wrr_locality_pb2.WrrLocality(endpoint_picking_policy=picking)
    outer = cluster.load_balancing_policy.policies.add()
    outer.typed_extension_config.name = wrapper.DESCRIPTOR.full_name
    outer.typed_extension_config.typed_config.CopyFrom(pack(wrapper))


def _passthrough_problem(spec: OutboundCluster) -> Problem:
    rule = spec.rule
    path, line = (rule.origin.path, rule.origin.line) if rule is not None else ("<none>", 0)
    field = "trafficPolicy.loadBalancer.simple"
    if rule is not None and spec.subset is not None and spec.subset.traffic_policy is not None:
        index = rule.subsets.index(spec.subset)
        field = f"subsets[{index}].{field}"
    return Problem(
        path,
        line,
        field,
        "PASSTHROUGH needs original-destination routing (iptables), which xdsd does not "
        "set up: use ROUND_ROBIN, LEAST_REQUEST or RANDOM",
    )
