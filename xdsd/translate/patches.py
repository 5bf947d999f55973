"""EnvoyFilter patches applied to generated resources, as Istio's pilot applies them.

How this works: the ``patch_*`` functions take one generated resource, its context and
the patches that may change it (``patch_spec``: parsed ``Patch`` values, ``relevant``
ones, in order), and return a patched copy (the input is never modified: it is shared
between node classes) with the patches that changed it, or None when a patch removed it;
``added`` gives the listeners and clusters that ADD patches create (``added_value``
one). ``filters.EnvoyFilters`` drives all of it for a node class. The walk follows
Istio's (``pilot/pkg/networking/core/envoyfilter``): a listener's own MERGE and REMOVE,
then each filter chain (MERGE, REMOVE), its network filters (ADD, INSERT_*, REPLACE,
REMOVE, then MERGE), the HTTP filters of each HTTP connection manager likewise, then
FILTER_CHAIN ADDs; a route configuration's MERGE, then each virtual host (MERGE,
REPLACE, REMOVE) and its routes (MERGE, REMOVE, then ADD and INSERT_*), then virtual
host ADDs. MERGE is Istio's proto merge: singular fields set, messages merged
recursively, repeated fields appended, map entries replaced, a ``Duration`` replaced
whole; the ``typed_config`` of a filter (and a transport socket of the same name) is
merged as the message it holds, so a patch may change one field of a filter's
configuration.

Pure: no I/O. Raises TranslationError naming the EnvoyFilter's file, line and patch for a
MERGE of a filter configuration of another type (Istio drops every patch of the node
silently then).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message

from xdsd.errors import TranslationError
from xdsd.model.networking import (
    ApplyTo,
    PatchContext,
    PatchOperation,
)
from xdsd.resources import ensure_type_known, pack
from xdsd.resources.patch_values import PATCH_VALUE_TYPES
from xdsd.translate.patch_spec import ROUTE_FAMILY, Patch, in_context

HCM_FILTER = "envoy.filters.network.http_connection_manager"

_DURATION = "google.protobuf.Duration"


def merge(dst: Message, src: Message) -> None:
    """Istio's proto merge of ``src`` into ``dst``: set fields of ``src`` win, messages
    merge recursively, repeated fields are appended, map entries replaced, and a
    Duration is replaced whole (a field-wise merge of 1s into 0.5s would give 1.5s)."""
    for fd, value in src.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            target = getattr(dst, fd.name)
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif fd.is_repeated:
            target = getattr(dst, fd.name)
            if fd.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif fd.message_type is not None:
            sub = getattr(dst, fd.name)
            if fd.message_type.full_name == _DURATION:
                sub.CopyFrom(value)
            else:
                sub.SetInParent()
                merge(sub, value)
        else:
            setattr(dst, fd.name, value)


def _unpack(value: any_pb2.Any) -> Message | None:
    full = value.type_url.rsplit("/", 1)[-1]
    if not ensure_type_known(full):
        return None
    message: Message = symbol_database.Default().GetSymbol(full)()
    value.Unpack(message)
    return message


def merge_any(dst: any_pb2.Any, src: any_pb2.Any, patch: Patch, what: str) -> any_pb2.Any:
    """The Any holding ``dst``'s message with ``src``'s merged into it (Istio's
    MergeAnyWithAny). Raises TranslationError when the two hold different types."""
    if dst.type_url != src.type_url:
        raise TranslationError(
            [
                patch.problem(
                    f"cannot MERGE a {src.type_url.rsplit('/', 1)[-1]} into {what}, whose "
                    f"typed_config is a {dst.type_url.rsplit('/', 1)[-1]}: use REPLACE",
                    ".patch.value.typed_config",
                )
            ]
        )
    target, addition = _unpack(dst), _unpack(src)
    if target is None or addition is None:
        return dst
    merge(target, addition)
    return pack(target)


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _value(patch: Patch, cls: type[Message]) -> Any:
    out = cls()
    assert patch.value is not None
    out.CopyFrom(patch.value)
    return out


def _merge_transport_socket(dst: Any, value: Any, patch: Patch, what: str) -> Any:
    """Istio's transport socket merge for a filter chain or cluster ``dst``: when the
    patch value names the transport socket ``dst`` has (or one of a cluster's
    ``transport_socket_matches``), its typed_config is merged as its message; a
    cluster's transport socket of another name is replaced, and one no
    transport_socket_matches entry names is dropped (a cluster cannot have both). Returns
    the rest of the value, to merge as usual."""
    if not value.HasField("transport_socket"):
        return value
    socket = value.transport_socket
    rest = _copy(value)
    rest.ClearField("transport_socket")
    is_cluster = isinstance(dst, cluster_pb2.Cluster)
    target = None
    if is_cluster and len(dst.transport_socket_matches):
        for entry in dst.transport_socket_matches:
            if entry.HasField("transport_socket") and entry.transport_socket.name == socket.name:
                target = entry.transport_socket
                break
        if target is None:
            return rest
    elif dst.HasField("transport_socket") and dst.transport_socket.name == socket.name:
        target = dst.transport_socket
    if target is None:
        if is_cluster:
            dst.transport_socket.CopyFrom(socket)
            return rest
        return value
    if target.HasField("typed_config") and socket.HasField("typed_config"):
        target.typed_config.CopyFrom(
            merge_any(target.typed_config, socket.typed_config, patch, what)
        )
    return rest


# -- ordered lists ----------------------------------------------------------------------


def _apply_list_op(
    items: list[Any],
    patch: Patch,
    has_match: bool,
    matches: Callable[[Any, Patch], bool],
    cls: type[Message],
) -> bool:
    """Istio's ADD / INSERT_* / REPLACE / REMOVE of ``patch`` on an ordered list of
    ``cls`` messages (``None`` entries are removed ones, kept in place until the end);
    True when it changed ``items``."""
    op = patch.operation
    first = next((i for i, e in enumerate(items) if e is not None and matches(e, patch)), -1)

    def new() -> Any:
        return _value(patch, cls)

    if op is PatchOperation.ADD or (op is PatchOperation.INSERT_AFTER and not has_match):
        items.append(new())
    elif op is PatchOperation.INSERT_FIRST or (
        op is PatchOperation.INSERT_BEFORE and not has_match
    ):
        if patch.apply_to is ApplyTo.HTTP_ROUTE and has_match and first < 0:
            return False  # Istio: INSERT_FIRST of a route only when the route exists
        items.insert(0, new())
    elif op is PatchOperation.INSERT_BEFORE and first >= 0:
        items.insert(first, new())
    elif op is PatchOperation.INSERT_AFTER and first >= 0:
        items.insert(first + 1, new())
    elif op is PatchOperation.REPLACE and has_match and first >= 0:
        items[first] = new()
    elif op is PatchOperation.REMOVE and has_match and first >= 0:
        for i, e in enumerate(items):
            if e is not None and matches(e, patch):
                items[i] = None
    else:
        return False
    return True


def _rewrite(field_value: Any, items: list[Any]) -> None:
    del field_value[:]
    for item in items:
        if item is not None:
            field_value.add().CopyFrom(item)


# -- listeners --------------------------------------------------------------------------


class _Walk:
    """One resource's patching: the context, the patches and what applied."""

    def __init__(self, context: PatchContext, patches: Sequence[Patch]) -> None:
        self.context = context
        self.by_kind: dict[ApplyTo, list[Patch]] = {}
        for p in patches:
            if in_context(p, context):
                self.by_kind.setdefault(p.apply_to, []).append(p)
        self.applied: dict[Patch, None] = {}

    def of(self, kind: ApplyTo) -> list[Patch]:
        return self.by_kind.get(kind, [])

    def did(self, patch: Patch) -> None:
        self.applied[patch] = None


