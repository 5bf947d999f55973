"""WorkloadGroup input: every field read, every value xdsd cannot honour refused at its
line (``exec`` by name), and registered workloads merged into the model as entries of
their group without reading the directory again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.errors import ConfigError
from xdsd.model import ResourceKey
from xdsd.model.networking import ProbeScheme
from xdsd.model.registrations import Health, Locality, Registration
from xdsd.resources import ENDPOINT
from xdsd.sources import DirectoryLoader, load_directory
from xdsd.translate import MeshTranslation, NodeClass


def group(spec: str, name: str = "api", namespace: str = "default") -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )


FULL = """\
  metadata:
    labels: {app: api, tier: back}
    annotations: {owner: team-a}
  template:
    labels: {version: v1}
    ports: {http: 9080}
    serviceAccount: api
    network: net1
    locality: eu/west-1/a
    weight: 3
  probe:
    initialDelaySeconds: 2
    timeoutSeconds: 3
    periodSeconds: 4
    successThreshold: 2
    failureThreshold: 5
    httpGet:
      path: /ready
      port: 9080
      host: 10.1.1.1
      scheme: HTTPS
      httpHeaders: [{name: X-Probe, value: "1"}]
"""

SERVICE = 'kind = "Service"\nname = "api"\n[[ports]]\nname = "http"\nnumber = 8080\n'
SERVICE += 'protocol = "HTTP"\n'


def test_every_field_is_read(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(group(FULL))
    (g,) = load_directory(str(tmp_path)).mesh.workload_groups
    assert g.key == ResourceKey("WorkloadGroup", "default", "api")
    assert g.labels == (("app", "api"), ("tier", "back"))
    assert g.annotations == (("owner", "team-a"),)
    assert g.entry_labels == (("app", "api"), ("tier", "back"), ("version", "v1"))
    assert g.service == "api"
    t = g.template
    assert (t.address, t.ports, t.service_account, t.network, t.weight) == (
        "",
        (("http", 9080),),
        "api",
        "net1",
        3,
    )
    assert t.locality == Locality("eu", "west-1", "a")
    p = g.probe
    assert p is not None and p.tcp_socket is None and p.http_get is not None
    assert (p.initial_delay_seconds, p.timeout_seconds, p.period_seconds) == (2, 3, 4)
    assert (p.success_threshold, p.failure_threshold) == (2, 5)
    h = p.http_get
    assert (h.path, h.port, h.host, h.scheme, h.headers) == (
        "/ready",
        9080,
        "10.1.1.1",
        ProbeScheme.HTTPS,
        (("X-Probe", "1"),),
    )


def test_probe_defaults_are_kubernetes(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(group("  template: {}\n  probe: {tcpSocket: {port: 22}}\n"))
    (g,) = load_directory(str(tmp_path)).mesh.workload_groups
    p = g.probe
    assert p is not None and p.tcp_socket is not None and p.tcp_socket.port == 22
    assert (p.initial_delay_seconds, p.timeout_seconds, p.period_seconds) == (0, 1, 10)
    assert (p.success_threshold, p.failure_threshold) == (1, 3)


@pytest.mark.parametrize(
    ("spec", "line", "field", "words"),
    [
        ("  template: {address: 10.0.0.1}\n", 5, "template.address", "must be empty"),
        ("  metadata: {labels: {a: 1}}\n  template: {}\n", 5, "metadata.labels.a", "strings"),
        ("  template: {}\n  probe: {exec: {command: [true]}}\n", 6, "probe.exec", "cannot run"),
        ("  template: {}\n  probe: {grpc: {port: 1}}\n", 6, "probe.grpc", "not honoured"),
        ("  template: {}\n  probe: {periodSeconds: 5}\n", 6, "probe.httpGet", "is required"),
        (
            "  template: {}\n  probe: {httpGet: {port: 1}, tcpSocket: {port: 2}}\n",
            6,
            "probe.tcpSocket",
            "exactly one",
        ),
        ("  template: {}\n  probe: {tcpSocket: {port: 0}}\n", 6, "probe.tcpSocket.port", "1"),
        (
            "  template: {}\n  probe: {tcpSocket: {port: 2, host: x}}\n",
            6,
            "probe.tcpSocket.host",
            "not honoured",
        ),
        ("  template: {}\n  probe: {httpGet: {port: 1, path: x}}\n", 6, "probe.httpGet.path", "/"),
        (
            "  template: {}\n  probe: {httpGet: {port: 1, scheme: FTP}}\n",
            6,
            "probe.httpGet.scheme",
            "HTTP",
        ),
        (
            "  template: {}\n  probe: {httpGet: {port: 1, httpHeaders: [{name: 'a b'}]}}\n",
            6,
            "probe.httpGet.httpHeaders[0].name",
            "header name",
        ),
        (
            "  template: {}\n  probe: {tcpSocket: {port: 1}, timeoutSeconds: 0}\n",
            6,
            "probe.timeoutSeconds",
            "at least 1",
        ),
        (
            "  template: {}\n  probe: {tcpSocket: {port: 1}, failureThreshold: 1.5}\n",
            6,
            "probe.failureThreshold",
            "integer",
        ),
        (
            "  template: {}\n  probe: {tcpSocket: {port: 1}, initialDelaySeconds: -1}\n",
            6,
            "probe.initialDelaySeconds",
            "negative",
        ),
        ("  template: {}\n  bogus: 1\n", 6, "bogus", "unknown field"),
        ("  template: {weight: 0}\n", 5, "template.weight", "at least 1"),
        ("  template: {}\n  probe: {tcpSocket: {port: 1}, livenessProbe: 1}\n", 6, "probe.", ""),
        ("  metadata: {}\n", 4, "template", "is required"),
    ],
)
def test_hostile_values_are_refused_at_their_line(
    tmp_path: Path, spec: str, line: int, field: str, words: str
) -> None:
    (tmp_path / "g.yaml").write_text(group(spec))
    with pytest.raises(ConfigError) as e:
        load_directory(str(tmp_path))
    found = [p for p in e.value.problems if p.field.startswith(field)]
    assert found, e.value.problems
    assert found[0].line == line, found
    assert words in found[0].message, found


def _registered_mesh(tmp_path: Path) -> DirectoryLoader:
    (tmp_path / "api.toml").write_text(SERVICE)
    (tmp_path / "g.yaml").write_text(
        group("  metadata: {labels: {app: api}}\n  template: {ports: {http: 9080}}\n")
        + "---\n"
        + "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n"
        "  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n"
        "  workloadSelector: {labels: {app: api}}\n"
    )
    return DirectoryLoader(str(tmp_path))


KEY = ResourceKey("WorkloadGroup", "default", "api")


def test_registrations_become_entries_and_endpoints(tmp_path: Path) -> None:
    loader = _registered_mesh(tmp_path)
    cold = loader.load()
    assert all(not s.endpoints for s in cold.mesh.services)
    loader.registrations = (
        Registration(KEY, "10.0.0.7", "n1", (("version", "v1"),), Locality("eu")),
        Registration(KEY, "10.0.0.8", "n2", health=Health.UNHEALTHY),
    )
    merged = loader.load([])
    assert merged.reread == 0  # no file read again
    entries = {e.name: e for e in merged.mesh.workload_entries}
    assert set(entries) == {"api-10.0.0.7", "api-10.0.0.8"}
    e = entries["api-10.0.0.7"]
    assert e.group == "api" and e.service == "api"
    assert e.endpoint.labels == (("app", "api"), ("version", "v1"))
    assert e.endpoint.locality == Locality("eu")
    api = merged.mesh.service_by_name("default", "api")
    assert api is not None
    assert [(x.address, x.ports, x.healthy) for x in api.endpoints] == [
        ("10.0.0.7", (), True),  # the sidecar's own inbound port, not the template's
        ("10.0.0.8", (), False),
    ]
    ext = merged.mesh.service("api.example.com", "default")
    assert ext is not None
    assert [(x.address, x.ports) for x in ext.endpoints] == [
        ("10.0.0.7", (("http", 9080),)),
        ("10.0.0.8", (("http", 9080),)),
    ]
    # EDS: the unhealthy one is sent UNHEALTHY
    snapshot = MeshTranslation(merged.mesh).snapshot_for(NodeClass("client"))
    cla = snapshot.resources[ENDPOINT]["outbound|8080||api.default.svc.cluster.local"].message
    statuses = {
        lb.endpoint.address.socket_address.address: lb.health_status
        for group_ in cla.endpoints
        for lb in group_.lb_endpoints
    }
    assert statuses == {"10.0.0.7": 0, "10.0.0.8": 2}  # UNKNOWN, UNHEALTHY
    # gone again: the mesh equals the cold one
    loader.registrations = ()
    assert loader.load([]).mesh == cold.mesh


def test_an_unchanged_registration_keeps_its_objects(tmp_path: Path) -> None:
    loader = _registered_mesh(tmp_path)
    loader.registrations = (Registration(KEY, "10.0.0.7", "n1"),)
    first = loader.load()
    # the same workload, disconnected within its grace: the same entry, the same mesh
    loader.registrations = (Registration(KEY, "10.0.0.7", "n1", disconnected=5.0),)
    again = loader.load([])
    assert again.mesh == first.mesh
    assert again.mesh.workload_entries[0] is first.mesh.workload_entries[0]


def test_registrations_of_an_unknown_group_or_a_taken_name_make_no_entry(tmp_path: Path) -> None:
    loader = _registered_mesh(tmp_path)
    (tmp_path / "we.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        "metadata: {name: api-10.0.0.9}\nspec: {address: 10.0.0.9, labels: {app: x}}\n"
    )
    loader.registrations = (
        Registration(ResourceKey("WorkloadGroup", "default", "gone"), "10.0.0.7", "n1"),
        Registration(KEY, "10.0.0.9", "n2"),
    )
    result = loader.load()
    assert [e.name for e in result.mesh.workload_entries] == ["api-10.0.0.9"]
    assert any(
        "a file defines WorkloadEntry default/api-10.0.0.9" in w.message for w in result.warnings
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)
_PROBE_KEYS = (
    "httpGet",
    "tcpSocket",
    "exec",
    "periodSeconds",
    "timeoutSeconds",
    "failureThreshold",
)
_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.fixed_dictionaries({}, optional={"labels": _JSON, "annotations": _JSON})
        | _JSON,
        "template": st.fixed_dictionaries(
            {}, optional={k: _JSON for k in ("address", "labels", "ports", "weight", "locality")}
        )
        | _JSON,
        "probe": st.fixed_dictionaries({}, optional={k: _JSON for k in _PROBE_KEYS}) | _JSON,
    },
)


@fuzz_settings()
@given(_SPECS)
def test_fuzz_groups_load_or_are_refused(spec: dict[str, object]) -> None:
    """Whatever a WorkloadGroup holds: a group, or errors with a line; never a crash."""
    import tempfile

    with deadline("test_fuzz_groups_load_or_are_refused"), tempfile.TemporaryDirectory() as d:
        doc = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadGroup",
            "metadata": {"name": "g"},
            "spec": spec,
        }
        Path(d, "g.json").write_text(json.dumps(doc))
        try:
            mesh = load_directory(d).mesh
        except ConfigError as e:
            assert all(p.path.endswith("g.json") for p in e.problems)
            return
        (g,) = mesh.workload_groups
        assert g.template.address == ""
