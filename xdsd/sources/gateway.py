"""Gateway and Sidecar specs → model objects (Istio's networking.istio.io API).

Certificate paths: the loader passes the config directory, against which relative paths
are resolved and every file is checked to exist (as for DestinationRule tls).
"""

from __future__ import annotations

from xdsd.errors import Severity
from xdsd.located import Fields, is_ip
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
from xdsd.sources.destination_rule import certificate_file, certificate_refs, istio_mutual_at
from xdsd.sources.service_entry import parse_entry_port

SERVER_TLS_UNSUPPORTED = (
    "credentialName",
    "credentialNames",
    "verifyCertificateSpki",
    "verifyCertificateHash",
    "tlsCertificates",
    "caCrl",
    "ecdhCurves",
    "insecureSkipVerify",
    "caCertCredentialName",
)
SIDECAR_UNSUPPORTED = ("inboundConnectionPool",)
EGRESS_UNSUPPORTED = ("captureMode",)
INGRESS_UNSUPPORTED = ("captureMode", "tls", "connectionPool")
REFUSED_TLS_MODES = {
    ServerTLSMode.AUTO_PASSTHROUGH: "needs Istio's multi-network SNI naming",
}
#: Istio's TLS protocol names, in order (``TLS_AUTO``: Envoy's default).
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
#: The cipher suite names Envoy's TLS library accepts for TLS 1.0-1.2 (TLS 1.3 suites are
#: not configurable). Istio drops other names with a warning; so does xdsd.
CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-PSK-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-PSK-AES128-CBC-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA",
        "ECDHE-PSK-AES256-CBC-SHA",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "PSK-AES128-CBC-SHA",
        "AES256-SHA",
        "PSK-AES256-CBC-SHA",
        "DES-CBC3-SHA",
    }
)
#: Server protocols that carry plain HTTP (routes by RDS).
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
#: Server protocols that carry TLS (a tls.mode is required).
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
_TERMINATING = (ServerTLSMode.SIMPLE, ServerTLSMode.MUTUAL, ServerTLSMode.OPTIONAL_MUTUAL)


def parse_gateway(
    spec: Fields, name: str, namespace: str, origin: Origin, *, config_dir: str | None = None
) -> Gateway:
    """An Istio Gateway. Each server needs a port (with a name unique in the gateway) and
    at least one host; TLS modes SIMPLE/MUTUAL/OPTIONAL_MUTUAL need certificate files,
    MUTUAL and OPTIONAL_MUTUAL a CA too. With ``config_dir``, certificate paths become
    absolute (relative ones are relative to it) and each file must exist; without it they
    are kept as written and not looked at."""
    selector = spec.labels("selector")
    seen: dict[str, int] = {}
    servers = spec.parse_list("servers", lambda f: _parse_server(f, config_dir, seen))
    if not spec.has("servers"):
        spec.error("servers", "is required: a Gateway needs at least one server")
    spec.finish()
    return Gateway(name, namespace, selector, servers, origin=origin)


def _parse_server(f: Fields, config_dir: str | None, seen: dict[str, int]) -> Server | None:
    """One server; ``seen`` maps the port names of the servers before it to their index."""
    port_f = f.obj("port", required=True)
    port = parse_entry_port(port_f or _empty(f))
    hosts = f.strings("hosts", required=True)
    for i, host in enumerate(hosts):
        ns, sep, rest = host.rpartition("/")
        if (sep and (not ns or "/" in ns)) or not rest:
            f.report.add((*f.path, "hosts", i), "must be HOST or NAMESPACE/HOST (./HOST, */HOST)")
    tls = _parse_server_tls(f.obj("tls"), config_dir)
    bind = f.string("bind")
    if bind and not is_ip(bind):
        f.error("bind", f"must be an IP address (got {bind!r})")
    name = f.string("name")
    f.finish(("defaultEndpoint",))
    if port is None:
        return None
    if port_f is not None:
        if not port.name:
            port_f.error("name", "is required: Istio names a server's routes by it")
        index = f.path[-1]
        if port.name and port.name in seen:
            port_f.error(
                "name",
                f"port names must be unique in a Gateway: {port.name!r} is also the name "
                f"of servers[{seen[port.name]}]",
            )
        elif port.name and isinstance(index, int):
            seen[port.name] = index
        if port.target_port:
            port_f.error("targetPort", "has no effect on a Gateway server: remove it")
    protocol = port.protocol_name
    if protocol in TLS_PROTOCOLS:
        if tls is None or tls.mode is None:
            f.error("tls", f"a {protocol} server needs tls.mode (SIMPLE, MUTUAL or PASSTHROUGH)")
    elif tls is not None and tls.mode is not None:
        f.error("tls", f"a {protocol} server does not speak TLS: use protocol HTTPS or TLS")
    elif tls is not None and protocol not in HTTP_PROTOCOLS:
        f.error("tls", f"a {protocol} server takes no tls settings")
    if tls is not None and tls.https_redirect and protocol not in HTTP_PROTOCOLS:
        f.report.add(
            (*f.path, "tls", "httpsRedirect"),
            "applies only to HTTP servers (as Istio: ignored here)",
            Severity.WARNING,
        )
    return Server(port, hosts, tls, bind, name)


