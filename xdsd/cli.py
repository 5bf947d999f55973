"""The ``xdsd`` command: serve | validate | render | bootstrap | certificate | status | token |
demo | capture.

Exit codes: 0 success, 1 the configuration (or the node asked for) cannot work, with
``path:line: field: message`` lines on stderr, or ``serve`` cannot start (an address in use,
a missing config directory: one ``xdsd: error:`` line), 2 wrong usage, 3 ``status`` cannot
reach the admin server, 130 interrupted (Ctrl-C) before ``serve`` or ``demo`` took over the
signal (they then exit 0). No command prints a traceback for a user's mistake.

Every subcommand has a description and an example (``xdsd COMMAND --help``); the global
flags (``--log-level``, ``--log-format``) are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from xdsd.errors import ConfigError, Problem, TranslationError, UsageError, XdsdError
from xdsd.logs import LOG_FORMATS, configure_logging
from xdsd.model import Locality
from xdsd.model.mesh_config import DEFAULT_DNS_PORT, DEFAULT_VIRTUAL_ADDRESSES
from xdsd.plurals import counted
from xdsd.resolver import RESOLVED_DROPIN, RESOLVER_CONFIGS

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "config"
DEFAULT_GRPC = "127.0.0.1:18000"
DEFAULT_REST = "127.0.0.1:18001"
DEFAULT_ADMIN = "127.0.0.1:19001"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level, args.log_format)
    try:
        try:
            result: int = args.run(args)
            return result
        except BaseException:
            # Log lines go out through a writer thread: let the ones already queued
            # out before the error line, so the error is the last thing one reads.
            _flush_logs()
            raise
    except ConfigError as e:
        for p in (*e.problems, *e.warnings):
            print(p, file=sys.stderr)
        print(
            f"error: configuration refused ({counted(len(e.problems), 'error')})", file=sys.stderr
        )
        return 1
    except TranslationError as e:
        for p in e.problems:
            # A problem of the node the command describes has no file to name.
            text = str(p) if p.path != "<node>" else "error: " + str(p).removeprefix("<node>: ")
            print(text, file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"xdsd: error: {e}", file=sys.stderr)
        return 2
    except XdsdError as e:
        print(f"xdsd: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _flush_logs() -> None:
    """Write out every log line already queued (``logs.QueueingHandler.flush``: bounded
    by its close timeout)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


if TYPE_CHECKING:
    from xdsd.sources import LoadResult

    #: What ``add_subparsers`` returns: where each ``_add_*_command`` adds its subcommand.
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdsd",
        description="A file-backed xDS control plane for Envoy and gRPC: it watches a "
        "directory of service\nand traffic-rule files and serves every proxy its "
        "configuration.\n\n`xdsd COMMAND --help` describes each command, with an example.",
        epilog="exit codes: 0 ok, 1 the configuration cannot work (or serve cannot start), "
        "2 wrong usage,\n3 status cannot reach xdsd\n\nexample:\n  xdsd demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_serve_command,
        _add_status_command,
        _add_validate_command,
        _add_render_command,
        _add_bootstrap_command,
        _add_token_command,
        _add_certificate_command,
        _add_demo_command,
        _add_capture_command,
    ):
        add(sub)
    for command in sub.choices.values():
        # after the subcommand too: `xdsd serve --log-level debug`
        _add_global_flags(command, suppress=True)
    return parser


def _add_global_flags(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--log-level`` and ``--log-format``: on the top-level parser with their defaults;
    on a subcommand (``suppress``) without, so that a flag given before the subcommand is
    kept unless the subcommand's own overrides it."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="the least severe log lines written to stderr (default: info)",
        **(default or {"default": "info"}),
    )
    p.add_argument(
        "--log-format",
        choices=list(LOG_FORMATS),
        help="text (readable, the default) or json (one object per line)",
        **(default or {"default": "text"}),
    )


def _command(
    sub: Subcommands, name: str, *, summary: str, description: str, example: str
) -> argparse.ArgumentParser:
    """Add subcommand ``name``: ``summary`` in ``xdsd --help``; ``description`` (kept as
    written) and ``example`` (shell lines) in ``xdsd NAME --help``."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_serve_command(sub: Subcommands) -> None:
    """The ``xdsd serve`` subcommand and its flags."""
    serve = _command(
        sub,
        "serve",
        summary="serve xDS over gRPC and REST, following the config dir",
        description="Run the control plane: load the config directory, serve every proxy its "
        "configuration over\ngRPC ADS (SotW and delta) and REST-JSON, and apply each saved "
        "edit within a second. An edit\nthat does not load is refused and the last good "
        "configuration keeps serving. The admin\nserver has the status page (/), /metrics "
        "and /debug/*. Flags override the settings file.\nSIGTERM or Ctrl-C stops it (exit "
        "0); an address in use or a missing config directory ends it\nat once (exit 1, one "
        "line naming the flag).",
        example="xdsd serve --config-dir config --log-level debug\n"
        "xdsd serve --settings /etc/xdsd/xdsd.toml",
    )
    serve.add_argument(
        "--config-dir",
        default=None,
        metavar="DIR",
        help=f"the directory of service and rule files to serve (default: {DEFAULT_CONFIG_DIR})",
    )
    serve.add_argument(
        "--grpc",
        default=None,
        metavar="HOST:PORT",
        help=f"where proxies reach gRPC xDS (default: {DEFAULT_GRPC})",
    )
    serve.add_argument(
        "--rest",
        default=None,
        metavar="HOST:PORT",
        help=f"where proxies poll REST-JSON xDS (default: {DEFAULT_REST})",
    )
    serve.add_argument(
        "--admin",
        default=None,
        metavar="HOST:PORT",
        help=f"the status page, /metrics and /debug/* (default: {DEFAULT_ADMIN})",
    )
    serve.add_argument(
        "--grpc-impl",
        default=None,
        choices=["grpclib", "grpcio"],
        help="gRPC server implementation (default: grpclib)",
    )
    serve.add_argument("--settings", default=None, metavar="FILE", help="a TOML settings file")
    serve.add_argument(
        "--shutdown-grace",
        default=None,
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long open streams get to end (default: 5)",
    )
    serve.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep the restart cache (the last good build) here and serve from it at start "
        "(default: $STATE_DIRECTORY under systemd, else none)",
    )
    serve.add_argument(
        "--no-cache",
        dest="restart_cache",
        action="store_const",
        const=False,
        default=None,
        help="neither read nor write the restart cache: every start is a cold build",
    )
    serve.add_argument(
        "--workers",
        default=None,
        type=_workers,
        metavar="N",
        help="serving processes sharing the gRPC and REST ports; auto: one per core (default: 1)",
    )
    # A worker of `serve --workers N` (xdsd.workers): its index, the listening sockets
    # it inherits and its admin socket. Not for people.
    serve.add_argument("--worker", default=None, type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-fds", default="", help=argparse.SUPPRESS)
    serve.add_argument("--admin-socket", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-pid", default=None, type=int, help=argparse.SUPPRESS)
    serve.add_argument("--restarted", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)


def _workers(text: str) -> int | str:
    """``--workers``: a positive integer, or ``auto`` (one per core)."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a positive integer or "auto"')
    return int(text)


def _add_status_command(sub: Subcommands) -> None:
    """The ``xdsd status`` subcommand and its flags."""
    status = _command(
        sub,
        "status",
        summary="every connected proxy's sync state (exit 1: some NACK or are stale)",
        description="Ask a running xdsd's admin server which proxies are connected and, for "
        "each type of\nresource, whether the proxy has acknowledged the latest version. "
        "Exit 0 when every proxy is\nin sync, 1 when some rejected (NACK) or have not "
        "acknowledged in time, 3 when the admin\nserver cannot be reached.",
        example=f"xdsd status                          # xdsd serve's default admin, "
        f"{DEFAULT_ADMIN}\nxdsd status --admin 127.0.10.1:19001  # the demo's admin "
        "(its banner prints this)",
    )
    status.add_argument(
        "--admin",
        default=DEFAULT_ADMIN,
        metavar="HOST:PORT",
        help="xdsd's admin address (https://HOST:PORT: over TLS, trusting the system's CAs) "
        f"(default: {DEFAULT_ADMIN})",
    )
    _add_tls_client_flags(status, "admin", "admin (admin_tls)", "admin's")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a version sent and not ACKed for longer is STALE (default: the daemon's "
        "stale_after setting, as on its status page)",
    )
    status.set_defaults(run=_status)


