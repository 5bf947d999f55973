"""AuthorizationPolicy enforced by real Envoys on real traffic, under mesh mutual TLS:
two callers with their own identities and namespaces call ``web`` through their own
sidecars, and the status codes they get (403 from web's RBAC) show each action, each
source / operation / when field family, DENY over ALLOW, root-namespace policies,
deny-all and allow-all; Envoy's RBAC stats count the denials. One mesh for the session
(``conftest.authz_world``); each test starts from no policy and waits for its first effect.
"""

from __future__ import annotations

from tests.e2e.security.authz_world import World, principal

WEB = "selector: {matchLabels: {app: web}}"


def policy(body: str, *, name: str = "p", namespace: str = "default", extra: str = "") -> str:
    """An AuthorizationPolicy document selecting web (``body``: the rest of its spec,
    indented by two spaces)."""
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}{extra}}}\n"
        f"spec:\n  {WEB}\n{body}"
    )


def test_deny_all_and_allow_all(w: World) -> None:
    before = w.rbac_stats()
    w.policies(policy(""))  # spec with a selector and nothing else: deny every request
    w.until(lambda: w.call(w.client) == 403, "spec {} denies")
    assert w.call(w.intruder) == 403
    after = w.rbac_stats()
    denied = [k for k, v in after.items() if k.endswith("rbac.denied") and v > before.get(k, 0)]
    assert denied, f"no RBAC denial counted: {after}"
    w.policies(policy("  rules: [{}]\n"))
    w.until(lambda: w.call(w.client) == 200, "rules [{}] allows")
    assert w.call(w.intruder) == 200


def test_allow_by_principal_and_by_namespace(w: World) -> None:
    w.policies(
        policy(
            f"  rules:\n  - from:\n    - source: {{principals: [{principal('default', 'client')}]}}\n"
        )
    )
    w.until(lambda: w.call(w.intruder) == 403, "only client's principal allowed")
    assert w.call(w.client) == 200
    w.policies(policy("  rules:\n  - from:\n    - source: {namespaces: [other]}\n"))
    w.until(lambda: w.call(w.client) == 403, "only namespace other allowed")
    assert w.call(w.intruder) == 200


def test_not_forms_of_sources(w: World) -> None:
    w.policies(
        policy("  action: DENY\n  rules:\n  - from:\n    - source: {notNamespaces: [default]}\n")
    )
    w.until(lambda: w.call(w.intruder) == 403, "deny every namespace but default")
    assert w.call(w.client) == 200
    body = f"  rules:\n  - from:\n    - source: {{notPrincipals: [{principal('default', 'client')}]}}\n"
    w.policies(policy(body))
    w.until(lambda: w.call(w.client) == 403, "allow anyone but client")
    assert w.call(w.intruder) == 200


def test_ports_name_the_workload_port_not_the_service_port(w: World) -> None:
    # web's Service port is what callers dial (and its listener binds); its targetPort
    # (the application's port) is the workload port policies name, as in Istio.
    service_port, target_port = w.web.inbound_port, w.app.port
    assert service_port != target_port
    deny = "  action: DENY\n  rules:\n  - to:\n    - operation: {{ports: ['{}']}}\n"
    w.policies(policy(deny.format(target_port)))
    w.until(lambda: w.call(w.client) == 403, "DENY of the workload port")
    assert w.call(w.intruder) == 403
    # the Service port is no port of the workload: this DENY denies nothing
    w.policies(policy(deny.format(service_port)))
    w.until(lambda: w.call(w.client) == 200, "DENY of the service port matches nothing")
    assert w.call(w.intruder) == 200
    # ALLOW of anything but the workload port allows nothing on it
    w.policies(policy(f"  rules:\n  - to:\n    - operation: {{notPorts: ['{target_port}']}}\n"))
    w.until(lambda: w.call(w.client) == 403, "ALLOW notPorts [workload port]")
    w.policies(policy(f"  rules:\n  - to:\n    - operation: {{ports: ['{target_port}']}}\n"))
    w.until(lambda: w.call(w.client) == 200, "ALLOW ports [workload port]")
    when = f"  action: DENY\n  rules:\n  - when:\n    - {{key: destination.port, values: ['{target_port}']}}\n"
    w.policies(policy(when))
    w.until(lambda: w.call(w.client) == 403, "DENY when destination.port is the workload port")


