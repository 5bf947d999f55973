"""Log formats of a running daemon: readable text and one JSON object per line, with the
node id, type and version on every line about a client's resources."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

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
        "clusters", "endpoints", "listeners", "routes"
    }  # fmt: skip
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
