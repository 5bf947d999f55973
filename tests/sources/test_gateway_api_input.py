"""Gateway API documents as the loader reads them: every field into the model, every
wrong value an error at its file, line and field, the API's limits enforced, the fields
xdsd does not honour refused by name, ``status`` ignored, Secrets' bytes never quoted."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from xdsd.errors import ConfigError, Problem
from xdsd.model.gateway_api import ObjectRef, StringMatch
from xdsd.sources import LoadResult, load_directory
from xdsd.sources.limits import DEFAULT_LIMITS

V1 = "apiVersion: gateway.networking.k8s.io/v1\n"
CLASS = (
    V1
    + "kind: GatewayClass\nmetadata: {name: xdsd}\nspec: {controllerName: xdsd.dev/gateway-controller}\n"
)
GATEWAY = (
    V1
    + """kind: Gateway
metadata:
  name: web
  namespace: edge
  labels: {team: edge}
spec:
  gatewayClassName: xdsd
  addresses: [{type: IPAddress, value: 10.1.2.3}, {type: Hostname, value: gw.example.com}]
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    hostname: "*.example.com"
    allowedRoutes:
      namespaces: {from: Selector, selector: {matchLabels: {shared: "yes"}}}
      kinds: [{kind: HTTPRoute}]
  - name: https
    port: 443
    protocol: HTTPS
    tls:
      certificateRefs:
      - {name: web-cert}
      - {group: xdsd.dev, kind: File, name: certs/web.pem}
      options: {example.com/min-version: "1.2"}
  - {name: pass, port: 8443, protocol: TLS, tls: {mode: Passthrough}}
  - {name: tcp, port: 9000, protocol: TCP}
status:
  addresses: [{value: 1.1.1.1}]
"""
)
ROUTE = (
    V1
    + """kind: HTTPRoute
metadata: {name: r, namespace: edge}
spec:
  parentRefs: [{name: web, sectionName: http, port: 80}]
  hostnames: [shop.example.com]
  rules:
  - name: api
    matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: x-env, value: canary}]
      queryParams: [{type: RegularExpression, name: v, value: "^[0-9]+$"}]
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}
    - type: URLRewrite
      urlRewrite: {hostname: internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 4}}
    - type: CORS
      cors: {allowOrigins: ["https://*.example.com"], allowMethods: [GET], maxAge: 60}
    backendRefs:
    - name: a
      port: 80
      weight: 90
      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}]
    - {name: b, port: 80, weight: 10, namespace: other}
    timeouts: {request: 2m, backendRequest: 1m0s500ms}
  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
status: {parents: []}
"""
)


def certificate_file(root: Path) -> None:
    """The file GATEWAY's file reference names (the parser checks it exists)."""
    (root / "certs").mkdir(exist_ok=True)
    (root / "certs" / "web.pem").write_text("not read by the parser")


def load(tmp_path: Path, text: str) -> LoadResult:
    certificate_file(tmp_path)
    (tmp_path / "doc.yaml").write_text(text)
    return load_directory(str(tmp_path))


