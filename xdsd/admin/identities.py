"""Workload identities as the operator's views show them (``/debug/clients``, the status
page, ``/metrics``): a client's ``ClientIdentity`` as JSON, and when its certificate counts
as *expiring soon*.

A certificate is renewed at ``renew_fraction`` of its life (``[mesh.ca]``, 0.5 by
default). It is *expiring soon* once less than half of what would be left at that point
remains, ``(1 - renew_fraction) / 2`` of its life (a quarter, by default): the renewal is
late enough that the operator should look. An expired certificate is expiring soon too.
Nothing here is secret: a ``ClientIdentity`` never holds a key or a token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xdsd.cache.cache import ClientIdentity, ClientStatus

#: The renewal point when the daemon does not say (``[mesh.ca] renew_fraction``'s default).
DEFAULT_RENEW_FRACTION = 0.5


def expiring_soon(
    identity: ClientIdentity, now: float, renew_fraction: float = DEFAULT_RENEW_FRACTION
) -> bool:
    """True when ``identity``'s certificate has less than ``(1 - renew_fraction) / 2`` of
    its life left at ``now`` (seconds since the epoch), or has expired. Its life counts
    from ``issued_at`` (``not_before`` is backdated for clock skew), else ``not_before``."""
    start = (identity.issued_at or identity.not_before).timestamp()
    not_after = identity.not_after.timestamp()
    left = not_after - now
    if left <= 0:
        return True
    return left < (not_after - start) * (1.0 - renew_fraction) / 2.0


def identity_json(
    identity: ClientIdentity, now: float, renew_fraction: float = DEFAULT_RENEW_FRACTION
) -> dict[str, Any]:
    """``identity`` as JSON: SPIFFE id, serial, validity and when it was made (seconds
    since the epoch; ``issued_at`` null when unknown), credential kind, token id, how many
    certificates this stream was issued, and at ``now`` the seconds left
    (``expires_in``) and the ``expiring_soon`` flag."""
    not_after = identity.not_after.timestamp()
    issued_at = identity.issued_at
    return {
        "spiffe_id": identity.spiffe_id,
        "serial": identity.serial,
        "not_before": identity.not_before.timestamp(),
        "issued_at": issued_at.timestamp() if issued_at is not None else None,
        "not_after": not_after,
        "expires_in": not_after - now,
        "expiring_soon": expiring_soon(identity, now, renew_fraction),
        "credential": identity.credential,
        "token_id": identity.token_id,
        "issued": identity.issued,
    }


def soonest_expiry(clients: Iterable[ClientStatus]) -> float | None:
    """The earliest ``not_after`` (seconds since the epoch) of the certificates that
    connected clients hold; None when none holds one."""
    found = [
        c.identity.not_after.timestamp() for c in clients if c.connected and c.identity is not None
    ]
    return min(found) if found else None
