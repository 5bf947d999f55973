"""Certificate files: the bytes of every certificate and key file the rules name.

How this works: on every load (``DirectoryLoader.load``) each file named by a Gateway
server terminating TLS or by a DestinationRule's TLS origination is read again (they are
few and small) and handed to translation in the mesh (``Mesh.certificates``), which turns
them into SDS secrets. Reading them on every load, rather than once when the rule is
parsed, is what makes a file replaced on disk reach the proxies: the mesh then differs,
and the secret's content version changes. A file that cannot be read, or that does not
hold what its field needs (a PEM certificate; a PEM private key for ``privateKey`` and
a Gateway API listener's ``xdsd.dev/private-key`` option), is an error on the line of
the field that names it.

Mesh mutual TLS (``[mesh.mtls]``, ``mesh_certificate_refs``) names its files by path
templates: every file the templates can name is read (a glob with each placeholder as
``*``), since which proxies will connect is not known when loading. Which of them a
proxy needs is decided when its class is translated. A directory on the way that cannot
be listed (or a file that cannot be stat'ed) is an error, not a match missing: the load
is refused rather than published without some proxy's files.

Files are opened without blocking (``O_NONBLOCK``) and read only when ``fstat`` says they
are regular files: a FIFO put in a certificate's place cannot stall the loader.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
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
    files: dict[str, bytes | tuple[str, str] | None] = {}
    problems: list[Problem] = []
    known = cache or {}
    for ref in refs:
        if ref.path not in files:
            cached = known.get(ref.path)
            files[ref.path] = cached if cached is not None else _read(ref.path)
        data = files[ref.path]
        message = fault = ""
        if isinstance(data, tuple):
            message, fault = data
        elif data is None:
            message = f"{ref.path} is larger than {MAX_CERTIFICATE_BYTES} bytes"
        elif ref.field.endswith(("privateKey", "private_key", "private-key")):
            if _KEY_MARK not in data:
                message = f"{ref.path} holds no PEM private key (no '...PRIVATE KEY-----' line)"
        elif _CERTIFICATE_MARK not in data:
            message = f"{ref.path} holds no PEM certificate (no '{_CERTIFICATE_MARK.decode()}')"
        if message:
            problems.append(
                Problem(ref.origin.path, ref.origin.line, ref.field, message, os_error=fault)
            )
            if unusable is not None:
                unusable.add(ref.path)
    dropped = unusable or set()
    loaded = tuple(
        CertificateFile(path, data)
        for path, data in sorted(files.items())
        if isinstance(data, bytes) and path not in dropped
    )
    return loaded, problems


def _read(path: str) -> bytes | tuple[str, str] | None:
    """The bytes of ``path``; why it cannot be read, with the symbol of the OS error
    behind it ("" when none); or None when it is too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        return _unreadable(path, e)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"cannot read {path}: not a regular file", ""
        if st.st_size > MAX_CERTIFICATE_BYTES:
            return None
        chunks = []
        size = 0
        while size <= MAX_CERTIFICATE_BYTES and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        return _unreadable(path, e)
    finally:
        os.close(fd)
    if size > MAX_CERTIFICATE_BYTES:
        return None
    return b"".join(chunks)


def _unreadable(path: str, error: OSError) -> tuple[str, str]:
    """Why ``path`` cannot be read, and the OS error's symbol (``EACCES``)."""
    text, name = _os_error(error)
    return f"cannot read {path}: {text}", name


def _os_error(error: OSError) -> tuple[str, str]:
    """``EACCES: Permission denied``: an OS error's symbol and text, and the symbol."""
    name = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
    text = error.strerror or str(error)
    return (f"{name}: {text}" if name else text), name


def mesh_certificate_refs(
    mtls: MeshTLS, problems: list[Problem] | None = None
) -> list[CertificateRef]:
    """The files mesh mutual TLS may need (none when it is off): its CA, and every
    existing file its certificate and key templates can name but the CA, in path order. A
    file both
    templates can name (``{service}.pem`` also names ``web-key.pem``) is taken as the
    one's with the longer fixed part, or as both when they are equally long (one file
    holding the certificate and the key).

    A directory that cannot be listed (or a path that cannot be stat'ed) while matching
    is an error on the template's field, appended to ``problems``; without
    ``problems``, raises OSError. None when xdsd's CA issues the certificates
    (``issued``): no file is needed then."""
    if not mtls.enabled or mtls.issued:
        return []
    refs = [CertificateRef(mtls.ca, "mesh.mtls.ca", mtls.origin)]
    templates = (("certificate", mtls.certificate), ("private_key", mtls.private_key))
    fixed = {field: _fixed_length(template) for field, template in templates}
    patterns = {field: _regex_of(template) for field, template in templates}
    for field, template in templates:
        other = "private_key" if field == "certificate" else "certificate"
        try:
            matched = _matches(_glob_of(template))
        except OSError as e:
            if problems is None:
                raise
            where = e.filename if e.filename is not None else template
            text, fault = _os_error(e)
            message = f"cannot look for the files of {template!r} in {where}: {text}"
            problems.append(
                Problem(
                    mtls.origin.path,
                    mtls.origin.line,
                    f"mesh.mtls.{field}",
                    message,
                    os_error=fault,
                )
            )
            continue
        for path in sorted(matched):
            if path == mtls.ca or (fixed[other] > fixed[field] and patterns[other].fullmatch(path)):
                continue
            refs.append(CertificateRef(path, f"mesh.mtls.{field}", mtls.origin))
    return refs


_MAGIC = re.compile(r"[*?[]")
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


def _matches(pattern: str) -> list[str]:
    """The existing paths ``pattern`` (a glob: ``*``, ``?``, ``[...]``; names starting
    with a dot matched only by a dot) matches, as ``glob.glob`` finds them, except that
    a directory that cannot be listed, or a path that cannot be stat'ed, raises OSError
    instead of matching nothing."""
    head, tail = os.path.split(pattern)
    dirs = _matches(head) if head and head != pattern and _MAGIC.search(head) else [head]
    out: list[str] = []
    for directory in dirs:
        if not _MAGIC.search(tail):
            path = os.path.join(directory, tail)
            if _lexists(path):
                out.append(path)
            continue
        try:
            with os.scandir(directory or os.curdir) as it:
                names = [e.name for e in it]
        except OSError as e:
            if e.errno in _ABSENT:
                continue
            raise
        if not tail.startswith("."):
            names = [n for n in names if not n.startswith(".")]
        out.extend(os.path.join(directory, n) for n in fnmatch.filter(names, tail))
    return out


def _lexists(path: str) -> bool:
    """True when ``path`` exists (a symbolic link counts); raises OSError for a failure
    other than its absence."""
    try:
        os.lstat(path)
    except OSError as e:
        if e.errno in _ABSENT:
            return False
        raise
    return True


def _parts(template: str) -> list[tuple[str, bool]]:
    """``template`` as (literal text, followed by a placeholder) pairs."""
    return [
        (literal, name is not None) for literal, name, _, _ in string.Formatter().parse(template)
    ]


def _glob_of(template: str) -> str:
    """A glob matching what ``template`` gives for any placeholder values."""
    return "".join(_escape(text) + ("*" if hole else "") for text, hole in _parts(template))


def _escape(text: str) -> str:
    """``text`` with every glob character matching only itself (as ``glob.escape``)."""
    return _MAGIC.sub(lambda m: f"[{m.group()}]", text)


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
    return [
        Problem(origin.path, origin.line, field, ISTIO_MUTUAL_WITHOUT_MESH_TLS)
        for field, origin in places
    ]
