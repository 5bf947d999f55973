"""``DirectoryLoader``: reloads read only what changed, and give what a cold load gives."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.paths import EXAMPLE_CONFIG
from xdsd.errors import ConfigError
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

    steps = [edit_details, add_extra, break_extra, fix_extra, rename_extra,
             duplicate_in_new_file, delete_duplicate, delete_directory]  # fmt: skip
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