def _listener_match(listener: Any, p: Patch) -> bool:
    m = p.config.match
    if m.kind != "listener":
        return True
    if m.listener_name and m.listener_name != listener.name:
        return False
    return not m.port_number or listener.address.socket_address.port_value == m.port_number


def _chain_match(chain: Any, p: Patch) -> bool:
    m = p.config.match
    return m.kind != "listener" or not m.filter_chain_name or m.filter_chain_name == chain.name


def _has_filter_match(p: Patch) -> bool:
    return p.config.match.kind == "listener" and bool(p.config.match.filter_name)


def _filter_match(flt: Any, p: Patch) -> bool:
    return not _has_filter_match(p) or p.config.match.filter_name == flt.name


def _has_sub_filter_match(p: Patch) -> bool:
    return _has_filter_match(p) and bool(p.config.match.sub_filter_name)


def _sub_filter_match(flt: Any, p: Patch) -> bool:
    return not _has_sub_filter_match(p) or p.config.match.sub_filter_name == flt.name


def patch_listener(
    listener: Any, context: PatchContext, patches: Sequence[Patch]
) -> tuple[Any | None, tuple[Patch, ...]]:
    """A patched copy of ``listener`` (None when a LISTENER REMOVE selects it) and the
    patches that changed it. Inline route configurations of its HTTP connection managers
    are patched first (Istio patches them when it builds them), then the listener."""
    walk = _Walk(context, patches)
    out = _copy(listener)
    if any(walk.of(k) for k in ROUTE_FAMILY):
        for chain in _chains(out):
            for flt in chain.filters:
                if flt.name == HCM_FILTER and flt.HasField("typed_config"):
                    _patch_inline_routes(flt, walk)
    for p in walk.of(ApplyTo.LISTENER):
        if not _listener_match(out, p):
            continue
        if p.operation is PatchOperation.REMOVE:
            walk.did(p)
            return None, tuple(walk.applied)
        if p.operation is PatchOperation.MERGE:
            assert p.value is not None
            merge(out, p.value)
            walk.did(p)
    _patch_chains(out, walk)
    return out, tuple(walk.applied)


