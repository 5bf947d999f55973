"""A proxyless gRPC client for the tests: dials ``xds:///TARGET`` (GRPC_XDS_BOOTSTRAP set
by the caller) and prints, one per line, which backend answered each call."""

from __future__ import annotations

import sys
import time

import grpc


def main() -> None:
    target = sys.argv[1]
    with grpc.insecure_channel(f"xds:///{target}") as channel:
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
