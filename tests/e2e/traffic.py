"""Where the traffic-test helpers used to live, kept only because ``tests/translate`` (reshaped
on another branch of issue 15) still imports ``CertAuthority`` from here. The helpers now live
in ``tests.e2e.upstreams``, ``tests.e2e.certs`` and ``tests.e2e.traffic_mesh``; delete this
module once those imports name ``tests.e2e.certs``."""

from tests.e2e.certs import CertAuthority

__all__ = ["CertAuthority"]
