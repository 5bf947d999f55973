"""Behaviour of EnvoyFilter patches, proven by real requests through real Envoy sidecars
configured by xdsd (one mesh for the module; each test its own host).

Two clients: ``patched`` (label ``app: patched``, which the filters select) and ``plain``
(label ``app: plain``, which none selects).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh

FILTERS = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua}
spec:
  workloadSelector: {labels: {app: patched}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: PORT
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code:
            inline_string: |
              function envoy_on_response(handle)
                handle:headers():add("x-lua", "yes")
              end
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: PORT
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.cors}
    patch: {operation: REMOVE}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: clusters}
spec:
  workloadSelector: {labels: {app: patched}}
  configPatches:
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {service: merged, portNumber: PORT}
    patch:
      operation: MERGE
      value:
        connect_timeout: 7s
        per_connection_buffer_limit_bytes: 32768
        circuit_breakers:
          thresholds: [{max_connections: 7, max_pending_requests: 3}]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: routes}
spec:
  workloadSelector: {labels: {app: patched}}
  configPatches:
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        portNumber: PORT
        vhost:
          name: direct.default.svc.cluster.local:PORT
          route: {name: default}
    patch:
      operation: INSERT_BEFORE
      value:
        name: teapot
        match: {prefix: /teapot}
        direct_response: {status: 418, body: {inline_string: short and stout}}
  - applyTo: VIRTUAL_HOST
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        portNumber: PORT
        vhost: {name: "vhost.default.svc.cluster.local:PORT"}
    patch:
      operation: MERGE
      value:
        response_headers_to_add:
        - header: {key: x-vhost, value: merged}
  - applyTo: VIRTUAL_HOST
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration: {portNumber: PORT}
    patch:
      operation: ADD
      value:
        name: added.example
        domains: [added.example]
        routes:
        - match: {prefix: /}
          direct_response: {status: 204}
"""


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.mesh = TrafficMesh(tmp)
        m = self.mesh
        self.ups = {name: m.upstream(name) for name in ("lua", "merged", "direct", "vhost")}
        for name, up in self.ups.items():
            m.service(name, [up])
        m.rule("filters", FILTERS.replace("PORT", str(m.port)))
        self.patched = m.start("patched", labels={"app": "patched"})
        self.plain = m.start("plain", labels={"app": "plain"})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("envoy-filters"))
    try:
        yield mesh
    finally:
        mesh.mesh.stop()


def dump(sidecar: Sidecar) -> Any:
    return sidecar.envoy.admin_json("/config_dump")


def dumped(sidecar: Sidecar, kind: str) -> list[Any]:
    """The active dynamic listeners / clusters of the sidecar's ``/config_dump``."""
    for config in dump(sidecar)["configs"]:
        if kind == "listeners" and "dynamic_listeners" in config:
            return [d["active_state"][kind[:-1]] for d in config["dynamic_listeners"]]
        if kind == "clusters" and "dynamic_active_clusters" in config:
            return [d["cluster"] for d in config["dynamic_active_clusters"]]
    return []


def http_filters(sidecar: Sidecar, port: int) -> list[str]:
    """The HTTP filter names of the sidecar's outbound listener on ``port``."""
    for listener in dumped(sidecar, "listeners"):
        if listener["address"]["socket_address"]["port_value"] == port:
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            return [f["name"] for f in hcm["http_filters"]]
    raise AssertionError(f"no listener on {port}")


def cluster(sidecar: Sidecar, host: str, port: int) -> Any:
    name = f"outbound|{port}||{host}.default.svc.cluster.local"
    for c in dumped(sidecar, "clusters"):
        if c["name"] == name:
            return c
    raise AssertionError(f"no cluster {name}")


