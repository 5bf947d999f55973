"""Policy edits under ``xdsd serve``: a bad policy file, or a CUSTOM policy naming a
provider the settings do not declare, is refused with its file and line in
``/debug/errors`` while the last good policies stay enforced."""

from __future__ import annotations

from typing import Any

from tests.e2e.security.authz_world import World


def _deny_admin(name: str = "p") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        "spec:\n  selector: {matchLabels: {app: web}}\n  action: DENY\n"
        "  rules:\n  - to:\n    - operation: {paths: [/admin]}\n"
    )


def _errors(w: World) -> list[Any]:
    return list(w.mesh.errors())


def test_a_bad_policy_keeps_the_last_good_one(w: World) -> None:
    path = w.policies(_deny_admin())
    w.until(lambda: w.call(w.client, "/admin") == 403, "the DENY applies")
    # An unknown field: refused at its line, the DENY stays in force.
    w.policies(_deny_admin().replace("  action: DENY\n", "  action: DENY\n  colour: red\n"))
    w.until(
        lambda: any(e["path"] == str(path) and e["line"] == 7 for e in _errors(w)),
        "the error at its file and line",
    )
    assert _errors(w)[0]["field"] == "colour"
    assert w.call(w.client, "/admin") == 403
    assert w.call(w.client, "/") == 200
    # A CUSTOM policy naming an undeclared provider: refused at provider.name.
    custom = _deny_admin().replace(
        "  action: DENY\n", "  action: CUSTOM\n  provider:\n    name: nowhere\n"
    )
    w.policies(custom)
    w.until(
        lambda: any(
            e["line"] == 8 and e["field"] == "provider.name" and "nowhere" in e["message"]
            for e in _errors(w)
        ),
        "the undeclared provider named at its line",
    )
    assert w.call(w.client, "/admin") == 403
    # Fixed: the error goes, the edit applies.
    w.policies(_deny_admin().replace("/admin", "/other"))
    w.until(lambda: w.call(w.client, "/admin") == 200, "the fixed policy applies")
    problems = _errors(w)
    assert [e for e in problems if e["severity"] != "warning"] == []
    # web's TCP port: the DENY's path (HTTP-only) is dropped there, and the file is told.
    assert any(
        e["field"] == "rules[0].to[0].operation.paths" and "HTTP-only" in e["message"]
        for e in problems
    ), problems
    assert w.call(w.client, "/other") == 403
