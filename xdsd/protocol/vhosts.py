"""``VirtualHostIndex``: which virtual host a VHDS alias names, as Envoy would match it.

How this works: Envoy asks for a virtual host it lacks by an alias
``ROUTE_CONFIG/HOST`` (the request's host, with its port if it had one). The index,
built once per snapshot (``Snapshot.derived``) from its ``VirtualHost`` resources (named
``ROUTE_CONFIG/VHOST``, see ``xdsd.translate.vhds``), resolves an alias the way Envoy
picks a virtual host for a host: an exact domain first, then the longest suffix wildcard
(``*.example.com``), then the longest prefix wildcard (``example.*``), case-insensitive;
the catch-all ``*`` never occurs (such configurations are not split). The route
configuration part is what precedes the last ``/`` (a host has no ``/``; a route
configuration name may). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.route.v3 import route_components_pb2, route_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.resources import ROUTE, VIRTUAL_HOST, Resource

#: The longest alias a stream may subscribe to (a route configuration name and a host).
MAX_ALIAS_LENGTH = 1024
#: How many VHDS aliases one stream keeps; beyond it, it forgets the least recently asked
#: (``xdsd.protocol.delta``). Envoy subscribes one per distinct Host header it saw.
MAX_VIRTUAL_HOST_NAMES = 4096


class VirtualHostIndex:
    """The domains of a snapshot's virtual hosts, per route configuration."""

    __slots__ = ("_exact", "_prefix", "_suffix")

    def __init__(self, bucket: Mapping[str, Resource]) -> None:
        self._exact: dict[tuple[str, str], str] = {}
        self._suffix: dict[str, list[tuple[str, str]]] = {}
        self._prefix: dict[str, list[tuple[str, str]]] = {}
        for name, resource in bucket.items():
            config = name.rpartition("/")[0]
            vhost = resource.message
            assert isinstance(vhost, route_components_pb2.VirtualHost)
            for domain in vhost.domains:
                domain = domain.lower()
                if domain.startswith("*") and len(domain) > 1:
                    self._suffix.setdefault(config, []).append((domain[1:], name))
                elif domain.endswith("*") and len(domain) > 1:
                    self._prefix.setdefault(config, []).append((domain[:-1], name))
                elif domain != "*":
                    self._exact.setdefault((config, domain), name)
        for table in (self._suffix, self._prefix):
            for entries in table.values():
                entries.sort(key=lambda e: -len(e[0]))  # longest first, stable

    def resolve(self, alias: str) -> str | None:
        """The name of the virtual host ``alias`` (``ROUTE_CONFIG/HOST``) resolves to;
        None when none matches (or the alias has no ``/``)."""
        config, sep, host = alias.rpartition("/")
        if not sep or not host:
            return None
        host = host.lower()
        found = self._exact.get((config, host))
        if found is not None:
            return found
        for suffix, name in self._suffix.get(config, ()):
            if host.endswith(suffix) and len(host) > len(suffix):
                return name
        for prefix, name in self._prefix.get(config, ()):
            if host.startswith(prefix) and len(host) > len(prefix):
                return name
        return None


def _build(snapshot: Snapshot) -> VirtualHostIndex:
    return VirtualHostIndex(snapshot.get(VIRTUAL_HOST))


def index_of(snapshot: Snapshot) -> VirtualHostIndex:
    """The snapshot's index, built on first use and kept with the snapshot."""
    return snapshot.derived(VirtualHostIndex, _build)


class _VhdsConfigs:
    """The key of ``vhds_configs`` in ``Snapshot.derived``."""


def _vhds_configs(snapshot: Snapshot) -> frozenset[str]:
    out = []
    for name, resource in snapshot.get(ROUTE).items():
        config = resource.message
        assert isinstance(config, route_pb2.RouteConfiguration)
        if config.HasField("vhds"):
            out.append(name)
    return frozenset(out)


def vhds_configs(snapshot: Snapshot) -> frozenset[str]:
    """The names of the snapshot's route configurations served by VHDS (those with a
    ``vhds`` source), computed once per snapshot."""
    return snapshot.derived(_VhdsConfigs, _vhds_configs)
