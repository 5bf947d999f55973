"""Istio's AuthorizationPolicy goldens, rendered into inbound listeners that real Envoy
accepts: every golden's policies on an HTTP and a TCP inbound listener (the filters of
``xdsd.translate.authz`` inside the listeners ``inbound_listener`` builds), with the
ext_authz provider's cluster, in one bootstrap that ``envoy --mode validate`` takes.
What the filters decide is compared with Istio's in ``tests/translate/test_authz_goldens.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tests.harness import envoy_accepts
from tests.translate.test_authz_goldens import CASES, _policies
from xdsd.model import Port
from xdsd.model.service import Protocol
from xdsd.translate import authz
from xdsd.translate.listeners import inbound_listener


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def test_envoy_accepts_every_golden_on_http_and_tcp_listeners(tmp_path: Path) -> None:
    listeners: list[dict[str, Any]] = []
    clusters: dict[str, dict[str, Any]] = {}
    number = 20000
    for name, case in sorted(CASES.items()):
        work = tmp_path / name
        work.mkdir()
        policies = _policies(case, work)
        for protocol in (Protocol.HTTP, Protocol.TCP):
            number += 1
            port = Port(number, protocol)
            listener = inbound_listener("127.0.0.1", port, policies=policies)
            assert any(
                f.name
                in (
                    authz.HTTP_RBAC,
                    authz.NETWORK_RBAC,
                    "envoy.filters.network.http_connection_manager",
                )
                for chain in listener.filter_chains
                for f in chain.filters
            )
            listeners.append(json_format.MessageToDict(listener))
            cluster = f"inbound|{number}||"
            clusters[cluster] = _cluster(cluster, number + 10000)
        for provider in case.providers:
            cluster = authz.provider_cluster(provider)
            clusters[cluster] = _cluster(cluster, 9000)
            if provider.kind.name == "GRPC":
                clusters[cluster]["typed_extension_protocol_options"] = {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                }
    bootstrap = {
        "node": {"id": "authz-goldens", "cluster": "authz"},
        "static_resources": {"listeners": listeners, "clusters": list(clusters.values())},
    }
    envoy_accepts(bootstrap, tmp_path / "bootstrap.json")
