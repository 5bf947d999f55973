"""xdsd: a file-backed xDS control plane for service meshes outside Kubernetes."""

__version__ = "0.1.0"