def errors(tmp_path: Path, text: str) -> list[Problem]:
    certificate_file(tmp_path)
    (tmp_path / "doc.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_directory(str(tmp_path))
    return list(e.value.problems)


def messages(tmp_path: Path, text: str) -> list[str]:
    return [f"{p.line}: {p.field}: {p.message}" for p in errors(tmp_path, text)]


def test_a_gateway_is_read_field_by_field(tmp_path: Path) -> None:
    api = load(tmp_path, CLASS + "---\n" + GATEWAY).mesh.gateway_api
    assert [c.controller_name for c in api.classes] == ["xdsd.dev/gateway-controller"]
    (gw,) = api.gateways
    assert (gw.namespace, gw.name, gw.gateway_class_name) == ("edge", "web", "xdsd")
    assert gw.labels == (("team", "edge"),)
    assert gw.addresses == ("10.1.2.3", "gw.example.com")
    http, https, passthrough, tcp = gw.listeners
    assert (http.port, http.protocol, http.hostname) == (80, "HTTP", "*.example.com")
    assert http.allowed_routes.namespaces_from == "Selector"
    assert http.allowed_routes.selector == (("shared", "yes"),)
    assert http.allowed_routes.kinds == (("gateway.networking.k8s.io", "HTTPRoute"),)
    assert https.tls is not None and https.tls.mode == "Terminate"
    assert https.tls.certificate_refs == (
        ObjectRef("web-cert", "Secret"),
        ObjectRef(str(tmp_path / "certs" / "web.pem"), "File", "xdsd.dev"),
    )
    assert https.tls.options == (("example.com/min-version", "1.2"),)
    assert passthrough.tls is not None and passthrough.tls.mode == "Passthrough"
    assert tcp.tls is None and tcp.allowed_routes.namespaces_from == "Same"


def test_an_http_route_is_read_field_by_field(tmp_path: Path) -> None:
    (route,) = load(tmp_path, ROUTE).mesh.gateway_api.routes
    assert route.key.kind == "HTTPRoute" and route.hostnames == ("shop.example.com",)
    (parent,) = route.parent_refs
    assert parent == ObjectRef("web", "Gateway", "gateway.networking.k8s.io", "", "http", 80)
    api, redirect = route.rules
    assert api.name == "api"
    (match,) = api.matches
    assert match.path == StringMatch("PathPrefix", "/api")
    assert match.headers == (StringMatch("Exact", "canary", "x-env"),)
    assert match.query_params == (StringMatch("RegularExpression", "^[0-9]+$", "v"),)
    assert match.method == "GET"
    headers, rewrite, mirror, cors = api.filters
    assert headers.request_header_modifier is not None
    assert headers.request_header_modifier.set == (("x-a", "1"),)
    assert headers.request_header_modifier.remove == ("x-c",)
    assert rewrite.rewrite_hostname == "internal"
    assert rewrite.rewrite_path is not None and rewrite.rewrite_path.value == "/v2"
    assert mirror.mirror == ObjectRef("shadow", "Service", port=80)
    assert mirror.mirror_percent == 25.0
    assert dict(cors.cors)["maxAge"] == 60
    a, b = api.backend_refs
    assert (a.weight, b.weight, b.ref.namespace) == (90, 10, "other")
    assert a.filters[0].response_header_modifier is not None
    assert api.request_timeout is not None and api.request_timeout.total_seconds() == 120
    assert api.backend_request_timeout is not None
    assert api.backend_request_timeout.total_seconds() == 60.5
    (match,) = redirect.matches  # no match: every path
    assert match.path == StringMatch("PathPrefix", "/")
    assert redirect.filters[0].redirect_scheme == "https"
    assert redirect.filters[0].redirect_status == 301


GRPC = (
    V1
    + """kind: GRPCRoute
metadata: {name: g}
spec:
  parentRefs: [{name: web}]
  rules:
  - matches:
    - method: {service: helloworld.Greeter, method: SayHello}
      headers: [{name: x-a, value: b}]
    backendRefs: [{name: greeter, port: 50051}]
"""
)
L4 = """apiVersion: gateway.networking.k8s.io/v1alpha2
kind: {kind}
metadata: {{name: l4}}
spec:
  parentRefs: [{{name: web, sectionName: tcp}}]
{hosts}  rules: [{{backendRefs: [{{name: db, port: 5432, weight: 3}}]}}]
"""
GRANT = """apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: edge}]
  to: [{group: "", kind: Service}]
"""
BACKEND_TLS = (
    V1
    + """kind: BackendTLSPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: "", kind: Service, name: a, sectionName: https}]
  validation:
    caCertificateRefs: [{group: "", kind: ConfigMap, name: ca}]
    hostname: a.example.com
    subjectAltNames: [{type: Hostname, hostname: a.example.com}, {type: URI, uri: "spiffe://td/a"}]
"""
)


def test_the_other_kinds_are_read(tmp_path: Path) -> None:
    text = "---\n".join(
        [
            GRPC,
            L4.format(kind="TCPRoute", hosts=""),
            GRANT,
            BACKEND_TLS,
        ]
    )
    api = load(tmp_path, text).mesh.gateway_api
    grpc, tcp = api.routes
    assert grpc.rules[0].matches[0].grpc_service == "helloworld.Greeter"
    assert grpc.rules[0].matches[0].grpc_type == "Exact"
    assert tcp.rules[0].backend_refs[0].weight == 3
    (grant,) = api.grants
    assert grant.from_ == (("gateway.networking.k8s.io", "HTTPRoute", "edge"),)
    assert grant.to == (("", "Service", ""),)
    (policy,) = api.backend_tls
    assert policy.target_refs == (ObjectRef("a", "Service", "", "", "https"),)
    assert policy.subject_alt_names == ("a.example.com", "spiffe://td/a")
    for kind in ("TLSRoute", "UDPRoute"):
        hosts = "  hostnames: [db.example.com]\n" if kind == "TLSRoute" else ""
        (route,) = load(tmp_path, L4.format(kind=kind, hosts=hosts)).mesh.gateway_api.routes
        assert route.kind == kind


def test_routes_are_sorted_by_key_whatever_the_file_order(tmp_path: Path) -> None:
    text = "---\n".join(
        [ROUTE.replace("name: r,", "name: z,"), GRPC, ROUTE.replace("name: r,", "name: a,")]
    )
    routes = load(tmp_path, text).mesh.gateway_api.routes
    assert [(r.kind, r.name) for r in routes] == [
        ("GRPCRoute", "g"),
        ("HTTPRoute", "a"),
        ("HTTPRoute", "z"),
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("value: /api}", "value: api}", "value: must be an absolute path"),
        ("value: /api}", "value: /a//b}", "value: must not hold '//'"),
        ("type: PathPrefix, value: /api", "type: Prefix, value: /api", "type: must be one of"),
        ("method: GET", "method: FETCH", "method: must be one of"),
        ("weight: 90", "weight: 1000001", "weight: must be at most 1000000"),
        ("weight: 90", "weight: -1", "weight: must not be negative"),
        ("{name: b, port: 80,", "{name: b,", "port: is required when the backend is a Service"),
        ("hostnames: [shop.example.com]", "hostnames: [10.0.0.1]", "not an IP address"),
        ("hostnames: [shop.example.com]", "hostnames: [Shop.Example]", "must be a hostname"),
        ("hostnames: [shop.example.com]", "hostnames: ['a.*.com']", "must be a hostname"),
        ("statusCode: 301", "statusCode: 404", "statusCode: must be one of 301"),
        ("scheme: https", "scheme: ftp", "scheme: must be one of http, https"),
        ("request: 2m", "request: 10 seconds", "request: must be a duration"),
        ("backendRequest: 1m0s500ms", "backendRequest: 3m", "must not be longer than request"),
        (
            "- name: api\n",
            "- name: api\n    sessionPersistence: {}\n",
            "sessionPersistence: is not supported",
        ),
        ("- name: api\n", "- name: api\n    retry: {attempts: 2}\n", "retry: is not supported"),
        ("- name: api\n", "- name: api\n    backendRef: []\n", "did you mean 'backendRefs'"),
        (
            "type: RequestMirror",
            "type: ExtensionRef",
            "type: ExtensionRef filters are not supported",
        ),
        (
            "numerator: 1, denominator: 4",
            "numerator: 5, denominator: 4",
            "must not be more than denominator",
        ),
        (
            "    - type: RequestMirror\n",
            "    - {type: RequestRedirect, requestRedirect: {port: 8080}}\n    - type: RequestMirror\n",
            "filters: RequestRedirect and URLRewrite cannot",
        ),
        (
            "requestHeaderModifier: {set",
            "requestHeaderModifer: {set",
            "did you mean 'requestHeaderModifier'",
        ),
        (
            '{name: x-b, value: "2"}',
            '{name: x-b, value: "2"}, {name: X-B, value: "3"}',
            "repeats header 'X-B'",
        ),
        ("remove: [x-c]", "remove: ['bad header']", "must be an HTTP header name"),
        ('value: "^[0-9]+$"', 'value: "(["', "is not an RE2 regular expression"),
        # what Python's re takes and Envoy's RE2 refuses, at the query match's line
        ('value: "^[0-9]+$"', 'value: "(a)\\\\1"', "invalid escape sequence"),
        ('value: "^[0-9]+$"', 'value: "a(?=b)"', "invalid perl operator: (?="),
        ('value: "^[0-9]+$"', 'value: "(?<!a)b"', "invalid perl operator: (?<"),
        ('value: "^[0-9]+$"', 'value: "a++"', "bad repetition operator"),
        ('value: "^[0-9]+$"', 'value: "a{1001}"', "invalid repetition size"),
        ('value: "^[0-9]+$"', 'value: "a{200}"', "RE2 program of size 204, over Envoy's limit"),
        (
            'allowOrigins: ["https://*.example.com"]',
            'allowOrigins: ["*"], allowCredentials: true',
            "cannot be true with allowOrigins",
        ),
        (
            "sectionName: http, port: 80",
            "sectionName: Http",
            "sectionName: must be a lower-case DNS name",
        ),
        (
            "{name: web, sectionName: http, port: 80}",
            "{name: web, port: 70000}",
            "port: must be at most 65535",
        ),
        (
            "path: {type: PathPrefix, value: /api}",
            "path: {type: Exact, value: /api}",
            "ReplacePrefixMatch needs every match",
        ),
    ],
)
def test_a_wrong_route_value_is_an_error_at_its_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in ROUTE
    found = messages(tmp_path, ROUTE.replace(old, new))
    assert any(expected in m for m in found), found
    problem = next(
        p
        for p in errors(tmp_path, ROUTE.replace(old, new))
        if expected in p.message or expected in f"{p.field}: {p.message}"
    )
    assert problem.path.endswith("doc.yaml") and problem.line > 1


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "protocol: HTTPS",
            "protocol: HTTP3",
            "protocol: must be one of HTTP, HTTPS, TLS, TCP, UDP",
        ),
        ("port: 443", "port: 0", "port: must be at least 1"),
        ("name: https\n", "name: http\n", "listener names must be unique"),
        ("- {name: web-cert}\n", "", None),
        (
            "tls: {mode: Passthrough}",
            "tls: {mode: Terminate}",
            "certificateRefs: is required for mode Terminate",
        ),
        (
            "tls: {mode: Passthrough}",
            "tls: {mode: Passive}",
            "mode: must be one of Terminate, Passthrough",
        ),
        (
            "{name: tcp, port: 9000, protocol: TCP}",
            "{name: tcp, port: 9000, protocol: TCP, hostname: a.b}",
            "hostname: must not be set for protocol TCP",
        ),
        (
            "{name: tcp, port: 9000, protocol: TCP}",
            "{name: tcp, port: 9000, protocol: TLS}",
            "tls: is required for protocol TLS",
        ),
        ("value: 10.1.2.3", "value: not-an-ip", "value: must be an IP address"),
        (
            "{type: Hostname, value: gw.example.com}",
            "{type: NamedAddress, value: x}",
            "NamedAddress is not supported",
        ),
        ("{name: web-cert}", "{name: web-cert, kind: ConfigMap}", "certificates are Secrets"),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchExpressions: [{key: team, operator: Like, values: [a]}]}}",
            "matchExpressions[0].operator: must be one of",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchExpressions: [{key: team, operator: In}]}}",
            "must hold at least one value for operator In",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchExpressions: [{key: team, operator: Exists, values: [a]}]}}",
            "must be left out for operator Exists",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchExpressions: [{key: 'bad key', operator: Exists}]}}",
            "is not a label name",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchExpressions: [{operator: Exists}]}}",
            "key: is required",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchExpressions: [{key: a, operator: In, values: ['-x']}]}}",
            "must be at most 63 letters",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchLabels: {'team/': a}}}",
            "is not a label name: its name",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Selector, selector: {matchLabels: {team: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}}}",
            "must be at most 63",
        ),
        (
            '{from: Selector, selector: {matchLabels: {shared: "yes"}}}',
            "{from: Same, selector: {}}",
            "applies only when from is Selector",
        ),
        ("gatewayClassName: xdsd", "gatewayClassname: xdsd", "did you mean 'gatewayClassName'"),
        (
            "name: certs/web.pem",
            "name: certs/none.pem",
            "name: file 'certs/none.pem' does not exist",
        ),
        (
            "group: xdsd.dev, kind: File",
            "group: xdsd.dev, kind: Files",
            "a file reference is group xdsd.dev, kind File",
        ),
        (
            "  listeners:\n",
            "  infrastructure: {labels: {a: b}}\n  listeners:\n",
            "infrastructure: is not supported by xdsd",
        ),
    ],
)
def test_a_wrong_gateway_value_is_an_error_at_its_field(
    tmp_path: Path, old: str, new: str, expected: str | None
) -> None:
    assert old in GATEWAY
    text = CLASS + "---\n" + GATEWAY.replace(old, new)
    if expected is None:
        load(tmp_path, text)  # fine as well
        return
    found = messages(tmp_path, text)
    assert any(expected in m for m in found), found


