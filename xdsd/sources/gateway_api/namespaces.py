"""The Kubernetes core ``v1`` ``Namespace``, read from a file for its labels.

A Gateway listener's ``allowedRoutes.namespaces`` with ``from: Selector`` takes the
routes of the namespaces whose labels its selector matches (``attach.py``); a file
declares a namespace's labels with a document such as::

    apiVersion: v1
    kind: Namespace
    metadata: {name: apps, labels: {shared-gateway: "true"}}

Read: ``metadata.name`` (required, a DNS label), ``metadata.labels`` (Kubernetes label
names and values, at most ``common.MAX_LABELS``), ``metadata.annotations`` (ignored),
``spec.finalizers`` (ignored), ``status`` (Kubernetes' output, ignored). A Namespace is
cluster-scoped: ``metadata.namespace`` is an error. Every namespace carries the label
``kubernetes.io/metadata.name: NAME``, as Kubernetes sets it; writing it with another
value is an error. Pure: no I/O.
"""

from __future__ import annotations

from xdsd.located import Fields
from xdsd.model.gateway_api import NAMESPACE_NAME_LABEL, KubeNamespace
from xdsd.model.service import Origin
from xdsd.sources.gateway_api.common import label_map, namespace_field

#: The group/version and kind of the document, as ``dispatch`` recognises it.
NAMESPACE_API_VERSION = "v1"
NAMESPACE_KIND = "Namespace"


def parse_namespace(meta: Fields, spec: Fields | None, origin: Origin) -> KubeNamespace | None:
    """A Namespace from its ``metadata`` (``meta``; the Kubernetes-written keys already
    marked read by the caller) and its ``spec`` (None when absent); None when its name
    is missing or wrong. Every problem is recorded at its field; never raises for what
    the document holds."""
    name = namespace_field(meta, "name", required=True)
    if "namespace" in meta.data:
        meta.read.add("namespace")
        meta.error("namespace", "a Namespace is not in a namespace: remove it")
    labels = dict(label_map(meta, "labels"))
    meta.obj("annotations")
    meta.finish()
    if spec is not None:
        spec.strings("finalizers")
        spec.finish()
    given = labels.get(NAMESPACE_NAME_LABEL)
    if name and given is not None and given != name:
        meta.report.add(
            (*meta.path, "labels", NAMESPACE_NAME_LABEL),
            f"is the namespace's own name ({name!r}), as Kubernetes sets it: got {given!r:.80}",
        )
    if not name:
        return None
    labels[NAMESPACE_NAME_LABEL] = name
    return KubeNamespace(name, tuple(sorted(labels.items())), origin=origin)
