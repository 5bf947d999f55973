"""SDS secrets: certificate files served as ``Secret`` resources instead of file paths.

How this works: a TLS context that uses certificate files (a Gateway server terminating
TLS, a DestinationRule's SIMPLE or MUTUAL origination) names its certificate and key,
and its CA, by SDS secret names derived from the absolute paths, fetched the way the
class fetches everything else (``config_source``: ADS, or REST polling for REST
classes):

- ``file-cert:CERT~KEY``: a ``tls_certificate`` with the certificate chain and the
  private key inline;
- ``file-root:CA``: a ``validation_context`` with the trusted CAs inline (subject alt
  names stay in the TLS context, in a ``combined_validation_context``);
- with mesh mutual TLS, ``default`` (the proxy's own certificate) and ``ROOTCA`` (the
  mesh's CA), as Istio names them: the clusters and inbound listeners that name them are
  shared by every class, and each class is sent its own ``default``
  (``Secrets.mesh_identity``); when xdsd's CA issues the certificates
  (``MeshTLS.issued``) a class gets only ``ROOTCA``, the CA's trust bundle
  (``Secrets.mesh_bundle``), and each connected proxy its own ``default`` from the server
  (``xdsd.identities``).

The bytes come from the mesh (``Mesh.certificates``, read by the sources): translation
does no I/O. A class receives exactly the secrets its clusters and listeners reference
(``references_of``); a file replaced on disk changes the secret's content, hence its
version, and only the secret is sent again. Static bootstraps (``render --static``) keep
the secrets as ``static_resources.secrets`` and reference them by name alone
(``static_secret_references``).
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from xdsd.model import Mesh
from xdsd.model.mesh_config import ROOT_CA_SECRET, WORKLOAD_SECRET
from xdsd.resources import Resource
from xdsd.translate.config_sources import config_source
from xdsd.translate.node import ConfigSourceKind

CERTIFICATE_PREFIX = "file-cert:"
CA_PREFIX = "file-root:"


def certificate_secret_name(certificate: str, key: str) -> str:
    """The SDS name of a certificate chain and its private key (absolute paths)."""
    return f"{CERTIFICATE_PREFIX}{certificate}~{key}"


def ca_secret_name(ca: str) -> str:
    """The SDS name of a CA bundle (an absolute path)."""
    return f"{CA_PREFIX}{ca}"


def add_certificate(common: Any, certificate: str, key: str, source: ConfigSourceKind) -> None:
    """Make ``common`` (a ``CommonTlsContext``) fetch its certificate and key by SDS."""
    add_certificate_secret(common, certificate_secret_name(certificate, key), source)


def add_validation(common: Any, ca: str, matchers: list[Any], source: ConfigSourceKind) -> None:
    """Make ``common`` check peers against the CA bundle ``ca`` fetched by SDS, and (when
    ``matchers`` are given) their subject alt names."""
    add_validation_secret(common, ca_secret_name(ca), matchers, source)


def add_mesh_identity(common: Any, matchers: list[Any], source: ConfigSourceKind) -> None:
    """Make ``common`` present the proxy's mesh certificate (``WORKLOAD_SECRET``) and
    check peers against the mesh CA (``ROOT_CA_SECRET``) and ``matchers``, if any."""
    add_certificate_secret(common, WORKLOAD_SECRET, source)
    add_validation_secret(common, ROOT_CA_SECRET, matchers, source)


def add_certificate_secret(common: Any, name: str, source: ConfigSourceKind) -> None:
    """Make ``common`` present the certificate of the SDS secret ``name``."""
    config = common.tls_certificate_sds_secret_configs.add()
    config.name = name
    config.sds_config.CopyFrom(config_source(source))


def add_validation_secret(
    common: Any, name: str, matchers: list[Any], source: ConfigSourceKind
) -> None:
    """Make ``common`` check peers against the CAs of the SDS secret ``name``, and (when
    ``matchers`` are given) their subject alt names."""
    combined = common.combined_validation_context
    combined.default_validation_context.SetInParent()
    combined.default_validation_context.match_typed_subject_alt_names.extend(matchers)
    config = combined.validation_context_sds_secret_config
    config.name = name
    config.sds_config.CopyFrom(config_source(source))


class Secrets:
    """The secrets of one mesh by name, built on first use (one per name)."""

    def __init__(self, mesh: Mesh) -> None:
        self._files = mesh
        self._built: dict[str, Resource] = {}
        self._identities: dict[str, tuple[Resource, Resource]] = {}
        self._bundles: dict[bytes, Resource] = {}

    def get(self, name: str) -> Resource | None:
        """The ``Secret`` named ``name`` (None when the name is not one xdsd makes or a
        file is missing from the mesh)."""
        found = self._built.get(name)
        if found is None:
            message = self._build(name)
            if message is None:
                return None
            found = self._built[name] = Resource.of(name, message)
        return found

    def mesh_identity(self, certificate: str, key: str, ca: str) -> tuple[Resource, Resource]:
        """A proxy's mesh mutual TLS secrets: its own certificate and key as
        ``WORKLOAD_SECRET`` and the mesh's CA as ``ROOT_CA_SECRET`` (one pair per
        distinct file set). Raises KeyError naming a file missing from the mesh."""
        key_ = f"mesh:{certificate}~{key}~{ca}"
        found = self._identities.get(key_)
        if found is None:
            data = {p: self._files.certificate(p) for p in (certificate, key, ca)}
            for path, content in data.items():
                if content is None:
                    raise KeyError(path)
            own = secret_pb2.Secret(name=WORKLOAD_SECRET)
            own.tls_certificate.certificate_chain.inline_bytes = data[certificate] or b""
            own.tls_certificate.private_key.inline_bytes = data[key] or b""
            root = secret_pb2.Secret(name=ROOT_CA_SECRET)
            root.validation_context.trusted_ca.inline_bytes = data[ca] or b""
            found = self._identities[key_] = (
                Resource.of(WORKLOAD_SECRET, own),
                Resource.of(ROOT_CA_SECRET, root),
            )
        return found

    def mesh_bundle(self, bundle: bytes) -> Resource:
        """The mesh's trust bundle (PEM of every trusted authority of xdsd's CA) as
        ``ROOT_CA_SECRET``."""
        found = self._bundles.get(bundle)
        if found is None:
            root = secret_pb2.Secret(name=ROOT_CA_SECRET)
            root.validation_context.trusted_ca.inline_bytes = bundle
            found = self._bundles[bundle] = Resource.of(ROOT_CA_SECRET, root)
        return found

    def _build(self, name: str) -> Any | None:
        secret = secret_pb2.Secret(name=name)
        if name.startswith(CA_PREFIX):
            data = self._files.certificate(name[len(CA_PREFIX) :])
            if data is None:
                return None
            secret.validation_context.trusted_ca.inline_bytes = data
            return secret
        if not name.startswith(CERTIFICATE_PREFIX):
            return None
        # The key's path starts after a "~" (an absolute path, or a Gateway API Secret's
        # "<secret>/..."); the split whose both halves are loaded files is the one (a
        # path may hold "~" itself).
        paths = name[len(CERTIFICATE_PREFIX) :]
        at = paths.find("~")
        while at >= 0:
            chain = self._files.certificate(paths[:at])
            private = self._files.certificate(paths[at + 1 :])
            if chain is not None and private is not None:
                secret.tls_certificate.certificate_chain.inline_bytes = chain
                secret.tls_certificate.private_key.inline_bytes = private
                return secret
            at = paths.find("~", at + 1)
        return None


def static_secret_references(message: Any) -> Any:
    """A copy of a cluster or listener whose TLS contexts name their secrets without an
    ``sds_config``: in a static bootstrap that means ``static_resources.secrets``."""
    if message.DESCRIPTOR.name == "Cluster":
        if not message.HasField("transport_socket"):
            return message
        out = type(message)()
        out.CopyFrom(message)
        _strip(out.transport_socket, tls_pb2.UpstreamTlsContext())
        return out
    chains = [*message.filter_chains]
    if not any(c.HasField("transport_socket") for c in chains):
        return message
    out = type(message)()
    out.CopyFrom(message)
    for chain in out.filter_chains:
        if chain.HasField("transport_socket"):
            _strip(chain.transport_socket, tls_pb2.DownstreamTlsContext())
    return out


def _strip(socket: Any, context: Any) -> None:
    if not socket.typed_config.Is(context.DESCRIPTOR):
        return
    socket.typed_config.Unpack(context)
    common: common_pb2.CommonTlsContext = context.common_tls_context
    for config in common.tls_certificate_sds_secret_configs:
        config.ClearField("sds_config")
    if common.HasField("combined_validation_context"):
        common.combined_validation_context.validation_context_sds_secret_config.ClearField(
            "sds_config"
        )
    socket.typed_config.Pack(context)
