import hashlib
from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.cards import emv, tlv
from rig.cards.emv import EmvCard
from rig.cards.kernel import FIELD55_TAGS, CardReadError, read_card
from rig.cards.profiles import load_cards
from rig.core.errors import ProtocolError
from rig.drivers.reader import check_with

CARDS = load_cards()
TODAY = date(2025, 6, 1)
UN = bytes.fromhex("A1B2C3D4")
VALID_SW = {0x9000, 0x6700, 0x6985, 0x6A80, 0x6A82, 0x6A83, 0x6A86, 0x6A88, 0x6D00, 0x6E00}


def read(card: EmvCard, contactless: bool = False, amount: int = 12345, **kw):
    return read_card(card.transmit, contactless=contactless, amount_minor=amount,
                     unpredictable=UN, when=TODAY, **kw)


def sw(r: bytes) -> int:
    return int.from_bytes(r[-2:], "big")


def apdu(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def select(name: bytes) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(name)]) + name + b"\x00"


def gpo_apdu() -> bytes:
    return bytes.fromhex("80A80000") + bytes([14, 0x83, 12]) + bytes(12) + b"\x00"


def expected(profile, contactless):
    if profile.mute:
        return "no ATR"
    mode = "tap" if contactless else "chip"
    if not profile.aids or mode not in profile.entry_modes:
        return "no supported application"
    return None


@pytest.mark.parametrize("contactless", [False, True], ids=["contact", "contactless"])
@pytest.mark.parametrize("name", sorted(CARDS))
def test_every_profile_through_the_kernel(name, contactless):
    p = CARDS[name]
    card = EmvCard(p)
    fail = expected(p, contactless)
    if fail:
        with pytest.raises(CardReadError) as e:
            read(card, contactless)
        assert e.value.reason == fail
        assert p.pan not in str(e.value)
        return
    r = read(card, contactless)
    assert (r.aid, r.pan, r.expiry, r.track2) == (p.aids[0], p.pan, p.expiry, p.track2)
    assert r.pan_sequence == p.pan_sequence and r.app_label == (p.app_label or r.app_label)
    assert r.cid == 0x80 and r.atc == 1 and r.aids == tuple(p.aids)
    f55 = tlv.parse(r.field55)
    assert [t.tag for t in f55] == list(FIELD55_TAGS)
    v = {t.tag: t.value for t in f55}
    assert v[0x9F02] == bytes.fromhex("000000012345") and v[0x9F37] == UN
    assert v[0x5F2A] == bytes.fromhex("0156") and v[0x9A] == bytes.fromhex("250601")
    assert v[0x84] == bytes.fromhex(p.aids[0]) and v[0x9F27] == b"\x80"
    for secret in (p.pan, p.track2):
        assert secret not in repr(r) and secret not in str(r) and secret not in repr(card)


def test_cryptogram_is_the_documented_test_value_and_atc_counts():
    p = CARDS["cup_debit"]
    card = EmvCard(p)
    r1, r2 = read(card), read(card)
    assert (r1.atc, r2.atc, card.atc) == (1, 2, 2)
    v = tlv.flatten(tlv.parse(r2.field55))
    assert v[0x9F36] == b"\x00\x02"
    assert len(v[0x9F26]) == 8 and r1.field55 != r2.field55
    again = EmvCard(p, atc=1)
    assert read(again).field55 == r2.field55  # deterministic
    assert sw(card.transmit(apdu("80CA9F3600"))) == 0x9000
    assert card.transmit(apdu("80CA9F3600"))[:-2] == tlv.encode(0x9F36, b"\x00\x02")


def test_cryptogram_formula():
    p = CARDS["visa_credit"]
    card = EmvCard(p)
    card.transmit(select(bytes.fromhex(p.aids[0])))
    assert sw(card.transmit(gpo_apdu())) == 0x9000
    cdol = bytes(tlv.dol_length(emv.CDOL1))
    r = card.transmit(bytes([0x80, 0xAE, 0x80, 0x00, len(cdol)]) + cdol + b"\x00")
    ac = tlv.find(r[:-2], 0x9F26)
    assert ac == hashlib.sha256(p.pan.encode() + b"\x00\x01" + cdol).digest()[:8]


def test_second_generate_ac_gives_tc_or_aac():
    card = EmvCard(CARDS["cup_debit"])
    read(card)
    ok = card.transmit(bytes([0x80, 0xAE, 0x40, 0x00, 11]) + b"00" + bytes(9) + b"\x00")
    assert tlv.find(ok[:-2], 0x9F27) == b"\x40" and sw(ok) == 0x9000
    card2 = EmvCard(CARDS["cup_debit"])
    read(card2)
    no = card2.transmit(bytes([0x80, 0xAE, 0x40, 0x00, 11]) + b"05" + bytes(9) + b"\x00")
    assert tlv.find(no[:-2], 0x9F27) == b"\x00"
    assert sw(card2.transmit(bytes([0x80, 0xAE, 0x40, 0x00, 11]) + bytes(11))) == 0x6985


