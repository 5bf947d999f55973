"""DeltaStream's VHDS: virtual hosts subscribed by alias, answered, updated, removed;
and the translation that splits a route configuration into them."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.protocol.test_delta import Client, only, responses
from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import DeltaResponse, ProtocolError, resource_version
from xdsd.protocol.delta import MAX_SUBSCRIBED_NAMES, DeltaStream, disjoint
from xdsd.protocol.vhosts import MAX_ALIAS_LENGTH, MAX_VIRTUAL_HOST_NAMES, VirtualHostIndex
from xdsd.resources import ROUTE, VIRTUAL_HOST, Resource, Version
from xdsd.translate.vhds import split_route_configuration


def vhost(name: str, *domains: str, body: str = "") -> Resource:
    v = route_components_pb2.VirtualHost(name=name, domains=list(domains))
    route = v.routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = body
    return Resource.of(name, v)


def snap(*resources: Resource) -> Snapshot:
    return Snapshot.build(resources)


BASE = (
    vhost("80/echo", "echo", "echo:80", body="a"),
    vhost("80/wild", "*.example.com"),
    vhost("80/pre", "api.*"),
    vhost("http_proxy/echo", "echo:80"),
)


@pytest.mark.parametrize(
    ("alias", "resolved"),
    [
        ("80/echo", "80/echo"),
        ("80/ECHO:80", "80/echo"),
        ("80/a.b.example.com", "80/wild"),
        ("80/example.com", None),
        ("80/api.internal", "80/pre"),
        ("http_proxy/echo", None),  # that configuration has echo:80 only
        ("http_proxy/echo:80", "http_proxy/echo"),
        ("81/echo", None),
        ("echo", None),
        ("80/", None),
        ("80/\x00garbage\xff", None),
    ],
)
def test_alias_resolution(alias: str, resolved: str | None) -> None:
    assert VirtualHostIndex(snap(*BASE).get(VIRTUAL_HOST)).resolve(alias) == resolved


def test_on_demand_subscription_update_and_removal() -> None:
    stream = DeltaStream(snapshot=snap(*BASE))
    client = Client(stream)
    # Envoy's first VHDS request names the route configuration: an empty answer
    first = responses(client.request(VIRTUAL_HOST, ["80"]))
    assert [(r.names, r.removed, r.unresolved) for r in first] == [((), (), ())]
    client.ack(first[0])
    # an on-demand request: the virtual host, with the alias
    got = responses(client.request(VIRTUAL_HOST, ["80/echo:80"]))
    assert [(r.names, r.aliases) for r in got] == [(("80/echo",), (("80/echo:80",),))]
    proto = got[0].to_proto()
    assert list(proto.resources[0].aliases) == ["80/echo:80"]
    client.ack(got[0])
    # an unknown host: a resource of the alias's name, without content, once
    got = responses(client.request(VIRTUAL_HOST, ["80/nowhere"]))
    assert [(r.names, r.unresolved) for r in got] == [((), ("80/nowhere",))]
    proto = got[0].to_proto()
    assert not proto.resources[0].HasField("resource")
    assert list(proto.resources[0].aliases) == ["80/nowhere"]
    client.ack(got[0])
    # asked again (Envoy still has no virtual host for it): answered again
    got = responses(client.request(VIRTUAL_HOST, ["80/nowhere"]))
    assert [r.unresolved for r in got] == [("80/nowhere",)]
    client.ack(got[0])
    # an edit of echo: only echo, to this client; other virtual hosts change nothing
    edited = (vhost("80/echo", "echo", "echo:80", body="b"), *BASE[1:])
    got = stream.on_snapshot(snap(*edited))
    assert [r.names for r in got] == [("80/echo",)]
    client.ack(got[0])
    # a virtual host the client never asked for changes: nothing is sent
    assert (
        stream.on_snapshot(snap(*edited[:3], vhost("http_proxy/echo", "echo:80", body="x"))) == []
    )
    # echo leaves the mesh: removed by its name
    got = stream.on_snapshot(snap(*edited[1:]))
    assert [r.removed for r in got] == [("80/echo",)]


def _config(name: str, *domains: str) -> tuple[Resource, ...]:
    """Route configuration ``name`` with a virtual host of ``domains``, as VHDS serves it
    (split unless a domain is the catch-all)."""
    config = route_pb2.RouteConfiguration(name=name)
    config.virtual_hosts.add(name="echo", domains=list(domains)).routes.add().match.prefix = "/"
    return split_route_configuration(Resource.of(name, config))


def test_vhds_route_configurations_are_started_after_rds() -> None:
    """Envoy's VHDS subscription for a route configuration waits for a response naming
    something in its namespace (it never subscribes to the namespace itself): the VHDS
    response after each RDS response that gives the client a configuration with ``vhds``
    announces ``CONFIG/`` removed, once per configuration; whole ones get nothing."""
    split, whole = _config("80", "echo"), _config("81", "*")
    assert len(split) == 2 and len(whole) == 1
    stream = DeltaStream(snapshot=snap(*split, *whole))
    client = Client(stream)
    client.ack(only(client.request(ROUTE, ["80", "81"]), ROUTE))
    first = only(client.request(VIRTUAL_HOST), VIRTUAL_HOST)  # Envoy's: no names
    assert (first.names, first.removed) == ((), ("80/",))
    assert responses(client.ack(first)) == []
    # a fetch as usual; the configuration is not started again
    got = only(client.request(VIRTUAL_HOST, ["80/echo"]), VIRTUAL_HOST)
    assert (got.names, got.removed) == (("80/echo",), ())
    client.ack(got)
    # a new configuration with vhds: RDS, then its start (only its own)
    grown = snap(*split, *whole, *_config("82", "other"))
    assert stream.on_snapshot(grown) == []  # not subscribed yet
    rds, vhds = responses(client.request(ROUTE, ["82"]))
    assert (rds.type_url, rds.names) == (ROUTE, ("82",))
    assert (vhds.type_url, vhds.names, vhds.removed) == (VIRTUAL_HOST, (), ("82/",))
    client.ack(rds)
    client.ack(vhds)
    # it leaves, and comes back: started again
    client.ack(only(client.request(ROUTE, unsubscribe=["82"]), ROUTE))
    rds, vhds = responses(client.request(ROUTE, ["82"]))
    assert vhds.removed == ("82/",)


def test_reconnect_holding_a_virtual_host_is_sent_nothing() -> None:
    resource = BASE[0]

    stream = DeltaStream(snapshot=snap(*BASE))
    client = Client(stream)
    got = responses(
        client.request(
            VIRTUAL_HOST, ["80", "80/echo"], initial={"80/echo": resource_version(resource)}
        )
    )
    assert all(not r.names and not r.removed for r in got), got


def test_reconnect_after_an_edit_and_a_removal() -> None:
    """A client resuming with an old version of echo and a virtual host that is gone: echo
    is sent (for its alias), the gone one announced removed."""
    stream = DeltaStream(snapshot=snap(*BASE))
    client = Client(stream)
    got = responses(
        client.request(
            VIRTUAL_HOST,
            ["80", "80/echo:80"],
            initial={"80/echo": "old", "80/gone": "v"},
        )
    )
    assert [(r.names, r.aliases, r.removed) for r in got] == [
        (("80/echo",), (("80/echo:80",),), ("80/gone",))
    ]
    client.ack(got[0])
    # asked again after that: answered again, though held
    got = responses(client.request(VIRTUAL_HOST, ["80/echo:80"]))
    assert [r.aliases for r in got] == [(("80/echo:80",),)]


def test_hostile_names_are_bounded() -> None:
    client = Client(DeltaStream(snapshot=snap(*BASE)))
    with pytest.raises(ProtocolError):
        client.request(VIRTUAL_HOST, ["80/" + "a" * MAX_ALIAS_LENGTH])
    # namespace names (no "/") are never forgotten: beyond the per-type bound, refused
    client = Client(DeltaStream(snapshot=snap(*BASE)))
    client.request(VIRTUAL_HOST, [f"c{i}" for i in range(MAX_SUBSCRIBED_NAMES)])
    with pytest.raises(ProtocolError) as refused:
        client.request(VIRTUAL_HOST, ["c"])
    assert refused.value.code == "RESOURCE_EXHAUSTED"


def _bounded(stream: DeltaStream) -> None:
    """Every set the stream keeps of VHDS aliases is within the bound."""
    state = stream._types[VIRTUAL_HOST]
    for kept in (state.names, state.order, state.asked, state.absent, state.held, state.sent):
        assert len(kept) <= MAX_VIRTUAL_HOST_NAMES + 1, len(kept)  # (+ the namespace "80")


def test_many_unresolved_aliases_are_forgotten_first_and_the_stream_stays() -> None:
    """Traffic with ever new Host headers (Envoy subscribes one alias per host, never
    unsubscribes): beyond the bound the least recently asked unresolved aliases are
    forgotten, not the resolved ones; the stream stays up and answers a re-ask."""
    stream = DeltaStream(snapshot=snap(*BASE))
    client = Client(stream)
    client.ack(only(client.request(VIRTUAL_HOST, ["80"])))
    echo = only(client.request(VIRTUAL_HOST, ["80/echo:80"]))
    assert echo.names == ("80/echo",)
    client.ack(echo)
    flood = [f"80/h{i}.nowhere" for i in range(MAX_VIRTUAL_HOST_NAMES + 500)]
    for i in range(0, len(flood), 100):  # (answered in batches: quicker, the same path)
        got = only(client.request(VIRTUAL_HOST, flood[i : i + 100]))
        assert (got.names, got.removed) == ((), ())
        assert set(got.unresolved) == set(flood[i : i + 100])
        client.ack(got)
        _bounded(stream)
    assert stream.held(VIRTUAL_HOST)["80/echo:80"] == resource_version(BASE[0])
    # the oldest were forgotten: asked again, answered again, like a new alias
    again = only(client.request(VIRTUAL_HOST, [flood[0]]))
    assert again.unresolved == (flood[0],)
    client.ack(again)
    _bounded(stream)
    # and an edit of echo still reaches this client
    edited = (vhost("80/echo", "echo", "echo:80", body="b"), *BASE[1:])
    assert [r.names for r in stream.on_snapshot(snap(*edited))] == [("80/echo",)]


def test_resolved_aliases_are_forgotten_when_nothing_else_is_and_hosts_removed() -> None:
    """With only resolved aliases beyond the bound, the least recently asked are
    forgotten; a virtual host no remaining alias resolves to is announced removed, and
    sent again when its alias is asked again."""
    stream = DeltaStream(snapshot=snap(*BASE))
    client = Client(stream)
    client.ack(only(client.request(VIRTUAL_HOST, ["80"])))
    client.ack(only(client.request(VIRTUAL_HOST, ["80/echo:80", "80/echo"])))
    wild = [f"80/h{i}.example.com" for i in range(MAX_VIRTUAL_HOST_NAMES)]
    first = only(client.request(VIRTUAL_HOST, wild[:2000]))
    assert first.names == ("80/wild",)
    client.ack(first)
    # echo's two aliases are now the least recently asked: forgotten, echo removed
    got = only(client.request(VIRTUAL_HOST, wild[2000:]))
    assert (got.names, got.removed) == (("80/wild",), ("80/echo",))
    assert set(got.aliases[0]) == set(wild[2000:])
    client.ack(got)
    _bounded(stream)
    assert "80/echo" not in stream.held(VIRTUAL_HOST)
    again = only(client.request(VIRTUAL_HOST, ["80/echo:80"]))
    assert (again.names, again.aliases) == (("80/echo",), (("80/echo:80",),))
    client.ack(again)
    _bounded(stream)


def test_unsubscribing_forgets_an_alias_everywhere() -> None:
    """Subscribe, subscribe again, unsubscribe, with ever new aliases and no answer: the
    stream keeps nothing of them."""
    stream = DeltaStream(snapshot=snap(*BASE))
    client = Client(stream)
    client.request(VIRTUAL_HOST, ["80"])
    for i in range(20_000):
        name = f"80/h{i}.example"
        client.request(VIRTUAL_HOST, [name])
        client.request(VIRTUAL_HOST, [name])
        client.request(VIRTUAL_HOST, unsubscribe=[name])
    state = stream._types[VIRTUAL_HOST]
    assert (state.names, state.asked, state.order, state.absent) == ({"80"}, set(), {}, {"80"})
    assert not state.held and not state.sent


def test_split_route_configuration() -> None:
    config = route_pb2.RouteConfiguration(name="80")
    config.virtual_hosts.append(BASE[0].message)  # type: ignore[arg-type]
    config.virtual_hosts[0].name = "echo"
    bare, *hosts = split_route_configuration(Resource.of("80", config))
    assert not bare.message.virtual_hosts  # type: ignore[attr-defined]
    assert bare.message.vhds.config_source.HasField("ads")  # type: ignore[attr-defined]
    assert [(h.name, h.type_url, h.message.name) for h in hosts] == [  # type: ignore[attr-defined]
        ("80/echo", VIRTUAL_HOST, "80/echo")
    ]
    config.virtual_hosts.add(name="any", domains=["*"])
    whole = Resource.of("80", config)
    assert split_route_configuration(whole) == (whole,)  # a catch-all stays inline


ALIASES = st.one_of(
    st.sampled_from(
        [
            "80",
            "http_proxy",
            "80/echo",
            "80/echo:80",
            "80/x.example.com",
            "80/api.v1",
            "81/a",
            "80/new",  # both a virtual host's name and one of its domains
        ]
    ),
    st.text(max_size=40),  # garbage: control characters, no "/", unicode
)
SNAPSHOTS = st.lists(st.sampled_from(range(len(BASE) + 2)), max_size=6)


#: Route configurations: "80" and "82" served by VHDS (bare), "81" whole (a catch-all).
CONFIGS = (_config("80", "echo")[0], _config("81", "*")[0], _config("82", "x")[0])
VHDS_CONFIGS = {"80", "82"}


def _snapshot_of(picks: list[int]) -> Snapshot:
    extra = (vhost("80/echo", "echo", "echo:80", body="b"), vhost("80/new", "new"))
    chosen: dict[str, Resource] = {}
    for i in picks:
        r = (*BASE, *extra)[i]
        chosen[r.name] = r
    configs = [c for c in CONFIGS if c.name != "82" or 5 in picks]  # 82 comes and goes
    return snap(*chosen.values(), *configs)


@fuzz_settings()
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("subscribe"), st.lists(ALIASES, max_size=4)),
            st.tuples(st.just("unsubscribe"), st.lists(ALIASES, max_size=2)),
            # hostile: more new hosts than the stream keeps aliases for, or a host
            # subscribed twice and unsubscribed
            st.tuples(st.just("flood"), st.integers(-50, 50)),
            st.tuples(st.just("cycle"), st.integers(1, 20)),
            st.tuples(st.just("answer"), st.booleans()),
            st.tuples(st.just("snapshot"), SNAPSHOTS),
            st.tuples(
                st.sampled_from(["routes", "unroute"]),
                st.lists(st.sampled_from(["80", "81", "82", "83"]), max_size=3),
            ),
        ),
        max_size=30,
    )
)
def test_vhds_streams_keep_their_promises(steps: list[tuple[str, Any]]) -> None:
    """Random VHDS subscriptions (garbage included), answers and snapshot changes: no
    exception; every virtual host sent is the current snapshot's and answers aliases the
    client subscribed to; after the client answers everything, each subscribed alias that
    resolves is held at its virtual host's current version. With route configurations
    subscribed and dropped too: a VHDS start (``CONFIG/`` removed) names only a
    configuration with ``vhds`` the client holds, and every one it holds at the end was
    started since it was last given. No response adds and removes a name. Hostile
    floods of new hosts and subscribe/unsubscribe cycles: the stream stays up, keeps at
    most ``MAX_VIRTUAL_HOST_NAMES`` aliases, and forgets unresolved aliases first."""
    with deadline("protocol.vhds"):
        current = snap(*BASE, *CONFIGS[:2])
        stream = DeltaStream(snapshot=current)
        client = Client(stream)
        subscribed: set[str] = set()  # every alias ever subscribed and not unsubscribed
        promised: set[str] = set()  # those the stream may not forget
        fresh = iter(range(1 << 30))
        outstanding: list[DeltaResponse] = []
        started: set[str] = set()  # VHDS configurations started since last given

        def check(events: list[Any]) -> None:
            for r in responses(events):
                outstanding.append(r)
                if r.type_url == ROUTE:
                    started.difference_update(r.names)
                    started.difference_update(r.removed)
                    continue
                assert r.type_url == VIRTUAL_HOST
                assert not _added_and_removed(r), r
                for name in (n for n in r.removed if n.endswith("/")):
                    config = name[:-1]
                    assert config in VHDS_CONFIGS and config in stream.held(ROUTE), name
                    started.add(config)
                for resource, aliases in zip(r.resources, r.aliases, strict=True):
                    assert current.get(VIRTUAL_HOST)[resource.name] is resource
                    assert set(aliases) <= subscribed
                assert set(r.unresolved) <= subscribed

        check(client.request(VIRTUAL_HOST, []))
        for kind, arg in steps:
            if kind == "subscribe":
                subscribed |= set(arg)
                promised |= set(arg)
                check(client.request(VIRTUAL_HOST, arg))
            elif kind == "unsubscribe":
                subscribed -= set(arg)
                promised -= set(arg)
                check(client.request(VIRTUAL_HOST, [], arg))
            elif kind == "flood":
                # forgets unresolved aliases first: those resolving now are kept
                index = VirtualHostIndex(current.get(VIRTUAL_HOST))
                promised = {
                    a for a in promised if a in current.get(VIRTUAL_HOST) or index.resolve(a)
                }
                hosts = [f"80/h{next(fresh)}.flood" for _ in range(MAX_VIRTUAL_HOST_NAMES + arg)]
                subscribed |= set(hosts)
                check(client.request(VIRTUAL_HOST, hosts))
            elif kind == "cycle":
                for _ in range(arg):
                    name = f"80/c{next(fresh)}.cycle"
                    subscribed.add(name)
                    check(client.request(VIRTUAL_HOST, [name]))
                    check(client.request(VIRTUAL_HOST, [name]))
                    subscribed.discard(name)
                    check(client.request(VIRTUAL_HOST, [], [name]))
            elif kind == "answer" and outstanding:
                r = outstanding.pop()
                check(client.request(r.type_url, nonce=r.nonce, error="no" if arg else None))
            elif kind == "snapshot":
                current = _snapshot_of(arg)
                check(stream.on_snapshot(current))
            elif kind == "routes":
                check(client.request(ROUTE, arg))
            elif kind == "unroute":
                check(client.request(ROUTE, [], arg))
        for _ in range(20):
            if not outstanding:
                break
            check(client.ack(outstanding.pop()))
        assert not outstanding
        assert VHDS_CONFIGS.intersection(stream.held(ROUTE)) <= started
        index = VirtualHostIndex(current.get(VIRTUAL_HOST))
        state = stream._types[VIRTUAL_HOST]
        assert len(state.order) <= MAX_VIRTUAL_HOST_NAMES
        assert set(state.asked) | set(state.absent) | set(state.order) <= state.names
        assert not any(n.endswith(".cycle") for n in state.names | set(state.held))
        held = stream.held(VIRTUAL_HOST)
        for alias in promised:
            target = alias if alias in current.get(VIRTUAL_HOST) else index.resolve(alias)
            if "/" in alias and target is not None:
                assert held[alias] == resource_version(current.get(VIRTUAL_HOST)[target])


def _added_and_removed(response: DeltaResponse) -> set[str]:
    """The names ``response``'s message both carries and removes (Envoy rejects it)."""
    proto = response.to_proto()
    return {r.name for r in proto.resources} & set(proto.removed_resources)


