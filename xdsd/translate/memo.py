"""``Memo`` and ``Selections``: what a translation builds once, keyed by what it is made of.

How this works: a memoized value is ``build(*args)``, and its key is ``(build, *args)``:
the build function itself and every argument it is given, which must be hashable values
(frozen dataclasses, tuples, strings, enums, ``Resource`` objects — a protobuf message is not
hashable, so it cannot sneak in). No key is written by hand, so none can miss a field: two
calls share a value only when they would build it from equal inputs. A ``Memo`` is also
looked up in the previous translation's (``previous=``), which is how an edit re-encodes
only what it touched; a ``build`` must therefore be a module-level function (the same
object in every translation, never a lambda, closure or bound method — refused with
``TypeError``) whose result depends on its arguments alone and is never None. The one
exception is ``context=``: an object handed to ``build`` first and left out of the key,
for a builder that reads the mesh through a helper (a ``RouteBuilder``); the arguments
must then name everything ``build`` reads through it.

Checking mode (``check=True``; ``MeshTranslation`` turns it on when ``XDSD_CHECK_MEMO=1``,
as the translate tests do): every hit is built again and compared with what the memo
returned (a ``Resource`` by digest); a difference raises ``StaleMemoError`` naming the
build function. It costs a full rebuild per hit, so it is for tests only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from xdsd.errors import TranslationError
from xdsd.resources import ENDPOINT, Resource, type_url_of

T = TypeVar("T")

#: The environment variable that turns checking mode on for every ``MeshTranslation``
#: (``1``).
CHECK_MEMO_ENV = "XDSD_CHECK_MEMO"


class StaleMemoError(AssertionError):
    """A memoized value differs from what its build function gives now: its inputs do
    not determine it (a bug in xdsd, found by checking mode)."""


def fingerprint(value: Any) -> Hashable:
    """What checking mode compares: a ``Resource`` by its digest, a tuple item by item,
    a ``TranslationError`` by its problems, anything else as it is."""
    if isinstance(value, Resource):
        return (value.type_url, value.name, value.digest)
    if isinstance(value, TranslationError):
        return ("error", tuple(value.problems))
    if isinstance(value, tuple):
        return tuple(fingerprint(v) for v in value)
    if isinstance(value, list):
        return tuple(fingerprint(v) for v in value)
    return value  # type: ignore[no-any-return]


def as_resource(built: Any) -> Resource:
    """``built`` as a Resource, named by its ``name`` (a ClusterLoadAssignment by its
    ``cluster_name``)."""
    if isinstance(built, Resource):
        return built
    if type_url_of(built) == ENDPOINT:
        return Resource.of(built.cluster_name, built)
    return Resource.of(built.name, built)


def _check_build(build: Callable[..., Any]) -> None:
    """Raise TypeError unless ``build`` is a module-level function (the same object in
    every translation, so it can key a memo carried across translations)."""
    if (
        not inspect.isfunction(build)
        or "<locals>" in build.__qualname__
        or "<lambda>" in build.__qualname__
        or "." in build.__qualname__
    ):
        raise TypeError(f"memo build {build!r} must be a module-level function")


class Memo:
    """Values keyed by ``(build, *args)``, shared by every class of a translation and
    taken over by the next one (see the module docstring). Not thread-safe."""

    def __init__(self, *, previous: Memo | None = None, check: bool = False) -> None:
        # By the hash of the key ``(build, *args)``: the keys with that hash and their
        # values (a key's hash is computed once per lookup, in C; the dict's own keys
        # are ints, which hash and compare without a Python call).
        self._values: dict[int, list[tuple[tuple[Hashable, ...], Any]]] = {}
        # Only what ``previous`` built itself (or reused), never its own fallback: no
        # chain of old translations is kept alive.
        self._fallback = previous._values if previous is not None else {}
        self._builds: set[Callable[..., Any]] = set()
        #: Whether every hit is built again and compared (see the module docstring).
        self.check = check

    def get(self, build: Callable[..., T], *args: Hashable, context: Any = None) -> T:
        """``build(*args)`` (``build(context, *args)`` with ``context``), memoized by
        ``(build, *args)``. Raises TypeError when ``build`` is not a module-level
        function or an argument is not hashable, StaleMemoError in checking mode when a
        memoized value differs from a fresh build; what ``build`` raises is not kept."""
        return self._get(build, args, context, False)  # type: ignore[no-any-return]

    def resource(self, build: Callable[..., Any], *args: Hashable, context: Any = None) -> Resource:
        """``get`` for a ``build`` that returns a message (or a Resource): the Resource,
        named by the message's ``name`` (a ClusterLoadAssignment's ``cluster_name``).
        A build is used with one of ``get`` and ``resource`` only."""
        return self._get(build, args, context, True)  # type: ignore[no-any-return]

    def _get(
        self, build: Callable[..., Any], args: tuple[Hashable, ...], context: Any, wrap: bool
    ) -> Any:
        """``get`` and ``resource`` (``wrap``: the result as a Resource)."""
        if build not in self._builds:
            _check_build(build)
            self._builds.add(build)
        key = (build, *args)
        h = hash(key)
        mine = self._values.get(h)
        found = _find(mine, key) if mine is not None else None
        if found is None:
            old = self._fallback.get(h)
            found = _find(old, key) if old is not None else None
            built = found is None
            if built:
                found = _build(build, args, context, wrap)
            if mine is None:
                self._values[h] = [(key, found)]
            else:
                mine.append((key, found))
            if built:
                return found
        if self.check:
            fresh = _build(build, args, context, wrap)
            if fingerprint(fresh) != fingerprint(found):
                raise StaleMemoError(
                    f"memo of {build.__module__}.{build.__qualname__} is stale: its "
                    f"arguments {args!r:.300} do not determine what it builds"
                )
        return found


def _find(entries: list[tuple[tuple[Hashable, ...], Any]], key: tuple[Hashable, ...]) -> Any:
    """The value of ``key`` among ``entries`` (keys of one hash), or None."""
    for stored, value in entries:
        if stored is key or stored == key:
            return value
    return None


def _build(build: Callable[..., Any], args: tuple[Any, ...], context: Any, wrap: bool) -> Any:
    """One build of ``build`` with ``args`` (``context`` first when given)."""
    built = build(*args) if context is None else build(context, *args)
    return as_resource(built) if wrap else built


class Selections:
    """What one translation selects for a class (a tuple of resources, or the error that
    stopped it), keyed by the computing method and its hashable arguments; this
    translation only (a selection depends on the whole mesh). Checking mode as ``Memo``."""

    def __init__(self, *, check: bool = False) -> None:
        self._found: dict[tuple[Hashable, ...], tuple[Resource, ...] | TranslationError] = {}
        self.check = check

    def get(self, compute: Callable[..., list[Resource]], *args: Hashable) -> tuple[Resource, ...]:
        """``tuple(compute(*args))`` memoized by ``(compute, *args)`` with its error, if
        any (raised again, as a new TranslationError, on every call)."""
        # By the function, not the bound method: a key holding its object would tie the
        # translation into a reference cycle (one Selections serves one object).
        key = (getattr(compute, "__func__", compute), *args)
        found = self._found.get(key)
        if found is None:
            found = _selected(compute, args)
            self._found[key] = found
        elif self.check and fingerprint(_selected(compute, args)) != fingerprint(found):
            raise StaleMemoError(
                f"selection of {getattr(compute, '__qualname__', compute)} is stale: its "
                f"arguments {args!r:.300} do not determine what it selects"
            )
        if isinstance(found, TranslationError):
            raise TranslationError(found.problems)
        return found


def _selected(
    compute: Callable[..., list[Resource]], args: tuple[Hashable, ...]
) -> tuple[Resource, ...] | TranslationError:
    """``tuple(compute(*args))``, or the TranslationError it raised (its problems)."""
    try:
        return tuple(compute(*args))
    except TranslationError as err:
        # Kept without its traceback, whose frames would tie the translation into a
        # reference cycle.
        return TranslationError(err.problems)
