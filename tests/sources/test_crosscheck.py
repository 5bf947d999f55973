"""Incremental cross-checks give what one pass over the whole directory gives.

After every step of seeded random sequences of edits (services, ServiceEntries,
WorkloadEntries, DestinationRules, VirtualServices and raw resources written, broken,
deleted and renamed across files, so that duplicates, host owners, selected workloads, rule
targets, subsets, ports and overlaps come and go), a
``DirectoryLoader`` that saw every step must give what ``reference_load`` (the one-pass
implementation) gives: the same mesh, the same objects' origins and indexes, the same
errors and warnings, in the same order.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from tests.sources.crosscheck_reference import reference_load
from xdsd.errors import ConfigError, Problem, Severity
from xdsd.model import Mesh
from xdsd.sources import DirectoryLoader, LoadResult

Outcome = tuple[object, ...]

#: File names the sequences write to, in walk order and out of it.
SLOTS = [
    "a.yaml",
    "b.yaml",
    "m.yaml",
    "z.yaml",
    "sub/c.yaml",
    "sub/d.yaml",
    "sub/deep/e.yaml",
    "zz/f.yaml",
    "envoy/r1.yaml",
    "envoy/r2.yaml",
]
NAMES = ["a", "b", "c"]
#: What each kind of cross-check problem says (the first match names a problem's kind).
KINDS = (
    "duplicate raw",
    "duplicate",
    "already a name of",
    "already has DestinationRule",
    "rule ignored",
    "host is ignored",
    "no service named",
    "no service name matches",
    "has no port",
    "is required",
    "is not defined",
    "' is already routed",
    "already routed",
    "is not an IP address",
    "HTTP-only",
    "one rule per issuer",
    "is also pinned by",
)
ISTIO = "networking.istio.io/v1"
#: Hosts of ServiceEntries: their own, shared with services, and a service's full name.
ENTRY_HOSTS = ["ext.example", "shared.example", "a.default.svc.cluster.local", "other.example"]


def service(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    hosts = rng.choice(
        [
            "",
            "hosts: [shared.example]\n",
            "hosts: [other.example, shared.example]\n",
            f"hosts: [{rng.choice(NAMES)}.default.svc.cluster.local]\n",
        ]
    )
    ports = rng.choice(
        [
            "[{number: 80, protocol: HTTP}]",
            "[{number: 81, protocol: HTTP}]",
            "[{number: 80, protocol: HTTP}, {number: 81, protocol: HTTP}]",
            "[{number: 80, protocol: HTTP}, {number: 3306, protocol: TCP}]",
            "[{number: 8443, protocol: TLS}]",
        ]
    )
    version = rng.choice(["v1", "v2"])
    address = rng.choice(
        ["", "", "address: 10.1.1.1\n", "address: 10.1.1.1\n", "address: fd00::1\n"]
    )
    return (
        f"kind: Service\nname: {name}\n{hosts}{address}ports: {ports}\n"
        f"endpoints: [{{address: 10.0.0.{rng.randint(1, 9)}, labels: {{version: {version}}}}}]\n"
    )


def service_entry(rng: random.Random) -> str:
    hosts = rng.sample(ENTRY_HOSTS, rng.randint(1, 2))
    namespace = rng.choice(["", "", "namespace: other\n"])
    resolution = rng.choice(["STATIC", "DNS"])
    addresses = rng.choice(
        ["", "", "addresses: [10.1.1.1]\n", "addresses: [10.1.1.0/24, fd00::1/128]\n"]
    )
    ports = rng.choice(
        [
            "[{number: 80, name: http, protocol: HTTP}]",
            "[{number: 80, name: http, protocol: HTTP, targetPort: 8080},"
            " {number: 81, name: h2, protocol: HTTP}]",
            "[{number: 3306, name: tcp, protocol: TCP}]",
        ]
    )
    if rng.random() < 0.5:
        selected = f"workloadSelector: {{labels: {{app: {rng.choice(['x', 'y'])}}}}}\n"
    elif resolution == "STATIC":
        selected = f"endpoints: [{{address: 10.0.2.{rng.randint(1, 9)}, ports: {{http: 9000}}}}]\n"
    else:
        selected = rng.choice(["", "endpoints: [{address: ext.example.net}]\n"])
    return (
        f"apiVersion: {ISTIO}\nkind: ServiceEntry\nname: e{rng.randint(1, 3)}\n{namespace}hosts: [{', '.join(hosts)}]\n"
        f"{addresses}ports: {ports}\nresolution: {resolution}\n{selected}"
    )


def workload_entry(rng: random.Random) -> str:
    namespace = rng.choice(["", "", "namespace: other\n"])
    address = rng.choice(["10.0.3.1", "10.0.3.2", "vm.example.net"])
    labels = rng.choice(["{app: x}", "{app: y}", "{app: x, version: v1}"])
    port = rng.choice(["", "ports: {http: 7000}\n"])
    return (
        f"apiVersion: {ISTIO}\nkind: WorkloadEntry\nname: w{rng.randint(1, 3)}\n{namespace}"
        f"address: {address}\nlabels: {labels}\n{port}"
    )


def authorization_policy(rng: random.Random) -> str:
    """A policy in the default, another or the root namespace, with or without a
    selector (of services' or WorkloadEntries' labels), often with HTTP-only fields."""
    namespace = rng.choice(["default", "default", "other", "istio-system"])
    selector = rng.choice(
        [
            "",
            "",
            "  selector: {matchLabels: {version: v1}}\n",
            "  selector: {matchLabels: {app: x}}\n",
        ]
    )
    action = rng.choice(["ALLOW", "DENY", "AUDIT"])
    rule = rng.choice(
        [
            "  - {}\n",
            "  - to: [{operation: {paths: [/a]}}]\n",
            "  - to: [{operation: {ports: ['3306'], methods: [GET]}}]\n",
            "  - from: [{source: {requestPrincipals: ['*']}}]\n"
            "    when: [{key: 'request.headers[x]', values: [y]}]\n",
        ]
    )
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: p{rng.randint(1, 2)}, namespace: {namespace}}}\n"
        f"spec:\n{selector}  action: {action}\n  rules:\n{rule}"
    )


def request_authentication(rng: random.Random) -> str:
    """A policy accepting one or two of a few issuers, in the default, another or the root
    namespace, with or without a selector: issuers meet on the workloads of services."""
    namespace = rng.choice(["default", "default", "other", "istio-system"])
    selector = rng.choice(
        ["", "  selector: {matchLabels: {version: v1}}\n", "  selector: {matchLabels: {app: x}}\n"]
    )
    issuers = rng.sample(["iss-a", "iss-b", "iss-c"], rng.randint(1, 2))
    rules = "".join(f"  - {{issuer: {i}, jwksUri: 'http://keys.test/{i}'}}\n" for i in issuers)
    return (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata: {{name: j{rng.randint(1, 3)}, namespace: {namespace}}}\n"
        f"spec:\n{selector}  jwtRules:\n{rules}"
    )


def destination_rule(rng: random.Random) -> str:
    subsets = rng.choice(
        [
            "[]",
            "[{name: v1, labels: {version: v1}}]",
            "[{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]",
        ]
    )
    host = rng.choice(
        [*NAMES, "shared.example", "ghost", "b.default.svc.cluster.local", "ext.example"]
    )
    namespace = rng.choice(["", "", "namespace: other\n"])
    return (
        f"kind: DestinationRule\nname: r{rng.randint(1, 3)}\n{namespace}host: {host}\n"
        f"subsets: {subsets}\n"
    )


def virtual_service(rng: random.Random) -> str:
    hosts = rng.sample(
        [*NAMES, "shared.example", "*.example", "ghost", "ext.example"], rng.randint(1, 2)
    )
    if rng.random() < 0.3:  # wildcards: a service's namespace, or matching nothing
        hosts = [rng.choice(["*.default.svc.cluster.local", "*.none.example"])]
    gateways = rng.choice(["", "", "gateways: [gw]\n", "gateways: [mesh, gw]\n"])
    routes = ""
    count = rng.randint(1, 2)
    for _ in range(count):
        host = rng.choice([*NAMES, "shared.example", "ghost", "ext.example"])
        subset = rng.choice(["", ", subset: v1", ", subset: v2"])
        port = rng.choice(["", "", ", port: {number: 80}", ", port: {number: 81}"])
        weight = ", weight: 50" if count > 1 else ""
        routes += f"  - {{destination: {{host: {host}{subset}{port}}}{weight}}}\n"
    return (
        f"kind: VirtualService\nname: v{rng.randint(1, 3)}\nhosts: {json.dumps(hosts)}\n"
        f"{gateways}http:\n- route:\n{routes}"
    )


def raw_cluster(rng: random.Random, name: str) -> str:
    return (
        "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n"
        f"name: {name}\nconnect_timeout: {rng.randint(1, 3)}s\n"
    )


def tame(rng: random.Random, root: Path, slot: str) -> str:
    """Mostly valid contents: the slot's own service (with a DestinationRule and maybe a
    VirtualService routing to services of files that exist), now and then a conflict."""
    own = f"s{SLOTS.index(slot)}"
    existing = [
        f"s{i}"
        for i, s in enumerate(SLOTS)
        if (root / s).exists() and s != slot and not s.startswith("envoy/")
    ]
    conflict = rng.random() < 0.08
    name = rng.choice([*existing, own]) if conflict else own
    docs = [
        f"kind: Service\nname: {name}\n"
        + ("hosts: [shared.example]\n" if conflict else "")
        + "ports: [{number: 80, protocol: HTTP}]\n"
        + f"endpoints: [{{address: 10.0.1.{rng.randint(1, 9)}, labels: {{version: v1}}}}]\n",
        f"kind: DestinationRule\nname: r-{own}\nhost: {rng.choice([*existing, own]) if conflict else own}\n"
        + ("subsets: []\n" if conflict else "subsets: [{name: v1, labels: {version: v1}}]\n"),
    ]
    if rng.random() < 0.4:
        docs.append(
            f"apiVersion: {ISTIO}\nkind: ServiceEntry\nname: e-{own}\nhosts: [{own}.example]\n"
            "ports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\n"
            f"workloadSelector: {{labels: {{app: {own}}}}}\n"
        )
    if rng.random() < 0.5:
        app = rng.choice([*existing, own])
        address = "vm.example.net" if conflict else f"10.0.4.{rng.randint(1, 9)}"
        docs.append(
            f"apiVersion: {ISTIO}\nkind: WorkloadEntry\nname: w-{own}\naddress: {address}\n"
            f"labels: {{app: {app}}}\n"
        )
    if rng.random() < 0.3:
        docs.append(
            f"kind: Service\nname: t-{own}\nports: [{{number: 3306, protocol: TCP}}]\n"
            + (f"address: 10.1.2.{rng.randint(1, 3)}\n" if rng.random() < 0.3 else "")
            + f"endpoints: [{{address: 10.0.5.{rng.randint(1, 9)}, labels: {{version: v1}}}}]\n"
        )
    if rng.random() < 0.3:
        docs.append(authorization_policy(rng).replace("name: p", f"name: p-{own}-"))
    if rng.random() < 0.15:
        docs.append(request_authentication(rng).replace("name: j", f"name: j-{own}-"))
    if rng.random() < 0.6:
        target = rng.choice([*existing, own]) if rng.random() < 0.5 else own
        host = rng.choice([*existing, "shared.example"]) if conflict and existing else own
        docs.append(
            f"kind: VirtualService\nname: v-{own}\nhosts: [{host}]\nhttp:\n- route:\n"
            f"  - {{destination: {{host: {target}, subset: v1}}}}\n"
        )
    return "---\n".join(docs)


def contents(rng: random.Random, root: Path, slot: str, wild: bool) -> str:
    if slot.startswith("envoy/"):
        names = ["raw-1", "raw-2"] if wild or rng.random() < 0.1 else [f"raw-{slot}"]
        docs = [
            raw_cluster(rng, rng.choice(names)) for _ in range(rng.randint(1, 2 if wild else 1))
        ]
    elif not wild:
        return tame(rng, root, slot)
    else:
        makers = [
            service,
            service,
            destination_rule,
            virtual_service,
            service_entry,
            workload_entry,
            workload_entry,
            authorization_policy,
            request_authentication,
        ]
        docs = [rng.choice(makers)(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < (0.05 if wild else 0.02):
        docs.append("kind: Service\nname: broken\nports: oops\n")
    return "---\n".join(docs)


def step(rng: random.Random, root: Path, wild: bool) -> set[str] | None:
    """One random change under ``root``; the paths a watcher would report (None: a
    forced reload)."""
    name = rng.choice(SLOTS)
    slot = root / name
    action = rng.random()
    if action < 0.6 or not slot.exists():
        slot.parent.mkdir(parents=True, exist_ok=True)
        slot.write_text(contents(rng, root, name, wild))
        return {str(slot)}
    if action < 0.75:
        slot.unlink()
        return {str(slot)}
    if action < 0.95:
        raw = name.startswith("envoy/")
        target = root / rng.choice([s for s in SLOTS if s.startswith("envoy/") == raw])
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(slot, target)
        return {str(slot), str(target)}
    slot.write_text(contents(rng, root, name, wild))
    return None


def origins(mesh: Mesh) -> list[object]:
    everything = (
        *mesh.services,
        *mesh.destination_rules,
        *mesh.virtual_services,
        *mesh.service_entries,
        *mesh.workload_entries,
        *mesh.authorization_policies,
        *mesh.request_authentications,
    )
    return [(r.key, r.origin) for r in everything] + [r.origin for r in mesh.raw_resources]


def indexes(mesh: Mesh) -> tuple[object, ...]:
    hosts = {h: (s.key, s.origin) for h, s in mesh._hosts.items()}
    rules = {k: (r.key, r.origin) for k, r in mesh._rules.items()}
    return hosts, rules


def expected(root: Path) -> Outcome:
    mesh, problems, files = reference_load(str(root))
    errors = [str(p) for p in problems if p.severity is Severity.ERROR]
    warnings = [str(p) for p in problems if p.severity is Severity.WARNING]
    if errors:
        return ("refused", errors, warnings)
    return ("loaded", mesh, origins(mesh), indexes(mesh), warnings, files)


def outcome(loader: DirectoryLoader, changed: set[str] | None) -> Outcome:
    try:
        result: LoadResult = loader.load(changed)
    except ConfigError as e:
        return ("refused", [str(p) for p in e.problems], [str(p) for p in e.warnings])
    mesh = result.mesh
    return (
        "loaded",
        mesh,
        origins(mesh),
        indexes(mesh),
        [str(p) for p in result.warnings],
        result.files,
    )


@pytest.mark.parametrize("seed", range(16))
def test_random_edit_sequences_check_as_one_pass_would(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    wild = seed % 2 == 0  # wild: errors most of the time; tame: loads most of the time
    root = tmp_path / "config"
    root.mkdir()
    loader = DirectoryLoader(str(root))
    loaded = 0
    for i in range(80):
        changed = step(rng, root, wild)
        got = outcome(loader, changed)
        assert got == expected(root), f"seed {seed}, step {i}, changed {changed}"
        loaded += got[0] == "loaded"
    assert wild or loaded >= 8


def test_the_sequences_reach_every_cross_check(tmp_path: Path) -> None:
    """Every kind of cross-check problem appears in some step of the random sequences
    (so the comparison above covers each of them)."""
    messages: set[str] = set()
    for seed in range(16):
        rng = random.Random(seed)
        root = tmp_path / str(seed)
        root.mkdir()
        for _ in range(80):
            step(rng, root, seed % 2 == 0)
            _, problems, _ = reference_load(str(root))
            messages |= {_kind(p) for p in problems}
    assert set(KINDS) <= messages


def _kind(problem: Problem) -> str:
    for kind in KINDS:
        if kind in problem.message:
            return kind
    return "other"