def test_pse_directory_lists_aids_labels_priority():
    card = EmvCard(CARDS["cup_debit"])
    r = card.transmit(select(emv.PSE))
    assert sw(r) == 0x9000 and tlv.find(r[:-2], 0x88) == b"\x01"
    rec = card.transmit(apdu("00B2010C00"))
    entry = tlv.flatten(tlv.parse(rec[:-2]))
    assert entry[0x4F] == bytes.fromhex("A000000333010101")
    assert entry[0x50] == b"UnionPay Debit" and entry[0x87] == b"\x01"
    assert sw(card.transmit(apdu("00B2020C00"))) == 0x6A83


def test_ppse_has_entries_inline():
    card = EmvCard(CARDS["visa_credit"])
    r = card.transmit(select(emv.PPSE))
    bf0c = tlv.find(r[:-2], 0xBF0C)
    assert bf0c is not None and tlv.find(bf0c, 0x4F) == bytes.fromhex("A0000000031010")


def test_aid_fci_has_pdol_and_label():
    card = EmvCard(CARDS["mc_debit"])
    r = card.transmit(select(bytes.fromhex("A0000000041010")))
    f = tlv.flatten(tlv.parse(r[:-2]))
    assert f[0x84] == bytes.fromhex("A0000000041010") and f[0x50] == b"Debit Mastercard"
    assert tlv.parse_dol(f[0x9F38]) == [(0x9F02, 6), (0x5F2A, 2), (0x9F37, 4)]
    # partial selection by RID + PIX prefix
    assert sw(card.transmit(select(bytes.fromhex("A00000000410")))) == 0x9000


@pytest.mark.parametrize("cmd, expected_sw", [
    ("00A4", 0x6700),  # too short
    ("0000000000", 0x6D00),  # unknown INS
    ("84A4040000", 0x6E00),  # unknown CLA
    ("80A4040007A000000333010100", 0x6E00),  # SELECT with a proprietary CLA
    ("00A404000EFF", 0x6700),  # Lc says 14, one byte follows
    ("00A4040007A000000999101000", 0x6A82),  # unknown AID
    ("00A4000002 3F00 00", 0x6A86),  # select by file id: not supported
    ("80A80000028300 00", 0x6985),  # GPO before SELECT
    ("80AE8000 00", 0x6985),  # GENERATE AC before GPO
    ("00B2010C00", 0x6985),  # READ RECORD with nothing selected
    ("80CA9F1300", 0x6A88),  # GET DATA: unknown object
])
def test_status_words(cmd, expected_sw):
    assert sw(EmvCard(CARDS["cup_debit"]).transmit(apdu(cmd))) == expected_sw


def test_status_words_after_select():
    card = EmvCard(CARDS["cup_debit"])
    card.transmit(select(bytes.fromhex("A000000333010101")))
    assert sw(card.transmit(apdu("80A80000028300 00"))) == 0x6700  # PDOL data missing
    assert sw(card.transmit(apdu("80A80000025A00 00"))) == 0x6A80  # not tag 83
    assert sw(card.transmit(apdu("00B2090C00"))) == 0x6A83  # no record 9 in SFI 1
    assert sw(card.transmit(apdu("00B2011C00"))) == 0x6A82  # no SFI 3
    assert sw(card.transmit(apdu("00B2010800"))) == 0x6A86  # P2 not "record number"
    assert sw(card.transmit(gpo_apdu())) == 0x9000
    assert sw(card.transmit(gpo_apdu())) == 0x6985  # GPO twice
    assert sw(card.transmit(apdu("80AE80000300000000"))) == 0x6700  # wrong CDOL1 length


def test_magstripe_only_answers_no_select():
    card = EmvCard(CARDS["magstripe_only"])
    for name in (emv.PSE, emv.PPSE, bytes.fromhex("A000000333010101")):
        assert card.transmit(select(name)) == b"\x6a\x82"


def test_mute_card():
    card = EmvCard(CARDS["mute"])
    assert card.atr() is None and card.transmit(select(emv.PSE)) == b""
    assert EmvCard(CARDS["cup_debit"]).atr() == bytes.fromhex(CARDS["cup_debit"].atr)


def test_expired_card_reads_but_check_flags_it():
    card = EmvCard(CARDS["expired"])
    r = read(card)
    assert r.expiry == "2001" and r.cid == 0x80
    tvr = tlv.find(r.field55, 0x95)
    assert tvr is not None and tvr[1] & 0x40  # TVR: expired application
    chk = check_with(EmvCard(CARDS["expired"]).transmit, card.atr(), today=TODAY)
    assert chk.problems == ["expired (2001)"] and chk.masked_pan == "622202*********1233"
    assert chk.aids == ["A000000333010101"] and chk.atr == CARDS["expired"].atr.upper()


