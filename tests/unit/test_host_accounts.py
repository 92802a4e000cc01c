"""The host's balances (Accounts), ledger and transaction rules, without sockets."""

from __future__ import annotations

import threading
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from rig.cards.profiles import load_cards
from rig.config import HostConfig, HostOverride
from rig.core.redact import mask_pan
from rig.host import rules as r
from rig.host.accounts import Accounts, Ledger, TxnRecord, resolve_cards_dir
from rig.host.state import HostStates
from rig.host.txn import TxnOutcome, TxnProcessor, request_event
from rig.iso8583 import cup_txn as txn
from rig.iso8583 import get_dialect
from rig.iso8583.dialects import Message
from rig.iso8583.keys import WorkingKeys
from rig.timeline.events import EventKind

CARDS = load_cards(Path(__file__).resolve().parents[2] / "configs" / "cards")
CUP = get_dialect("cup")
TODAY = date(2026, 1, 15)
KEYS = WorkingKeys(pik=bytes(range(16)), mak=bytes.fromhex("1122334455667788") + bytes(8))


# --- Accounts -------------------------------------------------------------------------------

def test_accounts_debit_hold_release() -> None:
    acc = Accounts({"c": CARDS["cup_debit"]})
    assert acc.balance("c") == acc.available("c") == 500_000
    assert acc.hold("c", 200_000) and acc.available("c") == 300_000
    assert not acc.debit("c", 300_001) and acc.balance("c") == 500_000
    assert acc.debit("c", 300_000) and acc.available("c") == 0
    assert not acc.hold("c", 1)
    assert acc.hold("c", 1, force=True) and acc.held("c") == 200_001
    acc.release("c", 10**9)
    assert acc.held("c") == 0
    acc.credit("c", 5)
    assert acc.snapshot() == {"c": (200_005, 0)}
    assert acc.debit("c", 10**9, force=True) and acc.balance("c") < 0
    assert CARDS["cup_debit"].pan not in repr(acc)


def test_accounts_by_pan_and_from_dir() -> None:
    acc = Accounts.from_dir("configs/cards")
    assert len(acc) == len(CARDS)
    card = acc.by_pan(CARDS["visa_credit"].pan)
    assert card is not None and card.name == "visa_credit"
    assert acc.by_pan("4000000000000002") is None
    assert resolve_cards_dir("configs/cards").is_dir()
    assert len(Accounts.from_dir("/nonexistent/cards")) == 0


def test_accounts_are_thread_safe() -> None:
    acc = Accounts({"c": CARDS["cup_debit"]})  # 500000
    ok: list[bool] = []

    def spend() -> None:
        for _ in range(2000):
            ok.append(acc.debit("c", 100))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ok.count(True) == 5000 and acc.balance("c") == 0


# --- Ledger ---------------------------------------------------------------------------------

def test_ledger_claim_transition_totals() -> None:
    led = Ledger()
    key = ("T1", "000001", "000001")
    assert led.claim(key) and not led.claim(key)
    rec = TxnRecord(key, "sale", "00", "approved", "c", CARDS["cup_debit"].pan, 100)
    led.put(rec)
    assert CARDS["cup_debit"].pan not in repr(rec) and mask_pan(rec.pan or "") in repr(rec)
    led.put(TxnRecord(("T1", "000001", "000002"), "sale", "51", "declined", "c", None, 7))
    led.put(TxnRecord(("T1", "000001", "000003"), "preauth", "00", "approved", "c", None, 9))
    led.put(TxnRecord(("T1", "000002", "000001"), "sale", "00", "approved", "c", None, 11))
    assert led.totals("T1", "000001") == txn.SettlementTotals(1, 100)
    assert led.reverse(key) == rec
    assert led.reverse(key) is None  # once only
    assert led.totals("T1", "000001") == txn.SettlementTotals()
    assert led.transition(("T9", "0", "0"), "approved", "voided") is None
    assert len(led.records("T1")) == 4 and len(led.records(batch="000002")) == 1
    assert led.settled("T1", "000001") is None
    led.settle("T1", "000001", True)
    assert led.settled("T1", "000001") is True


