"""Match blocks as Envoy ``RouteMatch``es, and which blocks apply to which proxy.

A block's conditions become one ``RouteMatch``: the path, header matchers (``headers``,
``withoutHeaders`` inverted, ``:method``, ``:authority``, ``:scheme``), query parameter
matchers and case sensitivity. Header matchers are written in one of two styles: Envoy's
``string_match``, or for MOSN, which reads only the deprecated fields, ``exact_match`` /
``prefix_match`` / ``safe_regex_match``.

Which blocks apply is decided per proxy, as Istio does: ``gateways`` must name ``mesh``
for a sidecar, ``sourceLabels`` must be among the proxy's labels, ``sourceNamespace``
must be its namespace. A ``Caller`` is a proxy reduced to exactly what the rules look at,
so that routes can be shared by every proxy that rules cannot tell apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from xdsd.model import HTTPMatch, StringMatch, VirtualService
from xdsd.model.networking import MESH_GATEWAY_NAME
from xdsd.model.rules import MatchKind
from xdsd.translate.mosn import header_condition
from xdsd.translate.route_actions import string_matcher

#: The gateway name that binds a VirtualService (or a match block) to sidecars.
MESH_GATEWAY = MESH_GATEWAY_NAME


class MatcherStyle(Enum):
    """How header conditions are written. MOSN reads only the deprecated
    ``exact_match``/``prefix_match``/``safe_regex_match`` fields, which share a oneof with
    ``string_match``, so it gets a route configuration of its own."""

    STRING_MATCH = "string_match"
    DEPRECATED = "deprecated"


@dataclass(frozen=True, slots=True)
class Caller:
    """What about the proxy receiving routes decides which match blocks apply to it: its
    labels that some block's ``sourceLabels`` names (sorted), and its namespace when some
    block has a ``sourceNamespace`` (else None). Equal callers get equal routes."""

    labels: tuple[tuple[str, str], ...] = ()
    namespace: str | None = None


#: A set of label pairs named by ``sourceLabels``, and whether ``sourceNamespace`` is used.
class Relevance(NamedTuple):
    """What tells callers apart in some rules."""

    #: The label pairs some ``sourceLabels`` names.
    pairs: frozenset[tuple[str, str]]
    #: Whether some block has a ``sourceNamespace``.
    namespaces: bool


NO_RELEVANCE = Relevance(frozenset(), False)


def relevance_of(rules: Iterable[VirtualService]) -> Relevance:
    """The label pairs and namespace use by which ``rules`` tell callers apart."""
    pairs: set[tuple[str, str]] = set()
    namespaces = False
    for vs in rules:
        for http in vs.http:
            for block in http.match:
                pairs.update(block.source_labels)
                namespaces = namespaces or bool(block.source_namespace)
    return Relevance(frozenset(pairs), namespaces)


def caller_of(labels: Iterable[tuple[str, str]], namespace: str, relevance: Relevance) -> Caller:
    """The ``Caller`` of a proxy with ``labels`` in ``namespace``, keeping only what
    ``relevance`` says tells callers apart."""
    pairs, namespaces = relevance
    if not pairs and not namespaces:
        return NO_CALLER
    kept = tuple(sorted(pair for pair in labels if pair in pairs))
    return Caller(kept, namespace if namespaces else None)


NO_CALLER = Caller()


def applies_to_sidecar(block: HTTPMatch, caller: Caller) -> bool:
    """Istio's per-proxy check of a match block: a block with ``gateways`` applies to a
    sidecar only when they name ``mesh``; otherwise its ``sourceLabels`` must all be
    among the caller's labels and its ``sourceNamespace`` (if any) the caller's."""
    if block.gateways:
        return MESH_GATEWAY in block.gateways
    if block.source_labels and not set(block.source_labels) <= set(caller.labels):
        return False
    return not block.source_namespace or block.source_namespace == caller.namespace


def set_match(match: Any, block: HTTPMatch | None, style: MatcherStyle) -> None:
    """Write ``block``'s conditions into the Envoy ``RouteMatch`` ``match`` (``prefix: /``
    for no block), header conditions in ``style``."""
    uri = block.uri if block is not None else None
    if uri is None:
        match.prefix = "/"
    elif uri.kind is MatchKind.EXACT:
        match.path = uri.value
    elif uri.kind is MatchKind.PREFIX:
        match.prefix = uri.value
    else:
        match.safe_regex.regex = uri.value
    if block is None:
        return
    if block.ignore_uri_case:
        # Envoy (and Istio's documentation) apply this to exact and prefix paths only.
        match.case_sensitive.value = False
    for header in block.headers:
        _set_header(match.headers.add(name=header.name), header.match, style)
    for header in block.without_headers:
        _set_header(match.headers.add(name=header.name), header.match, style, invert=True)
    for name, condition in (
        (":method", block.method),
        (":authority", block.authority),
        (":scheme", block.scheme),
    ):
        if condition is not None:
            _set_header(match.headers.add(name=name), condition, style)
    for param in block.query_params:
        query = match.query_parameters.add(name=param.name)
        if param.match is None:
            query.present_match = True
        else:
            query.string_match.CopyFrom(string_matcher(param.match))


def _set_header(
    header: Any, condition: StringMatch | None, style: MatcherStyle, *, invert: bool = False
) -> None:
    """One header condition; ``invert`` for ``withoutHeaders``, where (as in Istio) a
    missing header counts as an empty value unless the condition is "is present", so
    that a request without the header is let through."""
    if invert:
        header.invert_match = True
        if condition is not None:
            header.treat_missing_header_as_empty = True
    if style is MatcherStyle.DEPRECATED:
        header_condition(header, condition)
        return
    if condition is None:
        header.present_match = True
        return
    header.string_match.CopyFrom(string_matcher(condition))
