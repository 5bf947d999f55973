"""The Dockerfile and the docker-compose demo, checked without a Docker engine: what they
name exists in the repository, their ports and addresses agree with the config they mount,
the image's settings load, its HEALTHCHECK command works against a real xdsd, and every
sidecar bootstrap belongs to a workload of the mounted config and is accepted by Envoy."""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Xdsd, envoy_binary, free_port
from xdsd.demo.mesh import bootstrap_files, compose_layout, config_files
from xdsd.settings import Settings
from xdsd.sources import load_directory

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def arguments(text: str) -> list[str]:
    """An instruction's arguments: exec form (JSON array) or shell words."""
    return list(json.loads(text)) if text.startswith("[") else shlex.split(text)


def dockerignored(path: str) -> bool:
    """True when .dockerignore keeps ``path`` out of the build context (its patterns in
    order, the last match wins, ``!`` re-includes)."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
            ignored = not negate
    return ignored


def image_settings() -> Settings:
    return Settings.from_file(str(REPO / "docker" / "settings.toml"))


def test_dockerfile_builds_a_slim_non_root_image() -> None:
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [(i, args) for i, (word, args) in enumerate(steps) if word == "USER"]
    assert users, "the image must not run as root"
    last_user_at, user = users[-1]
    assert user not in ("root", "0") and not user.startswith("0:")
    assert all(word != "RUN" for word, _ in steps[last_user_at:]), "RUN after USER"
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "pip install" in runs and "useradd --system --uid 10001" in runs and user in runs


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    copies = [arguments(args) for word, args in instructions() if word in ("COPY", "ADD")]
    assert copies
    for words in copies:
        sources = [w for w in words[:-1] if not w.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    assert dockerignored("tests") and dockerignored(".git") and dockerignored("bench")


def test_entrypoint_serves_the_config_volume_with_the_image_settings() -> None:
    steps = dict(instructions())  # the last of each instruction wins, as in Docker
    entry = arguments(steps["ENTRYPOINT"])
    assert entry[:2] == ["xdsd", "serve"]
    assert entry[entry.index("--config-dir") + 1] == "/etc/xdsd/config"
    assert entry[entry.index("--settings") + 1] == "/etc/xdsd/settings.toml"
    assert "/etc/xdsd/config" in arguments(steps["VOLUME"])
    copies = [arguments(a) for w, a in instructions() if w == "COPY"]
    assert ["docker/settings.toml", "/etc/xdsd/settings.toml"] in copies
    settings = image_settings()
    listen = [settings.grpc, settings.rest, settings.admin]
    assert all(a is not None and a.host == "0.0.0.0" for a in listen)
    exposed = {int(p.split("/")[0]) for p in steps["EXPOSE"].split()}
    assert exposed == {a.port for a in listen if a is not None}


def healthcheck_command() -> list[str]:
    text = dict(instructions())["HEALTHCHECK"]
    assert "CMD" in text
    return arguments(text.split("CMD", 1)[1].strip())


def test_healthcheck_asks_the_admin_port_for_healthz(tmp_path: Path) -> None:
    command = healthcheck_command()
    assert command[0] == "python"  # what the image has (there is no curl in -slim)
    settings = image_settings()
    assert settings.admin is not None
    url = f"http://127.0.0.1:{settings.admin.port}/healthz"
    assert url in command[-1]

    # the same command against a real xdsd: healthy, then not once it is gone
    xdsd = Xdsd(REPO / "config", tmp_path)
    try:
        local = [
            sys.executable,
            *command[1:-1],
            command[-1].replace(url, f"http://127.0.0.1:{xdsd.admin_port}/healthz"),
        ]
        assert subprocess.run(local, capture_output=True, timeout=30).returncode == 0
    finally:
        xdsd.stop()
    down = subprocess.run(local, capture_output=True, timeout=30)
    assert down.returncode != 0, down


# -- the docker-compose demo -------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEMO / "docker-compose.yaml").read_text())
    return data


def host_path(text: str) -> Path:
    return (DEMO / text).resolve()


def test_compose_names_only_paths_that_exist() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = host_path(build["context"])
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("."), f"{name}: {volume}: a path in the repository"
            assert host_path(source).exists(), f"{name}: {volume}: missing"
    # the xdsd image is the repository's Dockerfile; the apps run the package's demo app
    assert services["xdsd"]["build"]["context"] == ".."
    assert (REPO / "xdsd" / "demo" / "app.py").is_file()


def test_compose_files_are_what_the_demo_generator_writes() -> None:
    """demo/config and demo/bootstrap come from xdsd/demo/mesh.py (as `xdsd demo`'s):
    regenerate with `python -m xdsd.demo.mesh demo` after changing it."""
    layout = compose_layout()
    for sub, files in (("config", config_files(layout)), ("bootstrap", bootstrap_files(layout))):
        on_disk = {
            str(p.relative_to(DEMO / sub)): p.read_text()
            for p in (DEMO / sub).rglob("*")
            if p.is_file()
        }
        assert on_disk == files, f"demo/{sub} is stale: python -m xdsd.demo.mesh demo"


def test_compose_config_loads_and_matches_addresses_and_ports() -> None:
    data = compose()
    services = data["services"]
    mount = next(v for v in services["xdsd"]["volumes"] if v.endswith(":/etc/xdsd/config:ro"))
    config_dir = host_path(mount.split(":")[0])
    result = load_directory(str(config_dir))
    assert result.warnings == ()
    mesh = result.mesh
    endpoints = {
        e.address: (svc.name, dict(e.labels), svc.ports)
        for svc in mesh.services
        for e in svc.endpoints
    }
    default_endpoints = {sc.name: [i.default_endpoint for i in sc.ingress] for sc in mesh.sidecars}
    subnet = data["networks"]["mesh"]["ipam"]["config"][0]["subnet"]
    prefix = subnet.rsplit(".", 1)[0] + "."

    apps = {
        n: s
        for n, s in services.items()
        if s.get("entrypoint") == ["python", "-m", "xdsd.demo.app"]
    }
    assert len(apps) == 4
    for name, app in apps.items():
        address = app["networks"]["mesh"]["ipv4_address"]
        assert address.startswith(prefix)
        args = app["command"]
        service, version = args[args.index("--name") + 1], args[args.index("--version") + 1]
        assert endpoints[address][:2] == (service, {"app": service, "version": version}), name
        listen = args[args.index("--listen") + 1]
        assert default_endpoints[name] == [listen], f"{name}: Sidecar ingress vs --listen"
        assert app["environment"]["HTTP_PROXY"] == "http://127.0.0.1:15001"
        calls = [args[i + 1] for i, a in enumerate(args) if a == "--call"]
        for url in calls:
            host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
            assert mesh.service_by_name("default", host) is not None, url
            assert any(p.number == int(port) for p in endpoints_ports(mesh, host)), url

    gateway_port = mesh.gateways[0].servers[0].port.number
    published = services["ingressgateway"]["ports"]
    assert published == [f"{gateway_port}:{gateway_port}"]
    admin = image_settings().admin
    assert admin is not None
    assert services["xdsd"]["ports"] == [f"{admin.port}:{admin.port}"]


def endpoints_ports(mesh: Any, service: str) -> Any:
    found = mesh.service_by_name("default", service)
    return found.ports if found is not None else ()


def test_every_sidecar_shares_its_apps_namespace_and_bootstrap_matches_it() -> None:
    data = compose()
    services = data["services"]
    result = load_directory(str(DEMO / "config"))
    endpoint_of = {
        e.address: (s.name, dict(e.labels)) for s in result.mesh.services for e in s.endpoints
    }
    sidecars = {n: s for n, s in services.items() if n.endswith("-sidecar")}
    assert len(sidecars) == 4
    for name, sidecar in sidecars.items():
        app = name.removesuffix("-sidecar")
        assert sidecar["network_mode"] == f"service:{app}"
        assert app in sidecar["depends_on"] and "xdsd" in sidecar["depends_on"]
        (volume,) = sidecar["volumes"]
        boot = yaml.safe_load(host_path(volume.split(":")[0]).read_text())
        node = boot["node"]
        address = services[app]["networks"]["mesh"]["ipv4_address"]
        assert node["metadata"]["instance_ip"] == address
        assert node["metadata"]["outbound_ip"] == "127.0.0.1"  # the shared namespace's own
        assert endpoint_of[address] == (node["cluster"], node["metadata"]["labels"]), name
        xds = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
        sock = xds["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        assert sock["address"] == "xdsd"  # compose's DNS name of the xdsd service
        settings = image_settings()
        assert settings.grpc is not None and sock["port_value"] == settings.grpc.port

    gateway = yaml.safe_load(
        host_path(services["ingressgateway"]["volumes"][0].split(":")[0]).read_text()
    )
    assert gateway["node"]["metadata"]["role"] == "gateway"
    gw_address = services["ingressgateway"]["networks"]["mesh"]["ipv4_address"]
    assert gateway["node"]["metadata"]["instance_ip"] == gw_address
    labels = gateway["node"]["metadata"]["labels"]
    assert any(all(labels.get(k) == v for k, v in g.selector) for g in result.mesh.gateways), (
        "no Gateway selects the ingress gateway"
    )


@pytest.mark.parametrize("name", sorted(p.name for p in (DEMO / "bootstrap").glob("*.yaml")))
def test_envoy_accepts_each_compose_bootstrap(name: str) -> None:
    done = subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(DEMO / "bootstrap" / name),
            "--disable-hot-restart",
            "--base-id",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
