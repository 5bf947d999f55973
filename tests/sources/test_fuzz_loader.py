"""Fuzzing the loader: mutated documents of every kind, as YAML, TOML and JSON.

Seeds are the documents of the example config (``config/``), of the Istio conformance
inputs (every kind xdsd reads), a RequestAuthentication and a raw Envoy resource. A
Hypothesis example takes a seed, mutates its structure (values of another type, keys
deleted or duplicated, deep nesting, huge integers, odd unicode, another kind),
serializes it to one of the three formats and may then mutate the bytes (flips,
truncation, insertions); it writes the result into a copy of the example config, as a
new file or over an existing one.

Properties, for every edit of a sequence and for the restoring of the good files:
``DirectoryLoader.load`` returns a LoadResult or raises ConfigError (never another
exception, never a hang); the incremental load equals a cold load of the same files
(``test_incremental``'s comparison); once the good files are back the loader gives what
it gave before (a refused load left its state intact); and a loaded mesh translates, for
sidecars, a gateway and proxyless gRPC, into a consistent snapshot or a TranslationError.

The in-suite generators stay within the loader's parser limits (nesting depth, integer
length, alias expansion, document count, file size; ``sources/limits.py``), where the
mutations are varied; inputs beyond them are ``test_inputs_beyond_the_parser_limits`` and
``test_deep_toml_is_refused_not_a_crash``: refused as errors, the loader intact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import toml_rs
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.paths import CONFORMANCE, EXAMPLE_CONFIG
from tests.sources.test_incremental import cold, same, warm
from tests.sources.test_networking_kinds import LUA
from xdsd.errors import ConfigError, TranslationError
from xdsd.model import Mesh
from xdsd.resources import PUSH_ORDER, Resource
from xdsd.sources import DirectoryLoader, LoadResult
from xdsd.translate import ClientKind, MeshTranslation, NodeClass, Role
from xdsd.translate.node import ConfigSourceKind

#: The kinds xdsd reads (the Istio networking kinds and its own Service).
KINDS = (
    "Service",
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "WorkloadEntry",
    "Gateway",
    "Sidecar",
    "EnvoyFilter",
    "PeerAuthentication",
    "RequestAuthentication",
    # the Gateway API's (issue 21), and the Secret its listeners name
    "GatewayClass",
    "HTTPRoute",
    "GRPCRoute",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
    "ReferenceGrant",
    "BackendTLSPolicy",
    "Secret",
    "Namespace",
)
#: A Namespace (its labels, for listeners' allowedRoutes selectors).
NAMESPACE = (
    "apiVersion: v1\nkind: Namespace\n"
    "metadata: {name: apps, labels: {shared-gateway: 'true', example.com/tier: gold}}\n"
)
#: A UDP listener, its UDPRoute and a Service's UDP port (issue 21).
UDP_GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: udp-edge}
spec:
  gatewayClassName: xdsd
  listeners: [{name: dns, port: 5353, protocol: UDP}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {name: dns}
spec:
  parentRefs: [{name: udp-edge, sectionName: dns}]
  rules: [{backendRefs: [{name: resolver, port: 53}]}]
---
apiVersion: xdsd.io/v1
kind: Service
metadata: {name: resolver}
spec:
  ports: [{number: 53, protocol: UDP}, {number: 8053, protocol: TCP}]
  endpoints: [{address: 10.0.0.53}]
"""
#: A Secret of type kubernetes.io/tls, in both forms (fake PEM: parsed, never served).
TLS_SECRET = (
    "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: default}\n"
    "type: kubernetes.io/tls\n"
    "data: {tls.crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==}\n"
    'stringData: {tls.key: "-----BEGIN PRIVATE KEY-----\\nx\\n"}\n'
)
WORKLOAD_ENTRY = (
    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm1}\n"
    "spec: {address: 10.0.0.5, labels: {app: ratings}, ports: {http: 9080}}\n"
)
#: A PeerAuthentication that loads without mesh mutual TLS (the fuzzed loads have none),
#: with every field (Istio's own files seed the PERMISSIVE and STRICT ones).
PEER_AUTHENTICATION = (
    "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
    "metadata: {name: ratings, namespace: default}\n"
    "spec: {selector: {matchLabels: {app: ratings}}, mtls: {mode: DISABLE},\n"
    "  portLevelMtls: {9080: {mode: UNSET}, 9443: {mode: DISABLE}}}\n"
)
#: Every field of a RequestAuthentication (its jwks a real JWKS, its jwksUri by address
#: and by name), for the workloads of the default namespace.
REQUEST_AUTHENTICATION = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules:
  - issuer: https://a.test
    audiences: [productpage]
    jwks: '{"keys": [{"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ"}]}'
    fromHeaders: [{name: x-jwt, prefix: "Token "}]
    fromParams: [tok]
    fromCookies: [session]
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    forwardOriginalToken: true
  - issuer: https://b.test
    jwksUri: http://127.0.0.1:9999/keys
    timeout: 2s
  - issuer: https://c.test
    jwksUri: https://login.c.test/keys