def _add_validate_command(sub: Subcommands) -> None:
    """The ``xdsd validate`` subcommand and its flags."""
    validate = _command(
        sub,
        "validate",
        summary="check a config directory; exit 1 on errors",
        description="Load a config directory the way serve does and report every error as "
        "path:line: field:\nmessage (exit 1), or a one-line summary (exit 0). Run it before "
        "saving into a directory\nxdsd serves, or in CI.",
        example="xdsd validate config\nxdsd validate --strict --settings xdsd.toml config\n"
        "xdsd validate --addresses --settings xdsd.toml config",
    )
    validate.add_argument(
        "dir",
        nargs="?",
        default=None,
        metavar="DIR",
        help=f"the config directory to check (default: {DEFAULT_CONFIG_DIR})",
    )
    # the old spelling, still accepted: `validate DIR` is the one form (see _config_dir)
    validate.add_argument("--config-dir", default=None, help=argparse.SUPPRESS)
    validate.add_argument("--strict", action="store_true", help="treat warnings as errors")
    validate.add_argument(
        "--envoy",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also run every node class's rendered configuration through `envoy --mode "
        "validate` (the Envoy of the [demo] extra, or PATH)",
    )
    validate.add_argument(
        "--settings",
        default=None,
        metavar="FILE",
        help="check against this settings file's [mesh] (e.g. ISTIO_MUTUAL needs [mesh.mtls])",
    )
    _add_registrations_flags(validate)
    validate.add_argument(
        "--addresses",
        action="store_true",
        help="then print every service's virtual address (ADDRESS SERVICE NAMES; * pinned by "
        "its file, the others allocated from --settings' [mesh.dns] block)",
    )
    validate.set_defaults(run=_validate)


def _add_registrations_flags(p: argparse.ArgumentParser) -> None:
    """``--registrations FILE`` and ``--registrations-from ADMIN`` (validate, render)."""
    given = p.add_mutually_exclusive_group()
    given.add_argument(
        "--registrations",
        default=None,
        metavar="FILE",
        help="merge the registered workloads of this file (JSON, as /debug/registrations gives it)",
    )
    given.add_argument(
        "--registrations-from",
        default=None,
        metavar="ADMIN",
        help="merge the registered workloads a running xdsd holds (its admin HOST:PORT or URL)",
    )


def _add_render_command(sub: Subcommands) -> None:
    """The ``xdsd render`` subcommand and its flags."""
    render = _command(
        sub,
        "render",
        summary="print the resources a node would receive",
        description="Print, as proto3 JSON, the listeners, routes, clusters, endpoints and "
        "secrets xdsd would\nsend a proxy of SERVICE with these labels, without running "
        "xdsd. Indented on a terminal,\ncompact into a pipe (--pretty, --compact choose).",
        example="xdsd render --config-dir config --service reviews --label version=v2\n"
        "xdsd render --config-dir config --service productpage --static > envoy.json",
    )
    render.add_argument(
        "--config-dir",
        default=DEFAULT_CONFIG_DIR,
        metavar="DIR",
        help=f"the config directory to render from (default: {DEFAULT_CONFIG_DIR})",
    )
    _add_node_flags(render)
    render.add_argument(
        "--client",
        default="envoy",
        choices=["envoy", "grpc", "mosn"],
        help="what kind of client asks (default: envoy)",
    )
    render.add_argument(
        "--transport",
        default="grpc",
        choices=["grpc", "delta", "rest"],
        help="the config source the node uses (changes how clusters find their endpoints)",
    )
    render.add_argument(
        "--admin-port",
        type=int,
        default=15000,
        metavar="PORT",
        help="with --static: the port of Envoy's own admin interface (default: 15000)",
    )
    render.add_argument(
        "--settings",
        default=None,
        metavar="FILE",
        help="apply the mesh-wide proxy defaults ([mesh]) of this settings file",
    )
    render.add_argument(
        "--static", action="store_true", help="print a complete Envoy config with resources inline"
    )
    _add_registrations_flags(render)
    layout = render.add_mutually_exclusive_group()
    layout.add_argument(
        "--pretty",
        dest="pretty",
        action="store_const",
        const=True,
        default=None,
        help="indent the JSON (the default on a terminal)",
    )
    layout.add_argument(
        "--compact",
        dest="pretty",
        action="store_const",
        const=False,
        help="one line of JSON (the default into a pipe or file)",
    )
    render.set_defaults(run=_render)


def _add_bootstrap_command(sub: Subcommands) -> None:
    """The ``xdsd bootstrap`` subcommand and its flags."""
    boot = _command(
        sub,
        "bootstrap",
        summary="print an Envoy (or gRPC) bootstrap pointing at xdsd",
        description="Print the bootstrap a proxy of SERVICE starts with: who it is (node id, "
        "service, labels)\nand where xdsd is; everything else it then gets from xdsd. With "
        "--config-dir (or a\n--settings file naming config_dir) the service is checked to "
        "exist there (exit 1 if not);\n--instance-ip is checked to be an address of this "
        "host (a warning if not: Envoy could\nnot bind its inbound listeners here).",
        example="xdsd bootstrap --config-dir config --service productpage "
        "--instance-ip 127.0.0.11 \\\n    --admin-port 15011 --output productpage.yaml\n"
        "envoy -c productpage.yaml      # or .venv/bin/envoy",
    )
    boot.add_argument(
        "--config-dir",
        default=None,
        metavar="DIR",
        help="check the service and node against this config directory",
    )
    boot.add_argument(
        "--settings",
        default=None,
        metavar="FILE",
        help="with --config-dir: check with this settings file's [mesh]; with --format "
        "grpc and [mesh.mtls]: give the client its mesh certificates",
    )
    _add_node_flags(boot)
    boot.add_argument(
        "--workload-group",
        default="",
        metavar="GROUP",
        help="register this sidecar into WorkloadGroup GROUP of --namespace while it is "
        "connected (needs --instance-ip: the workload's address)",
    )
    boot.add_argument(
        "--xds",
        action="append",
        default=None,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="where the proxy reaches xdsd: serve's --grpc, or --rest with --transport rest "
        f"(default: {DEFAULT_GRPC}); several xdsd replicas: repeat it or separate with "
        "commas, and Envoy fails over between them",
    )
    boot.add_argument(
        "--transport",
        default="grpc",
        choices=["grpc", "delta", "rest"],
        help="how the proxy asks: gRPC ADS, incremental (delta) gRPC, or REST-JSON polls "
        "(default: grpc)",
    )
    boot.add_argument(
        "--no-vhds",
        dest="vhds",
        action="store_false",
        help="with --transport delta: take every outbound route configuration whole, not "
        "its virtual hosts on demand (VHDS, the default for delta Envoy sidecars)",
    )
    boot.add_argument(
        "--admin-port",
        type=int,
        default=15000,
        metavar="PORT",
        help="the port of Envoy's own admin interface, on 127.0.0.1 (default: 15000)",
    )
    boot.add_argument(
        "--format",
        default="envoy",
        choices=["envoy", "grpc"],
        help="an Envoy bootstrap (YAML) or a proxyless gRPC client's (JSON) (default: envoy)",
    )
    _add_tls_client_flags(boot, "xds", "xdsd", "xdsd's", sni_note=" (Envoy)")
    boot.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="an xdsd token (xdsd token) Envoy sends with every xDS stream; the bootstrap "
        "then holds a credential (use --output)",
    )
    boot.add_argument(
        "--certificate-dir",
        default=None,
        metavar="DIR",
        help="with --format grpc: the directory `xdsd certificate --out` keeps the client's "
        "mesh certificate in (a mesh whose certificates xdsd's CA issues)",
    )
    boot.add_argument(
        "--output",
        default=None,
        metavar="PATH",
        help="write the bootstrap here (atomically; 0600 when it holds a token) instead of stdout",
    )
    _add_dns_flags(boot)
    boot.set_defaults(run=_bootstrap)


