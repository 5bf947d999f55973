"""Istio's security kinds (``security.istio.io``): who may call a workload, how callers
prove who they are, and what mutual TLS its inbound side takes.

Every kind here is *enforced*: the sources refuse any field or value xdsd cannot
translate (fail closed), so a model object holds only what becomes Envoy configuration.
All three kinds select workloads the same way (``WorkloadSelector``): a policy in the root
namespace (``ROOT_NAMESPACE``) without a selector applies to the whole mesh, one in
another namespace without a selector to that namespace's workloads, and a selector picks
workloads by their node labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from xdsd.model.mesh_config import MTLSMode
from xdsd.model.service import DEFAULT_NAMESPACE, NO_ORIGIN, Origin, ResourceKey
from xdsd.model.service import FieldLines as FieldLines
from xdsd.model.service import line_of as line_of


@dataclass(frozen=True, slots=True)
class WorkloadSelector:
    """``selector.matchLabels``: the labels a workload's node must all have."""

    match_labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "match_labels", tuple(sorted(self.match_labels)))

    def selects(self, labels: Iterable[tuple[str, str]]) -> bool:
        """True when every label of the selector is among ``labels``."""
        have = set(labels)
        return all(pair in have for pair in self.match_labels)


class AuthorizationAction(Enum):
    """What an AuthorizationPolicy does with the requests its rules match."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


@dataclass(frozen=True, slots=True)
class Source:
    """``rules[].from[].source``: who the caller is. Every list is ORed within itself,
    the fields are ANDed, and a ``not_`` list excludes. ``trust_domains`` are the trust
    domains of the caller's SPIFFE id."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """``rules[].to[].operation``: what the request asks for (ports as written, numbers
    in strings as Istio has them)."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """``rules[].when[]``: ``key`` (e.g. ``request.headers[x-token]``) has one of
    ``values`` and none of ``not_values``."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    """One rule: it matches when any ``sources`` matches (or there are none), any
    ``operations`` matches (or none) and every condition holds. ``http_only`` names the
    fields of this rule that only HTTP requests have (path, line), for the warning a TCP
    port gets."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()
    http_only: FieldLines = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """Istio's AuthorizationPolicy. ``rules`` None means the policy has no ``rules``
    field (an ALLOW policy without rules allows nothing: ``spec: {}`` denies every
    request); ``rules`` ``(AuthorizationRule(),)`` is ``rules: [{}]`` (matches every
    request). ``provider`` is the extension provider a CUSTOM policy names. ``dry_run``
    is the ``istio.io/dry-run`` annotation: shadow rules, no enforcement. ``lines`` holds
    the lines of the fields translation may report about."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    selector: WorkloadSelector | None = None
    action: AuthorizationAction = AuthorizationAction.ALLOW
    provider: str = ""
    rules: tuple[AuthorizationRule, ...] | None = None
    dry_run: bool = False
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "key", ResourceKey("AuthorizationPolicy", self.namespace, self.name)
        )


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """Istio's PeerAuthentication: the mutual TLS mode of the selected workloads'
    inbound side (``mode`` None is UNSET: inherit), and per workload port
    (``port_modes``: (port, mode or None), sorted by port)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    selector: WorkloadSelector | None = None
    mode: MTLSMode | None = None
    port_modes: tuple[tuple[int, MTLSMode | None], ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "port_modes", tuple(sorted(self.port_modes)))
        object.__setattr__(
            self, "key", ResourceKey("PeerAuthentication", self.namespace, self.name)
        )


@dataclass(frozen=True, slots=True)
class JwtHeader:
    """``fromHeaders[]``: a header a token is read from, after ``prefix``."""

    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    """``outputClaimToHeaders[]``: a claim copied into a request header."""

    header: str
    claim: str


@dataclass(frozen=True, slots=True)
class JwtRule:
    """``jwtRules[]``: tokens of one issuer. ``jwks`` is the JWKS document (a string, as
    Istio has it; left out of ``repr``: a symmetric key in it signs tokens); else
    ``jwks_uri`` is fetched by Envoy. ``timeout_seconds`` bounds that fetch (0: Envoy's
    default)."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str = field(default="", repr=False)
    jwks_uri: str = ""
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    forward_original_token: bool = False
    timeout_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    """Istio's RequestAuthentication: the JWTs the selected workloads accept. An invalid
    token is refused (401); a request without one passes and is left to
    AuthorizationPolicy."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    selector: WorkloadSelector | None = None
    jwt_rules: tuple[JwtRule, ...] = ()
    origin: Origin = field(default=NO_ORIGIN, compare=False, repr=False)
    lines: FieldLines = field(default=(), compare=False, repr=False)
    key: ResourceKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "key", ResourceKey("RequestAuthentication", self.namespace, self.name)
        )


#: The objects of the security kinds.
SecurityObject = AuthorizationPolicy | PeerAuthentication | RequestAuthentication
