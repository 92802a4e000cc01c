"""The emulated card, the terminal kernel and the cryptogram, in process (no PC/SC)."""

from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.cards import crypto, emv, tlv
from rig.cards.brands import BRANDS, issuer_master_key
from rig.cards.emv import EmvCard
from rig.cards.issuer import check_arqc
from rig.cards.kernel import FIELD55_TAGS, CardReadError, begin, read_card
from rig.cards.profiles import EmvSpec, load_cards
from rig.core.errors import ProtocolError
from rig.drivers.reader import check_with

CARDS = load_cards()
TODAY = date(2025, 6, 1)
UN = bytes.fromhex("A1B2C3D4")
VALID_SW = {0x9000, 0x6300, 0x6700, 0x6985, 0x6A80, 0x6A81, 0x6A82, 0x6A83, 0x6A86, 0x6A88,
            0x6D00, 0x6E00}
INTERFACES = [False, True]


def read(card: EmvCard, contactless: bool = False, amount: int = 12345, **kw):
    return read_card(card.transmit, contactless=contactless, amount_minor=amount,
                     unpredictable=UN, when=TODAY, **kw)


def sw(r: bytes) -> int:
    return int.from_bytes(r[-2:], "big")


def apdu(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def select(name: bytes) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(name)]) + name + b"\x00"


def gpo(data: bytes) -> bytes:
    body = tlv.encode(0x83, data)
    return bytes.fromhex("80A80000") + bytes([len(body)]) + body + b"\x00"


def selected(name: str, contactless: bool = False) -> EmvCard:
    p = CARDS[name]
    card = EmvCard(p)
    card.power_up(contactless=contactless)
    assert sw(card.transmit(select(bytes.fromhex(p.aids[0])))) == 0x9000
    return card


def expected(profile, contactless):
    if profile.mute:
        return "no ATR"
    if not (profile.has_contactless if contactless else profile.has_contact):
        return "no ATR"  # nothing there to answer: no chip, or no antenna
    return None


def issuer_mk(p) -> bytes:
    return crypto.derive_icc_mk(issuer_master_key(p.scheme), p.pan, p.pan_sequence)


# ---- every profile, both interfaces -------------------------------------------------------

@pytest.mark.parametrize("contactless", INTERFACES, ids=["contact", "contactless"])
@pytest.mark.parametrize("name", sorted(CARDS))
def test_every_profile_through_the_kernel(name, contactless):
    p = CARDS[name]
    card = EmvCard(p)
    card.power_up(contactless=contactless)
    fail = expected(p, contactless)
    if fail:
        assert card.atr() is None and card.transmit(select(emv.PSE)) == b""
        with pytest.raises(CardReadError) as e:
            read(card, contactless)
        assert e.value.reason == fail
        assert p.pan not in str(e.value)
        return
    img = card.image.interface("contactless" if contactless else "contact")
    r = read(card, contactless)
    assert (r.aid, r.pan, r.expiry, r.track2) == (p.aids[0], p.pan, p.expiry, p.track2)
    assert r.pan_sequence == p.pan_sequence and r.app_label == (p.app_label or r.app_label)
    assert r.cid == 0x80 and r.atc == 1 and r.aids == tuple(p.aids)
    assert (r.aip, r.afl, r.pdol, r.cdol1, r.cdol2) == (img.aip, img.afl, img.pdol, img.cdol1,
                                                       img.cdol2)
    assert dict(r.record_tags) == dict(img.record_tags)
    f55 = tlv.parse(r.field55)
    assert [t.tag for t in f55] == list(FIELD55_TAGS)
    v = {t.tag: t.value for t in f55}
    assert v[0x9F02] == bytes.fromhex("000000012345") and v[0x9F37] == UN
    assert v[0x5F2A] == bytes.fromhex("0156") and v[0x9A] == bytes.fromhex("250601")
    assert v[0x84] == bytes.fromhex(p.aids[0]) and v[0x9F27] == b"\x80"
    # the issuer verifies the ARQC from field 55 alone
    chk = check_arqc(r.field55, scheme=p.scheme, pan=p.pan, pan_sequence=p.pan_sequence)
    assert chk.status == ("failed" if p.emv and p.emv.imk else "ok")
    for secret in (p.pan, p.track2):
        assert secret not in repr(r) and secret not in str(r) and secret not in repr(card)


