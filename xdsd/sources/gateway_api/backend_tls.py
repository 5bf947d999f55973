"""BackendTLSPolicy, as the TLS setting of a DestinationRule for the services it targets.

Pure. A BackendTLSPolicy says its target Services speak TLS and how to check them, so
xdsd makes every caller of such a service — the gateway's clusters for it, and also
sidecars' (the service speaks TLS to anyone: a plaintext caller would fail anyway) —
originate TLS, as a DestinationRule ``trafficPolicy.tls`` of mode SIMPLE would
(``translate/cluster_policy.py``):

- ``targetRefs[]``: Services of the policy's namespace (core group, kind ``Service``);
  ``sectionName`` names one port (by its name; the setting is that port's,
  ``portLevelSettings``), else the whole service. A target that names no Service is
  ``ResolvedRefs`` False ``InvalidKind``/``BackendNotFound`` for that target.
- ``validation.caCertificateRefs``: one CA file named by path
  (``{group: xdsd.dev, kind: File, name: PATH}``, relative to the config directory) →
  ``caCertificates``. ConfigMap- or Secret-held CAs, more than one reference, and
  ``wellKnownCACertificates: System`` (xdsd does not know where the proxy's system
  bundle is) are not served: the policy is not accepted (``Accepted`` False,
  ``NoValidCACertificate``; ``ResolvedRefs`` False ``InvalidCACertificateRef`` or
  ``InvalidKind``), never a connection that checks nothing.
- ``validation.hostname`` → the SNI, and the name the certificate is checked against;
  ``validation.subjectAltNames`` (Hostname or URI), when given, are checked instead.
- Two policies for one service port: the first by namespace/name holds, the other is
  ``Accepted`` False ``Conflicted``. A DestinationRule of the operator for a service a
  policy targets is an error naming both (the rule of two DestinationRules for one
  service), never one silently over the other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from xdsd.model import Service
from xdsd.model.gateway_api import BackendTLSPolicy, Condition
from xdsd.model.rules import ClientTLS, DestinationRule, PortTrafficPolicy, TLSMode, TrafficPolicy
from xdsd.model.service import CertificateRef, Origin, line_of
from xdsd.sources.gateway_api import conditions as cond

#: How a CA file is referred to by path (as Gateway listeners' certificates are).
FILE_GROUP = "xdsd.dev"
FILE_KIND = "File"
#: The reasons of a BackendTLSPolicy's conditions (the API's names).
NO_VALID_CA_CERTIFICATE = "NoValidCACertificate"
INVALID_CA_CERTIFICATE_REF = "InvalidCACertificateRef"
CONFLICTED = "Conflicted"


@dataclass(frozen=True, slots=True)
class BackendTLS:
    """What the BackendTLSPolicies give: a DestinationRule per targeted service, and
    every policy's conditions."""

    destination_rules: tuple[DestinationRule, ...] = ()
    conditions: tuple[Condition, ...] = ()


def client_tls(policy: BackendTLSPolicy, root: str) -> ClientTLS | Condition:
    """The TLS origination ``policy`` asks for (CA file absolute, under ``root`` when
    relative), or the condition saying why it cannot be served."""

    def refuse(reason: str, message: str) -> Condition:
        return cond.failed(policy.key, cond.RESOLVED_REFS, reason, message, "validation")

    if policy.well_known_ca_certificates:
        return cond.failed(
            policy.key,
            cond.ACCEPTED,
            NO_VALID_CA_CERTIFICATE,
            f"wellKnownCACertificates {policy.well_known_ca_certificates!r} is not "
            "served: xdsd does not know where the proxy's system CA bundle is; give "
            f"caCertificateRefs with a file ({{group: {FILE_GROUP}, kind: {FILE_KIND}}})",
            "validation",
        )
    refs = policy.ca_certificate_refs
    if len(refs) != 1:
        return refuse(INVALID_CA_CERTIFICATE_REF, f"give one CA file (got {len(refs)} references)")
    ref = refs[0]
    if (ref.group, ref.kind) != (FILE_GROUP, FILE_KIND):
        return refuse(
            cond.INVALID_KIND,
            f"a CA held by a {ref.kind or 'ConfigMap'} is not read: name a file "
            f"({{group: {FILE_GROUP}, kind: {FILE_KIND}, name: PATH}})",
        )
    path = os.path.abspath(os.path.join(root, ref.name))
    field = "spec.validation.caCertificateRefs[0]"
    where = Origin(policy.origin.path, line_of(policy.lines, field, policy.origin.line))
    sans = policy.subject_alt_names or (policy.hostname,)
    return ClientTLS(
        TLSMode.SIMPLE,
        ca_certificates=path,
        subject_alt_names=sans,
        sni=policy.hostname,
        refs=(CertificateRef(path, field, where),),
    )