def _chains(listener: Any) -> list[Any]:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    return chains


def _patch_inline_routes(flt: Any, walk: _Walk) -> None:
    hcm = hcm_pb2.HttpConnectionManager()
    if not flt.typed_config.Unpack(hcm) or not hcm.HasField("route_config"):
        return
    before = len(walk.applied)
    _patch_routes_in_place(hcm.route_config, walk)
    if len(walk.applied) != before:
        flt.typed_config.CopyFrom(pack(hcm))


def _patch_chains(listener: Any, walk: _Walk) -> None:
    chain_patches = walk.of(ApplyTo.FILTER_CHAIN)
    kept = []
    removed_any = False
    for chain in listener.filter_chains:
        if len(chain.filters) and _patch_chain(listener, chain, walk):
            removed_any = True
            continue
        kept.append(chain)
    default = listener.default_filter_chain if listener.HasField("default_filter_chain") else None
    if default is not None and len(default.filters) and _patch_chain(listener, default, walk):
        listener.ClearField("default_filter_chain")
    if removed_any:
        kept = [_copy(c) for c in kept]
        _rewrite(listener.filter_chains, kept)
    for p in chain_patches:
        if p.operation is PatchOperation.ADD and _listener_match(listener, p):
            listener.filter_chains.add().CopyFrom(_value(p, listener_components_pb2.FilterChain))
            walk.did(p)


def _patch_chain(listener: Any, chain: Any, walk: _Walk) -> bool:
    """Patch one filter chain in place; True when a FILTER_CHAIN REMOVE selects it."""
    for p in walk.of(ApplyTo.FILTER_CHAIN):
        if not (_listener_match(listener, p) and _chain_match(chain, p)):
            continue
        if p.operation is PatchOperation.REMOVE:
            walk.did(p)
            return True
        if p.operation is PatchOperation.MERGE:
            rest = _merge_transport_socket(chain, p.value, p, f"filter chain {chain.name!r}")
            merge(chain, rest)
            walk.did(p)
    _patch_network_filters(listener, chain, walk)
    return False


def _patch_network_filters(listener: Any, chain: Any, walk: _Walk) -> None:
    items: list[Any] | None = None
    for p in walk.of(ApplyTo.NETWORK_FILTER):
        if p.operation is PatchOperation.MERGE:
            continue
        if not (_listener_match(listener, p) and _chain_match(chain, p)):
            continue
        if items is None:
            items = [_copy(f) for f in chain.filters]
        if _apply_list_op(
            items, p, _has_filter_match(p), _filter_match, listener_components_pb2.Filter
        ):
            walk.did(p)
    if items is not None:
        _rewrite(chain.filters, items)
    for flt in chain.filters:
        _patch_network_filter(listener, chain, flt, walk)


def _patch_network_filter(listener: Any, chain: Any, flt: Any, walk: _Walk) -> None:
    for p in walk.of(ApplyTo.NETWORK_FILTER):
        if p.operation is not PatchOperation.MERGE or not flt.HasField("typed_config"):
            continue
        if not (_listener_match(listener, p) and _chain_match(chain, p) and _filter_match(flt, p)):
            continue
        value = p.value
        assert isinstance(value, listener_components_pb2.Filter)
        if value.name:
            flt.name = value.name
        if value.HasField("typed_config"):
            flt.typed_config.CopyFrom(
                merge_any(flt.typed_config, value.typed_config, p, f"filter {flt.name!r}")
            )
        walk.did(p)
    if flt.name == HCM_FILTER and walk.of(ApplyTo.HTTP_FILTER):
        _patch_http_filters(listener, chain, flt, walk)


