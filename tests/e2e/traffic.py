"""A harness for behaviour tests of traffic rules: real Envoy sidecars configured by xdsd,
programmable upstreams, and requests sent through the sidecar.

A ``TrafficMesh`` owns a loopback block (``127.A.B.x``), a config directory, the upstream
servers, xdsd and one or more client sidecars. Upstreams all listen on one shared port
number, each on its own address, so the services of a test share one outbound listener and
are told apart by ``Host`` (as a caller would). Typical use::

    mesh = TrafficMesh(tmp_path)
    a, b = mesh.upstream("a", version="v1"), mesh.upstream("b", version="v2")
    mesh.service("echo", [a, b])
    mesh.rule("echo", VS_YAML)
    client = mesh.start()                      # xdsd + the "client" sidecar
    reply = client.request("echo", "/x", headers={"x-echo-status": "503"})

Upstreams answer every method with JSON naming themselves and echoing the request (method,
path, headers, body); request headers steer one answer (``x-echo-status``,
``x-echo-delay-ms``) and attributes steer all of them (``status``, ``delay``,
``fail_next``), so each rule's effect can be read from what the client and the upstream saw.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import http.server
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import Envoy, Xdsd, free_port, loopback_block, wait_until


@dataclass
class Seen:
    """One request as an upstream received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    #: Every header line as received, in order (repeated names kept).
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Reply:
    """One answer as the client received it (header names lower-cased)."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: Every header line as received, in order (repeated names kept).
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def backend(self) -> str:
        """The upstream that answered ("" when Envoy answered itself)."""
        return self.headers.get("x-backend", "")

    def json(self) -> Any:
        return json.loads(self.body)


class Upstream:
    """An HTTP/1.1 server on ``host:port`` (TLS when ``tls`` is given).

    Every answer carries ``X-Backend: name`` and a JSON body echoing the request. Steering:
    request header ``x-echo-status: N`` answers N, ``x-echo-delay-ms: N`` waits first,
    ``x-echo-header: NAME=VALUE`` (repeatable) adds that response header; the
    attributes ``status`` and ``delay`` do the same for every request, and ``fail_next = N``
    answers the next N requests with 503. ``labels`` and ``locality`` are what the service
    file gives its endpoint.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        labels: dict[str, str] | None = None,
        locality: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.labels = labels or {}
        self.locality = locality
        self.status = 200
        self.delay = 0.0
        self.fail_next = 0
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                raw = [(k.lower(), v) for k, v in self.headers.items()]
                with upstream._lock:
                    upstream.seen.append(Seen(self.command, self.path, headers, body, raw))
                    status = upstream.status
                    if upstream.fail_next > 0:
                        upstream.fail_next -= 1
                        status = 503
                delay = upstream.delay + int(headers.get("x-echo-delay-ms", "0")) / 1000
                if delay:
                    time.sleep(delay)
                status = int(headers.get("x-echo-status", status))
                payload = json.dumps(
                    {
                        "backend": upstream.name,
                        "method": self.command,
                        "path": self.path,
                        "headers": headers,
                        "body": body.decode(errors="replace"),
                    }
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Backend", upstream.name)
                for line in self.headers.get_all("x-echo-header") or ():
                    name, _, value = line.partition("=")
                    self.send_header(name.strip(), value.strip())
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return len(self.seen)

    def reset(self) -> None:
        """Forget what was seen and go back to answering 200 at once."""
        with self._lock:
            self.seen.clear()
            self.status, self.delay, self.fail_next = 200, 0.0, 0

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpEcho:
    """A TCP server that answers each chunk it reads with ``name:`` + the chunk; with
    ``tls``, it first completes a TLS handshake as that server context (and echoes what
    it reads inside TLS)."""

    def __init__(
        self, name: str, host: str, port: int, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.labels: dict[str, str] = {}
        self.locality = ""
        prefix = f"{name}:".encode()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                if tls is not None:
                    try:
                        conn = tls.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                while data := conn.recv(65536):
                    conn.sendall(prefix + data)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.host, self.port = host, int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class CertFiles:
    """PEM files of one certificate: ``cert`` (leaf), ``key``, and ``ca`` (its issuer)."""

    cert: Path
    key: Path
    ca: Path


class CertAuthority:
    """A throwaway CA in ``directory`` issuing leaf certificates for tests."""

    def __init__(self, directory: Path, name: str = "xdsd test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        dns_names: Iterable[str] = (),
        uris: Iterable[str] = (),
        *,
        directory: Path | None = None,
    ) -> CertFiles:
        """A leaf certificate for ``name`` with these DNS and URI SANs (server and client
        use), written as ``NAME.pem`` and ``NAME-key.pem`` (in ``directory``, default the
        CA's)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        where = directory or self.directory
        where.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = where / f"{name}.pem", where / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return CertFiles(cert_path, key_path, self.ca_path)

    def server_context(
        self, files: CertFiles, *, require_client_cert: bool = False
    ) -> ssl.SSLContext:
        """A server-side TLS context presenting ``files``, optionally requiring a client
        certificate issued by this CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files.cert, files.key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca_path)
        return ctx


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` as careful tools do: a dot temp file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Sidecar:
    """A client's real Envoy: requests go to ``outbound_ip:port`` with a Host header."""

    name: str
    ip: str
    outbound_ip: str
    envoy: Envoy
    default_port: int
    labels: dict[str, str] = field(default_factory=dict)
    #: The port of the client's own service (its inbound listener, on ``ip``).
    inbound_port: int = 0

    def request(
        self,
        host: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        port: int = 0,
        timeout: float = 10.0,
        address: str = "",
    ) -> Reply:
        """One HTTP/1.1 request through this sidecar's outbound listener on ``port`` (the
        mesh's shared port by default), ``Host: host``; to another of its listeners with
        ``address`` (e.g. an explicit egress listener's bind address, or ``ip`` for the
        inbound listener)."""
        conn = http.client.HTTPConnection(
            address or self.outbound_ip, port or self.default_port, timeout=timeout
        )
        try:
            conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            raw = [(k.lower(), v) for k, v in resp.getheaders()]
            return Reply(resp.status, dict(raw), resp.read(), raw)
        finally:
            conn.close()

    def tcp(self, port: int, data: bytes, timeout: float = 5.0) -> bytes:
        """Send ``data`` to the outbound TCP listener on ``port``; return the first answer."""
        with socket.create_connection((self.outbound_ip, port), timeout=timeout) as s:
            s.sendall(data)
            return s.recv(65536)

    def tls(
        self,
        port: int,
        data: bytes,
        server_hostname: str,
        cafile: Path | None,
        timeout: float = 5.0,
    ) -> tuple[bytes, dict[str, Any]]:
        """Open TLS through the outbound listener on ``port`` with SNI ``server_hostname``,
        verifying the server against ``cafile`` and that name (no verification when
        ``cafile`` is None); send ``data`` and return the first answer and the certificate
        the server presented (``ssl.getpeercert()``, empty without verification)."""
        if cafile is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=str(cafile))
        with (
            socket.create_connection((self.outbound_ip, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=server_hostname) as s,
        ):
            s.sendall(data)
            return s.recv(65536), s.getpeercert() or {}

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Wait until ``check()`` holds (exceptions count as not yet)."""

        def attempt() -> bool:
            try:
                return check()
            except (OSError, http.client.HTTPException, ValueError):
                return False

        wait_until(attempt, timeout=timeout, what=what)

    def stats(self) -> dict[str, int]:
        return self.envoy.stats()


@dataclass
class TlsSession:
    """What a TLS client saw of a handshake: protocol version, cipher suite name, and
    the server's certificate (``ssl.getpeercert()``, empty without verification)."""

    version: str
    cipher: str
    peer: dict[str, Any]


def client_tls_context(cafile: Path | None, cert: CertFiles | None = None) -> ssl.SSLContext:
    """A client TLS context verifying the server against ``cafile`` (no verification
    when None), presenting ``cert`` when given."""
    if cafile is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


@dataclass
class GatewayNode:
    """A gateway's real Envoy: requests go to its listeners on ``ip:PORT`` (the Gateway
    servers' ports), over TLS with a chosen SNI when asked."""

    name: str
    ip: str
    envoy: Envoy
    labels: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        port: int,
        host: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        tls: bool = False,
        sni: str | None = None,
        cafile: Path | None = None,
        cert: CertFiles | None = None,
        timeout: float = 10.0,
    ) -> Reply:
        """One HTTP/1.1 request to the listener on ``port`` with ``Host: host``; with
        ``tls``, over TLS with SNI ``sni`` (default: ``host`` without port), verifying
        the server against ``cafile`` and presenting client certificate ``cert``."""
        conn = http.client.HTTPConnection(self.ip, port, timeout=timeout)
        try:
            if tls:
                raw = socket.create_connection((self.ip, port), timeout=timeout)
                ctx = client_tls_context(cafile, cert)
                conn.sock = ctx.wrap_socket(raw, server_hostname=sni or host.split(":")[0])
            conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            raw_headers = [(k.lower(), v) for k, v in resp.getheaders()]
            return Reply(resp.status, dict(raw_headers), resp.read(), raw_headers)
        finally:
            conn.close()

    def handshake(
        self, port: int, sni: str, cafile: Path | None, cert: CertFiles | None = None,
        timeout: float = 5.0,
    ) -> TlsSession:  # fmt: skip
        """Complete a TLS handshake with the listener on ``port`` (SNI ``sni``) and
        report what was negotiated."""
        ctx = client_tls_context(cafile, cert)
        with (
            socket.create_connection((self.ip, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as s,
        ):
            cipher = s.cipher()
            return TlsSession(s.version() or "", cipher[0] if cipher else "", s.getpeercert() or {})

    def tls(
        self, port: int, data: bytes, sni: str, cafile: Path | None, timeout: float = 5.0
    ) -> tuple[bytes, dict[str, Any]]:
        """Open TLS to the listener on ``port`` with SNI ``sni`` (verified against
        ``cafile`` and that name), send ``data``; return the first answer and the
        certificate the server presented."""
        ctx = client_tls_context(cafile)
        with (
            socket.create_connection((self.ip, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as s,
        ):
            s.sendall(data)
            return s.recv(65536), s.getpeercert() or {}

    def tcp(self, port: int, data: bytes, timeout: float = 5.0) -> bytes:
        """Send ``data`` to the listener on ``port``; return the first answer."""
        with socket.create_connection((self.ip, port), timeout=timeout) as s:
            s.sendall(data)
            return s.recv(65536)

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Wait until ``check()`` holds (exceptions count as not yet)."""

        def attempt() -> bool:
            try:
                return check()
            except (OSError, http.client.HTTPException, ValueError):
                return False

        wait_until(attempt, timeout=timeout, what=what)


class TrafficMesh:
    """Upstreams, service and rule files, xdsd and client sidecars of one test (or module).

    Call ``stop()`` (or use it as a context manager) to stop everything it started.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.block = loopback_block()
        self._next_ip = 10
        self.config = root / "config"
        (self.config / "services").mkdir(parents=True, exist_ok=True)
        (self.config / "rules").mkdir(exist_ok=True)
        self.port = free_port(self.ip(0))
        self._things: list[Any] = []
        self.sidecars: dict[str, Sidecar] = {}
        self.xdsd: Xdsd | None = None
        #: More ``xdsd serve`` arguments (e.g. ``--settings FILE``), for the first start.
        self.xdsd_args: list[str] = []
        self._gateway_ips: dict[str, str] = {}

    def __enter__(self) -> TrafficMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ip(self, n: int | None = None) -> str:
        """Address ``n`` of this mesh's block, or the next unused one."""
        if n is None:
            n = self._next_ip
            self._next_ip += 1
        return f"{self.block}.{n}"

    def upstream(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        locality: str = "",
        tls: ssl.SSLContext | None = None,
        port: int = 0,
        host: str = "",
        **label_kw: str,
    ) -> Upstream:
        """A new HTTP upstream on its own address and the shared port (or on ``host`` and
        ``port``, e.g. an application behind a sidecar on 127.0.0.1)."""
        up = Upstream(
            name, host or self.ip(), port or self.port, labels={**(labels or {}), **label_kw},
            locality=locality, tls=tls,
        )  # fmt: skip
        self._things.append(up)
        return up

    def upstream_on(self, name: str, host: str = "127.0.0.1", **labels: str) -> Upstream:
        """A new HTTP upstream on ``host`` (by default 127.0.0.1, the address ``localhost``
        resolves to) and a port the system picks."""
        up = Upstream(name, host, 0, labels=labels)
        self._things.append(up)
        return up

    def tcp_upstream(
        self, name: str, port: int, *, tls: ssl.SSLContext | None = None, **labels: str
    ) -> TcpEcho:
        """A new TCP echo upstream on its own address and ``port`` (speaking TLS as the
        server context ``tls`` when given)."""
        echo = TcpEcho(name, self.ip(), port, tls=tls)
        echo.labels = dict(labels)
        self._things.append(echo)
        return echo

    def service(
        self,
        name: str,
        endpoints: Iterable[Upstream | TcpEcho],
        *,
        port: int = 0,
        protocol: str = "HTTP",
        port_name: str = "",
        namespace: str = "",
        extra: str = "",
    ) -> None:
        """Write ``services/NAME.toml``: one port (the shared one by default) and an endpoint
        per upstream with its labels and locality; ``extra`` holds more top-level TOML
        lines (e.g. ``healthCheck = { path = "/healthz" }``)."""
        number = port or self.port
        lines = [f'kind = "Service"\nname = "{name}"']
        if namespace:
            lines.append(f'namespace = "{namespace}"')
        if extra:
            lines.append(extra.strip())
        lines.append(
            f'[[ports]]\nname = "{port_name or protocol.lower()}"\nnumber = {number}\n'
            f'protocol = "{protocol}"'
        )
        for up in endpoints:
            entry = f'[[endpoints]]\naddress = "{up.host}"'
            if up.labels:
                pairs = ", ".join(f'{k} = "{v}"' for k, v in sorted(up.labels.items()))
                entry += f"\nlabels = {{ {pairs} }}"
            if up.locality:
                entry += f'\nlocality = "{up.locality}"'
            lines.append(entry)
        write_atomically(self.config / "services" / f"{name}.toml", "\n\n".join(lines) + "\n")

    def rule(self, name: str, text: str) -> Path:
        """Write ``rules/NAME.yaml`` atomically (any number of YAML documents)."""
        path = self.config / "rules" / f"{name}.yaml"
        write_atomically(path, text)
        return path

    def start(
        self,
        name: str = "client",
        *,
        labels: dict[str, str] | None = None,
        locality: str = "",
        transport: str = "grpc",
        drain_time_s: int = 0,
        bootstrap_args: tuple[str, ...] = (),
        app_port: int = 0,
        protocol: str = "HTTP",
    ) -> Sidecar:
        """Start xdsd (once) and a sidecar for a client service ``name`` (its service file
        is written here, on its own address); return it once Envoy is LIVE.
        ``drain_time_s`` shortens how long Envoy drains a removed listener (and keeps its
        routes, and so the clusters they name) from Envoy's default of 600 s.
        ``bootstrap_args`` are more ``xdsd bootstrap`` flags (e.g. ``--xds-tls-ca``).
        ``app_port`` is where the client's own application listens on 127.0.0.1 (its
        service's targetPort; default: a free port nobody listens on), speaking
        ``protocol``."""
        ip, outbound_ip = self.ip(), self.ip()
        inbound_port = free_port(ip)
        lines = f'kind = "Service"\nname = "{name}"\n\n[[ports]]\nname = "http"\n'
        target = app_port or free_port()
        lines += f'number = {inbound_port}\nprotocol = "{protocol}"\ntargetPort = {target}\n\n'
        lines += f'[[endpoints]]\naddress = "{ip}"\n'
        if labels:
            pairs = ", ".join(f'{k} = "{v}"' for k, v in sorted(labels.items()))
            lines += f"labels = {{ {pairs} }}\n"
        write_atomically(self.config / "services" / f"{name}.toml", lines)
        if self.xdsd is None:
            self.xdsd = Xdsd(self.config, self.root, extra=self.xdsd_args)
        admin_port = free_port()
        xds_port = self.xdsd.rest_port if transport == "rest" else self.xdsd.grpc_port
        argv = [
            sys.executable, "-m", "xdsd.cli", "bootstrap", "--service", name,
            "--node-id", f"{name}-sidecar", "--instance-ip", ip, "--outbound-ip", outbound_ip,
            "--xds", f"127.0.0.1:{xds_port}", "--transport", transport,
            "--admin-port", str(admin_port),
        ]  # fmt: skip
        for k, v in (labels or {}).items():
            argv += ["--label", f"{k}={v}"]
        if locality:
            argv += ["--locality", locality]
        argv += bootstrap_args
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        path = self.root / f"envoy-{name}.yaml"
        path.write_text(proc.stdout)
        extra = ("--drain-time-s", str(drain_time_s)) if drain_time_s else ()
        envoy = Envoy(path, admin_port, self.root, extra)
        self._things.append(envoy)
        envoy.ready()
        sidecar = Sidecar(name, ip, outbound_ip, envoy, self.port, dict(labels or {}), inbound_port)
        self.sidecars[name] = sidecar
        return sidecar

    def start_gateway(
        self, name: str, labels: dict[str, str], *, namespace: str = "",
        bootstrap_args: tuple[str, ...] = (),
    ) -> GatewayNode:  # fmt: skip
        """Start xdsd (once) and a gateway Envoy for ``name`` with role ``gateway`` and
        ``labels`` (what Gateway selectors match), its listeners bound on an address of
        its own (reserved by ``gateway_ip(name)`` when called before, so that server ports
        can be picked free on it); return it once Envoy is LIVE. ``bootstrap_args`` are
        more ``xdsd bootstrap`` flags (e.g. ``--xds-tls-ca``)."""
        ip = self._gateway_ips.pop(name, None) or self.ip()
        if self.xdsd is None:
            self.xdsd = Xdsd(self.config, self.root, extra=self.xdsd_args)
        admin_port = free_port()
        argv = [
            sys.executable, "-m", "xdsd.cli", "bootstrap", "--service", name,
            "--role", "gateway", "--instance-ip", ip,
            "--xds", f"127.0.0.1:{self.xdsd.grpc_port}", "--admin-port", str(admin_port),
        ]  # fmt: skip
        if namespace:
            argv += ["--namespace", namespace]
        for k, v in labels.items():
            argv += ["--label", f"{k}={v}"]
        argv += bootstrap_args
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        path = self.root / f"envoy-{name}.yaml"
        path.write_text(proc.stdout)
        envoy = Envoy(path, admin_port, self.root)
        self._things.append(envoy)
        envoy.ready()
        return GatewayNode(name, ip, envoy, dict(labels))

    def gateway_ip(self, name: str) -> str:
        """The address the gateway ``name`` will bind (reserved now, so that its server
        ports can be chosen free on it before the Gateway file is written)."""
        ip = self._gateway_ips.get(name) or self.ip()
        self._gateway_ips[name] = ip
        return ip

    def errors(self) -> Any:
        """xdsd's current configuration errors (``/debug/errors``)."""
        assert self.xdsd is not None
        return self.xdsd.admin("/debug/errors")

    def stop(self) -> None:
        for thing in reversed(self._things):
            with contextlib.suppress(Exception):
                thing.stop()
        if self.xdsd is not None:
            with contextlib.suppress(Exception):
                self.xdsd.stop()
