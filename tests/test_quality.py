"""The code base stays clean: ruff, mypy --strict, and the layering of docs/architecture.md."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

PACKAGE = REPO / "xdsd"

# module prefix → xdsd modules it may import (docs/architecture.md, "Layering").
ALLOWED: dict[str, tuple[str, ...]] = {
    "xdsd.errors": (),
    "xdsd.located": ("xdsd.errors",),
    "xdsd.model": ("xdsd.model", "xdsd.errors"),
    "xdsd.resources": ("xdsd.resources",),
    "xdsd.sources": (
        "xdsd.sources",
        "xdsd.model",
        "xdsd.errors",
        "xdsd.resources",
        "xdsd.located",
        "xdsd.plurals",
    ),
    "xdsd.translate": (
        "xdsd.translate",
        "xdsd.model",
        "xdsd.resources",
        "xdsd.errors",
        "xdsd.cache.snapshot",
        "xdsd.located",
    ),
    "xdsd.cache": ("xdsd.cache", "xdsd.resources", "xdsd.errors"),
    "xdsd.protocol": ("xdsd.protocol", "xdsd.resources", "xdsd.cache", "xdsd.errors"),
    "xdsd.settings": ("xdsd.errors", "xdsd.model", "xdsd.located"),
    "xdsd.notify": (),
    "xdsd.tls": ("xdsd.errors", "xdsd.settings"),
    "xdsd.logs": (),
    "xdsd.status": ("xdsd.errors", "xdsd.plurals"),
    "xdsd.capture": ("xdsd.errors",),
    "xdsd.plurals": (),
    "xdsd.resolver": ("xdsd.errors", "xdsd.model", "xdsd.located"),
    "xdsd.registry": ("xdsd.registry", "xdsd.errors", "xdsd.model", "xdsd.settings"),
    "xdsd.ca": ("xdsd.ca", "xdsd.errors", "xdsd.model", "xdsd.resources", "xdsd.settings"),
    "xdsd.build_cache": (
        "xdsd.ca.files",
        "xdsd.cache",
        "xdsd.errors",
        "xdsd.model",
        "xdsd.resources",
        "xdsd.sources.listing",
        "xdsd.translate",
    ),
    "xdsd.admin": ("xdsd.admin", "xdsd.cache", "xdsd.settings", "xdsd.errors", "xdsd.resources"),
    "xdsd.workers": (
        "xdsd.workers",
        "xdsd.app",
        "xdsd.admin",
        "xdsd.errors",
        "xdsd.listeners",
        "xdsd.notify",
        "xdsd.plurals",
        "xdsd.settings",
        "xdsd.status",
        "xdsd.tls",
        "xdsd.transports",
    ),
    "xdsd.transports": (
        "xdsd.transports",
        "xdsd.protocol",
        "xdsd.cache",
        "xdsd.resources",
        "xdsd.errors",
        "xdsd.settings",
    ),
    # xdsd.workers runs daemons (everything, like app); its merge of their admin views
    # is pure.
    "xdsd.workers.merge": ("xdsd.admin", "xdsd.cache", "xdsd.errors", "xdsd.resources"),
}
# The pure core does no I/O and is not async.
PURE = (
    "xdsd.model",
    "xdsd.translate",
    "xdsd.protocol",
    "xdsd.cache.snapshot",
    "xdsd.resources",
    "xdsd.located",
    "xdsd.workers.merge",
)
IO_MODULES = ("asyncio", "socket", "aiohttp", "grpclib", "watchfiles", "subprocess", "threading")


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out.append((name, ast.parse(path.read_text(), str(path))))
    return out


def _imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_layering_follows_design() -> None:
    violations = []
    for name, tree in _modules():
        rule = next(
            (
                p
                for p in sorted(ALLOWED, key=len, reverse=True)
                if name == p or name.startswith(p + ".")
            ),
            None,
        )
        for imported in _imports(tree):
            allowed = ALLOWED[rule] if rule is not None else None
            if (
                allowed is not None
                and imported.startswith("xdsd")
                and not any(imported == a or imported.startswith(a + ".") for a in allowed)
            ):
                violations.append(f"{name} imports {imported}")
            if any(name == p or name.startswith(p + ".") for p in PURE) and (
                imported.split(".")[0] in IO_MODULES
            ):
                violations.append(f"{name} (pure core) imports {imported}")
        if any(name == p or name.startswith(p + ".") for p in PURE):
            for node in ast.walk(tree):
                if isinstance(node, ast.AsyncFunctionDef):
                    violations.append(f"{name} (pure core) defines async {node.name}")
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "open":
                    violations.append(f"{name} (pure core) calls open()")
    assert violations == []


def _import_statements(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at any depth: lazy imports and those under
    ``if TYPE_CHECKING:`` too (a cycle of type names is a cycle of design)."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def _import_graph() -> dict[str, set[str]]:
    """xdsd module → the xdsd modules it imports (``from P import N`` counts ``P.N`` when
    that is a module, else ``P``)."""
    modules = dict(_modules())
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in _import_statements(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                targets = []
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycles() -> None:
    """No two modules of xdsd import each other, directly or through others (a package's
    ``__init__`` counts as a module)."""
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert cycles == []


def test_no_private_name_is_imported_from_another_module() -> None:
    """A name starting with ``_`` stays in its module (``__future__`` aside)."""
    found = [
        f"{name} imports {node.module}.{alias.name}"
        for name, tree in _modules()
        for node in _import_statements(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__"
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert found == []


def test_the_formatter_is_not_switched_off() -> None:
    """``ruff format`` (its defaults, line length 100) lays out all the code: no
    ``fmt: skip`` / ``fmt: off`` escapes, which had grown to hundreds of markers."""
    marker = "fmt" + ": "  # split, so this file does not match itself
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for top in ("xdsd", "tests", "bench")
        for path in sorted((REPO / top).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if f"# {marker}skip" in line or f"# {marker}off" in line
    ]
    assert found == []


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", "xdsd", "tests", "bench"],
        ["ruff", "format", "--check", "xdsd", "tests", "bench"],
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(argv: list[str]) -> None:
    paths = [a for a in argv[2:] if (REPO / a).exists()]
    proc = subprocess.run(
        [_tool("ruff"), *argv[1:2], *paths], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict() -> None:
    proc = subprocess.run(
        [_tool("mypy"), "--no-error-summary"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