"""
#: GAMMA routes (issue 21): an HTTPRoute and a GRPCRoute whose parent is a Service, by
#: port and by port name, with a header match, weights and a filter.
GAMMA_ROUTES = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-canary, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - matches:
    - headers: [{name: end-user, value: jason}]
    backendRefs: [{name: reviews, port: 9080}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-canary, value: "1"}]}
    backendRefs:
    - {name: reviews, port: 9080, weight: 90}
    - {name: ratings, port: 9080, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: ratings-grpc, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: ratings, sectionName: http}
  rules:
  - matches: [{method: {service: ratings.Ratings, method: Get}}]
    backendRefs: [{name: ratings, port: 9080}]
"""
#: Virtual addresses files pin: a Service's ``address``, a ServiceEntry's ``addresses``.
PINNED = """\
kind: Service
name: pinned
address: 127.240.3.4
ports: [{number: 5432, protocol: TCP}, {number: 80, protocol: HTTP}]
endpoints: [{address: 10.0.9.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pinned-entry}
spec:
  hosts: [db.pinned.example]
  addresses: [10.77.0.0/24, 10.77.1.1, "fd00::77/128"]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: DNS
"""
RAW_CLUSTER = {
    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "name": "raw-backend",
    "connect_timeout": "1s",
    "type": "STATIC",
    "load_assignment": {
        "cluster_name": "raw-backend",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "10.1.0.1", "port_value": 8080}
                            }
                        }
                    }
                ]
            }
        ],
    },
}


def _documents(path: Path) -> list[Any]:
    text = path.read_text()
    if path.suffix == ".toml":
        return [tomllib.loads(text)]
    if path.suffix == ".json":
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _seeds() -> list[tuple[bool, Any]]:
    """(is a raw Envoy resource, document) of every seed, in a fixed order."""
    files = sorted(EXAMPLE_CONFIG.rglob("*.*"))
    for sub in ("bookinfo", "testdata"):
        files += sorted((CONFORMANCE / "istio" / sub).glob("*.yaml"))
    files += sorted((CONFORMANCE / "gateway-api" / "examples" / "standard").rglob("*.yaml"))
    docs: list[tuple[bool, Any]] = []
    for f in files:
        docs += [
            (False, d) for d in _documents(f) if isinstance(d, dict) and d.get("kind") in KINDS
        ]
    docs += [
        (False, d)
        for d in yaml.safe_load_all(
            WORKLOAD_ENTRY + "---\n" + LUA + "---\n" + REQUEST_AUTHENTICATION + "---\n" + PINNED
        )
    ]
    docs += [(False, d) for d in yaml.safe_load_all(PEER_AUTHENTICATION)]
    docs += [(False, d) for d in yaml.safe_load_all(TLS_SECRET)]
    docs += [(False, d) for d in yaml.safe_load_all(NAMESPACE)]
    docs += [(False, d) for d in yaml.safe_load_all(UDP_GATEWAY)]
    docs += [(False, d) for d in yaml.safe_load_all(GAMMA_ROUTES)]
    docs.append((True, RAW_CLUSTER))
    return docs


SEEDS = _seeds()
GOOD_FILES = sorted(str(p.relative_to(EXAMPLE_CONFIG)) for p in EXAMPLE_CONFIG.rglob("*.*"))

# -- structural mutations ----------------------------------------------------------------

ODD_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\u202e",
            "\ufeff",
            "e\u0301",
            "\U0001f600",
            "ǅ",
            "\u2028",
            "a\tb",
            "10.0.0.1",
            "10.0.0.0/24",
            "::1",
            "*",
            "-",
            "~",
            "null",
            "0x1F",
            "1e400",
            "*.",
            "..",
            "a" * 300,
        ]
    ),
)
#: Integers beyond every 64-bit field, within Python's 4,300-digit string limit.
HUGE_INTS = st.one_of(
    st.integers(),
    st.sampled_from([-1, 0, 2**31, 2**32 + 80, 2**63, -(2**63) - 1, 2**64, 10**40, 10**300]),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), HUGE_INTS, st.floats(allow_nan=True, allow_infinity=True), ODD_TEXT
)
#: Within the nesting-depth limit (`max_nesting_depth`, 100) where mutations are varied.
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(ODD_TEXT, inner, max_size=3)
    ),
    max_leaves=12,
)


def _nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"x": leaf}
    return leaf


