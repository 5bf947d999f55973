"""``xdsd validate --envoy``: the rendered configuration of every node class a directory
implies, run through ``envoy --mode validate``, each rejection reported against the
files that caused it.

How this works: ``implied_classes`` lists the Envoy node classes the mesh implies — a
sidecar for each xdsd Service (one per distinct label set of its endpoints, bound at
that endpoint's address) and a gateway for each Gateway's selector; proxyless gRPC
clients have no static form and ServiceEntry hosts no proxies, so neither is rendered.
Each class is rendered as a complete static Envoy configuration (``render_static``)
into a temporary file and given to ``envoy --mode validate``. What Envoy refuses
usually comes from a value xdsd passes through without knowing its constraints: an
EnvoyFilter patch or a raw Envoy resource. So on a rejection, each patch of each
EnvoyFilter and each raw resource is left out in turn, and the class rendered and
validated again: those whose absence makes Envoy accept are named (file, line, field);
when no single one does, every EnvoyFilter and raw resource is named as a suspect.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xdsd.errors import Problem, TranslationError, XdsdError
from xdsd.located import is_ip
from xdsd.model import Mesh
from xdsd.model.mesh_config import MeshConfig
from xdsd.translate import NodeClass, Role, render_static

#: The address a sidecar is rendered at when its service lists none that is an IP
#: address (TEST-NET-1: never a real host; ``--mode validate`` binds nothing).
PLACEHOLDER_IP = "192.0.2.1"
#: The address outbound listeners are rendered at: not the loopback address applications
#: listen on, so that no class collides with its own application (a deployment chooses
#: its own with ``--outbound-ip``; placement is not what Envoy is asked about here).
OUTBOUND_IP = "127.0.0.2"
#: The admin port of the rendered configurations (validate mode binds nothing).
ADMIN_PORT = 15000
_ENVOY_ERROR = re.compile(r"error initializing configuration '[^']*':\s*(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Envoy refused the configuration of a node class (described as ``what``) with
    ``message``. ``causes`` name what caused it (file, line, field): the patches and raw
    resources without which Envoy accepts it (``pinned``), else every EnvoyFilter patch
    and raw resource as suspects."""

    what: str
    message: str
    causes: tuple[Problem, ...]
    pinned: bool


def implied_classes(mesh: Mesh) -> list[tuple[str, NodeClass]]:
    """The Envoy node classes ``mesh`` implies, each with a description
    (``sidecar of default/reviews (version=v1)``), in a stable order."""
    found: dict[NodeClass, str] = {}
    for svc in mesh.services:
        if svc.entry:
            continue  # a ServiceEntry host has no proxy of its own
        seen: set[tuple[tuple[str, str], ...]] = set()
        for endpoint in svc.endpoints or ():
            if endpoint.labels in seen:
                continue
            seen.add(endpoint.labels)
            address = endpoint.address if is_ip(endpoint.address) else PLACEHOLDER_IP
            node = NodeClass(
                service=svc.name,
                namespace=svc.namespace,
                labels=endpoint.labels,
                instance_ip=address,
                outbound_ip=OUTBOUND_IP,
            )
            found.setdefault(node, f"sidecar of {svc.key.namespace}/{svc.name}{_labels(node)}")
        if not svc.endpoints:
            node = NodeClass(
                service=svc.name,
                namespace=svc.namespace,
                instance_ip=PLACEHOLDER_IP,
                outbound_ip=OUTBOUND_IP,
            )
            found.setdefault(node, f"sidecar of {svc.key.namespace}/{svc.name}")
    for gateway in mesh.gateways:
        labels = dict(gateway.selector)
        name = labels.get("app") or labels.get("istio") or gateway.name
        node = NodeClass(
            service=name,
            namespace=gateway.namespace,
            role=Role.GATEWAY,
            labels=gateway.selector,
            outbound_ip=OUTBOUND_IP,
        )
        found.setdefault(node, f"gateway {gateway.namespace}/{name}{_labels(node)}")
    return [(what, node) for node, what in found.items()]


def _labels(node: NodeClass) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in node.labels)})" if node.labels else ""