def _patch_http_filters(listener: Any, chain: Any, flt: Any, walk: _Walk) -> None:
    hcm = hcm_pb2.HttpConnectionManager()
    if not flt.HasField("typed_config") or not flt.typed_config.Unpack(hcm):
        return
    before = len(walk.applied)
    items: list[Any] | None = None
    patches = [
        p
        for p in walk.of(ApplyTo.HTTP_FILTER)
        if _listener_match(listener, p) and _chain_match(chain, p) and _filter_match(flt, p)
    ]
    for p in patches:
        if p.operation is PatchOperation.MERGE:
            continue
        if items is None:
            items = [_copy(f) for f in hcm.http_filters]
        if _apply_list_op(
            items, p, _has_sub_filter_match(p), _sub_filter_match, hcm_pb2.HttpFilter
        ):
            walk.did(p)
    if items is not None:
        _rewrite(hcm.http_filters, items)
    for http_filter in hcm.http_filters:
        for p in patches:
            if p.operation is not PatchOperation.MERGE or not _sub_filter_match(http_filter, p):
                continue
            if not http_filter.HasField("typed_config"):
                continue
            value = p.value
            assert isinstance(value, hcm_pb2.HttpFilter)
            if value.name:
                http_filter.name = value.name
            if value.HasField("typed_config"):
                http_filter.typed_config.CopyFrom(
                    merge_any(
                        http_filter.typed_config,
                        value.typed_config,
                        p,
                        f"HTTP filter {http_filter.name!r}",
                    )
                )
            walk.did(p)
    if len(walk.applied) != before:
        flt.typed_config.CopyFrom(pack(hcm))


# -- route configurations ---------------------------------------------------------------


def route_port(name: str) -> int:
    """The port a route configuration's name says (Istio's reading): ``9080`` → 9080,
    ``inbound|9080…`` → 9080, a gateway's ``http.8080`` / ``https.443.…`` → the second
    part; 0 when it says none (``http_proxy``)."""
    if name.isdigit():
        return int(name)
    parts = name.split("|") if name.startswith("inbound|") else name.split(".")
    if len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return 0


def _rc_match(config: Any, p: Patch) -> bool:
    m = p.config.match
    if m.kind != "route_configuration":
        return True
    if m.route_config_name and m.route_config_name != config.name:
        return False
    return not m.port_number or route_port(config.name) == m.port_number


def _vhost_match(vhost: Any, p: Patch) -> bool:
    m = p.config.match
    return m.kind != "route_configuration" or not m.vhost_name or m.vhost_name == vhost.name


def _has_route_match(p: Patch) -> bool:
    return p.config.match.kind == "route_configuration" and bool(p.config.match.route_name)


def _route_match(route: Any, p: Patch) -> bool:
    return not _has_route_match(p) or p.config.match.route_name == route.name


def patch_route_configuration(
    config: Any, context: PatchContext, patches: Sequence[Patch]
) -> tuple[Any, tuple[Patch, ...]]:
    """A patched copy of a route configuration and the patches that changed it
    (ROUTE_CONFIGURATION is MERGE only: a route configuration is never removed)."""
    walk = _Walk(context, patches)
    out = _copy(config)
    _patch_routes_in_place(out, walk)
    return out, tuple(walk.applied)


def _patch_routes_in_place(config: Any, walk: _Walk) -> None:
    for p in walk.of(ApplyTo.ROUTE_CONFIGURATION):
        if p.operation is PatchOperation.MERGE and _rc_match(config, p):
            assert p.value is not None
            merge(config, p.value)
            walk.did(p)
    vhost_patches = [p for p in walk.of(ApplyTo.VIRTUAL_HOST) if _rc_match(config, p)]
    route_patches = [p for p in walk.of(ApplyTo.HTTP_ROUTE) if _rc_match(config, p)]
    if not vhost_patches and not route_patches:
        return
    vhosts: list[Any] = [_copy(v) for v in config.virtual_hosts]
    for i, vhost in enumerate(vhosts):
        for p in vhost_patches:
            if not _vhost_match(vhost, p):
                continue
            if p.operation is PatchOperation.REMOVE:
                vhosts[i] = None
                walk.did(p)
                break
            if p.operation is PatchOperation.MERGE:
                assert p.value is not None
                merge(vhost, p.value)
                walk.did(p)
            elif p.operation is PatchOperation.REPLACE:
                vhost.CopyFrom(_value(p, route_components_pb2.VirtualHost))
                walk.did(p)
        else:
            _patch_http_routes(vhost, route_patches, walk)
    for p in vhost_patches:
        if p.operation is PatchOperation.ADD:
            vhosts.append(_value(p, route_components_pb2.VirtualHost))
            walk.did(p)
    _rewrite(config.virtual_hosts, vhosts)