def _containers(value: Any, trail: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every dict and list inside ``value`` (``value`` itself first)."""
    if isinstance(value, dict | list):
        yield trail
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            yield from _containers(child, (*trail, key))


def _at(value: Any, trail: tuple[Any, ...]) -> Any:
    for key in trail:
        value = value[key]
    return value


@st.composite
def mutate(draw: st.DrawFn, doc: Any) -> Any:
    """One structural mutation of (a deep copy of) ``doc``."""
    doc = json.loads(json.dumps(doc))  # a deep copy (every seed is JSON-compatible)
    places = list(_containers(doc))
    target = _at(doc, draw(st.sampled_from(places)))
    keys = list(target) if isinstance(target, dict) else list(range(len(target)))
    op = draw(st.sampled_from(["set", "delete", "duplicate", "retype", "nest", "kind", "add"]))
    if op == "kind" and isinstance(doc, dict):
        doc["kind"] = draw(st.one_of(st.sampled_from(KINDS), ODD_TEXT, VALUES))
        return doc
    if op == "add" or not keys:
        if isinstance(target, dict):
            target[draw(ODD_TEXT)] = draw(VALUES)
        else:
            target.append(draw(VALUES))
        return doc
    key = draw(st.sampled_from(keys))
    if op == "set":
        target[key] = draw(VALUES)
    elif op == "delete":
        del target[key]
    elif op == "duplicate":  # the same key under a near name, or a list item twice
        if isinstance(target, dict):
            near = draw(st.sampled_from([str(key).upper(), f"{key} ", f"{key}s", f"_{key}"]))
            target[near] = target[key]
        else:
            target.insert(key, target[key])
    elif op == "retype":
        value = target[key]
        target[key] = draw(
            st.sampled_from(
                [
                    [value],
                    {"value": value},
                    str(value),
                    len(str(value)),
                    None,
                    not value,
                ]
            )
        )
    else:  # "nest": deep, but within the nesting-depth limit
        target[key] = _nested(draw(st.integers(1, 40)), target[key])
    return doc


def serialize(doc: Any, fmt: str) -> bytes:
    """``doc`` as a file of format ``fmt``; TOML cannot hold every value (null, a top-level
    list), and then the document is written as YAML instead."""
    if fmt == "toml":
        try:
            return toml_rs.dumps(doc).encode()
        except (toml_rs.TOMLEncodeError, TypeError, ValueError):
            fmt = "yaml"
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=False).encode()
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()


@st.composite
def corrupt(draw: st.DrawFn, data: bytes) -> bytes:
    """Byte-level mutations of ``data``: flips, truncation, inserted bytes."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from(
                        [
                            b"\n",
                            b":",
                            b"- ",
                            b"{",
                            b"[",
                            b'"',
                            b"'",
                            b"&a ",
                            b"*a",
                            b"!!python/object:os.system ",
                            b"\xff",
                            b"\x00",
                            b"\t",
                            b"---\n",
                            b"[[x]]\n",
                            b"\r",
                        ]
                    ),
                )
            )
        elif buf:
            del buf[at : at + draw(st.integers(1, 16))]
    return bytes(buf)


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, bytes]:
    """One edit: (path relative to the config directory, new bytes)."""
    raw, seed = draw(st.sampled_from(SEEDS))
    doc = seed
    for _ in range(draw(st.integers(0, 3))):
        doc = draw(mutate(doc))
    fmt = draw(st.sampled_from(["json"] if raw else ["yaml", "toml", "json"]))
    data = serialize(doc, fmt)
    if draw(st.booleans()):
        data = draw(corrupt(data))
    if raw:
        return f"envoy/fuzz.{fmt}", data
    where = draw(st.sampled_from([*GOOD_FILES, "services/fuzz", "rules/fuzz", "fuzz"]))
    if where in GOOD_FILES:
        return where, data
    return f"{where}.{fmt}", data


# -- the properties ----------------------------------------------------------------------

NODES = (
    NodeClass("productpage"),
    NodeClass("reviews", labels=(("version", "v2"),), config_source=ConfigSourceKind.DELTA),
    NodeClass("ratings", config_source=ConfigSourceKind.REST),
    NodeClass("details", client=ClientKind.GRPC),
    NodeClass("ingressgateway", role=Role.GATEWAY, labels=(("istio", "ingressgateway"),)),
)


def check_translation(mesh: Mesh) -> None:
    """Every node class gets a consistent snapshot or a TranslationError, and every
    service a virtual address (the default block holds any mesh a fuzzed file makes)."""
    translation = MeshTranslation(mesh)
    allocated = translation.virtual_addresses()
    assert set(allocated.slots) | set(allocated.pinned) == {s.key for s in mesh.services}
    for node in NODES:
        try:
            snapshot = translation.snapshot_for(node)
        except TranslationError:
            continue
        everything: list[Resource] = [r for t in PUSH_ORDER for r in snapshot.get(t).values()]
        type(snapshot).build(everything)  # raises InconsistentSnapshotError if it is not


