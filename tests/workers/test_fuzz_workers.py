"""Fuzzing the workers' inputs: ``--worker-fds`` text (``parse_fds``) either reads as
listener keys with descriptor numbers or is refused with UsageError, never anything
else; and any datagram on a worker's notification socket (``Supervisor``) is read
without an exception, only an exact ``READY=1`` line counting as ready."""

from __future__ import annotations

import asyncio
import socket
import tempfile

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import deadline, fuzz_settings
from xdsd.errors import UsageError
from xdsd.notify import Notifier
from xdsd.workers.supervisor import Supervisor, WorkerPlace
from xdsd.workers.worker import INHERITED_KEYS, parse_fds

FDS_ALPHABET = st.sampled_from(list("grpcrest=;,0123456789 -x\n\0é"))


@fuzz_settings()
@given(st.text(FDS_ALPHABET, max_size=60) | st.text(max_size=60))
def test_fuzz_worker_fds(text: str) -> None:
    with deadline("workers.fds"):
        try:
            found = parse_fds(text)
        except UsageError as e:
            assert "--worker-fds" in str(e)
            return
        assert set(found) <= set(INHERITED_KEYS)
        assert all(fds and all(n >= 0 for n in fds) for fds in found.values())


class _Held:
    """A worker process that never ends until signalled."""

    pid = 4242
    returncode: int | None = None

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def wait(self) -> int:
        await self.ended.wait()
        return 0

    def send_signal(self, signum: int) -> None:
        self.returncode = 0
        self.ended.set()


@fuzz_settings(0.5)
@given(
    st.lists(
        st.binary(max_size=5000)
        | st.sampled_from([b"READY=1\rx", b"READY=1\x0b", b"READY=0", b"READY", b"=1", b"READY=1"]),
        min_size=1,
        max_size=5,
    )
)
def test_fuzz_worker_notifications(datagrams: list[bytes]) -> None:
    with deadline("workers.notifications"), tempfile.TemporaryDirectory() as runtime:

        async def main() -> tuple[bool, bool]:
            places: list[WorkerPlace] = []

            async def spawn(place: WorkerPlace, restarted: bool) -> _Held:
                places.append(place)
                return _Held()

            supervisor = Supervisor(
                1, spawn, runtime, notifier=Notifier(None), grace=1.0, backoff=(0.01, 0.01)
            )
            run = asyncio.create_task(supervisor.run())
            while not places:
                await asyncio.sleep(0.005)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                for data in datagrams:
                    sender.sendto(data, places[0].notify)
                exact = any(b"READY=1" in d[:4096].split(b"\n") for d in datagrams)
                for _ in range(200 if exact else 10):  # every datagram read by then
                    if supervisor.announced:
                        break
                    await asyncio.sleep(0.005)
                fooled = supervisor.announced
                sender.sendto(b"READY=1", places[0].notify)
                for _ in range(200):
                    if supervisor.announced:
                        break
                    await asyncio.sleep(0.005)
            supervisor.request_stop("done")
            assert await run == 0
            return fooled, supervisor.announced

        fooled, announced = asyncio.run(main())
        exact = any(b"READY=1" in d[:4096].split(b"\n") for d in datagrams)
        assert fooled == exact  # only an exact READY=1 line counts
        assert announced  # and one still does after whatever came before
