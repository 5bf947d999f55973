"""Raw Envoy resources (the ``envoy/`` escape hatch) as ``Resource`` objects, and the
references they leave dangling (stage *raw* of a class's snapshot).

A raw resource is added to every class's snapshot and replaces a generated resource of the
same type and name. Its payload is already validated by sources; here it is parsed into
its message type so that its references can be checked like any generated resource's.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import message as message_module
from google.protobuf import symbol_database

from xdsd.cache.snapshot import Snapshot
from xdsd.errors import Problem, TranslationError
from xdsd.model import Mesh, Origin, RawResource
from xdsd.resources import MESSAGE_CLASSES, SHORT_NAMES, Resource, TypeUrl, ensure_type_known


def raw_resource(item: RawResource) -> Resource:
    """A raw Envoy resource as a ``Resource``: its payload parsed into its message type.

    Raises TranslationError (path: the file it came from) when no installed module
    defines its type or the payload does not parse.
    """
    cls = MESSAGE_CLASSES.get(TypeUrl(item.type_url))
    full_name = item.type_url.rsplit("/", 1)[-1]
    if cls is None and ensure_type_known(full_name):
        cls = symbol_database.Default().GetSymbol(full_name)
    where = (item.origin.path, item.origin.line)
    if cls is None:
        raise TranslationError([Problem(*where, "@type", f"unknown type {item.type_url!r}")])
    try:
        message = cls.FromString(item.payload)
    except message_module.DecodeError as err:
        raise TranslationError(
            [Problem(*where, "", f"cannot decode {full_name} {item.name!r}: {err}")]
        ) from err
    return Resource.of(item.name, message)


def dangling_references(
    snapshot: Snapshot,
    raw: Mapping[tuple[str, str], Resource],
    origins: Mapping[tuple[str, str], Origin],
) -> list[Problem]:
    """A problem, on the raw resource's file, for each name a raw resource of
    ``snapshot`` references and the snapshot lacks. ``raw`` and ``origins`` are keyed by
    (type URL, name)."""
    problems: list[Problem] = []
    for key, resource in raw.items():
        origin = origins[key]
        for type_url, name in resource.references:
            if name in snapshot.get(TypeUrl(type_url)):
                continue
            kind = SHORT_NAMES.get(TypeUrl(type_url), type_url)
            problems.append(
                Problem(
                    origin.path,
                    origin.line,
                    "",
                    f"{resource.name!r} references {kind} {name!r}, which neither the mesh "
                    "nor another raw resource defines: define it or remove the reference",
                )
            )
    return problems


class RawResources:
    """The raw resources of one mesh, parsed once, by (type URL, name), with the origin
    of each; a failure is remembered and raised again on every call."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._raw: dict[tuple[str, str], Resource] | TranslationError | None = None
        #: Where each raw resource is written, by (type URL, name).
        self.origins: dict[tuple[str, str], Origin] = {}

    def resources(self) -> dict[tuple[str, str], Resource]:
        """Every raw resource of the mesh. Raises TranslationError (every problem, on
        the file) when one cannot be used."""
        if self._raw is None:
            problems: list[Problem] = []
            raw: dict[tuple[str, str], Resource] = {}
            for item in self.mesh.raw_resources:
                try:
                    resource = raw_resource(item)
                except TranslationError as err:
                    problems.extend(err.problems)
                    continue
                raw[(resource.type_url, resource.name)] = resource
                self.origins[(resource.type_url, resource.name)] = item.origin
            self._raw = TranslationError(problems) if problems else raw
        if isinstance(self._raw, TranslationError):
            raise TranslationError(self._raw.problems)
        return self._raw
