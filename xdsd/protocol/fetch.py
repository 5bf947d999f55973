"""REST-JSON polling (``POST /v3/discovery:<type>``): the stateless answer, and JSON.

How this works: a REST poll is one question, "has what I asked for changed since
``version_info``?". ``select`` says what a poll of (type, names) would be sent from the node
class's snapshot: LDS and CDS polls with no names (or ``*``) select every resource at the
type's version; every other poll selects the named resources at a version computed from
those names alone (``Snapshot.version_for``), so an endpoint change elsewhere does not make
every EDS poller refetch. ``fetch`` answers from a selection: ``NotModified`` (HTTP 304) when
the client already holds the version it would be sent, else a ``Response`` (HTTP 200).
``JsonRenderer`` turns a response into proto3 JSON once per content and reuses the bytes
for every poller.

``fetch`` knows nothing about the client. What makes REST polling safe across types
(make-before-break: LDS/RDS wait for the clusters they need, CDS keeps clusters the client's
routes still use) and what detects a rejected version (REST carries neither nonces nor
``error_detail``) needs per-client memory: that is ``xdsd.protocol.rest_session``, which
answers every poll through ``select`` and a ``Selection``'s ``response``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import WILDCARD, ProtocolError, Response, kept_version
from xdsd.resources import PUSH_ORDER, WILDCARD_TYPES, Resource, TypeUrl, Version, to_json


@dataclass(frozen=True, slots=True)
class NotModified:
    """The client keeps what it holds: answer 304 with an empty body.

    ``version`` is the version the poll would be sent; when the poll is held back for
    make-before-break it is the client's own ``version_info``, and ``waiting_for`` names
    the clusters the client must hold first (see ``rest_session``).
    """

    type_url: TypeUrl
    version: Version
    waiting_for: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Selection:
    """What a poll selects: ``resources`` by name, in name order, at ``version``.

    The version is a content hash of the resources (see ``Snapshot``), so two selections
    with the same type and version carry the same content.
    """

    type_url: TypeUrl
    version: Version
    resources: Mapping[str, Resource]

    def with_kept(self, kept: Mapping[str, Resource]) -> Selection:
        """This selection plus ``kept`` (resources it does not select, which the client
        holds and must keep), at ``<version>+<hash of the kept names and contents>``: a
        version that differs from the snapshot's and names what is kept."""
        if not kept:
            return self
        merged = dict(sorted({**self.resources, **kept}.items()))
        return Selection(self.type_url, kept_version(self.version, kept), merged)

    def response(self) -> Response:
        """The REST response carrying this selection (no nonce)."""
        return Response(self.type_url, self.version, "", tuple(self.resources.values()))


def is_wildcard(type_url: TypeUrl, names: Collection[str]) -> bool:
    """Whether a poll of ``names`` asks for every resource of ``type_url``: LDS and CDS
    with no names, or with ``*``."""
    return type_url in WILDCARD_TYPES and (not names or WILDCARD in names)


def select(snapshot: Snapshot, type_url: TypeUrl, resource_names: Iterable[str]) -> Selection:
    """What a poll for ``resource_names`` of ``type_url`` is sent from ``snapshot``: every
    resource for a wildcard poll, else the named resources that exist.

    Cheap: a wildcard poll shares the snapshot's mapping, a named one looks up its names.
    Raises ProtocolError (NOT_FOUND) for a type this server does not serve.
    """
    if type_url not in PUSH_ORDER:
        raise ProtocolError("NOT_FOUND", f"unknown type_url {type_url!r}")
    names = frozenset(resource_names)
    bucket = snapshot.get(type_url)
    if is_wildcard(type_url, names):
        return Selection(type_url, snapshot.version(type_url), bucket)
    return Selection(
        type_url,
        snapshot.version_for(type_url, names),
        {n: bucket[n] for n in sorted(names) if n in bucket},
    )


def fetch(
    snapshot: Snapshot,
    type_url: TypeUrl,
    resource_names: Iterable[str],
    version_info: str,
    *,
    rejected: Version | None = None,
) -> Response | NotModified:
    """Answer one poll for ``resource_names`` of ``type_url`` from ``snapshot``, knowing
    nothing of the client but its ``version_info``.

    The response carries the requested resources that exist, in name order, and no nonce.
    ``rejected`` is a version this poller was served and did not apply: it is not sent
    again, the poll is answered NotModified while it is current. Raises ProtocolError
    (NOT_FOUND) for a type this server does not serve.
    """
    selection = select(snapshot, type_url, resource_names)
    if selection.version in (version_info, rejected):
        return NotModified(type_url, selection.version)
    return selection.response()


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
        self._cache: OrderedDict[tuple[TypeUrl, Version, tuple[str, ...], bool], bytes] = (
            OrderedDict()
        )
        self.renders = 0  # how many renderings were made (for tests and metrics)

    def render(self, response: Response, *, v2: bool = False, keep: bool = True) -> bytes:
        """The UTF-8 JSON body of ``response`` (named the v2 way for a v2 client, see
        ``resources.v2``). Responses with a nonce (not REST), and those not to ``keep``
        (one client's own secret), are rendered every time and not kept."""
        if response.nonce or not keep:
            return self._encode(response, v2)
        key = (response.type_url, response.version, response.names, v2)
        body = self._cache.get(key)
        if body is not None:
            self._cache.move_to_end(key)
            return body
        body = self._cache[key] = self._encode(response, v2)
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return body

    def _encode(self, response: Response, v2: bool) -> bytes:
        self.renders += 1
        message = response.to_proto()
        if v2:
            from xdsd.resources.v2 import V2_TYPES, load_v2_types, to_v2

            load_v2_types()
            message = discovery_pb2.DiscoveryResponse(
                version_info=response.version,
                resources=[to_v2(r).to_any() for r in response.resources],
                type_url=V2_TYPES.get(response.type_url, response.type_url),
            )
        return json.dumps(to_json(message), separators=(",", ":")).encode()

    def __len__(self) -> int:
        return len(self._cache)
