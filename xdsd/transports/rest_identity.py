"""Identities of REST pollers while xdsd's own CA issues the mesh's certificates
(``[mesh.ca]``).

A REST poll carries no metadata, so no token: a REST proxy proves who it is with the
client certificate of its xDS connection alone (``rest_credential``), judged as a gRPC
stream's is — ``NodeAuthorizer`` must allow it to speak for the node it claims (its mesh
SPIFFE id, or an ``authorized_nodes`` grant). A poll without one is refused with
``REST_CERTIFICATE_REQUIRED`` (403); proxyless clients need none (they get no key).

How this works: a poller has no stream to tie a lease to, push a renewed secret over or
end, so ``PolledIdentities`` holds one lease per REST client (its client id, made of its
node id) and credential, asked of the ``IdentityProvider`` as ``polled``:

- *issued on first need*: the first SDS poll naming the client's own secret (one of
  the provider's ``issued_names``) admits it; polls of other
  types, and SDS polls of other secrets (``ROOTCA``), are answered from the class
  snapshot as they were, so no other version moves;
- *renewed when polled*: every such poll calls ``IdentityLease.refresh``, which renews a
  lease past its renewal time; that poll's view holds the new secret, so it is sent at
  once (REST has no push: a renewal lands on the poll that follows the renewal time);
- *one lease per client and credential*: a poll claiming another node (service,
  namespace, role, labels) or presenting another certificate than the lease was issued
  for closes that lease and admits a new one, so a lease never serves a claim it was not
  issued for;
- *dropped when the client stops polling*: a lease not polled for ``idle_timeout``
  seconds (30 s, the window in which the REST sessions and the cache still hold a
  poller) is closed, by a timer on the event loop (between one and two windows after its
  last poll) and on every poll; the least recently polled goes first beyond
  ``max_leases`` (the REST sessions' bound on clients).

A view is ``Snapshot.extend(class snapshot, lease.resources())``, kept per client until
either changes. The ``default`` secret it carries goes to that client only; the JSON
rendered of it is not cached (``rest.RestDiscovery``). Not thread-safe: one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from xdsd.cache.snapshot import Snapshot
from xdsd.resources import SECRET, Resource
from xdsd.transports.identity import Credential, IdentityLease, IdentityProvider
from xdsd.transports.limits import NodeAuthorizer, NodeIdentity, Refused, certificate_sans

#: The refusal of a REST poll from a proxy without a client certificate that may speak
#: for its node, while xdsd's CA issues the mesh's certificates.
REST_CERTIFICATE_REQUIRED = Refused(
    "PERMISSION_DENIED",
    403,
    "identity_over_rest",
    "xdsd's CA ([mesh.ca]) gives a REST client an identity only for a client certificate "
    "(a REST poll cannot carry a token): serve REST over TLS with tls_client_ca and give "
    "the proxy a certificate whose SAN is its mesh identity (spiffe://TRUST_DOMAIN/ns/NS/"
    "sa/SERVICE) or an authorized_nodes grant (xdsd bootstrap --xds-tls-cert/--xds-tls-key), "
    "or connect it over gRPC with a token",
)


def rest_credential(
    authorizer: NodeAuthorizer | None, peer_cert: Mapping[str, Any] | None
) -> Credential:
    """The credential of a REST poll whose verified client certificate is ``peer_cert``,
    once ``authorizer`` has allowed it for the poll's node (``NodeAuthorizer.check``).
    Raises ``REST_CERTIFICATE_REQUIRED`` without a certificate, or when no authorizer
    judges certificates (no ``tls_client_ca``: a certificate then proves nothing)."""
    if authorizer is None or not authorizer.enforcing or not peer_cert:
        raise REST_CERTIFICATE_REQUIRED
    return Credential("certificate", sans=certificate_sans(peer_cert))


@dataclass(slots=True, eq=False)
class _Held:
    """One client's lease, what it was issued for, and its last view (mutable, private)."""

    node: NodeIdentity
    credential: Credential
    lease: IdentityLease
    seen: float
    base: Snapshot | None = None
    resources: tuple[Resource, ...] = ()
    view: Snapshot | None = None


