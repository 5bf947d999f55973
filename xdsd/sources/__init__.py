"""Config files → model: parsing with line numbers, validation, cross-checks."""

from xdsd.sources.loader import LoadResult, load_directory

__all__ = ["LoadResult", "load_directory"]
