import pytest
from hypothesis import given
from hypothesis import strategies as st

from rig.cards import tlv
from rig.cards.tlv import Tlv, TlvError
from rig.core.errors import ProtocolError


def test_encode_short_long_and_multibyte_tags():
    assert tlv.encode(0x5A, b"\x12\x34") == bytes.fromhex("5A021234")
    assert tlv.encode(0x9F02, bytes(6)) == bytes.fromhex("9F0206000000000000")
    assert tlv.encode(0x70, bytes(200))[:3] == bytes.fromhex("7081C8")
    assert tlv.encode(0x70, bytes(300))[:4] == bytes.fromhex("7082012C")
    assert tlv.encode(0xDF8101, b"x") == bytes.fromhex("DF810101") + b"x"


def test_parse_constructed_and_find():
    data = tlv.encode(0x6F, tlv.encode(0x84, b"1PAY.SYS.DDF01")
                      + tlv.encode(0xA5, tlv.encode_many([(0x88, b"\x01"), (0x5F2D, b"zh")])))
    (fci,) = tlv.parse(data)
    assert fci.tag == 0x6F and fci.constructed
    assert [c.tag for c in fci.children] == [0x84, 0xA5]
    assert fci.children[1].children[1] == Tlv(0x5F2D, b"zh")
    assert tlv.find(data, 0x88) == b"\x01"
    assert tlv.find(data, 0x9F38) is None
    assert tlv.flatten(tlv.parse(data))[0x5F2D] == b"zh"


def test_long_form_lengths_parse():
    assert tlv.parse(bytes.fromhex("5A8102ABCD")) == [Tlv(0x5A, b"\xab\xcd")]  # BER, not DER
    assert tlv.parse(bytes.fromhex("5A820001FF")) == [Tlv(0x5A, b"\xff")]


@pytest.mark.parametrize("bad", [
    "9F",  # truncated tag
    "9FFFFFFF01",  # tag longer than 4 bytes
    "5A",  # no length
    "5A8200",  # truncated long-form length
    "5A80",  # indefinite length
    "5A850000000001",  # 5-byte length field
    "5A0512",  # value shorter than its length
    "7003010203",  # constructed with a broken child
    "00",  # padding where none is allowed
])
def test_malformed_raises_tlv_error(bad):
    with pytest.raises(TlvError):
        tlv.parse(bytes.fromhex(bad))


def test_tlv_error_is_protocol_error_and_depth_is_limited():
    assert issubclass(TlvError, ProtocolError)
    nested = b""
    for _ in range(tlv.MAX_DEPTH + 2):
        nested = tlv.encode(0x70, nested)
    with pytest.raises(TlvError, match="deeper"):
        tlv.parse(nested)


def test_padding_skipped_only_when_asked():
    data = b"\x00" + tlv.encode(0x5A, b"\x01") + b"\xff\x00"
    assert tlv.parse(data, skip_padding=True) == [Tlv(0x5A, b"\x01")]
    with pytest.raises(TlvError):
        tlv.parse(data)


@pytest.mark.parametrize("tag", [0, 0x1F, 0x9F82, 0x5F1F1F, 0x0102, 1 << 40])
def test_invalid_tags_cannot_be_encoded(tag):
    with pytest.raises(TlvError):
        tlv.encode(tag, b"")


def test_repr_hides_values():
    t = Tlv(0x5A, bytes.fromhex("6222021234567890128F"))
    assert "6222021234567890128" not in repr(t) and "5A" in repr(t)


def test_dol_parse_and_fit():
    dol = bytes.fromhex("9F0206 5F2A02 9F3704 5003")
    assert tlv.parse_dol(dol) == [(0x9F02, 6), (0x5F2A, 2), (0x9F37, 4), (0x50, 3)]
    assert tlv.dol_length(dol) == 15
    out = tlv.build_dol(dol, {0x9F02: bytes.fromhex("0100"), 0x5F2A: bytes.fromhex("000156"),
                              0x50: b"ABCDE"})
    assert out == bytes.fromhex("000000000100" "0156" "00000000") + b"ABC"


# ---- property tests -------------------------------------------------------------------------

def _tags(constructed: bool) -> st.SearchStrategy[int]:
    flag = 0x20 if constructed else 0x00
    single = st.integers(0, 0xFF).filter(lambda b: b & 0x1F != 0x1F and b & 0x20 == flag and b)
    first = st.sampled_from([0x1F, 0x5F, 0x9F, 0xDF]).map(lambda b: b | flag)
    multi = st.tuples(first, st.lists(st.integers(0x80, 0xFF), max_size=2),
                      st.integers(0, 0x7F)).map(
        lambda t: int.from_bytes(bytes([t[0], *t[1], t[2]]), "big"))
    return st.one_of(single, multi)


primitive = st.builds(lambda t, v: Tlv(t, v), _tags(False), st.binary(max_size=300))
trees = st.recursive(
    primitive,
    lambda kids: st.builds(
        lambda t, cs: Tlv(t, b"".join(_enc(c) for c in cs), tuple(cs)),
        _tags(True), st.lists(kids, max_size=4)),
    max_leaves=12,
)


def _enc(t: Tlv) -> bytes:
    return tlv.encode(t.tag, t.value)


@given(st.lists(trees, max_size=5))
def test_round_trip(items):
    data = b"".join(_enc(t) for t in items)
    assert tlv.parse(data) == items


@given(st.binary(max_size=400))
def test_fuzz_parse_only_raises_tlv_error(data):
    try:
        items = tlv.parse(data)
    except TlvError:
        return
    # whatever parses re-encodes (minimal lengths) to something that parses the same
    assert tlv.parse(b"".join(_enc(t) for t in items)) == items


@given(st.binary(max_size=60))
def test_fuzz_dol_only_raises_tlv_error(data):
    try:
        entries = tlv.parse_dol(data)
    except TlvError:
        return
    assert len(tlv.build_dol(entries, {})) == sum(n for _, n in entries)


def test_dol_cannot_ask_for_more_than_one_apdu():
    with pytest.raises(TlvError, match="more than"):
        tlv.parse_dol(bytes.fromhex("9F0284FFFFFFFF"))
    with pytest.raises(TlvError):
        tlv.build_dol(bytes.fromhex("9F0281C8" "9F0381C8"), {})


def test_dol_items_give_each_value_as_sent() -> None:
    dol = bytes.fromhex("9F0206 9F3704 9F3501 9F4E05 5F2A02")
    items = tlv.dol_items(dol, {0x9F02: bytes.fromhex("0000000100"), 0x9F37: b"\x01\x02\x03\x04\x05",
                                0x9F35: b"\x22", 0x9F4E: b"AB"})
    assert items == [(0x9F02, bytes.fromhex("000000000100")), (0x9F37, b"\x01\x02\x03\x04"),
                     (0x9F35, b"\x22"), (0x9F4E, b"AB\x00\x00\x00"), (0x5F2A, b"\x00\x00")]
    assert tlv.build_dol(dol, {}) == bytes(tlv.dol_length(dol))
