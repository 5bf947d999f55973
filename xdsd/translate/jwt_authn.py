"""RequestAuthentication → Envoy's ``jwt_authn`` HTTP filter (and the clusters its
``jwksUri``s are fetched through).

Istio's behaviour: an invalid token is a 401; a request without a token passes this
filter and is left to AuthorizationPolicy (``requestPrincipals``, ``request.auth.*``,
read from the filter's metadata).
"""

from __future__ import annotations

from xdsd.resources import Resource
from xdsd.translate.workload_security import NamedFilter, WorkloadPolicies


def http_filters(policies: WorkloadPolicies) -> list[NamedFilter]:
    """The HTTP filters (``jwt_authn``) validating the tokens ``policies``'
    RequestAuthentications accept; they run first, before the authorization filters."""
    return []


def jwks_clusters(policies: WorkloadPolicies) -> list[Resource]:
    """The clusters Envoy fetches ``policies``' ``jwksUri``s through (one per host and
    port), to be added to the class's snapshot."""
    return []
