"""The names of what the Gateway API conversion makes (shared by its modules)."""

from __future__ import annotations

#: The label a gateway proxy carries to be the proxy of Gateway NAME (Istio's).
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
#: The prefix of the names of what the conversion makes (never a user's names).
PREFIX = "gateway-api."


def istio_gateway_name(name: str) -> str:
    """The name of the Istio Gateway made from the Gateway ``name``: the same (its
    kind tells them apart; an Istio Gateway of that name in that namespace is a
    duplicate, an error naming both)."""
    return name
