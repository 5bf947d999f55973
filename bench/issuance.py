"""What xdsd's CA costs: workload key pairs and certificates issued per second, CSRs
signed per second, tokens verified per second, on one core of this machine.

``python -m bench issuance [--count N] [--runs R]`` builds a CA with a generated
authority in a temporary state directory, then times ``R`` runs of ``N`` operations of
each kind and reports the median rate (and the slowest and fastest run).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xdsd.ca.authority import CertificateAuthority
from xdsd.ca.tokens import TokenAuthority
from xdsd.model.mesh_config import MeshCA


def _rates(run: Callable[[int], None], count: int, runs: int) -> dict[str, float]:
    """Operations per second of ``runs`` timed calls of ``run(count)``."""
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        run(count)
        rates.append(count / (time.perf_counter() - started))
    return {
        "median_per_second": round(statistics.median(rates), 1),
        "min_per_second": round(min(rates), 1),
        "max_per_second": round(max(rates), 1),
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench issuance", description=__doc__)
    parser.add_argument("--count", type=int, default=500, help="operations per run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"count": args.count, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "state")
        ecdsa = CertificateAuthority(MeshCA(state_dir=state), "bench.test")
        rsa = CertificateAuthority(MeshCA(state_dir=state, key_type="rsa-2048"), "bench.test")
        tokens = TokenAuthority(MeshCA(state_dir=state))
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        token = tokens.mint("bench", "svc", 3600).token

        def issue_ecdsa(n: int) -> None:
            for i in range(n):
                ecdsa.issue("bench", f"svc-{i % 50}")

        def issue_rsa(n: int) -> None:
            for i in range(n):
                rsa.issue("bench", f"svc-{i % 50}")

        def sign(n: int) -> None:
            for i in range(n):
                ecdsa.sign_csr(csr, "bench", f"svc-{i % 50}")

        def verify(n: int) -> None:
            for _ in range(n):
                tokens.verify(token)

        cases: list[tuple[str, Callable[[int], None], int]] = [
            ("issue ecdsa-p256 (key + certificate)", issue_ecdsa, args.count),
            ("issue rsa-2048 (key + certificate)", issue_rsa, max(1, args.count // 10)),
            ("sign a P-256 CSR", sign, args.count),
            ("verify a token", verify, args.count * 4),
        ]
        print(f"{'operation':<40} {'median/s':>10} {'min/s':>10} {'max/s':>10}")
        for name, run, count in cases:
            run(min(count, 20))  # warm up
            figures = _rates(run, count, args.runs)
            results[name] = figures
            print(
                f"{name:<40} {figures['median_per_second']:>10.1f} "
                f"{figures['min_per_second']:>10.1f} {figures['max_per_second']:>10.1f}"
            )
    return results
