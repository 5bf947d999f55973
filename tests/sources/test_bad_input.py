"""Bad input: each case exits 1 with a message naming file, line and field, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xdsd.cli import main

SERVICE = """\
kind = "Service"
name = "reviews"

[[ports]]
number = 9080
protocol = "HTTP"

[[endpoints]]
address = "10.0.0.1"
labels = { version = "v1" }
"""

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
"""


def vs(route: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata:\n"
        "  name: reviews\n"
        "spec:\n"
        "  hosts: [reviews]\n"
        "  http:\n"
        "  - route:\n" + route
    )


# name → (files, expected fragments of the message). A file value of None means "make a
# directory", a value starting with "->" a symbolic link to the rest.
CASES: dict[str, tuple[dict[str, str | bytes | None], list[str]]] = {
    "toml syntax": ({"s.toml": 'kind = "Service"\nname = \n'}, ["s.toml:2:", "TOML syntax"]),
    "yaml syntax": ({"s.yaml": "kind: Service\nname: [a\n"}, ["s.yaml:", "YAML syntax"]),
    "yaml bad indent": ({"s.yaml": "kind: Service\n  name: x\n bad: 1\n"}, ["s.yaml:2:", "YAML"]),
    "json syntax": ({"s.json": '{"kind": "Service",\n "name": }'}, ["s.json:2:", "JSON syntax"]),
    "json trailing comma": ({"s.json": '{"kind": "Service",\n}'}, ["s.json:2:", "JSON"]),
    "port wrong type": (
        {"s.toml": SERVICE.replace("number = 9080", 'number = "http"')},
        ["s.toml:5:", "ports[0].number", "must be an integer"],
    ),
    "port out of range": (
        {"s.toml": SERVICE.replace("number = 9080", "number = 70000")},
        ["s.toml:5:", "ports[0].number", "at most 65535"],
    ),
    "unknown protocol": (
        {"s.toml": SERVICE.replace('"HTTP"', '"SMTP"')},
        ["s.toml:6:", "ports[0].protocol", "must be one of"],
    ),
    "unknown field with hint": (
        {"s.toml": SERVICE.replace("[[ports]]", 'resolutoin = "DNS"\n\n[[ports]]')},
        ["s.toml:4:", "resolutoin", "did you mean 'resolution'"],
    ),
    "unknown endpoint field": (
        {"s.toml": SERVICE + "wieght = 3\n"},
        ["s.toml:11:", "endpoints[0].wieght", "unknown field", "did you mean 'weight'"],
    ),
    "static endpoint is a host name": (
        {"s.toml": SERVICE.replace("10.0.0.1", "reviews.example.com")},
        ["s.toml:9:", "endpoints[0].address", "IP address"],
    ),
    "label value not a string": (
        {"s.toml": SERVICE.replace('version = "v1"', "version = 1")},
        ["s.toml:10:", "endpoints[0].labels", "strings"],
    ),
    "missing kind": ({"s.yaml": "name: x\n"}, ["s.yaml:1:", "kind", "required"]),
    "unknown xdsd kind": ({"s.yaml": "kind: Servise\nname: x\n"}, ["s.yaml:1:", "kind", "Servise"]),
    "document not a mapping": ({"s.yaml": "- a\n- b\n"}, ["s.yaml:1:", "mapping"]),
    "negative weight": (
        {
            "s.toml": SERVICE,
            "d.yaml": DR,
            "v.yaml": vs(
                "    - destination: {host: reviews, subset: v1}\n      weight: -10\n"
                "    - destination: {host: reviews}\n      weight: 10\n"
            ),
        },
        ["v.yaml:10:", "http[0].route[0].weight", "must not be negative (got -10)"],
    ),
    "all-zero weights": (
        {
            "s.toml": SERVICE,
            "d.yaml": DR,
            "v.yaml": vs(
                "    - destination: {host: reviews, subset: v1}\n      weight: 0\n"
                "    - destination: {host: reviews}\n      weight: 0\n"
            ),
        },
        ["v.yaml:8:", "http[0].route", "all weights are zero"],
    ),
    "undefined subset": (
        {
            "s.toml": SERVICE,
            "d.yaml": DR,
            "v.yaml": vs("    - destination: {host: reviews, subset: v9}\n"),
        },
        ["v.yaml:9:", "http[0].route[0].destination.subset", "'v9'", "defines 'v1'"],
    ),
    "unknown destination": (
        {"s.toml": SERVICE, "v.yaml": vs("    - destination: {host: ratings}\n")},
        ["v.yaml:9:", "http[0].route[0].destination.host", "no service named 'ratings'"],
    ),
    "unsupported istio field": (
        {
            "s.toml": SERVICE,
            "v.yaml": vs("    - destination: {host: reviews}\n    delegate: {name: x}\n"),
        },
        ["v.yaml:10:", "http[0].delegate", "not supported"],
    ),
    "bad duration": (
        {
            "s.toml": SERVICE,
            "v.yaml": vs("    - destination: {host: reviews}\n    timeout: soon\n"),
        },
        ["v.yaml:10:", "http[0].timeout", "duration"],
    ),
    "duplicate across files": (
        {"a.toml": SERVICE, "b.toml": SERVICE},
        ["b.toml:1:", "duplicate Service default/reviews", "a.toml:1"],
    ),
    "duplicate yaml key": (
        {"s.yaml": "kind: Service\nname: a\nname: b\n"},
        ["s.yaml:3:", "name", "duplicate key"],
    ),
    "empty file": ({"empty.yaml": ""}, ["empty.yaml:1:", "empty"]),
    "empty toml": ({"empty.toml": "\n"}, ["empty.toml:1:", "empty"]),
    "binary junk": ({"junk.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"}, ["junk.yaml:1:", "UTF-8"]),
    "nul bytes": ({"junk.json": b'{"a":\x00}'}, ["junk.json:1:", "binary"]),
    "directory named like a config file": ({"svc.yaml": None}, ["svc.yaml", "is a directory"]),
    "dangling symlink": (
        {"gone.yaml": "->nowhere.yaml"},
        ["gone.yaml", "dangling", "nowhere.yaml"],
    ),
    "raw envoy unknown field": (
        {
            "envoy/c.yaml": "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n"
            "name: x\nconnect_timeout: 1s\nbogus_field: 3\n"
        },
        ["c.yaml:4:", "bogus_field"],
    ),
    "raw envoy without @type": (
        {"envoy/c.json": '{"name": "x"}'},
        ["c.json:1:", "@type", "required"],
    ),
    "raw envoy unknown type": (
        {"envoy/c.yaml": "'@type': type.googleapis.com/envoy.config.cluster.v3.Clustr\nname: x\n"},
        ["c.yaml:1:", "@type", "must be one of"],
    ),
    "raw envoy wrong value type": (
        {
            "envoy/c.json": '{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",\n'
            ' "name": "x",\n "connect_timeout": 5}'
        },
        ["c.json:3:", "connect_timeout"],
    ),
    "two destination rules for one host": (
        {"s.toml": SERVICE, "d.yaml": DR, "e.yaml": DR.replace("name: reviews", "name: other", 1)},
        ["d.yaml:6: host:", "already has DestinationRule 'other'", "e.yaml:1"],
    ),
    "service without ports": (
        {"s.yaml": "kind: Service\nname: x\n"},
        ["s.yaml:1:", "ports", "required"],
    ),
    "bad istio api version": (
        {"v.yaml": vs("    - destination: {host: reviews}\n").replace("/v1\n", "/v2\n", 1)},
        ["v.yaml:1:", "apiVersion", "'v2'"],
    ),
}


