"""China UnionPay (CUP) POS dialect: packing rules, pyiso8583 spec and codec.

Frame body: ``TPDU(5) | header(6) | MTI(2, BCD) | primary bitmap(8) | fields``. Packing
follows what real CUP terminals send (DESIGN §1): fixed numerics right-aligned with a
0 pad nibble, variable numerics (2, 32, 35, 48, 60, 61) left-aligned with a trailing 0
nibble, BCD LLVAR / LLLVAR lengths counting digits for n/z and bytes for a/b, field 22
left-aligned as n4, fixed ASCII right-padded with spaces, primary bitmap only.
"""

from __future__ import annotations

from typing import Any

import iso8583

from rig.core.errors import ProtocolError

from .dialects import Dialect, Message, bits_set
from .mac import cup_mac

__all__ = [
    "ALLOWED_FIELDS",
    "CUP",
    "CUP_SPEC",
    "CupDialect",
    "DEFAULT_HEADER",
    "DEFAULT_TPDU",
    "LEFT_ALIGNED",
    "is_digits",
]

DEFAULT_TPDU = bytes.fromhex("6000030000")
DEFAULT_HEADER = bytes.fromhex("603100310000")
_PREFIX = 11  # TPDU + header: not covered by pyiso8583 nor by the MAC
_MIN_BODY = _PREFIX + 2 + 8  # ... + MTI + primary bitmap

# field: (kind, length-prefix bytes, max length, description). Kinds: n = BCD numeric,
# z = BCD track data ("=" sent as nibble D), a = ASCII, b = binary. Max lengths count
# digits for n/z and bytes for a/b, as the BCD length prefix does.
_FIELDS: dict[int, tuple[str, int, int, str]] = {
    2: ("n", 1, 19, "Primary Account Number"),
    3: ("n", 0, 6, "Processing Code"),
    4: ("n", 0, 12, "Amount, Transaction"),
    11: ("n", 0, 6, "System Trace Audit Number"),
    12: ("n", 0, 6, "Time, Local Transaction"),
    13: ("n", 0, 4, "Date, Local Transaction"),
    14: ("n", 0, 4, "Date, Expiration"),
    22: ("n", 0, 3, "POS Entry Mode (sent left-aligned as n4)"),
    23: ("n", 0, 3, "Card Sequence Number"),
    25: ("n", 0, 2, "POS Condition Code"),
    26: ("n", 0, 2, "POS PIN Capture Code"),
    32: ("n", 1, 11, "Acquiring Institution ID"),
    35: ("z", 1, 37, "Track 2 Data"),
    36: ("z", 2, 104, "Track 3 Data"),
    37: ("a", 0, 12, "Retrieval Reference Number"),
    38: ("a", 0, 6, "Authorization ID Response"),
    39: ("a", 0, 2, "Response Code"),
    41: ("a", 0, 8, "Card Acceptor Terminal ID"),
    42: ("a", 0, 15, "Card Acceptor ID"),
    44: ("a", 1, 25, "Additional Response Data"),
    48: ("n", 2, 322, "Additional Data, Private"),
    49: ("a", 0, 3, "Currency Code"),
    52: ("b", 0, 8, "PIN Data"),
    53: ("n", 0, 16, "Security Related Control Information"),
    54: ("a", 2, 20, "Balance Amount"),
    55: ("b", 2, 255, "ICC Data"),
    58: ("a", 2, 100, "PBOC Electronic Data"),
    60: ("n", 2, 17, "Reserved Private (60.1 type, 60.2 batch, 60.3 network code)"),
    61: ("n", 2, 29, "Original Message"),
    62: ("b", 2, 512, "Reserved Private (working keys, serial number)"),
    63: ("a", 2, 63, "Reserved Private (operator)"),
    64: ("b", 0, 8, "MAC"),
}
ALLOWED_FIELDS: frozenset[int] = frozenset(_FIELDS)
"""The only fields a CUP terminal accepts; anything else is rejected."""

# BCD fields sent left-aligned (0 pad nibble last): the variable numerics DESIGN §1 names,
# and field 22 (n3 sent as n4). Every other BCD field, 36 included, is right-aligned.
LEFT_ALIGNED: frozenset[int] = frozenset({2, 22, 32, 35, 48, 60, 61})
_DIGITS = frozenset("0123456789")
_TRACK = _DIGITS | {"D"}


def _spec_entry(field: int) -> dict[str, Any]:
    kind, len_type, max_len, desc = _FIELDS[field]
    entry: dict[str, Any] = {
        "data_enc": "ascii" if kind == "a" else "b",
        "len_enc": "bcd",
        "len_type": len_type,
        "max_len": max_len,
        "desc": desc,
    }
    if kind in "nz":
        # pyiso8583 4.x packs odd digit counts itself: "left_pad" gives a right-aligned
        # value (0 nibble first), "right_pad" a left-aligned one (0 nibble last); it also
        # checks the pad nibble on decode. It does not check the digits are decimal.
        entry["len_count"] = "nibbles"
        entry["right_pad" if field in LEFT_ALIGNED else "left_pad"] = "0"
    return entry


CUP_SPEC: dict[str, dict[str, Any]] = {
    # TPDU and header are sliced off before pyiso8583 sees the body.
    "h": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 0, "desc": "Header"},
    "t": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2, "desc": "Message Type"},
    "p": {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    **{str(f): _spec_entry(f) for f in _FIELDS},
}
"""pyiso8583 spec of the CUP dialect from the MTI on (TPDU and header excluded)."""