# --- rules ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("yymm", "passed"), [
    ("2512", True), ("2601", False), ("2602", False), ("2600", True), ("2613", True),
    ("ab12", True), ("9912", False)])
def test_expiry_passed(yymm: str, passed: bool) -> None:
    assert r.expiry_passed(yymm, TODAY) is passed


def test_card_rc() -> None:
    assert r.card_rc(None, "3012", TODAY) == "14"
    hidden = CARDS["cup_debit"].model_copy(update={"known_to_host": False})
    assert r.card_rc(hidden, "3012", TODAY) == "14"
    assert r.card_rc(CARDS["expired"], None, TODAY) == "54"
    assert r.card_rc(CARDS["cup_debit"], "2001", TODAY) == "54"  # as sent
    assert r.card_rc(CARDS["cup_debit"], "3012", TODAY) is None
    assert r.card_rc(CARDS["cup_debit"], None, TODAY) is None


def test_overrides_first_match_runtime_first() -> None:
    host = HostConfig(overrides=[HostOverride(card="a", rc="05"),
                                 HostOverride(amount_minor=5, rc="91"),
                                 HostOverride(terminal="T2", card="a", rc="55")])
    rules = r.ResponseRules(host)
    assert rules.txn_rc("T2", "a", 5) == "05"
    assert rules.txn_rc("T1", "b", 5) == "91"
    assert rules.txn_rc("T1", "b", 6) is None
    assert rules.txn_rc("T1", None, None) is None
    rules.add_override(HostOverride(terminal="T1", rc="96"))
    assert rules.txn_rc("T1", "a", 5) == "96"
    rules.clear()
    assert rules.txn_rc("T1", "b", 6) is None
    with pytest.raises(ValueError):
        HostOverride(rc="x")


def test_mac_ok() -> None:
    body = CUP.encode(_sale(), mak=KEYS.mak)
    assert r.mac_ok(CUP, body, KEYS)
    assert not r.mac_ok(CUP, body, None)
    assert not r.mac_ok(CUP, CUP.encode(_sale()), KEYS)  # no MAC field
    assert not r.mac_ok(CUP, body, WorkingKeys(pik=bytes(16), mak=bytes(16)))
    assert not r.mac_ok(CUP, b"garbage", KEYS)


# --- TxnProcessor (no sockets) --------------------------------------------------------------

def _sale(card: str = "cup_debit", amount: int = 100, stan: int = 1, **kw: Any) -> Message:
    c = CARDS[card]
    return txn.sale_request(stan=stan, terminal_id="10000001", merchant_id="898310048990001",
                            batch=1, amount_minor=amount, entry_mode="chip", pan=c.pan,
                            expiry=c.expiry, **kw)


class Proc:
    def __init__(self, overrides: list[HostOverride] | None = None) -> None:
        self.states = HostStates()
        self.states.signed_on("T1", KEYS, batch="000001", key_mode="003", mono_ns=0)
        self.accounts = Accounts(CARDS)
        self.ledger = Ledger()
        rrn = iter(range(1, 10**6))
        self.p = TxnProcessor(CUP, self.states, r.ResponseRules(HostConfig(
            overrides=overrides or [])), self.accounts, self.ledger,
            lambda: f"{next(rrn):012d}", today=lambda: TODAY,
            clock=lambda: datetime(2026, 1, 15, 10, 0, 0))

    def send(self, msg: Message, terminal: str | None = "T1",
             mak: bytes | None = None) -> TxnOutcome:
        return self.p.handle(msg, CUP.encode(msg, mak=mak or KEYS.mak), terminal)


