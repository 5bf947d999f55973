"""Identities on xDS streams: what a gRPC stream proves about itself when xdsd's own CA
issues the proxies' certificates (``[mesh.ca]``), and the per-client secret it gets.

How this works: the transports do not know the CA (they may not import ``xdsd.ca``); the
daemon gives ``DiscoveryStreams`` an ``IdentityProvider`` (``xdsd.ca.identities``).
When a stream opens, its ``Credential`` is read from the stream itself: the token of
the ``authorization: Bearer TOKEN`` metadata (Envoy's ``initial_metadata``), else a
client certificate the ``NodeAuthorizer`` allows to speak for the node; the provider
checks it against what the node claims (``NodeIdentity``) and returns an
``IdentityLease``: the client's own resources (its ``default`` secret), which the stream
lays over its class's snapshot (``Snapshot.extend``), kept current by the provider
(renewal, re-issue by a new signing authority, revocation), which calls the stream back
whenever they change or the stream must end. A REST poller, which has no stream and
sends no metadata, proves itself with its client certificate only, and its lease is
renewed when it polls (``xdsd.transports.rest_identity``). A refusal is ``Refused``:
UNAUTHENTICATED for a credential that does not verify (reasons ``token_malformed``,
``token_forged``, ``token_expired``, ``token_revoked``, ``token_absent``),
PERMISSION_DENIED (``permission_denied``) for one that names someone else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from xdsd.cache.cache import ClientIdentity
from xdsd.resources import Resource
from xdsd.transports.limits import NodeIdentity, Refused

#: The metadata key the token arrives in, and its scheme.
AUTHORIZATION = "authorization"
BEARER = "bearer"
#: The longest ``authorization`` value read (a token is a few hundred bytes).
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Credential:
    """What a stream proved: an xdsd ``token`` (``kind`` "token"; never in ``repr``), or
    a client certificate the node authorizer allowed for the node (``kind``
    "certificate", ``sans`` its SANs)."""

    kind: str
    token: str = field(default="", repr=False)
    sans: tuple[str, ...] = ()


#: Called by a lease when its resources changed (None: send the client its new view)
#: or when its stream must end (the refusal to end it with).
LeaseListener = Callable[[Refused | None], None]


class IdentityLease(Protocol):
    """One stream's issued identity while the stream is open."""

    @property
    def identity(self) -> ClientIdentity:
        """What the operator views show of it (no key)."""
        ...

    def resources(self) -> Sequence[Resource]:
        """The client's own resources now (its ``default`` secret), laid over its class's
        snapshot."""
        ...

    def listen(self, listener: LeaseListener) -> None:
        """Call ``listener`` (on the event loop) whenever ``resources`` changed or the
        stream must end; the listener must not block or raise."""
        ...

    def close(self) -> None:
        """The stream ended: stop renewing (idempotent)."""
        ...

    def refresh(self) -> None:
        """A ``polled`` lease's holder polls (REST: no stream to call back): renew it now
        when it is due, so that ``resources`` are current. Raises the Refused that ended
        the lease, once it has ended."""
        ...


class IdentityProvider(Protocol):
    """Admits streams and issues their identities (``xdsd.ca.identities``)."""

    @property
    def enabled(self) -> bool:
        """True when streams must prove who they are (``[mesh.ca]`` is on)."""
        ...

    @property
    def issued_names(self) -> frozenset[str]:
        """The names of the resources a lease holds (``default``)."""
        ...

    def admit(
        self, node: NodeIdentity, credential: Credential | None, *, polled: bool = False
    ) -> IdentityLease | None:
        """The identity of the stream whose node claims ``node`` and which proved
        ``credential`` (None: nothing); None when the node gets no identity over xDS
        (proxyless gRPC). A ``polled`` lease (a REST poller's) is renewed by its
        ``refresh`` and calls no listener. Raises Refused (UNAUTHENTICATED for a missing
        or invalid credential, PERMISSION_DENIED for one that names another node)."""
        ...


def bearer_token(values: Sequence[str | bytes]) -> str | None:
    """The token of the ``authorization`` metadata ``values`` (None when there is none).
    Raises Refused (UNAUTHENTICATED, ``token_malformed``) for more than one value, a
    scheme other than Bearer, an empty or oversized token."""
    if not values:
        return None
    if len(values) > 1:
        raise unauthenticated("token_malformed", "more than one authorization metadata value")
    raw = values[0]
    if len(raw) > MAX_TOKEN_BYTES:
        raise unauthenticated(
            "token_malformed", f"the authorization metadata is over {MAX_TOKEN_BYTES} bytes"
        )
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise unauthenticated(
                "token_malformed", "the authorization metadata is not ASCII"
            ) from None
    scheme, _, token = raw.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token:
        raise unauthenticated("token_malformed", "the authorization metadata is not 'Bearer TOKEN'")
    return token


def unauthenticated(reason: str, message: str) -> Refused:
    """The refusal of a stream whose credential does not verify (``reason`` as counted)."""
    return Refused("UNAUTHENTICATED", 401, reason, message)


def permission_denied(message: str) -> Refused:
    """The refusal of a stream whose credential names another node."""
    return Refused("PERMISSION_DENIED", 403, "permission_denied", message)
