"""Credentials on the proxy's side: reading an xdsd token from its file, and writing
files that hold a credential (a bootstrap with a token, a private key) so that no other
user can read them and no reader ever sees one half-written.

``read_token`` refuses a token file that is empty, larger than ``MAX_TOKEN_BYTES``, or has
whitespace or control characters inside the token (a pasted token broken across lines);
what it says never quotes the token. ``write_private`` writes a file 0600 through a
temporary file in the same directory (created 0600, written, flushed to disk, renamed
over the target), so the target is at any moment either the old file or the whole new
one, and never readable by others, not even for an instant.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from xdsd.errors import XdsdError

#: The largest token file ``read_token`` reads (tokens are a few hundred bytes).
MAX_TOKEN_BYTES = 16 * 1024


class CredentialFileError(XdsdError):
    """A token file that cannot be used, or a credential file that cannot be written;
    the message names the file and never quotes what it holds."""


def read_token(path: str) -> str:
    """The token in ``path``, surrounding whitespace trimmed. Raises CredentialFileError
    when the file cannot be read, is larger than ``MAX_TOKEN_BYTES``, holds no token, or
    holds whitespace or a control character inside it (the token is not quoted)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as e:
        raise CredentialFileError(f"{path}: cannot read the token: {e.strerror}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise CredentialFileError(f"{path}: larger than {MAX_TOKEN_BYTES} bytes: not a token file")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CredentialFileError(f"{path}: not a token (a token is ASCII text)") from None
    if not token:
        raise CredentialFileError(f"{path}: empty: no token in it")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise CredentialFileError(
            f"{path}: whitespace or a control character inside the token "
            "(one token, on one line, is expected)"
        )
    return token


def write_private(path: str | Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, readable by ``mode`` (0600 by default) from the
    first byte: a temporary file beside it is created with that mode, written, flushed to
    disk and renamed over ``path`` (atomic on one file system). Raises
    CredentialFileError naming ``path`` when it cannot be written (the temporary file is
    removed)."""
    target = Path(path)
    directory = target.parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as e:
        raise CredentialFileError(f"{target}: cannot write: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp makes it 0600; other modes are asked for
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise CredentialFileError(f"{target}: cannot write: {e.strerror}") from None