def test_lua_filter_inserted_before_router_adds_a_response_header(env: Mesh) -> None:
    """applyTo HTTP_FILTER, INSERT_BEFORE the router (match.context SIDECAR_OUTBOUND,
    listener.portNumber, filterChain.filter.name, subFilter.name; patch.value an
    envoy.filters.http.lua with typed_config): the client sees the header its Lua code
    adds, on an answer from the upstream."""
    reply = env.patched.request("lua", "/x")
    assert reply.status == 200 and reply.backend == "lua"
    assert reply.headers.get("x-lua") == "yes"
    filters = http_filters(env.patched, env.mesh.port)
    assert filters.index("envoy.filters.http.lua") == filters.index("envoy.filters.http.router") - 1


def test_http_filter_remove_visible_in_config_dump(env: Mesh) -> None:
    """applyTo HTTP_FILTER, operation REMOVE with subFilter.name envoy.filters.http.cors:
    Envoy's listener has no CORS filter left (and still routes)."""
    filters = http_filters(env.patched, env.mesh.port)
    assert "envoy.filters.http.cors" not in filters
    assert "envoy.filters.http.fault" in filters
    assert env.patched.request("lua", "/").status == 200


def test_cluster_merge_visible_in_config_dump(env: Mesh) -> None:
    """applyTo CLUSTER, operation MERGE matched by cluster.service (a short name) and
    portNumber: connect_timeout replaced (a Duration is replaced whole), a buffer limit
    set, and circuit-breaker thresholds appended to the generated ones (proto merge
    appends repeated fields, as in Istio), on that cluster only."""
    merged = cluster(env.patched, "merged", env.mesh.port)
    assert merged["connect_timeout"] == "7s"
    assert merged["per_connection_buffer_limit_bytes"] == 32768
    thresholds = merged["circuit_breakers"]["thresholds"]
    assert {"max_connections": 7, "max_pending_requests": 3} in [
        {k: t.get(k) for k in ("max_connections", "max_pending_requests")} for t in thresholds
    ]
    assert cluster(env.patched, "lua", env.mesh.port)["connect_timeout"] != "7s"
    assert env.patched.request("merged", "/").backend == "merged"


def test_http_route_inserted_before_a_named_route_answers_directly(env: Mesh) -> None:
    """applyTo HTTP_ROUTE, INSERT_BEFORE the route named ``default`` of one virtual host
    (routeConfiguration.portNumber, vhost.name, vhost.route.name): a direct_response route
    answers /teapot itself; other paths still reach the upstream."""
    teapot = env.patched.request("direct", "/teapot")
    assert (teapot.status, teapot.body, teapot.backend) == (418, b"short and stout", "")
    assert env.patched.request("direct", "/other").backend == "direct"
    assert env.patched.request("lua", "/teapot").backend == "lua"  # another virtual host


def test_virtual_host_merge_and_add(env: Mesh) -> None:
    """applyTo VIRTUAL_HOST: MERGE of response_headers_to_add into one virtual host (by
    vhost.name), and ADD of a new virtual host to the route configuration of the port."""
    reply = env.patched.request("vhost", "/")
    assert reply.backend == "vhost" and reply.headers.get("x-vhost") == "merged"
    assert "x-vhost" not in env.patched.request("lua", "/").headers
    assert env.patched.request("added.example", "/").status == 204


def test_workload_selector_that_does_not_match_leaves_a_client_untouched(env: Mesh) -> None:
    """workloadSelector.labels: the ``plain`` client (other labels) gets none of the
    patches: no Lua header, CORS filter kept, default connect timeout, no added routes."""
    reply = env.plain.request("lua", "/x")
    assert reply.backend == "lua" and "x-lua" not in reply.headers
    filters = http_filters(env.plain, env.mesh.port)
    assert "envoy.filters.http.cors" in filters and "envoy.filters.http.lua" not in filters
    assert cluster(env.plain, "merged", env.mesh.port)["connect_timeout"] == "10s"
    assert env.plain.request("direct", "/teapot").backend == "direct"
    assert env.plain.request("added.example", "/").status == 404