def _add_dns_flags(boot: argparse.ArgumentParser) -> None:
    """``xdsd bootstrap``'s mesh DNS flags (an Envoy sidecar's virtual addresses and DNS
    listener, ``xdsd.resolver``)."""
    dns = boot.add_argument_group(
        "mesh DNS (Envoy sidecars)",
        "A sidecar gets a listener on a virtual address per service and a DNS listener "
        'answering mesh names with them\n(docs/operations.md, "Mesh DNS"). The '
        "bootstrap prints, as comments, what to put in the host's resolver.",
    )
    dns.add_argument(
        "--virtual-addresses",
        default=None,
        metavar="CIDR",
        help=f"the IPv4 block of this sidecar's virtual addresses (default: "
        f"{DEFAULT_VIRTUAL_ADDRESSES}); several sidecars on one host need a block each",
    )
    dns.add_argument(
        "--dns",
        default=None,
        metavar="IP:PORT",
        help=f"where its DNS listener binds (default: OUTBOUND_IP:{DEFAULT_DNS_PORT}); "
        "/etc/resolv.conf can name port 53 only",
    )
    dns.add_argument(
        "--dns-upstream",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="a resolver it forwards names outside the mesh to (repeat for more; default: "
        "the nameservers of /etc/resolv.conf now, without the sidecar itself and "
        "without systemd-resolved's stub)",
    )
    dns.add_argument(
        "--no-dns",
        action="store_true",
        help="no virtual addresses and no DNS listener (bootstraps before mesh DNS)",
    )
    dns.add_argument(
        "--resolver-config",
        default=None,
        choices=RESOLVER_CONFIGS,
        help="with --resolver-file: write the host's resolver configuration, an "
        "/etc/resolv.conf or a systemd-resolved drop-in",
    )
    dns.add_argument(
        "--resolver-file",
        default=None,
        metavar="PATH",
        help=f"where --resolver-config writes it (e.g. /etc/resolv.conf, {RESOLVED_DROPIN})",
    )
    boot.add_argument(
        "--capture",
        type=int,
        default=0,
        metavar="PORT",
        help="give the sidecar a capture listener on OUTBOUND_IP:PORT, where the rules of "
        "`xdsd capture` redirect outbound TCP (usually 15002; default: none)",
    )


def _add_certificate_command(sub: Subcommands) -> None:
    """The ``xdsd certificate`` subcommand and its flags (``xdsd.certificate``, imported
    when the command runs: cryptography is ~70 ms of every command's start)."""
    cmd = sub.add_parser(
        "certificate",
        help="get a proxyless gRPC client's mesh certificate from xdsd (key made here)",
        description="Make a private key here, send a certificate request with an xdsd "
        "token to the running\ndaemon, and keep the certificate, key and CA bundle in DIR "
        "(replaced atomically), where a\nproxyless gRPC client's bootstrap (bootstrap "
        "--format grpc --certificate-dir DIR) finds\nthem. The key never leaves this host.",
        epilog="example:\n  xdsd certificate --service reviews --token-file reviews.token "
        "--xds 127.0.0.1:18000 \\\n      --out /var/lib/reviews/certs --renew-before 12h",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--service", required=True, metavar="NAME", help="the service the certificate names"
    )
    cmd.add_argument(
        "--namespace",
        default="default",
        metavar="NS",
        help="the service's namespace (default: default)",
    )
    cmd.add_argument(
        "--token-file", required=True, metavar="FILE", help="an xdsd token for this service"
    )
    cmd.add_argument(
        "--xds",
        default="127.0.0.1:18000",
        metavar="HOST:PORT",
        help="xdsd's gRPC address (serve's --grpc) (default: 127.0.0.1:18000)",
    )
    cmd.add_argument(
        "--xds-tls-ca",
        default=None,
        metavar="FILE",
        help="reach xdsd over TLS, verifying its certificate against this CA (PEM)",
    )
    cmd.add_argument(
        "--xds-tls-cert",
        default=None,
        metavar="FILE",
        help="reach xdsd over TLS, presenting this client certificate (with --xds-tls-key)",
    )
    cmd.add_argument("--xds-tls-key", default=None, metavar="FILE", help="its private key")
    cmd.add_argument(
        "--xds-tls-server-name",
        default=None,
        metavar="NAME",
        help="the DNS SAN xdsd's certificate must carry",
    )
    cmd.add_argument(
        "--out", required=True, metavar="DIR", help="keep cert.pem, key.pem, ca.pem here"
    )
    cmd.add_argument(
        "--renew-before",
        default=None,
        metavar="DURATION",
        help="do nothing while the certificate in DIR is valid for longer (e.g. 12h)",
    )
    cmd.set_defaults(run=_certificate)


def _certificate(args: argparse.Namespace) -> int:
    """``xdsd certificate`` (``xdsd.certificate.run``)."""
    from xdsd.certificate import run

    return run(args)


def _add_capture_command(sub: Subcommands) -> None:
    """The ``xdsd capture`` subcommand and its flags."""
    from xdsd.capture import CHAIN, DEFAULT_CAPTURE_PORT, DEFAULT_PROXY_USER

    capture = _command(
        sub,
        "capture",
        summary="print, apply or remove the iptables rules sending outbound TCP to the sidecar",
        description="Istio's VM capture, made explicit and reversible: iptables rules in the "
        f"nat table, in a chain\nof xdsd's own ({CHAIN}, jumped to from OUTPUT), that "
        "redirect this host's outbound TCP to\nthe sidecar's capture port, except loopback "
        "traffic, the sidecar's own user, xdsd's ports\nand the ports and networks you "
        "exclude. The sidecar must have the same port as node\nmetadata `capture`. ACTION: "
        "print (the default: the shell commands, no root needed),\napply (idempotent), "
        "remove (exactly what apply added), status (exit 0 when applied as\nthe flags say, "
        "1 otherwise). apply, remove and status need root and iptables.",
        example="xdsd capture --proxy-user envoy                 # print the rules\n"
        "sudo xdsd capture apply --proxy-user envoy --exclude-ports 22\n"
        "sudo xdsd capture status --proxy-user envoy --exclude-ports 22\n"
        "sudo xdsd capture remove",
    )
    capture.add_argument(
        "action",
        nargs="?",
        default="print",
        choices=["print", "apply", "remove", "status"],
        help="what to do (default: print)",
    )
    capture.add_argument(
        "--port",
        type=int,
        default=DEFAULT_CAPTURE_PORT,
        help=f"the sidecar's capture port, its node metadata `capture` (default: "
        f"{DEFAULT_CAPTURE_PORT})",
    )
    capture.add_argument(
        "--proxy-user",
        default=DEFAULT_PROXY_USER,
        metavar="USER",
        help="the user the sidecar runs as (a name or uid; not root): its connections are "
        f"not captured (default: {DEFAULT_PROXY_USER})",
    )
    capture.add_argument(
        "--xdsd-ports",
        default=",".join(a.rsplit(":", 1)[1] for a in (DEFAULT_GRPC, DEFAULT_REST, DEFAULT_ADMIN)),
        metavar="PORTS",
        help="xdsd's ports, never captured (so that xdsd stays reachable under "
        "REGISTRY_ONLY) (default: %(default)s)",
    )
    capture.add_argument(
        "--exclude-ports",
        default="",
        metavar="PORTS",
        help="more destination ports never captured, comma-separated (e.g. 22)",
    )
    capture.add_argument(
        "--exclude-cidrs",
        default="",
        metavar="NETWORKS",
        help="destination IPv4 networks never captured, comma-separated (e.g. 169.254.169.254/32)",
    )
    capture.add_argument(
        "--iptables",
        default="",
        metavar="PATH",
        help="the iptables command (default: `iptables` on PATH or in /usr/sbin, the "
        "system's chosen backend)",
    )
    capture.add_argument(
        "--dry-run",
        action="store_true",
        help="apply/remove: print the commands that would change the nat table, change nothing",
    )
    capture.set_defaults(run=_capture)


