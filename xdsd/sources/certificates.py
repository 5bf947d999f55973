"""Certificate files: the bytes of every certificate and key file the rules name.

How this works: on every load (``DirectoryLoader.load``) each file named by a Gateway
server terminating TLS or by a DestinationRule's TLS origination is read again (they are
few and small) and handed to translation in the mesh (``Mesh.certificates``), which turns
them into SDS secrets. Reading them on every load, rather than once when the rule is
parsed, is what makes a file replaced on disk reach the proxies: the mesh then differs,
and the secret's content version changes. A file that cannot be read, or that does not
hold what its field needs (a PEM certificate; a PEM private key for ``privateKey``), is
an error on the line of the field that names it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from xdsd.errors import Problem
from xdsd.model import CertificateFile, CertificateRef

#: What a PEM file of each kind must hold (a marker line).
_CERTIFICATE_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"
#: The largest certificate file read (a bundle of hundreds of CAs is well under this).
MAX_CERTIFICATE_BYTES = 4 << 20


def read_certificates(
    refs: Iterable[CertificateRef],
) -> tuple[tuple[CertificateFile, ...], list[Problem]]:
    """The bytes of each file ``refs`` name (each path read once), and a problem on the
    naming field for each file that cannot be read or does not hold PEM data of its
    kind."""
    files: dict[str, bytes | OSError | None] = {}
    problems: list[Problem] = []
    for ref in refs:
        if ref.path not in files:
            files[ref.path] = _read(ref.path)
        data = files[ref.path]
        message = ""
        if isinstance(data, OSError):
            message = f"cannot read {ref.path}: {data.strerror or data}"
        elif data is None:
            message = f"{ref.path} is larger than {MAX_CERTIFICATE_BYTES} bytes"
        elif ref.field.endswith("privateKey"):
            if _KEY_MARK not in data:
                message = f"{ref.path} holds no PEM private key (no '...PRIVATE KEY-----' line)"
        elif _CERTIFICATE_MARK not in data:
            message = f"{ref.path} holds no PEM certificate (no '{_CERTIFICATE_MARK.decode()}')"
        if message:
            problems.append(Problem(ref.origin.path, ref.origin.line, ref.field, message))
    loaded = tuple(
        CertificateFile(path, data) for path, data in sorted(files.items())
        if isinstance(data, bytes)
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


def certificate_directories(refs: Iterable[CertificateRef]) -> frozenset[str]:
    """The directories holding the files ``refs`` name (what to watch for their
    replacement: editors and ``mv`` replace a file by renaming into its directory)."""
    return frozenset(os.path.dirname(ref.path) for ref in refs)
