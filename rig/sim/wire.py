"""The virtual lab's TCP sockets, stamped by the kernel: the truth journal is stamped at the wire.

Every socket the lab serves or dials (SCPI, GRBL, consoles, ECR, control, the terminals' host
links) is a :class:`Conn`: a non-blocking socket driven by the lab's event loop with
``SO_TIMESTAMPNS`` on, read with ``recvmsg``. What arrives carries the kernel's receive stamp of
the segment that completed it (a line, a frame), so a late event loop does not make the truth
late. With ``tx_stamps`` the socket also asks for software transmit stamps
(``SO_TIMESTAMPING``, :func:`rig.core.netstamp.enable_tx_timestamps`): a write that the kernel
transmits at once (nothing left unsent, ``SIOCOUTQNSD`` == 0) is stamped with the kernel's
transmit time of its last segment, read from the error queue right after ``send`` returned (on
loopback and veth the stamp is queued before ``send`` returns). A write that has to wait (the
peer's window is full, earlier bytes still queued) and a socket without timestamping are
stamped by the loop's thread right after ``send`` returned; the loop never waits for a stamp
(:meth:`Conn.send`, for coroutines, may wait a few ms without blocking the loop).

Kernel stamps are CLOCK_REALTIME, mapped onto the monotonic timeline with one process-wide
:data:`MAPPER` (:class:`rig.core.clock.WallToMono`): a journal entry's ``wall_ns`` is the
kernel's stamp and its ``mono_ns`` that stamp minus the offset. :attr:`WireStamp.clock` says
which clock took the stamp: ``kernel_rx``, ``kernel_tx`` or ``thread``.

TCP coalesces segments that wait in the receive queue into one buffer carrying the newest
stamp, so a line that waited for a busy loop behind a later one gets the later one's stamp; the
sim reads as soon as its loop is free, which is what keeps that rare.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..core.clock import WallToMono, now
from ..core.netstamp import (
    ANC_SPACE,
    enable_rx_timestamps,
    enable_tx_timestamps,
    kernel_wall_ns,
    tx_wall_ns,
)

log = logging.getLogger(__name__)

KERNEL_RX = "kernel_rx"  # SO_TIMESTAMPNS: the kernel received the last segment
KERNEL_TX = "kernel_tx"  # SO_TIMESTAMPING software TX: the kernel handed the last segment to the device
THREAD = "thread"  # the loop's thread, right after the call returned (no kernel stamp)

MAPPER = WallToMono()  # CLOCK_REALTIME -> CLOCK_MONOTONIC for every kernel stamp of the lab
SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent (linux/sockios.h)
_TIMESPEC = struct.Struct("@ll")
_ERRQ_SPACE = 512
_SEND_POLL_S = 0.0002


@dataclass(frozen=True, slots=True)
class WireStamp:
    """When bytes crossed one of the lab's sockets, and which clock says so."""

    mono_ns: int
    wall_ns: int
    clock: str  # KERNEL_RX | KERNEL_TX | THREAD


def thread_stamp() -> WireStamp:
    """Now, taken by the calling thread."""
    st = now()
    return WireStamp(st.mono_ns, st.wall_ns, THREAD)


def kernel_stamp(wall_ns: int, clock: str) -> WireStamp:
    """A kernel stamp (CLOCK_REALTIME ns) on the monotonic timeline."""
    return WireStamp(MAPPER.to_mono(wall_ns), wall_ns, clock)


def earliest(stamps: Iterable[WireStamp]) -> WireStamp | None:
    """The earliest kernel stamp, else the earliest thread stamp (None for none)."""
    items = list(stamps)
    kernel = [s for s in items if s.clock != THREAD]
    pool = kernel or items
    return min(pool, key=lambda s: s.mono_ns) if pool else None


@dataclass(slots=True)
class _Mark:
    """The bytes of one ``recvmsg`` still in the read buffer, and their stamp."""

    unread: int
    stamp: WireStamp


class LineTooLong(Exception):  # noqa: N818 - what happened, not an error of the sim
    """A line longer than the limit arrived; it was skipped through its end."""


