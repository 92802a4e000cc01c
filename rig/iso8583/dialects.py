"""What every ISO 8583 dialect provides, and the registry of dialects.

A dialect = a pyiso8583 spec + framing + field rules + a MAC. Messages are plain dicts in
pyiso8583 style: ``"t"`` the MTI, field numbers as string keys, binary fields as bytes.
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from typing import Any

from rig.core.errors import ProtocolError

__all__ = ["Dialect", "Message", "response_mti"]

Message = dict[str, Any]
"""An ISO 8583 message: {"t": "0800", "11": "000001", "62": b"...", ...}."""


def response_mti(mti: str) -> str:
    """The response MTI for a request MTI: 0800 -> 0810, 0820 -> 0830, 0200 -> 0210."""
    if len(mti) != 4 or not mti.isascii() or not mti.isdigit() or int(mti[2]) % 2:
        raise ProtocolError(f"MTI {mti!r} is not a request MTI")
    return mti[:2] + str(int(mti[2]) + 1) + mti[3]


def bits_set(bitmap: bytes, offset: int = 0) -> list[int]:
    """Field numbers whose bits are set in `bitmap` (bit 1 = MSB of the first byte)."""
    return [
        offset + i * 8 + b + 1
        for i, byte in enumerate(bitmap)
        for b in range(8)
        if byte & (0x80 >> b)
    ]


class Dialect(ABC):
    """One ISO 8583 dialect. Subclasses give the codec and where the MAC lives."""

    name: str = ""
    mac_prefix: int = 0
    """Bytes at the start of a body that the MAC does not cover (CUP: TPDU + header)."""

    @abstractmethod
    def decode(self, body: bytes) -> Message:
        """Parse a frame body; raise ProtocolError (clear text) for anything malformed."""

    @abstractmethod
    def encode_plain(self, msg: Message) -> bytes:
        """Encode `msg` as it is (no MAC computed); raise ProtocolError if it cannot be."""

    @abstractmethod
    def network_code(self, msg: Message) -> str:
        """The network management code of a 08xx message (CUP 60.3, ISO 87 DE70)."""

    @abstractmethod
    def compute_mac(self, mak: bytes, data: bytes) -> bytes:
        """The 8-byte MAC field value for the MAC input `data`."""

    @abstractmethod
    def mac_field(self, fields: list[int]) -> int:
        """The field that carries the MAC for a message with `fields` (64 or 128)."""

    # -- shared MAC handling -------------------------------------------------------

    def encode(self, msg: Message, mak: bytes | None = None) -> bytes:
        """Encode `msg` to a body (no length prefix); with `mak`, set and fill the MAC field."""
        if mak is None:
            return self.encode_plain(msg)
        fields = [int(k) for k in msg if isinstance(k, str) and k.isascii() and k.isdigit()]
        field = self.mac_field(fields)
        body = self.encode_plain({**msg, str(field): bytes(8)})
        return body[:-8] + self.compute_mac(mak, self.mac_input(body))

    def mac_input(self, body: bytes) -> bytes:
        """The bytes the MAC covers: MTI ... last field before the MAC field, as sent.

        A body that carries the MAC field has its bit set in the bitmap (``encode`` sets
        it before computing the MAC), so the MAC covers that bit; a body without it (the
        DESIGN reference `0800`) is taken as it is.
        """
        msg = self.decode(body)
        fields = [int(k) for k in msg if k.isdigit()]
        end = len(body) - 8 if self.mac_field(fields) in fields else len(body)
        return bytes(body[self.mac_prefix : end])

    def verify_mac(self, body: bytes, mak: bytes) -> bool:
        """True when `body` carries a MAC field and it matches the MAC under `mak`."""
        msg = self.decode(body)
        fields = [int(k) for k in msg if k.isdigit()]
        field = self.mac_field(fields)
        got = msg.get(str(field))
        if not isinstance(got, bytes):
            return False
        return hmac.compare_digest(got, self.compute_mac(mak, self.mac_input(body)))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
