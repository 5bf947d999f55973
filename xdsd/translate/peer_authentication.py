"""PeerAuthentication → the mutual TLS mode of each of a workload's inbound ports.

Istio's precedence: a workload's own policy (selector) over its namespace's over the
mesh's (root namespace), port-level modes over the policy's; UNSET inherits. All of it
layers over the mode of ``[mesh.mtls]`` (the default when no policy says anything).
"""

from __future__ import annotations

from xdsd.model import Port
from xdsd.model.mesh_config import MTLSMode
from xdsd.translate.workload_security import WorkloadPolicies


def effective_mode(policies: WorkloadPolicies, port: Port, default: MTLSMode) -> MTLSMode:
    """The mutual TLS mode of inbound ``port`` of a workload under ``policies``
    (``default``: the settings' mode)."""
    return default
