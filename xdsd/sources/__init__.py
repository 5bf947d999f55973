"""Config files → model: parsing with line numbers, validation, cross-checks."""

from xdsd.sources.loader import DirectoryLoader, LoadResult, load_directory

__all__ = ["DirectoryLoader", "LoadResult", "load_directory"]
