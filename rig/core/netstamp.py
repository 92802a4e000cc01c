"""Kernel receive timestamps (SO_TIMESTAMPNS) on blocking TCP sockets, read frame by frame.

For TCP, ``recvmsg`` reports the receive time of the last segment whose bytes it returned
(coalesced segments keep the newest stamp). Reading exactly what a frame still needs, the
stamp of the read that completes the frame is the stamp of the frame's last segment.
Stamps are CLOCK_REALTIME; :class:`rig.core.clock.WallToMono` maps them onto the monotonic
timeline. Without a control message (timestamping unavailable) the reader falls back to
``clock.now()`` taken right after ``recvmsg`` returned, and says so.
"""

from __future__ import annotations

import array
import fcntl
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

from .clock import ClockSource, Deadline, WallToMono, now

# Linux value (asm-generic; x86, arm, riscv, powerpc). The stdlib does not export it.
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@ll")  # struct timespec (time_t, long): 16 bytes on 64-bit
# room for SCM_TIMESTAMPNS and, once TX stamping is on, SCM_TIMESTAMPING (3 timespecs)
ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(3 * _TIMESPEC.size)

# SO_TIMESTAMPING (Linux, include/uapi/linux/net_tstamp.h): software TX stamps, no payload echo
SO_TIMESTAMPING: int = getattr(socket, "SO_TIMESTAMPING", 37)
_SOF_TX_SOFTWARE = 1 << 1
_SOF_SOFTWARE = 1 << 4
_SOF_OPT_TSONLY = 1 << 11


def enable_rx_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel for receive timestamps on ``sock``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def kernel_wall_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The CLOCK_REALTIME ns in an SCM_TIMESTAMPNS control message, if there is one."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            if sec or nsec:
                return int(sec) * 1_000_000_000 + int(nsec)
    return None


@dataclass(frozen=True, slots=True)
class RxStamp:
    """When the last segment of a frame arrived."""

    mono_ns: int
    wall_ns: int
    clock: ClockSource
    lag_ns: int | None  # (monotonic right after recvmsg returned) - mono_ns; kernel stamps only


class StampedReader:
    """Reads exact byte counts from a blocking socket, keeping the last read's stamp.

    ``idle_timeout_s`` bounds the wait for the first byte of a frame, ``frame_timeout_s``
    the whole frame once its first byte arrived (no slow-loris). Timeouts raise
    :class:`TimeoutError`; :attr:`in_frame` tells whether a frame had started.
    """

    def __init__(self, sock: socket.socket, mapper: WallToMono, *, idle_timeout_s: float,
                 frame_timeout_s: float) -> None:
        self._sock = sock
        self._mapper = mapper
        self._idle_s = idle_timeout_s
        self._frame_s = frame_timeout_s
        self._deadline: Deadline | None = None
        self.frame_bytes = 0
        self.last: RxStamp | None = None

    @property
    def in_frame(self) -> bool:
        return self.frame_bytes > 0

    def begin_frame(self) -> None:
        self._deadline = None
        self.frame_bytes = 0
        self.last = None

    def read_exactly(self, n: int) -> bytes:
        """Up to ``n`` bytes: fewer only at end of stream."""
        buf = bytearray()
        while len(buf) < n:
            timeout = self._idle_s if self._deadline is None else self._deadline.remaining()
            if timeout <= 0:
                raise TimeoutError(f"frame incomplete after {self._frame_s:g} s")
            self._sock.settimeout(timeout)
            data, anc, flags, _ = self._sock.recvmsg(n - len(buf), ANC_SPACE)
            after_ns = time.monotonic_ns()
            if not data:
                break
            self._note(anc, flags, after_ns)
            if self._deadline is None:
                self._deadline = Deadline(self._frame_s)
            self.frame_bytes += len(data)
            buf += data
        return bytes(buf)

    def _note(self, anc: list[tuple[int, int, bytes]], flags: int, after_ns: int) -> None:
        wall = None if flags & socket.MSG_CTRUNC else kernel_wall_ns(anc)
        if wall is None:
            st = now()
            self.last = RxStamp(st.mono_ns, st.wall_ns, ClockSource.THREAD, None)
        else:
            mono = self._mapper.to_mono(wall)
            self.last = RxStamp(mono, wall, ClockSource.KERNEL, after_ns - mono)