@pytest.mark.parametrize("name, problems", [
    ("cup_debit", []), ("mute", ["no ATR (mute)"]),
    ("magstripe_only", ["no supported application"]),
])
def test_check_with(name, problems):
    card = EmvCard(CARDS[name])
    chk = check_with(card.transmit, card.atr(), today=TODAY)
    assert chk.problems == problems
    assert CARDS[name].pan not in repr(chk)
    assert card.atc == 0  # the check never asks for a cryptogram


def test_stop_before_ac():
    card = EmvCard(CARDS["cup_credit"])
    r = read(card, stop_before_ac=True)
    assert r.field55 == b"" and r.cid == 0 and card.atc == 0 and r.pan == CARDS["cup_credit"].pan


def test_list_of_aids_fallback_and_t0_get_response():
    card = EmvCard(CARDS["visa_credit"])
    pending: list[bytes] = []

    def t0(cmd: bytes) -> bytes:  # no PSE; T=0 style 61xx for every response with data
        if cmd[1] == 0xA4 and cmd[5:5 + cmd[4]] == emv.PSE:
            return b"\x6a\x82"
        if cmd[1] == 0xC0:
            return pending.pop() + b"\x90\x00"
        r = card.transmit(cmd)
        if len(r) > 2 and r[-2:] == b"\x90\x00":
            pending.append(r[:-2])
            return bytes([0x61, len(r) - 2])
        return r

    r = read_card(t0, contactless=False, amount_minor=1, unpredictable=UN,
                  when=datetime(2025, 6, 1, 12, 30, 5))
    assert r.aid == "A0000000031010" and r.cid == 0x80


def test_priority_picks_lowest_number():
    p = CARDS["cup_debit"].model_copy(update={"aids": ["A000000333010102", "A000000333010101"]})
    assert read(EmvCard(p)).aid == "A000000333010102"
    assert read(EmvCard(p), supported_aids=["A000000333010101"]).aid == "A000000333010101"


def test_card_read_error_is_protocol_error():
    assert issubclass(CardReadError, ProtocolError)
    assert CardReadError("no ATR").reason == "no ATR"


def test_bad_arguments():
    with pytest.raises(ValueError):
        read_card(EmvCard(CARDS["cup_debit"]).transmit, contactless=False, amount_minor=1,
                  unpredictable=b"\x01", when=TODAY)


# ---- fuzz --------------------------------------------------------------------------------

LIVE = [n for n, p in sorted(CARDS.items()) if not p.mute]
commands = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda h, d: h + bytes([len(d)]) + d + b"\x00",
              st.sampled_from([b"\x00\xa4\x04\x00", b"\x80\xa8\x00\x00", b"\x80\xae\x80\x00",
                               b"\x80\xae\x40\x00", b"\x00\xb2\x01\x0c", b"\x00\xb2\x02\x0c",
                               b"\x00\xb2\x01\x14", b"\x80\xca\x9f\x36"]),
              st.one_of(st.binary(max_size=40),
                        st.sampled_from([emv.PSE, emv.PPSE, bytes.fromhex("A000000333010101"),
                                         bytes.fromhex("830C") + bytes(12), bytes(33)]))),
)


@settings(max_examples=300)
@given(st.sampled_from(LIVE), st.lists(commands, max_size=12))
def test_fuzz_transmit_always_answers_with_a_status_word(name, cmds):
    card = EmvCard(CARDS[name])
    for c in cmds:
        r = card.transmit(c)
        assert len(r) >= 2 and sw(r) in VALID_SW


@settings(max_examples=200)
@given(st.sampled_from(LIVE), st.data())
def test_fuzz_kernel_against_corrupted_cards(name, data):
    """Whatever a (broken) card answers, read_card returns or raises CardReadError."""
    card = EmvCard(CARDS[name])

    def corrupt(cmd: bytes) -> bytes:
        r = card.transmit(cmd)
        how = data.draw(st.integers(0, 2))
        if how == 0:  # garbage
            return data.draw(st.binary(max_size=len(r) + 4))
        if how == 1 and len(r) > 2:  # one byte flipped
            i = data.draw(st.integers(0, len(r) - 3))
            return r[:i] + bytes([data.draw(st.integers(0, 255))]) + r[i + 1:]
        return r

    try:
        read_card(corrupt, contactless=data.draw(st.booleans()), amount_minor=1,
                  unpredictable=UN, when=TODAY)
    except CardReadError as e:
        assert CARDS[name].pan not in str(e)
