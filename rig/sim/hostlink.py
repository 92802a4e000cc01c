"""A virtual terminal's TCP connection to its host, stamped by the kernel both ways.

The socket is a :class:`rig.sim.wire.Conn` (non-blocking, ``SO_TIMESTAMPNS`` on from before the
connect, software TX stamps after it): :meth:`HostLink.send` says when the request left (the
kernel's transmit stamp of its last segment, ``kernel_tx``), :meth:`HostLink.read_frame` reads
exactly what the frame still needs, so a frame carries the kernel receive stamp of the segment
that completed it (``kernel_rx``), and a busy event loop does not make the truth journal late.
Where the kernel gives no stamp the loop's thread stamps right after the call returned
(``thread``).

With ``sim.netns`` the socket is made inside the lab's network namespace (a short-lived
thread enters it, :func:`rig.core.netns.socket_in`), so the connection leaves through the
terminal's veth; everything after that is the same.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass

from ..core import netns as _netns
from ..core.errors import InfrastructureError, ProtocolError
from ..core.netstamp import enable_rx_timestamps
from ..iso8583.framing import MAX_FRAME, ConnectionClosed
from .wire import Conn, WireStamp, thread_stamp


def _close_result(fut: asyncio.Future[socket.socket]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


@dataclass(frozen=True, slots=True)
class RxFrame:
    """One frame body and when its last segment arrived."""

    body: bytes
    stamp: WireStamp  # its clock: kernel_rx, else thread


class HostLink:
    """One connection; make it with :meth:`open`, close it with :meth:`close`."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self._conn = Conn(sock, tx_stamps=True)
        self.peer = peer
        self.kernel_stamps = self._conn.rx_kernel
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
            return cls(sock, f"{host}:{port}")
        except BaseException:
            sock.close()
            raise

    async def send(self, data: bytes) -> WireStamp:
        """Send everything; when its last segment left (``kernel_tx``, else ``thread``)."""
        return await self._conn.send(data)

    async def read_frame(self, max_len: int = MAX_FRAME) -> RxFrame:
        """The next non-empty frame (zero-length keep-alives skipped).

        Raises :class:`ConnectionClosed` on a clean close before a frame, ProtocolError on a
        truncated or oversized frame, OSError on a reset; bound it with ``asyncio.wait_for``.
        """
        while True:
            prefix, _ = await self._conn.readexactly(2)
            if self._conn.error is not None and len(prefix) != 2:
                raise self._conn.error
            if not prefix:
                raise ConnectionClosed("connection closed by peer")
            if len(prefix) != 2:
                raise ProtocolError("connection closed inside the 2-byte length prefix")
            n = int.from_bytes(prefix, "big")
            if n > max_len:
                raise ProtocolError(f"frame length {n} exceeds the limit of {max_len} bytes")
            if n == 0:
                continue
            body, rx = await self._conn.readexactly(n)
            if len(body) != n:
                if self._conn.error is not None:
                    raise self._conn.error
                raise ProtocolError(f"connection closed after {len(body)} of {n} body bytes")
            return RxFrame(body, rx or thread_stamp())

    def close(self) -> None:
        self._conn.close()
