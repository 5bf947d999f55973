"""Definitions by key across files: the winner of each key and the duplicates."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Definitions(Generic[K, T]):
    """Every definition of every key, each as (file, position in the file, value); the
    first in file order (the listing's, then the file's) wins, later ones are
    duplicates. Not thread-safe."""

    def __init__(self) -> None:
        self._defs: dict[K, list[tuple[str, int, T]]] = {}
        self._duplicated: set[K] = set()

    def remove(self, key: K, path: str) -> None:
        """Forget the definitions of ``key`` in the file ``path`` (``key`` must be known)."""
        defs = self._defs[key]
        defs[:] = [d for d in defs if d[0] != path]

    def add(self, key: K, path: str, position: int, value: T) -> None:
        """Record a definition of ``key`` at ``position`` of the file ``path``."""
        self._defs.setdefault(key, []).append((path, position, value))

    def winner(self, key: K, order: Mapping[str, int]) -> T | None:
        """The value of the first definition of ``key`` (None: no definition left, and the
        key is forgotten); ``order`` is each file's position in the listing."""
        defs = self._defs.get(key)
        if not defs:
            self._defs.pop(key, None)
            self._duplicated.discard(key)
            return None
        if len(defs) == 1:
            self._duplicated.discard(key)
            return defs[0][2]
        self._duplicated.add(key)
        return min(defs, key=lambda d: (order[d[0]], d[1]))[2]

    def duplicates(self, order: Mapping[str, int]) -> list[tuple[T, T]]:
        """(first definition, duplicate) for every duplicate of every key, in file order
        of the duplicates."""
        found: list[tuple[int, int, T, T]] = []
        for key in self._duplicated:
            defs = sorted(self._defs[key], key=lambda d: (order[d[0]], d[1]))
            first = defs[0][2]
            found.extend((order[path], i, first, value) for path, i, value in defs[1:])
        found.sort(key=lambda d: (d[0], d[1]))
        return [(first, value) for _, _, first, value in found]
