"""Route configurations written as wire bytes (``RouteBuilder.route_configuration_resource``)
are exactly ``Resource.of`` of the message ``route_configuration`` builds: payload,
digest, token and references, for every matcher style, with and without the REGISTRY_ONLY
catch-all, for callers that rules tell apart, and the same TranslationError when a rule
cannot be translated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.meshgen import write_mesh
from tests.translate.meshes import bookinfo
from xdsd.errors import TranslationError
from xdsd.model import Destination, HTTPRoute, Mesh, RouteDestination
from xdsd.model.rules import Mirror
from xdsd.resources import Resource
from xdsd.sources import load_directory
from xdsd.translate.route_matches import NO_CALLER, MatcherStyle, Relevance, caller_of
from xdsd.translate.routes import RouteBuilder, dedupe_domains, port_domains, proxy_domains

ROOT = Path(__file__).resolve().parents[2]


def meshes(tmp: Path) -> list[Mesh]:
    out = [bookinfo()]
    for directory in (ROOT / "config", ROOT / "demo" / "config"):
        out.append(load_directory(str(directory)).mesh)
    out.append(load_directory(str(write_mesh(tmp, 40, endpoints=3))).mesh)
    mirrored = bookinfo()
    vs = mirrored.virtual_services[0]
    first = dataclasses.replace(
        vs.http[1], mirrors=(Mirror(Destination("ratings")),), name="mirrored"
    )
    out.append(
        dataclasses.replace(
            mirrored, virtual_services=(dataclasses.replace(vs, http=(first, *vs.http[1:])),)
        )
    )
    return out


def assert_same(made: Resource, want: Resource) -> None:
    assert made.payload == want.payload
    assert (made.name, made.type_url, made.digest, made.token, made.references) == (
        want.name,
        want.type_url,
        want.digest,
        want.token,
        want.references,
    )
    assert made.parsed is None and made.message == want.message


def test_wire_route_configurations_equal_the_messages(tmp_path: Path) -> None:
    checked = 0
    for mesh in meshes(tmp_path):
        for style in MatcherStyle:
            builder = RouteBuilder(mesh, style)
            relevance: Relevance = builder.relevance()
            callers = [
                NO_CALLER,
                caller_of((("app", "a"), ("version", "v1")), "default", relevance),
            ]
            pairs = [(s, p) for s in mesh.services for p in s.ports if p.protocol.is_http]
            proxy = dedupe_domains((s, p, proxy_domains(s, p.number)) for s, p in pairs)
            by_port = dedupe_domains(
                (s, p, port_domains(s, p.number))
                for s, p in pairs
                if p.number == pairs[0][1].number
            )
            for name, vhosts in (("http_proxy", proxy), ("9080", by_port), ("empty", [])):
                for caller in callers:
                    for block in (False, True):
                        made = builder.route_configuration_resource(
                            name, vhosts, caller, block_unknown=block
                        )
                        want = Resource.of(
                            name,
                            builder.route_configuration(name, vhosts, caller, block_unknown=block),
                        )
                        assert_same(made, want)
                        checked += 1
    assert checked == 5 * 2 * 3 * 2 * 2


def test_wire_route_configuration_raises_what_the_message_raises() -> None:
    mesh = bookinfo()
    vs = mesh.virtual_services[0]
    bad = dataclasses.replace(
        vs, http=(HTTPRoute("nowhere", route=(RouteDestination(Destination("reviews", "v9")),)),)
    )
    mesh = dataclasses.replace(mesh, virtual_services=(bad,))
    builder = RouteBuilder(mesh, MatcherStyle.STRING_MATCH)
    pairs = [(s, p) for s in mesh.services for p in s.ports if p.protocol.is_http]
    vhosts = dedupe_domains((s, p, proxy_domains(s, p.number)) for s, p in pairs)
    with pytest.raises(TranslationError) as want:
        builder.route_configuration("http_proxy", vhosts)
    with pytest.raises(TranslationError) as got:
        builder.route_configuration_resource("http_proxy", vhosts)
    assert got.value.problems == want.value.problems and got.value.problems


def test_routes_encoded_once_and_taken_over_while_their_routes_are_reused() -> None:
    """A builder for the next mesh takes over the encoding of the routes it reuses (the
    same memo entry) and encodes again those it builds again; its configurations are
    still exactly ``Resource.of`` of the messages."""
    mesh = bookinfo()
    first = RouteBuilder(mesh, MatcherStyle.STRING_MATCH)
    pairs = [(s, p) for s in mesh.services for p in s.ports if p.protocol.is_http]
    vhosts = dedupe_domains((s, p, proxy_domains(s, p.number)) for s, p in pairs)
    first.route_configuration_resource("http_proxy", vhosts)
    vs = mesh.virtual_services[0]
    edited = dataclasses.replace(
        mesh, virtual_services=(dataclasses.replace(vs, http=vs.http[1:]),)
    )
    second = RouteBuilder(
        edited, MatcherStyle.STRING_MATCH, previous=first.memo, previous_encoded=first.encoded
    )
    pairs = [(s, p) for s in edited.services for p in s.ports if p.protocol.is_http]
    vhosts = dedupe_domains((s, p, proxy_domains(s, p.number)) for s, p in pairs)
    made = second.route_configuration_resource("http_proxy", vhosts)
    assert_same(made, Resource.of("http_proxy", second.route_configuration("http_proxy", vhosts)))
    reviews = next(k for k in second.encoded if k[0] == vs.key or k[0][-1] == "reviews")
    assert second.encoded[reviews] is not first.encoded[reviews]  # its rule changed
    kept = [k for k in second.encoded if k != reviews]
    assert kept and all(second.encoded[k] is first.encoded[k] for k in kept)


def test_long_and_multibyte_names_and_domains_equal_the_messages() -> None:
    """Lengths past one varint byte (a domain, the virtual host, the configuration's
    name), multi-byte characters and a domain given twice."""
    mesh = bookinfo()
    builder = RouteBuilder(mesh, MatcherStyle.STRING_MATCH)
    service, port = next((s, p) for s in mesh.services for p in s.ports if p.protocol.is_http)
    domains = ["é" * 100, "a" * 300 + ".example", "x", "x", "b" * 127, "c" * 128]
    vhosts = dedupe_domains([(service, port, domains)])
    assert vhosts[0].domains == ("é" * 100, "a" * 300 + ".example", "x", "b" * 127, "c" * 128)
    for name in ("n" * 200, "9080"):
        made = builder.route_configuration_resource(name, vhosts)
        assert_same(made, Resource.of(name, builder.route_configuration(name, vhosts)))


def test_a_domain_claimed_before_is_left_out() -> None:
    mesh = bookinfo()
    pairs = [(s, p) for s in mesh.services for p in s.ports if p.protocol.is_http][:3]
    vhosts = dedupe_domains(
        [
            (pairs[0][0], pairs[0][1], ["a", "b", "a"]),
            (pairs[1][0], pairs[1][1], ["b", "c", "c"]),
            (pairs[2][0], pairs[2][1], ["a", "c"]),
        ]
    )
    assert [v.domains for v in vhosts] == [("a", "b"), ("c",)]
