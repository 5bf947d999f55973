"""A proxyless gRPC client for the tests: dials ``xds:///TARGET`` (GRPC_XDS_BOOTSTRAP set
by the caller) and prints, one per line, which backend answered each call (or the error).
With ``--xds-credentials`` the channel takes its security from xDS (falling back to
plaintext), as a client that wants mesh mutual TLS must."""

from __future__ import annotations

import sys
import time

import grpc
import grpc.experimental


def main() -> None:
    target = sys.argv[1]
    if "--xds-credentials" in sys.argv[2:]:
        fallback = grpc.experimental.insecure_channel_credentials()
        channel = grpc.secure_channel(f"xds:///{target}", grpc.xds_channel_credentials(fallback))
    else:
        channel = grpc.insecure_channel(f"xds:///{target}")
    with channel:
        who = channel.unary_unary("/test.Echo/Who")
        while True:
            try:
                answer = who(b"", timeout=5, wait_for_ready=True)
                print(answer.decode(), flush=True)
            except grpc.RpcError as e:
                print(f"error {e.code().name}", flush=True)
            time.sleep(0.02)


if __name__ == "__main__":
    main()
