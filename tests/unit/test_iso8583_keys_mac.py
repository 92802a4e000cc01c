"""Working keys (field 62), check values and MACs against the DESIGN §1 reference vectors."""

from __future__ import annotations

import pytest

from rig.core.errors import ProtocolError
from rig.iso8583 import (
    WorkingKeys,
    cup_mac,
    decode_field62,
    encode_field62,
    generate_working_keys,
    kcv,
    x919_mac,
)
from rig.iso8583.keys import field62_length

TMK = bytes.fromhex("11111111111111112222222222222222")
PIK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MAK = bytes.fromhex("1122334455667788") + bytes(8)
TDK = bytes.fromhex("A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8")
FIELD62_004 = bytes.fromhex(
    "CB4AB541CD5AD4FC256A882726936A5A 08D7B4FB"
    "6D2F717C654431D7D2B91CC5A758BB08 6FB23EAD"
    "B3982F5E072FBBACFBC7B87AE907ABCE 7B217FA3"
)


def test_field62_reference_vector_004() -> None:
    keys = WorkingKeys(pik=PIK, mak=MAK, tdk=TDK)
    assert encode_field62(TMK, keys, "004") == FIELD62_004
    assert len(FIELD62_004) == 60


def test_field62_reference_vector_decodes() -> None:
    keys = decode_field62(TMK, FIELD62_004, "004")
    assert keys == WorkingKeys(pik=PIK, mak=MAK, tdk=TDK)
    assert keys.mak8 == bytes.fromhex("1122334455667788")


def test_kcv_rules() -> None:
    assert kcv(PIK) == bytes.fromhex("08D7B4FB")  # TDES with the full key
    assert kcv(MAK[:8]) == bytes.fromhex("6FB23EAD")  # single DES of the first half
    assert kcv(MAK) != kcv(MAK[:8])
    assert kcv(TDK) == bytes.fromhex("7B217FA3")


@pytest.mark.parametrize(("mode", "length"), [("001", 24), ("003", 40), ("004", 60)])
def test_field62_round_trip_all_modes(mode: str, length: int) -> None:
    keys = generate_working_keys(mode)
    data = encode_field62(TMK, keys, mode)
    assert len(data) == length == field62_length(mode)
    assert decode_field62(TMK, data, mode) == keys


def test_generated_keys_shape() -> None:
    k1 = generate_working_keys("001")
    assert (len(k1.pik), len(k1.mak), k1.tdk) == (8, 8, None)
    k3 = generate_working_keys("003")
    assert (len(k3.pik), len(k3.mak), k3.tdk) == (16, 16, None)
    assert k3.mak[8:] == bytes(8)  # CUP hosts send MAK8 + 8 zero bytes
    k4 = generate_working_keys("004", randbytes=lambda n: bytes(range(n)))
    assert k4.tdk is not None and len(k4.tdk) == 16
    for key in (k4.pik, k4.mak8, k4.tdk):
        assert all(bin(b).count("1") % 2 == 1 for b in key)  # odd parity


def test_field62_001_layout() -> None:
    keys = WorkingKeys(pik=PIK[:8], mak=MAK[:8])
    data = encode_field62(TMK, keys, "001")
    assert data[8:12] == kcv(PIK[:8]) and data[20:24] == kcv(MAK[:8])


def test_decode_field62_rejects_wrong_length() -> None:
    with pytest.raises(ProtocolError, match="60"):
        decode_field62(TMK, FIELD62_004[:-1], "004")
    with pytest.raises(ProtocolError):
        decode_field62(TMK, FIELD62_004, "003")


def test_decode_field62_rejects_kcv_mismatch() -> None:
    bad = bytearray(FIELD62_004)
    bad[20] ^= 0x01  # MAK ciphertext
    with pytest.raises(ProtocolError, match="MAK check value"):
        decode_field62(TMK, bytes(bad), "004")
    with pytest.raises(ProtocolError, match="PIK check value"):
        decode_field62(bytes(16), FIELD62_004, "004")


def test_unknown_key_mode() -> None:
    with pytest.raises(ProtocolError):
        generate_working_keys("002")
    with pytest.raises(ProtocolError):
        decode_field62(TMK, FIELD62_004, "005")


def test_working_keys_repr_hides_keys() -> None:
    text = repr(WorkingKeys(pik=PIK, mak=MAK, tdk=TDK))
    assert PIK.hex() not in text.lower() and "0123" not in text


def test_cup_mac_shape_and_sensitivity() -> None:
    mak8 = bytes.fromhex("1122334455667788")
    mac = cup_mac(mak8, b"0200 some message bytes")
    assert len(mac) == 8 and all(c in b"0123456789ABCDEF" for c in mac)
    assert cup_mac(mak8, b"0200 some message bytez") != mac
    # zero padding of the last block: appending zero bytes to a partial block is invisible
    assert cup_mac(mak8, b"abc") == cup_mac(mak8, b"abc\x00")
    with pytest.raises(ValueError):
        cup_mac(MAK, b"x")


def test_x919_reference_vectors() -> None:
    data = b"Now is the time for all "
    assert x919_mac(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), data) == bytes.fromhex(
        "A1C72E74EA3FA9B6"
    )
    assert x919_mac(bytes.fromhex("0123456789ABCDEF"), data) == bytes.fromhex("70A30640CC76DD8B")
