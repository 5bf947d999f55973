"""``DirectoryLoader``: reloads read only what changed, and give what a cold load gives."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG
from tests.sources.crosscheck_reference import reference_load
from xdsd.errors import ConfigError, Severity
from xdsd.sources import DirectoryLoader, LoadResult, load_directory

CONFIG_YAML = "apiVersion: xdsd.io/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n" + (
    "  ports: [{{number: 80, protocol: HTTP}}]\n  endpoints: [{{address: {address}}}]\n"
)


def service_yaml(name: str, address: str = "10.9.0.1") -> str:
    return CONFIG_YAML.format(name=name, address=address)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    shutil.copytree(EXAMPLE_CONFIG, root)
    return root


def cold(root: Path) -> LoadResult | list[str]:
    """A cold load, or the text of its errors."""
    try:
        return load_directory(str(root))
    except ConfigError as e:
        return [str(p) for p in e.problems]


def warm(loader: DirectoryLoader, changed: set[str] | None) -> LoadResult | list[str]:
    try:
        return loader.load(changed)
    except ConfigError as e:
        return [str(p) for p in e.problems]


def same(a: LoadResult | list[str], b: LoadResult | list[str]) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    return (a.mesh, a.warnings, a.files) == (b.mesh, b.warnings, b.files)


def test_a_sequence_of_edits_loads_as_a_cold_load_would(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    assert same(warm(loader, None), cold(config))
    details = config / "services" / "details.toml"
    extra = config / "services" / "extra.yaml"
    moved = config / "more" / "moved.yaml"

    def edit_details() -> set[str]:
        details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.99"))
        return {str(details)}

    def add_extra() -> set[str]:
        extra.write_text(service_yaml("extra"))
        return {str(extra)}

    def break_extra() -> set[str]:
        extra.write_text(service_yaml("extra") + "  bogus: 1\n")
        return {str(extra)}

    def fix_extra() -> set[str]:
        extra.write_text(service_yaml("extra", "10.9.0.2"))
        return {str(extra)}

    def rename_extra() -> set[str]:
        moved.parent.mkdir()
        os.rename(extra, moved)
        return {str(extra), str(moved)}

    def duplicate_in_new_file() -> set[str]:
        dup = config / "services" / "dup.yaml"
        dup.write_text(service_yaml("extra"))
        return {str(dup)}

    def delete_duplicate() -> set[str]:
        dup = config / "services" / "dup.yaml"
        dup.unlink()
        return {str(dup)}

    def delete_directory() -> set[str]:
        shutil.rmtree(moved.parent)
        return {str(moved.parent)}

    steps = [
        edit_details,
        add_extra,
        break_extra,
        fix_extra,
        rename_extra,
        duplicate_in_new_file,
        delete_duplicate,
        delete_directory,
    ]
    for step in steps:
        changed = step()
        got = warm(loader, changed)
        assert same(got, cold(config)), step.__name__
    assert not isinstance(got, list)
    assert got.reread == 0  # deleting a directory re-read nothing


def test_errors_name_the_file_line_and_field_and_the_last_good_state_is_kept(
    config: Path,
) -> None:
    loader = DirectoryLoader(str(config))
    good = loader.load()
    bad = config / "services" / "bad.yaml"
    bad.write_text(service_yaml("bad") + "  bogus: 1\n")
    with pytest.raises(ConfigError) as raised:
        loader.load({str(bad)})
    assert any(p.path == str(bad) and p.line and "bogus" in p.field for p in raised.value.problems)
    bad.unlink()
    again = loader.load({str(bad)})
    assert again.mesh == good.mesh


def test_unchanged_files_keep_their_model_objects(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    before = loader.load()
    details = config / "services" / "details.toml"
    details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.99"))
    after = loader.load({str(details)})
    assert after.reread == 1
    for old, new in zip(before.mesh.services, after.mesh.services, strict=True):
        assert (old is new) == (new.name != "details")


def test_a_file_that_failed_is_read_again_even_when_not_named(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    loader.load()
    bad = config / "services" / "late.yaml"
    bad.write_text("kind: Service\nname: late\nports: [{number: 80, protocol: HTTP}\n")
    with pytest.raises(ConfigError):
        loader.load({str(bad)})
    bad.write_text(service_yaml("late"))
    result = loader.load(set())  # the watcher's batch did not name it
    assert result.mesh.service_by_name("default", "late") is not None


def test_a_listing_with_problems_is_not_reused_for_a_later_edit(
    config: Path, tmp_path: Path
) -> None:
    # A dangling link refuses the load; its target then appears outside the directory
    # (no event under it) and a known file is edited: the load names only that file,
    # and must give what a cold load gives, not the first listing's problem again.
    outside = tmp_path / "outside"
    outside.mkdir()
    link = config / "services" / "x.yaml"
    link.symlink_to(outside / "x.yaml")
    loader = DirectoryLoader(str(config))
    first = warm(loader, None)
    assert isinstance(first, list) and any("dangling symbolic link" in p for p in first)
    (outside / "x.yaml").write_text(service_yaml("x"))
    edited = config / "services" / "late.yaml"
    edited.write_text(service_yaml("late"))
    assert isinstance(warm(loader, None), LoadResult)  # a new file: listed again anyway
    os.unlink(outside / "x.yaml")
    assert isinstance(warm(loader, {str(link)}), list)  # dangling again: refused
    (outside / "x.yaml").write_text(service_yaml("x"))
    edited.write_text(service_yaml("late", "10.9.0.2"))
    result = warm(loader, {str(edited)})
    assert isinstance(result, LoadResult), result
    assert same(result, cold(config))
    assert result.mesh.service_by_name("default", "x") is not None


def test_a_forced_reload_finds_changes_nobody_named(config: Path) -> None:
    loader = DirectoryLoader(str(config))
    loader.load()
    details = config / "services" / "details.toml"
    details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.199"))
    assert same(loader.load(None), cold(config))


@pytest.mark.parametrize("named", ["root", "directory", "dot-name"])
def test_a_changed_path_that_is_no_config_file_checks_every_file(config: Path, named: str) -> None:
    loader = DirectoryLoader(str(config))
    loader.load()
    details = config / "services" / "details.toml"
    details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.199"))
    path = {"root": config, "directory": config / "services", "dot-name": config / "..data"}
    result = loader.load({str(path[named])})
    assert result.reread == 1
    assert same(result, cold(config))


def test_changed_paths_under_a_symlinked_root_are_recognised(config: Path) -> None:
    link = config.parent / "current"
    link.symlink_to(config)
    loader = DirectoryLoader(str(link))
    loader.load()
    details = config / "services" / "details.toml"
    details.write_text(details.read_text().replace("10.0.0.21", "10.0.0.42"))
    result = loader.load({str(details.resolve())})  # the watcher reports real paths
    assert result.reread == 1
    assert same(result, cold(link))


def test_listing_matches_the_walk_order(config: Path) -> None:
    (config / "a.yaml").write_text(service_yaml("top"))
    (config / "services" / "sub").mkdir()
    (config / "services" / "sub" / "z.yaml").write_text(service_yaml("deep"))
    (config / ".hidden.yaml").write_text("not: read\n")
    files = load_directory(str(config)).files
    expected = []
    for dirpath, dirnames, filenames in os.walk(config):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        expected += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    assert list(files) == expected


def test_cross_checks_follow_a_sequence_of_edits(config: Path) -> None:
    """What the cross-checks find changes with files that did not change themselves; each
    step is compared with a cold load and with the one-pass reference checks."""
    loader = DirectoryLoader(str(config))
    loader.load()
    rules = config / "rules"
    services = config / "services"
    route = rules / "route-extra.yaml"
    extra = services / "extra.yaml"
    subsets = rules / "extra-rule.yaml"

    def write(path: Path, text: str) -> set[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return {str(path)}

    def vs(name: str, host: str, dest: str, subset: str = "") -> str:
        sub = f", subset: {subset}" if subset else ""
        return (
            f"kind: VirtualService\nname: {name}\nhosts: [{host}]\nhttp:\n- route:\n"
            f"  - {{destination: {{host: {dest}{sub}}}}}\n"
        )

    def dr(name: str, host: str, subset: str) -> str:
        return (
            f"kind: DestinationRule\nname: {name}\nhost: {host}\n"
            f"subsets: [{{name: {subset}, labels: {{version: {subset}}}}}]\n"
        )

    steps: list[tuple[str, Callable[[], set[str]]]] = [
        (
            "a service and a rule routing to its subset",
            lambda: (
                write(extra, service_yaml("extra"))
                | write(route, vs("extra", "extra", "extra", "v1"))
                | write(subsets, dr("x", "extra", "v1"))
            ),
        ),
        ("the routed service deleted", lambda: (extra.unlink(), {str(extra)})[1]),
        ("the service back", lambda: write(extra, service_yaml("extra"))),
        ("the subset renamed", lambda: write(subsets, dr("x", "extra", "v2"))),
        ("the rule moved to another service", lambda: write(subsets, dr("x", "details", "v2"))),
        (
            "a second rule for details",
            lambda: write(rules / "a-rule.yaml", dr("y", "details", "v1")),
        ),
        ("the first rule gone", lambda: (subsets.unlink(), {str(subsets)})[1]),
        (
            "a duplicate service, later in walk order",
            lambda: write(services / "zz" / "dup.yaml", service_yaml("extra", "10.9.9.9")),
        ),
        (
            "a duplicate earlier in walk order",
            lambda: write(config / "aa.yaml", service_yaml("extra", "10.9.9.8")),
        ),
        ("the first duplicate gone", lambda: (extra.unlink(), {str(extra)})[1]),
        (
            "a rename that reorders",
            lambda: (
                os.rename(config / "aa.yaml", services / "zz" / "zz.yaml"),
                {str(config / "aa.yaml"), str(services / "zz" / "zz.yaml")},
            )[1],
        ),
        (
            "a second VirtualService for one host",
            lambda: write(rules / "b.yaml", vs("other", "extra", "details")),
        ),
        (
            "the other one moved to gateways",
            lambda: write(
                rules / "b.yaml",
                vs("other", "extra", "details").replace("http:", "gateways: [gw]\nhttp:"),
            ),
        ),
        (
            "the duplicates gone",
            lambda: (shutil.rmtree(services / "zz"), {str(services / "zz")})[1],
        ),
        (
            "the second rule for details gone",
            lambda: (os.unlink(rules / "a-rule.yaml"), {str(rules / "a-rule.yaml")})[1],
        ),
        (
            "everything back",
            lambda: write(extra, service_yaml("extra")) | write(subsets, dr("x", "extra", "v1")),
        ),
    ]
    for name, change in steps:
        changed = change()
        got = warm(loader, changed)
        assert same(got, cold(config)), name
        assert same(got, reference(config)), name
    assert isinstance(got, LoadResult)


def reference(root: Path) -> LoadResult | list[str]:
    """What the one-pass reference checks give (as ``cold``)."""
    mesh, problems, files = reference_load(str(root))
    errors = [str(p) for p in problems if p.severity is Severity.ERROR]
    if errors:
        return errors
    warnings = tuple(p for p in problems if p.severity is Severity.WARNING)
    return LoadResult(mesh, warnings, files)
