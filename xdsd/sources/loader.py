"""A config directory → a cross-checked ``Mesh``, all or nothing.

How this works: every ``.toml``, ``.yaml``/``.yml`` and ``.json`` file under the directory
(dot-names skipped, symlinks followed, in sorted path order) is parsed into documents;
each document is dispatched on (apiVersion, kind) to the parser of its kind; then the
resources are checked against each other (duplicates, host names, subsets, ports). Every
problem is collected; if any is an error, ``ConfigError`` lists them all and nothing is
returned, so a caller keeps serving what it had. Files under ``envoy/`` are raw Envoy
resources (see ``envoy_raw``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from xdsd.errors import ConfigError, Problem, Severity
from xdsd.model import (
    DEFAULT_NAMESPACE,
    DestinationRule,
    Mesh,
    Origin,
    RawResource,
    ResourceKey,
    Service,
    VirtualService,
)
from xdsd.sources.documents import SUFFIXES, Document, ParseFailure, parse_file
from xdsd.sources.envoy_raw import parse_raw_resource
from xdsd.sources.fields import Fields, Report
from xdsd.sources.kinds import parse_destination_rule, parse_service, parse_virtual_service

XDSD_API = "xdsd.io/v1"
ISTIO_NETWORKING = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
#: networking.istio.io kinds that later xdsd versions implement; ignored with a warning.
LATER_KINDS = frozenset(
    {"ServiceEntry", "WorkloadEntry", "WorkloadGroup", "Gateway", "Sidecar", "EnvoyFilter",
     "ProxyConfig"}
)  # fmt: skip
RAW_DIR = "envoy"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_METADATA_KEYS = ("name", "namespace", "labels", "annotations")
_K8S_METADATA = (
    "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
    "selfLink", "finalizers", "ownerReferences", "deletionTimestamp", "generateName",
)  # fmt: skip

Resource = Service | VirtualService | DestinationRule


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A successfully loaded directory: the mesh, the warnings, and the files read."""

    mesh: Mesh
    warnings: tuple[Problem, ...]
    files: tuple[str, ...]


def load_directory(root: str) -> LoadResult:
    """Load every config file under ``root``.

    Raises ConfigError (listing every error, warnings excluded) when anything is wrong:
    ``root`` missing or not a directory, unreadable or malformed files, invalid fields,
    dangling references, duplicates.
    """
    problems: list[Problem] = []
    files = _find_files(root, problems)
    resources: list[tuple[Resource, Origin]] = []
    raw: list[RawResource] = []
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            problems.append(Problem(path, 0, "", f"cannot read: {e.strerror or e}"))
            continue
        try:
            docs = parse_file(path, data)
        except ParseFailure as e:
            problems.append(e.problem)
            continue
        is_raw = os.path.relpath(path, root).split(os.sep)[0] == RAW_DIR
        for doc in docs:
            if is_raw:
                parsed = parse_raw_resource(doc)
                if isinstance(parsed, Problem):
                    problems.append(parsed)
                else:
                    raw.append(parsed)
            else:
                resource = _parse_document(doc, problems)
                if resource is not None:
                    resources.append((resource, Origin(doc.path, doc.line)))
    mesh = _cross_check(resources, raw, problems)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    warnings = tuple(p for p in problems if p.severity is Severity.WARNING)
    if errors:
        raise ConfigError(errors, warnings)
    return LoadResult(mesh, warnings, tuple(files))


def _find_files(root: str, problems: list[Problem]) -> list[str]:
    if not os.path.exists(root):
        problems.append(Problem(root, 0, "", "config directory does not exist"))
        return []
    if not os.path.isdir(root):
        problems.append(
            Problem(root, 0, "", "is not a directory: give the directory holding the config files")
        )
        return []
    found: list[str] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            problems.append(Problem(dirpath, 0, "", "symbolic link loop: directory visited twice"))
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if d.endswith(SUFFIXES):
                problems.append(
                    Problem(
                        os.path.join(dirpath, d),
                        0,
                        "",
                        "is a directory but named like a config file (a bind mount of a "
                        "missing file creates one); remove it or mount the file",
                    )
                )
        dirnames[:] = [d for d in dirnames if not d.endswith(SUFFIXES)]
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and not os.path.exists(path):
                problems.append(
                    Problem(path, 0, "", f"dangling symbolic link to {os.readlink(path)!r}")
                )
                continue
            if not os.path.isfile(path):
                problems.append(Problem(path, 0, "", "is not a regular file"))
                continue
            found.append(path)
    return found


