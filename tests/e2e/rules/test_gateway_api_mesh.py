"""GAMMA with real Envoy sidecars: an HTTPRoute whose parent is the ``reviews`` Service
applies to a caller's sidecar — a header match sends ``end-user: jason`` to v2, the rest
is split 80/20 between v1 and v2 (each a Service of its own, as the Gateway API has no
subsets) —; the canary edit moves the weights; an Istio VirtualService written for the
same service is refused with both files named, and the sidecar keeps the route."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.e2e.traffic_mesh import Sidecar, TrafficMesh
from tests.harness import wait_until

ISTIO_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews-v1}
"""


def route(port: int, v1: int, v2: int) -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews-canary, namespace: default}}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: reviews, port: {port}}}
  rules:
  - matches:
    - headers: [{{name: end-user, value: jason}}]
    backendRefs: [{{name: reviews-v2, port: {port}}}]
  - backendRefs:
    - {{name: reviews-v1, port: {port}, weight: {v1}}}
    - {{name: reviews-v2, port: {port}, weight: {v2}}}
"""


def shares(client: Sidecar, n: int = 400) -> Counter[str]:
    return Counter(client.request("reviews").backend for _ in range(n))


def test_a_gamma_route_splits_the_callers_traffic(tmp_path: Path) -> None:
    with TrafficMesh(tmp_path) as mesh:
        v1, v2 = (
            mesh.upstream("reviews-v1", version="v1"),
            mesh.upstream("reviews-v2", version="v2"),
        )
        mesh.service("reviews", [v1, v2])
        mesh.service("reviews-v1", [v1])
        mesh.service("reviews-v2", [v2])
        path = mesh.rule("reviews-canary", route(mesh.port, 80, 20))
        client = mesh.start()
        client.wait_for(
            lambda: (
                client.request("reviews", headers={"end-user": "jason"}).backend == "reviews-v2"
            ),
            "the header rule of the GAMMA route",
        )
        assert {
            client.request("reviews", headers={"end-user": "jason"}).backend for _ in range(20)
        } == {"reviews-v2"}
        counts = shares(client)
        # 80 % expected on v1 (320 of 400): within ±10 points (±40)
        assert 280 <= counts["reviews-v1"] <= 360, counts
        assert counts["reviews-v1"] + counts["reviews-v2"] == 400, counts

        # the canary edit: the weights of the HTTPRoute
        mesh.rule("reviews-canary", route(mesh.port, 0, 100))
        client.wait_for(lambda: shares(client, 40) == Counter({"reviews-v2": 40}), "all on v2")

        # an Istio VirtualService for the same service: refused, both files named
        istio = mesh.rule("reviews-vs", ISTIO_VS)
        assert mesh.xdsd is not None
        errors = wait_until(
            lambda: [e for e in mesh.errors() if e["severity"] == "error"], what="the conflict"
        )
        (error,) = errors
        assert error["path"] == str(istio) and error["field"] == "hosts[0]"
        # named at its parentRefs[0] line (the one after "parentRefs:"), where the route
        # claims the service
        claim = 2 + Path(path).read_text().splitlines().index("  parentRefs:")
        assert f"HTTPRoute default/reviews-canary ({path}:{claim})" in error["message"]
        assert shares(client, 40) == Counter({"reviews-v2": 40})  # the last good one

        # the conditions in /debug/errors once it loads again
        istio.unlink()
        wait_until(
            lambda: not [e for e in mesh.errors() if e["severity"] == "error"],
            what="the load to succeed again",
        )
        conditions = [e for e in mesh.errors() if e["severity"] == "condition"]
        assert {(c["object"], c["scope"], c["type"], c["status"]) for c in conditions} == {
            ("HTTPRoute default/reviews-canary", "parentRefs[0]", "Accepted", "True"),
            ("HTTPRoute default/reviews-canary", "parentRefs[0]", "ResolvedRefs", "True"),
        }