def test_one_profile_per_brand_has_no_pdol_and_takes_83_00():
    seen = set()
    for p in CARDS.values():
        for contactless in INTERFACES:
            img = EmvCard(p).image.interface("contactless" if contactless else "contact")
            if img is None or img.pdol is not None or p.mute:
                continue
            card = selected(p.name, contactless)
            r = card.transmit(apdu("80A8000002830000"))
            assert sw(r) == 0x9000, p.name
            assert sw(card.transmit(apdu("80A8000002830000"))) == 0x6985  # GPO twice
            seen.add(p.scheme)
    assert seen == {"unionpay", "visa", "mastercard"}


def test_gpo_takes_exactly_the_pdol_data():
    card = selected("cup_debit", contactless=True)
    need = tlv.dol_length(card.image.contactless.pdol)
    assert sw(card.transmit(apdu("80A8000002830000"))) == 0x6700  # 83 00 to a card with PDOL
    assert sw(card.transmit(gpo(bytes(need - 1)))) == 0x6700
    assert sw(card.transmit(gpo(bytes(need + 1)))) == 0x6700
    assert sw(card.transmit(gpo(bytes(need)))) == 0x9000 and card.atc == 1
    no_pdol = selected("visa_credit")
    assert sw(no_pdol.transmit(gpo(bytes(4)))) == 0x6700  # data to a card without a PDOL


def test_interfaces_have_their_own_data_objects():
    visa = CARDS["visa_credit"]
    contact, field = EmvCard(visa), EmvCard(visa)
    contact.power_up(contactless=False)
    field.power_up(contactless=True)
    assert sw(contact.transmit(select(emv.PPSE))) == 0x6A82  # no PPSE on the contacts
    assert sw(field.transmit(select(emv.PSE))) == 0x6A82  # no PSE in the field
    assert field.atr() == bytes.fromhex("3B80800101") and contact.atr() == bytes.fromhex(visa.atr)
    fci_c = tlv.flatten(tlv.parse(selected("visa_credit").transmit(select(bytes.fromhex(
        visa.aids[0])))[:-2]))
    fci_l = tlv.flatten(tlv.parse(selected("visa_credit", True).transmit(select(bytes.fromhex(
        visa.aids[0])))[:-2]))
    assert 0x9F38 not in fci_c
    assert tlv.parse_dol(fci_l[0x9F38])[0] == (0x9F66, 4)  # TTQ first, as Visa cards ask
    # Visa answers GPO in format 1 (tag 80) on contact
    r = selected("visa_credit").transmit(apdu("80A8000002830000"))
    assert r[0] == 0x80


def test_contact_only_and_chipless_cards_answer_nothing_where_they_have_no_interface():
    co = EmvCard(CARDS["contact_only"])
    assert co.power_up(contactless=True) is None and co.transmit(select(emv.PPSE)) == b""
    assert co.power_up(contactless=False) is not None
    ms = EmvCard(CARDS["magstripe_only"])
    for contactless in INTERFACES:
        assert ms.power_up(contactless=contactless) is None
        assert ms.transmit(select(emv.PSE)) == b"" and ms.transmit(b"\x00") == b""


# ---- the cryptogram ------------------------------------------------------------------------