def _parse_document(doc: Document, problems: list[Problem]) -> Resource | None:
    value = doc.value
    if not isinstance(value, dict):
        problems.append(
            Problem(doc.path, doc.line, "", "a resource must be a mapping with kind and name")
        )
        return None
    top = Fields(Report(doc, ()), (), value)
    kind = top.string("kind", required=True)
    api_version = top.string("apiVersion")
    istio_shaped = "spec" in value or "metadata" in value
    result: Resource | None = None
    if kind and not top.report.failed:
        parser = _parser_for(top, api_version, kind)
        if parser is not None:
            if istio_shaped:
                name, namespace = _read_metadata(top)
                spec_value = value.get("spec")
                top.read.add("spec")
                if spec_value is None:
                    spec_value = {}
                report = Report(doc, ("spec",))
                if not isinstance(spec_value, dict):
                    top.error("spec", "must be a mapping")
                    spec_value = {}
                top.finish()
                spec = Fields(report, (), spec_value)
            else:
                name = top.string("name", required=True)
                namespace = top.string("namespace") or DEFAULT_NAMESPACE
                for key in ("name", "namespace", "kind", "apiVersion"):
                    top.read.add(key)
                report = Report(doc, ())
                spec = Fields(report, (), {k: v for k, v in value.items() if k not in top.read})
            if name and kind == "Service" and not _DNS_LABEL.match(name):
                top.error(
                    "metadata.name" if istio_shaped else "name",
                    f"must be a DNS label (lower-case letters, digits, '-'): got {name!r}",
                )
            result = parser(spec, name, namespace, Origin(doc.path, doc.line))
            problems.extend(report.problems)
    problems.extend(top.report.problems)
    if top.report.failed:
        return None
    return result


def _parser_for(top: Fields, api_version: str, kind: str):  # type: ignore[no-untyped-def]
    group, _, version = api_version.rpartition("/") if "/" in api_version else ("", "", api_version)
    if kind == "Service" and api_version in ("", XDSD_API):
        return parse_service
    if kind == "Service" and api_version == "v1":
        top.warn(
            "apiVersion",
            "a Kubernetes v1 Service is not an xdsd Service: ignored "
            f"(use apiVersion {XDSD_API} and list its ports and endpoints)",
        )
        return None
    if group == ISTIO_NETWORKING or (
        not api_version and kind in ("VirtualService", "DestinationRule")
    ):
        if api_version and version not in ISTIO_VERSIONS:
            top.error("apiVersion", f"unsupported version of {ISTIO_NETWORKING}: {version!r}")
            return None
        if kind == "VirtualService":
            return parse_virtual_service
        if kind == "DestinationRule":
            return parse_destination_rule
        if kind in LATER_KINDS:
            top.warn("kind", f"{kind} is not supported by xdsd yet: ignored")
            return None
        top.error("kind", f"unknown {ISTIO_NETWORKING} kind {kind!r}")
        return None
    if api_version in ("", XDSD_API):
        top.error(
            "kind", f"unknown kind {kind!r} (xdsd kinds: Service, VirtualService, DestinationRule)"
        )
        return None
    top.warn("kind", f"{kind} ({api_version}) is not supported by xdsd: ignored")
    return None


def _read_metadata(top: Fields) -> tuple[str, str]:
    meta = top.obj("metadata", required=True)
    if meta is None:
        return "", DEFAULT_NAMESPACE
    name = meta.string("name", required=True)
    namespace = meta.string("namespace") or DEFAULT_NAMESPACE
    meta.labels("labels")
    meta.obj("annotations")
    for key in _K8S_METADATA:
        meta.read.add(key)
    meta.finish()
    return name, namespace


def _cross_check(
    resources: list[tuple[Resource, Origin]], raw: list[RawResource], problems: list[Problem]
) -> Mesh:
    by_key: dict[ResourceKey, Resource] = {}
    for resource, origin in resources:
        first = by_key.get(resource.key)
        if first is not None:
            problems.append(
                Problem(
                    origin.path,
                    origin.line,
                    "",
                    f"duplicate {resource.key}: also defined at {first.origin}",
                )
            )
            continue
        by_key[resource.key] = resource
    services = [r for r in by_key.values() if isinstance(r, Service)]
    rules = [r for r in by_key.values() if isinstance(r, DestinationRule)]
    virtual = [r for r in by_key.values() if isinstance(r, VirtualService)]
    _check_hosts(services, problems)
    mesh = Mesh(tuple(services), (), tuple(rules), ())
    _check_destination_rules(mesh, problems)
    checked = tuple(_check_virtual_service(mesh, vs, problems) for vs in mesh_sorted(virtual))
    _check_vs_overlap(mesh, checked, problems)
    seen_raw: dict[tuple[str, str], RawResource] = {}
    for r in raw:
        first_raw = seen_raw.get((r.type_url, r.name))
        if first_raw is not None:
            kind = r.type_url.rsplit(".", 1)[-1]
            problems.append(
                Problem(
                    r.origin.path,
                    r.origin.line,
                    "",
                    f"duplicate raw {kind} {r.name!r}: also defined at {first_raw.origin}",
                )
            )
            continue
        seen_raw[(r.type_url, r.name)] = r
    return Mesh(tuple(services), checked, tuple(rules), tuple(seen_raw.values()))


