"""Bad VirtualService HTTP rules: each wrong value is refused with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import envoy_accepts
from tests.sources.test_bad_input import DR, SERVICE
from xdsd.cli import main
from xdsd.model import StringMatch
from xdsd.model.rules import MatchKind
from xdsd.sources.loader import load_directory
from xdsd.translate import NodeClass
from xdsd.translate.static import render_static

HEAD = (
    "apiVersion: networking.istio.io/v1\n"
    "kind: VirtualService\n"
    "metadata: {name: reviews}\n"
    "spec:\n"
    "  hosts: [reviews]\n"
    "  http:\n"
    "  - route: [{destination: {host: reviews}}]\n"
)  # the rule is on line 7; each case adds its field on line 8 onwards


def rule(extra: str) -> str:
    return HEAD + extra


# name → (rule text, expected fragments of the message)
CASES: dict[str, tuple[str, list[str]]] = {
    "redirect and route": (
        rule("    redirect: {uri: /x}\n"),
        ["v.yaml:8:", "http[0].redirect", "cannot be used together with route"],
    ),
    "redirect code": (
        HEAD.replace(
            "  - route: [{destination: {host: reviews}}]\n",
            "  - redirect: {uri: /x, redirectCode: 304}\n",
        ),
        ["v.yaml:7:", "http[0].redirect.redirectCode", "301, 302, 303, 307, 308", "304"],
    ),
    "redirect changes nothing": (
        HEAD.replace("  - route: [{destination: {host: reviews}}]\n", "  - redirect: {}\n"),
        ["http[0].redirect", "must change something"],
    ),
    "redirect port and derivePort": (
        HEAD.replace(
            "  - route: [{destination: {host: reviews}}]\n",
            "  - redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}\n",
        ),
        ["http[0].redirect.derivePort", "together with port"],
    ),
    "redirect with rewrite": (
        HEAD.replace(
            "  - route: [{destination: {host: reviews}}]\n",
            "  - redirect: {uri: /x}\n    rewrite: {uri: /y}\n",
        ),
        ["v.yaml:8:", "http[0].rewrite", "cannot be used with redirect"],
    ),
    "direct response status": (
        HEAD.replace(
            "  - route: [{destination: {host: reviews}}]\n", "  - directResponse: {status: 99}\n"
        ),
        ["v.yaml:7:", "http[0].directResponse.status", "at least 200"],
    ),
    "direct response body both": (
        HEAD.replace(
            "  - route: [{destination: {host: reviews}}]\n",
            "  - directResponse:\n      status: 200\n      body: {string: a, bytes: YQ==}\n",
        ),
        ["v.yaml:9:", "http[0].directResponse.body", "exactly one of string, bytes"],
    ),
    "direct response bytes not base64": (
        HEAD.replace(
            "  - route: [{destination: {host: reviews}}]\n",
            "  - directResponse:\n      status: 200\n      body: {bytes: '%%%'}\n",
        ),
        ["v.yaml:9:", "http[0].directResponse.body.bytes", "base64"],
    ),
    "fault abort status": (
        rule("    fault: {abort: {httpStatus: 99, percentage: {value: 10}}}\n"),
        ["v.yaml:8:", "http[0].fault.abort.httpStatus", "at least 200"],
    ),
    "fault abort grpc name": (
        rule("    fault: {abort: {grpcStatus: NOPE, percentage: {value: 10}}}\n"),
        ["v.yaml:8:", "http[0].fault.abort.grpcStatus", "'NOPE'"],
    ),
    "fault abort both statuses": (
        rule("    fault: {abort: {grpcStatus: UNAVAILABLE, httpStatus: 503}}\n"),
        ["http[0].fault.abort", "exactly one of httpStatus, grpcStatus"],
    ),
    "fault percentage over 100": (
        rule(
            "    fault:\n      delay:\n        fixedDelay: 1s\n        percentage: {value: 150}\n"
        ),
        ["v.yaml:11:", "http[0].fault.delay.percentage.value", "0 to 100", "150"],
    ),
    "fault delay without fixedDelay": (
        rule("    fault: {delay: {percentage: {value: 5}}}\n"),
        ["http[0].fault.delay.fixedDelay", "is required"],
    ),
    "fault exponential delay": (
        rule(
            "    fault: {delay: {exponentialDelay: 1s, fixedDelay: 1s, percentage: {value: 5}}}\n"
        ),
        ["http[0].fault.delay.exponentialDelay", "not supported"],
    ),
    "empty fault": (rule("    fault: {}\n"), ["http[0].fault", "must set delay or abort"]),
    "mirror unknown host": (
        rule("    mirror: {host: nowhere}\n"),
        ["v.yaml:8:", "http[0].mirror.host", "no service named 'nowhere'"],
    ),
    "mirror undefined subset": (
        rule(
            "    mirrors:\n    - destination: {host: reviews, subset: v1}\n"
            "    - destination: {host: reviews, subset: v7}\n"
        ),
        ["http[0].mirrors[1].destination.subset", "'v7'"],
    ),
    "mirror and mirrors": (
        rule("    mirror: {host: reviews}\n    mirrors: [{destination: {host: reviews}}]\n"),
        ["http[0].mirrors", "together with mirror"],
    ),
    "mirrorPercentage without mirror": (
        rule("    mirrorPercentage: {value: 5}\n"),
        ["http[0].mirrorPercentage", "needs mirror"],
    ),
    "cors origin without kind": (
        rule("    corsPolicy: {allowOrigins: [{}]}\n"),
        ["http[0].corsPolicy.allowOrigins[0]", "exactly one of exact, prefix, regex"],
    ),
    "cors credentials not a boolean": (
        rule("    corsPolicy: {allowCredentials: 'yes'}\n"),
        ["http[0].corsPolicy.allowCredentials", "true or false"],
    ),
    "header value not a string": (
        rule("    headers:\n      request:\n        set: {x-n: 3}\n"),
        ["v.yaml:10:", "http[0].headers.request.set.x-n", "must be a string", "quote it"],
    ),
    "destination headers unknown field": (
        HEAD.replace(
            "  - route: [{destination: {host: reviews}}]\n",
            "  - route:\n    - destination: {host: reviews}\n"
            "      headers: {request: {sett: {a: b}}}\n",
        ),
        ["v.yaml:9:", "http[0].route[0].headers.request.sett", "did you mean 'set'"],
    ),
    "match query regex": (
        rule("    match: [{queryParams: {q: {regex: '(('}}}]\n"),
        ["http[0].match[0].queryParams.q.regex", "regular expression"],
    ),
    "match source labels not strings": (
        rule("    match: [{sourceLabels: {version: 2}}]\n"),
        ["http[0].match[0].sourceLabels.version", "strings"],
    ),
    "match ignoreUriCase not a boolean": (
        rule("    match: [{ignoreUriCase: 1}]\n"),
        ["http[0].match[0].ignoreUriCase", "true or false"],
    ),
    "match statPrefix": (
        rule("    match: [{statPrefix: x}]\n"),
        ["http[0].match[0].statPrefix", "not supported"],
    ),
    "rewrite uri and regex": (
        rule("    rewrite: {uri: /a, uriRegexRewrite: {match: x, rewrite: y}}\n"),
        ["http[0].rewrite.uriRegexRewrite", "together with uri"],
    ),
    "rewrite bad regex": (
        rule("    rewrite: {uriRegexRewrite: {match: '(', rewrite: y}}\n"),
        ["http[0].rewrite.uriRegexRewrite.match", "regular expression"],
    ),
    "retries remote localities not a boolean": (
        rule("    retries: {attempts: 2, retryRemoteLocalities: 'true'}\n"),
        ["http[0].retries.retryRemoteLocalities", "true or false"],
    ),
}

# JWT claim conditions: taken as a header name no request carries, ``withoutHeaders``
# would match every request (fail open); refused instead, at the condition's line.
for _key in ("headers", "withoutHeaders"):
    CASES[f"{_key} on a JWT claim"] = (
        rule(f"    match:\n    - {_key}:\n        '@request.auth.claims.role': {{exact: admin}}\n"),
        ["v.yaml:10:", f"http[0].match[0].{_key}.@request.auth.claims.role", "not supported"],
    )
    CASES[f"{_key} on an @ name"] = (
        rule(f"    match:\n    - {_key}:\n        '@source': {{}}\n"),
        ["v.yaml:10:", f"http[0].match[0].{_key}.@source", "not an HTTP header name"],
    )

# Envoy refuses an empty StringMatcher prefix and an empty regex, and with them the whole
# route configuration of the port: refused here, wherever a StringMatch is read.
_EMPTY_PLACES = {
    "authority": (
        "    match:\n    - authority: {KIND: ''}\n",
        "v.yaml:9:",
        "http[0].match[0].authority.KIND",
    ),
    "method": (
        "    match:\n    - method: {KIND: ''}\n",
        "v.yaml:9:",
        "http[0].match[0].method.KIND",
    ),
    "scheme": (
        "    match:\n    - scheme: {KIND: ''}\n",
        "v.yaml:9:",
        "http[0].match[0].scheme.KIND",
    ),
    "headers": (
        "    match:\n    - headers:\n        x-a: {KIND: ''}\n",
        "v.yaml:10:",
        "http[0].match[0].headers.x-a.KIND",
    ),
    "withoutHeaders": (
        "    match:\n    - withoutHeaders:\n        x-a: {KIND: ''}\n",
        "v.yaml:10:",
        "http[0].match[0].withoutHeaders.x-a.KIND",
    ),
    "queryParams": (
        "    match:\n    - queryParams:\n        q: {KIND: ''}\n",
        "v.yaml:10:",
        "http[0].match[0].queryParams.q.KIND",
    ),
    "cors origin": (
        "    corsPolicy:\n      allowOrigins:\n      - {KIND: ''}\n",
        "v.yaml:10:",
        "http[0].corsPolicy.allowOrigins[0].KIND",
    ),
}
for _place, (_text, _line, _field) in _EMPTY_PLACES.items():
    for _kind in ("prefix", "regex"):
        CASES[f"empty {_kind} in {_place}"] = (
            rule(_text.replace("KIND", _kind)),
            [_line, _field.replace("KIND", _kind), "must not be empty"],
        )
# The uri's empty prefix is kept (Envoy's RouteMatch.prefix may be empty; see below).
CASES["empty regex in uri"] = (
    rule("    match:\n    - uri: {regex: ''}\n"),
    ["v.yaml:9:", "http[0].match[0].uri.regex", "must not be empty"],
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_http_rule_names_file_line_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = CASES[case]
    (tmp_path / "s.toml").write_text(SERVICE)
    (tmp_path / "d.yaml").write_text(DR)
    (tmp_path / "v.yaml").write_text(text)
    code = main(["validate", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


def test_fault_without_percentage_is_a_warning(tmp_path: Path) -> None:
    """Istio injects no fault when percentage is left out; xdsd does the same, and says
    so."""
    (tmp_path / "s.toml").write_text(SERVICE)
    (tmp_path / "v.yaml").write_text(rule("    fault: {abort: {httpStatus: 500}}\n"))
    result = load_directory(tmp_path)
    (warning,) = result.warnings
    assert warning.field == "http[0].fault.abort"
    assert "no request is aborted" in warning.message
    (http,) = result.mesh.virtual_services[0].http
    assert http.fault is not None and http.fault.abort is not None
    assert http.fault.abort.percentage == 0.0


def test_empty_exact_matches_are_kept_and_envoy_accepts_them(tmp_path: Path) -> None:
    """``exact: ''`` stays allowed (Envoy's StringMatcher.exact and RouteMatch.path may be
    empty), and so does the uri's ``prefix: ''`` (Envoy's RouteMatch.prefix may be empty:
    every path; Istio accepts it): loaded from files, translated, and accepted by
    ``envoy --mode validate``."""
    (tmp_path / "s.toml").write_text(SERVICE)
    (tmp_path / "v.yaml").write_text(
        HEAD.replace(
            "  - route:",
            "  - match:\n"
            "    - uri: {exact: ''}\n"
            "      authority: {exact: ''}\n"
            "      headers: {x-a: {exact: ''}}\n"
            "      withoutHeaders: {x-b: {exact: ''}}\n"
            "      queryParams: {q: {exact: ''}}\n"
            "    - uri: {prefix: ''}\n"
            "    corsPolicy: {allowOrigins: [{exact: ''}]}\n"
            "    route:",
        )
    )
    result = load_directory(tmp_path)  # raises on an error
    (http,) = result.mesh.virtual_services[0].http
    block, any_path = http.match
    assert block.uri == StringMatch(MatchKind.EXACT, "")
    assert any_path.uri == StringMatch(MatchKind.PREFIX, "")
    assert [h.match for h in block.headers] == [StringMatch(MatchKind.EXACT, "")]
    node = NodeClass("client", instance_ip="127.0.0.2", outbound_ip="127.0.0.10")
    envoy_accepts(render_static(result.mesh, node, admin_port=0), tmp_path / "envoy.json")