def test_cryptogram_known_answers():
    """EMV Book 2 A1.4.1 / A1.3.1 / ISO 9797-1 alg. 3 / ARPC methods 1 and 2: known answers of
    an independent implementation (pyemv's published HSM test vectors)."""
    imk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    assert crypto.kcv(imk, 2).hex().upper() == "08D7"
    mk = crypto.derive_icc_mk(imk, "9901234567890123", "45")
    assert crypto.kcv(mk, 2).hex().upper() == "1DA5"
    assert crypto.kcv(crypto.derive_icc_mk(imk, "12345678901234567", "45"), 2).hex() == "ff08"
    sk = crypto.common_session_key(mk, bytes.fromhex("1234567890123456"))
    assert crypto.kcv(sk, 2).hex().upper() == "0995"
    arqc = crypto.mac3(sk, bytes.fromhex("0123456789ABCDEF0123456789ABCDEF"))
    assert arqc.hex().upper() == "4B46013359B7A58B"
    assert crypto.mac3(sk, arqc + bytes(4))[:4].hex().upper() == "7DFB1188"  # ARPC method 2
    assert crypto.mac3(sk, arqc + bytes(4) + bytes.fromhex("1234567890ABCDEF"))[:4].hex() \
        .upper() == "4962B76C"


def test_session_key_is_the_common_session_key_of_the_atc():
    mk = crypto.derive_icc_mk(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "9901234567890123",
                              "45")
    sk = crypto.session_key(mk, b"\x00\x01")
    assert sk == crypto.common_session_key(mk, bytes.fromhex("0001000000000000"))
    assert sk != crypto.session_key(mk, b"\x00\x02")


def test_card_cryptogram_recomputed_from_the_cdol_data():
    p = CARDS["mc_debit"]
    card = selected("mc_debit")
    assert sw(card.transmit(apdu("80A8000002830000"))) == 0x9000
    img = card.image.contact
    values = {0x9F02: bytes.fromhex("000000000100"), 0x5F2A: b"\x01\x56", 0x9F37: UN,
              0x9A: bytes.fromhex("250601"), 0x9F1A: b"\x01\x56"}
    data = tlv.build_dol(img.cdol1, values)
    r = card.transmit(bytes([0x80, 0xAE, 0x80, 0x00, len(data)]) + data + b"\x00")
    f = tlv.flatten(tlv.parse(r[:-2]))
    sent = dict(tlv.dol_items(img.cdol1, values))
    inp = crypto.cryptogram_input(sent, aip=img.aip, atc=b"\x00\x01", iad=f[0x9F10])
    assert f[0x9F26] == crypto.cryptogram(issuer_mk(p), inp)
    assert f[0x9F27] == b"\x80" and f[0x9F10][2] == 0xA0  # CVR: ARQC, 2nd AC not requested


def test_atc_counts_transactions_and_get_data():
    card = EmvCard(CARDS["cup_debit"])
    r1, r2 = read(card), read(card)
    assert (r1.atc, r2.atc, card.atc) == (1, 2, 2)
    assert r1.field55 != r2.field55
    assert card.transmit(apdu("80CA9F3600"))[:-2] == tlv.encode(0x9F36, b"\x00\x02")
    assert card.transmit(apdu("80CA9F1300"))[:-2] == tlv.encode(0x9F13, b"\x00\x02")
    assert sw(card.transmit(apdu("80CA9F1700"))) == 0x9000
    again = EmvCard(CARDS["cup_debit"], atc=1)
    assert read(again).field55 == r2.field55  # deterministic for the same inputs


# ---- completion: the issuer's answer at the card ------------------------------------------

def _arpc(p, field55: bytes, rc: str = "00", mk: bytes | None = None) -> bytes:
    f = tlv.flatten(tlv.parse(field55))
    return crypto.issuer_auth_data(mk or issuer_mk(p), f[0x9F36], f[0x9F26],
                                   method=BRANDS[p.scheme].arpc_method, approved=rc == "00",
                                   arc=rc.encode())


