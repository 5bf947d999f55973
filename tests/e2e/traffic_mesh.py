"""A harness for behaviour tests of traffic rules: real Envoy sidecars configured by xdsd,
programmable upstreams (``tests.e2e.upstreams``), and requests sent through the sidecar.

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
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.certs import CertFiles, TlsSession, client_tls_context
from tests.e2e.upstreams import Reply, TcpEcho, Upstream
from tests.harness import Envoy, Xdsd, free_port, loopback_block, wait_until, write_atomically

#: ``xdsd bootstrap``'s mesh DNS flags: a sidecar given none of them gets ``--no-dns`` (the
#: tests start many sidecars on one host, which would share the default VIP block).
DNS_FLAGS = ("--virtual-addresses", "--dns", "--dns-upstream", "--resolver-config")


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
        source: str = "",
    ) -> Reply:
        """One HTTP/1.1 request to the listener on ``port`` with ``Host: host``; with
        ``tls``, over TLS with SNI ``sni`` (default: ``host`` without port), verifying
        the server against ``cafile`` and presenting client certificate ``cert``; from
        the local address ``source`` when given (a loopback address: the peer address
        the gateway sees)."""
        bind = (source, 0) if source else None
        conn = http.client.HTTPConnection(self.ip, port, timeout=timeout, source_address=bind)
        try:
            if tls:
                raw = socket.create_connection(
                    (self.ip, port), timeout=timeout, source_address=bind
                )
                ctx = client_tls_context(cafile, cert)
                conn.sock = ctx.wrap_socket(raw, server_hostname=sni or host.split(":")[0])
            conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            raw_headers = [(k.lower(), v) for k, v in resp.getheaders()]
            return Reply(resp.status, dict(raw_headers), resp.read(), raw_headers)
        finally:
            conn.close()

    def handshake(
        self,
        port: int,
        sni: str,
        cafile: Path | None,
        cert: CertFiles | None = None,
        timeout: float = 5.0,
    ) -> TlsSession:
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

    def tcp(self, port: int, data: bytes, timeout: float = 5.0, source: str = "") -> bytes:
        """Send ``data`` to the listener on ``port`` (from the local address ``source``
        when given); return the first answer (empty when the gateway closed the
        connection)."""
        bind = (source, 0) if source else None
        with socket.create_connection((self.ip, port), timeout=timeout, source_address=bind) as s:
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
            name,
            host or self.ip(),
            port or self.port,
            labels={**(labels or {}), **label_kw},
            locality=locality,
            tls=tls,
        )
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
        namespace: str = "",
        metadata: dict[str, Any] | None = None,
        envoy_prefix: tuple[str, ...] = (),
    ) -> Sidecar:
        """Start xdsd (once) and a sidecar for a client service ``name`` (its service file
        is written here, on its own address); return it once Envoy is LIVE.
        ``drain_time_s`` shortens how long Envoy drains a removed listener (and keeps its
        routes, and so the clusters they name) from Envoy's default of 600 s.
        ``bootstrap_args`` are more ``xdsd bootstrap`` flags (e.g. ``--xds-tls-ca``).
        ``app_port`` is where the client's own application listens on 127.0.0.1 (its
        service's targetPort; default: a free port nobody listens on), speaking
        ``protocol``; ``namespace`` is the service's and the node's (default: default).
        ``metadata`` is laid over the bootstrap's node metadata (e.g. a
        ``virtual_addresses`` block). ``envoy_prefix`` runs Envoy under a command that
        exec's it (``harness.Envoy``'s ``prefix``)."""
        ip, outbound_ip = self.ip(), self.ip()
        inbound_port = free_port(ip)
        lines = f'kind = "Service"\nname = "{name}"\n'
        if namespace:
            lines += f'namespace = "{namespace}"\n'
        lines += '\n[[ports]]\nname = "http"\n'
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
            sys.executable,
            "-m",
            "xdsd.cli",
            "bootstrap",
            "--service",
            name,
            "--node-id",
            f"{name}-sidecar",
            "--instance-ip",
            ip,
            "--outbound-ip",
            outbound_ip,
            "--xds",
            f"127.0.0.1:{xds_port}",
            "--transport",
            transport,
            "--admin-port",
            str(admin_port),
        ]
        for k, v in (labels or {}).items():
            argv += ["--label", f"{k}={v}"]
        if namespace:
            argv += ["--namespace", namespace]
        if locality:
            argv += ["--locality", locality]
        if not any(flag in DNS_FLAGS for flag in bootstrap_args):
            argv.append("--no-dns")  # many sidecars on one host: no shared VIP block
        argv += bootstrap_args
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        path = self.root / f"envoy-{name}.yaml"
        text = proc.stdout
        if metadata:
            bootstrap = yaml.safe_load(text)
            bootstrap["node"].setdefault("metadata", {}).update(metadata)
            text = json.dumps(bootstrap)  # YAML reads JSON
        path.write_text(text)
        extra = ("--drain-time-s", str(drain_time_s)) if drain_time_s else ()
        envoy = Envoy(path, admin_port, self.root, extra, envoy_prefix)
        self._things.append(envoy)
        envoy.ready()
        sidecar = Sidecar(name, ip, outbound_ip, envoy, self.port, dict(labels or {}), inbound_port)
        self.sidecars[name] = sidecar
        return sidecar

    def start_gateway(
        self,
        name: str,
        labels: dict[str, str],
        *,
        namespace: str = "",
        bootstrap_args: tuple[str, ...] = (),
    ) -> GatewayNode:
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
            sys.executable,
            "-m",
            "xdsd.cli",
            "bootstrap",
            "--service",
            name,
            "--role",
            "gateway",
            "--instance-ip",
            ip,
            "--xds",
            f"127.0.0.1:{self.xdsd.grpc_port}",
            "--admin-port",
            str(admin_port),
        ]
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