def run_edits(changes: list[tuple[str, bytes]]) -> None:
    """Apply ``changes`` one by one to a copy of the example config, comparing the
    incremental loader with cold loads; then restore the good files."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "config"
        shutil.copytree(EXAMPLE_CONFIG, root)
        loader = DirectoryLoader(str(root))
        good = loader.load()
        touched: set[str] = set()
        for rel, data in changes:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            touched.add(rel)
            got = warm(loader, {str(path)})
            assert same(got, cold(root)), rel
            if isinstance(got, LoadResult):
                check_translation(got.mesh)
        changed = set()
        for rel in touched:
            path = root / rel
            changed.add(str(path))
            if rel in GOOD_FILES:
                shutil.copyfile(EXAMPLE_CONFIG / rel, path)
            else:
                path.unlink()
        restored = warm(loader, changed)
        assert isinstance(restored, LoadResult), restored
        assert same(restored, good)


def loaded_or_refused(root: str) -> LoadResult | ConfigError:
    """What a cold load gives; any other exception propagates (the property fails)."""
    try:
        return DirectoryLoader(root).load()
    except ConfigError as e:
        return e


@fuzz_settings()
@given(st.lists(edits(), min_size=1, max_size=3))
@example([("services/details.toml", b'kind = "Service"\nname = "details"\nports = 7\n')])
@example([("rules/fuzz.yaml", b"kind: VirtualService\nname: x\nhosts: [details]\nhttp: 3\n")])
def test_mutated_files_load_or_are_refused_and_reloads_match_cold_loads(
    changes: list[tuple[str, bytes]],
) -> None:
    with deadline("loader.edits"):
        run_edits(changes)


@fuzz_settings(0.5)
@given(st.sampled_from(SEEDS), st.sampled_from(["yaml", "toml", "json"]), st.data())
def test_a_corrupted_file_of_every_kind_loads_or_is_refused(
    seed: tuple[bool, Any], fmt: str, data: st.DataObject
) -> None:
    """The seeds unmutated but for their bytes, each alone in an empty directory."""
    raw, doc = seed
    text = data.draw(corrupt(serialize(doc, "json" if raw else fmt)))
    with deadline("loader.bytes"), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("envoy" if raw else "") / f"doc.{'json' if raw else fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
        result = loaded_or_refused(tmp)
        if isinstance(result, LoadResult):
            check_translation(result.mesh)


# -- beyond the limits -------------------------------------------------------------------

BEYOND_LIMITS = {
    # (what the limit bounds, file name, bytes)
    "nesting depth (JSON, 100k levels: RecursionError)": ("deep.json", b"[" * 100_000),
    "nesting depth (YAML, 100k levels)": ("deep.yaml", b"[" * 100_000),
    "integer length (JSON, 5,000 digits: ValueError)": (
        "big.json",
        b'{"kind": "Service", "name": "big", "ports": [{"number": ' + b"9" * 5000 + b"}]}",
    ),
    "integer length (YAML, 5,000 digits: ValueError)": (
        "big.yaml",
        b"kind: Service\nname: big\nports: [{number: " + b"9" * 5000 + b"}]\n",
    ),
}


@pytest.mark.parametrize("case", sorted(BEYOND_LIMITS))
def test_inputs_beyond_the_parser_limits(case: str, tmp_path: Path) -> None:
    name, data = BEYOND_LIMITS[case]
    shutil.copytree(EXAMPLE_CONFIG, tmp_path / "config")
    root = tmp_path / "config"
    loader = DirectoryLoader(str(root))
    good = loader.load()
    (root / name).write_bytes(data)
    with deadline("loader.limits"), pytest.raises(ConfigError):
        loader.load({str(root / name)})
    (root / name).unlink()
    assert loader.load({str(root / name)}).mesh == good.mesh


def test_deep_toml_is_refused_not_a_crash(tmp_path: Path) -> None:
    """In a child process: the crash this guards against kills the interpreter."""
    (tmp_path / "deep.toml").write_bytes(b"x = " + b"[" * 8000 + b"]" * 8000 + b"\n")
    run = subprocess.run(
        [str(Path(sys.executable).with_name("xdsd")), "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "deep.toml" in run.stdout + run.stderr


def test_seeds_cover_every_kind_and_load_cleanly() -> None:
    """The fuzzer starts from valid documents of every kind xdsd reads."""
    kinds = {d.get("kind") for raw, d in SEEDS if not raw}
    assert kinds == set(KINDS)
    assert any(raw for raw, _ in SEEDS)