def dr_policy(policy: str) -> str:
    """A DestinationRule for reviews whose trafficPolicy is ``policy`` (YAML lines indented
    by four spaces; the policy's first line is line 8)."""
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        "metadata:\n"
        "  name: reviews\n"
        "spec:\n"
        "  host: reviews\n"
        "  trafficPolicy:\n" + policy
    )


# DestinationRule traffic policies: name → (trafficPolicy YAML, expected fragments).
POLICY_CASES: dict[str, tuple[str, list[str]]] = {
    "hash without key": (
        "    loadBalancer:\n      consistentHash: {minimumRingSize: 10}\n",
        ["d.yaml:9:", "trafficPolicy.loadBalancer.consistentHash:", "exactly one of"],
    ),
    "hash with two keys": (
        "    loadBalancer:\n      consistentHash: {httpHeaderName: x, useSourceIp: true}\n",
        ["d.yaml:9:", "consistentHash", "(got 2)"],
    ),
    "simple and hash": (
        "    loadBalancer:\n      simple: RANDOM\n      consistentHash: {httpHeaderName: x}\n",
        ["d.yaml:10:", "loadBalancer.consistentHash", "exclude each other"],
    ),
    "ring and maglev": (
        "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x\n"
        "        ringHash: {minimumRingSize: 8}\n        maglev: {tableSize: 7}\n",
        ["d.yaml:12:", "consistentHash.maglev", "exclude each other"],
    ),
    "cookie attributes": (
        "    loadBalancer:\n      consistentHash:\n        httpCookie:\n"
        "          name: c\n          attributes: [{name: a}]\n",
        ["d.yaml:12:", "httpCookie.attributes", "not supported"],
    ),
    "distribute not 100": (
        "    loadBalancer:\n      localityLbSetting:\n        distribute:\n"
        "        - from: r1/*\n          to: {r1/*: 70, r2/*: 20}\n",
        ["d.yaml:12:", "distribute[0].to", "sum to 100 (got 90)"],
    ),
    "distribute and failover": (
        "    loadBalancer:\n      localityLbSetting:\n"
        "        distribute: [{from: r1, to: {r1: 100}}]\n        failover: [{from: r1, to: r2}]\n",
        ["d.yaml:10:", "localityLbSetting.distribute", "exclude each other"],
    ),
    "distribute weight 0": (
        "    loadBalancer:\n      localityLbSetting:\n        distribute:\n"
        "        - from: r1/*\n          to: {r1/*: 100, r2/*: 0}\n",
        ["d.yaml:12:", "distribute[0].to.r2/*", "at least 1"],
    ),
    "failover with a zone": (
        "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: r1/z1, to: r2}]\n",
        ["d.yaml:10:", "failover[0].from", "must be a region"],
    ),
    "failover with topology priority": (
        "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: r1, to: r2}]\n"
        "        failoverPriority: [topology.kubernetes.io/zone]\n",
        ["d.yaml:11:", "failoverPriority[0]", "cannot be combined with failover"],
    ),
    "failover to itself": (
        "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: r1, to: r1}]\n",
        ["d.yaml:10:", "failover[0].to", "must differ"],
    ),
    "negative max connections": (
        "    connectionPool:\n      tcp: {maxConnections: -1}\n",
        ["d.yaml:9:", "connectionPool.tcp.maxConnections", "must not be negative"],
    ),
    "zero connect timeout": (
        "    connectionPool:\n      tcp:\n        connectTimeout: 0s\n",
        ["d.yaml:10:", "connectionPool.tcp.connectTimeout", "longer than 0s"],
    ),
    "bad h2 upgrade policy": (
        "    connectionPool:\n      http:\n        h2UpgradePolicy: ALWAYS\n",
        ["d.yaml:10:", "h2UpgradePolicy", "DO_NOT_UPGRADE"],
    ),
    "pool unknown field": (
        "    connectionPool:\n      http:\n        maxRetry: 3\n",
        ["d.yaml:10:", "connectionPool.http.maxRetry", "did you mean 'maxRetries'"],
    ),
    "ejection percent over 100": (
        "    outlierDetection:\n      maxEjectionPercent: 150\n",
        ["d.yaml:9:", "outlierDetection.maxEjectionPercent", "at most 100"],
    ),
    "deprecated consecutiveErrors": (
        "    outlierDetection:\n      consecutiveErrors: 5\n",
        ["d.yaml:9:", "outlierDetection.consecutiveErrors", "consecutive5xxErrors"],
    ),
    "local origin without split": (
        "    outlierDetection:\n      consecutiveLocalOriginFailures: 3\n",
        ["d.yaml:9:", "consecutiveLocalOriginFailures", "splitExternalLocalOriginErrors"],
    ),
    "interval not a duration": (
        "    outlierDetection:\n      interval: 10\n",
        ["d.yaml:9:", "outlierDetection.interval", "must be a duration"],
    ),
    "istio mutual": (
        "    tls: {mode: ISTIO_MUTUAL}\n",
        ["d.yaml:8:", "trafficPolicy.tls.mode", "ISTIO_MUTUAL", "use MUTUAL"],
    ),
    "credential name": (
        "    tls:\n      mode: SIMPLE\n      credentialName: my-secret\n",
        ["d.yaml:10:", "trafficPolicy.tls.credentialName", "Kubernetes secret"],
    ),
    "missing certificate file": (
        "    tls:\n      mode: SIMPLE\n      caCertificates: certs/none.pem\n",
        [
            "d.yaml:10:",
            "trafficPolicy.tls.caCertificates",
            "'certs/none.pem' does not exist",
            "relative to the config directory",
        ],
    ),
    "mutual without key": (
        "    tls:\n      mode: MUTUAL\n      caCertificates: ca.pem\n"
        "      clientCertificate: ca.pem\n",
        ["d.yaml:8:", "trafficPolicy.tls.privateKey", "required with mode MUTUAL"],
    ),
    "simple without ca": (
        "    tls: {mode: SIMPLE, sni: a.example}\n",
        ["d.yaml:8:", "trafficPolicy.tls.caCertificates", "insecureSkipVerify"],
    ),
    "client certificate with simple": (
        "    tls:\n      mode: SIMPLE\n      insecureSkipVerify: true\n"
        "      clientCertificate: ca.pem\n",
        ["d.yaml:11:", "trafficPolicy.tls.clientCertificate", "only with mode MUTUAL"],
    ),
    "skip verify not a boolean": (
        "    tls:\n      mode: SIMPLE\n      insecureSkipVerify: yes please\n",
        ["d.yaml:10:", "trafficPolicy.tls.insecureSkipVerify", "true or false"],
    ),
    "port settings twice": (
        "    portLevelSettings:\n    - port: {number: 9080}\n    - port: {number: 9080}\n",
        ["d.yaml:10:", "portLevelSettings[1].port", "settings twice"],
    ),
    "port settings without port": (
        "    portLevelSettings:\n    - tls: {mode: DISABLE}\n",
        ["d.yaml:9:", "portLevelSettings[0].port", "required"],
    ),
    "tunnel": (
        "    tunnel: {protocol: CONNECT, targetHost: x, targetPort: 1}\n",
        ["d.yaml:8:", "trafficPolicy.tunnel", "not supported"],
    ),
}


