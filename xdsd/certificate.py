"""``xdsd certificate``: a proxyless gRPC application's mesh certificate, from the running
daemon, kept in a directory gRPC's ``file_watcher`` provider reads.

How this works: a fresh ECDSA P-256 key pair is made here (the private key never leaves
this host), a certificate request for it is sent to the daemon's signing method
(``xdsd.transports.signing``) on its xDS gRPC port with the token in ``authorization:
Bearer`` metadata, and the answer is checked (the certificate is for this key and
carries a SPIFFE id) before anything is written.

The directory: ``DIR/cert.pem`` (the chain, leaf first), ``DIR/key.pem`` (0600) and
``DIR/ca.pem`` (the trust bundle) are symbolic links into ``DIR/..data``, itself a link to
the current version's directory ``DIR/.xdsd-*`` (0700). A renewal writes a whole new
version directory (key first, then certificate and bundle, each file flushed to disk),
then replaces ``..data`` with one rename: every path switches to the new pair at the
same instant, so a reader never finds a key of one version beside a certificate of
another unless it read one file before the switch and the other after it. gRPC's
``file_watcher`` guards against exactly that: it compares both files' modification times
before and after reading and reads again when they changed, and the new version's files
are always newer than the old one's. Renaming the files one after the other could not
promise this (a reader between the two renames sees a mismatched pair that did not
change while it read). The version before the current one is kept (a reader that
resolved its links just before the switch can still open it); older ones are removed.

``--renew-before D``: when ``DIR`` already holds a certificate for the same identity that
matches its key and is valid for more than ``D``, the daemon is only asked what it
trusts and signs with now (a *check*: the signing method without a CSR; a token
verification, nothing signed). When ``ca.pem`` is the daemon's bundle and the
certificate was issued by its signing authority, nothing is done (exit 0); otherwise —
the CA is being rotated — the certificate is renewed at once, so ``ca.pem`` gains a new
authority as soon as the daemon trusts it and the certificate is re-issued as soon as
another authority signs. A systemd timer can run the command every few minutes: only
checks and the needed renewals reach the daemon. A daemon that cannot be reached for
that check (stopped, restarting, shutting down) leaves the still-valid certificate as it
is, with one line on stderr, and exits 0: the next run checks again.

Exit codes: 0 written (or nothing to do), 1 refused by the daemon, unreachable when a
certificate is needed, or a file that cannot be used (one line on stderr saying which),
2 wrong usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import ssl
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import struct_pb2

from xdsd.credentials import read_token, write_private
from xdsd.errors import UsageError, XdsdError
from xdsd.transports.identity import AUTHORIZATION
from xdsd.transports.signing import SIGN_METHOD

#: The files of the directory, its link to the current version, and the versions' prefix.
CERTIFICATE_FILE = "cert.pem"
KEY_FILE = "key.pem"
BUNDLE_FILE = "ca.pem"
DATA_LINK = "..data"
VERSION_PREFIX = ".xdsd-"
#: How long the daemon gets to answer.
CALL_TIMEOUT_SECONDS = 30.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CertificateError(XdsdError):
    """The daemon refused or could not be reached, or a file cannot be used: one line,
    never quoting the token or the key."""


class Unreachable(CertificateError):
    """The daemon could not be reached (or is shutting down): no answer, not a refusal."""


@dataclass(frozen=True, slots=True)
class Current:
    """What the daemon trusts and signs with now (its answer to a check): its bundle,
    and its signing authority's certificate (first) with the chain above it (PEM)."""

    bundle_pem: bytes
    signer_pem: bytes


@dataclass(frozen=True, slots=True)
class Issued:
    """What the daemon answered: the chain and bundle (PEM), the SPIFFE id and expiry."""

    chain_pem: bytes
    bundle_pem: bytes
    spiffe_id: str
    not_after: datetime


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``1d``, ``1h30m`` or plain seconds; raises UsageError."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise UsageError(
                f"--renew-before wants a duration like 12h or 30m (got {text!r})"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 <= seconds <= 10 * 365 * 86400:
        raise UsageError(f"--renew-before {text!r}: not between 0 and ten years")
    return timedelta(seconds=seconds)