def _add_demo_command(sub: Subcommands) -> None:
    """The ``xdsd demo`` subcommand and its flags."""
    demo = _command(
        sub,
        "demo",
        summary="run a demo mesh here: xdsd, Envoys, an ingress gateway, small services",
        description="Start a whole mesh on this machine's loopback addresses (127.0.10.x): "
        "xdsd, one Envoy per\nproxy, an ingress gateway and four small services. Once a "
        "request crosses the mesh it\nprints what to try: the status page, `xdsd status "
        "--admin ...`, the canary file to edit.\nCtrl-C stops every process it started "
        "(exit 0); a process that dies stops the rest (exit 1).",
        example="xdsd demo\nxdsd demo --dir /tmp/demo --block 127.0.20\nxdsd demo --api gateway",
    )
    demo.add_argument("--dir", default=None, help="keep config and logs here (default: a temp dir)")
    demo.add_argument(
        "--block",
        default=None,
        metavar="127.A.B",
        help="the loopback block to use (default: 127.0.10)",
    )
    demo.add_argument("--envoy", default=None, metavar="PATH", help="the Envoy binary to run")
    demo.add_argument(
        "--api",
        choices=("istio", "gateway"),
        default="istio",
        help="write the routing files in Istio's API (Gateway, VirtualService) or the "
        "Kubernetes Gateway API (GatewayClass, Gateway, HTTPRoutes; the canary a GAMMA "
        "HTTPRoute)",
    )
    demo.set_defaults(run=_demo)


def _add_token_command(sub: Subcommands) -> None:
    """The ``xdsd token`` subcommand and its flags."""
    token = _command(
        sub,
        "token",
        summary="print a token a proxy of SERVICE gets its mesh certificate with ([mesh.ca])",
        description="Mint a signed token for one service with the key of the settings "
        "file's [mesh.ca]: the token\nalone on stdout, its id and expiry on stderr. A proxy "
        "presents it to get its mesh\ncertificate (bootstrap --token-file, certificate "
        "--token-file).",
        example="xdsd token --settings /etc/xdsd/xdsd.toml --service reviews --ttl 24h "
        "> reviews.token",
    )
    token.add_argument(
        "--service", required=True, metavar="NAME", help="the service the token speaks for"
    )
    token.add_argument(
        "--namespace",
        default="default",
        metavar="NS",
        help="the service's namespace (default: default)",
    )
    token.add_argument(
        "--ttl", default="720h", metavar="DURATION", help='how long it is valid (default: "720h")'
    )
    token.add_argument(
        "--settings",
        default=None,
        metavar="FILE",
        help="xdsd's settings file: its [mesh.ca] names the token key",
    )
    token.set_defaults(run=_token)


def _add_tls_client_flags(
    p: argparse.ArgumentParser, prefix: str, what: str, whose: str, sni_note: str = ""
) -> None:
    """``--PREFIX-tls-ca``, ``-cert``, ``-key`` and ``-server-name``: how a client reaches
    ``what`` over TLS."""
    p.add_argument(
        f"--{prefix}-tls-ca",
        default=None,
        metavar="FILE",
        help=f"reach {what} over TLS, verifying its certificate against this CA (PEM)",
    )
    p.add_argument(
        f"--{prefix}-tls-cert",
        default=None,
        metavar="FILE",
        help=f"reach {what} over TLS, presenting this client certificate (with --{prefix}-tls-key)",
    )
    p.add_argument(f"--{prefix}-tls-key", default=None, metavar="FILE", help="its private key")
    p.add_argument(
        f"--{prefix}-tls-server-name",
        default=None,
        metavar="NAME",
        help=f"the SNI to send and the DNS SAN {whose} certificate must carry{sni_note}",
    )


def _add_node_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--service",
        default=None,
        help="the service this proxy fronts (node.cluster); required but with --gateway, "
        "whose NAME it defaults to",
    )
    p.add_argument(
        "--gateway",
        default=None,
        metavar="NAME",
        help="with --role gateway: be the proxy of the Gateway API Gateway NAME of "
        "--namespace (the label gateway.networking.k8s.io/gateway-name=NAME)",
    )
    p.add_argument(
        "--node-id",
        default=None,
        metavar="ID",
        help="the proxy's node id, unique per proxy (default: SERVICE-sidecar, SERVICE-gateway)",
    )
    p.add_argument(
        "--namespace",
        default="default",
        metavar="NS",
        help="the service's namespace (default: default)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="a label of this workload, as subsets and selectors match (repeat for more)",
    )
    p.add_argument(
        "--role",
        default="sidecar",
        choices=["sidecar", "gateway"],
        help="a sidecar in front of one workload, or a gateway a Gateway selects "
        "(default: sidecar)",
    )
    p.add_argument(
        "--instance-ip",
        default="",
        metavar="IP",
        help="the address inbound listeners bind: one of the host's own (default: the "
        "service's, else 0.0.0.0)",
    )
    p.add_argument(
        "--outbound-ip",
        default="127.0.0.1",
        metavar="IP",
        help="the address outbound listeners bind, where the application calls other "
        "services (default: 127.0.0.1)",
    )
    p.add_argument(
        "--locality",
        default="",
        metavar="R/Z/S",
        help="region/zone/subzone, for locality-aware load balancing (default: none)",
    )


def _config_dir(args: argparse.Namespace) -> str:
    """``validate``'s directory: DIR; the old ``--config-dir`` still works, with a
    warning."""
    given = getattr(args, "dir", None)
    flag = args.config_dir
    if given and flag:
        raise UsageError("give the config directory once, as DIR: xdsd validate DIR")
    if flag:
        print(
            f"warning: validate --config-dir is deprecated: write xdsd validate {flag}",
            file=sys.stderr,
        )
    result: str = given or flag or DEFAULT_CONFIG_DIR
    return result


def _settings(args: argparse.Namespace) -> Any:
    """The settings of ``--settings`` (the defaults without it)."""
    from xdsd.settings import Settings

    settings = getattr(args, "settings", None)
    return Settings.from_file(settings) if settings else Settings()


def _mesh_config(args: argparse.Namespace) -> Any:
    """The ``[mesh]`` defaults of ``--settings`` (the defaults without it)."""
    return _settings(args).mesh


def _require_directory(path: str) -> None:
    """Raise ``XdsdError`` (one line, exit 1) when the config directory ``path`` is missing
    or not a directory: there is no configuration to refuse."""
    if not os.path.exists(path):
        raise XdsdError(
            f"config directory {path} does not exist: give the directory that holds your "
            "service and rule files"
        )
    if not os.path.isdir(path):
        raise XdsdError(f"{path} is not a directory: give the directory that holds the files")