def mesh_sorted(virtual: list[VirtualService]) -> list[VirtualService]:
    """Virtual services in key order (deterministic checks and messages)."""
    return sorted(virtual, key=lambda v: v.key)


def _at(origin: Origin, field: str, message: str, severity: Severity = Severity.ERROR) -> Problem:
    return Problem(origin.path, origin.line, field, message, severity)


def _check_hosts(services: list[Service], problems: list[Problem]) -> None:
    owners: dict[str, Service] = {}
    for svc in sorted(services, key=lambda s: s.key):
        for i, host in enumerate((svc.fqdn, *svc.hosts)):
            other = owners.get(host)
            if other is not None and other.key != svc.key:
                problems.append(
                    _at(svc.origin, f"hosts[{i - 1}]" if i else "name",
                        f"host {host!r} is already a name of {other.key} ({other.origin})")
                )  # fmt: skip
            owners.setdefault(host, svc)


def _check_destination_rules(mesh: Mesh, problems: list[Problem]) -> None:
    claimed: dict[ResourceKey, DestinationRule] = {}
    for rule in mesh.destination_rules:
        svc = mesh.service(rule.host, rule.namespace)
        if svc is None:
            problems.append(
                _at(rule.origin, "host",
                    f"no service named {rule.host!r}: rule ignored until one is defined",
                    Severity.WARNING)
            )  # fmt: skip
            continue
        other = claimed.get(svc.key)
        if other is not None:
            problems.append(
                _at(rule.origin, "host",
                    f"{svc.key} already has DestinationRule {other.name!r} ({other.origin}); "
                    "merge them into one")
            )  # fmt: skip
            continue
        claimed[svc.key] = rule


def _applies_to_mesh(vs: VirtualService) -> bool:
    return not vs.gateways or "mesh" in vs.gateways


def _check_virtual_service(
    mesh: Mesh, vs: VirtualService, problems: list[Problem]
) -> VirtualService:
    """Check a VirtualService's references; returns it with destination ports filled in
    where the destination service has a single port."""
    for i, host in enumerate(vs.hosts):
        if "*" in host:
            continue
        if mesh.service(host, vs.namespace) is None:
            problems.append(
                _at(vs.origin, f"hosts[{i}]",
                    f"no service named {host!r}: this host is ignored until one is defined",
                    Severity.WARNING)
            )  # fmt: skip
    routes = []
    for i, http in enumerate(vs.http):
        destinations = []
        for j, rd in enumerate(http.route):
            field = f"http[{i}].route[{j}].destination"
            dest = rd.destination
            svc = mesh.service(dest.host, vs.namespace)
            if svc is None:
                # A rule only gateways use is inert until gateways are implemented.
                severity = Severity.ERROR if _applies_to_mesh(vs) else Severity.WARNING
                problems.append(
                    _at(vs.origin, f"{field}.host", f"no service named {dest.host!r}", severity)
                )
                destinations.append(rd)
                continue
            if dest.port and svc.port(dest.port) is None:
                numbers = ", ".join(str(p.number) for p in svc.ports)
                problems.append(
                    _at(vs.origin, f"{field}.port.number",
                        f"{svc.key} has no port {dest.port} (ports: {numbers})")
                )  # fmt: skip
            elif not dest.port and len(svc.ports) == 1:
                dest = dataclasses.replace(dest, port=svc.ports[0].number)
            elif not dest.port:
                problems.append(
                    _at(vs.origin, f"{field}.port.number",
                        f"is required: {svc.key} has several ports")
                )  # fmt: skip
            if dest.subset:
                rule = mesh.destination_rule(svc)
                if rule is None or rule.subset(dest.subset) is None:
                    where = (
                        f"DestinationRule {rule.name!r} ({rule.origin}) defines "
                        + (", ".join(repr(s.name) for s in rule.subsets) or "no subsets")
                        if rule is not None
                        else "no DestinationRule defines subsets for it"
                    )
                    problems.append(
                        _at(vs.origin, f"{field}.subset",
                            f"subset {dest.subset!r} of {svc.key} is not defined: {where}")
                    )  # fmt: skip
            destinations.append(dataclasses.replace(rd, destination=dest))
        routes.append(dataclasses.replace(http, route=tuple(destinations)))
    return dataclasses.replace(vs, http=tuple(routes))


def _check_vs_overlap(
    mesh: Mesh, virtual: tuple[VirtualService, ...], problems: list[Problem]
) -> None:
    claimed: dict[ResourceKey, VirtualService] = {}
    for vs in virtual:
        if not _applies_to_mesh(vs):
            continue
        for i, host in enumerate(vs.hosts):
            svc = mesh.service(host, vs.namespace)
            if svc is None:
                continue
            other = claimed.get(svc.key)
            if other is not None and other.key != vs.key:
                problems.append(
                    _at(vs.origin, f"hosts[{i}]",
                        f"{svc.key} is already routed by VirtualService {other.name!r} "
                        f"({other.origin}); merge the two rules")
                )  # fmt: skip
                continue
            claimed[svc.key] = vs
