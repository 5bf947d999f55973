"""``RestSessions``: what each REST client holds, and make-before-break for REST polling.

How this works: an Envoy polling over REST runs one poller per (type, resource names): one
for CDS, one for LDS, one per EDS cluster and one per RDS route configuration, each on its
own timer, with no ordering between them. A poll's ``version_info`` is the version of the
last response that poller applied. ``RestSessions`` remembers, per client and per poller,
the content of the last few responses it served, by version, so each poll says exactly what
the client now holds for that poller: the content served at ``version_info``; nothing for
``""``; unknown for a version neither served nor confirmed here. A poll that already
carries the version it would be sent confirms that content as held (versions are content
hashes), so a restarted xdsd learns what its clients hold without resending anything.

Each poll is answered from the snapshot (``fetch.select``) by these rules, in order:

1. Not modified: the poller holds the version it would be sent: 304.
2. Not applied: the version last served to a poller is outstanding until a poll reports it
   (``Ack``). A poll that reports another version is ``NotApplied``: the client rejected
   it (REST carries no ``error_detail``), and it is answered 304 rather than sent again
   while it is current. An empty ``version_info`` may as well be a restarted client: it
   clears what was outstanding, reporting nothing.
3. Adds (LDS, RDS): a new version whose routes (or tcp_proxy) reference clusters the
   client's CDS holdings lack is held back: 304, so the client keeps its config, until a
   CDS poll has reported holding them; then the next LDS/RDS poll gets it. Envoy warms a
   new cluster (polls its endpoints) as soon as it applies CDS, before its next CDS poll,
   so "CDS held" is the condition. Unknown CDS holdings (no CDS poll yet, ``""``, or a
   version neither served nor confirmed here) hold nothing back, and neither do clusters
   that no CDS poller of the client would be sent.
4. Removals (CDS): clusters the client holds that the snapshot dropped stay in its CDS
   response while a listener or route configuration it holds still references them (all
   of them while any LDS/RDS poller's holdings are unknown), as the very resources it
   holds, at version ``<snapshot version>+<hash of the kept>``. Once its LDS/RDS polls
   report versions that no longer reference them, the next CDS poll drops them.

CDS never waits (it always carries every cluster of the snapshot, plus the kept ones), so
LDS/RDS wait at most one CDS round trip and nothing deadlocks. If the client rejects the
CDS version, what needs its new clusters stays held: the client keeps working config. EDS
and SDS polls are never held: an EDS poll is for one cluster, its version depends only on
its names (``Snapshot.version_for``), and Envoy ignores an empty ClusterLoadAssignment
response for a cluster it still has.

Memory is bounded: per poller at most ``max_versions`` served versions, each a reference to
a content shared by every client it was served to (built once per content, with the
clusters it references); per client at most ``max_pollers`` pollers of each type; at most
``max_clients`` clients. A poller silent for ``idle_timeout`` seconds is dropped (Envoy
stops polling a route configuration no listener uses any more, and what it held must stop
keeping clusters); a client silent that long is forgotten, and ``PollAnswer.forgotten``
names it so the transport can close its status. Time comes from the injected ``clock``.

The hot path is a few dict lookups and the selection; set operations over names happen only
while a client's CDS holdings differ from the snapshot, and when an LDS/RDS version is
about to be sent.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import Ack, NotApplied, Response
from xdsd.protocol.fetch import NotModified, Selection, is_wildcard, select
from xdsd.resources import CLUSTER, LISTENER, ROUTE, Resource, TypeUrl, Version

#: The types whose holdings are remembered: the clusters, and what references them.
_HELD_TYPES = frozenset({CLUSTER, LISTENER, ROUTE})
#: The types whose content references clusters.
_REFERRING_TYPES = (LISTENER, ROUTE)


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """What to do with one poll.

    ``answer`` is the Response to send (200) or NotModified (304). ``report`` is what the
    poll says about the version last served to its poller (``Ack``, ``NotApplied``, or
    None when nothing was outstanding); record it. ``forgotten`` names the clients that
    were silent for too long and are forgotten now (close their status).
    """

    answer: Response | NotModified
    report: Ack | NotApplied | None
    forgotten: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class _Content:
    """A content served for one type at one version, shared by every client it was
    served to: the resources by name and (LDS, RDS) the clusters they reference."""

    resources: Mapping[str, Resource]
    clusters: frozenset[str]


_NOTHING = _Content(MappingProxyType({}), frozenset())


@dataclass(slots=True, eq=False)
class _Poller:
    """One poller of a client (mutable, private)."""

    seen: float
    held_version: str = ""  # version_info of its latest poll
    held: _Content | None = _NOTHING  # what that version carries; None: unknown
    outstanding: Version | None = None  # last served, not yet reported back
    served: OrderedDict[Version, _Content] = field(default_factory=OrderedDict)


@dataclass(slots=True, eq=False)
class _Client:
    """The pollers of one client, per type, least recently polled first."""

    seen: float
    pollers: dict[TypeUrl, OrderedDict[frozenset[str], _Poller]] = field(default_factory=dict)


class RestSessions:
    """The REST pollers of every client, answered with make-before-break (module docs).

    ``clock`` returns seconds (monotonic). A poller or client that has not polled for
    ``idle_timeout`` seconds is forgotten; ``max_clients``, ``max_pollers`` (per client and
    type), ``max_versions`` (per poller) and ``max_contents`` (shared contents) bound the
    memory, least recently used first. Not thread-safe: one event loop.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_timeout: float = 30.0,
        max_clients: int = 65536,
        max_pollers: int = 4096,
        max_versions: int = 4,
        max_contents: int = 1024,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if min(max_clients, max_pollers, max_versions, max_contents) < 1:
            raise ValueError("every max_* bound must be at least 1")
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._max_clients = max_clients
        self._max_pollers = max_pollers
        self._max_versions = max_versions
        self._max_contents = max_contents
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._contents: OrderedDict[tuple[TypeUrl, Version], _Content] = OrderedDict()

    def on_poll(
        self,
        client_id: str,
        snapshot: Snapshot,
        type_url: TypeUrl,
        resource_names: Iterable[str],
        version_info: str,
    ) -> PollAnswer:
        """Answer one poll of client ``client_id`` from its node class's ``snapshot``.

        The response carries the requested resources (plus, for CDS, the removed clusters
        the client must keep), in name order, with no nonce. Raises ProtocolError
        (NOT_FOUND) for a type this server does not serve, before remembering anything.
        """
        names = frozenset(resource_names)
        selection = select(snapshot, type_url, names)
        now = self._clock()
        forgotten: list[str] = []
        client = self._client(client_id, now, forgotten)
        forgotten.extend(self._expire(now))
        poller = self._poller(client, type_url, names, now)
        fresh = poller.held_version == "" and poller.outstanding is None
        report = _observe(poller, type_url, version_info)
        if fresh and version_info and version_info == selection.version:
            # A new poller already holding the current version (xdsd restarted): that
            # counts as acknowledged, and it is answered 304 below.
            report = Ack(type_url, selection.version, "")
        if type_url == CLUSTER:
            selection = self._keep_referenced(client, poller, selection)
        rejected = report.served_version if isinstance(report, NotApplied) else None
        answer = self._answer(client, poller, snapshot, selection, version_info, rejected)
        return PollAnswer(answer, report, tuple(forgotten))

    def __len__(self) -> int:
        """How many clients are remembered."""
        return len(self._clients)

    @property
    def idle_timeout(self) -> float:
        """Seconds without a poll after which a client is forgotten."""
        return self._idle_timeout

    @property
    def max_clients(self) -> int:
        """How many clients are remembered at most."""
        return self._max_clients

    def poller_count(self) -> int:
        """How many pollers are remembered, over every client."""
        return sum(len(p) for c in self._clients.values() for p in c.pollers.values())

    def settled(self, client_id: str, type_url: TypeUrl) -> bool:
        """True when every poller of ``type_url`` of the client has reported holding what
        it was last served (nothing is outstanding): the client then holds the last
        response served for the type, whichever poller it went to."""
        client = self._clients.get(client_id)
        if client is None:
            return False
        pollers = client.pollers.get(type_url)
        return pollers is None or all(p.outstanding is None for p in pollers.values())

    # -- the rules ---------------------------------------------------------------------

    def _answer(
        self,
        client: _Client,
        poller: _Poller,
        snapshot: Snapshot,
        selection: Selection,
        version_info: str,
        rejected: Version | None,
    ) -> Response | NotModified:
        type_url, version = selection.type_url, selection.version
        if version == version_info:
            if poller.held is None and type_url in _HELD_TYPES:
                poller.held = self._content(selection)  # same version, same content
            return NotModified(type_url, version)
        if version == rejected:
            return NotModified(type_url, version)
        if type_url in _REFERRING_TYPES:
            missing = _missing_clusters(client, snapshot, self._content(selection).clusters)
            if missing:
                return NotModified(type_url, Version(version_info), missing)
        poller.outstanding = version
        if type_url in _HELD_TYPES:
            poller.served[version] = self._content(selection)
            poller.served.move_to_end(version)
            while len(poller.served) > self._max_versions:
                poller.served.popitem(last=False)
        return selection.response()

    def _keep_referenced(self, client: _Client, poller: _Poller, selection: Selection) -> Selection:
        """CDS: ``selection`` plus the clusters the poller holds, the snapshot dropped, and
        the client's listeners or route configurations still reference."""
        held = poller.held
        if held is None or not held.resources or poller.held_version == selection.version:
            return selection
        gone = held.resources.keys() - selection.resources.keys()
        if not gone:
            return selection
        referenced = _referenced_clusters(client)
        kept = gone if referenced is None else gone & referenced
        return selection.with_kept({n: held.resources[n] for n in kept})

    # -- memory ------------------------------------------------------------------------

    def _content(self, selection: Selection) -> _Content:
        """The shared content of ``selection``, made once per (type, version)."""
        key = (selection.type_url, selection.version)
        found = self._contents.get(key)
        if found is not None:
            self._contents.move_to_end(key)
            return found
        clusters: frozenset[str] = frozenset()
        if selection.type_url in _REFERRING_TYPES:
            clusters = frozenset(
                name
                for r in selection.resources.values()
                for type_url, name in r.references
                if type_url == CLUSTER
            )
        found = self._contents[key] = _Content(selection.resources, clusters)
        while len(self._contents) > self._max_contents:
            self._contents.popitem(last=False)
        return found

    def _expire(self, now: float) -> list[str]:
        """Forget the clients that have not polled for ``idle_timeout``; returns their ids."""
        cutoff = now - self._idle_timeout
        forgotten: list[str] = []
        while self._clients:
            client_id, client = next(iter(self._clients.items()))
            if client.seen > cutoff:
                break
            del self._clients[client_id]
            forgotten.append(client_id)
        return forgotten

    def _client(self, client_id: str, now: float, forgotten: list[str]) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client(now)
            while len(self._clients) > self._max_clients:
                forgotten.append(self._clients.popitem(last=False)[0])
        else:
            client.seen = now
            self._clients.move_to_end(client_id)
        return client

    def _poller(
        self, client: _Client, type_url: TypeUrl, names: frozenset[str], now: float
    ) -> _Poller:
        """The poller, made if new; drops the client's pollers that went silent."""
        cutoff = now - self._idle_timeout
        for of_type in client.pollers.values():
            while of_type and next(iter(of_type.values())).seen <= cutoff:
                of_type.popitem(last=False)
        of_type = client.pollers.setdefault(type_url, OrderedDict())
        poller = of_type.get(names)
        if poller is None:
            poller = of_type[names] = _Poller(now)
            while len(of_type) > self._max_pollers:
                of_type.popitem(last=False)
        else:
            poller.seen = now
            of_type.move_to_end(names)
        return poller