def _registrations(args: argparse.Namespace) -> tuple[Any, ...]:
    """The registrations ``--registrations FILE`` or ``--registrations-from ADMIN``
    give (none without either). Raises XdsdError (one line) when they cannot be read."""
    from xdsd.registry.views import parse_registrations

    path = getattr(args, "registrations", None)
    admin: str = getattr(args, "registrations_from", None) or ""
    if not path and not admin:
        return ()
    try:
        if path:
            with open(path, "rb") as fh:
                raw = fh.read(64 << 20)
        else:
            import urllib.request

            url = admin if "://" in admin else f"http://{admin}"
            url = url.rstrip("/") + "/debug/registrations"
            with urllib.request.urlopen(url, timeout=10) as answer:
                raw = answer.read(64 << 20)
        return parse_registrations(json.loads(raw))
    except (OSError, ValueError) as e:
        raise XdsdError(f"registrations from {path or admin}: {e}") from None


def _load(path: str, args: argparse.Namespace) -> LoadResult:
    from xdsd.sources import DirectoryLoader, load_directory

    _require_directory(path)
    mesh = _mesh_config(args)
    registrations = _registrations(args)
    if registrations:
        loader = DirectoryLoader(path)
        loader.mesh_tls = mesh.mtls
        loader.extension_providers = mesh.extension_providers
        loader.registrations = registrations
        result = loader.load()
    else:
        result = load_directory(
            path, mesh_tls=mesh.mtls, extension_providers=mesh.extension_providers
        )
    for w in result.warnings:
        print(w, file=sys.stderr)
    return result


def _validate(args: argparse.Namespace) -> int:
    from xdsd.sources import DirectoryLoader
    from xdsd.sources.gateway_api.status import condition_line, mesh_conditions, summary
    from xdsd.sources.limits import ParseLimits

    if args.envoy and os.path.isdir(args.envoy) and args.dir is None:
        args.dir, args.envoy = args.envoy, ""  # `validate --envoy DIR`: the default Envoy
    path = _config_dir(args)
    _require_directory(path)
    settings = _settings(args)
    loader = DirectoryLoader(path, limits=ParseLimits.of(settings))
    loader.mesh_tls = settings.mesh.mtls
    loader.extension_providers = settings.mesh.extension_providers
    loader.registrations = _registrations(args)
    result = loader.load()
    if args.strict and result.warnings:
        raise ConfigError([w.as_error() for w in result.warnings])
    for w in result.warnings:
        print(w, file=sys.stderr)
    mesh = result.mesh
    conditions = mesh_conditions(mesh)
    for placed in conditions:
        if not placed.holds:
            print(condition_line(placed), file=sys.stderr)
    dns = settings.mesh.dns
    allocation = None
    if dns.enabled or args.addresses:
        from xdsd.translate.virtual_addresses import allocate_for

        # a block too small for the mesh: TranslationError, the settings' line (exit 1)
        allocation = allocate_for(mesh.services, dns).result
    if args.envoy is not None and not _validate_with_envoy(result, settings.mesh, args.envoy):
        return 1
    print(
        f"{path}: ok: {counted(len(result.files), 'file')}, "
        f"{counted(len(mesh.services), 'service')}, "
        f"{counted(len(mesh.virtual_services), 'virtual service')}, "
        f"{counted(len(mesh.destination_rules), 'destination rule')}, "
        f"{counted(len(mesh.raw_resources), 'raw Envoy resource')}"
        + (f", {counted(len(result.warnings), 'warning')}" if result.warnings else "")
    )
    if conditions:
        print(summary(conditions))
    if args.addresses and allocation is not None:
        from xdsd.translate.address_view import address_rows, address_table

        print()
        for line in address_table(address_rows(mesh.services, allocation, dns)):
            print(line)
        how = "" if dns.enabled else " ([mesh.dns] is off: no sidecar listens on them)"
        blocks = " and ".join(b for b in (dns.virtual_addresses, dns.virtual_addresses_v6) if b)
        print(f"* pinned by its file; the others allocated from {blocks}{how}")
    return 0


def _validate_with_envoy(result: LoadResult, mesh_config: Any, envoy: str) -> bool:
    """``validate --envoy``: every class the directory implies through Envoy; prints
    the classes accepted (stdout) and each rejection against its files (stderr).
    True when Envoy accepted every class."""
    from xdsd.demo.runner import find_envoy
    from xdsd.envoy_validation import validate_classes

    accepted, rejections, unrendered = validate_classes(
        result.mesh, mesh_config, find_envoy(envoy or None)
    )
    for problem in unrendered:
        print(problem, file=sys.stderr)
    for r in rejections:
        how = "" if r.pinned else " (one of these EnvoyFilter patches or raw resources?)"
        for cause in r.causes:
            field = f" {cause.field}:" if cause.field else ""
            print(
                f"{cause.path}:{cause.line}:{field} Envoy rejects the {r.what}{how}: {r.message}",
                file=sys.stderr,
            )
        if not r.causes:
            print(f"error: Envoy rejects the {r.what}: {r.message}", file=sys.stderr)
    if accepted:
        print(
            f"envoy: accepted {counted(len(accepted), 'class', 'classes')}: " + "; ".join(accepted)
        )
    if rejections or unrendered:
        refused = counted(len(rejections) + len(unrendered), "class", "classes")
        print(f"error: Envoy refused {refused}", file=sys.stderr)
        return False
    return True


def _node_class(args: argparse.Namespace, *, client: str, transport: str) -> Any:
    from xdsd.sources.gateway_api.names import GATEWAY_NAME_LABEL
    from xdsd.translate import ClientKind, ConfigSourceKind, NodeClass, Role

    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label wants K=V (got {item!r})")
        labels[key] = value
    if args.gateway is not None:
        if args.role != "gateway":
            raise UsageError("--gateway NAME is for --role gateway")
        if not args.gateway or "/" in args.gateway:
            raise UsageError(
                f"--gateway wants a Gateway's name (its namespace is --namespace), not "
                f"{args.gateway!r}"
            )
        labels[GATEWAY_NAME_LABEL] = args.gateway
        if args.service is None:
            args.service = args.gateway
    if args.service is None:
        raise UsageError("--service NAME is required (or --role gateway --gateway NAME)")
    try:
        locality = Locality.parse(args.locality)
    except ValueError as e:
        raise UsageError(f"--locality: {e}") from None
    sources = {
        "grpc": ConfigSourceKind.ADS,
        "delta": ConfigSourceKind.DELTA,
        "rest": ConfigSourceKind.REST,
        "static": ConfigSourceKind.STATIC,
    }
    return NodeClass(
        service=args.service,
        namespace=args.namespace,
        role=Role(args.role),
        labels=tuple(sorted(labels.items())),
        locality=locality,
        client=ClientKind(client),
        config_source=sources[transport],
        instance_ip=args.instance_ip,
        outbound_ip=args.outbound_ip,
        vhds=transport == "delta" and client == "envoy" and getattr(args, "vhds", False),
    )


def _check_service(result: LoadResult, node: Any) -> None:
    from xdsd.translate import Role
    from xdsd.translate.gateways import selects

    if node.role is Role.GATEWAY:
        if not any(selects(g, node.labels) for g in result.mesh.gateways):
            labels = ", ".join(f"{k}={v}" for k, v in node.labels) or "none"
            print(
                f"warning: --label: no Gateway selects a gateway with labels {labels}: it "
                "gets clusters only (give --label K=V as a Gateway's selector says)",
                file=sys.stderr,
            )
        return
    if result.mesh.service_by_name(node.namespace, node.service) is None:
        print(
            f"warning: --service: no service {node.namespace}/{node.service} in the config: "
            "the proxy gets outbound configuration only",
            file=sys.stderr,
        )


def _render(args: argparse.Namespace) -> int:
    from xdsd.resources import SHORT_NAMES, to_json
    from xdsd.translate import MeshTranslation, render_static

    mesh_config = _mesh_config(args)
    result = _load(args.config_dir, args)
    transport = "static" if args.static else args.transport
    node = _node_class(args, client=args.client, transport=transport)
    _check_service(result, node)
    if args.static:
        config = render_static(
            result.mesh,
            node,
            node_id=args.node_id or f"{args.service}-{args.role}",
            admin_port=args.admin_port,
            mesh_config=mesh_config,
        )
        _print_json(config, pretty=args.pretty)
        return 0
    snapshot = MeshTranslation(result.mesh, mesh_config=mesh_config).snapshot_for(node)
    out: dict[str, Any] = {"versions": {}, "resources": {}}
    for type_url, resources in snapshot.resources.items():
        short = SHORT_NAMES.get(type_url, type_url)
        out["versions"][short] = snapshot.version(type_url)
        out["resources"][short] = [
            {"@type": type_url, **to_json(r.message)} for r in resources.values()
        ]
    _print_json(out, pretty=args.pretty)
    return 0