@pytest.mark.parametrize("case", sorted(POLICY_CASES))
def test_bad_traffic_policy_names_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy, expected = POLICY_CASES[case]
    _materialize(tmp_path, {"s.toml": SERVICE, "d.yaml": dr_policy(policy), "ca.pem": "x"})
    code = main(["validate", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


def _materialize(root: Path, files: dict[str, str | bytes | None]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir()
        elif isinstance(content, str) and content.startswith("->"):
            os.symlink(content[2:], path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_1_naming_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, expected = CASES[case]
    _materialize(tmp_path, files)
    code = main(["validate", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


@pytest.mark.parametrize("command", ["validate", "render"])
def test_missing_directory_is_said_missing(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One line that it is missing: there was no configuration to refuse."""
    missing = tmp_path / "nope"
    argv = [command, str(missing)] if command == "validate" else [command, "--config-dir"]
    if command == "render":
        argv += [str(missing), "--service", "reviews"]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"xdsd: error: config directory {missing} does not exist: give the directory that "
        "holds your service and rule files\n"
    )


def test_file_given_as_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "reviews.toml"
    f.write_text(SERVICE)
    assert main(["validate", str(f)]) == 1
    assert capsys.readouterr().err == (
        f"xdsd: error: {f} is not a directory: give the directory that holds the files\n"
    )


def test_counts_are_singular_for_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """ "1 file, 1 service, 1 virtual service", "1 error" (not "1 errors")."""
    _materialize(
        tmp_path,
        {"s.toml": SERVICE, "d.yaml": DR, "v.yaml": vs("    - destination: {host: reviews}\n")},
    )
    assert main(["validate", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        f"{tmp_path}: ok: 3 files, 1 service, 1 virtual service, 1 destination rule, "
        "0 raw Envoy resources\n"
    )
    (tmp_path / "v.yaml").write_text(vs("    - destination: {host: nowhere}\n"))
    assert main(["validate", str(tmp_path)]) == 1
    assert capsys.readouterr().err.endswith("\nerror: configuration refused (1 error)\n")


def test_a_misspelled_weight_is_reported_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No knock-on "all weights are zero" after the misspelled field."""
    route = (
        "    - destination: {host: reviews, subset: v1}\n      wieght: 90\n"
        "    - destination: {host: reviews, subset: v1}\n      weight: 0\n"
    )
    _materialize(tmp_path, {"s.toml": SERVICE, "d.yaml": DR, "v.yaml": vs(route)})
    assert main(["validate", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"{tmp_path}/v.yaml:10: http[0].route[0].wieght: unknown field; did you mean "
        "'weight'?\nerror: configuration refused (1 error)\n"
    )


def test_every_error_is_reported_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _materialize(tmp_path, {"a.toml": CASES["port wrong type"][0]["s.toml"], "b.yaml": "kind: X\n"})
    assert main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "a.toml:5:" in err and "b.yaml:1:" in err


def test_no_traceback_from_the_real_command(tmp_path: Path) -> None:
    _materialize(tmp_path, {"junk.toml": b"\xff\x00garbage", "x.yaml": "a: [\n"})
    proc = subprocess.run(
        [sys.executable, "-m", "xdsd.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "junk.toml:1:" in proc.stderr and "x.yaml:" in proc.stderr


def test_failover_without_outlier_detection_is_a_warning(tmp_path: Path) -> None:
    """As Istio's validation: failover cannot act without outlier detection (xdsd then
    writes no priorities); the merged policy of each subset and port is what counts."""
    from xdsd.sources import load_directory

    policy = (
        "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: r1, to: r2}]\n"
        "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
        "    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}\n"
    )
    _materialize(tmp_path, {"s.toml": SERVICE, "d.yaml": dr_policy(policy)})
    warnings = [str(w) for w in load_directory(str(tmp_path)).warnings]
    assert len(warnings) == 1, warnings
    assert "d.yaml:7: warning: trafficPolicy: localityLbSetting failover needs" in (warnings[0])


def test_render_warnings_name_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A warning about the node described by flags names the flag, not a file."""
    _materialize(tmp_path, {"s.toml": SERVICE})
    assert main(["render", "--config-dir", str(tmp_path), "--service", "nosuch"]) == 0
    assert capsys.readouterr().err == (
        "warning: --service: no service default/nosuch in the config: the proxy gets "
        "outbound configuration only\n"
    )
    argv = ["render", "--config-dir", str(tmp_path), "--service", "gw", "--role", "gateway"]
    assert main([*argv, "--label", "istio=ingress"]) == 0
    assert capsys.readouterr().err == (
        "warning: --label: no Gateway selects a gateway with labels istio=ingress: it gets "
        "clusters only (give --label K=V as a Gateway's selector says)\n"
    )
