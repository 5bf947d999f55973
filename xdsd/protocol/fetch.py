"""REST-JSON polling (``POST /v3/discovery:<type>``), without I/O.

How this works: a REST poll is one question, "has what I asked for changed since
``version_info``?". ``fetch`` answers it from the node class's snapshot: ``NotModified``
(HTTP 304) when the client already holds the version it would be sent, else a ``Response``
(HTTP 200). LDS and CDS polls with no names (or ``*``) get every resource at the type's
version; every other poll gets the named resources at a version computed from those names
alone (``Snapshot.version_for``), so an endpoint change elsewhere does not make every EDS
poller refetch. ``JsonRenderer`` turns a response into proto3 JSON once per content and
reuses the bytes for every poller. REST carries neither nonces nor ``error_detail``: a
rejected version only shows as the client polling again with its old ``version_info``,
which ``PollTracker`` reports as ``NotApplied``; that version is then answered 304 rather
than sent again, the REST form of "never resend a rejected version".

A REST transport does, per poll::

    report = polls.on_poll(client_id, type_url, names, request.version_info)
    rejected = report.served_version if isinstance(report, NotApplied) else None
    result = fetch(snapshot, type_url, names, request.version_info, rejected=rejected)
    if isinstance(result, Response):
        polls.on_served(client_id, type_url, names, result.version)
        body = renderer.render(result)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import Ack, NotApplied, ProtocolError, Response
from xdsd.resources import PUSH_ORDER, WILDCARD_TYPES, TypeUrl, Version, to_json

#: The explicit wildcard name.
WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class NotModified:
    """The client already holds ``version``: answer 304 with an empty body."""

    type_url: TypeUrl
    version: Version


def fetch(
    snapshot: Snapshot,
    type_url: TypeUrl,
    resource_names: Iterable[str],
    version_info: str,
    *,
    rejected: Version | None = None,
) -> Response | NotModified:
    """Answer one poll for ``resource_names`` of ``type_url`` from ``snapshot``.

    The response carries the requested resources that exist, in name order, and no nonce.
    ``rejected`` is a version this poller was served and did not apply (see
    ``PollTracker``): it is not sent again, the poll is answered NotModified while it is
    current. Raises ProtocolError (NOT_FOUND) for a type this server does not serve.
    """
    if type_url not in PUSH_ORDER:
        raise ProtocolError("NOT_FOUND", f"unknown type_url {type_url!r}")
    names = frozenset(resource_names)
    bucket = snapshot.get(type_url)
    if type_url in WILDCARD_TYPES and (not names or WILDCARD in names):
        version = snapshot.version(type_url)
        resources = tuple(bucket.values())
    else:
        version = snapshot.version_for(type_url, names)
        resources = tuple(bucket[n] for n in sorted(names) if n in bucket)
    if version in (version_info, rejected):
        return NotModified(type_url, version)
    return Response(type_url, version, "", resources)


class JsonRenderer:
    """Renders responses as proto3 JSON (``@type`` inside every Any), each content once.

    Keeps the bytes of the ``max_entries`` most recently used contents, keyed by type,
    version and resource names: REST versions are content hashes, so two polls that are
    sent the same version of the same names share one rendering.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._cache: OrderedDict[tuple[TypeUrl, Version, tuple[str, ...]], bytes] = OrderedDict()
        self.renders = 0  # how many renderings were made (for tests and metrics)

    def render(self, response: Response) -> bytes:
        """The UTF-8 JSON body of ``response``. Responses with a nonce (not REST) are
        rendered every time and not kept."""
        if response.nonce:
            return self._encode(response)
        key = (response.type_url, response.version, response.names)
        body = self._cache.get(key)
        if body is not None:
            self._cache.move_to_end(key)
            return body
        body = self._cache[key] = self._encode(response)
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return body

    def _encode(self, response: Response) -> bytes:
        self.renders += 1
        return json.dumps(to_json(response.to_proto()), separators=(",", ":")).encode()

    def __len__(self) -> int:
        return len(self._cache)


class PollTracker:
    """Tells, from a REST client's next poll, whether it applied what it was served.

    A poller is identified by (client id, type, requested names): each EDS cluster of an
    Envoy polls on its own. Served versions are remembered for the ``max_entries`` most
    recent pollers, so clients that go away are forgotten.
    """

    def __init__(self, max_entries: int = 65536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._served: OrderedDict[tuple[str, TypeUrl, frozenset[str]], Version] = OrderedDict()

    def on_poll(
        self,
        client_id: str,
        type_url: TypeUrl,
        resource_names: Iterable[str],
        version_info: str,
    ) -> Ack | NotApplied | None:
        """Compare a poll's ``version_info`` with the version last served to that poller.

        Returns Ack (nonce "") when the client advanced to it; NotApplied when it still
        reports an older version (it rejected it; reported on every poll until it is
        served something else; pass ``served_version`` to ``fetch`` as ``rejected``);
        None when nothing is outstanding. An empty ``version_info`` may be a restarted
        client as well as a rejection, so it forgets the poller and returns None.
        """
        key = (client_id, type_url, frozenset(resource_names))
        served = self._served.get(key)
        if served is None:
            return None
        if version_info == served or not version_info:
            del self._served[key]
            return Ack(type_url, served, "") if version_info else None
        self._served.move_to_end(key)
        return NotApplied(type_url, Version(version_info), served)

    def on_served(
        self,
        client_id: str,
        type_url: TypeUrl,
        resource_names: Iterable[str],
        version: Version,
    ) -> None:
        """Remember that the poller was sent ``version`` (a 200, not a 304)."""
        key = (client_id, type_url, frozenset(resource_names))
        self._served[key] = version
        self._served.move_to_end(key)
        while len(self._served) > self._max:
            self._served.popitem(last=False)

    def __len__(self) -> int:
        return len(self._served)