def _print_json(value: Any, *, pretty: bool | None = None) -> None:
    """Indented with ``pretty`` (by default: when stdout is a terminal); else compact
    (and C-encoded: the fast path, see ``docs/architecture.md``, "Departures")."""
    if pretty is None:
        pretty = sys.stdout.isatty()
    indent = 2 if pretty else None
    sys.stdout.write(json.dumps(value, indent=indent))
    sys.stdout.write("\n")


def _bootstrap(args: argparse.Namespace) -> int:
    from xdsd.credentials import read_token
    from xdsd.translate import MeshTranslation, bootstrap, grpc_bootstrap

    (host, port), *replicas = _xds_addresses(args.xds or [DEFAULT_GRPC])
    port_text = str(port)
    if args.token_file and args.format == "grpc":
        raise UsageError(
            "--token-file is for Envoy: a proxyless gRPC client cannot send a token on its "
            "xDS stream; run `xdsd certificate` with the token and give --certificate-dir"
        )
    if args.token_file and args.transport == "rest":
        raise UsageError(
            "--token-file needs a gRPC transport: REST-JSON polls cannot carry a token; "
            "under [mesh.ca] a REST proxy gets its identity only for its xDS client "
            "certificate (--xds-tls-cert/--xds-tls-key; the daemon needs tls_client_ca), "
            "whose SAN must be its mesh identity or match an authorized_nodes grant"
        )
    if args.certificate_dir and args.format != "grpc":
        raise UsageError(
            "--certificate-dir is for --format grpc (Envoy gets its certificate over SDS)"
        )
    token = read_token(args.token_file) if args.token_file else ""
    client = "grpc" if args.format == "grpc" else "envoy"
    node = _node_class(args, client=client, transport=args.transport)
    node, advice = _mesh_dns(args, node)
    node = _with_capture(args, node)
    kind = "grpc" if client == "grpc" else "gateway" if args.role == "gateway" else "sidecar"
    node_id = args.node_id or f"{args.service}-{kind}"
    _check_local_address("--instance-ip", args.instance_ip)
    _check_local_address("--outbound-ip", args.outbound_ip)
    group = args.workload_group
    if group:
        _check_registration(args, node)
    config_dir = _known_config_dir(args)
    if config_dir:
        result = _load(config_dir, args)
        _require_service(result, node, config_dir)
        if group:
            _require_group(result, node, group, config_dir)
        # Raises on address collisions (and, with mesh mTLS, a missing certificate).
        MeshTranslation(result.mesh, mesh_config=_mesh_config(args)).snapshot_for(node)
    elif node.role.value == "sidecar":
        print(
            f"warning: service {node.namespace}/{node.service} not checked: give "
            "--config-dir DIR to check that the config has it",
            file=sys.stderr,
        )
    tls = _xds_tls_flags(args)
    if args.format == "grpc":
        doc = grpc_bootstrap(
            node_id,
            node,
            xds_host=host,
            xds_port=int(port_text),
            mesh_tls=_mesh_config(args).mtls,
            certificate_dir=os.path.abspath(args.certificate_dir) if args.certificate_dir else "",
            replicas=replicas,
        )
        if tls:
            for server in doc["xds_servers"]:
                server["channel_creds"] = [{"type": "tls", "config": _grpc_tls_config(args)}]
        text = json.dumps(doc, indent=2) + "\n"
    else:
        doc = bootstrap(
            node_id,
            node,
            xds_host=host,
            xds_port=int(port_text),
            transport=args.transport,
            admin_port=args.admin_port,
            token=token,
            replicas=replicas,
        )
        if tls:
            for cluster in doc["static_resources"]["clusters"]:
                if cluster["name"] == "xds_cluster":
                    cluster["transport_socket"] = _xds_transport_socket(args)
        if group:
            doc["node"].setdefault("metadata", {})["workload_group"] = group
        import yaml

        text = advice + yaml.safe_dump(doc, sort_keys=False)
    if args.resolver_file:
        _write_resolver_file(args.resolver_file, args.resolver_text, args.resolver_config)
    _emit_bootstrap(text, args.output, credential=args.token_file if token else None)
    return 0


def _write_resolver_file(path: str, text: str, kind: str) -> None:
    """Write ``--resolver-file`` (atomically, 0644; its directory made when missing)."""
    from xdsd.credentials import write_private

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_private(path, text.encode(), mode=0o644)
    print(f"{path}: written ({kind})", file=sys.stderr)


def _mesh_dns(args: argparse.Namespace, node: Any) -> tuple[Any, str]:
    """``node`` with the mesh DNS of the flags (an Envoy sidecar: virtual addresses, DNS
    listener and its upstreams, by default on; none with ``--no-dns``, for a gateway or a
    proxyless gRPC client), and the resolver advice to print as YAML comments ("" when
    none); the text of ``--resolver-file`` in ``args.resolver_text``. UsageError for
    bad or contradictory flags."""
    import dataclasses

    from xdsd import resolver
    from xdsd.translate import ClientKind, Role

    given = [
        flag
        for flag, value in (
            ("--virtual-addresses", args.virtual_addresses),
            ("--dns", args.dns),
            ("--dns-upstream", args.dns_upstream),
            ("--resolver-config", args.resolver_config),
            ("--resolver-file", args.resolver_file),
        )
        if value
    ]
    if bool(args.resolver_config) != bool(args.resolver_file):
        raise UsageError("--resolver-config and --resolver-file go together")
    sidecar = node.client is ClientKind.ENVOY and node.role is Role.SIDECAR
    if not sidecar or args.no_dns:
        if given and args.no_dns:
            raise UsageError(f"{given[0]} and --no-dns contradict each other")
        if given:
            raise UsageError(
                f"{given[0]} is for an Envoy sidecar's mesh DNS: a gateway or a proxyless "
                "gRPC client gets none"
            )
        return node, ""
    block = resolver.parse_virtual_addresses(args.virtual_addresses or DEFAULT_VIRTUAL_ADDRESSES)
    settings_block = _mesh_config(args).dns.virtual_addresses
    if resolver.block_size(block) < resolver.block_size(settings_block):
        raise UsageError(
            f"--virtual-addresses {block} is smaller than the settings' block "
            f"{settings_block}: a sidecar's block needs room for every address of it"
        )
    if not resolver.is_loopback_block(block):
        print(
            f"warning: --virtual-addresses {block} is outside 127.0.0.0/8: its addresses "
            "must be on an interface of this host for Envoy to bind them",
            file=sys.stderr,
        )
    outbound = "127.0.0.1" if _is_wildcard(node.outbound_ip) else node.outbound_ip
    dns = resolver.parse_dns(args.dns or resolver.host_port(outbound, DEFAULT_DNS_PORT))
    if args.dns:
        _check_local_address("--dns", dns[0])
    if args.dns_upstream:
        parsed = [resolver.parse_upstream(u) for u in args.dns_upstream]
        if len(parsed) > resolver.MAX_UPSTREAMS:
            raise UsageError(f"--dns-upstream: at most {resolver.MAX_UPSTREAMS} resolvers")
        if dns in parsed:
            raise UsageError(
                f"--dns-upstream {resolver.host_port(*dns)} is the sidecar's own DNS: it "
                "would forward names to itself"
            )
        upstreams = tuple(resolver.resolver_text(ip, port) for ip, port in parsed)
    else:
        found = resolver.host_upstreams(dns)
        for note in found.notes:
            print(f"note: --dns-upstream: {note}", file=sys.stderr)
        if not found.resolvers:
            print(
                "warning: no upstream resolver for names outside the mesh: give "
                "--dns-upstream IP (or [mesh.dns] upstream in the settings)",
                file=sys.stderr,
            )
        upstreams = found.resolvers
    if args.resolver_file:  # checked now, written once the bootstrap is good
        args.resolver_text = resolver.resolver_config(
            args.resolver_config, dns, node.namespace, upstreams
        )
    node = dataclasses.replace(
        node,
        virtual_addresses=block,
        dns=resolver.host_port(*dns),
        dns_upstream=upstreams,
    )
    _check_metadata(node)
    return node, resolver.advice(dns, node.namespace, upstreams)


