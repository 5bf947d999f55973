"""Real Envoy, peers side by side: file write → an Envoy routing by the new rule.

One set of HTTP backends (``v1``, ``v2``) and one real Envoy per peer, each with its own
loopback listener address (127.0.2.x, apart from the e2e tests' addresses), all running at
once. The same routing change (100 % of ``echo`` to v1 ↔ v2) is made by editing each peer's
own file, atomically (temp file + rename), in interleaved rounds: round i edits every peer
in turn, so machine noise hits every peer alike. Peers:

- ``xdsd-ads``: xdsd, Envoy over ADS (``xdsd bootstrap --transport grpc``); the edit
  rewrites the VirtualService.
- ``xdsd-rest``: xdsd, Envoy polling REST every 1 s (``--transport rest``).
- ``envoy-file``: no control plane. Envoy's bootstrap has ``dynamic_resources`` with
  ``path_config_source`` + ``watched_directory`` for LDS and CDS, and the HCM takes its
  route configuration by RDS from a file the same way; the edit renames a new RDS file
  over the old one.
- ``sovereign``: the Python REST control plane from PyPI in its own virtualenv
  (``--sovereign PATH``), one worker, a file source re-read every 1 s (its minimum: an
  integer number of seconds) feeding Jinja templates for clusters, listeners and routes;
  Envoy polls it every 1 s. The edit rewrites the source file.

For each edit the time from just before the write to the first response from the new
backend (confirmed by the next three) is recorded, by a tight loop of HTTP requests (one
connection each) through the peer's Envoy. Every request that fails (connection error or
a status other than 200) during an edit is counted. For xdsd the time the watcher logged
"config change detected" is read back from its log (millisecond timestamps), so the
detection part (the 10 ms quiet period and the file system event) is reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tests.e2e.mesh import CLIENT, DR, ECHO, route_to, vs
from tests.harness import (
    Backend,
    Envoy,
    Process,
    Xdsd,
    envoy_binary,
    free_port,
    http_get,
    wait_until,
    write_atomically,
)

BACKEND_IPS = {"v1": "127.0.2.11", "v2": "127.0.2.12", "v3": "127.0.2.13"}
#: Per peer: (instance IP of its client sidecar, outbound listener IP).
PEER_IPS = {
    "xdsd-ads": ("127.0.2.21", "127.0.2.31"),
    "xdsd-rest": ("127.0.2.22", "127.0.2.32"),
    "envoy-file": ("127.0.2.23", "127.0.2.33"),
    "sovereign": ("127.0.2.24", "127.0.2.34"),
}
TARGETS = ("v2", "v1")


class Peer(Protocol):
    """One system that configures one Envoy from a file."""

    name: str

    def start(self) -> None: ...
    def write(self, target: str) -> None:
        """Edit the file so that all traffic goes to backend ``target``."""

    def ask(self) -> str:
        """One request through the Envoy: the backend's name; raises on a failure."""

    def detected_after(self, wall: float) -> float | None:
        """Wall-clock time the peer noticed the change written at ``wall`` (None: n/a)."""

    def describe(self) -> str: ...
    def stop(self) -> None: ...


class _EnvoyPeer:
    """What every peer shares: a listener address and port, and the Envoy."""

    def __init__(self, name: str, root: Path, port: int) -> None:
        self.name = name
        self.root = root / name
        self.root.mkdir()
        self.instance_ip, self.outbound_ip = PEER_IPS[name]
        self.port = port
        self.envoy: Envoy | None = None

    def ask(self) -> str:
        status, headers, _ = http_get(
            self.outbound_ip, self.port, "/", {"Host": "echo"}, timeout=2.0
        )
        if status != 200:
            raise RuntimeError(f"status {status}")
        return headers.get("x-backend", "?")

    def detected_after(self, wall: float) -> float | None:
        return None

    def _start_envoy(self, bootstrap: str, admin_port: int) -> None:
        """Start the Envoy from ``bootstrap`` (YAML or JSON) and wait until it is LIVE."""
        path = self.root / "envoy.yaml"
        path.write_text(bootstrap)
        self.envoy = Envoy(path, admin_port, self.root)
        self.envoy.ready()

    def _start_json_envoy(self, **sections: Any) -> None:
        """Start an Envoy whose bootstrap is ``sections`` plus a node and an admin port."""
        admin_port = free_port()
        bootstrap = {
            "node": {"id": self.name, "cluster": "client"},
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
            },
            **sections,
        }
        self._start_envoy(json.dumps(bootstrap), admin_port)

    def stop(self) -> None:
        if self.envoy is not None:
            with contextlib.suppress(Exception):
                self.envoy.stop()


