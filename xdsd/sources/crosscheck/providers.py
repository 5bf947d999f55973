"""CUSTOM AuthorizationPolicies against the settings' extension providers.

A CUSTOM policy hands its requests to an external authorization server, declared in
xdsd's settings (``[[mesh.extension_providers]]``), which its sidecars reach through the
outbound cluster ``outbound|PORT||HOST`` of a mesh service. So the policy must name a
declared provider, and that provider's ``service`` must be the full host name of a
Service or ServiceEntry of the directory with its ``port``: otherwise the policy could
not be enforced, which is an error (fail closed) at the policy's ``provider.name``.

How this works: one pass over the mesh's AuthorizationPolicies after the other
cross-checks (cheap: a dict lookup per CUSTOM policy), so edits to the policies, the
services and the settings are all seen on the next load without an index of their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from xdsd.errors import Problem
from xdsd.model import Mesh
from xdsd.model.mesh_config import ExtensionProvider
from xdsd.model.security import AuthorizationAction, AuthorizationPolicy, line_of

#: The field a CUSTOM policy names its provider by (Istio's ``provider.name``).
PROVIDER_FIELD = "provider.name"


def provider_problems(mesh: Mesh, providers: Iterable[ExtensionProvider]) -> list[Problem]:
    """The errors of ``mesh``'s CUSTOM AuthorizationPolicies that name a provider
    ``providers`` does not declare, or one whose service or port the mesh lacks; each at
    the policy's ``provider.name`` line. A provider no policy names is not checked (its
    service may come later)."""
    by_name = {p.name: p for p in providers}
    out: list[Problem] = []
    for policy in mesh.authorization_policies:
        if policy.action is not AuthorizationAction.CUSTOM:
            continue
        message = _problem(mesh, policy, by_name)
        if message:
            line = line_of(policy.lines, PROVIDER_FIELD, policy.origin.line)
            out.append(Problem(policy.origin.path, line, PROVIDER_FIELD, message))
    return out


def _problem(
    mesh: Mesh, policy: AuthorizationPolicy, providers: dict[str, ExtensionProvider]
) -> str:
    """What is wrong with the provider ``policy`` names ("" when nothing is)."""
    provider = providers.get(policy.provider)
    if provider is None:
        declared = ", ".join(sorted(providers)) or "none"
        return (
            f"no extension provider {policy.provider!r} is declared in the settings "
            f"([[mesh.extension_providers]]; declared: {declared})"
        )
    where = f"provider {provider.name!r} (declared at {provider.origin})"
    service = mesh.service(provider.service, policy.namespace)
    if service is None:
        return (
            f"{where} names service {provider.service}, which no Service or ServiceEntry "
            "of the config directory defines"
        )
    if service.fqdn != provider.service:
        return f"{where} names service {provider.service}: write its full name {service.fqdn}"
    if service.port(provider.port) is None:
        ports = ", ".join(str(p.number) for p in service.ports) or "none"
        return (
            f"{where} names port {provider.port}, which {service.fqdn} lacks (its ports: {ports})"
        )
    return ""