@pytest.mark.parametrize("name, path", [("cup_debit", "external authenticate"),
                                        ("visa_credit", "external authenticate"),
                                        ("mc_debit", "91 in CDOL2")])
def test_second_generate_ac_checks_the_arpc(name, path):
    p = CARDS[name]
    card = EmvCard(p)
    card.power_up()
    tx = begin(card.transmit, contactless=False, amount_minor=500, unpredictable=UN, when=TODAY)
    img = card.image.contact
    assert path == ("91 in CDOL2" if 0x91 in dict(tlv.parse_dol(img.cdol2))
                    else "external authenticate")
    done = tx.complete("00", _arpc(p, tx.read.field55))
    assert done.approved and done.issuer_auth == "ok"
    f = tlv.flatten(tlv.parse(done.field55))
    assert f[0x9F27] == b"\x40" and f[0x9F10][card.image.cvr_byte] == 0x60  # ARQC then TC
    assert tx.complete("00") is done  # once
    # a forged answer (another issuer's key) ends in an AAC, whatever the host said
    card2 = EmvCard(p)
    card2.power_up()
    tx2 = begin(card2.transmit, contactless=False, amount_minor=500, unpredictable=UN, when=TODAY)
    other = crypto.derive_icc_mk(bytes(16), p.pan, p.pan_sequence)
    bad = tx2.complete("00", _arpc(p, tx2.read.field55, mk=other))
    assert not bad.approved and bad.issuer_auth == "failed"
    assert tlv.find(bad.field55, 0x95)[4] & 0x40 or path == "91 in CDOL2"


def test_no_arpc_approves_unless_the_card_requires_one_and_declines_follow_the_arc():
    p = CARDS["cup_debit"]
    for rc, want in (("00", True), ("05", False), (None, False)):
        card = EmvCard(p)
        tx = begin(card.transmit, contactless=False, amount_minor=1, unpredictable=UN, when=TODAY)
        assert tx.complete(rc).approved is want
    strict = p.model_copy(update={"emv": EmvSpec(issuer_auth_required=True)})
    card = EmvCard(strict)
    tx = begin(card.transmit, contactless=False, amount_minor=1, unpredictable=UN, when=TODAY)
    assert not tx.complete("00").approved


def test_generate_ac_and_external_authenticate_status_words():
    card = selected("cup_debit")
    cdol1 = bytes(tlv.dol_length(card.image.contact.cdol1))
    gen = bytes([0x80, 0xAE, 0x80, 0x00, len(cdol1)]) + cdol1 + b"\x00"
    assert sw(card.transmit(gen)) == 0x6985  # before GPO
    assert sw(card.transmit(apdu("0082000008") + bytes(8))) == 0x6985  # before any ARQC
    assert sw(card.transmit(gpo(bytes(tlv.dol_length(card.image.contact.pdol))))) == 0x9000
    assert sw(card.transmit(bytes([0x80, 0xAE, 0x90, 0x00, len(cdol1)]) + cdol1)) == 0x6A81  # CDA
    assert sw(card.transmit(bytes([0x80, 0xAE, 0xC0, 0x00, len(cdol1)]) + cdol1)) == 0x6A86
    assert sw(card.transmit(bytes([0x80, 0xAE, 0x80, 0x00, 3, 0, 0, 0]))) == 0x6700
    assert sw(card.transmit(gen)) == 0x9000
    assert sw(card.transmit(apdu("0082000004 00000000"))) == 0x6700
    assert sw(card.transmit(apdu("0082000008") + bytes(8))) == 0x6300  # not the issuer's ARPC
    assert sw(card.transmit(apdu("0082000008") + bytes(8))) == 0x6985  # once only
    cdol2 = bytes(tlv.dol_length(card.image.contact.cdol2))
    assert sw(card.transmit(bytes([0x80, 0xAE, 0x80, 0x00, len(cdol2)]) + cdol2)) == 0x6985
    r = card.transmit(bytes([0x80, 0xAE, 0x40, 0x00, len(cdol2)]) + cdol2 + b"\x00")
    assert tlv.find(r[:-2], 0x9F27) == b"\x00"  # the issuer authentication failed: AAC
    assert sw(card.transmit(bytes([0x80, 0xAE, 0x40, 0x00, len(cdol2)]) + cdol2)) == 0x6985
    # a Mastercard takes 91 in CDOL2: EXTERNAL AUTHENTICATE is no function of it
    mc = selected("mc_debit")
    assert sw(mc.transmit(apdu("0082000008") + bytes(8))) == 0x6A81