class XdsdPeer(_EnvoyPeer):
    """xdsd serving the echo mesh; its client Envoy over ``transport`` (grpc or rest)."""

    def __init__(self, name: str, root: Path, port: int, transport: str) -> None:
        super().__init__(name, root, port)
        self.transport = transport
        self.config = self.root / "config"
        (self.config / "services").mkdir(parents=True)
        (self.config / "rules").mkdir()
        ips = BACKEND_IPS
        (self.config / "services" / "echo.toml").write_text(
            ECHO.format(port=port, v1=ips["v1"], v2=ips["v2"], v3=ips["v3"])
        )
        (self.config / "services" / "client.toml").write_text(
            CLIENT.format(port=free_port(self.instance_ip), target=free_port(), ip=self.instance_ip)
        )
        subsets = "".join(f"  - name: {n}\n    labels: {{version: {n}}}\n" for n in TARGETS)
        write_atomically(self.config / "rules" / "echo-dr.yaml", DR.format(subsets=subsets))
        self.rules = self.config / "rules" / "echo-vs.yaml"
        self.write("v1")
        self.xdsd: Xdsd | None = None

    def describe(self) -> str:
        return f"xdsd (this tree), Envoy over {'ADS' if self.transport == 'grpc' else 'REST 1 s'}"

    def start(self) -> None:
        self.xdsd = Xdsd(self.config, self.root)
        port = self.xdsd.grpc_port if self.transport == "grpc" else self.xdsd.rest_port
        admin_port = free_port()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdsd.cli",
                "bootstrap",
                "--service",
                "client",
                "--node-id",
                self.name,
                "--instance-ip",
                self.instance_ip,
                "--outbound-ip",
                self.outbound_ip,
                "--xds",
                f"127.0.0.1:{port}",
                "--transport",
                self.transport,
                "--admin-port",
                str(admin_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self._start_envoy(proc.stdout, admin_port)

    def write(self, target: str) -> None:
        write_atomically(self.rules, vs(route_to({target: 100})))

    def detected_after(self, wall: float) -> float | None:
        if self.xdsd is None:
            return None
        floor = int(wall * 1000) / 1000
        for line in self.xdsd.log().splitlines():
            if "config change detected" not in line:
                continue
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= floor:
                return stamp
        return None

    def stop(self) -> None:
        super().stop()
        if self.xdsd is not None:
            with contextlib.suppress(Exception):
                self.xdsd.stop()


def _any(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _static_cluster(name: str, ip: str, port: int) -> dict[str, Any]:
    """A STATIC cluster of one endpoint."""
    endpoint = {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
    return _any(
        "envoy.config.cluster.v3.Cluster",
        name=name,
        type="STATIC",
        connect_timeout="1s",
        load_assignment={"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    )


def _clusters(port: int) -> list[dict[str, Any]]:
    """The clusters v1 and v2, one backend each."""
    return [_static_cluster(name, BACKEND_IPS[name], port) for name in TARGETS]


def _route_config(target: str) -> dict[str, Any]:
    return _any(
        "envoy.config.route.v3.RouteConfiguration",
        name="echo",
        virtual_hosts=[
            {
                "name": "echo",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": target}}],
            }
        ],
    )


def _listener(ip: str, port: int, rds_source: dict[str, Any]) -> dict[str, Any]:
    hcm = _any(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="echo",
        rds={"route_config_name": "echo", "config_source": rds_source},
        http_filters=[
            {
                "name": "envoy.filters.http.router",
                "typed_config": _any("envoy.extensions.filters.http.router.v3.Router"),
            }
        ],
    )
    return _any(
        "envoy.config.listener.v3.Listener",
        name="echo",
        address={"socket_address": {"address": ip, "port_value": port}},
        filter_chains=[
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    )


class EnvoyFilePeer(_EnvoyPeer):
    """Envoy's own filesystem dynamic config: LDS, CDS and RDS files in watched
    directories, replaced by rename."""

    def __init__(self, name: str, root: Path, port: int) -> None:
        super().__init__(name, root, port)
        self.files = {}
        for kind in ("cds", "lds", "rds"):
            (self.root / kind).mkdir()
            self.files[kind] = self.root / kind / f"{kind}.json"
        rds_source = self._source("rds")
        self._replace("cds", _clusters(port))
        self._replace("lds", [_listener(self.outbound_ip, port, rds_source)])
        self.write("v1")

    def _source(self, kind: str) -> dict[str, Any]:
        path = self.files[kind]
        return {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": str(path),
                "watched_directory": {"path": str(path.parent)},
            },
        }

    def _replace(self, kind: str, resources: list[dict[str, Any]]) -> None:
        path = self.files[kind]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"resources": resources}))
        os.replace(tmp, path)

    def describe(self) -> str:
        return "Envoy path_config_source + watched_directory (LDS, CDS, RDS files), rename"

    def start(self) -> None:
        self._start_json_envoy(
            dynamic_resources={
                "lds_config": self._source("lds"),
                "cds_config": self._source("cds"),
            }
        )

    def write(self, target: str) -> None:
        self._replace("rds", [_route_config(target)])


SOVEREIGN_TEMPLATE_CLUSTERS = "resources:\n" + "".join(
    f"  - {json.dumps(c)}\n" for c in _clusters(0)
).replace('"port_value": 0', '"port_value": {{ instances[0].port }}')


class SovereignPeer(_EnvoyPeer):
    """sovereign (REST): a file source (``instances.json``, re-read every second) feeding
    Jinja templates; the edit rewrites the source file's ``target``."""

    def __init__(self, name: str, root: Path, port: int, binary: str) -> None:
        super().__init__(name, root, port)
        self.binary = binary
        self.source = self.root / "instances.json"
        self.write("v1")
        rds_rest = {"resource_api_version": "V3", "api_config_source": self._rest_source()}
        templates = {
            "clusters": SOVEREIGN_TEMPLATE_CLUSTERS,
            "listeners": "resources:\n  - "
            + json.dumps(_listener(self.outbound_ip, port, rds_rest))
            + "\n",
            "routes": "resources:\n  - "
            + json.dumps(_route_config("TARGET")).replace("TARGET", "{{ instances[0].target }}")
            + "\n",
        }
        for kind, text in templates.items():
            (self.root / f"{kind}.yaml").write_text(text)
        self.sovereign_port = free_port()
        config = {
            "sources": [
                {
                    "type": "file",
                    "scope": "default",
                    "config": {
                        "spec": {
                            "protocol": "file",
                            "serialization": "json",
                            "path": str(self.source),
                        }
                    },
                }
            ],
            "source_config": {"refresh_rate": 1},
            "matching": {"enabled": False},
            "templates": {
                "default": [
                    {
                        "type": kind,
                        "spec": {
                            "protocol": "file",
                            "serialization": "jinja2",
                            "path": str(self.root / f"{kind}.yaml"),
                        },
                    }
                    for kind in templates
                ]
            },
            "logging": {"access_logs": {"enabled": False}},
        }
        self.config = self.root / "sovereign.yaml"
        self.config.write_text(json.dumps(config))
        self.process: Process | None = None

    def _rest_source(self) -> dict[str, Any]:
        return {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": ["sovereign"],
            "refresh_delay": "1s",
            "request_timeout": "1s",
        }

    def describe(self) -> str:
        return f"sovereign {_version_of(self.binary)} (REST 1 s, source refresh 1 s, 1 worker)"

    def start(self) -> None:
        self.process = Process(
            [self.binary],
            self.root / "sovereign.log",
            env={
                "SOVEREIGN_CONFIG": f"file://{self.config}",
                "SOVEREIGN_HOST": "127.0.0.1",
                "SOVEREIGN_PORT": str(self.sovereign_port),
                "SOVEREIGN_WORKERS": "1",
                "SOVEREIGN_ENABLE_ACCESS_LOGS": "False",
            },
        )
        wait_until(
            lambda: _listening(self.sovereign_port, self.process),
            timeout=60,
            what="sovereign to listen",
        )
        rest = {"resource_api_version": "V3", "api_config_source": self._rest_source()}
        self._start_json_envoy(
            static_resources={
                "clusters": [
                    {
                        k: v
                        for k, v in _static_cluster(
                            "sovereign", "127.0.0.1", self.sovereign_port
                        ).items()
                        if k != "@type"
                    }
                ]
            },
            dynamic_resources={"lds_config": rest, "cds_config": rest},
        )

    def write(self, target: str) -> None:
        write_atomically(
            self.source, json.dumps([{"name": "echo", "target": target, "port": self.port}])
        )

    def stop(self) -> None:
        super().stop()
        if self.process is not None:
            self.process.stop()


def _listening(port: int, process: Process | None) -> bool:
    if process is not None and not process.alive():
        raise RuntimeError(f"sovereign exited:\n{process.log()[-3000:]}")
    with contextlib.suppress(OSError):
        return http_get("127.0.0.1", port, "/healthcheck", timeout=1.0)[0] == 200
    return False


def _version_of(binary: str) -> str:
    python = Path(binary).parent / "python"
    proc = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('sovereign'))"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.stdout.strip() or "?"


def _envoy_version() -> str:
    proc = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30)
    text = (proc.stdout + proc.stderr).strip()
    return text.rsplit("version: ", 1)[-1] if "version: " in text else text