def _observe(poller: _Poller, type_url: TypeUrl, version_info: str) -> Ack | NotApplied | None:
    """Take in what a poll reports: the fate of the outstanding version, and what the
    poller now holds."""
    report: Ack | NotApplied | None = None
    outstanding = poller.outstanding
    if outstanding is not None:
        if version_info == outstanding or not version_info:
            poller.outstanding = None
            if version_info:
                report = Ack(type_url, outstanding, "")
        else:
            report = NotApplied(type_url, Version(version_info), outstanding)
    if version_info != poller.held_version:
        poller.held_version = version_info
        poller.held = poller.served.get(Version(version_info)) if version_info else _NOTHING
    return report


def _missing_clusters(
    client: _Client, snapshot: Snapshot, needed: frozenset[str]
) -> tuple[str, ...]:
    """The clusters of ``needed`` the client's CDS pollers hold none of, and would be sent
    from ``snapshot``, in name order. Empty while any CDS holding is unknown."""
    if not needed:
        return ()
    cds = client.pollers.get(CLUSTER)
    if not cds:
        return ()
    missing = set(needed)
    for poller in cds.values():
        held = poller.held
        if held is None or not poller.held_version:
            return ()
        missing = {n for n in missing if n not in held.resources}
        if not missing:
            return ()
    bucket = snapshot.get(CLUSTER)
    return tuple(
        sorted(
            n
            for n in missing
            if n in bucket and any(is_wildcard(CLUSTER, names) or n in names for names in cds)
        )
    )


def _referenced_clusters(client: _Client) -> frozenset[str] | None:
    """The clusters the client's listeners and route configurations reference, as it holds
    them; None when what some LDS/RDS poller holds is unknown."""
    referenced: set[str] = set()
    for type_url in _REFERRING_TYPES:
        for poller in client.pollers.get(type_url, {}).values():
            if poller.held is None:
                return None
            referenced |= poller.held.clusters
    return frozenset(referenced)
