"""A real etcd (Debian's ``etcd-server``) for tests: one member on free loopback ports in a
temporary directory, stopped by the test that started it.

``Etcd.stop()`` then ``Etcd.start()`` restarts it on the same ports and data (an outage
and a return); ``Etcd.call`` speaks etcd's JSON gateway (``/v3/...``) for assertions
(``keys``, ``leases``). Tests that need it take the ``etcd`` fixture, which skips with
the reason when the binary is missing (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Process, free_port, port_open, wait_until


def etcd_binary() -> str | None:
    """The etcd binary, or None."""
    return shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


class Etcd:
    """One etcd member: ``url`` is its client URL."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.process: Process | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        """Start (again, on the same ports and data directory) and wait until it answers."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.starts += 1
        argv = [
            self.binary,
            "--name",
            "xdsd-test",
            "--data-dir",
            str(self.workdir / "etcd-data"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"xdsd-test={peer}",
            "--log-level",
            "warn",
        ]
        self.process = Process(argv, self.workdir / f"etcd-{self.starts}.log")
        wait_until(self._answers, timeout=30, what="etcd to answer")

    def _answers(self) -> bool:
        if self.process is None or not self.process.alive():
            log = self.process.log() if self.process else ""
            raise AssertionError(f"etcd exited:\n{log[-3000:]}")
        if not port_open("127.0.0.1", self.client_port):
            return False
        try:
            return bool(self.call("/v3/kv/range", {"key": b64("health")}).get("header"))
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop it (the data directory stays for ``start``)."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def call(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to the JSON gateway at ``path``."""
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def keys(self, prefix: str) -> dict[str, Any]:
        """The keys under ``prefix`` → their values (parsed JSON) and leases."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        found = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
        out: dict[str, Any] = {}
        for kv in found.get("kvs", []):
            value = json.loads(base64.b64decode(kv.get("value", "")))
            out[base64.b64decode(kv["key"]).decode()] = (value, int(kv.get("lease", 0)))
        return out

    def leases(self) -> set[int]:
        """The ids of every lease etcd holds."""
        return {int(x["ID"]) for x in self.call("/v3/lease/leases", {}).get("leases", [])}


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A real etcd for one test (skipped, with the reason, without the binary)."""
    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd not installed (apt-get install etcd-server; .ci/run does)")
    server = Etcd(tmp_path, binary)
    try:
        yield server
    finally:
        server.stop()
