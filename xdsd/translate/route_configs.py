"""``RouteConfigs``: a mesh's shared route configurations, carried across reloads.

How this works: the route configuration of a port (``PORT``) holds a virtual host per HTTP
service on that port, and ``http_proxy`` one per HTTP service port of the mesh: each
depends on many services at once. Each is remembered with its *inputs*, a tuple of what
each of its virtual hosts is made of (the service's names, the port, and what its routes
are made of, see ``RouteBuilder.inputs``). The next translation compares the inputs it
computes with the remembered ones: tuples of mostly identical objects compare in C, so an
edit that does not touch routing (an endpoint, a subset's labels) keeps every route
configuration object as it was, neither rebuilt nor encoded again. Route messages of the
services that did not change are reused even when a configuration is rebuilt.

A route configuration also depends on the ``Caller`` (the labels and namespace of the
proxy, reduced to what the mesh's ``sourceLabels``/``sourceNamespace`` name): each is
kept per (name, matcher style, caller), so proxies whose labels no rule looks at share
one object.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from xdsd.model import Mesh, Resolution
from xdsd.resources import Resource
from xdsd.translate.listeners import HTTP_PROXY_ROUTES, port_route_name
from xdsd.translate.placement import PortGroup
from xdsd.translate.reuse import RouteConfigEntry
from xdsd.translate.route_matches import NO_CALLER, Caller, MatcherStyle, Relevance, caller_of
from xdsd.translate.routes import (
    RouteBuilder,
    VirtualHostSpec,
    dedupe_domains,
    port_domains,
    proxy_domains,
)


class RouteConfigs:
    """The route configurations of one mesh, per matcher style (see the module doc).

    Holds nothing of the previous translation but its plain memo tables, so no chain of
    translations is kept alive. Not thread-safe.
    """

    def __init__(self, mesh: Mesh, *, previous: RouteConfigs | None = None) -> None:
        self.mesh = mesh
        self._builders: dict[MatcherStyle, RouteBuilder] = {}
        self._configs: dict[tuple[str, MatcherStyle, Caller], RouteConfigEntry] = {}
        self._relevance: Relevance | None = None
        self._port_vhosts: dict[int, list[VirtualHostSpec]] = {}
        self._group_inputs: dict[tuple[int, MatcherStyle], tuple[Hashable, ...]] = {}
        self._prev_configs = previous._configs if previous is not None else {}
        self._prev_routes = (
            {style: b.memo for style, b in previous._builders.items()}
            if previous is not None
            else {}
        )

    def builder(self, style: MatcherStyle) -> RouteBuilder:
        """The route builder of ``style`` (routes per service port, memoized)."""
        found = self._builders.get(style)
        if found is None:
            found = RouteBuilder(self.mesh, style, previous=self._prev_routes.get(style))
            self._builders[style] = found
        return found

    def caller(self, labels: tuple[tuple[str, str], ...], namespace: str) -> Caller:
        """The ``Caller`` a proxy with ``labels`` in ``namespace`` is for this mesh's
        rules (``NO_CALLER`` when no rule names source labels or a source namespace)."""
        if self._relevance is None:
            self._relevance = self.builder(MatcherStyle.STRING_MATCH).relevance()
        return caller_of(labels, namespace, self._relevance)

    def vhosts_for_port(self, group: PortGroup) -> list[VirtualHostSpec]:
        """The virtual hosts of the per-port route configuration of ``group``."""
        found = self._port_vhosts.get(group.number)
        if found is None:
            # Services of resolution NONE are reached through the HTTP proxy only (see
            # ``forward_proxy``).
            found = dedupe_domains(
                (service, port, port_domains(service, port.number))
                for service, port in group.http
                if service.resolution is not Resolution.NONE
            )
            self._port_vhosts[group.number] = found
        return found

    def port_routes(
        self, group: PortGroup, style: MatcherStyle, caller: Caller = NO_CALLER
    ) -> Resource:
        """The route configuration named like ``group``'s port, as ``caller`` sees it.

        Raises TranslationError listing every rule that cannot be translated.
        """
        name = port_route_name(group.number)
        builder = self.builder(style)
        return self._config(
            name,
            style,
            caller,
            self._inputs_of_group(group, style),
            lambda: builder.route_configuration(name, self.vhosts_for_port(group), caller),
        )

    def proxy_routes(
        self, groups: Sequence[PortGroup], style: MatcherStyle, caller: Caller = NO_CALLER
    ) -> Resource:
        """The ``http_proxy`` route configuration over every HTTP service port of
        ``groups``, as ``caller`` sees it. Raises TranslationError as ``port_routes``
        does."""
        builder = self.builder(style)

        def build() -> Any:
            vhosts = dedupe_domains(
                (service, port, proxy_domains(service, port.number))
                for group in groups
                for service, port in group.http
            )
            return builder.route_configuration(HTTP_PROXY_ROUTES, vhosts, caller)

        inputs = tuple(self._inputs_of_group(g, style) for g in groups)
        return self._config(HTTP_PROXY_ROUTES, style, caller, inputs, build)

    def _inputs_of_group(self, group: PortGroup, style: MatcherStyle) -> tuple[Hashable, ...]:
        """What the virtual hosts of a port group's HTTP services are made of."""
        key = (group.number, style)
        found = self._group_inputs.get(key)
        if found is None:
            builder = self.builder(style)
            # Whether a service is resolution NONE decides whether the per-port
            # configuration has it (see ``vhosts_for_port``).
            found = tuple(
                (
                    service.host_names,
                    port.number,
                    service.resolution is Resolution.NONE,
                    builder.inputs(service, port.number),
                )
                for service, port in group.http
            )
            self._group_inputs[key] = found
        return found

    def _config(
        self,
        name: str,
        style: MatcherStyle,
        caller: Caller,
        inputs: tuple[Hashable, ...],
        build: Callable[[], Any],
    ) -> Resource:
        """The route configuration ``build`` makes, memoized in this translation and taken
        over from the previous one when its ``inputs`` compare equal."""
        key = (name, style, caller)
        found = self._configs.get(key)
        if found is None:
            old = self._prev_configs.get(key)
            if old is not None and old.inputs == inputs:
                found = old
            else:
                found = RouteConfigEntry(inputs, Resource.of(name, build()))
            self._configs[key] = found
        return found.resource
