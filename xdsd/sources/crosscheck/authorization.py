"""AuthorizationPolicies: the warning an HTTP-only field gets when the policy applies to
a TCP or TLS port.

On a TCP or TLS port a request has no path, method, host, header or token, so
translation (``translate.authz``) does what Istio does: an ALLOW rule that needs such a
field never matches there, a DENY (AUDIT, CUSTOM) rule matches without it. That is
enforced whatever this module finds; the warning only tells the operator, at the field's
own line (``AuthorizationRule.http_only``).

Which workloads a policy reaches is known only from files here (nodes come later): a
*workload in scope* of a policy is a service of the mesh (an xdsd Service, or a host of a
mesh-internal ServiceEntry: what a sidecar's own service can be) in the policy's namespace
(any namespace for the root namespace ``istio-system``) and, when the policy has a
selector, with at least one endpoint (an endpoint of the file, or a WorkloadEntry the
entry selects) whose labels the selector selects. A service whose endpoints carry no
labels is out of scope of every policy with a selector (no warning: the rule is still
enforced as above on any node it applies to). A rule whose every operation names
``ports`` without the port's workload port (its ``targetPort``, else its number) does
not warn for that port. Gateways are not
considered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xdsd.errors import Problem, Severity
from xdsd.model import Location, Port, ResourceKey, Service
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.model.security import AuthorizationAction, AuthorizationPolicy, AuthorizationRule
from xdsd.sources.crosscheck.hosts import ServiceChange
from xdsd.sources.crosscheck.index import NONE, file_under, unindex

KIND = "AuthorizationPolicy"


def tcp_ports(svc: Service) -> tuple[Port, ...]:
    """The TCP and TLS ports of ``svc`` when a sidecar may front it (inside the mesh),
    else none."""
    if svc.location is not Location.MESH_INTERNAL:
        return ()
    return tuple(p for p in svc.ports if not p.protocol.is_http)


def in_scope(policy: AuthorizationPolicy, svc: Service) -> bool:
    """True when ``svc`` is a workload in scope of ``policy`` (see the module doc)."""
    if policy.namespace not in (ROOT_NAMESPACE, svc.namespace):
        return False
    selector = policy.selector
    return selector is None or any(selector.selects(ep.labels) for ep in svc.endpoints)


def _applies_on(rule: AuthorizationRule, port: Port) -> bool:
    """False when every operation of ``rule`` names ports and none is ``port``'s
    workload port (its ``targetPort``: policies name workload ports)."""
    ops = rule.operations
    if not ops or not all(op.ports for op in ops):
        return True
    number = str(port.workload_port)
    return any(number in op.ports for op in ops)


def _name(svc: Service) -> str:
    return svc.name if svc.entry else f"{svc.name}.{svc.namespace}"


def http_only_problems(policy: AuthorizationPolicy, services: Iterable[Service]) -> list[Problem]:
    """The warnings of ``policy``'s HTTP-only fields on the TCP/TLS ports of the
    ``services`` in its scope: one per field (by line), naming the
    first such port by service key and port number and how many more there are."""
    if not policy.rules or not any(rule.http_only for rule in policy.rules):
        return []
    targets = sorted(
        (
            (svc.key, port.number, svc, port)
            for svc in services
            if in_scope(policy, svc)
            for port in tcp_ports(svc)
        ),
        key=lambda t: (t[0], t[1]),
    )
    if not targets:
        return []
    action = policy.action
    if action is AuthorizationAction.ALLOW:
        effect = "this ALLOW rule never matches"
    else:
        effect = f"this {action.value} rule matches without it"
    out: list[Problem] = []
    for rule in policy.rules:
        if not rule.http_only:
            continue
        ports = [(svc, port) for _, _, svc, port in targets if _applies_on(rule, port)]
        if not ports:
            continue
        svc, port = ports[0]
        others = len(ports) - 1
        more = f" (and on {others} more TCP/TLS port{'s' if others > 1 else ''})" if others else ""
        message = (
            f"HTTP-only: on {port.protocol.value} port {port.number} of {_name(svc)} {effect}{more}"
        )
        for field, line in rule.http_only:
            line = line or policy.origin.line
            out.append(Problem(policy.origin.path, line, field, message, Severity.WARNING))
    out.sort(key=lambda p: p.line)
    return out


class HttpOnlyWarnings:
    """The HTTP-only warnings of every AuthorizationPolicy, by policy key, with the
    indexes that keep them current: the services with TCP/TLS ports by namespace, and
    the policies with HTTP-only fields by namespace (a root-namespace policy is checked
    again when any namespace's TCP services change)."""

    def __init__(self) -> None:
        self._tcp: dict[str, dict[ResourceKey, Service]] = {}
        self._policies: dict[str, set[ResourceKey]] = {}
        self._problems: dict[ResourceKey, list[Problem]] = {}

    def update(
        self,
        changed: Iterable[ResourceKey],
        services: Mapping[ResourceKey, ServiceChange],
        policies: Mapping[ResourceKey, object],
    ) -> None:
        """Check again the policies among the ``changed`` keys and those whose scope may
        hold a service of ``services`` (the changed services: old, new) with a TCP/TLS
        port before or after (``policies``: every AuthorizationPolicy by key)."""
        recheck = {k for k in changed if k.kind == KIND}
        for key, (old, new) in services.items():
            if not ((old is not None and tcp_ports(old)) or (new is not None and tcp_ports(new))):
                continue
            table = self._tcp.setdefault(key.namespace, {})
            if new is not None and tcp_ports(new):
                table[key] = new
            else:
                table.pop(key, None)
                if not table:
                    del self._tcp[key.namespace]
            recheck |= self._policies.get(key.namespace, NONE)
            recheck |= self._policies.get(ROOT_NAMESPACE, NONE)
        for key in recheck:
            policy = policies.get(key)
            if (
                not isinstance(policy, AuthorizationPolicy)
                or not policy.rules
                or not any(rule.http_only for rule in policy.rules)
            ):
                unindex(self._policies, key.namespace, key)
                self._problems.pop(key, None)
                continue
            self._policies.setdefault(key.namespace, set()).add(key)
            if key.namespace == ROOT_NAMESPACE:
                candidates: Iterable[Service] = [
                    s for table in self._tcp.values() for s in table.values()
                ]
            else:
                candidates = self._tcp.get(key.namespace, {}).values()
            file_under(self._problems, key, http_only_problems(policy, candidates))

    def problems(self) -> list[Problem]:
        """The warnings, by policy key."""
        return [p for key in sorted(self._problems) for p in self._problems[key]]