def _one_edit(peer: Peer, target: str, deadline: float = 30.0) -> dict[str, Any]:
    """Write, then probe until ``target`` answers 4 times in a row."""
    failures = 0
    wall = time.time()
    started = time.perf_counter()
    peer.write(target)
    seen: float | None = None
    streak = 0
    while time.perf_counter() - started < deadline:
        try:
            got = peer.ask()
        except Exception:
            failures += 1
            continue
        if got == target:
            if seen is None:
                seen = time.perf_counter() - started
            streak += 1
            if streak == 4:
                break
        else:
            seen, streak = None, 0
    else:
        raise RuntimeError(f"{peer.name}: traffic did not move to {target} in {deadline}s")
    assert seen is not None
    detected = peer.detected_after(wall)
    return {
        "ms": seen * 1000,
        "detect_ms": None if detected is None else max(0.0, (detected - wall) * 1000),
        "failures": failures,
    }


def _summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": statistics.median(s),
        "p90_ms": s[int(0.9 * (len(s) - 1))],
        "min_ms": s[0],
        "max_ms": s[-1],
    }


def run(names: list[str], edits: int, sovereign: str | None) -> dict[str, Any]:
    """Start every peer, then ``edits`` interleaved rounds of one edit per peer."""
    with tempfile.TemporaryDirectory(prefix="xdsd-peers-") as tmp:
        root = Path(tmp)
        port = free_port(BACKEND_IPS["v1"])
        backends = [Backend(n, ip, port) for n, ip in BACKEND_IPS.items()]
        makers: dict[str, Callable[[], Peer]] = {
            "xdsd-ads": lambda: XdsdPeer("xdsd-ads", root, port, "grpc"),
            "xdsd-rest": lambda: XdsdPeer("xdsd-rest", root, port, "rest"),
            "envoy-file": lambda: EnvoyFilePeer("envoy-file", root, port),
        }
        if sovereign is not None:
            makers["sovereign"] = lambda: SovereignPeer("sovereign", root, port, sovereign)
        peers: list[Peer] = []
        try:
            for name in names:
                if name not in makers:
                    print(f"skipping {name}: not available (see --sovereign)", file=sys.stderr)
                    continue
                peer = makers[name]()
                peers.append(peer)
                peer.start()
            for peer in peers:
                wait_until(
                    lambda p=peer: all(p.ask() == "v1" for _ in range(5)),  # type: ignore[misc]
                    timeout=60,
                    what=f"{peer.name} to route to v1",
                )
            samples: dict[str, list[dict[str, Any]]] = {p.name: [] for p in peers}
            for i in range(edits):
                for peer in peers:
                    samples[peer.name].append(_one_edit(peer, TARGETS[i % 2]))
            described = {p.name: p.describe() for p in peers}
        finally:
            for peer in reversed(peers):
                peer.stop()
            for b in backends:
                b.stop()
    results: dict[str, Any] = {}
    for name, rows in samples.items():
        total = [r["ms"] for r in rows]
        entry: dict[str, Any] = {
            "setup": described[name],
            "edits": len(rows),
            **_summary(total),
            "failures": sum(r["failures"] for r in rows),
            "samples_ms": total,
        }
        detects = [r["detect_ms"] for r in rows if r["detect_ms"] is not None]
        if len(detects) == len(rows):
            entry["detect"] = _summary(detects)
            entry["after_detect"] = _summary([r["ms"] - r["detect_ms"] for r in rows])
        results[name] = entry
    base = results.get("xdsd-ads", {}).get("median_ms")
    for entry in results.values():
        entry["ratio_to_xdsd_ads"] = entry["median_ms"] / base if base else None
    return {"envoy": _envoy_version(), "peers": results}


