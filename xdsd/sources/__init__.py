"""Config files → model: parsing with line numbers, validation, cross-checks.

The package's names (``DirectoryLoader``, ``LoadResult``, ``load_directory``) are
imported from ``xdsd.sources.loader`` on first use (PEP 562), not when the package is:
importing a light submodule (``listing``, ``limits``, ``watch``) must not import every
parser, yaml and toml, which a start from the restart cache serves without (they are
imported by the first load; see ``docs/architecture.md``, "Restart cache").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xdsd.sources.loader import DirectoryLoader, LoadResult, load_directory

__all__ = ["DirectoryLoader", "LoadResult", "load_directory"]


def __getattr__(name: str) -> Any:
    """The package's names, from ``xdsd.sources.loader`` (imported on first use)."""
    if name in __all__:
        from xdsd.sources import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
