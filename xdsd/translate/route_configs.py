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

A node that a Sidecar limits sees only some services: its route configurations are built
from port groups holding just those (``view`` names them; None for the unscoped ones),
with a catch-all virtual host answering 502 under an explicit REGISTRY_ONLY policy
(``block_unknown``), and are kept per (name, style, caller, view, block_unknown): nodes
that see the same services share them, across reloads too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

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

#: A route configuration's memo key: (name, style, caller, view, block_unknown).
ConfigKey = tuple[str, MatcherStyle, Caller, Hashable, bool]


class RouteConfigs:
    """The route configurations of one mesh, per matcher style (see the module doc).

    Holds nothing of the previous translation but its plain memo tables, so no chain of
    translations is kept alive. Not thread-safe.
    """

    def __init__(self, mesh: Mesh, *, previous: RouteConfigs | None = None) -> None:
        self.mesh = mesh
        self._builders: dict[MatcherStyle, RouteBuilder] = {}
        self._configs: dict[ConfigKey, RouteConfigEntry] = {}
        self._relevance: Relevance | None = None
        self._port_vhosts: dict[tuple[int, Hashable], list[VirtualHostSpec]] = {}
        self._group_inputs: dict[tuple[int, MatcherStyle, Hashable], tuple[Hashable, ...]] = {}
        self._prev_configs = previous._configs if previous is not None else {}
        self._prev_routes = (
            {style: (b.memo, b.encoded) for style, b in previous._builders.items()}
            if previous is not None
            else {}
        )

    def builder(self, style: MatcherStyle) -> RouteBuilder:
        """The route builder of ``style`` (routes per service port, memoized)."""
        found = self._builders.get(style)
        if found is None:
            memo, encoded = self._prev_routes.get(style, (None, None))
            found = RouteBuilder(self.mesh, style, previous=memo, previous_encoded=encoded)
            self._builders[style] = found
        return found

    def caller(self, labels: tuple[tuple[str, str], ...], namespace: str) -> Caller:
        """The ``Caller`` a proxy with ``labels`` in ``namespace`` is for this mesh's
        rules (``NO_CALLER`` when no rule names source labels or a source namespace)."""
        if self._relevance is None:
            self._relevance = self.builder(MatcherStyle.STRING_MATCH).relevance()
        return caller_of(labels, namespace, self._relevance)

    def vhosts_for_port(self, group: PortGroup, view: Hashable = None) -> list[VirtualHostSpec]:
        """The virtual hosts of the per-port route configuration of ``group`` (``view``:
        which services of the port it holds, None for all of them)."""
        key = (group.number, view)
        found = self._port_vhosts.get(key)
        if found is None:
            # Services of resolution NONE are reached through the HTTP proxy only (see
            # ``forward_proxy``).
            found = dedupe_domains(
                (service, port, port_domains(service, port.number))
                for service, port in group.http
                if service.resolution is not Resolution.NONE
            )
            self._port_vhosts[key] = found
        return found

    def port_routes(
        self,
        group: PortGroup,
        style: MatcherStyle,
        caller: Caller = NO_CALLER,
        *,
        view: Hashable = None,
        name: str = "",
        block_unknown: bool = False,
    ) -> Resource:
        """The route configuration of ``group``'s port (named like the port unless
        ``name`` is given), as ``caller`` sees it; ``view`` says which services of the
        port ``group`` holds (None: all of them), ``block_unknown`` adds the REGISTRY_ONLY
        catch-all.

        Raises TranslationError listing every rule that cannot be translated.
        """
        name = name or port_route_name(group.number)
        builder = self.builder(style)
        return self._config(
            (name, style, caller, view, block_unknown),
            self._inputs_of_group(group, style, view),
            lambda: builder.route_configuration_resource(
                name, self.vhosts_for_port(group, view), caller, block_unknown=block_unknown
            ),
        )

    def proxy_routes(
        self,
        groups: Sequence[PortGroup],
        style: MatcherStyle,
        caller: Caller = NO_CALLER,
        *,
        view: Hashable = None,
        block_unknown: bool = False,
    ) -> Resource:
        """The ``http_proxy`` route configuration over every HTTP service port of
        ``groups``, as ``caller`` sees it (``view`` and ``block_unknown`` as for
        ``port_routes``; ``view`` must tell apart every selection ``groups`` may be).
        Raises TranslationError as ``port_routes`` does."""
        builder = self.builder(style)

        def build() -> Resource:
            vhosts = dedupe_domains(
                (service, port, proxy_domains(service, port.number))
                for group in groups
                for service, port in group.http
            )
            return builder.route_configuration_resource(
                HTTP_PROXY_ROUTES, vhosts, caller, block_unknown=block_unknown
            )

        inputs = tuple(self._inputs_of_group(g, style, view) for g in groups)
        return self._config((HTTP_PROXY_ROUTES, style, caller, view, block_unknown), inputs, build)

    def _inputs_of_group(
        self, group: PortGroup, style: MatcherStyle, view: Hashable
    ) -> tuple[Hashable, ...]:
        """What the virtual hosts of a port group's HTTP services are made of."""
        key = (group.number, style, view)
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
        self, key: ConfigKey, inputs: tuple[Hashable, ...], build: Callable[[], Resource]
    ) -> Resource:
        """The route configuration ``build`` makes, memoized in this translation and taken
        over from the previous one when its ``inputs`` compare equal."""
        found = self._configs.get(key)
        if found is None:
            old = self._prev_configs.get(key)
            if old is not None and old.inputs == inputs:
                found = old
            else:
                found = RouteConfigEntry(inputs, build())
            self._configs[key] = found
        return found.resource
