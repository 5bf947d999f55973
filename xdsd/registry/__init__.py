"""Registered workloads (issue 20): the registry admitting sidecars into WorkloadGroups,
the stores keeping registrations (``store.MemoryStore`` in the daemon, ``etcd.EtcdStore``
shared by replicas) and the probes judging their health."""
