"""Generated meshes of any size, for benchmarks."""

from __future__ import annotations

from pathlib import Path


def write_mesh(root: Path, services: int, endpoints: int = 3, ports: int = 20) -> Path:
    """Write ``services`` services (``endpoints`` endpoints each, labelled v1/v2 in turn,
    spread over ``ports`` distinct port numbers), a DestinationRule with two subsets per
    service, and a weighted VirtualService for every tenth service. Returns the config dir."""
    config = root / "config"
    (config / "services").mkdir(parents=True, exist_ok=True)
    (config / "rules").mkdir(exist_ok=True)
    for i in range(services):
        name = f"svc-{i:05d}"
        port = 8000 + i % ports
        lines = [
            'kind = "Service"',
            f'name = "{name}"',
            "",
            "[[ports]]",
            'name = "http"',
            f"number = {port}",
            'protocol = "HTTP"',
            "targetPort = 7000",
        ]
        for j in range(endpoints):
            a, b = divmod(i * endpoints + j, 250)
            lines += [
                "",
                "[[endpoints]]",
                f'address = "10.{a // 250}.{a % 250}.{b + 1}"',
                f'labels = {{ version = "v{j % 2 + 1}" }}',
                f'locality = "region-{j % 2}/zone-a"',
            ]
        (config / "services" / f"{name}.toml").write_text("\n".join(lines) + "\n")
        rules = (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            f"metadata: {{name: {name}}}\nspec:\n  host: {name}\n  subsets:\n"
            "  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n"
        )
        if i % 10 == 0:
            rules += (
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                f"metadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n"
                f"    - {{destination: {{host: {name}, subset: v1}}, weight: 90}}\n"
                f"    - {{destination: {{host: {name}, subset: v2}}, weight: 10}}\n"
            )
        (config / "rules" / f"{name}.yaml").write_text(rules)
    return config
