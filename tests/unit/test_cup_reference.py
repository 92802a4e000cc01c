"""The independent CUP reference codec (tests/cup_reference.py) against DESIGN §1 vectors."""

from __future__ import annotations

import pytest

from tests import cup_reference as ref

TMK = bytes.fromhex("11111111111111112222222222222222")
PIK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MAK = bytes.fromhex("1122334455667788") + bytes(8)
TDK = bytes.fromhex("A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8")
FIELD62_004 = bytes.fromhex(
    "CB4AB541CD5AD4FC256A882726936A5A08D7B4FB6D2F717C654431D7D2B91CC5A758BB086FB23EAD"
    "B3982F5E072FBBACFBC7B87AE907ABCE7B217FA3")


def test_field62_vector_decodes_with_all_kcvs() -> None:
    keys = ref.decode_keys(TMK, FIELD62_004, "004")
    assert (keys.pik, keys.mak, keys.tdk) == (PIK, MAK, TDK)


def test_field62_bad_kcv_is_rejected() -> None:
    bad = bytearray(FIELD62_004)
    bad[16] ^= 1
    with pytest.raises(ref.RefError, match="PIK KCV"):
        ref.decode_keys(TMK, bytes(bad), "004")
    with pytest.raises(ref.RefError, match="needs 40"):
        ref.decode_keys(TMK, FIELD62_004, "003")


def test_0800_vector_length_and_mac() -> None:
    frame = ref.encode_frame(
        bytes.fromhex("6000320000"), bytes.fromhex("603100C15082"), "0800",
        {11: "000001", 41: "12345678", 42: "123456789012345", 60: "00000001004",
         62: b"Sequence No123136ABCD1234", 63: "01 "})
    assert frame[:2] == bytes.fromhex("0057") and len(frame) == 2 + 87
    parsed = ref.parse_frame(frame, reply=False)
    assert parsed.mti == "0800" and parsed.fields[60] == "00000001004"
    assert parsed.fields[62] == b"Sequence No123136ABCD1234" and parsed.fields[63] == "01 "
    # the vector: CUP MAC of this message's MTI ... field 63 bytes, as given
    assert ref.cup_mac(MAK[:8], frame[2 + 11:]) == b"1C400289"
    # a MACed message: bit 64 set first, MAC over MTI ... 63 with that bitmap
    macced = ref.encode_frame(
        bytes.fromhex("6000320000"), bytes.fromhex("603100C15082"), "0800",
        {11: "000001", 41: "12345678", 42: "123456789012345", 60: "00000001004",
         62: b"Sequence No123136ABCD1234", 63: "01 "}, mak8=MAK[:8])
    assert ref.parse_frame(macced, reply=False).fields[64] == ref.cup_mac(
        MAK[:8], macced[2 + 11:-8])
    assert macced[2 + 11 + 2 + 7] & 1


def test_reply_rules() -> None:
    tpdu, hdr = bytes.fromhex("6000000003"), bytes.fromhex("603100310000")
    ok = ref.encode_frame(tpdu, hdr, "0810", {11: "000001", 39: "00", 63: "x" * 63})
    ref.parse_frame(ok)
    with pytest.raises(ref.RefError, match="63"):
        ref.parse_frame(ref.encode_frame(tpdu, hdr, "0810", {63: "x" * 64}))
    with pytest.raises(ref.RefError, match="trailing"):
        body = ok[2:] + b"\x00"
        ref.parse_frame(len(body).to_bytes(2, "big") + body)
    secondary = bytearray(ok)
    secondary[2 + 13] |= 0x80
    with pytest.raises(ref.RefError, match="secondary"):
        ref.parse_frame(bytes(secondary))


def test_variable_numeric_is_left_aligned() -> None:
    frame = ref.encode_frame(bytes(5), bytes(6), "0800", {32: "123", 60: "00000001003"})
    # 32: LL=03, digits 123 + pad -> 12 30; 60: LLL=0011, 00000001003 + pad
    assert frame.endswith(bytes.fromhex("03" "1230" "0011" "000000010030"))
    assert ref.parse_frame(frame, reply=False).fields[32] == "123"
