"""Kernel receive timestamps (SO_TIMESTAMPNS) on blocking TCP sockets, read frame by frame.

For TCP, ``recvmsg`` reports the receive time of the last segment whose bytes it returned
(coalesced segments keep the newest stamp). Reading exactly what a frame still needs, the
stamp of the read that completes the frame is the stamp of the frame's last segment.
Stamps are CLOCK_REALTIME; :class:`rig.clock.WallToMono` maps them onto the monotonic
timeline. Without a control message (timestamping unavailable) the reader falls back to
``clock.now()`` taken right after ``recvmsg`` returned, and says so.
"""

from __future__ import annotations

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
ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


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