# ---- status words, directory, FCI ---------------------------------------------------------

@pytest.mark.parametrize("cmd, expected_sw", [
    ("00A4", 0x6700),  # too short
    ("0000000000", 0x6D00),  # unknown INS
    ("84A4040000", 0x6E00),  # unknown CLA
    ("80A4040007A000000333010100", 0x6E00),  # SELECT with a proprietary CLA
    ("00A404000EFF", 0x6700),  # Lc says 14, one byte follows
    ("00A4040007A000000999101000", 0x6A82),  # unknown AID
    ("00A4000002 3F00 00", 0x6A86),  # select by file id: not supported
    ("00A4040C07A000000333010100", 0x6A86),  # P2: no FCI wanted
    ("80A80000028300 00", 0x6985),  # GPO before SELECT
    ("80AE8000 00", 0x6985),  # GENERATE AC before GPO
    ("00B2010C00", 0x6985),  # READ RECORD with nothing selected
    ("80CA9F1300", 0x9000),  # GET DATA: last online ATC
    ("80CA9F4F00", 0x6A88),  # GET DATA: unknown object
    ("00A40400 00", 0x6700),  # SELECT without a name
])
def test_status_words(cmd, expected_sw):
    assert sw(EmvCard(CARDS["cup_debit"]).transmit(apdu(cmd))) == expected_sw


def test_status_words_after_select():
    card = selected("cup_debit")
    assert sw(card.transmit(apdu("80A80000028300 00"))) == 0x6700  # PDOL data missing
    assert sw(card.transmit(apdu("80A80000025A00 00"))) == 0x6A80  # not tag 83
    assert sw(card.transmit(apdu("80A8000003830100"))) == 0x6700
    assert sw(card.transmit(apdu("80A8010002830000"))) == 0x6A86  # P1
    assert sw(card.transmit(apdu("00B2090C00"))) == 0x6A83  # no record 9 in SFI 1
    assert sw(card.transmit(apdu("00B2011C00"))) == 0x6A82  # no SFI 3
    assert sw(card.transmit(apdu("00B2010800"))) == 0x6A86  # P2 not "record number"
    assert sw(card.transmit(apdu("00B2000C00"))) == 0x6A86  # record 0


def test_pse_directory_lists_aids_labels_priority():
    card = EmvCard(CARDS["cup_debit"])
    r = card.transmit(select(emv.PSE))
    assert sw(r) == 0x9000 and tlv.find(r[:-2], 0x88) == b"\x01"
    assert tlv.find(r[:-2], 0x5F2D) == b"zhen"
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
    assert sw(card.transmit(apdu("00B2010C00"))) == 0x6A82  # PPSE has no records


def test_aid_fci_carries_label_priority_language_and_preferred_name():
    card = EmvCard(CARDS["mc_debit"])
    r = card.transmit(select(bytes.fromhex("A0000000041010")))
    f = tlv.flatten(tlv.parse(r[:-2]))
    assert f[0x84] == bytes.fromhex("A0000000041010") and f[0x50] == b"Debit Mastercard"
    assert 0x9F38 not in f and f[0x87] == b"\x01" and f[0x5F2D] == b"en"
    assert f[0x9F12] == b"Debit Mastercard" and f[0x9F11] == b"\x01"
    # partial selection by RID + PIX prefix
    assert sw(card.transmit(select(bytes.fromhex("A00000000410")))) == 0x9000