class PolledIdentities:
    """The leases of REST pollers (see the module docstring): issued by ``provider``,
    dropped after ``idle_timeout`` seconds without a poll, at most ``max_leases`` (least
    recently polled dropped first); ``clock`` is monotonic seconds (injectable for
    tests)."""

    def __init__(
        self,
        provider: IdentityProvider,
        *,
        idle_timeout: float = 30.0,
        max_leases: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_timeout <= 0 or max_leases < 1:
            raise ValueError("idle_timeout must be positive and max_leases at least 1")
        self.provider = provider
        self.idle_timeout = idle_timeout
        self.max_leases = max_leases
        self.clock = clock
        self._held: OrderedDict[str, _Held] = OrderedDict()  # least recently polled first
        self._timer: asyncio.TimerHandle | None = None

    def wants(self, type_url: str, names: frozenset[str]) -> bool:
        """True when a poll of ``type_url`` for ``names`` may carry the client's own
        resources: an SDS poll naming one of them (SDS has no wildcard)."""
        return type_url == SECRET and not names.isdisjoint(self.provider.issued_names)

    def view(
        self, client_id: str, node: NodeIdentity, credential: Credential, snapshot: Snapshot
    ) -> tuple[Snapshot, IdentityLease | None]:
        """What client ``client_id``, whose node claims ``node`` and which proved
        ``credential``, is answered from of its class's ``snapshot``, and its lease (None:
        it gets none, a proxyless client): the snapshot with its own resources laid over
        it. Admits a lease on first need, renews it when due. Raises Refused (from the
        provider: the credential does not hold, no identity can be issued)."""
        now = self.clock()
        self.expire(now)
        held = self._held.get(client_id)
        if held is not None and (held.node != node or held.credential != credential):
            self.drop(client_id)  # another claim or certificate: not this lease's
            held = None
        if held is None:
            lease = self.provider.admit(node, credential, polled=True)
            if lease is None:
                return snapshot, None
            held = self._held[client_id] = _Held(node, credential, lease, now)
            while len(self._held) > self.max_leases:
                _, oldest = self._held.popitem(last=False)
                oldest.lease.close()
            self._arm()
        else:
            held.seen = now
            self._held.move_to_end(client_id)
        try:
            held.lease.refresh()
        except Refused:
            self.drop(client_id)
            raise
        resources = tuple(held.lease.resources())
        if (
            held.view is None
            or held.base is not snapshot
            or len(resources) != len(held.resources)
            or any(a is not b for a, b in zip(resources, held.resources, strict=True))
        ):
            held.base, held.resources = snapshot, resources
            held.view = Snapshot.extend(snapshot, resources)
        return held.view, held.lease

    def lease(self, client_id: str) -> IdentityLease | None:
        """The lease client ``client_id`` holds now, if any."""
        held = self._held.get(client_id)
        return held.lease if held is not None else None

    def drop(self, client_id: str) -> None:
        """Close the lease of ``client_id``, if it holds one."""
        held = self._held.pop(client_id, None)
        if held is not None:
            held.lease.close()

    def expire(self, now: float | None = None) -> list[str]:
        """Close the leases of clients that have not polled for ``idle_timeout`` seconds
        (at ``now``, default the clock); returns their client ids."""
        cutoff = (self.clock() if now is None else now) - self.idle_timeout
        gone: list[str] = []
        while self._held:
            client_id, held = next(iter(self._held.items()))
            if held.seen > cutoff:
                break
            del self._held[client_id]
            held.lease.close()
            gone.append(client_id)
        return gone

    def close(self) -> None:
        """Close every lease and stop the timer (the REST listener shut down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._held:
            self._held.popitem(last=False)[1].lease.close()

    def __len__(self) -> int:
        """How many leases are held."""
        return len(self._held)

    def _arm(self) -> None:
        """Have ``expire`` run ``idle_timeout`` from now while leases are held (when an
        event loop runs: synchronous callers rely on ``view`` expiring)."""
        if self._timer is not None or not self._held:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.idle_timeout, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.expire()
        self._arm()