def test_ip_blocks(w: World) -> None:
    # Both sidecars connect from the loopback network.
    w.policies(policy("  rules:\n  - from:\n    - source: {ipBlocks: [10.0.0.0/8]}\n"))
    w.until(lambda: w.call(w.client) == 403, "only 10/8 allowed")
    w.policies(policy("  rules:\n  - from:\n    - source: {ipBlocks: [127.0.0.0/8]}\n"))
    w.until(lambda: w.call(w.client) == 200, "127/8 allowed")
    assert w.call(w.intruder) == 200
    w.policies(policy("  rules:\n  - from:\n    - source: {notIpBlocks: [127.0.0.0/8]}\n"))
    w.until(lambda: w.call(w.client) == 403, "everything but 127/8 allowed")


def test_methods_paths_hosts_and_ports(w: World) -> None:
    port = w.app.port  # the workload port: the Service port's targetPort
    w.policies(
        policy(
            "  rules:\n  - to:\n    - operation:\n"
            "        methods: [GET]\n        paths: [/public/*, /exact]\n"
            "        notPaths: [/public/secret]\n"
            f"        hosts: [web.default.svc.cluster.local]\n        ports: ['{port}']\n"
        )
    )
    w.until(lambda: w.call(w.client, "/private") == 403, "only public paths")
    assert w.call(w.client, "/public/x") == 200
    assert w.call(w.client, "/exact") == 200
    assert w.call(w.client, "/exact/more") == 403
    assert w.call(w.client, "/public/secret") == 403
    assert w.call(w.client, "/public/x", method="POST") == 403
    w.policies(policy("  rules:\n  - to:\n    - operation: {ports: ['1'], notMethods: [PUT]}\n"))
    w.until(lambda: w.call(w.client, "/public/x") == 403, "another port only")
    w.policies(
        policy("  rules:\n  - to:\n    - operation: {hosts: [web.default.svc.cluster.local]}\n")
    )
    w.until(lambda: w.call(w.client, "/private") == 200, "web's host only")
    w.policies(policy("  rules:\n  - to:\n    - operation: {hosts: [elsewhere.example]}\n"))
    w.until(lambda: w.call(w.client, "/private") == 403, "another host only")


def test_when_headers(w: World) -> None:
    w.policies(
        policy(
            "  rules:\n  - when:\n    - key: request.headers[x-token]\n"
            "      values: [open-*]\n      notValues: [open-never]\n"
        )
    )
    w.until(lambda: w.call(w.client) == 403, "a token is needed")
    assert w.call(w.client, headers={"x-token": "open-sesame"}) == 200
    assert w.call(w.intruder, headers={"x-token": "open-never"}) == 403
    w.policies(policy("  rules:\n  - when:\n    - key: source.namespace\n      values: [other]\n"))
    w.until(lambda: w.call(w.intruder) == 200, "when source.namespace")
    assert w.call(w.client) == 403


def test_deny_wins_over_allow_and_root_namespace_applies(w: World) -> None:
    allow_all = policy("  rules: [{}]\n", name="allow")
    deny_admin = policy(
        "  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin*]}\n", name="deny"
    )
    w.policies(allow_all + "---\n" + deny_admin)
    w.until(lambda: w.call(w.client, "/admin/x") == 403, "DENY over ALLOW")
    assert w.call(w.client, "/fine") == 200
    # The denial is counted, and the rule that denied is named in the access log.
    w.until(
        lambda: any(
            "ns[default]-policy[deny]-rule[0]" in line and '"denied"' in line
            for line in w.logged("/admin/x")
        ),
        "the denying rule's name",
    )
    # istio-system without a selector: every workload of the mesh.
    root = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: mesh-wide, namespace: istio-system}\n"
        "spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/root-denied]}\n"
    )
    w.policies(root)
    w.until(lambda: w.call(w.client, "/root-denied") == 403, "root-namespace DENY")
    assert w.call(w.intruder, "/root-denied") == 403
    assert w.call(w.client, "/") == 200


