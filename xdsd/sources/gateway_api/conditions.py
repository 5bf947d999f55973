"""Status conditions of Gateway API objects, with the API's type and reason names.

Kubernetes controllers write these into ``status``; xdsd cannot write into the
operator's files, so the conversion returns them (``Condition``) and the views show
them. These constructors keep the names in one place: a condition type with the reason
the API defines for each outcome. Pure.
"""

from __future__ import annotations

from xdsd.model.gateway_api import Condition
from xdsd.model.service import ResourceKey

# Condition types.
ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
PROGRAMMED = "Programmed"
CONFLICTED = "Conflicted"

# Reasons of a route's parent (``status.parents[].conditions``).
NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
NO_MATCHING_LISTENER_HOSTNAME = "NoMatchingListenerHostname"
NO_MATCHING_PARENT = "NoMatchingParent"
UNSUPPORTED_VALUE = "UnsupportedValue"
# Reasons of ResolvedRefs (routes and listeners).
REF_NOT_PERMITTED = "RefNotPermitted"
BACKEND_NOT_FOUND = "BackendNotFound"
INVALID_KIND = "InvalidKind"
INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
INVALID_ROUTE_KINDS = "InvalidRouteKinds"
# Reasons of a Gateway or listener.
PENDING = "Pending"
UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
INVALID = "Invalid"
HOSTNAME_CONFLICT = "HostnameConflict"
PROTOCOL_CONFLICT = "ProtocolConflict"
NO_CONFLICTS = "NoConflicts"
#: A Gateway's ``Accepted`` reason when some of its listeners are not served (True
#: while others are).
LISTENERS_NOT_VALID = "ListenersNotValid"
#: A route's ``Accepted`` False reason when a route of another type holds its
#: hostname on the listener (GEP-1294's ``RouteReasonConflicted``; the GRPCRoute API
#: asks for ``Accepted`` False there without naming a reason).
ROUTE_CONFLICTED = "Conflicted"


def ok(target: ResourceKey, type_: str, scope: str = "", message: str = "") -> Condition:
    """``type_`` True, with the reason the API gives a condition that holds: the type's
    own name (``Accepted``, ``ResolvedRefs``, ``Programmed``), ``NoConflicts`` for
    ``Conflicted`` (whose good state is False)."""
    if type_ == CONFLICTED:
        return Condition(target, type_, False, NO_CONFLICTS, message, scope)
    return Condition(target, type_, True, type_, message, scope)


def failed(
    target: ResourceKey, type_: str, reason: str, message: str, scope: str = ""
) -> Condition:
    """``type_`` False (True for ``Conflicted``) for ``reason``."""
    return Condition(target, type_, type_ == CONFLICTED, reason, message, scope)


def parent_scope(index: int) -> str:
    """The scope of a route's conditions for its ``parentRefs[index]``."""
    return f"parentRefs[{index}]"


def listener_scope(name: str) -> str:
    """The scope of a Gateway's conditions for its listener ``name``."""
    return f"listeners[{name}]"


def describe(condition: Condition) -> str:
    """One line, as the views show it:
    ``HTTPRoute ns/name parentRefs[0]: Accepted=False (NotAllowedByListeners): why``."""
    where = f"{condition.target} {condition.scope}".rstrip()
    state = "True" if condition.status else "False"
    tail = f": {condition.message}" if condition.message else ""
    return f"{where}: {condition.type}={state} ({condition.reason}){tail}"
