"""Length-prefixed framing: a 2-byte big-endian length (excluding itself), then the body."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rig.core.errors import ProtocolError

__all__ = ["ConnectionClosed", "MAX_FRAME", "frame", "read_frame", "read_frame_async"]

MAX_FRAME = 8192
"""Default upper bound for an incoming body; longer frames are refused before reading them."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection cleanly between two frames (no byte of a new frame)."""


def frame(body: bytes) -> bytes:
    """Prefix `body` with its 2-byte big-endian length."""
    if len(body) > 0xFFFF:
        raise ProtocolError(f"frame body of {len(body)} bytes does not fit a 2-byte length")
    return len(body).to_bytes(2, "big") + bytes(body)


def _length(prefix: bytes, max_len: int) -> int:
    n = int.from_bytes(prefix, "big")
    if n > max_len:
        raise ProtocolError(f"frame length {n} exceeds the limit of {max_len} bytes")
    return n


def read_frame(read_exactly: Callable[[int], bytes], max_len: int = MAX_FRAME) -> bytes:
    """Read one frame and return its body (b"" for a zero-length keep-alive frame).

    `read_exactly(n)` returns n bytes, or fewer (or raises EOFError) at end of stream.
    Raises ConnectionClosed on EOF before the first byte, ProtocolError on a truncated
    or oversized frame. I/O errors (OSError, timeouts) propagate unchanged.
    """
    try:
        prefix = read_exactly(2)
    except EOFError:
        prefix = b""
    if not prefix:
        raise ConnectionClosed("connection closed by peer")
    if len(prefix) != 2:
        raise ProtocolError("connection closed inside the 2-byte length prefix")
    n = _length(prefix, max_len)
    if n == 0:
        return b""
    try:
        body = read_exactly(n)
    except EOFError:
        body = b""
    if len(body) != n:
        raise ProtocolError(f"connection closed after {len(body)} of {n} body bytes")
    return bytes(body)


async def read_frame_async(reader: asyncio.StreamReader, max_len: int = MAX_FRAME) -> bytes:
    """Asyncio version of `read_frame` reading from a StreamReader."""
    try:
        prefix = await reader.readexactly(2)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ConnectionClosed("connection closed by peer") from None
        raise ProtocolError("connection closed inside the 2-byte length prefix") from None
    n = _length(prefix, max_len)
    if n == 0:
        return b""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(
            f"connection closed after {len(exc.partial)} of {n} body bytes"
        ) from None
