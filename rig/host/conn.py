"""One accepted host connection on the host's event loop: frames read with their kernel
receive stamp, replies sent with their kernel transmit stamp, deadlines enforced.

A non-blocking socket with ``SO_TIMESTAMPNS`` (and software TX stamps), read with ``recvmsg``
exactly what a frame still needs, so a frame carries the stamp of its own last segment
(:mod:`rig.core.netstamp`). The wait for the first byte of a frame is bounded by the idle
limit, the whole frame once its first byte arrived by the frame deadline (no slow-loris);
both raise :class:`TimeoutError`, and :attr:`HostConn.in_frame` tells which one it was.
Nothing here blocks the loop: waits are futures woken by the selector or a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from rig.core.clock import ClockSource, Deadline, WallToMono, now
from rig.core.errors import ProtocolError
from rig.iso8583.framing import ConnectionClosed

from ..core.netstamp import (
    ANC_SPACE,
    RxStamp,
    drain_tx_stamps,
    enable_rx_timestamps,
    enable_tx_timestamps,
    rx_stamp,
    unsent_bytes,
)

_TX_WAIT_S = 0.005  # how long a reply waits for its TX stamp when the kernel is not done yet
_TX_POLL_S = 0.0002


class HostConn:
    """Stamped, deadline-bounded reads and writes of one connection on the running loop."""

    def __init__(self, sock: socket.socket, mapper: WallToMono, *, idle_timeout_s: float,
                 frame_timeout_s: float) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._mapper = mapper
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        sock.setblocking(False)
        enable_rx_timestamps(sock)  # inherited from the listener already; harmless again
        self.tx_kernel = enable_tx_timestamps(sock)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = sock.fileno()
        self._deadline: Deadline | None = None
        self.frame_bytes = 0
        self.last: RxStamp | None = None
        self.closed = False

    # --- reading ------------------------------------------------------------------------------
    @property
    def in_frame(self) -> bool:
        return self.frame_bytes > 0

    def begin_frame(self) -> None:
        self._deadline = None
        self.frame_bytes = 0
        self.last = None

    async def read_frame(self, max_len: int) -> bytes:
        """One frame's body (b"" for a zero-length keep-alive); as
        :func:`rig.iso8583.framing.read_frame`: ConnectionClosed on EOF before its first
        byte, ProtocolError on a truncated or oversized frame; TimeoutError, OSError."""
        self.begin_frame()
        prefix = await self.read_exactly(2)
        if not prefix:
            raise ConnectionClosed("connection closed by peer")
        if len(prefix) != 2:
            raise ProtocolError("connection closed inside the 2-byte length prefix")
        n = int.from_bytes(prefix, "big")
        if n > max_len:
            raise ProtocolError(f"frame length {n} exceeds the limit of {max_len} bytes")
        if n == 0:
            return b""
        body = await self.read_exactly(n)
        if len(body) != n:
            raise ProtocolError(f"connection closed after {len(body)} of {n} body bytes")
        return body

    async def read_exactly(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at end of stream); :attr:`last` is the stamp of the
        ``recvmsg`` that brought the last of them."""
        buf = bytearray()
        while len(buf) < n:
            try:
                data, anc, flags, _ = self.sock.recvmsg(n - len(buf), ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                timeout = (self.idle_timeout_s if self._deadline is None
                           else self._deadline.remaining())
                if timeout <= 0 or not await self._readable(timeout):
                    if self._deadline is not None:
                        raise TimeoutError(
                            f"frame incomplete after {self.frame_timeout_s:g} s") from None
                    raise TimeoutError(f"idle for {self.idle_timeout_s:g} s") from None
                continue
            after_ns = time.monotonic_ns()
            if not data:
                break
            self.last = rx_stamp(anc, flags, self._mapper, after_ns)
            if self._deadline is None:
                self._deadline = Deadline(self.frame_timeout_s)
            self.frame_bytes += len(data)
            buf += data
        return bytes(buf)

    async def _readable(self, timeout: float) -> bool:
        """Wait until the socket may have data (True) or ``timeout`` passed (False)."""
        return await self._ready(self._loop.add_reader, self._loop.remove_reader, timeout)

    async def _writable(self, timeout: float) -> bool:
        """Wait until the socket takes data again (True) or ``timeout`` passed (False)."""
        return await self._ready(self._loop.add_writer, self._loop.remove_writer, timeout)

    async def _ready(self, add: Callable[..., Any], remove: Callable[[int], Any],
                     timeout: float) -> bool:
        fut: asyncio.Future[bool] = self._loop.create_future()

        def ready() -> None:
            if self.tx_kernel:  # a queued TX stamp polls readable and writable (POLLERR):
                drain_tx_stamps(self.sock)  # drain it, do not spin on it
            if not fut.done():
                fut.set_result(True)

        def late() -> None:
            if not fut.done():
                fut.set_result(False)

        add(self._fd, ready)
        timer = self._loop.call_later(timeout, late)
        try:
            return await fut
        finally:
            timer.cancel()
            if not self.closed:
                remove(self._fd)

    # --- writing ------------------------------------------------------------------------------
    async def send(self, data: bytes, timeout_s: float) -> RxStamp:
        """Send all of ``data`` within ``timeout_s`` (TimeoutError else); when its last segment
        left: the kernel's TX stamp if it came within a few ms, else the thread's stamp taken
        once the socket took the last byte."""
        if self.tx_kernel:
            drain_tx_stamps(self.sock)  # stamps of earlier replies
        view = memoryview(data)
        deadline = Deadline(timeout_s)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                left = deadline.remaining()
                if left <= 0 or not await self._writable(left):
                    raise TimeoutError(f"peer took no data for {timeout_s:g} s") from None
                continue
            view = view[sent:]
        after = now()
        if self.tx_kernel:
            end = time.monotonic() + _TX_WAIT_S
            while True:
                wall = drain_tx_stamps(self.sock) if not unsent_bytes(self.sock) else None
                if wall is not None:
                    mono = self._mapper.to_mono(wall)
                    return RxStamp(mono, wall, ClockSource.KERNEL, after.mono_ns - mono)
                if time.monotonic() >= end or self.closed:
                    break
                await asyncio.sleep(_TX_POLL_S)
        return RxStamp(after.mono_ns, after.wall_ns, ClockSource.THREAD, None)

    # --- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close now (idempotent); the loop lets go of the fd first."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        with contextlib.suppress(OSError):
            self.sock.close()
