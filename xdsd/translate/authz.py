"""AuthorizationPolicy → Envoy's RBAC filters (HTTP and network) and, for CUSTOM, the
``ext_authz`` filters of the extension providers.

Filters run in Istio's order: CUSTOM (ext_authz, for the requests its rules match), then
DENY, then ALLOW; AUDIT logs. No ALLOW policy means allow; ALLOW policies that match
nothing mean deny.
"""

from __future__ import annotations

from xdsd.model import Port
from xdsd.translate.workload_security import NamedFilter, WorkloadPolicies


def http_filters(policies: WorkloadPolicies, port: Port) -> list[NamedFilter]:
    """The HTTP filters enforcing ``policies``' AuthorizationPolicies on HTTP ``port``, in
    the order they run (before the router; after ``jwt_authn``)."""
    return []


def network_filters(policies: WorkloadPolicies, port: Port) -> list[NamedFilter]:
    """The network filters enforcing ``policies``' AuthorizationPolicies on TCP/TLS
    ``port``, in the order they run (before the TCP proxy)."""
    return []
