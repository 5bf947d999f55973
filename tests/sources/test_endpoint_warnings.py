"""What loads but answers 503: a service without endpoints, a DestinationRule subset
whose labels select none. Warnings (on the causing line) from ``xdsd validate``, errors
under ``--strict``; none where no endpoints is fine (ServiceEntry hosts resolved by DNS,
resolution NONE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdsd.cli import main

SERVICE = """\
kind: Service
name: reviews
ports:
- {number: 9080, protocol: HTTP}
endpoints:
- {address: 10.0.0.1, labels: {version: v1}}
- {address: 10.0.0.2, labels: {version: v2}}
"""

RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v3
    labels:
      version: v3
"""

ROUTED = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v3}
"""

ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
"""

EMPTY = "kind: Service\nname: ratings\nports: [{number: 9080, protocol: HTTP}]\n"

SUBSET_WARNING = (
    "rule.yaml:9: warning: subsets[1]: subset 'v3' selects no endpoint of Service "
    "default/reviews (none is labelled version=v3): traffic routed to it fails with 503 "
    "(no healthy upstream)"
)
EMPTY_WARNING = (
    "empty.yaml:1: warning: endpoints: Service default/ratings has no endpoints: requests "
    "to it fail with 503 (no healthy upstream); list where it runs (a service outside the "
    "mesh can be a ServiceEntry with resolution DNS)"
)

# name → (files, the warnings after the directory's path)
CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    "subset selecting nothing, routed to": (
        {"s.yaml": SERVICE, "rule.yaml": RULE, "vs.yaml": ROUTED},
        [SUBSET_WARNING],
    ),
    "service without endpoints": ({"empty.yaml": EMPTY}, [EMPTY_WARNING]),
    "entry selecting no workload": (
        {"e.yaml": ENTRY + "  resolution: STATIC\n  workloadSelector:\n    labels: {app: vm}\n"},
        [
            "e.yaml:8: warning: workloadSelector: host 'api.example.com' has no endpoints "
            "(its workloadSelector selects no WorkloadEntry): requests to it fail with 503 "
            "(no healthy upstream)"
        ],
    ),
    "entry listing no endpoints": (
        {"e.yaml": ENTRY + "  resolution: STATIC\n"},
        [
            "e.yaml:1: warning: endpoints: host 'api.example.com' has no endpoints (the "
            "entry lists none): requests to it fail with 503 (no healthy upstream)"
        ],
    ),
    "entry resolved by DNS is fine": ({"e.yaml": ENTRY + "  resolution: DNS\n"}, []),
    "entry with resolution NONE is fine": (
        {
            "e.yaml": ENTRY.replace(
                "443, name: https, protocol: HTTPS", "80, name: http, protocol: HTTP"
            )
            + "  resolution: NONE\n"
        },
        [],
    ),
    "subsets all matching are fine": (
        {"s.yaml": SERVICE, "rule.yaml": RULE.replace("version: v3", "version: v2")},
        [],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_answers_503_is_a_warning_and_strict_refuses_it(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, expected = CASES[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["validate", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert warnings == [f"{tmp_path}/{w}" for w in expected]
    assert main(["validate", "--strict", str(tmp_path)]) == (1 if expected else 0)
    err = capsys.readouterr().err
    for w in expected:
        assert f"{tmp_path}/{w.replace('warning: ', '')}" in err.splitlines(), err
