"""A virtual terminal's TCP connection to its host, with kernel receive timestamps.

The socket is non-blocking with ``SO_TIMESTAMPNS``: it connects with ``loop.sock_connect``,
sends with ``loop.sock_sendall`` (the caller stamps right after it returns) and receives
with ``recvmsg`` whenever ``loop.add_reader`` says bytes are there, reading exactly what the
frame still needs. A frame carries the kernel stamp (CLOCK_REALTIME, mapped onto the
monotonic timeline) of the segment that completed it, so a busy event loop does not make
the truth journal late. Without a kernel stamp the receive falls back to ``clock.now()``
taken right after ``recvmsg`` returned, and :attr:`RxFrame.clock` says ``sim``.

With ``sim.netns`` the socket is made inside the lab's network namespace (a short-lived
thread enters it, :func:`rig.core.netns.socket_in`), so the connection leaves through the
terminal's veth; everything after that is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from dataclasses import dataclass

from ..core import netns as _netns
from ..core.clock import ClockSource, Stamp, WallToMono, now
from ..core.errors import InfrastructureError, ProtocolError
from ..core.netstamp import ANC_SPACE, enable_rx_timestamps, kernel_wall_ns
from ..iso8583.framing import MAX_FRAME, ConnectionClosed

_MAPPER = WallToMono()


def _close_result(fut: asyncio.Future[socket.socket]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


@dataclass(frozen=True, slots=True)
class RxFrame:
    """One frame body and when its last segment arrived."""

    body: bytes
    stamp: Stamp
    clock: str  # "kernel" (SO_TIMESTAMPNS) or "sim" (stamped after recvmsg returned)


class HostLink:
    """One connection; make it with :meth:`open`, close it with :meth:`close`."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.peer = peer
        self.kernel_stamps = enable_rx_timestamps(sock)
        local = sock.getsockname()
        self.local = f"{local[0]}:{local[1]}"

    @classmethod
    async def open(cls, host: str, port: int, netns: str | None = None) -> HostLink:
        """Connect (bound the wait with ``asyncio.wait_for``); raises OSError when refused.

        ``netns``: make the socket inside that network namespace (None: the current one).
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, addr = infos[0]
        ns = netns
        if ns is None:
            sock = socket.socket(family, kind, proto)
        else:
            made = loop.run_in_executor(None, _netns.socket_in, ns, family, kind, proto)
            try:
                sock = await asyncio.shield(made)
            except asyncio.CancelledError:
                made.add_done_callback(_close_result)  # timed out meanwhile: close it when made
                raise
            except InfrastructureError as e:  # the namespace is gone: the network is
                raise OSError(errno.ENETUNREACH, str(e)) from e
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enable_rx_timestamps(sock)  # before connecting: no segment goes unstamped
            await loop.sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        return cls(sock, f"{host}:{port}")

    async def send(self, data: bytes) -> Stamp:
        """Send everything; the stamp is taken right after ``sock_sendall`` returned."""
        await self._loop.sock_sendall(self._sock, data)
        return now()

    async def read_frame(self, max_len: int = MAX_FRAME) -> RxFrame:
        """The next non-empty frame (zero-length keep-alives skipped).

        Raises :class:`ConnectionClosed` on a clean close before a frame, ProtocolError on a
        truncated or oversized frame, OSError on a reset; bound it with ``asyncio.wait_for``.
        """
        while True:
            prefix, _ = await self._read_exactly(2)
            if not prefix:
                raise ConnectionClosed("connection closed by peer")
            if len(prefix) != 2:
                raise ProtocolError("connection closed inside the 2-byte length prefix")
            n = int.from_bytes(prefix, "big")
            if n > max_len:
                raise ProtocolError(f"frame length {n} exceeds the limit of {max_len} bytes")
            if n == 0:
                continue
            body, rx = await self._read_exactly(n)
            if len(body) != n:
                raise ProtocolError(f"connection closed after {len(body)} of {n} body bytes")
            assert rx is not None
            return RxFrame(body, rx[0], rx[1])

    async def _read_exactly(self, n: int) -> tuple[bytes, tuple[Stamp, str] | None]:
        """Up to ``n`` bytes (fewer only at end of stream) and the stamp of the last read."""
        buf = bytearray()
        last: tuple[Stamp, str] | None = None
        while len(buf) < n:
            try:
                data, anc, flags, _ = self._sock.recvmsg(n - len(buf), ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            if not data:
                break
            wall = None if flags & socket.MSG_CTRUNC else kernel_wall_ns(anc)
            if wall is None:
                last = (now(), str(ClockSource.SIM))
            else:
                last = (Stamp(_MAPPER.to_mono(wall), wall), str(ClockSource.KERNEL))
            buf += data
        return bytes(buf), last

    async def _readable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        fd = self._sock.fileno()
        self._loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
