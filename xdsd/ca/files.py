"""The files of xdsd's CA: the private state directory, reading a private key file only
when nobody else may read it, and writing what xdsd generates so that a crash never
leaves half of it.

Contracts: ``state_directory`` returns a directory that exists, is ours and is 0700;
``read_private`` returns the bytes of a key file whose mode allows no group or other
access; ``write_private_files`` makes a directory of 0600 files appear whole or not at
all (written in a temporary sibling, synced, then renamed). Every refusal is a
``CAError`` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat

from xdsd.errors import XdsdError

#: The largest certificate or key file read.
MAX_PEM_FILE_BYTES = 1 << 20


class CAError(XdsdError):
    """A file or directory of ``[mesh.ca]`` cannot be used (unreadable, accessible by
    others, not what it should be); the message names it and says why."""


def state_directory(path: str) -> str:
    """The state directory ``path`` (absolute), created 0700 when missing; raises CAError
    when it is not a directory, is not owned by this user or is accessible by group or
    others."""
    return owned_directory(
        path,
        what="the CA state directory",
        forbidden=0o077,
        opened="accessible by group or others",
        fix=": it holds private keys; chmod 700 it",
        follow_symlinks=False,
    )


def owned_directory(
    path: str, *, what: str, forbidden: int, opened: str, fix: str, follow_symlinks: bool
) -> str:
    """``path``, created 0700 when missing; raises CAError (naming ``what``) when it is
    not a directory, is not owned by this user, or has a mode bit of ``forbidden``
    (said as ``opened``, followed by ``fix``). The one check behind the CA's state
    directory and the restart cache's (``xdsd.build_cache.state_directory``)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except OSError as e:
        raise CAError(f"{path}: cannot create {what}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CAError(f"{path}: {what} is not a directory")
    if st.st_uid != os.geteuid():
        raise CAError(
            f"{path}: {what} belongs to uid {st.st_uid}, not to xdsd's user (uid {os.geteuid()})"
        )
    if st.st_mode & forbidden:
        raise CAError(f"{path}: {what} is {opened} (mode {stat.S_IMODE(st.st_mode):04o}){fix}")
    return path


def read_file(path: str, what: str) -> bytes:
    """The bytes of the regular file ``path`` (at most ``MAX_PEM_FILE_BYTES``); ``what``
    names it in errors."""
    data, _ = _read(path, what)
    return data


def read_private(path: str, what: str) -> bytes:
    """The bytes of the private key file ``path``; raises CAError when it cannot be read
    or when group or others have any access to it (naming the file and its mode)."""
    data, mode = _read(path, what)
    if mode & 0o077:
        raise CAError(
            f"{path}: {what} is accessible by group or others (mode {mode:04o}): a private "
            "key must be readable by xdsd's user only; chmod 600 it"
        )
    return data


def _read(path: str, what: str) -> tuple[bytes, int]:
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CAError(f"{path}: {what} is not a regular file")
            data = fh.read(MAX_PEM_FILE_BYTES + 1)
    except OSError as e:
        raise CAError(f"{path}: cannot read {what}: {e.strerror}") from None
    if len(data) > MAX_PEM_FILE_BYTES:
        raise CAError(f"{path}: {what} is larger than {MAX_PEM_FILE_BYTES} bytes")
    return data, stat.S_IMODE(st.st_mode)


def write_private_files(directory: str, files: dict[str, bytes]) -> bool:
    """Create ``directory`` (whose parent is a state directory) holding ``files`` (name →
    bytes), each 0600, atomically: a reader sees all of them or no directory. Returns
    False when another process created it first (its files are then the ones to use).
    Raises CAError when it cannot be written."""
    parent, name = os.path.split(directory)
    temporary = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(6)}")
    try:
        os.mkdir(temporary, 0o700)
        for file_name, data in files.items():
            _write_synced(os.path.join(temporary, file_name), data)
        _sync_directory(temporary)
        try:
            os.rename(temporary, directory)
        except OSError:
            if os.path.isdir(directory):
                return False
            raise
        _sync_directory(parent)
        return True
    except OSError as e:
        raise CAError(f"{directory}: cannot write the CA's files: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(temporary)


def write_private_file(path: str, data: bytes) -> bool:
    """Create the 0600 file ``path`` holding ``data`` atomically (written aside, synced,
    then linked in place). Returns False when it already existed (written by another
    process first). Raises CAError when it cannot be written."""
    parent, name = os.path.split(path)
    temporary = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(6)}")
    try:
        _write_synced(temporary, data)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        _sync_directory(parent)
        return True
    except OSError as e:
        raise CAError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _write_synced(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