def test_refused_gateway_fields_only_matter_for_xdsds_gateways(tmp_path: Path) -> None:
    text = GATEWAY.replace("  listeners:\n", "  infrastructure: {labels: {a: b}}\n  listeners:\n")
    other = CLASS.replace("xdsd.dev/gateway-controller", "acme.io/gateway")
    load(tmp_path, other + "---\n" + text)  # another controller's Gateway: not served
    (problem,) = errors(tmp_path, CLASS + "---\n" + text)
    lines = (CLASS + "---\n" + text).splitlines()
    assert problem.field == "infrastructure"
    assert lines[problem.line - 1].startswith("  infrastructure:")
    params = "  parametersRef: {group: acme.io, kind: Parameters, name: p}\n"
    load(
        tmp_path,
        other.replace(
            "spec: {controllerName: acme.io/gateway}",
            "spec:\n  controllerName: acme.io/gateway\n" + params,
        ),
    )
    found = messages(
        tmp_path,
        CLASS.replace(
            "spec: {controllerName: xdsd.dev/gateway-controller}",
            "spec:\n  controllerName: xdsd.dev/gateway-controller\n" + params,
        ),
    )
    assert any("parametersRef: is not supported" in m for m in found), found


def test_limits_are_the_apis(tmp_path: Path) -> None:
    rules = "  rules:\n" + "  - backendRefs: [{name: a, port: 80}]\n" * 17
    text = V1 + "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n" + rules
    assert any("rules: holds 17 items" in m and "at most 16" in m for m in messages(tmp_path, text))
    backends = "[" + ", ".join(["{name: a, port: 80}"] * 17) + "]"
    text = (
        V1
        + f"kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{backendRefs: {backends}}}]\n"
    )
    assert any("holds 17 items" in m for m in messages(tmp_path, text))
    listeners = "".join(
        f"  - {{name: l{i}, port: {1000 + i}, protocol: HTTP}}\n" for i in range(65)
    )
    text = (
        V1
        + "kind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: x\n  listeners:\n"
        + listeners
    )
    assert any("listeners: holds 65 items" in m for m in messages(tmp_path, text))
    hosts = "[" + ", ".join(f"h{i}.example.com" for i in range(17)) + "]"
    text = V1 + f"kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  hostnames: {hosts}\n"
    assert any("hostnames: holds 17 items" in m for m in messages(tmp_path, text))
    filters = (
        "["
        + ", ".join(
            ["{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}}}"] * 17
        )
        + "]"
    )
    text = (
        V1 + f"kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{filters: {filters}}}]\n"
    )
    assert any("filters: holds 17 items" in m for m in messages(tmp_path, text))
    matches = "[" + ", ".join(["{path: {value: /a}}"] * 65) + "]"
    text = (
        V1 + f"kind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  rules: [{{matches: {matches}}}]\n"
    )
    assert any("matches: holds 65 items" in m for m in messages(tmp_path, text))


