"""Snapshots (immutable, versioned sets of resources) and the cache that serves them."""
