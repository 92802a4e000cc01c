"""Generic ISO 8583:1987 dialect: ASCII MTI, binary bitmaps (secondary allowed), no TPDU.

Fields follow pyiso8583's ``specs.default`` (ASCII data, ASCII length prefixes). Network
management uses DE70: 001 sign-on, 002 sign-off, 301 echo. The MAC is the ANSI X9.19
retail MAC (X9.9 single DES for an 8-byte key) over MTI ... last field before the MAC, in
field 64, or in field 128 when the message has a secondary bitmap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import iso8583
from iso8583.specs import default as _DEFAULT_SPEC

from rig.core.errors import ProtocolError

from .dialects import Dialect, Message, bits_set, response_mti
from .mac import x919_mac

__all__ = [
    "ECHO",
    "ISO87",
    "ISO87_SPEC",
    "Iso87Dialect",
    "SIGNOFF",
    "SIGNON",
    "echo_request",
    "network_code",
    "network_request",
    "network_response",
    "signoff_request",
    "signon_request",
]

ISO87_SPEC: dict[str, dict[str, Any]] = {k: dict(v) for k, v in _DEFAULT_SPEC.items()}
"""pyiso8583's default spec: ASCII MTI, binary primary and secondary bitmaps."""

SIGNON, SIGNOFF, ECHO = "001", "002", "301"
_BITMAPS = {"p", "1", "65"}
_BINARY = frozenset(
    int(k)
    for k, v in ISO87_SPEC.items()
    if k.isdigit() and v["data_enc"] == "b" and k not in _BITMAPS
)
_FIELDS = frozenset(range(2, 129)) - {65}  # 1 and 65 are bitmaps, not data fields


class Iso87Dialect(Dialect):
    """ISO 8583:1987 with 2-byte length framing and binary bitmaps."""

    name = "iso87"
    mac_prefix = 0

    def encode_plain(self, msg: Message) -> bytes:
        mti = msg.get("t")
        if not isinstance(mti, str) or len(mti) != 4 or not (mti.isascii() and mti.isdigit()):
            raise ProtocolError(f"cannot encode ISO 8583 message: MTI {mti!r} is not 4 digits")
        doc: dict[str, str] = {"t": mti}
        for key, value in msg.items():
            if key in ("t", "p", "1"):
                continue
            if (
                not isinstance(key, str)
                or not (key.isascii() and key.isdigit())
                or int(key) not in _FIELDS
            ):
                raise ProtocolError(f"cannot encode ISO 8583 {mti}: unknown field {key!r}")
            field = int(key)
            if field in _BINARY:
                if not isinstance(value, bytes | bytearray):
                    raise ProtocolError(
                        f"cannot encode ISO 8583 {mti}: field {field} must be bytes"
                    )
                doc[str(field)] = bytes(value).hex().upper()
            elif isinstance(value, str):
                doc[str(field)] = value
            else:
                raise ProtocolError(f"cannot encode ISO 8583 {mti}: field {field} must be str")
        try:
            raw, _ = iso8583.encode(doc, ISO87_SPEC)
        except ValueError as exc:  # iso8583.EncodeError
            raise ProtocolError(f"cannot encode ISO 8583 {mti}: {exc}") from None
        return bytes(raw)

    def decode(self, body: bytes) -> Message:
        if not isinstance(body, bytes | bytearray):
            raise ProtocolError(f"ISO 8583 body must be bytes, not {type(body).__name__}")
        body = bytes(body)
        if len(body) < 12:
            raise ProtocolError(
                f"ISO 8583 message of {len(body)} bytes is shorter than MTI + bitmap"
            )
        mti_raw = body[:4]
        if not (mti_raw.isascii() and mti_raw.isdigit()):
            raise ProtocolError(f"ISO 8583 MTI {mti_raw!r} is not 4 ASCII digits")
        mti = mti_raw.decode("ascii")
        fields = bits_set(body[4:12])
        if 1 in fields:
            # pyiso8583 would read bit 65 as a tertiary bitmap, which ISO 87 does not have.
            if len(body) >= 20 and body[12] & 0x80:
                raise ProtocolError(f"ISO 8583 {mti}: bit 65 (tertiary bitmap) is not supported")
        try:
            doc, _ = iso8583.decode(body, ISO87_SPEC)
        except (ValueError, KeyError, IndexError) as exc:  # iso8583.DecodeError is a ValueError
            raise ProtocolError(f"ISO 8583 {mti}: {exc}") from None
        msg: Message = {"t": mti}
        for key in sorted((k for k in doc if k.isdigit() and k != "1"), key=int):
            value = doc[key]
            msg[key] = bytes.fromhex(value) if int(key) in _BINARY else value
        return msg

    def compute_mac(self, mak: bytes, data: bytes) -> bytes:
        """ANSI X9.19 retail MAC (16-byte MAK) or X9.9 (8-byte MAK)."""
        if len(mak) not in (8, 16):
            raise ProtocolError(f"MAK must be 8 or 16 bytes, got {len(mak)}")
        return x919_mac(mak, data)

    def mac_field(self, fields: list[int]) -> int:
        return 128 if any(f > 64 for f in fields) else 64

    def network_code(self, msg: Message) -> str:
        return network_code(msg)


ISO87 = Iso87Dialect()


def network_code(msg: Message) -> str:
    """DE70 of a network management message: 001 sign-on, 002 sign-off, 301 echo."""
    code = msg.get("70")
    if not isinstance(code, str) or len(code) != 3:
        raise ProtocolError(f"ISO 8583 {msg.get('t')}: DE70 missing or not 3 characters")
    return code


def network_request(code: str, *, stan: int | str, when: datetime) -> Message:
    """`0800` with 7 (MMDDhhmmss), 11 and DE70 = `code`."""
    text = str(stan).zfill(6)
    if len(text) != 6 or not text.isdigit():
        raise ProtocolError("stan must be at most 6 digits")
    return {"t": "0800", "7": when.strftime("%m%d%H%M%S"), "11": text, "70": code}


def signon_request(*, stan: int | str, when: datetime) -> Message:
    """`0800` sign-on (DE70 = 001)."""
    return network_request(SIGNON, stan=stan, when=when)


def signoff_request(*, stan: int | str, when: datetime) -> Message:
    """`0800` sign-off (DE70 = 002)."""
    return network_request(SIGNOFF, stan=stan, when=when)


def echo_request(*, stan: int | str, when: datetime) -> Message:
    """`0800` echo test (DE70 = 301)."""
    return network_request(ECHO, stan=stan, when=when)


def network_response(request: Message, *, rc: str) -> Message:
    """`0810` echoing 7, 11 and 70 of `request`, with 39 = `rc`."""
    rsp: Message = {"t": response_mti(str(request.get("t")))}
    for f in ("7", "11"):
        if f in request:
            rsp[f] = request[f]
    rsp["39"] = rc
    if "70" in request:
        rsp["70"] = request["70"]
    return rsp