def test_processor_sale_and_outcome_data() -> None:
    pr = Proc()
    out = pr.send(_sale(amount=250))
    assert out.rc == "00" and out.mak == KEYS.mak and out.event is EventKind.AUTH_RSP
    assert out.reply["38"] == out.data["auth_code"] and out.data["rrn"] == out.reply["37"]
    assert out.data["card"] == "cup_debit" and out.data["txn"] == "sale"
    assert pr.accounts.balance("cup_debit") == 500_000 - 250
    body = CUP.encode(out.reply, mak=out.mak)
    assert CUP.verify_mac(body, KEYS.mak)


def test_processor_check_order() -> None:
    pr = Proc([HostOverride(card="expired", rc="00"), HostOverride(amount_minor=13, rc="91")])
    assert pr.send(_sale(stan=1), terminal=None).rc == "03"
    out = pr.send(_sale(stan=2), mak=bytes(16))
    assert out.rc == "A0" and out.mak is None and out.reply["header"][2] & 0x0F == 3
    assert pr.send(_sale(stan=2)).rc == "00"  # an A0 does not burn the STAN
    assert pr.send(_sale(stan=2)).rc == "94"
    assert pr.send(_sale(stan=3, amount=0)).rc == "13"
    assert pr.send(_sale(stan=4, amount=13)).rc == "91"  # override before funds and card
    assert pr.send(_sale("expired", stan=5)).rc == "00"  # a forced 00 skips the card checks
    assert pr.accounts.balance("expired") == CARDS["expired"].balance_minor - 100
    assert pr.send(_sale("cup_debit", stan=6, amount=10**9)).rc == "51"
    no_pan = {k: v for k, v in _sale(stan=7).items() if k != "2"}
    assert pr.send(no_pan).rc == "30"
    pr.states.signed_off("T1")
    assert pr.send(_sale(stan=8)).data["error"] == "not signed on"


def test_processor_void_of_reversed_sale_and_reversal_of_void() -> None:
    pr = Proc()
    s = _sale(stan=1, amount=70)
    assert pr.send(s).rc == "00"
    c = CARDS["cup_debit"]
    void = txn.void_request(stan=2, terminal_id="10000001", merchant_id="898310048990001",
                            batch=1, amount_minor=70, entry_mode="chip", pan=c.pan,
                            original_stan=1)
    assert pr.send(void).rc == "00"
    assert pr.ledger.get(("T1", "000001", "000001")).status == "voided"  # type: ignore[union-attr]
    out = pr.send(txn.reversal_request(void))
    assert out.rc == "00" and out.data["outcome"] == "reversed"
    assert out.event is EventKind.REVERSAL_RSP
    assert pr.ledger.get(("T1", "000001", "000001")).status == "approved"  # type: ignore[union-attr]
    assert pr.accounts.balance("cup_debit") == 500_000 - 70
    assert pr.send(txn.reversal_request(s)).data["outcome"] == "reversed"
    assert pr.accounts.balance("cup_debit") == 500_000
    other = dict(void, **{"11": "000003"})
    assert pr.send(other).rc == "12"  # the sale was reversed
    other_card = txn.reversal_request(_sale("cup_credit", stan=1, amount=70))
    assert pr.send(other_card).data["outcome"] == "mismatch"


def test_processor_settlement() -> None:
    pr = Proc()
    pr.send(_sale(stan=1, amount=10))
    pr.send(_sale(stan=2, amount=20))
    settle = txn.settlement_request(stan=3, terminal_id="10000001",
                                    merchant_id="898310048990001", batch=1,
                                    totals=txn.SettlementTotals(1, 10),
                                    foreign=txn.SettlementTotals(1, 20))
    out = pr.send(settle)
    assert out.event is EventKind.SETTLE_RSP and out.data["result"] == "1"
    assert txn.settlement_result(out.reply) == "1"
    bad = dict(settle, **{"48": "1"})
    assert pr.send(bad).rc == "30"


