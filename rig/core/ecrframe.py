"""The framed ECR link of cash-register protocols: ``STX data ETX LRC``, answered ``ACK`` / ``NAK``.

``LRC`` is the XOR of every byte after ``STX`` up to and including ``ETX``. The receiver of a
frame answers ``ACK`` when its LRC is right, ``NAK`` otherwise, and the sender sends it again
(a few times) after a ``NAK`` or when no ``ACK`` comes in time. The data is text (the same
commands as the line protocol: ``SALE 100`` → ``OK SALE started``), encoded UTF-8.

Pure codec, no I/O: the rig's ECR driver and the virtual terminal both use it.
:class:`Decoder` takes any bytes (noise before ``STX`` is skipped, a frame longer than
:data:`MAX_DATA` is dropped, a stray ``STX`` starts over), so arbitrary input never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

STX, ETX, ACK, NAK = 0x02, 0x03, 0x06, 0x15
MAX_DATA = 1024


def lrc(data: bytes) -> int:
    """XOR of ``data`` (pass the bytes after STX, ETX included)."""
    return reduce(lambda a, b: a ^ b, data, 0)


def encode(text: str) -> bytes:
    """One frame carrying ``text`` (control bytes STX / ETX in it are refused)."""
    data = text.encode("utf-8")
    if STX in data or ETX in data:
        raise ValueError("frame data must not contain STX or ETX")
    if len(data) > MAX_DATA:
        raise ValueError(f"frame data over {MAX_DATA} bytes")
    body = data + bytes([ETX])
    return bytes([STX]) + body + bytes([lrc(body)])


@dataclass(frozen=True, slots=True)
class Frame:
    """A received frame: its text (undecodable bytes replaced) and whether its LRC was right."""

    text: str
    ok: bool


Item = Frame | int  # a frame, or ACK / NAK


class Decoder:
    """Incremental decoder: :meth:`feed` bytes, get frames and ACK / NAK bytes in order."""

    def __init__(self) -> None:
        self._buf: bytearray | None = None  # inside a frame: data so far
        self._want_lrc = False

    def feed(self, data: bytes) -> list[Item]:
        out: list[Item] = []
        for b in data:
            if self._want_lrc:
                body = bytes(self._buf or b"") + bytes([ETX])
                out.append(Frame(body[:-1].decode("utf-8", "replace"), lrc(body) == b))
                self._buf, self._want_lrc = None, False
            elif b == STX:
                self._buf = bytearray()  # a stray STX starts a new frame
            elif self._buf is None:
                if b in (ACK, NAK):
                    out.append(b)
                # anything else between frames is line noise
            elif b == ETX:
                self._want_lrc = True
            elif len(self._buf) >= MAX_DATA:
                self._buf = None  # too long: drop it (the sender gets no ACK and resends)
            else:
                self._buf.append(b)
        return out
