"""Generic ISO 8583:1987 dialect: ASCII MTI, binary bitmaps, DE70 network management."""

from __future__ import annotations

from datetime import datetime

import pytest

from rig.core.errors import ProtocolError
from rig.iso8583 import frame, get_dialect, iso87, x919_mac

ISO87 = get_dialect("iso87")
WHEN = datetime(2024, 3, 9, 14, 5, 7)
MAK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def test_signon_request_exact_bytes() -> None:
    msg = iso87.signon_request(stan=1, when=WHEN)
    assert msg == {"t": "0800", "7": "0309140507", "11": "000001", "70": "001"}
    body = ISO87.encode(msg)
    assert body == (
        b"0800"
        + bytes.fromhex("8220000000000000")  # bits 1 (secondary), 7, 11
        + bytes.fromhex("0400000000000000")  # bit 70
        + b"0309140507000001001"
    )
    assert ISO87.decode(body) == msg
    assert len(frame(body)) == len(body) + 2


@pytest.mark.parametrize(
    ("build", "code"),
    [(iso87.signon_request, "001"), (iso87.signoff_request, "002"), (iso87.echo_request, "301")],
)
def test_network_round_trip(build, code: str) -> None:  # type: ignore[no-untyped-def]
    req = ISO87.decode(ISO87.encode(build(stan="42", when=WHEN)))
    assert ISO87.network_code(req) == iso87.network_code(req) == code
    rsp = iso87.network_response(req, rc="00")
    assert rsp == {"t": "0810", "7": "0309140507", "11": "000042", "39": "00", "70": code}
    assert ISO87.decode(ISO87.encode(rsp)) == rsp


def test_primary_only_message_and_binary_fields() -> None:
    msg = {"t": "0200", "2": "4761739001010010", "4": "000000000100", "52": bytes(8)}
    body = ISO87.encode(msg)
    assert body[:4] == b"0200" and not body[4] & 0x80  # no secondary bitmap needed
    assert b"164761739001010010" in body  # ASCII LLVAR
    assert ISO87.decode(body) == msg


def test_mac_in_64_or_128() -> None:
    short = {"t": "0200", "3": "000000", "11": "000001"}
    body = ISO87.encode(short, mak=MAK)
    assert body[11] & 0x01  # bit 64 set in the primary bitmap
    assert body[-8:] == x919_mac(MAK, body[:-8])
    assert ISO87.verify_mac(body, MAK) and ISO87.decode(body)["64"] == body[-8:]
    long = ISO87.encode(iso87.signon_request(stan=1, when=WHEN), mak=MAK)
    assert "128" in ISO87.decode(long) and "64" not in ISO87.decode(long)
    assert ISO87.verify_mac(long, MAK)
    assert ISO87.mac_input(long) == long[:-8]
    tampered = bytearray(long)
    tampered[-12] ^= 1
    assert not ISO87.verify_mac(bytes(tampered), MAK)
    assert not ISO87.verify_mac(ISO87.encode(short), MAK)


def _good() -> bytes:
    return ISO87.encode(iso87.echo_request(stan=1, when=WHEN))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (_good() + b"0", "Extra data"),
        (_good()[:-1], "field 70"),
        (b"08", "shorter than"),
        (b"08X0" + _good()[4:], "not 4 ASCII digits"),
        (_good()[:12] + b"\x80" + _good()[13:], "tertiary"),
        (_good()[:-3] + b"\xff01", "field 70"),
    ],
)
def test_decode_rejections(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ISO87.decode(body)


def test_encode_rejections() -> None:
    for msg in (
        {"t": "800"},
        {"t": "0800", "52": "00" * 8},  # binary fields are bytes
        {"t": "0800", "11": 1},
        {"t": "0800", "65": b"x"},
        {"t": "0800", "tpdu": b"\x60\x00\x03\x00\x00"},
        {"t": "0800", "11": "1234567"},
    ):
        with pytest.raises(ProtocolError):
            ISO87.encode(msg)
    with pytest.raises(ProtocolError):
        iso87.network_code({"t": "0800"})
