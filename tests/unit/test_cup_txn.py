"""CUP financial message builders (rig.iso8583.cup_txn), checked with the independent codec."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.core.errors import ProtocolError
from rig.iso8583 import cup_txn as txn
from rig.iso8583 import frame, get_dialect
from rig.iso8583.cup_txn import SettlementTotals
from tests import cup_reference as ref

CUP = get_dialect("cup")
MAK = bytes.fromhex("1122334455667788") + bytes(8)
PAN = "6222021234567890128"
TRACK2 = f"{PAN}=30122200000000000"
WHEN = datetime(2024, 5, 6, 7, 8, 9)
TERM: dict[str, Any] = {"terminal_id": "10000001", "merchant_id": "898310048990001",
                        "batch": 7}
CARD: dict[str, Any] = {"pan": PAN, "expiry": "3012", "pan_sequence": "01",
                        "track2": TRACK2, "field55": bytes.fromhex("9F2608") + bytes(8)}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sale(**kw: Any) -> dict[str, Any]:
    return txn.sale_request(**{"stan": 12, **TERM, "amount_minor": 100, "entry_mode": "chip",
                               **CARD, **kw})


def requests() -> dict[str, dict[str, Any]]:
    s = sale()
    return {
        "sale": s,
        "preauth": txn.preauth_request(stan=13, **TERM, amount_minor=2500, entry_mode="tap",
                                       **CARD),
        "balance": txn.balance_request(stan=14, **TERM, entry_mode="swipe", track2=TRACK2),
        "void": txn.void_request(stan=15, **TERM, amount_minor=100, entry_mode="chip",
                                 original_stan=12, original_rrn="000000000123",
                                 original_auth_code="123456", **CARD),
        "reversal": txn.reversal_request(s),
        "settlement": txn.settlement_request(stan=16, **TERM,
                                             totals=SettlementTotals(2, 350, 0, 0),
                                             operator="01"),
    }


def ref_parse(msg: dict[str, Any], mak: bytes | None = MAK, reply: bool = False) -> ref.Frame:
    return ref.parse_frame(frame(CUP.encode(msg, mak=mak)), reply=reply)


# --- requests -------------------------------------------------------------------------------

def test_sale_fields_and_packing_match_the_reference() -> None:
    f = ref_parse(sale())
    assert f.mti == "0200"
    assert sorted(f.fields) == [2, 3, 4, 11, 14, 22, 23, 25, 35, 41, 42, 49, 55, 60, 64]
    assert f.fields[2] == PAN and f.fields[3] == "000000" and f.fields[4] == "000000000100"
    assert f.fields[11] == "000012" and f.fields[14] == "3012" and f.fields[23] == "001"
    assert f.fields[22] == "0510" and f.fields[25] == "00" and f.fields[49] == "156"
    assert f.fields[35] == TRACK2.replace("=", "D")
    assert f.fields[60] == "22" + "000007" + "000" + "6" + "0"


@pytest.mark.parametrize(("mode", "pin", "wire"), [
    ("chip", "1", "0510"), ("swipe", "1", "0210"), ("tap", "1", "0710"), ("chip", "2", "0520")])
def test_field22_is_sent_left_aligned_as_n4(mode: str, pin: str, wire: str) -> None:
    msg = sale(entry_mode=mode, pin_capability=pin)
    assert msg["22"] == wire[:3]
    body = CUP.encode(msg)
    assert bytes.fromhex(wire) in body
    assert ref_parse(msg, mak=None).fields[22] == wire
    assert txn.entry_mode_of(CUP.decode(body)) == mode


@pytest.mark.parametrize("kind", ["sale", "preauth", "balance", "void", "reversal", "settlement"])
def test_round_trip_mac_and_kind(kind: str) -> None:
    msg = requests()[kind]
    body = CUP.encode(msg, mak=MAK)
    back = CUP.decode(body)
    assert {k: v for k, v in back.items() if k != "64"} == msg
    assert CUP.verify_mac(body, MAK)
    assert ref.cup_mac(MAK[:8], body[11:-8]) == body[-8:]  # MTI .. 63, bit 64 set
    assert not CUP.verify_mac(body, bytes(16))
    tampered = bytearray(body)
    tampered[body.index(b"10000001") + 7] ^= 0x01  # "10000001" -> "10000000"
    assert not CUP.verify_mac(bytes(tampered), MAK)
    assert txn.txn_kind(back) == kind
    txn.check_financial(back)


def test_request_specific_fields() -> None:
    r = requests()
    assert (r["preauth"]["t"], r["preauth"]["3"], r["preauth"]["25"]) == ("0100", "030000", "06")
    assert r["preauth"]["60"][:2] == "10" and r["preauth"]["22"] == "071"
    bal = r["balance"]
    assert (bal["t"], bal["3"]) == ("0200", "310000") and "4" not in bal and "2" not in bal
    assert bal["60"][:2] == "01" and txn.card_pan(bal) == PAN and txn.card_expiry(bal) == "3012"
    void = r["void"]
    assert (void["3"], void["61"], void["37"], void["38"]) == (
        "200000", "000007000012", "000000000123", "123456")
    assert void["60"][:2] == "23" and txn.original_of(void) == ("000007", "000012")
    assert txn.void_request(stan=1, **TERM, amount_minor=1, entry_mode="chip", pan=PAN,
                            original_stan=9, original_batch=6)["61"] == "000006000009"


def test_reversal_keeps_the_original_and_drops_secrets() -> None:
    original = sale(stan=44)
    original.update({"26": "12", "52": bytes(8), "53": "2600000000000000"})
    rev = txn.reversal_request(original, reason_rc="06")
    assert rev["t"] == "0400" and rev["39"] == "06" and rev["11"] == "000044"
    assert rev["60"] == original["60"] and rev["55"] == original["55"]
    for f in ("26", "35", "52", "53", "64"):
        assert f not in rev
    swiped = txn.sale_request(stan=1, **TERM, amount_minor=5, entry_mode="swipe", track2=TRACK2)
    rev2 = txn.reversal_request(swiped)
    assert (rev2["2"], rev2["14"], rev2["39"]) == (PAN, "3012", "98")
    with pytest.raises(ProtocolError):
        txn.reversal_request(requests()["settlement"])


def test_settlement_field48_layout() -> None:
    s = requests()["settlement"]
    assert s["t"] == "0500" and s["60"] == "00000007201" and s["63"] == "01 "
    f48 = s["48"]
    assert len(f48) == 62
    assert f48[:31] == "002" + "000000000350" + "000" + "000000000000" + "0"
    assert f48[31:] == "0" * 31
    assert txn.parse_totals(f48) == (SettlementTotals(2, 350), SettlementTotals())
    assert txn.parse_totals(f48[:31]) == (SettlementTotals(2, 350), SettlementTotals())
    f = ref_parse(s)
    assert sorted(f.fields) == [11, 41, 42, 48, 49, 60, 63, 64]
    with pytest.raises(ProtocolError):
        txn.parse_totals("12x")


@pytest.mark.parametrize("bad", [
    {"entry_mode": "keyed"}, {"pin_capability": "9"}, {"amount_minor": -1},
    {"amount_minor": 10**12}, {"stan": 1_000_000}, {"pan": None, "track2": None},
    {"pan": "12ab"}, {"expiry": "12345"}])
def test_builders_reject_bad_input(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        sale(**bad)


def test_check_financial_rejects_misshapen_messages() -> None:
    no_proc = {k: v for k, v in sale().items() if k != "3"}
    with pytest.raises(ProtocolError, match="field 3"):
        txn.check_financial(no_proc)
    bad_settle = {**requests()["settlement"], "60": "00000007003"}
    with pytest.raises(ProtocolError, match="60.3"):
        txn.check_financial(bad_settle)
    assert txn.txn_kind({**sale(), "t": "0220"}) is None
    assert txn.txn_kind({"t": "0800"}) is None


# --- responses ------------------------------------------------------------------------------

def test_sale_response_echoes_and_adds() -> None:
    req = CUP.decode(CUP.encode(sale(tpdu=bytes.fromhex("6000031234")), mak=MAK))
    rsp = txn.txn_response(req, rc="00", rrn="000000000777", when=WHEN, auth_code="654321")
    f = ref_parse(rsp, reply=True)
    assert f.mti == "0210" and f.tpdu == bytes.fromhex("6012340003")
    assert f.header[2] & 0x0F == 0
    assert sorted(f.fields) == [3, 4, 11, 12, 13, 22, 25, 32, 37, 38, 39, 41, 42, 49, 60, 64]
    assert (f.fields[12], f.fields[13]) == ("070809", "0506")
    assert (f.fields[37], f.fields[38], f.fields[39]) == ("000000000777", "654321", "00")
    assert f.fields[4] == req["4"] and f.fields[60] == req["60"]
    body = CUP.encode(rsp, mak=MAK)
    assert CUP.verify_mac(body, MAK)


def test_declined_and_mac_error_responses() -> None:
    req = sale()
    declined = txn.txn_response(req, rc="51", rrn="1" * 12, when=WHEN, auth_code="123456")
    assert "38" not in declined and declined["39"] == "51"
    a0 = txn.txn_response(req, rc="A0", rrn="1" * 12, when=WHEN, follow_up=3)
    f = ref.parse_frame(frame(CUP.encode(a0)))  # no MAC
    assert 64 not in f.fields and f.header[2] & 0x0F == 3 and f.fields[39] == "A0"
    with pytest.raises(ProtocolError):
        txn.txn_response(req, rc="0", rrn="1" * 12, when=WHEN)


def test_balance_field54() -> None:
    req = requests()["balance"]
    rsp = txn.txn_response(req, rc="00", rrn="1" * 12, when=WHEN, auth_code="000001",
                           balance_minor=12345)
    assert rsp["54"] == "1002156C000000012345"
    assert ref_parse(rsp, reply=True).fields[54] == "1002156C000000012345"
    assert txn.balance_of(rsp) == 12345
    assert txn.parse_balance(txn.balance_field(-5)) == -5
    assert txn.balance_field(-5)[7] == "D"
    with pytest.raises(ProtocolError):
        txn.parse_balance("1002156X000000000001")


@pytest.mark.parametrize("kind,mti", [("preauth", "0110"), ("reversal", "0410"),
                                      ("void", "0210")])
def test_response_mtis(kind: str, mti: str) -> None:
    req = requests()[kind]
    rsp = txn.txn_response(req, rc="00", rrn="1" * 12, when=WHEN, auth_code="000001")
    assert rsp["t"] == mti
    assert "2" not in rsp and "35" not in rsp and "55" not in rsp
    ref_parse(rsp, reply=True)


@pytest.mark.parametrize("balanced,code", [(True, "1"), (False, "2")])
def test_settlement_response(balanced: bool, code: str) -> None:
    req = requests()["settlement"]
    rsp = txn.settlement_response(req, balanced=balanced, rrn="1" * 12, when=WHEN)
    f = ref_parse(rsp, reply=True)
    assert f.mti == "0510" and f.fields[39] == "00"
    assert sorted(f.fields) == [11, 12, 13, 32, 37, 39, 41, 42, 48, 49, 60, 64]
    f48 = f.text(48)
    assert f48[30] == code and f48[61] == code and f48[:30] == req["48"][:30]
    assert txn.settlement_result(rsp) == code


# --- property tests -------------------------------------------------------------------------

_digits = st.text("0123456789", min_size=1, max_size=6)


@FUZZ
@given(stan=st.integers(0, 999_999), amount=st.integers(0, 10**12 - 1),
       batch=st.integers(0, 999_999), mode=st.sampled_from(["chip", "swipe", "tap"]),
       pan=st.from_regex(r"\A[0-9]{13,19}\Z"), exp=st.from_regex(r"\A[0-9]{4}\Z"),
       seq=st.none() | st.from_regex(r"\A[0-9]{2}\Z"),
       icc=st.none() | st.binary(min_size=1, max_size=255), with_track=st.booleans(),
       kind=st.sampled_from(["sale", "preauth", "void"]))
def test_random_requests_round_trip(stan: int, amount: int, batch: int, mode: str, pan: str,
                                    exp: str, seq: str | None, icc: bytes | None,
                                    with_track: bool, kind: str) -> None:
    card: dict[str, Any] = {"pan": pan, "expiry": exp, "pan_sequence": seq, "field55": icc,
                            "track2": f"{pan}={exp}220" if with_track else None}
    common: dict[str, Any] = {"stan": stan, "terminal_id": "T0000001",
                              "merchant_id": "M00000000000001", "batch": batch,
                              "amount_minor": amount, "entry_mode": mode, **card}
    if kind == "sale":
        msg = txn.sale_request(**common)
    elif kind == "preauth":
        msg = txn.preauth_request(**common)
    else:
        msg = txn.void_request(**common, original_stan=stan)
    body = CUP.encode(msg, mak=MAK)
    back = CUP.decode(body)
    assert {k: v for k, v in back.items() if k != "64"} == msg
    assert CUP.verify_mac(body, MAK)
    assert txn.card_pan(back) == pan and txn.amount_of(back) == amount
    ref.parse_frame(frame(body), reply=False)
    rev = CUP.encode(txn.reversal_request(back), mak=MAK)
    assert CUP.decode(rev)["11"] == msg["11"]


def _samples() -> list[bytes]:
    out = [CUP.encode(m, mak=MAK) for m in requests().values()]
    bal = txn.txn_response(requests()["balance"], rc="00", rrn="1" * 12, when=WHEN,
                           auth_code="000001", balance_minor=99)
    out.append(CUP.encode(bal, mak=MAK))
    out.append(CUP.encode(txn.settlement_response(requests()["settlement"], balanced=True,
                                                  rrn="1" * 12, when=WHEN), mak=MAK))
    return out


SAMPLES = _samples()


@FUZZ
@given(idx=st.integers(0, len(SAMPLES) - 1), data=st.data())
def test_mutated_financial_messages_raise_only_protocol_error(idx: int,
                                                              data: st.DataObject) -> None:
    body = bytearray(SAMPLES[idx])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del body[pos:pos + data.draw(st.integers(1, 8))]
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        msg = CUP.decode(bytes(body))
    except ProtocolError:
        return
    # whatever decodes can be read and re-encoded without anything but ProtocolError
    for reader in (txn.txn_kind, txn.card_pan, txn.card_expiry, txn.amount_of, txn.batch_of,
                   txn.original_of, txn.entry_mode_of, txn.settlement_result):
        reader(msg)
    for call in (lambda: txn.check_financial(msg), lambda: txn.balance_of(msg),
                 lambda: txn.parse_totals(str(msg.get("48", ""))),
                 lambda: CUP.verify_mac(bytes(body), MAK),
                 lambda: CUP.encode(msg, mak=MAK)):
        try:
            call()
        except ProtocolError:
            pass
