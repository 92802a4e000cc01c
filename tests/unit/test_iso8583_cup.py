"""CUP POS dialect: DESIGN §1 vectors, packing rules, builders, rejections, MAC."""

from __future__ import annotations

from datetime import datetime

import pytest

from rig.core.errors import ProtocolError, TestError
from rig.iso8583 import (
    cup,
    decode_field62,
    encode_field62,
    frame,
    generate_working_keys,
    get_dialect,
    read_frame,
)
from rig.iso8583.mac import cup_mac
from tests import cup_reference as ref

CUP = get_dialect("cup")
TPDU = bytes.fromhex("6000320000")
HEADER = bytes.fromhex("603100C15082")
MAK8 = bytes.fromhex("1122334455667788")
TMK = bytes.fromhex("11111111111111112222222222222222")
WHEN = datetime(2024, 3, 9, 14, 5, 7)


def vector_0800() -> dict[str, object]:
    return cup.signon_request(
        stan=1,
        terminal_id="12345678",
        merchant_id="123456789012345",
        batch=1,
        key_mode="004",
        operator="01",
        tpdu=TPDU,
        header=HEADER,
        serial="Sequence No123136ABCD1234",
    )


def body_of(fields: dict[str, object], mti: str = "0200") -> bytes:
    return CUP.encode({"tpdu": TPDU, "header": HEADER, "t": mti, **fields})


# ---- DESIGN §1 reference vectors ---------------------------------------------------------


def test_0800_reference_vector_bytes() -> None:
    msg = vector_0800()
    assert {k: msg[k] for k in ("11", "60", "62", "63")} == {
        "11": "000001",
        "60": "00000001004",
        "62": b"Sequence No123136ABCD1234",
        "63": "01 ",
    }
    body = CUP.encode(msg)
    framed = frame(body)
    assert framed[:2] == bytes.fromhex("0057") and len(body) == 87
    assert body[:11] == TPDU + HEADER
    assert body[11:13] == bytes.fromhex("0800")
    assert body[13:21] == bytes.fromhex("0020000000C00016")  # 11, 41, 42, 60, 62, 63
    # 60 is LLLVAR n: 2 BCD length bytes (11 digits), left-aligned, 0 nibble pad
    assert bytes.fromhex("0011000000010040") in body
    # the reference codec agrees byte for byte
    assert framed == ref.encode_frame(
        TPDU,
        HEADER,
        "0800",
        {
            11: "000001",
            41: "12345678",
            42: "123456789012345",
            60: "00000001004",
            62: b"Sequence No123136ABCD1234",
            63: "01 ",
        },
    )


def test_0800_reference_vector_mac() -> None:
    body = CUP.encode(vector_0800())
    # the vector covers MTI ... field 63 of this message as it stands (no bit 64)
    assert CUP.mac_input(body) == body[11:]
    assert cup_mac(MAK8, CUP.mac_input(body)) == b"1C400289"


def test_mac_sets_bit_64_first() -> None:
    body = CUP.encode(vector_0800(), mak=MAK8 + bytes(8))
    assert len(body) == 87 + 8
    assert body[13 + 7] & 0x01  # bit 64 in the bitmap
    assert body[-8:] == cup_mac(MAK8, body[11:-8])
    assert body[-8:] != b"1C400289"  # the bitmap now differs from the vector's
    assert CUP.verify_mac(body, MAK8)
    assert CUP.decode(body)["64"] == body[-8:]
    parsed = ref.parse_frame(frame(body), reply=False)
    assert parsed.fields[64] == ref.cup_mac(MAK8, body[11:-8])


def test_verify_mac_detects_tampering_and_missing_mac() -> None:
    body = bytearray(CUP.encode(vector_0800(), mak=MAK8))
    assert not CUP.verify_mac(bytes(body), bytes.fromhex("8877665544332211"))
    body[30] ^= 0x01  # inside field 41
    assert not CUP.verify_mac(bytes(body), MAK8)
    assert not CUP.verify_mac(CUP.encode(vector_0800()), MAK8)


# ---- packing rules -----------------------------------------------------------------------


def test_field_22_sent_left_aligned_as_n4() -> None:
    body = body_of({"22": "021"})
    assert body.endswith(bytes.fromhex("0210"))
    assert CUP.decode(body)["22"] == "021"
    assert ref.parse_frame(frame(body), reply=False).fields[22] == "0210"