def convert_backend_tls(
    policies: Sequence[BackendTLSPolicy], services: Sequence[Service], root: str = ""
) -> BackendTLS:
    """The DestinationRules and conditions of ``policies`` over ``services`` (module
    doc); CA paths relative to ``root``."""
    by_service: dict[Service, list[tuple[int, ClientTLS, BackendTLSPolicy]]] = {}
    owners: dict[tuple[str, str, int], BackendTLSPolicy] = {}
    conditions: list[Condition] = []
    for policy in sorted(policies, key=lambda p: p.key):
        tls = client_tls(policy, root)
        if isinstance(tls, Condition):
            conditions.append(tls)
            if tls.type != cond.ACCEPTED:
                conditions.append(
                    cond.failed(policy.key, cond.ACCEPTED, NO_VALID_CA_CERTIFICATE, tls.message, "")
                )
            continue
        accepted = True
        for i, target in enumerate(policy.target_refs):
            scope = f"targetRefs[{i}]"
            if target.group not in ("", "core") or (target.kind or "Service") != "Service":
                conditions.append(
                    cond.failed(
                        policy.key,
                        cond.RESOLVED_REFS,
                        cond.INVALID_KIND,
                        f"a BackendTLSPolicy targets Services, not {target.kind}",
                        scope,
                    )
                )
                accepted = False
                continue
            service = next(
                (
                    s
                    for s in services
                    if not s.entry and s.namespace == policy.namespace and s.name == target.name
                ),
                None,
            )
            port = 0
            if service is not None and target.section_name:
                found = next((p for p in service.ports if p.name == target.section_name), None)
                if found is None:
                    service = None
                else:
                    port = found.number
            if service is None:
                what = f"Service {policy.namespace}/{target.name}"
                if target.section_name:
                    what += f" port {target.section_name!r}"
                conditions.append(
                    cond.failed(
                        policy.key,
                        cond.RESOLVED_REFS,
                        cond.BACKEND_NOT_FOUND,
                        f"no {what}",
                        scope,
                    )
                )
                accepted = False
                continue
            owner = next(
                (
                    other
                    for (ns, name, number), other in owners.items()
                    if (ns, name) == (service.namespace, service.name)
                    and other is not policy
                    and (not port or not number or port == number)
                ),
                None,
            )
            if owner is not None:
                conditions.append(
                    cond.failed(
                        policy.key,
                        cond.ACCEPTED,
                        CONFLICTED,
                        f"BackendTLSPolicy {owner.namespace}/{owner.name} already sets TLS "
                        f"for Service {service.namespace}/{service.name}",
                        scope,
                    )
                )
                accepted = False
                continue
            owners.setdefault((service.namespace, service.name, port), policy)
            by_service.setdefault(service, []).append((port, tls, policy))
        if accepted:
            conditions.append(cond.ok(policy.key, cond.ACCEPTED))
            conditions.append(cond.ok(policy.key, cond.RESOLVED_REFS))
    rules: list[DestinationRule] = []
    for service, settings in by_service.items():
        first = settings[0][2]
        whole = next((tls for port, tls, _ in settings if not port), None)
        ports = tuple(
            PortTrafficPolicy(port, tls=tls)
            for port, tls, _ in sorted(settings, key=lambda s: s[0])
            if port
        )
        rules.append(
            DestinationRule(
                name=f"{service.name}-backendtlspolicy",
                host=service.fqdn,
                namespace=service.namespace,
                traffic_policy=TrafficPolicy(tls=whole, port_level_settings=ports),
                origin=first.origin,
            )
        )
    return BackendTLS(tuple(rules), tuple(conditions))
