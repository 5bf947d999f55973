"""Fuzzing PeerAuthentication under mesh mutual TLS: generated documents (modes, port
levels, selectors, namespaces, stray fields and values of the wrong type) load or are
refused with ConfigError (never another exception); a mesh that loads translates into
consistent snapshots, and a translation carried over from the previous mesh's (an edit of
the policies) gives exactly what a cold translation gives — the services' parts are
taken over only when the policies they read are equal (memo checking mode is on)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from tests.translate.test_mesh_mtls import mesh_tls, pki
from tests.translate.test_peer_authentication import API_NODE, CONFIG, WEB_NODE
from xdsd.errors import ConfigError
from xdsd.model import Mesh
from xdsd.model.mesh_config import MeshConfig, MeshTLS, MTLSMode
from xdsd.resources import PUSH_ORDER
from xdsd.sources import load_directory
from xdsd.translate import MeshTranslation

GOOD_MODES = st.sampled_from(["UNSET", "DISABLE", "PERMISSIVE", "STRICT"])
BAD_MODES = st.sampled_from(["strict", "", 3, None])
GOOD_PORTS = st.sampled_from([80, 8080, 9000, 8081])
BAD_PORTS = st.one_of(st.sampled_from(["9000", 0, 70000, "x"]), st.integers())
LABELS = st.dictionaries(st.sampled_from(["app", "version"]), st.sampled_from(["web", "api"]))
BAD_LABELS = st.dictionaries(st.sampled_from(["app"]), st.sampled_from([1, True]), min_size=1)
ODD = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))


def sometimes_bad(
    draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]
) -> Any:
    """Mostly a valid value, one time in eight a hostile one."""
    return draw(bad if draw(st.integers(0, 7)) == 0 else good)


@st.composite
def spec(draw: st.DrawFn) -> Any:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        labels = sometimes_bad(draw, LABELS, st.one_of(BAD_LABELS, ODD))
        out["selector"] = {"matchLabels": labels} if isinstance(labels, dict) else labels
    if draw(st.booleans()):
        out["mtls"] = sometimes_bad(
            draw,
            st.fixed_dictionaries({"mode": GOOD_MODES}),
            st.one_of(ODD, st.fixed_dictionaries({"mode": BAD_MODES})),
        )
    if draw(st.booleans()) and "selector" in out:
        out["portLevelMtls"] = {
            sometimes_bad(draw, GOOD_PORTS, BAD_PORTS): {
                "mode": sometimes_bad(draw, GOOD_MODES, BAD_MODES)
            }
            for _ in range(draw(st.integers(1, 3)))
        }
    if draw(st.integers(0, 15)) == 0:
        out[draw(st.sampled_from(["mtl", "targetRef", "selectors", "portLevelMtls"]))] = draw(ODD)
    return out


@st.composite
def policies(draw: st.DrawFn) -> str:
    """Up to three PeerAuthentications, mostly one per level and namespace (two at one
    level are refused, and would hide everything else)."""
    docs = []
    levels: set[tuple[str, bool]] = set()
    for i in range(draw(st.integers(0, 3))):
        namespace = draw(st.sampled_from(["default", "default", "istio-system", "other"]))
        body = draw(spec())
        level = (namespace, "selector" in body)
        if level in levels and draw(st.integers(0, 7)):
            continue
        levels.add(level)
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": f"p{i}", "namespace": namespace},
                "spec": body,
            }
        )
    return "---\n" + yaml.safe_dump_all(docs) if docs else ""


def load(root: Path, extra: str, tls: MeshTLS) -> Mesh | None:
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "mesh.yaml").write_text(CONFIG + extra)
    try:
        return load_directory(str(root / "config"), mesh_tls=tls).mesh
    except ConfigError:
        return None


def digests(translation: MeshTranslation) -> list[Any]:
    out = []
    for node in (WEB_NODE, API_NODE):
        snapshot = translation.snapshot_for(node)
        everything = [r for t in PUSH_ORDER for r in snapshot.get(t).values()]
        type(snapshot).build(everything)  # consistent
        out.append(sorted((r.type_url, r.name, r.digest) for r in everything))
    return out


@fuzz_settings()
@given(policies(), policies(), st.sampled_from([MTLSMode.PERMISSIVE, MTLSMode.STRICT]))
def test_policies_load_or_are_refused_and_edits_translate_as_cold(
    first: str, second: str, mode: MTLSMode
) -> None:
    with deadline("peer_authentication.edits"), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki(root)
        tls = mesh_tls(root, mode)
        config = MeshConfig(mtls=tls)
        before = load(root, first, tls)
        after = load(root, second, tls)
        previous = MeshTranslation(before, mesh_config=config) if before is not None else None
        if previous is not None:
            digests(previous)
        if after is None:
            return
        carried = MeshTranslation(after, mesh_config=config, previous=previous)
        assert digests(carried) == digests(MeshTranslation(after, mesh_config=config))
