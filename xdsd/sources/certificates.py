"""Certificate files: the bytes of every certificate and key file the rules name.

How this works: on every load (``DirectoryLoader.load``) each file named by a Gateway
server terminating TLS or by a DestinationRule's TLS origination is read again (they are
few and small) and handed to translation in the mesh (``Mesh.certificates``), which turns
them into SDS secrets. Reading them on every load, rather than once when the rule is
parsed, is what makes a file replaced on disk reach the proxies: the mesh then differs,
and the secret's content version changes. A file that cannot be read, or that does not
hold what its field needs (a PEM certificate; a PEM private key for ``privateKey``), is
an error on the line of the field that names it.

Mesh mutual TLS (``[mesh.mtls]``, ``mesh_certificate_refs``) names its files by path
templates: every file the templates can name is read (a glob with each placeholder as
``*``), since which proxies will connect is not known when loading. Which of them a
proxy needs is decided when its class is translated.
"""

from __future__ import annotations

import glob
import re
import string
from collections.abc import Iterable, Mapping

from xdsd.errors import Problem
from xdsd.model import CertificateFile, CertificateRef, Origin
from xdsd.model.mesh_config import ISTIO_MUTUAL_WITHOUT_MESH_TLS, MeshTLS

#: What a PEM file of each kind must hold (a marker line).
_CERTIFICATE_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"
#: The largest certificate file read (a bundle of hundreds of CAs is well under this).
MAX_CERTIFICATE_BYTES = 4 << 20


def read_certificates(
    refs: Iterable[CertificateRef],
    cache: Mapping[str, bytes] | None = None,
    *,
    unusable: set[str] | None = None,
) -> tuple[tuple[CertificateFile, ...], list[Problem]]:
    """The bytes of each file ``refs`` name (each path read once, unless ``cache``
    already has its bytes), and a problem on the naming field for each file that cannot
    be read or does not hold PEM data of its kind. With ``unusable``, the paths of those
    files are added to it and they are left out of the files returned."""
    files: dict[str, bytes | OSError | None] = {}
    problems: list[Problem] = []
    known = cache or {}
    for ref in refs:
        if ref.path not in files:
            cached = known.get(ref.path)
            files[ref.path] = cached if cached is not None else _read(ref.path)
        data = files[ref.path]
        message = ""
        if isinstance(data, OSError):
            message = f"cannot read {ref.path}: {data.strerror or data}"
        elif data is None:
            message = f"{ref.path} is larger than {MAX_CERTIFICATE_BYTES} bytes"
        elif ref.field.endswith(("privateKey", "private_key")):
            if _KEY_MARK not in data:
                message = f"{ref.path} holds no PEM private key (no '...PRIVATE KEY-----' line)"
        elif _CERTIFICATE_MARK not in data:
            message = f"{ref.path} holds no PEM certificate (no '{_CERTIFICATE_MARK.decode()}')"
        if message:
            problems.append(Problem(ref.origin.path, ref.origin.line, ref.field, message))
            if unusable is not None:
                unusable.add(ref.path)
    dropped = unusable or set()
    loaded = tuple(
        CertificateFile(path, data) for path, data in sorted(files.items())
        if isinstance(data, bytes) and path not in dropped
    )  # fmt: skip
    return loaded, problems


def _read(path: str) -> bytes | OSError | None:
    """The bytes of ``path``, the error reading it, or None when it is too large."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CERTIFICATE_BYTES + 1)
    except OSError as e:
        return e
    if len(data) > MAX_CERTIFICATE_BYTES:
        return None
    return data


def mesh_certificate_refs(mtls: MeshTLS) -> list[CertificateRef]:
    """The files mesh mutual TLS may need (none when it is off): its CA, and every
    existing file its certificate and key templates can name but the CA, in path order. A
    file both
    templates can name (``{service}.pem`` also names ``web-key.pem``) is taken as the
    one's with the longer fixed part, or as both when they are equally long (one file
    holding the certificate and the key)."""
    if not mtls.enabled:
        return []
    refs = [CertificateRef(mtls.ca, "mesh.mtls.ca", mtls.origin)]
    templates = (("certificate", mtls.certificate), ("private_key", mtls.private_key))
    fixed = {field: _fixed_length(template) for field, template in templates}
    patterns = {field: _regex_of(template) for field, template in templates}
    for field, template in templates:
        other = "private_key" if field == "certificate" else "certificate"
        for path in sorted(glob.glob(_glob_of(template))):
            if path == mtls.ca or (fixed[other] > fixed[field] and patterns[other].fullmatch(path)):
                continue
            refs.append(CertificateRef(path, f"mesh.mtls.{field}", mtls.origin))
    return refs


def _parts(template: str) -> list[tuple[str, bool]]:
    """``template`` as (literal text, followed by a placeholder) pairs."""
    return [(literal, name is not None)
            for literal, name, _, _ in string.Formatter().parse(template)]  # fmt: skip


def _glob_of(template: str) -> str:
    """A glob matching what ``template`` gives for any placeholder values."""
    return "".join(glob.escape(text) + ("*" if hole else "") for text, hole in _parts(template))


def _regex_of(template: str) -> re.Pattern[str]:
    """The same as ``_glob_of``, as a regular expression (a placeholder spans no ``/``)."""
    return re.compile(
        "".join(re.escape(text) + ("[^/]*" if hole else "") for text, hole in _parts(template))
    )


def _fixed_length(template: str) -> int:
    return sum(len(text) for text, _ in _parts(template))


def istio_mutual_problems(places: Iterable[tuple[str, Origin]]) -> list[Problem]:
    """An error at each (field, origin) where a rule asks for TLS mode ISTIO_MUTUAL:
    what a loader reports while mesh mutual TLS is off, since those certificates do not
    exist then."""
    return [Problem(origin.path, origin.line, field, ISTIO_MUTUAL_WITHOUT_MESH_TLS)
            for field, origin in places]  # fmt: skip