def test_audit_passes_and_is_logged_by_rule_name(w: World) -> None:
    w.policies(policy("  action: AUDIT\n  rules:\n  - to:\n    - operation: {paths: [/audited]}\n"))
    rule = "ns[default]-policy[p]-rule[0]"

    def audited() -> bool:
        return w.call(w.client, "/audited") == 200 and any(
            "audit=true" in line and rule in line for line in w.logged("/audited")
        )

    w.until(audited, "AUDIT lets the request through and marks it for the access log")
    assert w.call(w.client, "/other") == 200
    w.until(
        lambda: any("audit=false" in line for line in w.logged("/other")),
        "a request the AUDIT rule does not match is not marked",
    )


def test_dry_run_is_not_enforced_but_counted(w: World) -> None:
    dry = ", annotations: {istio.io/dry-run: 'true'}"
    w.policies(
        policy("  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/dry]}\n", extra=dry)
    )
    stat = f"http.inbound_{w.web.inbound_port}.rbac.istio_dry_run_deny_.shadow_denied"

    def counted() -> bool:
        before = w.rbac_stats().get(stat, 0)
        return w.call(w.client, "/dry") == 200 and w.rbac_stats().get(stat, 0) > before

    w.until(counted, "dry run: the request passes, the shadow denial is counted")
    w.until(
        lambda: any("ns[default]-policy[p]-rule[0]" in line for line in w.logged("/dry")),
        "the shadow rule's name in the request's metadata",
    )


def test_custom_http_provider(w: World) -> None:
    w.policies(
        policy(
            "  action: CUSTOM\n  provider: {name: http-authz}\n"
            "  rules:\n  - to:\n    - operation: {paths: [/ext/*]}\n"
        )
    )
    w.until(lambda: w.call(w.client, "/ext/a") == 403, "the HTTP server denies")
    assert w.call(w.client, "/ext/a", headers={"x-ext-authz": "allow"}) == 200
    w.http_authz.checked.clear()
    assert w.call(w.client, "/not-ext") == 200
    assert w.http_authz.checked == []  # a request the rules do not match is not checked
    assert w.call(w.intruder, "/ext/b") == 403
    assert w.http_authz.checked == ["/check/ext/b"]


def test_custom_grpc_provider(w: World) -> None:
    w.policies(
        policy(
            "  action: CUSTOM\n  provider: {name: grpc-authz}\n"
            "  rules:\n  - to:\n    - operation: {paths: [/grpc/*]}\n"
        )
    )
    w.until(lambda: w.call(w.client, "/grpc/a") == 403, "the gRPC server denies")
    assert w.call(w.client, "/grpc/a", headers={"x-ext-authz": "allow"}) == 200
    assert w.call(w.client, "/other") == 200
    assert "/grpc/a" in w.grpc_authz.checked


def test_tcp_port_by_principal_and_http_only_fields(w: World) -> None:
    w.until(lambda: w.tcp(w.client) == b"web-tcp:ping", "web's TCP port echoes")
    client = principal("default", "client")
    w.policies(policy(f"  rules:\n  - from:\n    - source: {{principals: [{client}]}}\n"))
    w.until(lambda: w.tcp(w.intruder) == b"", "only client on the TCP port")
    assert w.tcp(w.client) == b"web-tcp:ping"
    # An ALLOW rule that needs an HTTP field never matches on a TCP port ...
    w.policies(
        policy(
            f"  rules:\n  - from:\n    - source: {{principals: [{client}]}}\n"
            "    to:\n    - operation: {paths: [/x]}\n"
        )
    )
    w.until(lambda: w.tcp(w.client) == b"", "ALLOW with paths matches nothing on TCP")
    # ... and a DENY rule matches without it.
    w.policies(
        policy(
            "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [other]}\n"
            "    to:\n    - operation: {methods: [GET]}\n"
        )
    )
    w.until(lambda: w.tcp(w.client) == b"web-tcp:ping", "DENY without its HTTP field")
    assert w.tcp(w.intruder) == b""