def _empty(f: Fields) -> Fields:
    return Fields(f.report, (*f.path, "port"), {})


def _parse_server_tls(f: Fields | None, config_dir: str | None) -> ServerTLS | None:
    if f is None:
        return None
    redirect = f.boolean("httpsRedirect")
    mode = f.enum("mode", ServerTLSMode, ServerTLSMode.SIMPLE) if f.has("mode") else None
    files = mode in _TERMINATING and config_dir is not None
    cert = _file(f, "serverCertificate", config_dir if files else None)
    key = _file(f, "privateKey", config_dir if files else None)
    ca = _file(f, "caCertificates", config_dir if files else None)
    sans = f.strings("subjectAltNames")
    min_v = _version(f, "minProtocolVersion")
    max_v = _version(f, "maxProtocolVersion")
    ciphers = _ciphers(f)
    f.finish(SERVER_TLS_UNSUPPORTED, "give serverCertificate and privateKey files")
    if mode in REFUSED_TLS_MODES:
        f.error("mode", f"{mode.value} is not supported by xdsd: {REFUSED_TLS_MODES[mode]}")
    mode_at = None
    if mode is ServerTLSMode.ISTIO_MUTUAL:
        mode_at = istio_mutual_at(f, ("serverCertificate", "privateKey", "caCertificates"))
    if mode in _TERMINATING:
        if not cert and not f.has("serverCertificate"):
            f.error("serverCertificate", f"is required for mode {mode.value}")
        if not key and not f.has("privateKey"):
            f.error("privateKey", f"is required for mode {mode.value}")
    if mode in (ServerTLSMode.MUTUAL, ServerTLSMode.OPTIONAL_MUTUAL) and not f.has(
        "caCertificates"
    ):
        f.error("caCertificates", f"is required for mode {mode.value}")
    if mode is ServerTLSMode.PASSTHROUGH and (cert or key or ca):
        f.warn("mode", "PASSTHROUGH does not terminate TLS: the certificate files are ignored")
    if (
        min_v
        and max_v
        and min_v != "TLS_AUTO"
        and max_v != "TLS_AUTO"
        and TLS_VERSIONS.index(min_v) > TLS_VERSIONS.index(max_v)
    ):
        f.error("minProtocolVersion", f"{min_v} is above maxProtocolVersion {max_v}")
    named = (("serverCertificate", cert), ("privateKey", key), ("caCertificates", ca))
    refs = certificate_refs(f, named if files else ())
    return ServerTLS(mode, redirect, cert, key, ca, sans, min_v, max_v, ciphers, refs, mode_at)


def _file(f: Fields, key: str, config_dir: str | None) -> str:
    """A certificate path: checked and made absolute against ``config_dir``, or as
    written when there is none."""
    if config_dir is None:
        return f.string(key)
    return certificate_file(f, key, config_dir)


def _version(f: Fields, key: str) -> str:
    value = f.string(key).upper()
    if value and value not in TLS_VERSIONS:
        f.error(key, f"must be one of {', '.join(TLS_VERSIONS)} (got {value!r})")
        return ""
    return value


def _ciphers(f: Fields) -> tuple[str, ...]:
    """The cipher suites Envoy accepts, in order, each once; others are dropped with a
    warning (Istio's behaviour: Envoy would refuse the whole listener). Names starting
    with another character than a letter or digit (BoringSSL's ``[A|B]`` groups,
    ``-``/``+`` operators) are passed on, as Istio does."""
    kept: list[str] = []
    for i, name in f.items("cipherSuites"):
        if not isinstance(name, str):
            f.report.add((*f.path, "cipherSuites", i), "must be a string")
            continue
        if name in kept:
            f.report.add(
                (*f.path, "cipherSuites", i), f"{name!r} repeats: ignored", Severity.WARNING
            )
        elif name and name[0].isalnum() and name not in CIPHER_SUITES:
            f.report.add(
                (*f.path, "cipherSuites", i),
                f"{name!r} is not a cipher suite Envoy knows: ignored",
                Severity.WARNING,
            )
        elif name:
            kept.append(name)
    return tuple(kept)


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
    if bind and not is_ip(bind):
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