class Conn:
    """One TCP connection on the running loop: stamped reads and writes.

    Reads pull from the socket when a coroutine asks (:meth:`readline`, :meth:`readexactly`,
    :meth:`read`); a buffer keeps, per ``recvmsg``, how many of its bytes are still unread and
    their stamp, so what a read returns carries the stamp of the ``recvmsg`` that brought its
    last byte. Writes go straight to the socket; what it does not take is queued and sent as
    it drains (:attr:`buffered`, :meth:`drain`).
    """

    def __init__(self, sock: socket.socket, *, tx_stamps: bool = False) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # a write goes out at once, and so does its TX stamp
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rx_kernel = enable_rx_timestamps(sock)
        self.tx_kernel = tx_stamps and enable_tx_timestamps(sock)
        self._fd = sock.fileno()
        try:
            peer = sock.getpeername()
            self.peer = f"{peer[0]}:{peer[1]}"
        except (OSError, IndexError, TypeError):
            self.peer = "?"
        self._rbuf = bytearray()
        self._rmarks: deque[_Mark] = deque()
        self._eof = False
        self._rwait: asyncio.Future[None] | None = None
        self._wbuf = bytearray()
        self._writing = False
        self._drained: asyncio.Future[None] | None = None
        self._tx_walls: list[int] = []
        self.closed = False
        self.error: OSError | None = None
        self.tx_kernel_n = 0  # writes stamped by the kernel / by the thread (diagnostics)
        self.tx_thread_n = 0

    # --- reading ------------------------------------------------------------------------------
    async def readline(self, limit: int = 65536, eol: bytes = b"\n") -> tuple[bytes, WireStamp]:
        """The next line, ``eol`` included, with the stamp of the read that completed it.

        At the end of the stream: what is left (no ``eol``), then ``b""``. A line longer than
        ``limit`` is skipped through its ``eol`` and raises :class:`LineTooLong`.
        """
        start = 0
        while True:
            i = self._rbuf.find(eol, start)
            if i >= 0:
                if i + len(eol) > limit:
                    self._take(i + len(eol))
                    raise LineTooLong(f"line of {i + len(eol)} bytes > {limit}")
                return self._stamped(*self._take(i + len(eol)))
            if len(self._rbuf) > limit:
                await self._skip_line(eol)
                raise LineTooLong(f"line over {limit} bytes")
            start = max(0, len(self._rbuf) - len(eol) + 1)
            if not await self._fill(max(4096, limit - len(self._rbuf) + len(eol))):
                return self._stamped(*self._take(len(self._rbuf)))

    async def readexactly(self, n: int) -> tuple[bytes, WireStamp | None]:
        """``n`` bytes (fewer only at the end of the stream) and the stamp of the read that
        brought the last of them; never reads past them, so a frame read this way carries the
        stamp of its own last segment."""
        while len(self._rbuf) < n and await self._fill(n - len(self._rbuf)):
            pass
        return self._take(min(n, len(self._rbuf)))

    async def read(self, n: int = 4096) -> tuple[bytes, WireStamp | None]:
        """What is there (up to ``n`` bytes; waits for some), ``b""`` at the end of the stream."""
        if not self._rbuf:
            await self._fill(n)
        return self._take(min(n, len(self._rbuf)))

    def _stamped(self, data: bytes, stamp: WireStamp | None) -> tuple[bytes, WireStamp]:
        return data, stamp if stamp is not None else thread_stamp()

    def _take(self, n: int) -> tuple[bytes, WireStamp | None]:
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        stamp: WireStamp | None = None
        left = n
        while left > 0 and self._rmarks:
            mark = self._rmarks[0]
            used = min(left, mark.unread)
            left -= used
            mark.unread -= used
            stamp = mark.stamp
            if not mark.unread:
                self._rmarks.popleft()
        return out, stamp

    async def _skip_line(self, eol: bytes) -> None:
        while True:
            i = self._rbuf.find(eol)
            if i >= 0:
                self._take(i + len(eol))
                return
            self._take(max(0, len(self._rbuf) - len(eol) + 1))
            if not await self._fill(4096):
                self._take(len(self._rbuf))
                return

    async def _fill(self, n: int) -> bool:
        """One ``recvmsg`` of up to ``n`` bytes into the buffer; False at the end of the stream."""
        while True:
            if self.closed or self._eof:
                return False
            try:
                data, anc, flags, _ = self.sock.recvmsg(n, ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            except OSError as e:
                self.error = e
                self._eof = True
                return False
            break
        if not data:
            self._eof = True
            return False
        wall = None if flags & socket.MSG_CTRUNC else kernel_wall_ns(anc)
        stamp = thread_stamp() if wall is None else kernel_stamp(wall, KERNEL_RX)
        self._rbuf += data
        self._rmarks.append(_Mark(len(data), stamp))
        return True

    async def _readable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._rwait = fut

        def ready() -> None:
            if self.tx_kernel:
                self._drain_errqueue()  # a TX stamp also wakes the reader (POLLERR)
            if not fut.done():
                fut.set_result(None)

        self._loop.add_reader(self._fd, ready)
        try:
            await fut
        finally:
            self._rwait = None
            if not self.closed:  # close() removed it (and the fd number may be reused already)
                self._loop.remove_reader(self._fd)

    # --- writing ------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return len(self._wbuf)

    def write(self, data: bytes) -> WireStamp | None:
        """Send ``data`` (the socket takes what it can, the rest is queued) and say when it left.

        The kernel's TX stamp of its last segment when the kernel transmitted it all at once,
        else the thread's stamp right after ``send`` returned; None when the connection is
        closed. Never waits.
        """
        if self.closed:
            return None
        if self.tx_kernel:
            self._drain_errqueue()
            self._tx_walls.clear()  # stamps of earlier writes
        if not self._wbuf:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                log.debug("send to %s failed: %s", self.peer, e)
                self.error = e
                self.close()
                return None
            data = data[sent:]
        after = thread_stamp()
        if data:
            self._wbuf += data
            self._want_write()
        else:
            stamp = self._tx_stamp()
            if stamp is not None:
                self.tx_kernel_n += 1
                return stamp
        self.tx_thread_n += 1
        return after

    async def send(self, data: bytes, wait_s: float = 0.002) -> WireStamp:
        """:meth:`write` everything and wait until the socket took it; when the kernel did not
        stamp it at once, poll its error queue for up to ``wait_s`` (without blocking the loop)
        before falling back to the thread's stamp taken once the last byte was taken."""
        stamp = self.write(data)
        if stamp is None:
            raise self.error or ConnectionResetError(errno.ECONNRESET, "connection closed")
        queued = self.buffered > 0
        await self.drain()
        if stamp.clock == KERNEL_TX or not (queued or self.tx_kernel):
            return stamp
        after = thread_stamp()
        end = time.monotonic() + wait_s
        while self.tx_kernel and not self.closed:
            got = self._tx_stamp()
            if got is not None:
                self.tx_thread_n -= 1
                self.tx_kernel_n += 1
                return got
            if time.monotonic() >= end:
                break
            await asyncio.sleep(_SEND_POLL_S)
        return after

    async def drain(self) -> None:
        """Wait until the socket took every queued byte; raises if the connection failed."""
        while self._wbuf and not self.closed:
            fut: asyncio.Future[None] = self._loop.create_future()
            self._drained = fut
            await fut
        if self.error is not None:
            raise self.error

    def _tx_stamp(self) -> WireStamp | None:
        """The newest TX stamp since the last write began, if every byte has been sent."""
        if not self.tx_kernel or self._wbuf or self._unsent():
            return None
        self._drain_errqueue()
        if not self._tx_walls:
            return None
        return kernel_stamp(max(self._tx_walls), KERNEL_TX)

    def _unsent(self) -> int:
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(self._fd, SIOCOUTQNSD, buf)
        except OSError:
            return 0
        return buf[0]

    def _drain_errqueue(self) -> None:
        while True:
            try:
                _, anc, _, _ = self.sock.recvmsg(0, _ERRQ_SPACE, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            wall = tx_wall_ns(anc)
            if wall is not None:
                self._tx_walls.append(wall)

    def _want_write(self) -> None:
        if not self._writing and not self.closed:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        if self.tx_kernel:
            self._drain_errqueue()
        try:
            sent = self.sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.error = e
            self.close()
            return
        del self._wbuf[:sent]
        if not self._wbuf:
            self._writing = False
            self._loop.remove_writer(self._fd)
            self._wake_drain()

    def _wake_drain(self) -> None:
        fut, self._drained = self._drained, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    # --- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close now (queued bytes are dropped); wakes whoever waits on this connection."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        with contextlib.suppress(OSError):
            self.sock.close()
        self._wbuf.clear()
        if self._rwait is not None and not self._rwait.done():
            self._rwait.set_result(None)
        self._wake_drain()


Serve = Callable[[Conn], Awaitable[None]]


class Server:
    """A TCP server whose connections are :class:`Conn`; ``serve(conn)`` runs in a task per
    connection, which is closed when it returns."""

    def __init__(self, name: str, serve: Serve, *, tx_stamps: bool = False) -> None:
        self.name = name
        self._serve = serve
        self._tx = tx_stamps
        self.sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.conns: set[Conn] = set()

    @property
    def address(self) -> tuple[str, int]:
        if not self.sockets:
            raise RuntimeError(f"{self.name} is not started")
        name = self.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def port(self) -> int:
        return self.address[1]

    async def start(self, host: str, port: int, backlog: int = 100) -> None:
        """Listen on every address ``host`` resolves to (raises OSError when one cannot bind)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen: set[tuple[int, object]] = set()
        try:
            for family, kind, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                enable_rx_timestamps(sock)  # inherited by accepted sockets: no line unstamped
                sock.bind(addr)
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            for s in self.sockets:
                s.close()
            self.sockets = []
            raise
        self._accepting = [loop.create_task(self._accept(s)) for s in self.sockets]

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(lsock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("%s: accept failed (%s); retrying", self.name, e)
                    await asyncio.sleep(0.1)
                    continue
                log.error("%s: accept failed: %s", self.name, e)
                return
            try:
                conn = Conn(sock, tx_stamps=self._tx)
            except OSError as e:
                log.debug("%s: dropped a connection at once: %s", self.name, e)
                sock.close()
                continue
            self.conns.add(conn)
            task = loop.create_task(self._run(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: Conn) -> None:
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s: serving %s failed", self.name, conn.peer)
        finally:
            self.conns.discard(conn)
            conn.close()

    async def stop(self) -> None:
        """Stop listening, close every connection, wait (briefly) for their tasks."""
        for task in self._accepting:
            task.cancel()
        if self._accepting:  # before closing: the loop lets go of the listening fds first
            await asyncio.gather(*self._accepting, return_exceptions=True)
        self._accepting = []
        for sock in self.sockets:
            sock.close()
        for conn in list(self.conns):
            conn.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
