"""China UnionPay (CUP) POS dialect: network-management (08xx) message builders.

Used by both the acquirer host and the virtual terminal. The codec (packing rules,
pyiso8583 spec) lives in `cup_codec`; its names are re-exported here.
"""

from __future__ import annotations

from datetime import datetime

from rig.core.errors import ProtocolError

from .cup_codec import (
    ALLOWED_FIELDS,
    CUP,
    CUP_SPEC,
    DEFAULT_HEADER,
    DEFAULT_TPDU,
    CupDialect,
    is_digits,
)
from .dialects import Message, response_mti
from .keys import KEY_MODES

__all__ = [
    "ALLOWED_FIELDS",
    "CUP",
    "CUP_SPEC",
    "CupDialect",
    "DEFAULT_HEADER",
    "DEFAULT_TPDU",
    "ECHO_CODE",
    "NETWORK_MTI",
    "SIGNOFF_CODE",
    "SIGNON_MTI",
    "echo_request",
    "key_mode_of",
    "network_code",
    "network_response",
    "reply_tpdu",
    "signoff_request",
    "signon_request",
    "signon_response",
]

SIGNON_MTI = "0800"
NETWORK_MTI = "0820"  # sign-off (60.3 = 002) and echo test (60.3 = 301)
SIGNOFF_CODE = "002"
ECHO_CODE = "301"


def _num(value: int | str, width: int, what: str) -> str:
    text = str(value).zfill(width)
    if len(text) != width or not is_digits(text):
        raise ProtocolError(f"{what} must be at most {width} digits")
    return text


def reply_tpdu(tpdu: bytes) -> bytes:
    """The TPDU of a reply: same ID, destination and source addresses swapped."""
    return tpdu[:1] + tpdu[3:5] + tpdu[1:3]


def network_code(msg: Message) -> str:
    """60.3 of a message: 001/003/004 sign-on key mode, 002 sign-off, 301 echo..."""
    return CUP.network_code(msg)


def key_mode_of(msg: Message) -> str:
    """The key mode a sign-on asks for (60.3): "001", "003" or "004"."""
    code = network_code(msg)
    if code not in KEY_MODES:
        raise ProtocolError(f"CUP {msg.get('t')}: 60.3 {code!r} is not a sign-on key mode")
    return code


def _network_request(
    mti: str,
    code: str,
    *,
    stan: int | str,
    terminal_id: str,
    merchant_id: str,
    batch: int | str,
    tpdu: bytes,
    header: bytes,
) -> Message:
    return {
        "tpdu": bytes(tpdu),
        "header": bytes(header),
        "t": mti,
        "11": _num(stan, 6, "stan"),
        "41": terminal_id,
        "42": merchant_id,
        "60": "00" + _num(batch, 6, "batch") + code,
    }


def signon_request(
    *,
    stan: int | str,
    terminal_id: str,
    merchant_id: str,
    batch: int | str,
    key_mode: str,
    operator: str,
    tpdu: bytes = DEFAULT_TPDU,
    header: bytes = DEFAULT_HEADER,
    serial: bytes | str | None = None,
) -> Message:
    """`0800` sign-on: 11, 41, 42, 60 = 00 + batch + key mode, 63 = operator (padded to 3).

    `serial` is sent verbatim as field 62 (terminals put their serial number there).
    """
    if key_mode not in KEY_MODES:
        raise ProtocolError(f"unknown key mode {key_mode!r}: expected one of {KEY_MODES}")
    msg = _network_request(
        SIGNON_MTI,
        key_mode,
        stan=stan,
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        batch=batch,
        tpdu=tpdu,
        header=header,
    )
    if serial is not None:
        msg["62"] = serial.encode("ascii") if isinstance(serial, str) else bytes(serial)
    msg["63"] = operator.ljust(3)
    return msg


def signoff_request(
    *,
    stan: int | str,
    terminal_id: str,
    merchant_id: str,
    batch: int | str,
    tpdu: bytes = DEFAULT_TPDU,
    header: bytes = DEFAULT_HEADER,
) -> Message:
    """`0820` sign-off (60.3 = 002)."""
    return _network_request(
        NETWORK_MTI,
        SIGNOFF_CODE,
        stan=stan,
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        batch=batch,
        tpdu=tpdu,
        header=header,
    )


def echo_request(
    *,
    stan: int | str,
    terminal_id: str,
    merchant_id: str,
    batch: int | str,
    tpdu: bytes = DEFAULT_TPDU,
    header: bytes = DEFAULT_HEADER,
) -> Message:
    """`0820` echo test (60.3 = 301)."""
    return _network_request(
        NETWORK_MTI,
        ECHO_CODE,
        stan=stan,
        terminal_id=terminal_id,
        merchant_id=merchant_id,
        batch=batch,
        tpdu=tpdu,
        header=header,
    )


def response_envelope(request: Message, follow_up: int = 0) -> Message:
    """TPDU (destination and source swapped), header with the follow-up nibble, MTI + 10."""
    if not 0 <= follow_up <= 15:
        raise ProtocolError(f"follow-up code {follow_up} does not fit a nibble")
    header = bytearray(request.get("header", DEFAULT_HEADER))
    if len(header) == 6:
        header[2] = header[2] & 0xF0 | follow_up
    return {
        "tpdu": reply_tpdu(bytes(request.get("tpdu", DEFAULT_TPDU))),
        "header": bytes(header),
        "t": response_mti(str(request.get("t"))),
    }


def network_response(
    request: Message,
    *,
    rc: str,
    when: datetime,
    rrn: str | None = None,
    acquirer: str = "00000000",
    follow_up: int = 0,
) -> Message:
    """Reply to a 08xx request: MTI + 10, TPDU swapped, header follow-up nibble set.

    Echoes 11, 41, 42 and 60; adds 12 / 13 (from `when`), 32, 37 (if `rrn`), 39.
    `follow_up` is the header's request for more work (0 nothing, 1 parameters,
    3 sign on again, 4 CA keys...).
    """
    rsp = response_envelope(request, follow_up)
    if "11" in request:
        rsp["11"] = request["11"]
    rsp["12"] = when.strftime("%H%M%S")
    rsp["13"] = when.strftime("%m%d")
    rsp["32"] = acquirer
    if rrn is not None:
        rsp["37"] = rrn
    rsp["39"] = rc
    for f in ("41", "42", "60"):
        if f in request:
            rsp[f] = request[f]
    return rsp


def signon_response(
    request: Message,
    *,
    rc: str,
    field62: bytes | None,
    rrn: str,
    when: datetime,
    acquirer: str = "00000000",
    follow_up: int = 0,
) -> Message:
    """`0810` for a sign-on: 11, 12, 13, 32, 37, 39, 41, 42, 60, and 62 (keys) when rc = 00."""
    rsp = network_response(
        request, rc=rc, when=when, rrn=rrn, acquirer=acquirer, follow_up=follow_up
    )
    if rc == "00" and field62 is not None:
        rsp["62"] = bytes(field62)
    return rsp