def run(args: argparse.Namespace) -> int:
    """``xdsd certificate`` (see the module docstring)."""
    host, _, port_text = args.xds.rpartition(":")
    if not host or not port_text.isdigit():
        raise UsageError(f"--xds wants HOST:PORT (got {args.xds!r})")
    out = Path(args.out)
    renew_before = parse_duration(args.renew_before) if args.renew_before else None
    context = _tls_context(args)
    address = (host.strip("[]"), int(port_text))
    token = read_token(args.token_file)
    if renew_before is not None:
        until = still_valid(out, args.namespace, args.service, renew_before)
        if until is not None:
            try:
                current = _current(asyncio.run(_call(*address, context, args, token, None)))
            except Unreachable as e:
                # still valid for longer than asked: a daemon down for a while (a restart)
                # is no reason to fail the timer; the next run checks again
                print(
                    f"xdsd certificate: {out}: valid until {until.isoformat()}; not checked "
                    f"against the daemon's authority ({e})",
                    file=sys.stderr,
                )
                return 0
            stale = outdated(out, current)
            if stale is None:
                print(f"{out}: valid until {until.isoformat()}: nothing to do")
                return 0
            print(f"{out}: {stale}: renewing")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(key, args.service)
    issued = _issued(asyncio.run(_call(*address, context, args, token, csr)))
    _check_answer(issued, key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_directory(out, key_pem, issued.chain_pem, issued.bundle_pem)
    print(f"{out}: {issued.spiffe_id} valid until {issued.not_after.isoformat()}")
    return 0


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context to reach xdsd with (None: plaintext); UsageError for flags that
    cannot work."""
    if bool(args.xds_tls_cert) != bool(args.xds_tls_key):
        raise UsageError("--xds-tls-cert and --xds-tls-key go together")
    if not (args.xds_tls_ca or args.xds_tls_cert):
        if args.xds_tls_server_name:
            raise UsageError("--xds-tls-server-name needs --xds-tls-ca")
        return None
    try:
        context = ssl.create_default_context(cafile=args.xds_tls_ca)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"--xds-tls-ca {args.xds_tls_ca}: cannot use it: {e}") from None
    # As `xdsd bootstrap --xds-tls-ca`: with a CA, the chain is checked and the name only
    # when --xds-tls-server-name gives one (xdsd is often reached by address).
    context.check_hostname = bool(args.xds_tls_server_name) or not args.xds_tls_ca
    if args.xds_tls_cert:
        try:
            context.load_cert_chain(args.xds_tls_cert, args.xds_tls_key)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(
                f"--xds-tls-cert {args.xds_tls_cert} / --xds-tls-key: cannot use them: {e}"
            ) from None
    context.set_alpn_protocols(["h2"])
    return context


def _csr(key: ec.EllipticCurvePrivateKey, service: str) -> bytes:
    """A PEM certificate request for ``key`` (its names are informative: the daemon
    certifies what the token says)."""
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service[:64])])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def _call(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    args: argparse.Namespace,
    token: str,
    csr: bytes | None,
) -> struct_pb2.Struct:
    """Ask the daemon to sign ``csr`` (None: only check, see ``xdsd.transports.signing``)
    for ``args``' service and namespace; its answer. Raises CertificateError (refused or
    unreachable)."""
    from grpclib.client import Channel, UnaryUnaryMethod
    from grpclib.config import Configuration
    from grpclib.exceptions import GRPCError, StreamTerminatedError

    config = Configuration(ssl_target_name_override=args.xds_tls_server_name or None)
    channel = Channel(host, port, ssl=context, config=config)
    method = UnaryUnaryMethod(channel, SIGN_METHOD, struct_pb2.Struct, struct_pb2.Struct)
    request = struct_pb2.Struct()
    fields = {"namespace": args.namespace, "service": args.service}
    if csr is not None:
        fields["csr"] = csr.decode()
    request.update(fields)
    try:
        response = await method(
            request,
            timeout=CALL_TIMEOUT_SECONDS,
            metadata=[(AUTHORIZATION, f"Bearer {token}")],
        )
    except GRPCError as e:
        said = f"xdsd at {args.xds} refused: {e.status.name}: {e.message or ''}".rstrip(": ")
        if e.status.name == "UNAVAILABLE":
            raise Unreachable(said) from None
        raise CertificateError(said) from None
    except ssl.SSLError as e:
        raise CertificateError(f"cannot reach xdsd at {args.xds}: {e}") from None
    except (TimeoutError, OSError, StreamTerminatedError) as e:
        raise Unreachable(f"cannot reach xdsd at {args.xds}: {e or type(e).__name__}") from None
    finally:
        channel.close()
    return response


def _current(response: struct_pb2.Struct) -> Current:
    """The answer to a check; raises CertificateError when a field is missing or holds
    no PEM certificate."""
    values: list[bytes] = []
    for name in ("ca_bundle", "signer"):
        value = response.fields.get(name)
        if value is None or value.WhichOneof("kind") != "string_value":
            raise CertificateError(f"xdsd's answer has no {name}")
        values.append(value.string_value.encode())
    try:
        for pem in values:
            x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError("xdsd's answer holds no PEM certificate") from None
    return Current(values[0], values[1])


def outdated(directory: Path, current: Current) -> str | None:
    """Why the files of ``directory`` are not current with the daemon's CA (``ca.pem``
    is not its bundle; the certificate was not issued by its signing authority), or
    None when they are."""
    try:
        bundle = (directory / BUNDLE_FILE).read_bytes()
        leaf = x509.load_pem_x509_certificates((directory / CERTIFICATE_FILE).read_bytes())[0]
    except (OSError, ValueError):
        return "the files cannot be read"
    if bundle != current.bundle_pem:
        return "the daemon's trust bundle changed"
    signer = x509.load_pem_x509_certificates(current.signer_pem)[0]
    try:
        leaf.verify_directly_issued_by(signer)
    except (ValueError, TypeError, InvalidSignature):
        return "another authority signs now"
    return None


def _issued(response: struct_pb2.Struct) -> Issued:
    """The answer's fields; raises CertificateError when one is missing."""
    fields = response.fields
    values: dict[str, str] = {}
    for name in ("certificate_chain", "ca_bundle", "spiffe_id", "not_after"):
        value = fields.get(name)
        if value is None or value.WhichOneof("kind") != "string_value":
            raise CertificateError(f"xdsd's answer has no {name}")
        values[name] = value.string_value
    try:
        not_after = datetime.fromisoformat(values["not_after"])
    except ValueError:
        raise CertificateError("xdsd's answer has a not_after that is not a time") from None
    return Issued(
        values["certificate_chain"].encode(),
        values["ca_bundle"].encode(),
        values["spiffe_id"],
        not_after,
    )


