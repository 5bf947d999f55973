"""MOSN: what its xDS conversion reads, and how xdsd writes for it.

How this works: MOSN does not apply Envoy resources; it converts them into its own
configuration and reads only part of them (its ``istio/istio1106/xds/conv`` package,
checked against the published source; no MOSN can be installed here, so this is
unverified against a running one):

- the node it sends carries only ``id``, ``cluster`` and ``metadata`` (no
  ``user_agent_name``): a MOSN node says ``metadata.client: mosn`` (``node.py``);
- a route's header matcher is read from ``safe_regex_match`` when set, else from
  ``exact_match``; every other form (``string_match``, ``prefix_match``,
  ``present_match``) is read as an exact match on the empty string. Its regular
  expressions *search* (Go's ``MatchString``) where Envoy's match the whole value, and a
  header that is absent never matches. So a prefix becomes ``^prefix``, a regex is
  anchored, and "present" becomes ``.*`` (``header_condition``);
- a listener without original-destination is converted from its *first* filter chain
  only, and a TCP proxy from its ``cluster`` only (``weighted_clusters`` are not read):
  a TCP/TLS listener that needs more is refused for MOSN classes (``l4_problems``)
  rather than silently applied in part.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xdsd.errors import Problem
from xdsd.model import ResourceKey, Service, StringMatch, VirtualService
from xdsd.model.rules import MatchKind
from xdsd.translate.l4 import L4ListenerPlan
from xdsd.translate.placement import PortGroup

#: Characters with a meaning in RE2 syntax, escaped to match themselves.
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def quote_re2(text: str) -> str:
    """``text`` as an RE2 pattern that matches exactly ``text``."""
    return "".join(f"\\{c}" if c in _RE2_SPECIAL else c for c in text)


def header_condition(header: Any, condition: StringMatch | None) -> None:
    """Write ``condition`` (None: the header is present) into the route ``HeaderMatcher``
    ``header`` in the two fields MOSN reads, with Envoy's meaning under MOSN's regex
    search: ``exact_match`` for an exact value, else an anchored ``safe_regex_match``."""
    if condition is None:
        header.safe_regex_match.regex = ".*"
    elif condition.kind is MatchKind.EXACT:
        header.exact_match = condition.value
    elif condition.kind is MatchKind.PREFIX:
        header.safe_regex_match.regex = "^" + quote_re2(condition.value)
    else:
        header.safe_regex_match.regex = f"^(?:{condition.value})$"


def l4_problems(
    plan: L4ListenerPlan, group: PortGroup, rules: Mapping[ResourceKey, VirtualService]
) -> list[Problem]:
    """Why MOSN cannot apply the listener of ``plan`` (empty when it can): it needs more
    than one filter chain, a match on SNI or destination address, or weighted clusters.
    The problem is filed on the VirtualService of the port's services, if any, else on
    the first service."""
    chains = plan.chains
    needs: list[str] = []
    if len(chains) > 1:
        needs.append(f"{len(chains)} filter chains")
    if any(c.server_names for c in chains):
        needs.append("a match on SNI")
    if any(c.prefix_ranges for c in chains):
        needs.append("a match on destination address")
    if any(len(c.clusters) > 1 for c in chains):
        needs.append("weighted clusters")
    if not needs:
        return []
    services: list[Service] = [s for s, _ in group.tcp]
    vs = next((rules[s.key] for s in services if s.key in rules), None)
    origin = vs.origin if vs is not None else services[0].origin
    field = "tcp" if vs is not None and vs.tcp else "tls" if vs is not None else "ports"
    names = ", ".join(s.fqdn for s in services)
    return [
        Problem(
            origin.path,
            origin.line,
            field,
            f"port {plan.port} ({names}) needs {' and '.join(needs)}, and MOSN applies "
            "only the first filter chain of a listener and only a single tcp_proxy cluster: "
            "MOSN sidecars cannot be given this port's rules; route them with a rule MOSN "
            "can apply (one destination, no match) or give the TLS services their own ports",
        )
    ]