def _with_capture(args: argparse.Namespace, node: Any) -> Any:
    """``node`` with the capture port of ``--capture`` (an Envoy sidecar only). Raises
    UsageError for a port outside 1-65535 or another kind of node."""
    import dataclasses

    from xdsd.translate import ClientKind, Role

    if not args.capture:
        return node
    if not 0 < args.capture < 65536:
        raise UsageError(f"--capture wants a port, 1-65535 (got {args.capture})")
    if node.client is not ClientKind.ENVOY or node.role is not Role.SIDECAR:
        raise UsageError("--capture is for an Envoy sidecar: a gateway or gRPC client has none")
    return dataclasses.replace(node, capture=args.capture)


def _check_metadata(node: Any) -> None:
    """Raise UsageError, naming the flag, when xdsd would refuse the mesh DNS metadata of
    ``node`` as it reads a node (``node_class_from_node``): a bootstrap never carries a
    value the daemon refuses."""
    from xdsd.translate import ConfigSourceKind
    from xdsd.translate.node import node_class_from_node
    from xdsd.translate.static import node_message

    flags = {
        "virtual_addresses": "--virtual-addresses",
        "dns": "--dns",
        "dns_upstream": "--dns-upstream",
    }
    try:
        node_class_from_node(node_message("check", node), config_source=ConfigSourceKind.ADS)
    except TranslationError as e:
        problem = e.problems[0]
        key = problem.field.split(".")[-1] if problem.field else ""
        raise UsageError(f"{flags.get(key, key)}: {problem.message}") from None


def _is_wildcard(ip: str) -> bool:
    from xdsd.translate.node import is_wildcard

    return is_wildcard(ip)


def _check_registration(args: argparse.Namespace, node: Any) -> None:
    """Raise UsageError when ``--workload-group`` cannot work with the other flags."""
    import ipaddress

    from xdsd.translate.node import is_group_name

    group = args.workload_group
    if not is_group_name(group):
        raise UsageError(f"--workload-group wants a WorkloadGroup name (got {group!r})")
    if node.role.value != "sidecar":
        raise UsageError("--workload-group is for a sidecar (not --role gateway)")
    if args.format == "grpc" or args.transport == "rest":
        raise UsageError(
            "--workload-group needs an Envoy on a gRPC stream (registration lasts while "
            "the stream is open): not --format grpc, not --transport rest"
        )
    try:
        address = ipaddress.ip_address(args.instance_ip)
    except ValueError:
        address = None
    if address is None or address.is_unspecified:
        raise UsageError(
            "--workload-group needs --instance-ip IP: the address the workload registers at"
        )


def _require_group(result: LoadResult, node: Any, group: str, config_dir: str) -> None:
    """Raise ConfigError when ``config_dir`` has no WorkloadGroup ``group`` in the
    node's namespace whose ``app`` label names the node's service (xdsd would refuse
    the registration)."""
    found = next(
        (
            g
            for g in result.mesh.workload_groups
            if g.namespace == node.namespace and g.name == group
        ),
        None,
    )
    if found is None:
        message = f"no WorkloadGroup {node.namespace}/{group}"
    elif found.service != node.service:
        message = (
            f"WorkloadGroup {node.namespace}/{group} serves {found.service or 'no service'} "
            f"(its app label), not {node.service}: xdsd would refuse the registration"
        )
    else:
        return
    raise ConfigError([Problem(config_dir, 0, "--workload-group", message)])


#: The most xdsd addresses one bootstrap lists.
MAX_XDS_ADDRESSES = 16


