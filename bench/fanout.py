"""Fan-out convergence: one file edit → every one of N simulated Envoys has ACKed it.

For each (N clients, S services) a generated mesh (``meshgen``) is served by ``xdsd serve``
pinned to CPU 0; N ``XdsClient``s (ADS, CDS/EDS/LDS/RDS, parse every response, ACK it) run
in load processes pinned to CPU 1, spread over ``--classes`` node classes (a fleet: many
proxies, few distinct configurations). Each edit is written atomically and timed from just
before the write:

- ``detect``: until the daemon logs "config change detected" (the watcher's coalescing
  window, 10-20 ms; reported apart and excluded from the headline),
- ``rebuild``: the "config loaded ... in X ms" figure (reload + translation + snapshots),
- ``first``: until the first response of the edited type is written (min ``sent_at``
  over clients, from the admin ``/debug/clients``),
- ``last``: until the last client has received and ACKed it (client side),
- ``push`` (the headline): ``last`` minus ``detect``.

Kinds of edit: ``route`` (a VirtualService weight: RDS only), ``endpoint`` (an endpoint
address: EDS only), ``add`` (a new service: CDS, with its EDS and the route configuration
of its port). Daemon and load CPU seconds per edit are reported, so a client bottleneck
is visible. Log-line timestamps have millisecond resolution.

``--sidecar-hosts K`` adds a namespace-wide Istio Sidecar limiting every client to K
services (``svc-00000`` and the next K-1, plus the services ``add`` creates, which answer
to ``*.added.local``): each client then receives K services' clusters, endpoints and
virtual hosts instead of all of them, and an edit reaches only the clients that see it.

``--workers today,1,2`` runs every case once per entry, side by side in one run: ``today``
is the daemon of ``--tree`` (a worktree of the baseline), a number is ``xdsd serve
--workers N`` of this checkout (N > 1 with its registrations in a real etcd started for
the run, as workers need; the daemon then has every core, not CPU 0 alone). CPU per edit
is summed over the daemon's processes (supervisor and workers), and also given per
worker (the busiest worker's share).

``--delta`` runs delta ADS clients (``_deltaclient``) with VHDS (``--no-vhds``: without),
each subscribed to the virtual hosts of ``--calls`` services, ``svc-00000`` among them
(the one edited), so a route edit reaches every client as virtual hosts. ``KB/client``
is what each client received per edit (every mode).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._loadgen import ClientSpec, Daemon, LoadGen
from bench.meshgen import write_mesh

#: The types each kind of edit changes, and which one ``first`` is measured on.
KINDS: dict[str, list[str]] = {
    "route": ["rds"],
    "endpoint": ["eds"],
    "add": ["cds", "eds", "rds"],
}
ADMIN_NAMES = {
    "cds": "clusters",
    "eds": "endpoints",
    "lds": "listeners",
    "rds": "routes",
    "vhds": "type.googleapis.com/envoy.config.route.v3.VirtualHost",
}


def delta_kinds(args: argparse.Namespace) -> dict[str, list[str]]:
    """``KINDS`` as ``--delta`` clients see them: with VHDS a route edit reaches them as
    virtual hosts."""
    if not args.delta or args.no_vhds:
        return KINDS
    return KINDS | {"route": ["vhds"], "add": ["cds", "eds"]}


def add_delta_flags(parser: argparse.ArgumentParser) -> None:
    """``--delta``, ``--no-vhds``, ``--calls``: delta clients (``_deltaclient``)."""
    parser.add_argument(
        "--delta",
        action="store_true",
        help="delta ADS clients (with VHDS unless --no-vhds) instead of SotW",
    )
    parser.add_argument("--no-vhds", action="store_true", help="with --delta: no VHDS")
    parser.add_argument(
        "--calls", type=int, default=5, help="with --delta: services each client calls (VHDS)"
    )


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Editor:
    """Makes the i-th edit of a kind; every edit changes content."""

    def __init__(self, config: Path, *, added_hosts: bool = False) -> None:
        self.config = config
        self.added_hosts = added_hosts
        self.rule = config / "rules" / "svc-00000.yaml"
        self.rule_text = self.rule.read_text()
        self.service = config / "services" / "svc-00000.toml"
        self.service_text = self.service.read_text()
        self.added = 0

    def edit(self, kind: str, i: int) -> None:
        if kind == "route":
            w = 80 if i % 2 == 0 else 90
            text = self.rule_text.replace("weight: 90", f"weight: {w}").replace(
                "weight: 10", f"weight: {100 - w}"
            )
            _write(self.rule, text)
        elif kind == "endpoint":
            text = self.service_text.replace(
                'address = "10.0.0.1"', f'address = "10.254.0.{i % 2 + 1}"', 1
            )
            _write(self.service, text)
        elif kind == "add":
            self.added += 1
            name = f"new-{self.added:05d}"
            text = (
                f'kind = "Service"\nname = "{name}"\n\n[[ports]]\nname = "http"\n'
                f'number = 8000\nprotocol = "HTTP"\ntargetPort = 7000\n\n[[endpoints]]\n'
                f'address = "10.250.{self.added // 250}.{self.added % 250 + 1}"\n'
            )
            if self.added_hosts:  # before the first [[table]]: a top-level key
                extra = f'\nhosts = ["{name}.added.local"]\n\n[[ports]]'
                text = text.replace("\n\n[[ports]]", extra, 1)
            _write(self.config / "services" / f"{name}.toml", text)
        else:
            raise ValueError(kind)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p99": _pct(values, 0.99),
        "max": max(values),
    }


def run_case(
    clients: int,
    services: int,
    kinds: list[str],
    edits: int,
    args: argparse.Namespace,
    workers: str = "",
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xdsd-fanout-") as tmp:
        root = Path(tmp)
        config = write_mesh(root, services)
        if args.sidecar_hosts:
            write_sidecar(config, args.sidecar_hosts)
        daemon = _daemon(config, root, args, workers)
        load: LoadGen | None = None
        try:
            spec = ClientSpec(
                "127.0.0.1",
                daemon.grpc_port,
                classes=min(args.classes, services),
                delta=args.delta,
                vhds=not args.no_vhds,
                calls=args.calls,
                services=services,
            )
            load = LoadGen(clients, spec, procs=args.procs)
            load.go()
            load.wait_synced(timeout=300)
            if workers not in ("", "today", "1"):
                print(f"clients per worker: {spread(daemon.pid, daemon.grpc_port)}", flush=True)
            editor = Editor(config, added_hosts=bool(args.sidecar_hosts))
            spy = None
            if args.pyspy:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "-p",
                        str(daemon.pid),
                        "-o",
                        args.pyspy,
                        "--format",
                        "raw",
                        "-r",
                        "500",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            out: dict[str, Any] = {}
            for kind in kinds:
                samples: list[dict[str, float]] = []
                for i in range(edits):
                    samples.append(_one_edit(daemon, load, editor, kind, i, delta_kinds(args)))
                    time.sleep(args.settle)
                out[kind] = {
                    key: _summary([s[key] for s in samples])
                    for key in samples[0]
                    if not key.endswith("_cpu")
                } | {
                    "daemon_cpu_ms": statistics.median(s["daemon_cpu"] for s in samples),
                    "worker_cpu_ms": statistics.median(s["worker_cpu"] for s in samples),
                    "load_cpu_ms": statistics.median(s["load_cpu"] for s in samples),
                    "samples": samples,
                }
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            return out
        finally:
            if load is not None:
                load.stop()
            daemon.stop()
            if args.keep_log:
                Path(args.keep_log).write_text((root / "xdsd.log").read_text())


def write_sidecar(config: Path, hosts: int) -> None:
    """A Sidecar without selector for namespace ``default``: every client may reach
    ``svc-00000`` .. ``svc-{hosts-1}`` and the services ``add`` creates."""
    names = [f'"./svc-{i:05d}"' for i in range(hosts)] + ['"./*.added.local"']
    (config / "rules" / "sidecar.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\n"
        f"spec:\n  egress:\n  - hosts: [{', '.join(names)}]\n"
    )


def _one_edit(
    daemon: Daemon,
    load: LoadGen,
    editor: Editor,
    kind: str,
    i: int,
    kinds: dict[str, list[str]] = KINDS,
) -> dict[str, float]:
    types = kinds[kind]
    load.arm(types)
    daemon.mark()
    cpu0 = tree_cpu(daemon.pid)
    t0 = time.time()
    editor.edit(kind, i)
    done = load.wait_done()
    cpu1 = tree_cpu(daemon.pid)
    detected, _loaded, rebuild_ms = daemon.events()
    for _ in range(50):  # the log line may land just after the last ACK
        if detected is not None and rebuild_ms is not None:
            break
        time.sleep(0.01)
        detected, _loaded, rebuild_ms = daemon.events()
    if detected is None or rebuild_ms is None:
        raise RuntimeError("no 'config change detected' / 'config loaded' in the daemon log")
    admin_name = ADMIN_NAMES[types[0]]
    sent = [
        c["types"][admin_name]["sent_at"]
        for c in daemon.admin("/debug/clients")
        if c["connected"] and (c["types"].get(admin_name) or {}).get("sent_at")
    ]
    acks = [max(ack for _recv, ack in c.values()) for c in done["clients"]]
    detect = max(0.0, detected - t0)
    last = max(acks) - t0
    return {
        "detect": detect * 1000,
        "rebuild": rebuild_ms,
        "first": (min(sent) - t0) * 1000 if sent else float("nan"),
        "last": last * 1000,
        "push": (last - detect) * 1000,
        "daemon_cpu": (sum(cpu1.values()) - sum(cpu0.values())) * 1000,
        "worker_cpu": max(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1) * 1000,
        "load_cpu": done["cpu"] * 1000,
        "kb_per_client": done.get("bytes", 0) / max(1, len(done["clients"])) / 1024,
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench fanout", description=__doc__)
    parser.add_argument("--clients", default="1,100,1000")
    parser.add_argument("--services", default="10,1000")
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--kinds", default="route,endpoint,add")
    parser.add_argument("--classes", type=int, default=10, help="distinct node classes")
    parser.add_argument("--procs", type=int, default=2, help="load processes")
    parser.add_argument("--settle", type=float, default=0.1, help="pause between edits (s)")
    parser.add_argument("--profile", help="run the daemon under cProfile, writing here")
    parser.add_argument("--pyspy", help="sample the daemon during the edits (py-spy raw)")
    parser.add_argument("--tree", help="serve xdsd from this checkout (a baseline worktree)")
    parser.add_argument("--keep-log", help="copy the daemon log here")
    parser.add_argument(
        "--sidecar-hosts",
        type=int,
        default=0,
        help="limit every client to this many services with an Istio Sidecar (0: none)",
    )
    parser.add_argument(
        "--workers",
        default="",
        help="run each case per entry: today (the --tree daemon) or a worker count, "
        "e.g. today,1,2 (default: the one daemon of --tree or this checkout)",
    )
    add_delta_flags(parser)
    args = parser.parse_args(argv)
    if args.workers:
        return main_workers(args)
    kinds = args.kinds.split(",")
    results: dict[str, Any] = {}
    print(
        f"{'N':>5} {'S':>5} {'edit':<9}"
        f"{'push p50':>9}{'p99':>7}{'max':>7} | {'detect':>6}{'rebuild':>8}{'first':>7}"
        f"{'last p99':>9} | {'cpu xdsd':>8}{'load':>6}  (ms) {'KB/client':>9}"
    )
    for s in (int(x) for x in args.services.split(",")):
        for n in (int(x) for x in args.clients.split(",")):
            case = run_case(n, s, kinds, args.edits, args)
            results[f"N={n},S={s}"] = case
            for kind, r in case.items():
                print(
                    f"{n:>5} {s:>5} {kind:<9}"
                    f"{r['push']['p50']:>9.1f}{r['push']['p99']:>7.1f}{r['push']['max']:>7.1f} | "
                    f"{r['detect']['p50']:>6.1f}{r['rebuild']['p50']:>8.1f}"
                    f"{r['first']['p50']:>7.1f}{r['last']['p99']:>9.1f} | "
                    f"{r['daemon_cpu_ms']:>8.0f}{r['load_cpu_ms']:>6.0f}       "
                    f"{r['kb_per_client']['p50']:>9.2f}",
                    flush=True,
                )
    return results


# -- workers side by side (--workers) ---------------------------------------------------


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of ``pid`` and of each of its children (a
    supervisor's workers; a child that ended is no longer counted), by process id."""
    out: dict[int, float] = {}
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *(int(p) for p in children.read_text().split())] if children.exists() else [pid]
    for p in pids:
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        out[p] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def spread(pid: int, port: int) -> list[int]:
    """How many established connections to ``port`` each child of ``pid`` (each worker)
    holds, from /proc (the kernel's view)."""
    inodes: set[str] = set()
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    counts = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        held = 0
        for fd in Path(f"/proc/{child}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts.append(held)
    return counts


def _daemon(config: Path, root: Path, args: argparse.Namespace, workers: str) -> Daemon:
    """The daemon of one case: ``--tree``'s for ``today`` (and without ``--workers``),
    else this checkout's with ``--workers N`` (N > 1: every core, registrations in
    ``args.etcd_url``'s etcd)."""
    if not workers or workers == "today":
        return Daemon(config, root / "xdsd.log", profile=args.profile, tree=args.tree)
    count = int(workers)
    extra = ["--workers", str(count)]
    cpus = None
    if count > 1:
        settings = root / "xdsd.toml"
        settings.write_text(
            f'[registry.etcd]\nendpoints = ["{args.etcd_url}"]\nprefix = "/fanout-{root.name}"\n'
        )
        extra += ["--settings", str(settings)]
        cpus = set(os.sched_getaffinity(0))
    return Daemon(config, root / "xdsd.log", cpus=cpus, extra=extra)


def main_workers(args: argparse.Namespace) -> dict[str, Any]:
    """``--workers``: each case once per entry, side by side, with CPU per worker."""
    entries = args.workers.split(",")
    if "today" in entries and not args.tree:
        raise SystemExit("--workers today needs --tree (a worktree of the baseline)")
    kinds = args.kinds.split(",")
    results: dict[str, Any] = {}
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{'N':>5} {'S':>5} {'daemon':<8}{'edit':<7}"
        f"{'push p50':>9}{'p99':>7}{'max':>7} | {'rebuild':>7}{'last p99':>9} | "
        f"{'cpu xdsd':>8}{'/worker':>8}{'load':>6}  (ms)"
    )
    with tempfile.TemporaryDirectory(prefix="xdsd-fanout-etcd-") as tmp:
        etcd = None
        if any(e not in ("today", "1") for e in entries):
            from tests.etcd import Etcd, etcd_binary

            binary = etcd_binary()
            if binary is None:
                raise SystemExit("workers > 1 need etcd (Debian: etcd-server)")
            etcd = Etcd(Path(tmp), binary)
            args.etcd_url = etcd.url
        try:
            for s in (int(x) for x in args.services.split(",")):
                for n in (int(x) for x in args.clients.split(",")):
                    for entry in entries:
                        case = run_case(n, s, kinds, args.edits, args, workers=entry)
                        results[f"N={n},S={s},daemon={entry}"] = case
                        for kind, r in case.items():
                            print(
                                f"{n:>5} {s:>5} {entry:<8}{kind:<7}"
                                f"{r['push']['p50']:>9.1f}{r['push']['p99']:>7.1f}"
                                f"{r['push']['max']:>7.1f} | {r['rebuild']['p50']:>7.1f}"
                                f"{r['last']['p99']:>9.1f} | {r['daemon_cpu_ms']:>8.0f}"
                                f"{r['worker_cpu_ms']:>8.0f}{r['load_cpu_ms']:>6.0f}",
                                flush=True,
                            )
        finally:
            if etcd is not None:
                etcd.stop()
    return results
