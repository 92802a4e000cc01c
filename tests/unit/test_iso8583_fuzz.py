"""Property tests: hostile bytes never raise anything but ProtocolError; valid messages round-trip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.core.errors import ProtocolError
from rig.iso8583 import (
    ConnectionClosed,
    cup,
    frame,
    get_dialect,
    iso87,
    read_frame,
    read_frame_async,
)
from rig.iso8583.cup_codec import _FIELDS
from tests import cup_reference as ref

CUP = get_dialect("cup")
ISO87 = get_dialect("iso87")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cup_samples() -> list[bytes]:
    from datetime import datetime

    req = cup.signon_request(
        stan=1,
        terminal_id="12345678",
        merchant_id="123456789012345",
        batch=1,
        key_mode="004",
        operator="01",
        serial="SN0001",
    )
    rsp = cup.signon_response(
        req, rc="00", field62=bytes(60), rrn="000000000001", when=datetime(2024, 1, 2, 3, 4, 5)
    )
    sale = {
        "t": "0200",
        "2": "6212345678901234567",
        "3": "000000",
        "4": "000000000100",
        "11": "000002",
        "22": "051",
        "23": "001",
        "25": "00",
        "35": "6212345678901234567=2512",
        "41": "12345678",
        "42": "123456789012345",
        "49": "156",
        "55": bytes(range(40)),
        "60": "22000001000500",
        "63": "CUP",
    }
    mak = bytes(8)
    return [CUP.encode(req), CUP.encode(rsp), CUP.encode(sale, mak=mak)]


CUP_SAMPLES = _cup_samples()
ISO_SAMPLES = [
    ISO87.encode(iso87.echo_request(stan=7, when=__import__("datetime").datetime(2024, 1, 1))),
    ISO87.encode({"t": "0200", "2": "4761739001010010", "4": "000000000100", "52": bytes(8)}),
]


def _decode_or_protocol_error(decode: Callable[[bytes], object], data: bytes) -> object | None:
    try:
        return decode(data)
    except ProtocolError:
        return None


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[pos]
        else:
            del data[pos:]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_cup(data: bytes) -> None:
    _decode_or_protocol_error(CUP.decode, data)
    _decode_or_protocol_error(CUP.decode, bytes(11) + data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_iso87(data: bytes) -> None:
    _decode_or_protocol_error(ISO87.decode, data)
    _decode_or_protocol_error(ISO87.decode, b"0800" + data)


@FUZZ
@given(mutated(CUP_SAMPLES))
def test_mutated_cup_frames(data: bytes) -> None:
    msg = _decode_or_protocol_error(CUP.decode, data)
    if msg is not None:  # whatever decodes is canonical: it re-encodes to the same bytes
        assert isinstance(msg, dict)
        assert CUP.encode(msg) == data
        CUP.mac_input(data)
        CUP.verify_mac(data, bytes(8))


@FUZZ
@given(mutated(ISO_SAMPLES))
def test_mutated_iso87_frames(data: bytes) -> None:
    msg = _decode_or_protocol_error(ISO87.decode, data)
    if msg is not None:
        ISO87.verify_mac(data, bytes(16))


@pytest.mark.parametrize("sample", CUP_SAMPLES + ISO_SAMPLES)
def test_every_truncation_is_rejected(sample: bytes) -> None:
    dialect = CUP if sample in CUP_SAMPLES else ISO87
    for n in range(len(sample)):
        with pytest.raises(ProtocolError):
            dialect.decode(sample[:n])


# ---- random valid CUP messages round-trip and agree with the reference codec --------------


def _value(field: int) -> st.SearchStrategy[object]:
    kind, len_type, max_len, _ = _FIELDS[field]
    size: dict[str, int] = (
        {"min_size": max_len, "max_size": max_len} if len_type == 0 else {"max_size": max_len}
    )
    if kind == "b":
        return st.binary(**size)
    if kind == "a":
        return st.text(st.characters(min_codepoint=32, max_codepoint=126), **size)
    if len_type:
        size["min_size"] = 1  # the reference codec refuses empty BCD (we accept it)
    if kind == "z":
        return st.text(st.sampled_from("0123456789="), **size)
    return st.text(st.sampled_from("0123456789"), **size)


@st.composite
def cup_messages(draw: st.DrawFn) -> dict[str, object]:
    fields = draw(st.sets(st.sampled_from(sorted(set(_FIELDS) - {64})), max_size=12))
    msg: dict[str, object] = {
        "tpdu": draw(st.binary(min_size=5, max_size=5)),
        "header": draw(st.binary(min_size=6, max_size=6)),
        "t": draw(st.sampled_from(["0800", "0810", "0200", "0210", "0400", "0820"])),
    }
    for f in fields:
        msg[str(f)] = draw(_value(f))
    return msg


@settings(max_examples=300, deadline=None)
@given(cup_messages(), st.booleans())
def test_cup_round_trip_and_reference(msg: dict[str, object], with_mac: bool) -> None:
    mak = bytes.fromhex("1122334455667788") if with_mac else None
    body = CUP.encode(msg, mak=mak)
    back = CUP.decode(body)
    expected = {k: v for k, v in msg.items()}
    if mak is not None:
        expected["64"] = body[-8:]
        assert CUP.verify_mac(body, mak)
    assert back == expected
    parsed = ref.parse_frame(frame(body), reply=False)
    assert parsed.mti == msg["t"] and parsed.tpdu == msg["tpdu"]
    for key, value in expected.items():
        if key.isdigit():
            want = value.replace("=", "D") if isinstance(value, str) and key in "3536" else value
            got = parsed.fields[int(key)]
            if key == "22":
                got = got[:3]  # reference keeps the n4 wire form
            assert got == want, key


# ---- framing ------------------------------------------------------------------------------


def _reader(data: bytes) -> Callable[[int], bytes]:
    pos = 0

    def read_exactly(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += len(chunk)
        return chunk

    return read_exactly


def _read_async(data: bytes, max_len: int = 8192) -> bytes:
    async def go() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame_async(reader, max_len)

    return asyncio.run(go())


def test_framing_basics() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    stream = _reader(frame(b"abc") + frame(b"") + frame(b"xyz"))
    assert [read_frame(stream) for _ in range(3)] == [b"abc", b"", b"xyz"]
    with pytest.raises(ConnectionClosed):
        read_frame(stream)
    with pytest.raises(ProtocolError, match="limit"):
        read_frame(_reader(b"\x20\x01" + bytes(0x2001)))
    with pytest.raises(ProtocolError, match="2 of 3"):
        read_frame(_reader(b"\x00\x03ab"))
    with pytest.raises(ProtocolError, match="length prefix"):
        read_frame(_reader(b"\x00"))
    with pytest.raises(ProtocolError):
        frame(bytes(0x10000))

    def eof(n: int) -> bytes:
        raise EOFError

    with pytest.raises(ConnectionClosed):
        read_frame(eof)
    assert _read_async(frame(b"abc")) == b"abc"
    with pytest.raises(ConnectionClosed):
        _read_async(b"")
    with pytest.raises(ProtocolError, match="1 of 3"):
        _read_async(b"\x00\x03a")


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 40))
def test_read_frame_random_streams(data: bytes, max_len: int) -> None:
    for read in (lambda d: read_frame(_reader(d), max_len), lambda d: _read_async(d, max_len)):
        try:
            body = read(data)
        except ProtocolError:
            continue
        assert len(body) == int.from_bytes(data[:2], "big") <= max_len
        assert data[2 : 2 + len(body)] == body


@FUZZ
@given(mutated([frame(s) for s in CUP_SAMPLES]))
def test_read_then_decode_mutated_frames(data: bytes) -> None:
    try:
        CUP.decode(read_frame(_reader(data)))
    except ProtocolError:
        pass
