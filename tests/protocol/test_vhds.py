"""DeltaStream's VHDS: virtual hosts subscribed by alias, answered, updated, removed;
and the translation that splits a route configuration into them."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2

from tests.protocol.test_delta import Client, responses
from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import ProtocolError, resource_version
from xdsd.protocol.delta import DeltaStream
from xdsd.protocol.vhosts import MAX_ALIAS_LENGTH, VirtualHostIndex
from xdsd.resources import VIRTUAL_HOST, Resource
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


def test_hostile_names_are_bounded() -> None:
    client = Client(DeltaStream(snapshot=snap(*BASE)))
    with pytest.raises(ProtocolError):
        client.request(VIRTUAL_HOST, ["80/" + "a" * MAX_ALIAS_LENGTH])
    client = Client(DeltaStream(snapshot=snap(*BASE)))
    with pytest.raises(ProtocolError):
        client.request(VIRTUAL_HOST, [f"80/h{i}" for i in range(5000)])


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
