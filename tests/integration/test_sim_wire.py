"""The virtual lab's stamped sockets (rig.sim.wire): kernel RX / TX stamps, fallbacks, no spinning."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from rig.sim.lines import MAX_LINE, LineServer
from rig.sim.wire import KERNEL_RX, KERNEL_TX, THREAD, WireStamp

pytestmark = pytest.mark.integration


async def _client(address: tuple[str, int]) -> socket.socket:
    loop = asyncio.get_running_loop()
    c = socket.socket()
    c.setblocking(False)
    await loop.sock_connect(c, address)
    return c


async def _started(srv: LineServer) -> tuple[str, int]:
    await srv.start("127.0.0.1", 0)
    assert srv.address is not None
    # the first socket that asks for stamps makes the kernel switch timestamping on in a
    # deferred work item: segments of the next few ms may come unstamped (thread fallback)
    await asyncio.sleep(0.1)
    return srv.address


async def _until(pred, timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.001)


def test_lines_and_replies_carry_kernel_stamps() -> None:
    async def main() -> None:
        got: list[tuple[str, WireStamp]] = []
        replies: list[tuple[str, WireStamp]] = []
        srv = LineServer("t", lambda line, rx: got.append((line, rx)) or f"OK {line}", tx_stamps=True,
                         on_reply=lambda text, tx: replies.append((text, tx)))
        address = await _started(srv)
        loop = asyncio.get_running_loop()
        assert srv.broadcast("nobody yet").clock == THREAD  # no client: the thread's stamp
        before = time.monotonic_ns()
        c = await _client(address)
        try:
            await _until(lambda: srv.clients == 1)
            await loop.sock_sendall(c, b"one\r\ntwo\n")  # one segment, two lines
            await _until(lambda: len(replies) == 2)
            assert [g[0] for g in got] == ["one", "two"]
            assert all(rx.clock == KERNEL_RX for _, rx in got), got
            assert got[0][1] == got[1][1]  # the same segment completed both
            assert before < got[0][1].mono_ns <= time.monotonic_ns()
            assert [(t, tx.clock) for t, tx in replies] == [("OK one", KERNEL_TX), ("OK two", KERNEL_TX)]
            assert got[0][1].mono_ns < replies[0][1].mono_ns
            line = srv.broadcast("hello")
            assert line.clock == KERNEL_TX and replies[1][1].mono_ns < line.mono_ns <= time.monotonic_ns()
            data = b""
            while not data.endswith(b"hello\r\n"):
                data += await loop.sock_recv(c, 4096)
            assert data == b"OK one\r\nOK two\r\nhello\r\n"
            # a line over the limit is skipped whole; the next one gets through
            await loop.sock_sendall(c, b"x" * (MAX_LINE + 10) + b"\nthree\n")
            await _until(lambda: len(got) == 3)
            assert got[2][0] == "three"
        finally:
            c.close()
            await srv.stop()

    asyncio.run(main())


def test_stalled_reader_falls_back_to_thread_and_loop_stays_idle() -> None:
    """A client that does not read: writes queue up and are stamped by the thread; the TX
    stamps that arrive once it reads again are drained, not left to wake the loop forever."""

    async def main() -> None:
        srv = LineServer("t", tx_stamps=True)
        address = await _started(srv)
        loop = asyncio.get_running_loop()
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, soon full
        c.setblocking(False)
        await loop.sock_connect(c, address)
        try:
            await _until(lambda: srv.clients == 1)
            clocks = [srv.broadcast("y" * 1000).clock for _ in range(20)]
            for _ in range(2000):
                if clocks[-1] == THREAD:
                    break
                clocks.append(srv.broadcast("y" * 1000).clock)
            assert clocks[0] == KERNEL_TX and clocks[-1] == THREAD  # the window filled
            clocks += [srv.broadcast("y" * 1000).clock for _ in range(20)]
            assert srv.clients == 1
            total = 0
            while True:  # read everything: the queued lines go out, their TX stamps come late
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(c, 1 << 16), 0.3)
                except TimeoutError:
                    break
                assert chunk, "the server dropped the client"
                total += len(chunk)
            assert total == 1002 * len(clocks)
            cpu0 = time.process_time()
            await asyncio.sleep(0.5)
            assert time.process_time() - cpu0 < 0.2, "the loop spins on the error queue"
            assert srv.broadcast("fresh").clock == KERNEL_TX
        finally:
            c.close()
            await srv.stop()

    asyncio.run(main())