def test_a_virtual_host_named_like_its_alias_is_removed_not_also_unresolved() -> None:
    """``CONFIG/FQDN:PORT`` is a virtual host's name and one of its domains: an alias of
    that name, when the virtual host leaves, is announced removed only (Envoy rejects a
    response naming it in both lists); asked again, it is answered as unresolved."""
    echo = vhost("80/echo:80", "echo", "echo:80")
    stream = DeltaStream(snapshot=snap(echo))
    client = Client(stream)
    client.ack(responses(client.request(VIRTUAL_HOST, ["80"]))[0])
    got = only(client.request(VIRTUAL_HOST, ["80/echo:80"]))
    assert got.names == ("80/echo:80",)
    client.ack(got)
    gone = only(stream.on_snapshot(snap(vhost("80/other:80", "other"))))
    assert (gone.names, gone.removed, gone.unresolved) == ((), ("80/echo:80",), ())
    assert not _added_and_removed(gone)
    client.ack(gone)
    again = only(client.request(VIRTUAL_HOST, ["80/echo:80"]))
    assert (again.unresolved, again.removed) == (("80/echo:80",), ())


def test_a_reconnect_holding_a_virtual_host_now_gone_is_sent_its_removal_only() -> None:
    stream = DeltaStream(snapshot=snap(vhost("80/other:80", "other")))
    client = Client(stream)
    got = only(client.request(VIRTUAL_HOST, ["80", "80/echo:80"], initial={"80/echo:80": "v1"}))
    assert (got.names, got.removed, got.unresolved) == ((), ("80/echo:80",), ())
    assert not _added_and_removed(got)


def test_no_delta_response_adds_and_removes_a_name() -> None:
    """The final guard: content wins over a removal, a removal over an unresolved name."""
    echo = BASE[0]
    both = DeltaResponse(
        VIRTUAL_HOST,
        Version("1"),
        "1",
        (echo,),
        ("80/echo", "80/x"),
        ((echo.name,),),
        unresolved=("80/x", "80/echo", "80/y"),
    )
    fixed = disjoint(both)
    assert (fixed.names, fixed.removed, fixed.unresolved) == (("80/echo",), ("80/x",), ("80/y",))
    assert not _added_and_removed(fixed)
    assert disjoint(fixed) is fixed
