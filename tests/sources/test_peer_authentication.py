"""PeerAuthentication from files: what loads into the model, and every way a document is
refused (each at the offending field's own line, naming the field), including the
checks across files (two policies at one level) and against ``[mesh.mtls]``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.certs import CertAuthority
from xdsd.errors import ConfigError
from xdsd.model.mesh_config import MeshTLS, MTLSMode
from xdsd.model.security import PeerAuthentication, WorkloadSelector
from xdsd.sources import load_directory

#: Mesh mutual TLS on (its workload files are not read: the config has no Service).
ON = MeshTLS(mode=MTLSMode.PERMISSIVE, certificate="/c/{service}", private_key="/k/{service}")


def peer(spec: str, name: str = "p", namespace: str = "default") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )


def load(
    tmp_path: Path, files: dict[str, str], tls: MeshTLS = ON
) -> tuple[PeerAuthentication, ...]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if tls.enabled:
        ca = tmp_path.parent / "ca.pem"
        if not ca.exists():
            CertAuthority(tmp_path.parent / "pki-peer")
            ca.write_bytes((tmp_path.parent / "pki-peer" / "ca.pem").read_bytes())
        tls = dataclasses.replace(tls, ca=str(ca))
    return load_directory(str(tmp_path), mesh_tls=tls).mesh.peer_authentications


def refused(tmp_path: Path, files: dict[str, str], tls: MeshTLS = ON) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, files, tls)
    return [str(p) for p in caught.value.problems]


def test_every_field_is_read(tmp_path: Path) -> None:
    (policy,) = load(
        tmp_path,
        {
            "p.yaml": peer(
                "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}\n"
                "  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n    9090: {mode: UNSET}\n"
                "    '7070': {mode: DISABLE}\n"
            )
        },
    )
    assert policy.selector == WorkloadSelector((("app", "web"),))
    assert policy.mode is MTLSMode.STRICT
    assert policy.port_modes == (
        (7070, MTLSMode.DISABLE),
        (8080, MTLSMode.PERMISSIVE),
        (9090, None),
    )


def test_unset_and_empty_selector_mean_inherit_and_no_selector(tmp_path: Path) -> None:
    (policy,) = load(
        tmp_path,
        {"p.yaml": peer("  selector: {matchLabels: {}}\n  mtls: {mode: UNSET}\n")},
        MeshTLS(),
    )
    assert policy.selector is None and policy.mode is None
    # DISABLE and UNSET need no certificates; an empty spec is a namespace-wide UNSET.
    (tmp_path / "p.yaml").write_text(peer("  mtls: {mode: DISABLE}\n"))
    assert load(tmp_path, {}, MeshTLS())[0].mode is MTLSMode.DISABLE
    (tmp_path / "p.yaml").write_text(peer("  {}\n"))
    assert load(tmp_path, {}, MeshTLS())[0].mode is None


#: spec → (file:line, field, words) of the refusal. The spec starts at line 5.
BAD: dict[str, tuple[str, list[str]]] = {
    "unknown field": ("  mtl: {mode: STRICT}\n", ["p.yaml:5:", "mtl", "did you mean 'mtls'"]),
    "unknown mtls field": (
        "  mtls:\n    mode: STRICT\n    modes: DISABLE\n",
        ["p.yaml:7:", "mtls.modes", "did you mean 'mode'"],
    ),
    "bad mode": ("  mtls:\n    mode: STRICTER\n", ["p.yaml:6:", "mtls.mode", "STRICT"]),
    "lower-case mode": ("  mtls:\n    mode: strict\n", ["p.yaml:6:", "mtls.mode", "one of"]),
    "mode not a string": ("  mtls: {mode: 1}\n", ["p.yaml:5:", "mtls.mode", "one of"]),
    "mtls not a mapping": ("  mtls: STRICT\n", ["p.yaml:5:", "mtls", "mapping"]),
    "selector typo": (
        "  selector:\n    matchLabel: {app: a}\n",
        ["p.yaml:6:", "selector.matchLabel", "did you mean 'matchLabels'"],
    ),
    "label not a string": (
        "  selector:\n    matchLabels:\n      version: 1\n",
        ["p.yaml:7:", "selector.matchLabels.version", "quote it"],
    ),
    "port zero": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    0: {mode: STRICT}\n",
        ["p.yaml:7:", "portLevelMtls.0", "1-65535"],
    ),
    "port too big": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    70000: {mode: STRICT}\n",
        ["p.yaml:7:", "portLevelMtls.70000", "1-65535"],
    ),
    "port a name": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    http: {mode: STRICT}\n",
        ["p.yaml:7:", "portLevelMtls.http", "port number"],
    ),
    "port twice": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    80: {mode: STRICT}\n"
        "    '80': {mode: DISABLE}\n",
        ["p.yaml:8:", "portLevelMtls.80", "duplicate"],
    ),
    "port without mode": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    80: {}\n",
        ["p.yaml:7:", "portLevelMtls.80.mode", "required"],
    ),
    "port level typo": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    80:\n      mod: STRICT\n",
        ["p.yaml:8:", "portLevelMtls.80.mod", "did you mean 'mode'"],
    ),
    "port level bad mode": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    80:\n      mode: ON\n",
        ["p.yaml:8:", "portLevelMtls.80.mode", "one of"],
    ),
    "port level not a mapping": (
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls: [80]\n",
        ["p.yaml:6:", "portLevelMtls", "mapping"],
    ),
    "port level without selector": (
        "  mtls: {mode: STRICT}\n  portLevelMtls:\n    80: {mode: DISABLE}\n",
        ["p.yaml:6:", "portLevelMtls", "needs a selector"],
    ),
    "targetRef": ("  targetRef: {kind: Service, name: a}\n", ["p.yaml:5:", "targetRef", "unknown"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_documents_are_refused_at_the_fields_line(tmp_path: Path, case: str) -> None:
    spec, words = BAD[case]
    problems = refused(tmp_path, {"p.yaml": peer(spec)})
    assert any(all(w in p for w in words) for p in problems), problems


def test_a_root_namespace_policy_with_a_selector_is_refused(tmp_path: Path) -> None:
    problems = refused(
        tmp_path,
        {
            "p.yaml": peer(
                "  mtls: {mode: STRICT}\n  selector:\n    matchLabels: {app: a}\n",
                namespace="istio-system",
            )
        },
    )
    assert any("p.yaml:6:" in p and "selector" in p and "ignored by Istio" in p for p in problems)


@pytest.mark.parametrize(
    ("namespace", "words"),
    [("istio-system", "mesh-wide"), ("default", "namespace-wide in 'default'")],
)
def test_two_policies_at_one_level_name_both_files(
    tmp_path: Path, namespace: str, words: str
) -> None:
    problems = refused(
        tmp_path,
        {
            "a.yaml": peer("  mtls: {mode: STRICT}\n", "first", namespace),
            "b.yaml": peer("  mtls: {mode: PERMISSIVE}\n", "second", namespace),
        },
    )
    (problem,) = problems
    assert "b.yaml:1:" in problem and words in problem and "a.yaml:1" in problem, problem
    # One per namespace is fine, and a namespace's next to the mesh's.
    (tmp_path / "b.yaml").write_text(peer("  mtls: {mode: PERMISSIVE}\n", "second", "other"))
    assert len(load(tmp_path, {})) == 2


def test_selectors_one_workload_could_match_twice_are_refused(tmp_path: Path) -> None:
    files = {
        "a.yaml": peer("  selector: {matchLabels: {app: a}}\n  mtls: {mode: STRICT}\n", "a"),
        "b.yaml": peer(
            "  mtls: {mode: DISABLE}\n  selector:\n    matchLabels: {version: v1}\n", "b"
        ),
    }
    problems = refused(tmp_path, files)
    assert any("b.yaml:6:" in p and "app=a,version=v1" in p and "a.yaml" in p for p in problems)
    # Exclusive selectors (one label, two values) load.
    (tmp_path / "b.yaml").write_text(
        peer("  mtls: {mode: DISABLE}\n  selector:\n    matchLabels: {app: b}\n", "b")
    )
    assert len(load(tmp_path, {})) == 2


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ("  mtls:\n    mode: STRICT\n", "p.yaml:6: mtls.mode"),
        ("  mtls:\n    mode: PERMISSIVE\n", "p.yaml:6: mtls.mode"),
        (
            "  selector: {matchLabels: {app: a}}\n  mtls: {mode: DISABLE}\n  portLevelMtls:\n"
            "    80:\n      mode: STRICT\n",
            "p.yaml:9: portLevelMtls.80.mode",
        ),
    ],
)
def test_modes_that_need_certificates_are_refused_without_mesh_mtls(
    tmp_path: Path, spec: str, where: str
) -> None:
    problems = refused(tmp_path, {"p.yaml": peer(spec)}, MeshTLS())
    assert any(where in p and "[mesh.mtls]" in p for p in problems), problems


def test_validate_exits_1_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(peer("  mtls:\n    mode: STRICT\n"))
    done = subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "p.yaml:6: mtls.mode:" in done.stderr, done.stderr