def _xds_addresses(values: list[str]) -> list[tuple[str, int]]:
    """``--xds`` values (each ``HOST:PORT``, or several separated by commas) as (host,
    port) pairs, in order. Raises UsageError naming what is wrong."""
    out: list[tuple[str, int]] = []
    for value in values:
        for text in value.split(","):
            host, _, port = text.strip().rpartition(":")
            host = host.strip("[]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(f"--xds wants HOST:PORT (got {text.strip()!r})")
            if (host, int(port)) in out:
                raise UsageError(f"--xds names {text.strip()} twice")
            out.append((host, int(port)))
    if len(out) > MAX_XDS_ADDRESSES:
        raise UsageError(f"--xds names {len(out)} addresses; at most {MAX_XDS_ADDRESSES}")
    return out


def _known_config_dir(args: argparse.Namespace) -> str:
    """The config directory ``bootstrap`` checks against: ``--config-dir``, else the
    ``config_dir`` a ``--settings`` file sets; "" when neither says."""
    from xdsd.settings import Settings

    if args.config_dir:
        return str(args.config_dir)
    if args.settings:
        configured: str = _settings(args).config_dir
        if configured != Settings().config_dir:
            return configured
    return ""


def _require_service(result: LoadResult, node: Any, config_dir: str) -> None:
    """Raise ConfigError when ``node`` is a sidecar of a service ``config_dir`` does not
    have (a bootstrap for it would get outbound configuration only: most likely a typo);
    a gateway is checked as ``_check_service`` does (a warning)."""
    from xdsd.located import closest
    from xdsd.translate import Role

    if node.role is Role.GATEWAY or result.mesh.service_by_name(node.namespace, node.service):
        _check_service(result, node)
        return
    names = sorted({s.name for s in result.mesh.services if s.namespace == node.namespace})
    hint = closest(node.service, names)
    did = f"did you mean {hint!r}? " if hint else ""
    raise ConfigError(
        [
            Problem(
                config_dir,
                0,
                "--service",
                f"no service {node.namespace}/{node.service}; {did}services in namespace "
                f"{node.namespace}: {', '.join(names) or 'none'}",
            )
        ]
    )


def _check_local_address(flag: str, ip: str) -> None:
    """Warn on stderr when ``ip`` is not an address of this host (binding it fails with
    EADDRNOTAVAIL): an Envoy here could not bind the listeners on it. Says nothing when
    it cannot tell (not an IP address, another error)."""
    import errno
    import ipaddress
    import socket

    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return
    if address.is_unspecified:
        return
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            print(
                f"warning: {flag} {ip} is not an address of this host: an Envoy here "
                "cannot bind its listeners on it (fine if the proxy runs on the host that "
                "has it; on this machine use a 127.x address)",
                file=sys.stderr,
            )


def _emit_bootstrap(text: str, output: str | None, *, credential: str | None) -> None:
    """Write a bootstrap to ``output`` (atomically; 0600 when it holds the token of the
    file ``credential``, else 0644) or to stdout, saying on stderr when it holds a
    credential."""
    from xdsd.credentials import write_private

    if output:
        write_private(output, text.encode(), mode=0o600 if credential else 0o644)
        if credential:
            print(
                f"{output}: holds a credential (the token of {credential}): written 0600; "
                "keep it readable only by the proxy",
                file=sys.stderr,
            )
        return
    if credential:
        print(
            f"warning: this bootstrap holds a credential (the token of {credential}): "
            "whatever stdout goes to can impersonate the proxy; --output PATH writes it 0600",
            file=sys.stderr,
        )
    sys.stdout.write(text)


def _xds_tls_flags(args: argparse.Namespace) -> bool:
    """True when the bootstrap should reach xdsd over TLS; UsageError for flags that
    cannot work together."""
    if bool(args.xds_tls_cert) != bool(args.xds_tls_key):
        raise UsageError("--xds-tls-cert and --xds-tls-key go together")
    tls = bool(args.xds_tls_ca or args.xds_tls_cert)
    if args.xds_tls_server_name and not tls:
        raise UsageError("--xds-tls-server-name needs --xds-tls-ca (or a client certificate)")
    if args.xds_tls_server_name and args.format == "grpc":
        raise UsageError(
            "--xds-tls-server-name is for Envoy: gRPC checks the --xds host name itself"
        )
    if tls and not args.xds_tls_ca:
        print(
            "warning: without --xds-tls-ca the proxy does not verify xdsd's certificate",
            file=sys.stderr,
        )
    return tls


def _xds_transport_socket(args: argparse.Namespace) -> dict[str, Any]:
    """The ``transport_socket`` of the bootstrap's ``xds_cluster``: an UpstreamTlsContext
    trusting ``--xds-tls-ca`` (and checking ``--xds-tls-server-name`` against the server's
    DNS SANs), presenting ``--xds-tls-cert``/``--xds-tls-key``, offering ALPN ``h2`` for
    gRPC."""
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

    from xdsd.resources import to_json
    from xdsd.translate.static import plain_json

    context = tls_pb2.UpstreamTlsContext()
    common = context.common_tls_context
    if args.transport != "rest":
        common.alpn_protocols.append("h2")
    if args.xds_tls_server_name:
        context.sni = args.xds_tls_server_name
    if args.xds_tls_ca:
        validation = common.validation_context
        validation.trusted_ca.filename = args.xds_tls_ca
        if args.xds_tls_server_name:
            san = validation.match_typed_subject_alt_names.add()
            san.san_type = common_pb2.SubjectAltNameMatcher.DNS
            san.matcher.exact = args.xds_tls_server_name
    if args.xds_tls_cert:
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = args.xds_tls_cert
        certificate.private_key.filename = args.xds_tls_key
    socket = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    socket.typed_config.Pack(context)
    return plain_json(to_json(socket))


def _grpc_tls_config(args: argparse.Namespace) -> dict[str, str]:
    """The ``tls`` channel credentials' config of a gRPC bootstrap (gRFC A65)."""
    config: dict[str, str] = {}
    if args.xds_tls_ca:
        config["ca_certificate_file"] = args.xds_tls_ca
    if args.xds_tls_cert:
        config["certificate_file"] = args.xds_tls_cert
        config["private_key_file"] = args.xds_tls_key
    return config


def _token(args: argparse.Namespace) -> int:
    """Mint a token: the token alone on stdout, its id and expiry on stderr."""
    from xdsd.ca.tokens import TokenAuthority
    from xdsd.located import Document, Fields, Report

    if not args.settings:
        raise UsageError("token needs --settings: the settings file whose [mesh.ca] signs it")
    ca = _settings(args).mesh.ca
    if ca is None:
        raise UsageError(f"{args.settings}: has no [mesh.ca]: xdsd issues no tokens without it")
    report = Report(Document("--ttl", 0, {"ttl": args.ttl}, {}), ())
    ttl = Fields(report, (), {"ttl": args.ttl}).duration("ttl")
    if ttl is None or ttl.total_seconds() <= 0:
        raise UsageError(f'--ttl {args.ttl!r}: must be a positive duration like "720h" or "30m"')
    try:
        minted = TokenAuthority(ca).mint(args.namespace, args.service, ttl.total_seconds())
    except ValueError as e:
        raise UsageError(str(e)) from None
    claims = minted.claims
    print(minted.token)
    print(
        f"token {claims.token_id} for service {claims.service} in namespace "
        f"{claims.namespace}, valid until {claims.expires.isoformat(timespec='seconds')}",
        file=sys.stderr,
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from xdsd import status

    if args.stale_after is not None and args.stale_after < 0:
        raise UsageError("--stale-after must not be negative")
    tls = None
    if args.admin_tls_ca or args.admin_tls_cert or args.admin_tls_key or args.admin_tls_server_name:
        tls = status.client_context(
            ca=args.admin_tls_ca,
            cert=args.admin_tls_cert,
            key=args.admin_tls_key,
            server_name=args.admin_tls_server_name,
        )
    try:
        read = status.fetch(args.admin, tls=tls, server_name=args.admin_tls_server_name)
    except status.AdminUnreachable as e:
        print(f"xdsd status: {e}", file=sys.stderr)
        return status.EXIT_UNREACHABLE
    result = status.summarize(
        read.clients,
        read.problems,
        now=read.now,
        stale_after=args.stale_after,
        daemon_stale_after=read.stale_after,
        expected=read.expected,
        registrations=read.registrations,
        unusable_workers=read.unusable_workers,
    )
    if args.json:
        _print_json(status.to_json(result))
    else:
        sys.stdout.write(status.render_table(result))
    return result.exit_code


def _capture(args: argparse.Namespace) -> int:
    from xdsd import capture

    if not 0 < args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a port number (1-65535)")
    excluded = capture.parse_ports(args.xdsd_ports, "--xdsd-ports") + capture.parse_ports(
        args.exclude_ports, "--exclude-ports"
    )
    cidrs = capture.parse_cidrs(args.exclude_cidrs, "--exclude-cidrs")
    if args.action == "remove":
        rules = None
    else:
        uid = capture.user_id(args.proxy_user)
        rules = capture.CaptureRules(args.port, uid, excluded, cidrs)
    if args.action == "print":
        assert rules is not None
        sys.stdout.write(rules.script(args.iptables or "iptables"))
        return 0
    capture.require_root(args.action)
    iptables = capture.Iptables(capture.find_iptables(args.iptables), dry_run=args.dry_run)
    if args.action == "status":
        assert rules is not None
        found = iptables.status()
        applied = found.matches(rules)
        jumps = f"{found.jumps} jump{'s' if found.jumps != 1 else ''} from OUTPUT"
        if found.rules is None:
            print(f"not applied: no {capture.CHAIN} chain, {jumps}")
        else:
            state = "applied" if applied else "applied, but not as these flags say"
            print(f"{state}: {jumps} to {capture.CHAIN}:")
            for line in found.rules:
                print(f"  {line}")
        return 0 if applied else 1
    if args.action == "apply":
        assert rules is not None
        if not iptables.apply(rules):
            print(f"already applied: {capture.CHAIN} redirects to port {args.port}")
        elif not args.dry_run:
            print(f"applied: outbound TCP goes to port {args.port}; undo: xdsd capture remove")
        return 0
    if not iptables.remove():
        print(f"nothing to remove: no {capture.CHAIN} chain or jump")
    elif not args.dry_run:
        print(f"removed: the {capture.CHAIN} chain and its jump from OUTPUT")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from xdsd.demo.runner import DEFAULT_BLOCK, run_demo

    return run_demo(
        directory=args.dir, block=args.block or DEFAULT_BLOCK, envoy=args.envoy, api=args.api
    )


def _serve(args: argparse.Namespace) -> int:
    # The daemon's modules (hundreds of classes, protobuf descriptors) are created once
    # and live as long as it does: the collector is kept out of their import (~70 ms of
    # a start walking them again and again) and they are frozen, out of later
    # collections' way.
    enabled = gc.isenabled()
    gc.disable()
    try:
        from xdsd.app import run_server, server_settings
    finally:
        if enabled:
            gc.freeze()
            gc.enable()
    settings = server_settings(args)
    if args.worker is not None:
        from xdsd.workers.worker import run_worker

        return run_worker(args, settings)
    if settings.workers > 1:
        from xdsd.workers.supervisor import run_supervisor

        return run_supervisor(args, settings)
    return run_server(args, settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
