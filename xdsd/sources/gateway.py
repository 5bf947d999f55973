"""Gateway and Sidecar specs → model objects (Istio's networking.istio.io API).

Certificate paths are kept as written; the loader resolves relative ones against the
config directory and checks that the files exist.
"""

from __future__ import annotations

import ipaddress

from xdsd.model import Origin
from xdsd.model.networking import (
    EgressListener,
    Gateway,
    IngressListener,
    OutboundPolicy,
    Server,
    ServerTLS,
    ServerTLSMode,
    Sidecar,
)
from xdsd.sources.fields import Fields
from xdsd.sources.service_entry import parse_entry_port

SERVER_TLS_UNSUPPORTED = ("credentialName", "credentialNames", "verifyCertificateSpki",
                          "verifyCertificateHash", "tlsCertificates")  # fmt: skip
SIDECAR_UNSUPPORTED = ("inboundConnectionPool",)
EGRESS_UNSUPPORTED = ("captureMode",)
INGRESS_UNSUPPORTED = ("captureMode", "tls", "connectionPool")
REFUSED_TLS_MODES = {
    ServerTLSMode.ISTIO_MUTUAL: "needs Istio's certificate authority; use MUTUAL with files",
    ServerTLSMode.AUTO_PASSTHROUGH: "needs Istio's multi-network SNI naming",
}


def parse_gateway(spec: Fields, name: str, namespace: str, origin: Origin) -> Gateway:
    """An Istio Gateway. Each server needs a port and at least one host; TLS modes
    SIMPLE/MUTUAL need certificate files, MUTUAL a CA too."""
    selector = spec.labels("selector")
    servers = spec.parse_list("servers", _parse_server)
    if not spec.has("servers"):
        spec.error("servers", "is required: a Gateway needs at least one server")
    spec.finish()
    return Gateway(name, namespace, selector, servers, origin=origin)


def _parse_server(f: Fields) -> Server | None:
    port = parse_entry_port(f.obj("port", required=True) or _empty(f))
    hosts = f.strings("hosts", required=True)
    tls = _parse_server_tls(f.obj("tls"))
    bind = f.string("bind")
    name = f.string("name")
    f.finish(("defaultEndpoint",))
    if port is None:
        return None
    if tls is not None and tls.mode is not None and port.protocol_name in ("HTTP", "HTTP2"):
        f.error("tls", f"a {port.protocol_name} server does not speak TLS: use protocol HTTPS")
    if port.protocol_name in ("HTTPS", "TLS") and (tls is None or tls.mode is None):
        f.error(
            "tls", f"a {port.protocol_name} server needs tls.mode (SIMPLE, MUTUAL or PASSTHROUGH)"
        )
    if (
        tls is not None
        and tls.mode is ServerTLSMode.PASSTHROUGH
        and port.protocol_name not in ("HTTPS", "TLS")
    ):
        f.error("tls", "PASSTHROUGH needs protocol TLS or HTTPS")
    return Server(port, hosts, tls, bind, name)


def _empty(f: Fields) -> Fields:
    return Fields(f.report, (*f.path, "port"), {})


def _parse_server_tls(f: Fields | None) -> ServerTLS | None:
    if f is None:
        return None
    redirect = f.boolean("httpsRedirect")
    mode = f.enum("mode", ServerTLSMode, ServerTLSMode.SIMPLE) if f.has("mode") else None
    cert = f.string("serverCertificate")
    key = f.string("privateKey")
    ca = f.string("caCertificates")
    sans = f.strings("subjectAltNames")
    min_v = f.string("minProtocolVersion")
    max_v = f.string("maxProtocolVersion")
    ciphers = f.strings("cipherSuites")
    f.finish(SERVER_TLS_UNSUPPORTED, "give serverCertificate and privateKey files")
    if mode in REFUSED_TLS_MODES:
        f.error("mode", f"{mode.value} is not supported by xdsd: {REFUSED_TLS_MODES[mode]}")
    if mode in (ServerTLSMode.SIMPLE, ServerTLSMode.MUTUAL, ServerTLSMode.OPTIONAL_MUTUAL):
        if not cert:
            f.error("serverCertificate", f"is required for mode {mode.value}")
        if not key:
            f.error("privateKey", f"is required for mode {mode.value}")
    if mode in (ServerTLSMode.MUTUAL, ServerTLSMode.OPTIONAL_MUTUAL) and not ca:
        f.error("caCertificates", f"is required for mode {mode.value}")
    return ServerTLS(mode, redirect, cert, key, ca, sans, min_v, max_v, ciphers)


