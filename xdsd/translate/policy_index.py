"""The security policies of a mesh indexed by what can select a workload, so that finding
a class's policies costs what applies to it, not every policy of the mesh.

How this works: ``workload_security.workload_policies`` scans every policy of the mesh
for each (namespace, labels) — 1,000 policies make that a few milliseconds per class on
every reload. A policy can only select a workload of its own namespace or, from the root
namespace, of any; and one with a selector only a workload that has the selector's first
label. So each policy is filed under (namespace, None) without a selector (or an empty
one), else under (namespace, its first label); a workload's candidates are those filed
under its namespace and the root namespace, with no label or one of its labels — a
superset of what applies. ``workload_policies`` then runs over just those (in a small
``Mesh``, which keeps them in key order), so the result is exactly the full scan's
(``tests/translate/test_policy_index.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from xdsd.model import Mesh
from xdsd.model.mesh_config import MeshConfig
from xdsd.model.networking import ROOT_NAMESPACE
from xdsd.model.security import SecurityObject
from xdsd.translate.workload_security import WorkloadPolicies, workload_policies

P = TypeVar("P", bound=SecurityObject)

#: Where a policy is filed: its namespace and the first label of its selector (None
#: when it has no selector, or an empty one).
_Slot = tuple[str, tuple[str, str] | None]


class PolicyIndex:
    """The security policies of ``mesh`` filed for selection (see the module
    docstring). Built once per translation; ``select`` gives what
    ``workload_policies`` gives over the whole mesh."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._authorization = _file(mesh.authorization_policies)
        self._peer = _file(mesh.peer_authentications)
        self._request = _file(mesh.request_authentications)

    def select(
        self, namespace: str, labels: tuple[tuple[str, str], ...], config: MeshConfig
    ) -> WorkloadPolicies:
        """The policies that apply to the workload in ``namespace`` with node ``labels``
        under ``config`` (equal to ``workload_policies(mesh, namespace, labels,
        config)``)."""
        mesh = self.mesh
        if not (
            mesh.authorization_policies or mesh.peer_authentications or mesh.request_authentications
        ):
            return workload_policies(mesh, namespace, labels, config)
        slots = _slots(namespace, labels)
        candidates = Mesh(
            authorization_policies=_candidates(self._authorization, slots),
            peer_authentications=_candidates(self._peer, slots),
            request_authentications=_candidates(self._request, slots),
        )
        return workload_policies(candidates, namespace, labels, config)


def _file(policies: Sequence[P]) -> dict[_Slot, list[P]]:
    """``policies`` by the slot each is filed under."""
    out: dict[_Slot, list[P]] = {}
    for policy in policies:
        selector = policy.selector
        first = selector.match_labels[0] if selector is not None and selector.match_labels else None
        out.setdefault((policy.namespace, first), []).append(policy)
    return out


def _slots(namespace: str, labels: tuple[tuple[str, str], ...]) -> list[_Slot]:
    """Every slot a policy that may select this workload is filed under."""
    namespaces = {namespace, ROOT_NAMESPACE}
    return [(ns, pair) for ns in namespaces for pair in (None, *labels)]


def _candidates(filed: dict[_Slot, list[P]], slots: list[_Slot]) -> tuple[P, ...]:
    """The policies filed under any of ``slots``."""
    return tuple(policy for slot in slots for policy in filed.get(slot, ()))
