"""RestSessions: REST polling with make-before-break (docs/protocol.md, rules 8, 21-23), driven
synchronously by a small REST client that polls like Envoy does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ep_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from xdsd.cache.snapshot import Snapshot
from xdsd.protocol import Ack, NotApplied, ProtocolError, Response
from xdsd.protocol.fetch import JsonRenderer, NotModified
from xdsd.protocol.rest_session import PollAnswer, RestSessions
from xdsd.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, TypeUrl, Version, pack

REST = config_source_pb2.ConfigSource(
    api_config_source=config_source_pb2.ApiConfigSource(
        api_type=config_source_pb2.ApiConfigSource.REST, cluster_names=["xds_cluster"]
    )
)

# -- real resources ----------------------------------------------------------------------


def cluster(name: str, *, timeout: int = 1) -> Resource:
    return Resource.of(
        name,
        cluster_pb2.Cluster(
            name=name,
            type=cluster_pb2.Cluster.EDS,
            eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=REST),
            connect_timeout=duration_pb2.Duration(seconds=timeout),
        ),
    )


def endpoints(name: str, address: str = "10.0.0.1") -> Resource:
    endpoint = ep_pb2.Endpoint(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=address, port_value=8080)
        )
    )
    return Resource.of(
        name,
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                ep_pb2.LocalityLbEndpoints(lb_endpoints=[ep_pb2.LbEndpoint(endpoint=endpoint)])
            ],
        ),
    )


def routes(name: str, *clusters: str) -> Resource:
    """A route configuration sending everything to ``clusters`` (weighted when several)."""
    action = route_components_pb2.RouteAction(cluster=clusters[0])
    if len(clusters) > 1:
        action = route_components_pb2.RouteAction(
            weighted_clusters=route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(name=c) for c in clusters
                ]
            )
        )
    return Resource.of(
        name,
        route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=name,
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"), route=action
                        )
                    ],
                )
            ],
        ),
    )


def _listener(name: str, filter_name: str, config: Message) -> Resource:
    return Resource.of(
        name,
        listener_pb2.Listener(
            name=name,
            filter_chains=[
                listener_components_pb2.FilterChain(
                    filters=[
                        listener_components_pb2.Filter(
                            name=filter_name,
                            typed_config=pack(config),
                        )
                    ]
                )
            ],
        ),
    )


def http_listener(name: str, route: str) -> Resource:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name, rds=hcm_pb2.Rds(route_config_name=route, config_source=REST)
    )
    return _listener(name, "envoy.filters.network.http_connection_manager", hcm)


def tcp_listener(name: str, cluster_name: str) -> Resource:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=name, cluster=cluster_name)
    return _listener(name, "envoy.filters.network.tcp_proxy", proxy)


def mesh(
    route_configs: Mapping[str, Iterable[str]],
    clusters: Iterable[str],
    *,
    tcp: Mapping[str, str] | None = None,
    addresses: Mapping[str, str] | None = None,
) -> Snapshot:
    """Clusters with endpoints; per route configuration ``r`` a listener ``l-r`` using it
    over RDS; per ``tcp`` entry a tcp_proxy listener to that cluster."""
    resources: list[Resource] = []
    for name in clusters:
        resources += [cluster(name), endpoints(name, (addresses or {}).get(name, "10.0.0.1"))]
    for name, targets in route_configs.items():
        resources += [routes(name, *targets), http_listener(f"l-{name}", name)]
    resources += [tcp_listener(name, c) for name, c in (tcp or {}).items()]
    return Snapshot.build(resources)


# -- a tiny REST client --------------------------------------------------------------------

Poller = tuple[TypeUrl, tuple[str, ...]]


class Envoy:
    """Plays one Envoy polling over REST: each poller reports the version of the last
    response it applied (unless told to reject it)."""

    def __init__(self, sessions: RestSessions, client_id: str = "envoy-1") -> None:
        self.sessions = sessions
        self.client_id = client_id
        self.applied: dict[Poller, str] = {}
        self.held: dict[Poller, tuple[str, ...]] = {}

    def poll(
        self, snap: Snapshot, type_url: TypeUrl, *names: str, reject: bool = False
    ) -> PollAnswer:
        key = (type_url, names)
        answer = self.sessions.on_poll(
            self.client_id, snap, type_url, names, self.applied.get(key, "")
        )
        if isinstance(answer.answer, Response) and not reject:
            self.applied[key] = answer.answer.version
            self.held[key] = answer.answer.names
        return answer

    def answer(self, snap: Snapshot, type_url: TypeUrl, *names: str) -> Response | NotModified:
        return self.poll(snap, type_url, *names).answer

    def sync(self, snap: Snapshot) -> None:
        """Poll every type twice (get, then report) until nothing is sent, as Envoy
        settles: CDS, EDS of each cluster, LDS, RDS of each route configuration."""
        for _ in range(4):
            sent = False
            for key in self.pollers(snap):
                sent |= isinstance(self.answer(snap, key[0], *key[1]), Response)
            if not sent:
                return
        raise AssertionError("the client does not settle")

    @staticmethod
    def pollers(snap: Snapshot) -> list[Poller]:
        return [
            (CLUSTER, ()),
            *((ENDPOINT, (n,)) for n in snap.get(CLUSTER)),
            (LISTENER, ()),
            *((ROUTE, (n,)) for n in snap.get(ROUTE)),
        ]


def response(answer: Response | NotModified) -> Response:
    assert isinstance(answer, Response), answer
    return answer


def waiting_for(answer: Response | NotModified) -> tuple[str, ...]:
    assert isinstance(answer, NotModified), answer
    return answer.waiting_for


def settled(snap: Snapshot, sessions: RestSessions | None = None) -> Envoy:
    envoy = Envoy(sessions if sessions is not None else RestSessions())
    envoy.sync(snap)
    return envoy


# -- adds: LDS/RDS wait for the clusters they need -----------------------------------------


def test_route_to_a_new_cluster_waits_until_the_client_holds_the_cluster() -> None:
    before = mesh({"r": ["a"]}, ["a"])
    envoy = settled(before)
    held = envoy.applied[(ROUTE, ("r",))]
    after = mesh({"r": ["b"]}, ["a", "b"])  # one edit: cluster b, and the route to it
    # RDS polls first: held back, the client keeps its route (304 for what it holds).
    for _ in range(2):
        assert envoy.answer(after, ROUTE, "r") == NotModified(ROUTE, Version(held), ("b",))
    cds = response(envoy.answer(after, CLUSTER))
    assert cds.names == ("a", "b") and cds.version == after.version(CLUSTER)
    # Served, not yet reported applied: still held.
    assert isinstance(envoy.answer(after, ROUTE, "r"), NotModified)
    assert response(envoy.answer(after, ENDPOINT, "b")).names == ("b",)  # warming: never held
    assert envoy.poll(after, CLUSTER).report == Ack(CLUSTER, cds.version, "")
    rds = response(envoy.answer(after, ROUTE, "r"))
    assert rds.names == ("r",) and rds.version == after.version_for(ROUTE, ["r"])


def test_tcp_listener_to_a_new_cluster_waits_for_the_cluster() -> None:
    before = mesh({}, ["a"], tcp={"tcp": "a"})
    envoy = settled(before)
    after = mesh({}, ["a", "b"], tcp={"tcp": "b"})
    held = envoy.answer(after, LISTENER)
    assert held == NotModified(LISTENER, Version(envoy.applied[(LISTENER, ())]), ("b",))
    envoy.answer(after, CLUSTER)
    envoy.answer(after, CLUSTER)  # reports b held
    assert response(envoy.answer(after, LISTENER)).version == after.version(LISTENER)


def test_a_route_to_clusters_the_client_holds_is_sent_at_once() -> None:
    envoy = settled(mesh({"r": ["a"]}, ["a", "b"]))
    after = mesh({"r": ["a", "b"]}, ["a", "b"])
    assert response(envoy.answer(after, ROUTE, "r")).version == after.version_for(ROUTE, ["r"])


@pytest.mark.parametrize(
    "cds_version",
    [
        None,  # never polled CDS
        "",  # polled once, nothing applied yet (Envoy starting)
        "never-served",  # a version this server does not know (e.g. before a restart)
    ],
)
def test_unknown_cluster_holdings_hold_nothing_back(cds_version: str | None) -> None:
    sessions = RestSessions()
    snap = mesh({"r": ["a"]}, ["a"])
    if cds_version is not None:
        sessions.on_poll("envoy-1", snap, CLUSTER, [], cds_version)
    answer = sessions.on_poll("envoy-1", snap, ROUTE, ["r"], "").answer
    assert isinstance(answer, Response) and answer.names == ("r",)


def test_a_cluster_no_cds_poller_asks_for_holds_nothing_back() -> None:
    sessions = RestSessions()
    envoy = Envoy(sessions)
    snap = mesh({"r": ["a"]}, ["a", "b"])
    envoy.answer(snap, CLUSTER, "b")  # a client that names its clusters, not a
    envoy.answer(snap, CLUSTER, "b")
    assert isinstance(envoy.answer(snap, ROUTE, "r"), Response)


def test_routes_needing_a_rejected_cluster_version_stay_held() -> None:
    envoy = settled(mesh({"r": ["a"]}, ["a"]))
    after = mesh({"r": ["b"]}, ["a", "b"])
    envoy.poll(after, CLUSTER, reject=True)
    assert isinstance(envoy.poll(after, CLUSTER).report, NotApplied)
    assert waiting_for(envoy.answer(after, ROUTE, "r")) == ("b",)


def test_a_restarted_server_learns_holdings_from_current_versions() -> None:
    before = mesh({"r": ["a"]}, ["a"])
    envoy = settled(before)
    envoy.sessions = RestSessions()  # xdsd restarted; the client polls on
    envoy.sync(before)  # nothing is sent: it holds every current version
    after = mesh({"r": ["b"]}, ["a", "b"])
    assert waiting_for(envoy.answer(after, ROUTE, "r")) == ("b",)


# -- removals: CDS keeps clusters the client's routes still use ----------------------------


def test_removed_cluster_stays_until_every_route_poller_moved_off_it() -> None:
    before = mesh({"9080": ["a"], "http_proxy": ["a"]}, ["a", "b"])
    envoy = settled(before)
    old_a = before.get(CLUSTER)["a"]
    after = mesh({"9080": ["b"], "http_proxy": ["b"]}, ["b"])  # routes move, a goes
    cds = response(envoy.answer(after, CLUSTER))
    assert cds.names == ("a", "b")
    assert cds.resources[0] is old_a  # as the client holds it
    assert cds.version.startswith(f"{after.version(CLUSTER)}+")
    envoy.answer(after, CLUSTER)  # reports it

    response(envoy.answer(after, ROUTE, "9080"))
    envoy.answer(after, ROUTE, "9080")  # reports the new routes: http_proxy still uses a
    assert envoy.answer(after, CLUSTER) == NotModified(CLUSTER, cds.version)

    response(envoy.answer(after, ROUTE, "http_proxy"))
    assert envoy.answer(after, CLUSTER) == NotModified(CLUSTER, cds.version)  # not reported
    envoy.answer(after, ROUTE, "http_proxy")
    dropped = response(envoy.answer(after, CLUSTER))
    assert dropped.names == ("b",) and dropped.version == after.version(CLUSTER)


def test_removed_cluster_stays_while_a_tcp_listener_uses_it() -> None:
    envoy = settled(mesh({}, ["a", "b"], tcp={"tcp": "a"}))
    after = mesh({}, ["b"], tcp={"tcp": "b"})
    assert response(envoy.answer(after, CLUSTER)).names == ("a", "b")
    response(envoy.answer(after, LISTENER))
    envoy.answer(after, LISTENER)
    assert response(envoy.answer(after, CLUSTER)).names == ("b",)


def test_unreferenced_removed_cluster_goes_at_once() -> None:
    envoy = settled(mesh({"r": ["b"]}, ["a", "b"]))
    after = mesh({"r": ["b"]}, ["b"])
    cds = response(envoy.answer(after, CLUSTER))
    assert cds.names == ("b",) and cds.version == after.version(CLUSTER)


def test_unknown_route_holdings_keep_every_removed_cluster() -> None:
    sessions = RestSessions()
    before = mesh({"r": ["b"]}, ["a", "b"])
    envoy = settled(before, sessions)
    envoy.applied[(ROUTE, ("r",))] = "from-another-server"
    after = mesh({"r": ["b"]}, ["b"])
    envoy.answer(after, ROUTE, "r")  # unknown holdings: it is sent the current routes
    assert response(envoy.answer(after, CLUSTER)).names == ("a", "b")
    envoy.answer(after, ROUTE, "r")  # reports them: now known, and not using a
    assert response(envoy.answer(after, CLUSTER)).names == ("b",)


def test_a_route_poller_that_went_silent_stops_keeping_clusters() -> None:
    now = [0.0]
    sessions = RestSessions(clock=lambda: now[0], idle_timeout=10)
    before = mesh({"r": ["a"], "old": ["gone"]}, ["a", "gone"])
    envoy = settled(before, sessions)
    after = mesh({"r": ["a"]}, ["a"])  # listener l-old and route "old" removed
    envoy.sync(after)  # Envoy stops polling "old" ...
    kept = Version(envoy.applied[(CLUSTER, ())])
    assert envoy.held[(CLUSTER, ())] == ("a", "gone")  # ... which still holds "gone"
    now[0] = 6
    assert envoy.answer(after, CLUSTER) == NotModified(CLUSTER, kept)
    assert isinstance(envoy.answer(after, ROUTE, "r"), NotModified)
    now[0] = 11  # "old" silent for longer than idle_timeout, the others polled at 6
    assert response(envoy.answer(after, CLUSTER)).names == ("a",)
    assert len(sessions) == 1


def test_kept_versions_are_shared_by_clients_in_the_same_state() -> None:
    sessions, renderer = RestSessions(), JsonRenderer()
    before = mesh({"r": ["a"]}, ["a", "b"])
    one, two = Envoy(sessions, "one"), Envoy(sessions, "two")
    one.sync(before)
    two.sync(before)
    after = mesh({"r": ["b"]}, ["b"])
    first, second = response(one.answer(after, CLUSTER)), response(two.answer(after, CLUSTER))
    assert first.version == second.version != after.version(CLUSTER)
    assert renderer.render(first) is renderer.render(second)
    assert renderer.renders == 1


# -- EDS: never held, versions per name set (rule 23) -------------------------------------


def test_eds_polls_are_answered_per_name_set() -> None:
    before = mesh({"r": ["a", "b"]}, ["a", "b"])
    envoy = settled(before)
    after = mesh({"r": ["a", "b"]}, ["a", "b"], addresses={"b": "10.0.0.9"})
    assert isinstance(envoy.answer(after, ENDPOINT, "a"), NotModified)
    eds = response(envoy.answer(after, ENDPOINT, "b"))
    assert eds.version == after.version_for(ENDPOINT, ["b"]) != before.version_for(ENDPOINT, ["b"])
    assert envoy.answer(after, ENDPOINT, "b") == NotModified(ENDPOINT, eds.version)


def test_unknown_type_is_not_found_and_nothing_is_remembered() -> None:
    sessions = RestSessions()
    with pytest.raises(ProtocolError) as caught:
        sessions.on_poll("n1", mesh({}, []), TypeUrl("type.googleapis.com/nope"), [], "")
    assert caught.value.code == "NOT_FOUND"
    assert len(sessions) == 0


# -- rule 22: not applied ------------------------------------------------------------------


def test_poll_reports_ack_once_the_client_advances() -> None:
    sessions = RestSessions()
    snap = mesh({}, ["a"])
    first = sessions.on_poll("n1", snap, CLUSTER, [], "")
    assert first.report is None  # nothing served yet
    version = response(first.answer).version
    assert sessions.on_poll("n1", snap, CLUSTER, [], version).report == Ack(CLUSTER, version, "")
    assert sessions.on_poll("n1", snap, CLUSTER, [], version).report is None  # acknowledged


def test_rejected_version_is_reported_and_not_sent_again() -> None:
    envoy = settled(mesh({}, ["a"]))
    after = mesh({}, ["a", "b"])
    served = response(envoy.poll(after, CLUSTER, reject=True).answer)
    for _ in range(2):  # reported on every poll while it is current, never resent
        polled = envoy.poll(after, CLUSTER)
        held = Version(envoy.applied[(CLUSTER, ())])
        assert polled.report == NotApplied(CLUSTER, held, served.version)
        assert polled.answer == NotModified(CLUSTER, served.version)
    newer = response(envoy.answer(mesh({}, ["a", "b", "c"]), CLUSTER))
    assert newer.names == ("a", "b", "c")


def test_an_empty_version_info_starts_the_poller_over() -> None:
    sessions = RestSessions()
    snap = mesh({}, ["a"])
    sessions.on_poll("n1", snap, ENDPOINT, ["a"], "")
    restarted = sessions.on_poll("n1", snap, ENDPOINT, ["a"], "")
    assert restarted.report is None and isinstance(restarted.answer, Response)


# -- memory is bounded ---------------------------------------------------------------------


def test_silent_clients_are_forgotten_and_reported() -> None:
    now = [0.0]
    sessions = RestSessions(clock=lambda: now[0], idle_timeout=30)
    snap = mesh({}, ["a"])
    sessions.on_poll("old", snap, CLUSTER, [], "")
    now[0] = 20
    sessions.on_poll("new", snap, CLUSTER, [], "")
    now[0] = 31
    answer = sessions.on_poll("new", snap, CLUSTER, [], "")
    assert answer.forgotten == ("old",) and len(sessions) == 1
    now[0] = 100
    assert sessions.on_poll("new", snap, CLUSTER, [], "").forgotten == ()  # not itself


def test_clients_pollers_and_versions_are_bounded() -> None:
    sessions = RestSessions(max_clients=2, max_pollers=3, max_versions=2, max_contents=2)
    snap = mesh({}, [f"c{i}" for i in range(10)])
    forgotten = [sessions.on_poll(f"n{i}", snap, CLUSTER, [], "").forgotten for i in range(4)]
    assert forgotten == [(), (), ("n0",), ("n1",)] and len(sessions) == 2
    for i in range(10):
        sessions.on_poll("n3", snap, ENDPOINT, [f"c{i}"], "")
    assert sessions.poller_count() == 2 + 3  # n2: CDS; n3: CDS and the last 3 EDS pollers


def test_a_poller_remembers_only_its_last_versions_served() -> None:
    sessions = RestSessions(max_versions=2, max_contents=1)
    snaps = [mesh({}, [f"c{i}" for i in range(n)]) for n in (1, 2, 3)]
    for snap in snaps:  # served three versions, none reported applied
        sessions.on_poll("n1", snap, CLUSTER, [], "elsewhere")
    needs_c3 = mesh({"r": ["c3"]}, ["c0", "c1", "c2", "c3"])
    # Reporting the oldest: forgotten, so unknown holdings, which hold nothing back.
    sessions.on_poll("n1", needs_c3, CLUSTER, [], snaps[0].version(CLUSTER))
    assert isinstance(sessions.on_poll("n1", needs_c3, ROUTE, ["r"], "").answer, Response)
    # Reporting the newest: known, and it lacks c3.
    sessions.on_poll("n1", needs_c3, CLUSTER, [], snaps[2].version(CLUSTER))
    held = sessions.on_poll("n1", needs_c3, ROUTE, ["r"], "").answer
    assert held == NotModified(ROUTE, Version(""), ("c3",))


def test_settled_once_every_poller_of_a_type_reports_what_it_was_served() -> None:
    """Envoy polls EDS once per cluster: the client holds the type's last response only
    when no poller has a served version outstanding."""
    sessions = RestSessions(clock=lambda: 0.0)
    snap = Snapshot.build([cluster("a"), cluster("b"), endpoints("a"), endpoints("b")])
    assert not sessions.settled("c", ENDPOINT)  # a client never seen
    first = sessions.on_poll("c", snap, ENDPOINT, ["a"], "").answer
    second = sessions.on_poll("c", snap, ENDPOINT, ["b"], "").answer
    assert isinstance(first, Response) and isinstance(second, Response)
    assert not sessions.settled("c", ENDPOINT)
    sessions.on_poll("c", snap, ENDPOINT, ["a"], first.version)
    assert not sessions.settled("c", ENDPOINT)  # "b" has not reported yet
    report = sessions.on_poll("c", snap, ENDPOINT, ["b"], second.version).report
    assert report == Ack(ENDPOINT, second.version, "")
    assert sessions.settled("c", ENDPOINT)
    assert sessions.settled("c", CLUSTER)  # no poller of the type
