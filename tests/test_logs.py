"""Log formats of a running daemon: readable text and one JSON object per line, with the
node id, type and version on every line about a client's resources."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from tests.e2e.mesh import EchoMesh
from tests.harness import wait_until
from tests.xds_clients import AdsClient
from xdsd.logs import JsonFormatter, TextFormatter


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[EchoMesh]:
    m = EchoMesh(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def test_json_lines_carry_node_type_and_version(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd(log_format="json")
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    nacking = AdsClient(xdsd.grpc_port, "sim-nack", "sim", mode="nack", error="bad cluster")
    try:
        wait_until(lambda: "NACK of clusters" in xdsd.log(), what="the NACK logged")
    finally:
        nacking.stop()
    records = [json.loads(line) for line in xdsd.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert records[0]["time"].endswith("Z")
    nack = next(r for r in records if r["message"].startswith("NACK of clusters"))
    assert nack["level"] == "WARNING" and nack["node"] == "sim-nack"
    assert nack["type"] == "clusters" and nack["version"] and nack["client"].startswith("ads-")
    sends = [r for r in records if r["message"].startswith("sending ")]
    assert {r["node"] for r in sends} == {"client-grpc", "sim-nack"}
    assert {r["type"] for r in sends if r["node"] == "client-grpc"} == {
        "clusters",
        "endpoints",
        "listeners",
        "routes",
    }
    assert all(r["version"] and r["nonce"] for r in sends)
    opened = [r for r in records if r["message"].startswith("stream opened")]
    assert {r["node"] for r in opened} == {"client-grpc", "sim-nack"}
    assert all(r["transport"] == "ads" for r in opened)


def test_text_lines_are_readable_with_the_fields_first(mesh: EchoMesh) -> None:
    xdsd = mesh.start_xdsd()
    mesh.start_envoy("grpc")
    mesh.wait_for("v1")
    line = next(ln for ln in xdsd.log().splitlines() if "sending clusters" in ln)
    head, _, message = line.partition(" xdsd.transports.grpc: ")
    assert " DEBUG" in head and message.startswith(
        "client=ads-1 node=client-grpc type=clusters version="
    )
    assert ": sending clusters version=" in message
    assert "INFO xdsd.app: gRPC xDS listening on" in xdsd.log()  # lines without fields: as before


def test_formatters_quote_and_keep_exceptions() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "hello %s", ("you",), None)
    record.node = "a b"
    assert TextFormatter().format(record).endswith('ERROR x: node="a b": hello you')
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["node"] == "a b" and parsed["message"] == "hello you"
    assert "ValueError: boom" in parsed["exception"]


class _GatedStream:
    """A stream whose writes wait until ``gate`` is set (a pipe nobody reads)."""

    def __init__(self) -> None:
        import threading

        self.gate = threading.Event()
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.gate.wait()
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_stuck_stream_drops_and_counts_lines_then_says_so() -> None:
    from typing import cast

    from xdsd.logs import QueueingHandler

    stream = _GatedStream()
    handler = QueueingHandler(cast("TextIO", stream), capacity=5, close_timeout=5)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("test.queueing")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for n in range(50):
            logger.warning("line %d", n)  # returns at once: nothing waits for the stream
        assert handler.dropped >= 50 - 5 - 1  # the queue, and the line the writer holds
        stream.gate.set()
        wait_until(
            lambda: any("log lines dropped" in line for line in stream.lines),
            what="the summary line",
        )
        summary = next(line for line in stream.lines if "log lines dropped" in line)
        assert f"{handler.dropped} log lines dropped" in summary
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        handler.close()  # writes what is queued
    assert "after" in stream.lines[-1]
