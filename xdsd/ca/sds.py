"""A workload certificate as the SDS secret a proxy is sent (``default``)."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from xdsd.ca.authority import IssuedCertificate
from xdsd.model.mesh_config import WORKLOAD_SECRET
from xdsd.resources import Resource


def workload_secret(certificate: IssuedCertificate) -> Resource:
    """The SDS ``default`` secret of ``certificate``: its PEM chain and private key
    inline (a ``tls_certificate``). The private key is in the resource's bytes: the
    resource goes to that certificate's proxy only, and debug views redact it
    (``xdsd.resources.redaction``)."""
    secret = secret_pb2.Secret(name=WORKLOAD_SECRET)
    secret.tls_certificate.certificate_chain.inline_bytes = certificate.chain_pem
    secret.tls_certificate.private_key.inline_bytes = certificate.key_pem
    return Resource.of(WORKLOAD_SECRET, secret)