def _check_answer(issued: Issued, key: ec.EllipticCurvePrivateKey) -> None:
    """The chain's leaf is for ``key`` and carries the SPIFFE id, the bundle holds
    certificates; raises CertificateError otherwise (nothing is written)."""
    try:
        leaf = x509.load_pem_x509_certificates(issued.chain_pem)[0]
        x509.load_pem_x509_certificates(issued.bundle_pem)
    except ValueError:
        raise CertificateError("xdsd's answer holds no PEM certificate") from None
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise CertificateError("xdsd's certificate is not for the key made here")
    if issued.spiffe_id not in _uris(leaf):
        raise CertificateError(f"xdsd's certificate does not carry {issued.spiffe_id}")


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def still_valid(
    directory: Path, namespace: str, service: str, margin: timedelta
) -> datetime | None:
    """The expiry of the certificate in ``directory`` when it matches its key, names
    ``service`` in ``namespace`` and is valid for more than ``margin`` from now; None
    when it must be renewed (absent, unreadable, mismatched, another identity, too old)."""
    try:
        chain = (directory / CERTIFICATE_FILE).read_bytes()
        key_pem = (directory / KEY_FILE).read_bytes()
        leaf = x509.load_pem_x509_certificates(chain)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (OSError, ValueError, TypeError):
        return None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, spki):
        return None
    if not any(u.endswith(f"/ns/{namespace}/sa/{service}") for u in _uris(leaf)):
        return None
    now = datetime.now(UTC)
    if leaf.not_valid_before_utc > now or leaf.not_valid_after_utc - now <= margin:
        return None
    return leaf.not_valid_after_utc


def write_directory(directory: Path, key_pem: bytes, chain_pem: bytes, bundle_pem: bytes) -> None:
    """Make ``directory``'s files the new version (see the module docstring); raises
    CertificateError naming what cannot be written."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        version = Path(tempfile.mkdtemp(prefix=VERSION_PREFIX, dir=directory))  # 0700
        write_private(version / KEY_FILE, key_pem)
        write_private(version / CERTIFICATE_FILE, chain_pem, mode=0o644)
        write_private(version / BUNDLE_FILE, bundle_pem, mode=0o644)
        _sync(version)
        _link(directory, DATA_LINK, version.name)  # the switch
        for name in (CERTIFICATE_FILE, KEY_FILE, BUNDLE_FILE):
            target = f"{DATA_LINK}/{name}"
            path = directory / name
            if not (path.is_symlink() and os.readlink(path) == target):
                _link(directory, name, target)
        _sync(directory)
    except OSError as e:
        raise CertificateError(f"{directory}: cannot write: {e.strerror or e}") from None
    _prune(directory, keep={version.name, _previous(directory, version.name)})


def _link(directory: Path, name: str, target: str) -> None:
    """Make ``directory/name`` a symbolic link to ``target`` with one rename."""
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, directory / name)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _previous(directory: Path, current: str) -> str:
    """The newest version directory other than ``current`` ("" when none)."""
    versions = [p for p in directory.glob(f"{VERSION_PREFIX}*") if p.is_dir() and p.name != current]
    return max(versions, key=lambda p: p.stat().st_mtime).name if versions else ""


def _prune(directory: Path, keep: set[str]) -> None:
    """Remove the version directories not in ``keep`` (what cannot be removed stays)."""
    for path in directory.glob(f"{VERSION_PREFIX}*"):
        if path.is_dir() and not path.is_symlink() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