class EnvoyValidator:
    """Runs ``envoy --mode validate`` (the binary at ``envoy``) on rendered
    configurations. Raises XdsdError when the binary cannot be run."""

    def __init__(self, envoy: str, mesh_config: MeshConfig, workdir: str) -> None:
        self._envoy = envoy
        self._mesh_config = mesh_config
        self._workdir = workdir
        self._count = 0

    def refusal(self, mesh: Mesh, node: NodeClass) -> str | None:
        """Envoy's message when it refuses ``node``'s configuration under ``mesh``
        (None: accepted). Raises TranslationError when the class cannot be rendered."""
        config = render_static(
            mesh,
            node,
            node_id=f"{node.service}-validate",
            admin_port=ADMIN_PORT,
            mesh_config=self._mesh_config,
        )
        self._count += 1
        path = os.path.join(self._workdir, f"config-{self._count}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        try:
            done = subprocess.run(
                [self._envoy, "--mode", "validate", "-c", path, "--log-level", "critical"],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as e:
            raise XdsdError(
                f"cannot run Envoy at {self._envoy}: {e.strerror or e}; give --envoy PATH"
            ) from None
        finally:
            os.unlink(path)
        if done.returncode == 0:
            return None
        return _envoy_message(done.stdout + done.stderr)


def validate_classes(
    mesh: Mesh, mesh_config: MeshConfig, envoy: str
) -> tuple[list[str], list[Rejection], list[Problem]]:
    """Validate every class ``mesh`` implies with the Envoy at ``envoy``: the classes
    accepted (their descriptions), the rejections, and the classes that could not be
    rendered (translation problems). Raises XdsdError when Envoy cannot be run."""
    accepted: list[str] = []
    rejections: list[Rejection] = []
    unrendered: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="xdsd-validate-") as workdir:
        validator = EnvoyValidator(envoy, mesh_config, workdir)
        for what, node in implied_classes(mesh):
            try:
                message = validator.refusal(mesh, node)
            except TranslationError as e:
                unrendered.extend(e.problems)
                continue
            if message is None:
                accepted.append(what)
                continue
            culprits, suspects = _causes(mesh, node, validator)
            rejections.append(Rejection(what, message, tuple(culprits or suspects), bool(culprits)))
    return accepted, rejections, unrendered


def _causes(
    mesh: Mesh, node: NodeClass, validator: EnvoyValidator
) -> tuple[list[Problem], list[Problem]]:
    """The patches and raw resources whose absence alone makes Envoy accept ``node``'s
    configuration, and every patch and raw resource (the suspects)."""
    culprits: list[Problem] = []
    suspects: list[Problem] = []
    for problem, without in _candidates(mesh):
        suspects.append(problem)
        try:
            if validator.refusal(without(), node) is None:
                culprits.append(problem)
        except TranslationError:
            continue
    return culprits, suspects


def _candidates(mesh: Mesh) -> Iterator[tuple[Problem, Callable[[], Mesh]]]:
    """Each EnvoyFilter patch and raw resource, as (where it is written, the mesh
    without it)."""
    for f_index, flt in enumerate(mesh.envoy_filters):
        for p_index, patch in enumerate(flt.patches):
            line = patch.value_line or flt.origin.line
            where = Problem(flt.origin.path, line, f"configPatches[{p_index}].patch.value", "")

            def without_patch(f_index: int = f_index, p_index: int = p_index) -> Mesh:
                filters = list(mesh.envoy_filters)
                patches = filters[f_index].patches
                filters[f_index] = dataclasses.replace(
                    filters[f_index], patches=patches[:p_index] + patches[p_index + 1 :]
                )
                return _rebuilt(mesh, envoy_filters=tuple(filters))

            yield where, without_patch
    for r_index, raw in enumerate(mesh.raw_resources):
        where = Problem(raw.origin.path, raw.origin.line, "", "")

        def without_raw(r_index: int = r_index) -> Mesh:
            raw_resources = mesh.raw_resources[:r_index] + mesh.raw_resources[r_index + 1 :]
            return _rebuilt(mesh, raw_resources=raw_resources)

        yield where, without_raw


def _rebuilt(mesh: Mesh, **changes: object) -> Mesh:
    """``mesh`` with ``changes``, its indexes made again."""
    return dataclasses.replace(mesh, _hosts={}, _rules={}, **changes)  # type: ignore[arg-type]


def _envoy_message(output: str) -> str:
    """Envoy's reason, on one line, from its output."""
    found = _ENVOY_ERROR.search(output)
    text = found.group(1) if found else output
    text = " ".join(text.split())
    return text or "envoy exited with an error and said nothing"
