"""EnvoyFilter specs → model objects (Istio's networking.istio.io API).

A patch's ``value`` is kept as canonical JSON text (and the line it is written on), after
checking that it parses as the Envoy message its ``applyTo`` patches (so a bad value
refuses the file like any bad field; translation parses it again to apply it, see
``xdsd.translate.patches``).
"""

from __future__ import annotations

import json

from xdsd.located import Fields
from xdsd.model import Origin
from xdsd.model.networking import (
    ApplyTo,
    ConfigPatch,
    EnvoyFilter,
    PatchContext,
    PatchMatch,
    PatchOperation,
)
from xdsd.resources.patch_values import parse_patch_value

FILTER_UNSUPPORTED = ("targetRefs", "targetRef")
LISTENER_MATCH_UNSUPPORTED = ("portName",)
CHAIN_MATCH_UNSUPPORTED = ("sni", "transportProtocol", "applicationProtocols", "destinationPort")
ROUTE_MATCH_UNSUPPORTED = ("portName", "gateway")
VHOST_MATCH_UNSUPPORTED = ("domainName",)
HTTP_ROUTE_MATCH_UNSUPPORTED = ("action",)
HCM_FILTER = "envoy.filters.network.http_connection_manager"
#: The node metadata keys ``match.proxy.metadata`` may test: the ones xdsd reads from a
#: node (everything else is not part of a node class).
PROXY_METADATA_KEYS = ("namespace", "role", "client", "instance_ip", "outbound_ip")

#: The operations each ApplyTo accepts: what Istio's patch code applies (its API reference
#: is narrower in places: it calls ADD and REMOVE "ignored" for HTTP_ROUTE and REPLACE valid
#: for filters only, but pilot adds and removes routes and replaces virtual hosts). Istio
#: turns INSERT_FIRST on a FILTER_CHAIN into ADD (appended), and so does xdsd.
OPERATIONS: dict[ApplyTo, frozenset[PatchOperation]] = {
    ApplyTo.LISTENER: frozenset({PatchOperation.MERGE, PatchOperation.ADD, PatchOperation.REMOVE}),
    ApplyTo.FILTER_CHAIN: frozenset(
        {
            PatchOperation.MERGE,
            PatchOperation.ADD,
            PatchOperation.REMOVE,
            PatchOperation.INSERT_FIRST,
        }
    ),
    ApplyTo.NETWORK_FILTER: frozenset(PatchOperation),
    ApplyTo.HTTP_FILTER: frozenset(PatchOperation),
    ApplyTo.ROUTE_CONFIGURATION: frozenset({PatchOperation.MERGE}),
    ApplyTo.VIRTUAL_HOST: frozenset(
        {PatchOperation.MERGE, PatchOperation.ADD, PatchOperation.REMOVE, PatchOperation.REPLACE}
    ),
    ApplyTo.HTTP_ROUTE: frozenset(
        {
            PatchOperation.MERGE,
            PatchOperation.ADD,
            PatchOperation.INSERT_BEFORE,
            PatchOperation.INSERT_AFTER,
            PatchOperation.INSERT_FIRST,
            PatchOperation.REMOVE,
        }
    ),
    ApplyTo.CLUSTER: frozenset({PatchOperation.MERGE, PatchOperation.ADD, PatchOperation.REMOVE}),
}


def parse_envoy_filter(spec: Fields, name: str, namespace: str, origin: Origin) -> EnvoyFilter:
    """An Istio EnvoyFilter: its patches in order, each checked for an operation its
    ``applyTo`` allows and a value where the operation needs one."""
    selector: tuple[tuple[str, str], ...] = ()
    sel = spec.obj("workloadSelector")
    if sel is not None:
        selector = sel.labels("labels")
        sel.finish()
    patches = spec.parse_list("configPatches", _parse_patch)
    if not spec.has("configPatches"):
        spec.error("configPatches", "is required: an EnvoyFilter needs at least one patch")
    priority = spec.integer("priority", minimum=-(2**31), maximum=2**31 - 1)
    spec.finish(FILTER_UNSUPPORTED, "use workloadSelector")
    return EnvoyFilter(name, namespace, selector, patches, priority, origin=origin)


def _parse_patch(f: Fields) -> ConfigPatch | None:
    if not f.has("applyTo"):
        f.error("applyTo", "is required")
    apply_to = f.enum("applyTo", ApplyTo, ApplyTo.LISTENER)
    match = _parse_match(f.obj("match"), apply_to)
    patch = f.obj("patch", required=True)
    f.finish()
    if patch is None:
        return None
    if not patch.has("operation"):
        patch.error("operation", "is required")
    operation = patch.enum("operation", PatchOperation, PatchOperation.MERGE)
    value = patch._get("value")
    value_line = patch.report.doc.line_of((*patch.report.base, *patch.path, "value"))
    filter_class = patch.string("filterClass")
    patch.finish()
    if operation not in OPERATIONS[apply_to]:
        allowed = ", ".join(sorted(o.value for o in OPERATIONS[apply_to]))
        patch.error(
            "operation", f"{operation.value} does not apply to {apply_to.value} ({allowed})"
        )
    needs_value = operation not in (PatchOperation.REMOVE,)
    if needs_value and not isinstance(value, dict):
        patch.error("value", f"is required for {operation.value}: a mapping (the Envoy message)")
        return None
    if filter_class and apply_to is not ApplyTo.HTTP_FILTER:
        patch.error("filterClass", "applies to HTTP_FILTER patches only")
    elif filter_class:
        patch.warn("filterClass", "has no effect: Istio's pilot does not read it either")
    if value:
        try:
            parse_patch_value(apply_to.value, value)
        except ValueError as err:
            patch.error("value", str(err))
    text = json.dumps(value, sort_keys=True, separators=(",", ":")) if value else ""
    return ConfigPatch(apply_to, operation, match, text, filter_class, value_line=value_line)