def test_mute_card():
    card = EmvCard(CARDS["mute"])
    assert card.atr() is None and card.transmit(select(emv.PSE)) == b""
    assert EmvCard(CARDS["cup_debit"]).atr() == bytes.fromhex(CARDS["cup_debit"].atr)


def test_expired_card_reads_but_check_flags_it():
    card = EmvCard(CARDS["expired"])
    r = read(card)
    assert r.expiry == "2001" and r.cid == 0x80
    tvr = tlv.find(r.field55, 0x95)
    assert tvr is not None and tvr[1] & 0x40 and tvr[0] & 0x80  # expired; no ODA performed
    chk = check_with(EmvCard(CARDS["expired"]).transmit, card.atr(), today=TODAY)
    assert chk.problems == ["expired (2001)"] and chk.masked_pan == "622202*********1233"
    assert chk.aids == ["A000000333010101"] and chk.atr == CARDS["expired"].atr.upper()


@pytest.mark.parametrize("name, problems", [
    ("cup_debit", []), ("visa_credit", []), ("mc_debit", []), ("mute", ["no ATR (mute)"]),
    ("magstripe_only", ["no ATR (mute)"]),  # no chip: nothing answers the reset
])
def test_check_with(name, problems):
    card = EmvCard(CARDS[name])
    chk = check_with(card.transmit, card.atr(), today=TODAY)
    assert chk.problems == problems
    assert CARDS[name].pan not in repr(chk)


def test_stop_before_ac():
    card = EmvCard(CARDS["cup_credit"])
    r = read(card, stop_before_ac=True)
    assert r.field55 == b"" and r.cid == 0 and r.pan == CARDS["cup_credit"].pan


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

LIVE = [(n, cl) for n, p in sorted(CARDS.items()) for cl in INTERFACES
        if expected(p, cl) is None]
commands = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda h, d: h + bytes([len(d)]) + d + b"\x00",
              st.sampled_from([b"\x00\xa4\x04\x00", b"\x80\xa8\x00\x00", b"\x80\xae\x80\x00",
                               b"\x80\xae\x40\x00", b"\x00\xb2\x01\x0c", b"\x00\xb2\x02\x0c",
                               b"\x00\xb2\x01\x14", b"\x80\xca\x9f\x36", b"\x00\x82\x00\x00"]),
              st.one_of(st.binary(max_size=40),
                        st.sampled_from([emv.PSE, emv.PPSE, bytes.fromhex("A000000333010101"),
                                         bytes.fromhex("A0000000041010"), b"\x83\x00",
                                         bytes.fromhex("8321") + bytes(33), bytes(33),
                                         bytes(66), bytes(10)]))),
)


@settings(max_examples=300)
@given(st.sampled_from(LIVE), st.lists(commands, max_size=12))
def test_fuzz_transmit_always_answers_with_a_status_word(live, cmds):
    name, contactless = live
    card = EmvCard(CARDS[name])
    card.power_up(contactless=contactless)
    for c in cmds:
        r = card.transmit(c)
        assert len(r) >= 2 and sw(r) in VALID_SW


@settings(max_examples=200)
@given(st.sampled_from(LIVE), st.data())
def test_fuzz_kernel_against_corrupted_cards(live, data):
    """Whatever a (broken) card answers, the kernel returns or raises CardReadError."""
    name, contactless = live
    card = EmvCard(CARDS[name])
    card.power_up(contactless=contactless)

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
        tx = begin(corrupt, contactless=contactless, amount_minor=1, unpredictable=UN, when=TODAY)
        if tx.needs_completion:
            tx.complete(data.draw(st.sampled_from(["00", "05", None])),
                        data.draw(st.binary(max_size=16)))
    except CardReadError as e:
        assert CARDS[name].pan not in str(e)