def _patch_http_routes(vhost: Any, patches: list[Patch], walk: _Walk) -> None:
    patches = [p for p in patches if _vhost_match(vhost, p)]
    if not patches:
        return
    routes: list[Any] = [_copy(r) for r in vhost.routes]
    for i, route in enumerate(routes):
        for p in patches:
            if not _route_match(route, p):
                continue
            if p.operation is PatchOperation.REMOVE:
                routes[i] = None
                walk.did(p)
                break
            if p.operation is PatchOperation.MERGE:
                assert p.value is not None
                merge(route, p.value)
                walk.did(p)
    for p in patches:
        if p.operation in (PatchOperation.REMOVE, PatchOperation.MERGE):
            continue
        if _apply_list_op(routes, p, _has_route_match(p), _route_match, route_components_pb2.Route):
            walk.did(p)
    _rewrite(vhost.routes, routes)


# -- clusters ---------------------------------------------------------------------------


def cluster_matches(name: str, hosts: Sequence[str], p: Patch) -> bool:
    """Istio's cluster match on a cluster's name: ``match.cluster.name`` exactly, else the
    port, subset and service read from ``outbound|PORT|SUBSET|HOST`` (for
    ``inbound|PORT||``, the service is any of ``hosts``: the node's own service's
    names). ``service`` is compared as written, so callers resolve short names first."""
    m = p.config.match
    if m.kind != "cluster":
        return True
    if m.cluster_name:
        return m.cluster_name == name
    parts = name.split("|")
    if len(parts) != 4:
        return not (m.subset or m.service or m.port_number)
    direction, port, subset, host = parts
    candidates = hosts if direction == "inbound" else (host,)
    if m.subset and m.subset != subset:
        return False
    if m.service and m.service not in candidates:
        return False
    return not m.port_number or port == str(m.port_number)


def patch_cluster(
    cluster: Any, context: PatchContext, patches: Sequence[Patch], hosts: Sequence[str] = ()
) -> tuple[Any | None, tuple[Patch, ...]]:
    """A patched copy of ``cluster`` (None when a CLUSTER REMOVE selects it) and the
    patches that changed it."""
    walk = _Walk(context, patches)
    out = None
    for p in walk.of(ApplyTo.CLUSTER):
        if not cluster_matches(cluster.name, hosts, p):
            continue
        if p.operation is PatchOperation.REMOVE:
            walk.did(p)
            return None, tuple(walk.applied)
        if p.operation is PatchOperation.MERGE:
            out = out if out is not None else _copy(cluster)
            merge(out, _merge_transport_socket(out, p.value, p, f"cluster {cluster.name!r}"))
            walk.did(p)
    return (out if out is not None else cluster), tuple(walk.applied)


def could_patch_cluster(name: str, hosts: Sequence[str], patches: Sequence[Patch]) -> bool:
    """True when some MERGE or REMOVE of ``patches`` selects the cluster named ``name``
    (a cheap test on the name, before copying anything)."""
    return any(
        p.operation in (PatchOperation.MERGE, PatchOperation.REMOVE)
        and cluster_matches(name, hosts, p)
        for p in patches
    )


def added(
    kind: ApplyTo, contexts: Sequence[PatchContext], patches: Sequence[Patch]
) -> list[tuple[Any, Patch]]:
    """The listeners or clusters (``kind``) that ADD patches create for a node whose
    resources are generated in ``contexts``, each with its patch. As in Istio, an ADD
    without a context adds for SIDECAR_OUTBOUND and GATEWAY only."""
    out: list[tuple[Any, Patch]] = []
    for p in patches:
        if p.apply_to is not kind or p.operation is not PatchOperation.ADD:
            continue
        wanted = p.config.match.context
        if any(
            wanted is c or (wanted is PatchContext.ANY and c is not PatchContext.SIDECAR_INBOUND)
            for c in contexts
        ):
            out.append((added_value(p), p))
    return out


def added_value(patch: Patch) -> Any:
    """The listener or cluster an ADD ``patch`` creates: a copy of its value."""
    return _value(patch, PATCH_VALUE_TYPES[patch.apply_to.value])
