"""References from Gateway API objects to other objects, and the ReferenceGrants that
permit the ones across namespaces.

A route's ``backendRefs`` (and a mirror's ``backendRef``) name a ``Service`` (core
group: the xdsd Service of that name in the namespace, ``port`` required to be one of
its ports when given), a ``networking.istio.io`` ``Hostname`` (the service answering
to that host: a ServiceEntry host, as Istio's conversion does) or a
``networking.istio.io`` ``ServiceEntry`` (the services of that entry, its first host).
A reference into another namespace holds only when a ReferenceGrant in the target's
namespace lets objects of the referrer's group, kind and namespace refer to the
target's group, kind and name (``RefNotPermitted`` otherwise). A Gateway's
``certificateRefs`` to Secrets follow the same rule. Pure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xdsd.model import Service
from xdsd.model.gateway_api import (
    FILE_REF_GROUP,
    FILE_REF_KIND,
    GATEWAY_GROUP,
    GatewayAPI,
    KubeGateway,
    ListenerTLS,
    ObjectRef,
    ReferenceGrant,
)
from xdsd.model.service import CertificateFile
from xdsd.sources.gateway_api import conditions as cond

#: Istio's API group, whose ``Hostname`` and ``ServiceEntry`` kinds are backends.
ISTIO_GROUP = "networking.istio.io"


@dataclass(frozen=True, slots=True)
class Resolved:
    """A reference resolved: ``service`` (None when it does not hold), and otherwise
    the ``ResolvedRefs`` reason and a message."""

    service: Service | None
    reason: str = ""
    message: str = ""


def permitted(
    grants: Sequence[ReferenceGrant],
    from_group: str,
    from_kind: str,
    from_namespace: str,
    to: ObjectRef,
    to_namespace: str,
) -> bool:
    """Whether an object (``from_group``, ``from_kind``) of ``from_namespace`` may refer
    to ``to`` in ``to_namespace``: always within one namespace, else when a
    ReferenceGrant of ``to_namespace`` lists both (its ``to`` entry with no name
    granting every object of that kind)."""
    if from_namespace == to_namespace:
        return True
    for grant in grants:
        if grant.namespace != to_namespace:
            continue
        if (from_group, from_kind, from_namespace) not in grant.from_:
            continue
        for group, kind, name in grant.to:
            if group == to.group and kind == to.kind and (not name or name == to.name):
                return True
    return False


def resolve_backend(
    ref: ObjectRef,
    route_kind: str,
    route_namespace: str,
    services: Sequence[Service],
    grants: Sequence[ReferenceGrant],
) -> Resolved:
    """The service ``ref`` (a backend of a ``route_kind`` in ``route_namespace``)
    names, or why none: ``InvalidKind``, ``RefNotPermitted``, ``BackendNotFound``.

    A ``Service`` is looked up by name in its namespace (the route's unless given;
    another needs a ReferenceGrant), a ``ServiceEntry`` by entry name likewise; an
    Istio ``Hostname`` names a literal host: a Service's full name
    (``NAME.NAMESPACE.svc.cluster.local``), a host a Service declares, or a ServiceEntry
    host, never a short name."""
    kind = ref.kind or "Service"
    namespace = ref.namespace or route_namespace
    what = f"{kind} {namespace}/{ref.name}"
    if (ref.group, kind) not in (
        ("", "Service"),
        (ISTIO_GROUP, "Hostname"),
        (ISTIO_GROUP, "ServiceEntry"),
    ):
        group = f"{ref.group}/" if ref.group else ""
        return Resolved(None, cond.INVALID_KIND, f"a backend cannot be a {group}{kind}")
    target = ObjectRef(ref.name, kind, ref.group)
    if not permitted(grants, GATEWAY_GROUP, route_kind, route_namespace, target, namespace):
        return Resolved(
            None,
            cond.REF_NOT_PERMITTED,
            f"no ReferenceGrant in namespace {namespace!r} lets a {route_kind} of "
            f"{route_namespace!r} refer to {what}",
        )
    found: Service | None = None
    if kind == "Service":
        found = next(
            (
                s
                for s in services
                if not s.entry and s.namespace == namespace and s.name == ref.name
            ),
            None,
        )
    elif kind == "Hostname":
        # a literal host: a service's full name, a host it declares, a ServiceEntry
        # host (whose fqdn is the host); never a short name, which would reach a
        # Service of any namespace without a ReferenceGrant
        host = ref.name.lower()
        found = next(
            (s for s in services if any(host == h.lower() for h in (s.fqdn, *s.hosts))), None
        )
    else:
        found = next(
            (s for s in services if s.entry == ref.name and s.namespace == namespace), None
        )
    if found is None:
        return Resolved(None, cond.BACKEND_NOT_FOUND, f"no {what}")
    # a UDPRoute's backends are UDP ports, every other route's stream ports
    ports = found.datagram_ports if route_kind == "UDPRoute" else found.ports
    if ref.port and all(p.number != ref.port for p in ports):
        udp = "UDP " if route_kind == "UDPRoute" else ""
        return Resolved(None, cond.BACKEND_NOT_FOUND, f"{what} has no {udp}port {ref.port}")
    return Resolved(found)


def secret_permitted(
    grants: Sequence[ReferenceGrant], gateway_namespace: str, ref: ObjectRef
) -> bool:
    """Whether a Gateway of ``gateway_namespace`` may use the certificate ``ref``."""
    target = ObjectRef(ref.name, ref.kind or "Secret", ref.group)
    return permitted(
        grants,
        GATEWAY_GROUP,
        "Gateway",
        gateway_namespace,
        target,
        ref.namespace or gateway_namespace,
    )


#: A certificateRef naming a certificate file by path rather than a Secret
#: (``{group: FILE_REF_GROUP, kind: FILE_REF_KIND, name: certs/gateway.pem}``); its
#: private key file is the listener's ``tls.options`` entry ``PRIVATE_KEY_OPTION``.
PRIVATE_KEY_OPTION = "xdsd.dev/private-key"
#: The pseudo-path under which a Secret's ``tls.crt``/``tls.key`` bytes are served:
#: ``<secret>/NAMESPACE/NAME/tls.crt`` (the loader gives the certificate files these
#: paths name the Secret's bytes).
SECRET_PATH_PREFIX = "<secret>"


def certificate_paths(
    gateway: KubeGateway, tls: ListenerTLS, api: GatewayAPI, root: str = ""
) -> tuple[tuple[str, str] | None, str, str]:
    """The (certificate, private key) paths of a listener's first certificateRef (as a
    SIMPLE server names them; a File's relative to ``root``, made absolute), or None with
    the ``ResolvedRefs`` reason and a message: ``InvalidCertificateRef`` (another kind, a
    Secret that is not there, a File without ``PRIVATE_KEY_OPTION``),
    ``RefNotPermitted`` (a Secret of another namespace without a ReferenceGrant). Later
    certificateRefs are not used (one certificate per listener)."""
    ref = tls.certificate_refs[0]
    if ref.group == FILE_REF_GROUP and ref.kind == FILE_REF_KIND:
        key = dict(tls.options).get(PRIVATE_KEY_OPTION, "")
        if not key:
            return (
                None,
                cond.INVALID_CERTIFICATE_REF,
                f"a File certificateRef needs its private key file in tls.options "
                f"{PRIVATE_KEY_OPTION!r}",
            )
        return (_absolute(root, ref.name), _absolute(root, key)), "", ""
    if ref.group or (ref.kind or "Secret") != "Secret":
        return (
            None,
            cond.INVALID_CERTIFICATE_REF,
            f"a certificateRef is a Secret or a {FILE_REF_GROUP} {FILE_REF_KIND}, not "
            f"{ref.group}/{ref.kind}",
        )
    namespace = ref.namespace or gateway.namespace
    if not secret_permitted(api.grants, gateway.namespace, ref):
        return (
            None,
            cond.REF_NOT_PERMITTED,
            f"no ReferenceGrant in namespace {namespace!r} lets Gateways of "
            f"{gateway.namespace!r} use Secret {namespace}/{ref.name}",
        )
    if not any(s.namespace == namespace and s.name == ref.name for s in api.secrets):
        return None, cond.INVALID_CERTIFICATE_REF, f"no Secret {namespace}/{ref.name}"
    base = f"{SECRET_PATH_PREFIX}/{namespace}/{ref.name}"
    return (f"{base}/tls.crt", f"{base}/tls.key"), "", ""


def _absolute(root: str, path: str) -> str:
    """``path`` relative to ``root`` (the config directory), absolute (no I/O)."""
    return os.path.abspath(os.path.join(root, path)) if root else path


def secret_files(api: GatewayAPI, paths: Iterable[str]) -> list[CertificateFile]:
    """The bytes behind the Secret pseudo-paths among ``paths`` (``tls.crt``,
    ``tls.key``, ``ca.crt`` of ``<secret>/NS/NAME``), from the Secrets of ``api``: what the
    certificate files of a load hold for them instead of reading the disk. A path whose
    Secret is gone is left out (the conversion has already refused its listener)."""
    by_key = {(s.namespace, s.name): s for s in api.secrets}
    out: list[CertificateFile] = []
    for path in paths:
        if not path.startswith(SECRET_PATH_PREFIX + "/"):
            continue
        namespace, _, rest = path[len(SECRET_PATH_PREFIX) + 1 :].partition("/")
        name, _, item = rest.partition("/")
        secret = by_key.get((namespace, name))
        if secret is None:
            continue
        data = {
            "tls.crt": secret.certificate,
            "tls.key": secret.private_key,
            "ca.crt": secret.ca_certificate,
        }.get(item, b"")
        out.append(CertificateFile(path, data))
    return out
