"""Simulated xDS clients for operations tests: an ADS client that ACKs, NACKs or stays
silent, and a client that stops reading (its stream's flow-control window is 0).

``AdsClient`` runs its own event loop in a thread, so synchronous tests can start it,
look at what it got and stop it; it records how the server ended its stream (gRPC status
and message).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any

import h2.config
import h2.connection
import h2.settings
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def make_node(node_id: str, service: str) -> base_pb2.Node:
    """A sidecar's node fronting ``service``."""
    metadata = struct_pb2.Struct()
    metadata.update({"instance_ip": "127.0.0.1"})
    return base_pb2.Node(id=node_id, cluster=service, metadata=metadata, user_agent_name="envoy")


class AdsClient:
    """One ADS stream subscribing to clusters (wildcard). ``mode``: ``ack`` every
    response, ``nack`` every response (with ``error``), or ``silent`` (never answer)."""

    def __init__(
        self,
        port: int,
        node_id: str,
        service: str,
        *,
        mode: str = "ack",
        error: str = "simulated rejection: cluster foo is bad",
    ) -> None:
        self.port = port
        self.node = make_node(node_id, service)
        self.mode = mode
        self.error = error
        self.responses: list[discovery_pb2.DiscoveryResponse] = []
        #: (status name, message) once the server ended the stream.
        self.ended: tuple[str, str] | None = None
        self._loop = asyncio.new_event_loop()
        self._receiving: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))
        self._thread.daemon = True
        self._thread.start()

    async def _run(self) -> None:
        channel = Channel("127.0.0.1", self.port)
        try:
            async with channel.request(
                ADS_PATH,
                Cardinality.STREAM_STREAM,
                discovery_pb2.DiscoveryRequest,
                discovery_pb2.DiscoveryResponse,
            ) as stream:
                await stream.send_message(
                    discovery_pb2.DiscoveryRequest(node=self.node, type_url=CDS)
                )
                self._receiving = asyncio.create_task(self._receive(stream))
                try:
                    await self._receiving
                except asyncio.CancelledError:  # stopped by us
                    await stream.cancel()
        except GRPCError as e:
            self.ended = (e.status.name, e.message or "")
        except (StreamTerminatedError, ProtocolError, ConnectionError, OSError) as e:
            if self.ended is None:
                self.ended = ("TERMINATED", repr(e))
        finally:
            channel.close()

    async def _receive(self, stream: Any) -> None:
        last_good = ""
        while True:
            response = await stream.recv_message()
            if response is None:
                with contextlib.suppress(Exception):  # the server may have reset the stream
                    await stream.end()
                await stream.recv_trailing_metadata()  # raises GRPCError for a non-OK status
                self.ended = ("OK", "")
                return
            self.responses.append(response)
            if self.mode == "silent":
                continue
            request = discovery_pb2.DiscoveryRequest(
                type_url=response.type_url, response_nonce=response.nonce
            )
            if self.mode == "nack":
                request.version_info = last_good
                request.error_detail.code = 3
                request.error_detail.message = self.error
            else:
                request.version_info = last_good = response.version_info
            await stream.send_message(request)

    def stop(self) -> None:
        """Close the stream and end the thread."""
        if self._receiving is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._receiving.cancel)
        self._thread.join(10)
        self._loop.close()


class UnreadingClient:
    """An HTTP/2 connection that opens an ADS stream, asks for clusters and never reads:
    its stream's flow-control window is 0, so the server can never finish writing the
    response (what a hung proxy looks like)."""

    def __init__(self, port: int, node_id: str, service: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        )
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", ADS_PATH),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        body = discovery_pb2.DiscoveryRequest(
            node=make_node(node_id, service), type_url=CDS
        ).SerializeToString()
        conn.send_data(stream_id, b"\0" + struct.pack(">I", len(body)) + body)
        self.sock.sendall(conn.data_to_send())
        self.conn = conn

    def stop(self) -> None:
        """Close the connection."""
        self.sock.close()


def first_response_over_tls(
    port: int,
    request: discovery_pb2.DiscoveryRequest,
    *,
    root: bytes,
    key: bytes | None = None,
    chain: bytes | None = None,
    server_name: str,
    metadata: tuple[tuple[str, str], ...] = (),
) -> discovery_pb2.DiscoveryResponse | Any:
    """Open an ADS stream to xdsd on 127.0.0.1:``port`` over TLS (trusting ``root``,
    expecting ``server_name``, presenting the client certificate ``chain``/``key`` when
    given, sending ``metadata``), send ``request``; return the first response, or the
    ``grpc.RpcError`` the stream ended with."""
    import grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
    with grpc.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[("grpc.ssl_target_name_override", server_name)],
    ) as channel:
        call = channel.stream_stream(ADS_PATH)(
            iter([request.SerializeToString()]), timeout=20, metadata=metadata
        )
        try:
            first = discovery_pb2.DiscoveryResponse.FromString(next(call))
        except grpc.RpcError as e:
            return e
        call.cancel()
        return first