def enable_tx_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel for software transmit timestamps on ``sock`` (SO_TIMESTAMPING)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING,
                        _SOF_TX_SOFTWARE | _SOF_SOFTWARE | _SOF_OPT_TSONLY)
    except OSError:
        return False
    return True


def tx_wall_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The software TX stamp (ts[0]) in an SCM_TIMESTAMPING message from the error queue."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)  # ts[0]: the software stamp
            if sec or nsec:
                return int(sec) * 1_000_000_000 + int(nsec)
    return None


def send_stamped(sock: socket.socket, data: bytes, mapper: WallToMono,
                 wait_s: float = 0.005) -> RxStamp:
    """``sendall`` then the kernel's transmit stamp of the last segment (when the packet was
    handed to the device), if TX stamping is on; else the thread's stamp after sendall."""
    sock.sendall(data)
    after = now()
    best: int | None = None
    end = time.monotonic() + wait_s
    timeout = sock.gettimeout()
    sock.settimeout(0.0)  # a socket with a timeout would wait for *readable* data first
    try:
        poller = select.poll()
        poller.register(sock, 0)  # POLLERR (the error queue has a message) is always reported
        while True:
            try:
                _, anc, _, _ = sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                left = end - time.monotonic()
                if best is not None or left <= 0:
                    break
                poller.poll(max(1, int(left * 1000)))
                continue
            except OSError:
                break
            wall = tx_wall_ns(anc)
            if wall is not None:
                best = wall if best is None else max(best, wall)
    finally:
        sock.settimeout(timeout)
    if best is None:
        return RxStamp(after.mono_ns, after.wall_ns, ClockSource.THREAD, None)
    mono = mapper.to_mono(best)
    return RxStamp(mono, best, ClockSource.KERNEL, after.mono_ns - mono)


class StampingSocket:
    """Wraps a library's TCP socket so its ``recv`` keeps the kernel receive stamp.

    pyvisa-py reads its SOCKET sessions with ``select`` + ``recv``; swapping the session's
    socket for this wrapper gives every instrument reply the kernel's stamp (``take()``)
    without re-implementing the VISA layer. Everything else is delegated to the socket.
    """

    def __init__(self, sock: socket.socket, mapper: WallToMono) -> None:
        self._sock = sock
        self._mapper = mapper
        self._last: RxStamp | None = None
        enable_rx_timestamps(sock)

    def recv(self, n: int, flags: int = 0) -> bytes:
        data, anc, mflags, _ = self._sock.recvmsg(n, ANC_SPACE, flags)
        wall = None if mflags & socket.MSG_CTRUNC else kernel_wall_ns(anc)
        if data and wall is not None:
            mono = self._mapper.to_mono(wall)
            self._last = RxStamp(mono, wall, ClockSource.KERNEL, time.monotonic_ns() - mono)
        return data

    def take(self) -> RxStamp | None:
        """The stamp of the last segment received since the previous ``take()``."""
        last, self._last = self._last, None
        return last

    def fileno(self) -> int:
        return self._sock.fileno()

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def rx_stamp(anc: list[tuple[int, int, bytes]], flags: int, mapper: WallToMono,
             after_ns: int) -> RxStamp:
    """The stamp of one ``recvmsg`` (its ancillary data and flags): the kernel's receive stamp
    mapped to monotonic, else (no control message) the calling thread's ``now()``.
    ``after_ns``: ``time.monotonic_ns()`` taken right after ``recvmsg`` returned."""
    wall = None if flags & socket.MSG_CTRUNC else kernel_wall_ns(anc)
    if wall is None:
        st = now()
        return RxStamp(st.mono_ns, st.wall_ns, ClockSource.THREAD, None)
    mono = mapper.to_mono(wall)
    return RxStamp(mono, wall, ClockSource.KERNEL, after_ns - mono)


def drain_tx_stamps(sock: socket.socket) -> int | None:
    """Empty ``sock``'s error queue without waiting; the newest software TX stamp in it
    (CLOCK_REALTIME ns), or None. Also what a non-blocking loop must do when the socket
    polls readable only because a TX stamp is queued (POLLERR)."""
    best: int | None = None
    while True:
        try:
            _, anc, _, _ = sock.recvmsg(0, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError: empty; anything else: nothing to read either
            return best
        wall = tx_wall_ns(anc)
        if wall is not None:
            best = wall if best is None else max(best, wall)


SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent (linux/sockios.h)


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes ``sock`` has queued but not yet sent (0 where the kernel cannot say)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, buf)
    except OSError:
        return 0
    return buf[0]
