"""Registered workloads: instances that join the mesh by connecting, not by a file.

A sidecar whose bootstrap names a WorkloadGroup becomes, while it is connected (and for
a grace period after), a workload of that group: the same thing a WorkloadEntry file
describes, merged into the same model. These are the values every part agrees on: the
registry that admits them, the stores that keep them (in the daemon, or in etcd shared
by replicas), the probes that judge their health and the views that show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from xdsd.model.service import Locality, ResourceKey

_NOWHERE = Locality()


class Health(Enum):
    """A registered workload's health as its group's probe last judged it (UNKNOWN: the
    group has no probe, or no verdict yet — served as healthy)."""

    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered workload.

    ``group`` is the WorkloadGroup's key; ``address`` the workload's IP (unique within a
    group: the registration's identity with the group); ``labels`` its own labels (the
    group's template labels are laid under them when it becomes an entry); ``node_id``
    the xDS node that registered it; ``replica`` the xdsd replica holding it (the one its
    sidecar is connected to, or was, during the grace period); ``since`` when it
    registered (seconds since the epoch); ``disconnected`` when its sidecar left (0
    while connected).
    """

    group: ResourceKey
    address: str
    node_id: str
    labels: tuple[tuple[str, str], ...] = ()
    locality: Locality = _NOWHERE
    replica: str = ""
    since: float = 0.0
    disconnected: float = 0.0
    health: Health = Health.UNKNOWN

    @property
    def key(self) -> str:
        """``NAMESPACE/GROUP/ADDRESS``: what a store files the registration under."""
        return f"{self.group.namespace}/{self.group.name}/{self.address}"


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """``[registry.etcd]``: where replicas keep registrations. ``endpoints`` are etcd's
    client URLs (``http://127.0.0.1:2379``); ``prefix`` the key prefix every xdsd key lives
    under; ``lease_ttl`` the TTL of each replica's lease (a dead replica's registrations
    go after it); ``timeout`` for one request."""

    endpoints: tuple[str, ...]
    prefix: str = "/xdsd"
    lease_ttl: timedelta = timedelta(seconds=10)
    timeout: timedelta = timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """``[registry]``: ``grace`` is how long a registration outlives its sidecar's
    disconnection (a reconnect within it keeps the registration without a flap);
    ``max_registrations`` bounds the registry; ``replica`` names this daemon among
    replicas (default: host name and process id); ``etcd`` None keeps registrations in
    the daemon (the embedded default)."""

    grace: timedelta = timedelta(seconds=10)
    max_registrations: int = 10_000
    replica: str = ""
    etcd: EtcdSettings | None = None


DEFAULT_REGISTRY_SETTINGS = RegistrySettings()
