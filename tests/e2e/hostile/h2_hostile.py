"""Hostile HTTP/2 clients for the limits tests, written with ``h2`` over a plain socket:
one that sends requests on an ADS stream and never reads the responses (it grants the
server no window), and one that opens and resets streams in a loop (rapid reset)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


@dataclass
class Outcome:
    """How the server ended what the client did: the trailers' ``grpc-status`` (and
    message) of the stream, whether the stream was reset, the GOAWAY error code."""

    grpc_status: str | None = None
    grpc_message: str = ""
    reset: bool = False
    goaway: int | None = None
    closed: bool = False
    sent: int = 0
    events: list[Any] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.grpc_status is not None or self.reset or self.goaway is not None or self.closed


def _connect(
    port: int, host: str = "127.0.0.1"
) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection((host, port), timeout=30)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    sock.sendall(conn.data_to_send())
    return sock, conn


def _headers(port: int) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", ADS),
        (":authority", f"127.0.0.1:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def _absorb(sock: socket.socket, conn: h2.connection.H2Connection, outcome: Outcome) -> None:
    """Read what the server sent (never acknowledging its data: no window is granted)."""
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    except ConnectionError:
        outcome.closed = True
        return
    if not data:
        outcome.closed = True
        return
    for event in conn.receive_data(data):
        outcome.events.append(type(event).__name__)
        if isinstance(event, h2.events.TrailersReceived):
            trailers = dict(event.headers)
            outcome.grpc_status = str(trailers.get("grpc-status"))
            outcome.grpc_message = str(trailers.get("grpc-message", ""))
        elif isinstance(event, h2.events.StreamReset):
            outcome.reset = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            outcome.goaway = int(event.error_code)
    pending = conn.data_to_send()
    if pending:
        try:
            sock.sendall(pending)
        except OSError:
            outcome.closed = True


def slow_reader(port: int, message: bytes, count: int, *, linger: float | None = None) -> Outcome:
    """Open an ADS stream, send ``message`` (a serialized DiscoveryRequest) ``count``
    times as gRPC messages without ever granting window for the responses; stop as soon
    as the server ends the stream or the connection. Once all is sent, wait for the
    server to end it: without limit, or at most ``linger`` seconds (then the outcome
    says it did not end)."""
    sock, conn = _connect(port)
    outcome = Outcome()
    try:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, _headers(port))
        sock.sendall(conn.data_to_send())
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        sock.settimeout(0.05)
        for _ in range(count):
            view = memoryview(framed)
            while view and not outcome.ended:
                window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
                if window <= 0:
                    _absorb(sock, conn, outcome)
                    continue
                chunk, view = view[:window], view[window:]
                conn.send_data(stream, bytes(chunk))
                try:
                    sock.sendall(conn.data_to_send())
                except OSError:
                    outcome.closed = True
            if outcome.ended:
                break
            outcome.sent += 1
        sock.settimeout(min(10.0, linger) if linger is not None else 10.0)
        deadline = None if linger is None else time.monotonic() + linger
        while not outcome.ended and (deadline is None or time.monotonic() < deadline):
            _absorb(sock, conn, outcome)
    finally:
        sock.close()
    return outcome


def rapid_reset(port: int, count: int, *, linger: float | None = None) -> Outcome:
    """Open a stream and reset it at once, ``count`` times on one connection (reading
    what the server sends between batches); stop when the server ends the connection.
    Once all are sent, wait for that without limit, or at most ``linger`` seconds."""
    sock, conn = _connect(port)
    outcome = Outcome()
    sock.settimeout(0.001)
    try:
        for i in range(count):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, _headers(port))
            conn.reset_stream(stream, error_code=8)  # CANCEL
            try:
                sock.sendall(conn.data_to_send())
            except OSError:
                outcome.closed = True
            outcome.sent += 1
            if i % 100 == 99:
                _absorb(sock, conn, outcome)
            if outcome.goaway is not None or outcome.closed:
                break
        sock.settimeout(min(10.0, linger) if linger is not None else 10.0)
        deadline = None if linger is None else time.monotonic() + linger
        while not (outcome.goaway is not None or outcome.closed) and (
            deadline is None or time.monotonic() < deadline
        ):
            _absorb(sock, conn, outcome)
    finally:
        sock.close()
    return outcome
