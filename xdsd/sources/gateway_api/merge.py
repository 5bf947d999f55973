"""The conversion of the Gateway API as a source: its output as one synthetic file.

The loader (``DirectoryLoader``) runs ``convert`` after the files (and the registered
workloads) are merged, and merges what it makes as the file ``CONVERTED_PATH``
(``<gateway-api>``), listed after every other, exactly as ``sources.registered``'s
entries are: the converted Gateways and VirtualServices go through the same indexes and
cross-checks as those of files, and the conversion's problems are that file's problems.

``converted_file`` reruns the conversion only when its inputs changed (any Gateway API
object or any service: compared by value, which is by identity for what did not change),
so an incremental load gives what a cold one gives; converted objects equal to the last
load's are those very objects (translation recognises unchanged input by identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsd.errors import Problem
from xdsd.model import MeshObject, Origin, RawResource, ResourceKey, Service, VirtualService
from xdsd.model.gateway_api import CONTROLLER_NAME, NO_GATEWAY_API, Condition, GatewayAPI
from xdsd.model.networking import Gateway
from xdsd.sources.gateway_api.convert import convert


@dataclass(frozen=True, slots=True)
class ConvertedFile:
    """What the synthetic Gateway API file holds (``crosscheck.FileContents``), with the
    conversion's conditions and the inputs it was made from."""

    resources: tuple[tuple[MeshObject, Origin], ...] = ()
    raw: tuple[RawResource, ...] = ()
    problems: tuple[Problem, ...] = ()
    conditions: tuple[Condition, ...] = ()
    api: GatewayAPI = field(default=NO_GATEWAY_API, compare=False, repr=False)
    services: tuple[Service, ...] = field(default=(), compare=False, repr=False)


NO_CONVERSION = ConvertedFile()


def converted_file(
    api: GatewayAPI,
    services: tuple[Service, ...],
    previous: ConvertedFile = NO_CONVERSION,
    root: str = "",
) -> ConvertedFile:
    """What the conversion of ``api`` over ``services`` makes, as a file; ``previous``
    itself when the inputs are those it was made from (or there is no Gateway API object
    now nor then), else a new one whose objects equal to ``previous``'s are those very
    objects. Certificate files named by path are relative to ``root``."""
    if not api and not previous.api:
        return previous
    if api == previous.api and services == previous.services:
        return previous
    if not api:
        return NO_CONVERSION
    out = convert(api, services, root)
    problems = (*refused_problems(api), *out.problems)
    before: dict[ResourceKey, MeshObject] = {obj.key: obj for obj, _ in previous.resources}
    resources: list[tuple[MeshObject, Origin]] = []
    made: list[Gateway | VirtualService] = [*out.gateways, *out.virtual_services]
    for obj in made:
        old = before.get(obj.key)
        kept: MeshObject = obj
        if old is not None and old == obj and old.origin == obj.origin:
            kept = old
        resources.append((kept, kept.origin))
    return ConvertedFile(tuple(resources), (), problems, out.conditions, api, services)


def refused_problems(api: GatewayAPI) -> list[Problem]:
    """An error at each field xdsd does not honour (``KubeGateway.refused``) of each
    Gateway whose GatewayClass is xdsd's."""
    ours = {c.name for c in api.classes if c.controller_name == CONTROLLER_NAME}
    out: list[Problem] = []
    for gateway in api.gateways:
        if gateway.gateway_class_name not in ours:
            continue
        lines = dict(gateway.lines)
        for key in gateway.refused:
            out.append(
                Problem(
                    gateway.origin.path,
                    lines.get(key, gateway.origin.line),
                    key,
                    f"is not supported by xdsd (Gateway {gateway.namespace}/{gateway.name} "
                    f"of class {gateway.gateway_class_name}); remove it",
                )
            )
    return out