def test_request_event_data_is_redacted() -> None:
    c = CARDS["cup_debit"]
    msg = txn.sale_request(stan=1, terminal_id="10000001", merchant_id="898310048990001",
                           batch=1, amount_minor=5, entry_mode="swipe", track2=c.track2,
                           field55=b"\x9f\x26\x08" + bytes(8))
    kind, data = request_event(msg)
    assert kind is EventKind.AUTH_REQ and data["pan"] == mask_pan(c.pan)
    assert c.pan not in repr(data) and "55" not in data and data["entry"] == "021"
    kind, data = request_event(txn.reversal_request(msg))
    assert kind is EventKind.REVERSAL_REQ and data["reason"] == "98" and c.pan not in repr(data)
    kind, data = request_event({"t": "0500", "11": "000001", "48": "x"})
    assert kind is EventKind.SETTLE_REQ and data["totals"] == "invalid"


# --- the chip cryptogram at the issuer --------------------------------------------------

def _chip_field55(card: str, amount: int, contactless: bool = False) -> bytes:
    from rig.cards.emv import EmvCard
    from rig.cards.kernel import read_card

    chip = EmvCard(CARDS[card])
    chip.power_up(contactless=contactless)
    return read_card(chip.transmit, contactless=contactless, amount_minor=amount,
                     unpredictable=b"\x11\x22\x33\x44", when=TODAY).field55


def _chip_sale(card: str, amount: int, stan: int, contactless: bool = False,
               field55: bytes | None = None) -> Message:
    c = CARDS[card]
    return _sale(card, amount, stan, pan_sequence=c.pan_sequence,
                 field55=field55 if field55 is not None else _chip_field55(card, amount, contactless))


@pytest.mark.parametrize("card", ["cup_debit", "cup_credit", "visa_credit", "mc_debit"])
def test_processor_verifies_the_arqc_and_answers_with_an_arpc(card: str) -> None:
    from rig.cards import tlv
    from rig.cards.brands import BRANDS

    pr = Proc()
    for stan, contactless in ((1, False), (2, True)):
        out = pr.send(_chip_sale(card, 120, stan, contactless))
        assert out.rc == "00" and out.data["arqc"] == "ok", (card, contactless)
        iad = tlv.find(out.reply["55"], 0x91)
        assert iad is not None and len(iad) == (10 if BRANDS[CARDS[card].scheme].arpc_method == 1
                                                else 8)
        assert "55" in CUP.decode(CUP.encode(out.reply, mak=out.mak))  # 55 travels in a 0210


def test_processor_declines_a_card_with_another_key_a7() -> None:
    pr = Proc()
    out = pr.send(_chip_sale("wrong_key", 100, 1))
    assert out.rc == "A7" and out.data["arqc"] == "failed" and "55" not in out.reply
    assert pr.accounts.balance("wrong_key") == CARDS["wrong_key"].balance_minor
    # a tampered amount fails the same way (the cryptogram covers 9F02)
    f55 = _chip_field55("cup_debit", 100).replace(bytes.fromhex("9F0206000000000100"),
                                                  bytes.fromhex("9F0206000000000001"))
    assert pr.send(_chip_sale("cup_debit", 1, 2, field55=f55)).rc == "A7"
    # swiped, the same card is not checked (no cryptogram); unknown cards stay 14
    swipe = txn.sale_request(stan=3, terminal_id="10000001", merchant_id="898310048990001",
                             batch=1, amount_minor=5, entry_mode="swipe",
                             track2=CARDS["wrong_key"].track2)
    out = pr.send(swipe)
    assert out.rc == "00" and out.data["arqc"] == "absent"


def test_processor_partial_or_malformed_field55() -> None:
    pr = Proc([HostOverride(card="wrong_key", rc="00")])
    out = pr.send(_sale(stan=1, field55=bytes.fromhex("9F2608") + bytes(8)))
    assert out.rc == "00" and out.data["arqc"] == "unverifiable" and "55" not in out.reply
    assert pr.send(_sale(stan=2, field55=b"\x9f\x26\x09\x00")).rc == "30"
    forced = pr.send(_chip_sale("wrong_key", 100, 3))  # a forced 00 skips the check
    assert forced.rc == "00" and forced.data["arqc"] == "failed" and "55" not in forced.reply