def parse_sidecar(spec: Fields, name: str, namespace: str, origin: Origin) -> Sidecar:
    """An Istio Sidecar: egress host scoping and explicit listeners, ingress listeners,
    outbound traffic policy. Istio's validation rules: something must be configured; at
    most one egress listener without a port, and it comes last; ports unique among egress
    listeners and among ingress listeners; ``targetPort`` has no meaning here."""
    selector: tuple[tuple[str, str], ...] = ()
    sel = spec.obj("workloadSelector")
    if sel is not None:
        selector = sel.labels("labels")
        sel.finish()
    egress = spec.parse_list("egress", _parse_egress)
    ingress = spec.parse_list("ingress", _parse_ingress)
    policy = None
    otp = spec.obj("outboundTrafficPolicy")
    if otp is not None:
        policy = otp.enum("mode", OutboundPolicy, OutboundPolicy.REGISTRY_ONLY)
        otp.finish(("egressProxy",))
        if policy is OutboundPolicy.ALLOW_ANY:
            otp.warn(
                "mode",
                "ALLOW_ANY needs original-destination capture (iptables), which xdsd's VM "
                "sidecars do not have: a host no service answers to gets no route (404), as "
                "without a policy; REGISTRY_ONLY answers 502",
            )
    spec.finish(SIDECAR_UNSUPPORTED)
    if not spec.has("egress") and not spec.has("ingress") and otp is None:
        spec.error(None, "empty Sidecar: give egress, ingress or outboundTrafficPolicy")
    _check_sidecar_ports(spec, egress, ingress)
    return Sidecar(name, namespace, selector, egress, ingress, policy, origin=origin)


def _check_sidecar_ports(
    spec: Fields, egress: tuple[EgressListener, ...], ingress: tuple[IngressListener, ...]
) -> None:
    for key, parsed in (("egress", egress), ("ingress", ingress)):
        raw = spec.data.get(key)
        if len(parsed) != (len(raw) if isinstance(raw, list) else 0):
            return  # a listener was refused: indexes would not match
    catch_all = [i for i, e in enumerate(egress) if e.port is None]
    if len(catch_all) > 1:
        spec.report.add(
            (*spec.path, "egress", catch_all[1]),
            "only one egress listener may have no port (the catch-all)",
        )
    elif catch_all and catch_all[0] != len(egress) - 1:
        spec.report.add(
            (*spec.path, "egress", catch_all[0]),
            "the egress listener without a port (the catch-all) must be the last one",
        )
    ports = (("egress", [e.port for e in egress]), ("ingress", [i.port for i in ingress]))
    for kind, listed in ports:
        seen: set[int] = set()
        for i, port in enumerate(listed):
            if port is None:
                continue
            if port.number in seen:
                spec.report.add(
                    (*spec.path, kind, i, "port", "number"),
                    f"port {port.number} is used by another {kind} listener",
                )
            seen.add(port.number)
            if port.target_port:
                spec.report.add(
                    (*spec.path, kind, i, "port", "targetPort"),
                    "has no meaning on a Sidecar listener (Istio refuses it too)",
                )


def _parse_egress(f: Fields) -> EgressListener | None:
    hosts = f.strings("hosts", required=True)
    for i, host in enumerate(hosts):
        ns, sep, rest = host.partition("/")
        if not sep or not ns or not rest:
            f.report.add(
                (*f.path, "hosts", i), f"must be namespace/host, e.g. ./{host} or */{host}"
            )
    port_f = f.obj("port")
    port = parse_entry_port(port_f) if port_f is not None else None
    bind = f.string("bind")
    if bind and not _is_ip(bind):
        f.error("bind", f"must be an IP address (got {bind!r})")
    if bind and port is None and port_f is None:
        f.error("bind", "needs a port: a listener without port is the catch-all")
    f.finish(EGRESS_UNSUPPORTED)
    return EgressListener(hosts, port, bind)


def _parse_ingress(f: Fields) -> IngressListener | None:
    port = parse_entry_port(f.obj("port", required=True) or _empty(f))
    default = f.string("defaultEndpoint")
    if default:
        host, sep, number = default.rpartition(":")
        if host == "0.0.0.0":
            f.error(
                "defaultEndpoint",
                "0.0.0.0:PORT (the instance address) is not supported: xdsd's inbound "
                "listener binds instance_ip itself; let the application listen on "
                "127.0.0.1:PORT and write that",
            )
        elif host != "127.0.0.1" or not sep or not number.isdigit() or not 0 < int(number) < 65536:
            f.error("defaultEndpoint", f"must be 127.0.0.1:PORT (got {default!r})")
    bind = f.string("bind")
    if bind:
        f.error("bind", "is not supported: inbound listeners bind the node's instance_ip")
    f.finish(INGRESS_UNSUPPORTED)
    if port is None:
        return None
    return IngressListener(port, default, bind)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
