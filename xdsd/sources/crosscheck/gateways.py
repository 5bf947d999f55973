"""Gateway references: the Gateways each VirtualService names, and names no Gateway has."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from xdsd.errors import Problem, Severity
from xdsd.model import ResourceKey, VirtualService
from xdsd.model.networking import gateway_key
from xdsd.sources.crosscheck.index import NONE, did_you_mean, file_under, problem_at, unindex


class GatewayReferences:
    """The Gateways each VirtualService names (``gateways``), who names each, and the
    warnings for names no Gateway answers to (Istio accepts them)."""

    def __init__(self) -> None:
        self._named: dict[ResourceKey, tuple[ResourceKey, ...]] = {}
        self._by_gateway: dict[ResourceKey, set[ResourceKey]] = {}
        self._problems: dict[ResourceKey, list[Problem]] = {}
        # The VirtualServices naming a Gateway that is not defined.
        self._unknown: set[ResourceKey] = set()

    def update(
        self,
        virtual: set[ResourceKey],
        gateways: set[ResourceKey],
        virtual_services: Mapping[ResourceKey, VirtualService],
        defined: Collection[ResourceKey],
    ) -> None:
        """Check again the ``gateways`` of the VirtualServices in ``virtual`` (checked
        again or removed) and of those naming a Gateway in ``gateways`` (added or
        removed); ``virtual_services`` are the VirtualServices by key, ``defined`` the
        keys of the Gateways."""
        recheck = set(virtual)
        for gw in gateways:
            recheck |= self._by_gateway.get(gw, NONE)
        if gateways:
            recheck |= self._unknown  # their hints depend on every Gateway's name
        for key in recheck:
            for gw in self._named.pop(key, ()):
                unindex(self._by_gateway, gw, key)
            vs = virtual_services.get(key)
            if vs is None:
                self._problems.pop(key, None)
                self._unknown.discard(key)
                continue
            named, problems = gateway_problems(vs, defined)
            if problems:
                self._unknown.add(key)
            else:
                self._unknown.discard(key)
            self._named[key] = named
            for gw in named:
                self._by_gateway.setdefault(gw, set()).add(key)
            file_under(self._problems, key, problems)

    def problems(self) -> list[Problem]:
        """The warnings, by VirtualService key."""
        return [p for key in sorted(self._problems) for p in self._problems[key]]


def gateway_problems(
    vs: VirtualService, defined: Collection[ResourceKey]
) -> tuple[tuple[ResourceKey, ...], list[Problem]]:
    """The Gateways ``vs`` names in ``gateways`` (``mesh`` left out), and a warning for
    each that is not in ``defined`` (naming a defined Gateway of that namespace whose name
    is near, as the reference was written)."""
    named: list[ResourceKey] = []
    problems: list[Problem] = []
    for i, reference in enumerate(vs.gateways):
        gw = gateway_key(reference, vs.namespace)
        if gw is None:
            continue
        named.append(gw)
        if gw not in defined:
            near = did_you_mean(gw.name, [k.name for k in defined if k.namespace == gw.namespace])
            if near and "/" in reference:
                near = near.replace("mean '", f"mean '{gw.namespace}/", 1)
            problems.append(
                problem_at(
                    vs.origin,
                    f"gateways[{i}]",
                    f"no Gateway {gw.namespace}/{gw.name}: the rule applies to it once "
                    "one is defined" + near,
                    Severity.WARNING,
                    vs.lines,
                )
            )
    return tuple(named), problems