def test_fixed_numerics_right_aligned() -> None:
    body = body_of({"23": "1", "4": "100"})
    # 4 (n12) = 000000000100, 23 (n3) = 0 pad nibble + 001
    assert body.endswith(bytes.fromhex("0000000001000001"))
    assert CUP.decode(body)["23"] == "001" and CUP.decode(body)["4"] == "000000000100"


@pytest.mark.parametrize(
    ("field", "value", "wire"),
    [
        ("2", "6212345678901234567", "1962123456789012345670"),
        ("32", "123", "031230"),
        ("48", "12345", "0005123450"),
        ("61", "1234", "00041234"),
        ("35", "6212345678901234=2512101", "246212345678901234D2512101"),
        ("35", "621234567890123=2512101", "23621234567890123D25121010"),
    ],
)
def test_variable_numerics_left_aligned(field: str, value: str, wire: str) -> None:
    body = body_of({field: value})
    assert body[21:] == bytes.fromhex(wire)
    assert CUP.decode(body)[field] == value
    parsed = ref.parse_frame(frame(body), reply=False).fields[int(field)]
    assert parsed == value.replace("=", "D")


def test_field_36_is_right_aligned_as_design_lists_only_2_32_35_48_60_61() -> None:
    body = body_of({"36": "123=4"})
    assert body[21:] == bytes.fromhex("00050123D4")
    assert CUP.decode(body)["36"] == "123=4"


def test_ascii_and_binary_lengths_count_bytes() -> None:
    body = body_of({"44": "ABC", "55": bytes(range(130)), "41": "T1", "63": "01 "})
    assert bytes.fromhex("03") + b"ABC" in body
    assert b"T1      " in body  # fixed ASCII right-padded with spaces
    assert bytes.fromhex("0130") + bytes(range(130)) in body
    assert bytes.fromhex("0003") + b"01 " in body
    msg = CUP.decode(body)
    assert msg["41"] == "T1      " and msg["55"] == bytes(range(130)) and msg["63"] == "01 "


def test_reference_encoded_frames_decode() -> None:
    raw = ref.signon_0800(
        stan="000042", terminal_id="87654321", merchant_id="M" * 15, key_mode="003"
    )
    msg = CUP.decode(read_frame(_reader(raw)))
    assert cup.key_mode_of(msg) == "003" and msg["11"] == "000042" and msg["63"] == "01 "


# ---- builders ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["001", "003", "004"])
def test_signon_round_trip_all_key_modes(mode: str) -> None:
    req = cup.signon_request(
        stan="000123",
        terminal_id="12345678",
        merchant_id="123456789012345",
        batch="000007",
        key_mode=mode,
        operator="01",
    )
    req_back = CUP.decode(CUP.encode(req))
    assert req_back == req
    assert cup.key_mode_of(req_back) == mode == cup.network_code(req_back)
    keys = generate_working_keys(mode)
    rsp = cup.signon_response(
        req_back, rc="00", field62=encode_field62(TMK, keys, mode), rrn="000000000001", when=WHEN
    )
    body = CUP.encode(rsp)
    back = CUP.decode(body)
    assert back == rsp
    assert set(back) - {"tpdu", "header", "t"} == {
        "11",
        "12",
        "13",
        "32",
        "37",
        "39",
        "41",
        "42",
        "60",
        "62",
    }
    assert back["t"] == "0810" and back["12"] == "140507" and back["13"] == "0309"
    assert back["60"] == "00000007" + mode
    assert decode_field62(TMK, back["62"], mode) == keys
    parsed = ref.parse_frame(frame(body))  # reply rules of the independent codec
    assert ref.decode_keys(TMK, parsed.fields[62], mode).pik == keys.pik


def test_signon_response_tpdu_header_and_failure() -> None:
    req = vector_0800()
    rsp = cup.signon_response(req, rc="96", field62=b"ignored", rrn="000000000002", when=WHEN)
    assert rsp["tpdu"] == bytes.fromhex("6000000032")
    # header byte 3: terminal status (high nibble) | follow-up request (low nibble)
    assert rsp["header"] == HEADER
    assert "62" not in rsp and rsp["39"] == "96"
    again = cup.signon_response(req, rc="00", field62=None, rrn="1", when=WHEN, follow_up=3)
    assert again["header"] == bytes.fromhex("603103C15082")
    busy = cup.signon_response(
        {**req, "header": bytes.fromhex("6031A4C15082")}, rc="00", field62=None, rrn="1", when=WHEN
    )
    assert busy["header"] == bytes.fromhex("6031A0C15082")
    assert cup.reply_tpdu(cup.DEFAULT_TPDU) == bytes.fromhex("6000000003")