def test_versions_and_kinds_not_read_are_unknown_kinds(tmp_path: Path) -> None:
    text = V1 + "kind: ListenerSet\nmetadata: {name: l}\nspec: {}\n"
    text += "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {name: x}\nspec: {}\n"
    text += "---\napiVersion: gateway.networking.k8s.io/v1alpha1\nkind: HTTPRoute\nmetadata: {name: x}\nspec: {}\n"
    warnings = [w.message for w in load(tmp_path, text).warnings]
    assert len(warnings) == 3 and all("ignored" in w for w in warnings), warnings
    assert "it reads HTTPRoute of gateway.networking.k8s.io v1, v1beta1" in warnings[2]
    (tmp_path / "doc.yaml").write_text(text)
    limits = dataclasses.replace(DEFAULT_LIMITS, refuse_unknown_kinds=True)
    with pytest.raises(ConfigError) as e:
        load_directory(str(tmp_path), limits=limits)
    assert len(e.value.problems) == 3


PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEsecretkeymaterial\n-----END PRIVATE KEY-----\n"


def secret(body: str) -> str:
    return "apiVersion: v1\nkind: Secret\nmetadata: {name: web-cert, namespace: edge}\n" + body


def test_a_tls_secret_is_read_in_either_form(tmp_path: Path) -> None:
    crt = base64.b64encode(PEM_CERT.encode()).decode()
    key = base64.b64encode(PEM_KEY.encode()).decode()
    text = secret(f"type: kubernetes.io/tls\ndata:\n  tls.crt: {crt}\n  tls.key: {key}\n")
    (s,) = load(tmp_path, text).mesh.gateway_api.secrets
    assert (s.key.kind, s.namespace, s.name) == ("Secret", "edge", "web-cert")
    assert s.certificate == PEM_CERT.encode() and s.private_key == PEM_KEY.encode()
    assert "secretkeymaterial" not in repr(s) and "MIIB" not in repr(s)
    text = secret(
        "type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n    "
        + PEM_CERT.replace("\n", "\n    ")
        + "\n  tls.key: |\n    "
        + PEM_KEY.replace("\n", "\n    ")
        + "\n"
    )
    (s2,) = load(tmp_path, text).mesh.gateway_api.secrets
    assert s2 == s


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "type: kubernetes.io/tls\ndata: {tls.crt: '!!notbase64', tls.key: a2V5}\n",
            "is not base64",
        ),
        (
            "type: kubernetes.io/tls\nstringData: {tls.crt: 'MIIEsecretkeymaterial'}\n",
            "does not hold PEM data",
        ),
        ("type: kubernetes.io/tls\ndata: [MIIEsecretkeymaterial]\n", "must be a mapping"),
        ("type: kubernetes.io/tls\nstringData: {tls.crt: {x: 1}}\n", "must be a string"),
        (
            "type: kubernetes.io/tls\nstringData: {tls.crt: MIIEsecretkeymaterial, foo: MIIEsecretkeymaterial}\n",
            "unknown field",
        ),
    ],
)
def test_a_bad_secret_never_quotes_its_bytes(tmp_path: Path, body: str, expected: str) -> None:
    found = errors(tmp_path, secret(body))
    assert any(expected in f"{p.field}: {p.message}" for p in found), found
    assert all("secretkeymaterial" not in str(p) for p in found)


def test_other_secrets_are_kinds_xdsd_does_not_read(tmp_path: Path) -> None:
    text = secret("type: Opaque\nstringData: {password: MIIEsecretkeymaterial}\n")
    (warning,) = load(tmp_path, text).warnings
    assert warning.field == "type" and "Secret of type 'Opaque' is not read" in warning.message
    assert "secretkeymaterial" not in str(warning)
    (tmp_path / "doc.yaml").write_text(text)
    limits = dataclasses.replace(DEFAULT_LIMITS, refuse_unknown_kinds=True)
    with pytest.raises(ConfigError):
        load_directory(str(tmp_path), limits=limits)


def test_status_is_ignored_and_bounded_input_is_refused(tmp_path: Path) -> None:
    load(tmp_path, ROUTE)  # ROUTE has a status
    text = ROUTE.replace("status: {parents: []}", "stauts: {}")
    assert any("did you mean" in m for m in messages(tmp_path, text))
    huge = (
        V1 + "kind: HTTPRoute\nmetadata: {name: r}\nspec:\n  hostnames: [" + "a" * 300 + ".com]\n"
    )
    assert any("must be a hostname" in m for m in messages(tmp_path, huge))
