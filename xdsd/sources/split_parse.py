"""A share of a cold load's files parsed in another process, its results sent back as bytes.

``DirectoryLoader`` hands the tail of a large cold load's files to ``xdsd.forked``'s
split (which forks only when a core is free: ``forked.spare_core``): the child runs
``parse_share`` (``parse_config_file`` on each file, under what was left of the load's
``Budget`` when it was made: only the parent can charge it in listing order, but nothing
the child reads can be beyond that, so a hostile directory costs the child no more than
the serial load) and returns ``encode``'s bytes; the parent, having parsed its own
share, turns them back with ``decode``. Whatever goes wrong is the parent's to redo, so
the load is exactly the serial one:

- a file whose result has any problem (an error, a warning, an internal error, which
  the child cannot log) is sent as None: the parent parses it again itself, reporting
  and logging as a serial load does;
- ``decode`` gives None for bytes that are not exactly the results of the paths asked
  for (a child that failed, truncated or garbled bytes: a BLAKE2b digest leads the
  pickle; other paths, another shape): the parent parses the whole share.

The bytes are a pickle, made by a ``pickle.Pickler`` whose private dispatch table
reduces every frozen, slotted dataclass of ``xdsd.model`` (and ``FileResult``) to its
slot values and a maker that sets them again through the slots' descriptors (about
half of pickle's default, which calls the dataclass's ``__getstate__``/``__setstate__``
per object; the model's classes are not touched). The remade objects are equal, with
equal hashes, to the child's: every slot is copied, an ``Endpoint``'s stored hash
included, which is what the parent would compute because the child is its fork (same
hash seed). Nothing in ``xdsd.translate`` or ``xdsd.sources`` tests a model object for
identity against a shared constant (``is`` is used on enum members, which unpickle as
the same members, on None and on booleans), so the child's objects need not be the
parent's singletons; the shared label tuples and localities are shared within the
child's share (the pickle's memo), as they are within a serial load.

``decode`` only ever reads the bytes of our own child, never anything from outside the
process (a digest guards it on the way); even so it refuses any global but the classes
of ``xdsd.model``, ``datetime.timedelta`` and this module's makers
(``_Unpickler.find_class``): a garbled pickle could not call anything else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import operator
import pickle
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any

import xdsd.model
from xdsd.model import Endpoint, Origin, Service
from xdsd.model.rules import Subset
from xdsd.sources.config_file import Budget, FileResult, parse_config_file
from xdsd.sources.limits import ParseLimits

#: A cold load parses its files in two processes from this many files to parse on
#: (below, the fork and the bytes cost more than they save). Tests lower it.
SPLIT_FILES = 2_000
#: The share of the files to parse that goes to the child: the child parses and
#: encodes (about 0.35 of a parse, and its first write to each page it shares with the
#: parent costs a copy), the parent parses and decodes (about 0.35 of a parse), so the
#: child takes less than half for both to finish together. Measured on the generated
#: 10,000-service mesh (``bench.meshgen``) with a core free, the parse phase took
#: 0.80 s at 0.38 (the parent waiting ~0.02 s: the transfer), 0.83 s at 0.34 and 0.36,
#: 0.88 s at 0.42 (waiting ~0.11 s).
CHILD_SHARE = 0.38

#: Bytes of the digest before the pickle (a byte changed on the way is seen).
_DIGEST = 16
_new = object.__new__
_Setter = Callable[[object, object], None]
# By class, the slot setters of its fields in field order: a table filled once at
# import (``_reducers``), read by the makers.
_SETTERS: dict[type, tuple[_Setter, ...]] = {}
#: A reducer: an object → its maker and the maker's arguments.
_Reducer = Callable[[Any], tuple[Callable[..., Any], tuple[Any, ...]]]


def parse_share(root: str, paths: Sequence[str], limits: ParseLimits, left: int) -> bytes:
    """Parse ``paths`` (files of the config directory ``root``) under ``limits``, with
    ``left`` bytes of the load's budget (what it had when the child was made: the
    parent's own share only uses more of it, so a file beyond ``left`` is beyond the
    budget in the serial order too, and is not read here either); the bytes ``decode``
    turns back into their results, None for each file with a problem (for the parent to
    parse again, charging the budget in order)."""
    budget = Budget(left, limits.max_config_bytes)
    results: list[FileResult | None] = []
    for path in paths:
        entry = parse_config_file(root, path, limits=limits, budget=budget)
        results.append(None if entry.problems else entry)
    return encode(tuple(paths), results)


def encode(paths: tuple[str, ...], results: list[FileResult | None]) -> bytes:
    """The bytes of ``paths`` and their ``results`` (see the module docstring)."""
    out = io.BytesIO()
    _Pickler(out, pickle.HIGHEST_PROTOCOL).dump((paths, results))
    data = out.getvalue()
    return hashlib.blake2b(data, digest_size=_DIGEST).digest() + data


def decode(data: bytes, paths: Sequence[str]) -> list[FileResult | None] | None:
    """The results ``encode`` wrote for exactly ``paths``, in their order (None for a
    file to parse again); None when ``data`` is anything else (then parse them all).
    Reads only our own child's bytes (see the module docstring); never raises for
    them."""
    try:
        return _decoded(data, paths)
    except Exception:  # truncated, garbled, a global refused, a half-made object
        return None


def _decoded(data: bytes, paths: Sequence[str]) -> list[FileResult | None] | None:
    """``decode``, which may raise for bytes that are not ``encode``'s."""
    digest, data = data[:_DIGEST], data[_DIGEST:]
    if hashlib.blake2b(data, digest_size=_DIGEST).digest() != digest:
        return None
    value = _Unpickler(io.BytesIO(data)).load()
    if type(value) is not tuple or len(value) != 2:
        return None
    sent, results = value
    if type(sent) is not tuple or type(results) is not list or len(results) != len(paths):
        return None
    if len(sent) != len(paths) or any(type(p) is not str for p in sent):
        return None
    if list(sent) != list(paths):
        return None
    for entry in results:
        if entry is not None and not _plain_result(entry):
            return None
    return results