def _print(results: dict[str, Any]) -> None:
    print(f"Envoy {results['envoy']}")
    print(
        f"{'peer':<11}{'edits':>6}{'median':>10}{'p90':>10}{'min':>10}{'max':>10}"
        f"{'x ads':>8}{'fails':>7}   detect med / after-detect med, p90"
    )
    for name, r in results["peers"].items():
        line = (
            f"{name:<11}{r['edits']:>6}{r['median_ms']:>8.1f}ms{r['p90_ms']:>8.1f}ms"
            f"{r['min_ms']:>8.1f}ms{r['max_ms']:>8.1f}ms{r['ratio_to_xdsd_ads'] or 0:>8.2f}"
            f"{r['failures']:>7}"
        )
        if "detect" in r:
            line += (
                f"   {r['detect']['median_ms']:.1f}ms / {r['after_detect']['median_ms']:.1f}ms,"
                f" {r['after_detect']['p90_ms']:.1f}ms"
            )
        print(line)
    for name, r in results["peers"].items():
        print(f"  {name}: {r['setup']}")


def _default_sovereign() -> str | None:
    for candidate in (
        os.environ.get("XDSD_BENCH_SOVEREIGN"),
        shutil.which("sovereign", path=str(Path(sys.executable).parent)),
        "/tmp/sovereign-venv/bin/sovereign",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench peers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--edits", type=int, default=12, help="edits per peer (default 12)")
    parser.add_argument("--peers", nargs="+", default=list(PEER_IPS), choices=list(PEER_IPS))
    parser.add_argument(
        "--sovereign",
        default=_default_sovereign(),
        help="the sovereign executable, installed in its own virtualenv "
        "(default: $XDSD_BENCH_SOVEREIGN, or /tmp/sovereign-venv)",
    )
    args = parser.parse_args(argv)
    results = run(args.peers, args.edits, args.sovereign)
    _print(results)
    return results