@pytest.mark.parametrize(
    ("build", "code"), [(cup.echo_request, "301"), (cup.signoff_request, "002")]
)
def test_network_requests_and_response(build, code: str) -> None:  # type: ignore[no-untyped-def]
    req = build(stan=9, terminal_id="12345678", merchant_id="123456789012345", batch=2)
    back = CUP.decode(CUP.encode(req))
    assert back["t"] == "0820" and cup.network_code(back) == code and back == req
    rsp = cup.network_response(back, rc="00", when=WHEN)
    assert rsp["t"] == "0830" and CUP.decode(CUP.encode(rsp)) == rsp
    with pytest.raises(ProtocolError):
        cup.key_mode_of(back)


def test_builder_argument_checks() -> None:
    with pytest.raises(ProtocolError):
        cup.signon_request(
            stan=1, terminal_id="1", merchant_id="1", batch=1, key_mode="002", operator="01"
        )
    with pytest.raises(ProtocolError):
        cup.echo_request(stan=1234567, terminal_id="1", merchant_id="1", batch=1)
    with pytest.raises(ProtocolError):
        cup.network_code({"t": "0800"})


def test_get_dialect() -> None:
    assert get_dialect("cup").name == "cup" and get_dialect("iso87").name == "iso87"
    with pytest.raises(TestError):
        get_dialect("visa")


# ---- rejections --------------------------------------------------------------------------


def _reader(data: bytes):  # type: ignore[no-untyped-def]
    pos = 0

    def read_exactly(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += len(chunk)
        return chunk

    return read_exactly


def _set_bit(body: bytes, field: int) -> bytes:
    out = bytearray(body)
    out[13 + (field - 1) // 8] |= 0x80 >> ((field - 1) % 8)
    return bytes(out)


GOOD = CUP.encode(vector_0800())


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (GOOD + b"\x00", "Extra data"),
        (_set_bit(GOOD, 1), "secondary bitmap"),
        (_set_bit(GOOD, 5), r"\[5\] not allowed"),
        (_set_bit(_set_bit(GOOD, 15), 64 - 7), r"\[15, 57\] not allowed"),
        (GOOD[:20], "shorter than"),
        (b"", "shorter than"),
        (GOOD[:-1], "field 63"),
        (GOOD[:11] + bytes.fromhex("0A00") + GOOD[13:], "MTI 0A00 is not valid BCD"),
    ],
)
def test_decode_rejections(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        CUP.decode(body)


def test_field_63_over_63_bytes_rejected() -> None:
    ok = body_of({"39": "00", "63": "x" * 63}, mti="0810")
    assert CUP.decode(ok)["63"] == "x" * 63
    long = ref.encode_frame(TPDU, HEADER, "0810", {39: "00", 63: "x" * 64})[2:]
    with pytest.raises(ProtocolError, match="field 63"):
        CUP.decode(long)
    with pytest.raises(ProtocolError, match="field 63"):
        body_of({"63": "x" * 64})


def test_bad_bcd_rejected() -> None:
    good = body_of({"11": "000001", "32": "123"})
    idx = good.index(bytes.fromhex("000001"))
    with pytest.raises(ProtocolError, match="field 11 is not valid BCD"):
        CUP.decode(good[:idx] + bytes.fromhex("00000A") + good[idx + 3 :])
    # the LLVAR length of 32 is not BCD
    with pytest.raises(ProtocolError, match="invalid BCD"):
        CUP.decode(good[:-3] + bytes.fromhex("0A") + good[-2:])
    # odd-length variable numeric padded with a non-zero nibble
    with pytest.raises(ProtocolError, match="field 32"):
        CUP.decode(good[:-1] + bytes.fromhex("31"))


def test_encode_rejections() -> None:
    for fields in (
        {"11": "00000A"},  # not decimal
        {"11": "1234567"},  # too long
        {"62": "not bytes"},
        {"41": 12345678},
        {"5": "1"},  # outside the CUP set
        {"65": "1"},
        {"41": "终端"},
    ):
        with pytest.raises(ProtocolError):
            body_of(fields)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        CUP.encode({"t": "08x0"})
    with pytest.raises(ProtocolError):
        CUP.encode({"t": "0800", "tpdu": b"\x60"})