def _plain_result(entry: object) -> bool:
    """True for a ``FileResult`` of a file read without problems."""
    if type(entry) is not FileResult or type(entry.problems) is not tuple or entry.problems:
        return False
    stamp = entry.stamp
    return (
        type(stamp) is tuple
        and len(stamp) == 5
        and all(type(n) is int for n in stamp)
        and type(entry.resources) is tuple
        and type(entry.raw) is tuple
    )


# The makers: a class's object from its slot values, set through the slots' descriptors
# (what the frozen dataclass's ``__init__`` would set, without running it again). The
# hottest classes have one of their own; the others share ``_remake``.


def _remake(cls: type, values: tuple[object, ...]) -> object:
    """An object of ``cls`` (a registered class) with its fields' ``values``."""
    obj: object = _new(cls)
    for setter, value in zip(_SETTERS[cls], values, strict=True):
        setter(obj, value)
    return obj


def _endpoint(
    a: object, b: object, c: object, d: object, e: object, f: object, g: object
) -> Endpoint:
    """An ``Endpoint`` of its field values (its stored hash included)."""
    s0, s1, s2, s3, s4, s5, s6 = _SETTERS[Endpoint]
    obj: Endpoint = _new(Endpoint)
    s0(obj, a)
    s1(obj, b)
    s2(obj, c)
    s3(obj, d)
    s4(obj, e)
    s5(obj, f)
    s6(obj, g)
    return obj


def _origin(path: object, line: object) -> Origin:
    """An ``Origin`` of its field values."""
    s0, s1 = _SETTERS[Origin]
    obj: Origin = _new(Origin)
    s0(obj, path)
    s1(obj, line)
    return obj


def _subset(name: object, labels: object, policy: object) -> Subset:
    """A ``Subset`` of its field values."""
    s0, s1, s2 = _SETTERS[Subset]
    obj: Subset = _new(Subset)
    s0(obj, name)
    s1(obj, labels)
    s2(obj, policy)
    return obj


def _file_result(stamp: object, resources: object, raw: object, problems: object) -> FileResult:
    """A ``FileResult`` of its field values."""
    s0, s1, s2, s3 = _SETTERS[FileResult]
    obj: FileResult = _new(FileResult)
    s0(obj, stamp)
    s1(obj, resources)
    s2(obj, raw)
    s3(obj, problems)
    return obj


