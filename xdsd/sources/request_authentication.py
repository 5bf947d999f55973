"""Istio's RequestAuthentication (``security.istio.io``) → ``model.security.RequestAuthentication``.

Fail closed: a field or value xdsd does not enforce is an error at its own line, never a
warning, so a directory that loads is enforced as written.
"""

from __future__ import annotations

from collections.abc import Mapping

from xdsd.located import Fields
from xdsd.model import Origin
from xdsd.model.security import RequestAuthentication


def parse_request_authentication(
    spec: Fields, name: str, namespace: str, origin: Origin, *, annotations: Mapping[str, object]
) -> RequestAuthentication:
    """A RequestAuthentication from its ``spec`` (``annotations``: the document's metadata
    annotations). Every problem is recorded on ``spec``."""
    spec.error(None, "RequestAuthentication is not enforced by this xdsd yet")
    return RequestAuthentication(name, namespace, origin=origin)