def _parse_match(f: Fields | None, apply_to: ApplyTo) -> PatchMatch:
    if f is None:
        return PatchMatch()
    context = f.enum("context", PatchContext, PatchContext.ANY)
    proxy_meta: tuple[tuple[str, str], ...] = ()
    proxy = f.obj("proxy")
    if proxy is not None:
        proxy_meta = proxy.labels("metadata")
        for key, _ in proxy_meta:
            if key not in PROXY_METADATA_KEYS:
                known = ", ".join(PROXY_METADATA_KEYS)
                proxy.error(
                    "metadata",
                    f"key {key!r}: xdsd matches only the node metadata it reads ({known})",
                )
        proxy.finish(("proxyVersion",), "xdsd serves one Envoy version range")
    fields: dict[str, object] = {"context": context, "proxy_metadata": proxy_meta}
    listener, routes, cluster = f.obj("listener"), f.obj("routeConfiguration"), f.obj("cluster")
    given = [
        n
        for n, o in (("listener", listener), ("routeConfiguration", routes), ("cluster", cluster))
        if o is not None
    ]
    if len(given) > 1:
        f.error(given[1], f"excludes {given[0]}: a patch matches one kind of object")
    if listener is not None:
        fields.update(kind="listener", **_listener_match(listener))
        if fields.get("sub_filter_name") and apply_to is not ApplyTo.HTTP_FILTER:
            f.error(
                "listener", f"subFilter selects HTTP filters: it does not apply to {apply_to.value}"
            )
        if apply_to in (
            ApplyTo.ROUTE_CONFIGURATION,
            ApplyTo.VIRTUAL_HOST,
            ApplyTo.HTTP_ROUTE,
            ApplyTo.CLUSTER,
        ):
            f.error("listener", f"does not select {apply_to.value} objects")
    elif routes is not None:
        fields.update(kind="route_configuration", **_route_match(routes))
        if apply_to not in (ApplyTo.ROUTE_CONFIGURATION, ApplyTo.VIRTUAL_HOST, ApplyTo.HTTP_ROUTE):
            f.error("routeConfiguration", f"does not select {apply_to.value} objects")
    elif cluster is not None:
        fields.update(kind="cluster", **_cluster_match(cluster))
        if apply_to is not ApplyTo.CLUSTER:
            f.error("cluster", f"does not select {apply_to.value} objects")
    f.finish()
    return PatchMatch(**fields)  # type: ignore[arg-type]


def _listener_match(f: Fields) -> dict[str, object]:
    out: dict[str, object] = {
        "port_number": f.port("portNumber"),
        "listener_name": f.string("name"),
    }
    chain = f.obj("filterChain")
    if chain is not None:
        out["filter_chain_name"] = chain.string("name")
        flt = chain.obj("filter")
        if flt is not None:
            out["filter_name"] = flt.string("name", required=True)
            sub = flt.obj("subFilter")
            if sub is not None:
                out["sub_filter_name"] = sub.string("name", required=True)
                if out["filter_name"] not in ("", HCM_FILTER):
                    flt.error("name", f"must be {HCM_FILTER} to match a subFilter")
                sub.finish()
            flt.finish()
        chain.finish(CHAIN_MATCH_UNSUPPORTED)
    f.finish(LISTENER_MATCH_UNSUPPORTED)
    return out


def _route_match(f: Fields) -> dict[str, object]:
    out: dict[str, object] = {
        "port_number": f.port("portNumber"),
        "route_config_name": f.string("name"),
    }
    vhost = f.obj("vhost")
    if vhost is not None:
        out["vhost_name"] = vhost.string("name")
        route = vhost.obj("route")
        if route is not None:
            out["route_name"] = route.string("name", required=True)
            route.finish(HTTP_ROUTE_MATCH_UNSUPPORTED)
        vhost.finish(VHOST_MATCH_UNSUPPORTED)
    f.finish(ROUTE_MATCH_UNSUPPORTED)
    return out


def _cluster_match(f: Fields) -> dict[str, object]:
    out: dict[str, object] = {
        "port_number": f.port("portNumber"),
        "service": f.string("service"),
        "subset": f.string("subset"),
        "cluster_name": f.string("name"),
    }
    f.finish()
    return out