def _service(values: tuple[object, ...], columns: tuple[tuple[object, ...], ...]) -> Service:
    """A ``Service`` of its field values, its endpoints given apart as columns (each
    endpoint field's values: ``_service_reduced``)."""
    setters = _SETTERS[Service]
    obj: Service = _new(Service)
    for setter, value in zip(setters, values, strict=True):
        setter(obj, value)
    setters[_ENDPOINTS](obj, tuple(map(_endpoint, *columns)) if columns else ())
    return obj


def _service_reduced(
    get: Callable[[Service], tuple[object, ...]],
) -> Callable[[Service], tuple[Callable[..., Service], tuple[object, ...]]]:
    """``Service``'s reducer: its fields (None for the endpoints) and its endpoints' fields
    as columns (one tuple per field: no reduction per endpoint, a third cheaper)."""
    get_endpoint = operator.attrgetter(*(f.name for f in dataclasses.fields(Endpoint)))
    after = _ENDPOINTS + 1

    def reduced(service: Service) -> tuple[Callable[..., Service], tuple[object, ...]]:
        values = get(service)
        columns = tuple(zip(*map(get_endpoint, service.endpoints), strict=True))
        return _service, ((*values[:_ENDPOINTS], None, *values[after:]), columns)

    return reduced


#: The position of ``Service.endpoints`` among its fields.
_ENDPOINTS = [f.name for f in dataclasses.fields(Service)].index("endpoints")

#: The hottest classes' own makers (each takes the class's fields, in order).
_OWN_MAKERS: dict[type, Callable[..., object]] = {
    Endpoint: _endpoint,
    Origin: _origin,
    Subset: _subset,
    FileResult: _file_result,
}


def _reducers() -> dict[type, _Reducer]:
    """The dispatch table: every frozen, slotted dataclass of ``xdsd.model`` and
    ``FileResult`` → its reducer (filling ``_SETTERS``). A class whose slots are not
    exactly its fields is left to pickle's default."""
    classes: list[type] = [FileResult]
    for info in pkgutil.iter_modules(xdsd.model.__path__):
        module = importlib.import_module(f"{xdsd.model.__name__}.{info.name}")
        classes.extend(
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and v.__module__ == module.__name__
            and dataclasses.is_dataclass(v)
        )
    table: dict[type, _Reducer] = {}
    for cls in classes:
        params = getattr(cls, "__dataclass_params__", None)
        names = tuple(f.name for f in dataclasses.fields(cls))
        slots = getattr(cls, "__slots__", None)
        if params is None or not params.frozen or slots is None or set(slots) != set(names):
            continue
        _SETTERS[cls] = tuple(cls.__dict__[n].__set__ for n in names)
        table[cls] = _reducer(cls, names)
    return table


def _reducer(cls: type, names: tuple[str, ...]) -> _Reducer:
    """``cls``'s reducer: its maker and its fields' values."""
    get = operator.attrgetter(*names)
    if cls is Service:
        return _service_reduced(get)
    maker = _OWN_MAKERS.get(cls)
    if maker is not None:
        if len(names) == 1:
            return lambda obj: (maker, (get(obj),))
        return lambda obj: (maker, get(obj))
    if len(names) == 1:
        return lambda obj: (_remake, (cls, (get(obj),)))
    return lambda obj: (_remake, (cls, get(obj)))


class _Pickler(pickle.Pickler):
    """A pickler reducing the model's classes by their slots (this module's own
    dispatch table: the classes stay as they are)."""

    dispatch_table = _reducers()


#: The globals a child's pickle may name besides the model's and this module's.
_ALLOWED = frozenset({("datetime", "timedelta"), ("copyreg", "__newobj__")})
_MAKER_NAMES = frozenset({"_remake", "_service", *(f.__name__ for f in _OWN_MAKERS.values())})


class _Unpickler(pickle.Unpickler):
    """An unpickler that finds only the model's classes and this module's makers."""

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name in _MAKER_NAMES:
            return globals()[name]
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module.startswith("xdsd.model.") and "." not in name:
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:
                return found  # a class of the model's (an enum's members come by value)
        raise pickle.UnpicklingError(f"{module}.{name} is not a model class")