def is_digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _to_wire(mti: str, field: int, value: object) -> str:
    """A message value as pyiso8583 wants it (hex for BCD/binary, padded ASCII)."""
    kind, len_type, max_len, _ = _FIELDS[field]
    where = f"cannot encode CUP {mti}: field {field}"
    if kind == "b":
        if not isinstance(value, bytes | bytearray):
            raise ProtocolError(f"{where} must be bytes, not {type(value).__name__}")
        return bytes(value).hex().upper()
    if not isinstance(value, str):
        raise ProtocolError(f"{where} must be str, not {type(value).__name__}")
    if kind == "a":
        if not value.isascii():
            raise ProtocolError(f"{where} must be ASCII")
        # Fixed ASCII is right-padded with spaces (pyiso8583 has no text pad option).
        return value.ljust(max_len) if len_type == 0 else value
    if kind == "z":
        wire = value.upper().replace("=", "D")
        if not set(wire) <= _TRACK:
            raise ProtocolError(f"{where} must hold digits and '=' only")
        return wire
    if not (is_digits(value) or (len_type and not value)):  # pyiso8583 packs A-F nibbles too
        raise ProtocolError(f"{where} must be decimal digits")
    if len_type == 0 and len(value) < max_len:
        return value.zfill(max_len)  # fixed numerics are right-aligned
    return value


def _from_wire(mti: str, field: int, value: str) -> object:
    """A pyiso8583 value as a message value; BCD must hold decimal nibbles only."""
    kind = _FIELDS[field][0]
    if kind == "b":
        return bytes.fromhex(value)
    if kind == "n" and not set(value) <= _DIGITS:
        raise ProtocolError(f"CUP {mti}: field {field} is not valid BCD")
    if kind == "z":
        if not set(value) <= _TRACK:
            raise ProtocolError(f"CUP {mti}: field {field} is not valid track data")
        return value.replace("D", "=")
    return value


class CupDialect(Dialect):
    """The China UnionPay POS dialect (MAC: CUP "ECB" MAC in field 64)."""

    name = "cup"
    mac_prefix = _PREFIX

    def encode_plain(self, msg: Message) -> bytes:
        mti = msg.get("t")
        if not isinstance(mti, str) or len(mti) != 4 or not is_digits(mti):
            raise ProtocolError(f"cannot encode CUP message: MTI {mti!r} is not 4 digits")
        tpdu = msg.get("tpdu", DEFAULT_TPDU)
        header = msg.get("header", DEFAULT_HEADER)
        if not isinstance(tpdu, bytes | bytearray) or len(tpdu) != 5:
            raise ProtocolError(f"cannot encode CUP {mti}: tpdu must be 5 bytes")
        if not isinstance(header, bytes | bytearray) or len(header) != 6:
            raise ProtocolError(f"cannot encode CUP {mti}: header must be 6 bytes")
        doc: dict[str, str] = {"t": mti}
        for key, value in msg.items():
            if key in ("t", "tpdu", "header", "p"):
                continue
            if (
                not isinstance(key, str)
                or not (key.isascii() and key.isdigit())
                or int(key) not in ALLOWED_FIELDS
            ):
                raise ProtocolError(f"cannot encode CUP {mti}: field {key!r} is not allowed")
            doc[str(int(key))] = _to_wire(mti, int(key), value)
        try:
            raw, _ = iso8583.encode(doc, CUP_SPEC)
        except ValueError as exc:  # iso8583.EncodeError
            raise ProtocolError(f"cannot encode CUP {mti}: {exc}") from None
        return bytes(tpdu) + bytes(header) + bytes(raw)

    def decode(self, body: bytes) -> Message:
        if not isinstance(body, bytes | bytearray):
            raise ProtocolError(f"CUP body must be bytes, not {type(body).__name__}")
        body = bytes(body)
        if len(body) < _MIN_BODY:
            raise ProtocolError(
                f"CUP message of {len(body)} bytes is shorter than "
                f"TPDU + header + MTI + bitmap ({_MIN_BODY} bytes)"
            )
        mti = body[_PREFIX : _PREFIX + 2].hex()
        if not mti.isdigit():
            raise ProtocolError(f"CUP MTI {mti.upper()} is not valid BCD")
        # Bitmap rules are checked before pyiso8583 runs: it would accept a secondary
        # bitmap, and fail with KeyError on a field missing from CUP_SPEC.
        fields = bits_set(body[_PREFIX + 2 : _MIN_BODY])
        if 1 in fields:
            raise ProtocolError(f"CUP {mti}: secondary bitmap is not allowed")
        bad = [f for f in fields if f not in ALLOWED_FIELDS]
        if bad:
            raise ProtocolError(f"CUP {mti}: field(s) {bad} not allowed")
        try:
            doc, _ = iso8583.decode(body[_PREFIX:], CUP_SPEC)
        except (ValueError, KeyError, IndexError) as exc:  # iso8583.DecodeError is a ValueError
            raise ProtocolError(f"CUP {mti}: {exc}") from None
        msg: Message = {"tpdu": body[:5], "header": body[5:_PREFIX], "t": mti}
        for f in fields:
            msg[str(f)] = _from_wire(mti, f, doc[str(f)])
        return msg

    def compute_mac(self, mak: bytes, data: bytes) -> bytes:
        """CUP MAC under the first 8 bytes of the MAK (8 or 16 bytes given)."""
        if len(mak) not in (8, 16):
            raise ProtocolError(f"MAK must be 8 or 16 bytes, got {len(mak)}")
        return cup_mac(mak[:8], data)

    def mac_field(self, fields: list[int]) -> int:
        return 64

    def network_code(self, msg: Message) -> str:
        """60.3 of a message: 001/003/004 sign-on key mode, 002 sign-off, 301 echo..."""
        f60 = msg.get("60")
        if not isinstance(f60, str) or len(f60) < 11:
            raise ProtocolError(f"CUP {msg.get('t')}: field 60 missing or without 60.3")
        return f60[8:11]


CUP = CupDialect()
