"""Istio's PeerAuthentication (``security.istio.io``) → ``model.security.PeerAuthentication``,
and the checks across a directory's PeerAuthentications (``peer_authentication_problems``).

Fail closed: a field or value xdsd does not enforce is an error at its own line, never a
warning, so a directory that loads is enforced as written. Where Istio would silently
ignore a policy (``portLevelMtls`` on a policy without a selector, a selector on a policy
of the root namespace) or pick one of two by creation time (two mesh-wide policies, two
namespace-wide ones in a namespace, two whose selectors one workload could match), the
policy is an error here: files have no creation time, and a policy that is not enforced
as written must not load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from xdsd.errors import Problem
from xdsd.located import Fields
from xdsd.model import Origin
from xdsd.model.mesh_config import MeshTLS, MTLSMode
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.model.security import PeerAuthentication, WorkloadSelector, line_of

#: ``mtls.mode`` values: UNSET (inherit) and the three modes.
MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
#: The message of a mode that needs the mesh's certificates while ``[mesh.mtls]`` is off.
NEEDS_MESH_TLS = (
    "{mode} needs the mesh's certificates, and mesh mutual TLS is off: set [mesh.mtls] in "
    "xdsd's settings (a sidecar cannot require or accept mutual TLS without them)"
)


def parse_peer_authentication(
    spec: Fields, name: str, namespace: str, origin: Origin, *, annotations: Mapping[str, object]
) -> PeerAuthentication:
    """A PeerAuthentication from its ``spec`` (``annotations``: the document's metadata
    annotations, which change nothing for this kind). Every problem is recorded on
    ``spec``: unknown fields (with the closest known name), a mode that is not one of
    ``MODES``, a port that is not 1-65535, ``portLevelMtls`` without a selector or with
    an entry without ``mode``, a selector in the root namespace."""
    lines: list[tuple[str, int]] = []
    selector = _selector(spec, namespace, lines)
    mode: MTLSMode | None = None
    mtls = spec.obj("mtls")
    if mtls is not None:
        mode = _mode(mtls, "mtls.mode", lines)
        mtls.finish()
    port_modes = _port_modes(spec, selector, lines)
    spec.finish()
    return PeerAuthentication(
        name,
        namespace,
        selector=selector,
        mode=mode,
        port_modes=port_modes,
        origin=origin,
        lines=tuple(lines),
    )


def _line(f: Fields, key: str) -> int:
    """The line of ``key`` of the mapping ``f`` (its nearest known ancestor's)."""
    return f.report.doc.line_of((*f.report.base, *f.path, key))


def _selector(
    spec: Fields, namespace: str, lines: list[tuple[str, int]]
) -> WorkloadSelector | None:
    """``selector.matchLabels`` (None when absent or empty: Istio reads an empty selector
    as none). A selector in the root namespace is an error: Istio ignores such a policy."""
    selector = spec.obj("selector")
    if selector is None:
        return None
    labels = selector.labels("matchLabels")
    selector.finish()
    if not labels:
        return None
    lines.append(("selector", _line(spec, "selector")))
    if namespace == ROOT_NAMESPACE:
        spec.error(
            "selector",
            f"a PeerAuthentication of the root namespace ({ROOT_NAMESPACE}) with a selector is "
            "ignored by Istio: put it in the namespace of the workloads it selects, or remove "
            "the selector to make it mesh-wide",
        )
    return WorkloadSelector(labels)


def _mode(f: Fields, where: str, lines: list[tuple[str, int]]) -> MTLSMode | None:
    """``f.mode``: None for UNSET or absent (inherit)."""
    if f.has("mode"):
        lines.append((where, _line(f, "mode")))
    chosen = f.choice("mode", MODES, default="UNSET")
    return None if chosen in (None, "UNSET") else MTLSMode(chosen)


def _port_modes(
    spec: Fields, selector: WorkloadSelector | None, lines: list[tuple[str, int]]
) -> tuple[tuple[int, MTLSMode | None], ...]:
    """``portLevelMtls``: (workload port, mode or None for UNSET), one per port."""
    value = spec.value(
        "portLevelMtls", lambda v: isinstance(v, dict), "a mapping of port numbers to {mode: ...}"
    )
    if not value:
        return ()
    if selector is None:
        spec.error(
            "portLevelMtls",
            "needs a selector: Istio refuses port-level modes on a mesh-wide or namespace-wide "
            "PeerAuthentication (a port means a port of the selected workloads)",
        )
    out: dict[int, MTLSMode | None] = {}
    for key, entry in value.items():
        path = (*spec.path, "portLevelMtls", str(key))
        number = _port_number(key)
        if number is None:
            spec.report.add(path, f"must be a port number 1-65535 (got {key!r})")
            continue
        if number in out:
            spec.report.add(path, f"port {number} is given twice")
            continue
        if not isinstance(entry, dict):
            spec.report.add(path, "must be a mapping with mode")
            continue
        f = Fields(spec.report, path, entry)
        if not f.has("mode"):
            f.error("mode", "is required (UNSET, DISABLE, PERMISSIVE or STRICT)")
        out[number] = _mode(f, f"portLevelMtls.{number}.mode", lines)
        f.finish()
    return tuple(out.items())


def _port_number(key: object) -> int | None:
    """A ``portLevelMtls`` key as a port number (YAML gives an int, JSON a string of
    digits), None when it is not one of 1-65535."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        number = key
    elif isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 5:
        number = int(key)
    else:
        return None
    return number if 1 <= number <= 65535 else None


def peer_authentication_problems(
    policies: Sequence[PeerAuthentication], mesh_tls: MeshTLS
) -> list[Problem]:
    """The problems across ``policies`` (sorted by key, as a mesh holds them):

    - two mesh-wide policies (root namespace, no selector), two namespace-wide ones in one
      namespace, or two of one namespace whose selectors one workload could match (no
      label with two values): Istio applies the oldest, and files have no age — an error
      on the later one naming the first;
    - PERMISSIVE or STRICT while ``mesh_tls`` is off: not enforceable without the mesh's
      certificates — an error at the mode's own line.
    """
    problems: list[Problem] = []
    plain: dict[str, PeerAuthentication] = {}
    selected: dict[str, list[PeerAuthentication]] = {}
    for policy in policies:
        if policy.selector is None:
            first = plain.get(policy.namespace)
            if first is None:
                plain[policy.namespace] = policy
            else:
                scope = (
                    "mesh-wide (root namespace, no selector)"
                    if policy.namespace == ROOT_NAMESPACE
                    else f"namespace-wide in {policy.namespace!r}"
                )
                problems.append(
                    Problem(
                        policy.origin.path,
                        policy.origin.line,
                        "",
                        f"a second {scope} PeerAuthentication ({policy.name}; the first is "
                        f"{first.name}, {first.origin}): Istio applies the older one, and "
                        "files have no age: merge the two",
                    )
                )
            continue
        group = selected.setdefault(policy.namespace, [])
        for first in group:
            assert first.selector is not None
            if _overlap(first.selector, policy.selector):
                problems.append(
                    Problem(
                        policy.origin.path,
                        line_of(policy.lines, "selector", policy.origin.line),
                        "selector",
                        f"a workload labelled {_labels(first.selector, policy.selector)} is "
                        f"selected by PeerAuthentication {first.name} ({first.origin}) too: "
                        "Istio applies the older one, and files have no age: make the "
                        "selectors exclusive",
                    )
                )
                break
        group.append(policy)
    if not mesh_tls.enabled:
        for policy in policies:
            problems.extend(_needs_certificates(policy))
    return problems


def _needs_certificates(policy: PeerAuthentication) -> list[Problem]:
    """The modes of ``policy`` that need mesh mutual TLS, each at its own line."""
    out: list[Problem] = []
    wanted: list[tuple[str, MTLSMode | None]] = [("mtls.mode", policy.mode)]
    wanted += [(f"portLevelMtls.{port}.mode", mode) for port, mode in policy.port_modes]
    for where, mode in wanted:
        if mode in (MTLSMode.PERMISSIVE, MTLSMode.STRICT):
            assert mode is not None
            line = line_of(policy.lines, where, policy.origin.line)
            out.append(
                Problem(policy.origin.path, line, where, NEEDS_MESH_TLS.format(mode=mode.value))
            )
    return out


def _overlap(a: WorkloadSelector, b: WorkloadSelector) -> bool:
    """True when some workload's labels could match both selectors."""
    mine = dict(a.match_labels)
    return all(mine.get(k, v) == v for k, v in b.match_labels)


def _labels(a: WorkloadSelector, b: WorkloadSelector) -> str:
    """The labels of a workload both selectors match, as ``k=v,...``."""
    both = dict(a.match_labels) | dict(b.match_labels)
    return ",".join(f"{k}={v}" for k, v in sorted(both.items()))
