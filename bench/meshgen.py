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


def policy_text(i: int, services: int, edit: int = 0) -> str:
    """The ``i``-th of the generated AuthorizationPolicies over ``services`` services
    (``edit`` changes one path, for the one-policy edit). The mix: policy 0 is a
    mesh-wide DENY (root namespace, no selector), policy 1 a namespace-wide ALLOW; the
    rest select one workload each (``app: svc-N``, ``i`` over the services in turn),
    allowing two callers' principals to some methods and paths, every tenth a DENY of
    other paths, every fourth with a header condition, every twentieth a namespace and a
    port."""
    head = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
    if i == 0:
        return (
            f"{head}metadata: {{name: deny-admin, namespace: istio-system}}\nspec:\n"
            "  action: DENY\n  rules:\n"
            f"  - to: [{{operation: {{paths: [/admin*, /debug/v{edit}/*]}}}}]\n"
        )
    if i == 1:
        return (
            f"{head}metadata: {{name: allow-namespace, namespace: default}}\nspec:\n"
            "  action: ALLOW\n  rules:\n  - from: [{source: {namespaces: [default]}}]\n"
            f"    to: [{{operation: {{notPaths: [/internal/v{edit}/*]}}}}]\n"
        )
    target = i % services
    callers = [f"cluster.local/ns/default/sa/svc-{(target + k) % services:05d}" for k in (1, 2)]
    action = "DENY" if i % 10 == 0 else "ALLOW"
    lines = [
        f"{head}metadata: {{name: policy-{i:05d}, namespace: default}}",
        "spec:",
        f"  selector: {{matchLabels: {{app: svc-{target:05d}}}}}",
        f"  action: {action}",
        "  rules:",
        f"  - from: [{{source: {{principals: [{', '.join(callers)}]}}}}]",
        "    to:",
        "    - operation:",
        "        methods: [GET, POST]" if action == "ALLOW" else "        methods: [DELETE]",
        f"        paths: [/api/v{i % 3}/*, /items/{edit}, /health]",
    ]
    if i % 4 == 0:
        lines += ["    when:", "    - {key: 'request.headers[x-tenant]', values: [t1, t2]}"]
    if i % 20 == 0:
        lines += [
            "  - from: [{source: {namespaces: [default], notPrincipals: ['*/sa/legacy']}}]",
            "    to: [{operation: {ports: ['8080'], methods: [GET]}}]",
        ]
    return "\n".join(lines) + "\n"


def write_policies(config: Path, services: int, policies: int) -> list[Path]:
    """Write ``policies`` AuthorizationPolicies over ``services`` generated services, one
    file each under ``security/`` (``policy_text``). Returns the files, in order."""
    directory = config / "security"
    directory.mkdir(exist_ok=True)
    paths = []
    for i in range(policies):
        path = directory / f"policy-{i:05d}.yaml"
        path.write_text(policy_text(i, services))
        paths.append(path)
    return paths
