"""The real etcd the registry tests share (tests/etcd.py)."""

from tests.etcd import etcd  # noqa: F401 - the fixture
