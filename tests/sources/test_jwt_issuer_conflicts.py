"""One issuer accepted by two RequestAuthentications that apply to one workload of the
files is an error when the directory loads (``xdsd validate`` exits 1), at the later
policy's ``issuer`` line; policies that never meet on a workload are fine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sources.test_bad_input import _materialize
from xdsd.cli import main
from xdsd.errors import ConfigError
from xdsd.sources import DirectoryLoader, load_directory

WEB = (
    "kind: Service\nname: web\n"
    "ports: [{number: 80, protocol: HTTP}]\n"
    "endpoints:\n- {address: 10.0.0.1, labels: {app: web, version: v1}}\n"
    "- {address: 10.0.0.2, labels: {app: web, version: v2}}\n"
)


def authn(name: str, namespace: str, selector: str, *issuers: str) -> str:
    rules = "".join(f"  - issuer: {i}\n    jwksUri: http://keys.test/{i}\n" for i in issuers)
    return (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n{selector}  jwtRules:\n{rules}"
    )


def errors(root: Path) -> list[str]:
    try:
        load_directory(str(root))
    except ConfigError as e:
        return [str(p) for p in e.problems]
    return []


V1 = "  selector: {matchLabels: {version: v1}}\n"
V2 = "  selector: {matchLabels: {version: v2}}\n"
APP = "  selector: {matchLabels: {app: web}}\n"


@pytest.mark.parametrize(
    ("first", "second", "refused"),
    [
        (("default", ""), ("default", ""), True),  # the namespace's workloads, twice
        (("istio-system", ""), ("default", APP), True),  # mesh-wide and one service
        (("default", V1), ("default", APP), True),  # meet on the v1 endpoint
        (("default", V1), ("default", V2), False),  # never on one endpoint
        (("default", ""), ("other", ""), False),  # another namespace
        (("istio-system", V1), ("default", V2), False),
    ],
)
def test_an_issuer_twice_on_one_workload_is_refused(
    tmp_path: Path, first: tuple[str, str], second: tuple[str, str], refused: bool
) -> None:
    files = {
        "web.yaml": WEB,
        "a.yaml": authn("a", first[0], first[1], "iss-x", "iss-shared"),
        "b.yaml": authn("b", second[0], second[1], "iss-shared"),
    }
    _materialize(tmp_path, dict(files))
    found = errors(tmp_path)
    if not refused:
        assert found == []
        return
    [problem] = found
    # The policy later by key (namespace, name) is refused at its iss-shared rule.
    if (second[0], "b") > (first[0], "a"):
        later, index, earlier, first_index = "b.yaml", 0, f"{first[0]}/a", 1
    else:
        later, index, earlier, first_index = "a.yaml", 1, f"{second[0]}/b", 0
    line = files[later].splitlines().index("  - issuer: iss-shared") + 1
    assert problem.startswith(f"{tmp_path / later}:{line}: jwtRules[{index}].issuer: ")
    assert f"issuer 'iss-shared' is also accepted by RequestAuthentication {earlier}" in problem
    assert f"(jwtRules[{first_index}], " in problem and "of default/web" in problem
    assert problem.endswith("one rule per issuer")


def test_validate_reports_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _materialize(
        tmp_path,
        {
            "web.yaml": WEB,
            "a.yaml": authn("a", "default", "", "i"),
            "b.yaml": authn("b", "default", "", "i"),
        },
    )
    assert main(["validate", str(tmp_path)]) == 1
    assert "b.yaml:6: jwtRules[0].issuer: issuer 'i' is also accepted" in capsys.readouterr().err


def test_reloads_follow_services_and_policies_as_a_cold_load(tmp_path: Path) -> None:
    root = tmp_path / "config"
    _materialize(root, {"web.yaml": WEB, "a.yaml": authn("a", "default", V1, "i")})
    loader = DirectoryLoader(str(root))
    loader.load(None)
    web, b = root / "web.yaml", root / "b.yaml"
    steps = [
        (b, authn("b", "default", V2, "i"), 0),
        (b, authn("b", "default", APP, "i"), 1),  # they meet on the v1 endpoint
        (b, authn("b", "default", APP, "j"), 0),
        (b, authn("b", "istio-system", "", "i"), 1),
        (web, WEB.replace("version: v1", "version: v3"), 0),
        (web, None, 0),
        (web, WEB, 1),
        (b, None, 0),
    ]
    for i, (path, text, count) in enumerate(steps):
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
        try:
            warm: object = loader.load({str(path)}).mesh
        except ConfigError as e:
            warm = [str(p) for p in e.problems]
        try:
            cold: object = load_directory(str(root)).mesh
        except ConfigError as e:
            cold = [str(p) for p in e.problems]
        assert warm == cold, f"step {i}"
        found = warm if isinstance(warm, list) else []
        assert len([p for p in found if "one rule per issuer" in p]) == count, f"step {i}: {found}"


def test_removing_every_policy_at_once_clears_the_conflict(tmp_path: Path) -> None:
    """With no RequestAuthentication left, no service keeps a conflict (the check skips
    its per-service lookups then), as a cold load finds."""
    root = tmp_path / "config"
    _materialize(
        root,
        {
            "web.yaml": WEB,
            "a.yaml": authn("a", "default", V1, "i"),
            "b.yaml": authn("b", "default", APP, "i"),
        },
    )
    loader = DirectoryLoader(str(root))
    with pytest.raises(ConfigError) as info:
        loader.load(None)
    assert any("one rule per issuer" in str(p) for p in info.value.problems)
    (root / "a.yaml").unlink()
    (root / "b.yaml").unlink()
    warm = loader.load({str(root / "a.yaml"), str(root / "b.yaml")}).mesh
    assert warm == load_directory(str(root)).mesh
