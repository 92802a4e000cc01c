"""Financial transactions at the acquirer host over real TCP: a CUP terminal client signs on,
takes the MAK from field 62, and sends MAC'd sales, voids, reversals, settlements."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.cards.profiles import CardProfile, load_cards
from rig.config import HostOverride, LabConfig
from rig.core.clock import ClockSource
from rig.core.redact import mask_pan
from rig.host import AcquirerHost
from rig.iso8583 import cup, decode_field62, frame, get_dialect
from rig.iso8583 import cup_txn as txn
from rig.iso8583.dialects import Message
from rig.timeline.events import EventKind, ListSink
from tests import cup_reference as ref
from tests.labcfg import virtual_config

from .hostclient import connect, exchange, wait_event, wait_events

pytestmark = pytest.mark.integration

CUP = get_dialect("cup")
CARDS_DIR = Path(__file__).resolve().parents[2] / "configs" / "cards"
CARDS = load_cards(CARDS_DIR)
UNKNOWN_PAN = "6222029999999999996"  # Luhn-valid, in no profile
OVERRIDES = [HostOverride(amount_minor=4242, rc="91"),
             HostOverride(card="visa_credit", rc="05"),
             HostOverride(terminal="T3", card="cup_credit", amount_minor=777, rc="55")]


HIDDEN = """name: hidden
scheme: unionpay
pan: "6222021234567895234"
expiry: "3012"
known_to_host: false
"""


@pytest.fixture
def cfg(tmp_path: Path) -> LabConfig:
    cards = tmp_path / "cards"
    cards.mkdir()
    for src in CARDS_DIR.glob("*.yaml"):
        (cards / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    (cards / "hidden.yaml").write_text(HIDDEN, encoding="utf-8")
    base = virtual_config(tmp_path)
    host = base.host.model_copy(update={"overrides": OVERRIDES, "processing_ms": 0.0,
                                        "cards_dir": str(cards)})
    return base.model_copy(update={"host": host})


class Terminal:
    """A minimal CUP terminal: signs on, MACs its requests, checks the replies' MACs."""

    def __init__(self, host: AcquirerHost, cfg: LabConfig, name: str) -> None:
        self.cfg = cfg.terminals[name]
        self.sock = connect(host.address)
        self.stan = 0
        self.batch = 1
        self.mak: bytes | None = None
        self.before = self.after = 0
        self.raw = b""

    def close(self) -> None:
        self.sock.close()

    def next_stan(self) -> int:
        self.stan += 1
        return self.stan

    def signon(self) -> None:
        t = self.cfg
        reply = self.call(cup.signon_request(stan=self.next_stan(), terminal_id=t.terminal_id,
                                             merchant_id=t.merchant_id, batch=self.batch,
                                             key_mode=t.key_mode, operator="01"), mac=False)
        assert reply["39"] == "00"
        keys = decode_field62(bytes.fromhex(t.tmk), reply["62"], t.key_mode)
        self.mak = keys.mak

    def call(self, msg: Message, mac: bool = True, mak: bytes | None = None) -> Message:
        body = CUP.encode(msg, mak=(mak or self.mak) if mac else None)
        self.before, self.raw, self.after = exchange(self.sock, frame(body))
        ref.parse_frame(self.raw)  # reply rules of DESIGN §1, independently
        reply = CUP.decode(self.raw[2:])
        if reply.get("39") not in ("A0", "03") and reply["t"] != "0810":
            assert self.mak is not None and CUP.verify_mac(self.raw[2:], self.mak)
        return reply

    def ids(self) -> dict[str, Any]:
        return {"terminal_id": self.cfg.terminal_id, "merchant_id": self.cfg.merchant_id,
                "batch": self.batch}

    def card(self, card: CardProfile | str, mode: str = "chip") -> dict[str, Any]:
        c = CARDS[card] if isinstance(card, str) else card
        if mode == "swipe":
            return {"entry_mode": mode, "track2": c.track2}
        return {"entry_mode": mode, "pan": c.pan, "expiry": c.expiry, "pan_sequence": "01",
                "field55": bytes.fromhex("9F2608") + bytes(8)}

    def sale_msg(self, card: CardProfile | str, amount: int, mode: str = "chip",
                 stan: int | None = None) -> Message:
        return txn.sale_request(stan=stan or self.next_stan(), **self.ids(),
                                amount_minor=amount, **self.card(card, mode))

    def sale(self, card: CardProfile | str, amount: int, mode: str = "chip") -> Message:
        return self.call(self.sale_msg(card, amount, mode))


@pytest.fixture
def t1(host: AcquirerHost, cfg: LabConfig) -> Iterator[Terminal]:
    term = Terminal(host, cfg, "T1")
    term.signon()
    yield term
    term.close()


def test_sale_approved_balance_moves_and_events(host: AcquirerHost, sink: ListSink,
                                                t1: Terminal) -> None:
    start = host.accounts.balance("cup_debit")
    reply = t1.sale("cup_debit", 100)
    f = ref.parse_frame(t1.raw)
    assert f.mti == "0210" and f.fields[39] == "00"
    assert len(f.text(38)) == 6 and f.text(38).isdigit()
    assert len(f.text(37)) == 12
    assert ref.cup_mac(t1.mak[:8], t1.raw[2 + 11:-8]) == f.binary(64)  # type: ignore[index]
    assert reply["11"] == "000002" and reply["4"] == "000000000100"
    assert host.accounts.balance("cup_debit") == start - 100

    req = wait_event(sink, lambda e: e.kind is EventKind.AUTH_REQ)
    rsp = wait_event(sink, lambda e: e.kind is EventKind.AUTH_RSP)
    assert req.clock is ClockSource.KERNEL and req.terminal == "T1" and req.source == "host"
    assert t1.before <= req.mono_ns <= t1.after  # the response event may follow the read
    assert req.mono_ns < rsp.mono_ns
    pan = CARDS["cup_debit"].pan
    assert req.data["pan"] == mask_pan(pan) == "622202*********0128"
    assert {k: req.data[k] for k in ("mti", "proc", "stan", "amount_minor", "entry")} == {
        "mti": "0200", "proc": "000000", "stan": "000002", "amount_minor": 100, "entry": "051"}
    assert rsp.data["rc"] == "00" and rsp.data["mti"] == "0210" and rsp.data["stan"] == "000002"
    assert rsp.data["auth_code"] == f.text(38) and rsp.data["rrn"] == f.text(37)


@pytest.mark.parametrize(("card", "amount", "rc"), [
    ("cup_debit", 500_001, "51"),  # over the balance
    ("expired", 100, "54"),
    ("visa_credit", 100, "05"),  # override by card
    ("mc_debit", 4242, "91"),  # override by amount
    ("cup_credit", 777, "00"),  # the T3-only override does not apply to T1
])
def test_declines(host: AcquirerHost, t1: Terminal, card: str, amount: int, rc: str) -> None:
    before = host.accounts.snapshot()
    reply = t1.sale(card, amount)
    assert reply["39"] == rc
    assert ("38" in reply) == (rc == "00")
    if rc != "00":
        assert host.accounts.snapshot() == before


def test_unknown_pan_and_card_unknown_to_host(host: AcquirerHost, t1: Terminal) -> None:
    unknown = CARDS["cup_debit"].model_copy(update={"pan": UNKNOWN_PAN})
    assert t1.sale(unknown, 100)["39"] == "14"
    hidden = host.accounts.by_pan("6222021234567895234")  # known_to_host: false
    assert hidden is not None and hidden.name == "hidden"
    assert t1.sale(hidden, 100)["39"] == "14"


def test_override_for_one_terminal(host: AcquirerHost, cfg: LabConfig) -> None:
    t3 = Terminal(host, cfg, "T3")
    t3.signon()
    try:
        assert t3.sale("cup_credit", 777)["39"] == "55"
        assert t3.sale("cup_credit", 778)["39"] == "00"
        host.rules.add_override(HostOverride(terminal="T3", rc="96"))
        assert t3.sale("cup_credit", 778)["39"] == "96"
    finally:
        t3.close()


def test_bad_mac_or_no_session_answers_a0_without_mac(host: AcquirerHost, cfg: LabConfig,
                                                      sink: ListSink, t1: Terminal) -> None:
    start = host.accounts.balance("cup_debit")
    reply = t1.call(t1.sale_msg("cup_debit", 100), mak=bytes(8))
    f = ref.parse_frame(t1.raw)
    assert reply["39"] == "A0" and 64 not in f.fields and f.header[2] & 0x0F == 3
    assert "38" not in reply
    t2 = Terminal(host, cfg, "T2")  # never signed on
    try:
        t2.mak = bytes(8)
        assert t2.sale("cup_debit", 100)["39"] == "A0"
    finally:
        t2.close()
    assert host.accounts.balance("cup_debit") == start
    rsp = wait_event(sink, lambda e: e.kind is EventKind.AUTH_RSP and e.data["rc"] == "A0")
    assert rsp.data["error"] == "bad MAC"
    # the terminal signs on again and goes on
    t1.signon()
    assert t1.sale("cup_debit", 100)["39"] == "00"


def test_unknown_terminal_gets_03(host: AcquirerHost, t1: Terminal) -> None:
    msg = t1.sale_msg("cup_debit", 100)
    msg["41"] = "99999999"
    assert t1.call(msg)["39"] == "03"


def test_swipe_uses_track2_pan(host: AcquirerHost, sink: ListSink, t1: Terminal) -> None:
    start = host.accounts.balance("cup_credit")
    assert t1.sale("cup_credit", 250, mode="swipe")["39"] == "00"
    assert host.accounts.balance("cup_credit") == start - 250
    req = wait_event(sink, lambda e: e.kind is EventKind.AUTH_REQ)
    assert req.data["pan"] == mask_pan(CARDS["cup_credit"].pan) and req.data["entry"] == "021"


def test_reversal_restores_once(host: AcquirerHost, sink: ListSink, t1: Terminal) -> None:
    start = host.accounts.balance("cup_debit")
    sale = t1.sale_msg("cup_debit", 300)
    assert t1.call(sale)["39"] == "00"
    assert host.accounts.balance("cup_debit") == start - 300
    rev = txn.reversal_request(sale)
    reply = t1.call(rev)
    assert reply["t"] == "0410" and reply["39"] == "00" and reply["11"] == sale["11"]
    assert host.accounts.balance("cup_debit") == start
    assert t1.call(rev)["39"] == "00"  # a retried reversal is answered, not applied twice
    assert host.accounts.balance("cup_debit") == start
    outcomes = [e.data["outcome"] for e in wait_events(sink, EventKind.REVERSAL_RSP, 2)]
    assert outcomes == ["reversed", "already"]
    req = wait_event(sink, lambda e: e.kind is EventKind.REVERSAL_REQ)
    assert req.clock is ClockSource.KERNEL and req.data["reason"] == "98"
    assert req.data["pan"] == mask_pan(CARDS["cup_debit"].pan)
    # a reversal of a declined sale or of one the host never saw moves nothing
    declined = t1.sale_msg("cup_debit", 10**9)
    assert t1.call(declined)["39"] == "51"
    assert t1.call(txn.reversal_request(declined))["39"] == "00"
    assert t1.call(txn.reversal_request(t1.sale_msg("cup_debit", 5)))["39"] == "00"
    assert host.accounts.balance("cup_debit") == start


def test_void_and_its_reversal(host: AcquirerHost, t1: Terminal) -> None:
    start = host.accounts.balance("cup_debit")
    sale = t1.sale_msg("cup_debit", 450)
    sold = t1.call(sale)
    void = txn.void_request(stan=t1.next_stan(), **t1.ids(), amount_minor=450,
                            original_stan=sale["11"], original_rrn=sold["37"],
                            original_auth_code=sold["38"], **t1.card("cup_debit"))
    voided = t1.call(void)
    assert voided["39"] == "00" and voided["3"] == "200000" and len(voided["38"]) == 6
    assert host.accounts.balance("cup_debit") == start
    again = dict(void, **{"11": f"{t1.next_stan():06d}"})
    assert t1.call(again)["39"] == "12"  # already voided
    assert t1.call(txn.reversal_request(void))["39"] == "00"  # the void is undone
    assert host.accounts.balance("cup_debit") == start - 450
    wrong = dict(void, **{"11": f"{t1.next_stan():06d}", "4": "000000000001"})
    assert t1.call(wrong)["39"] == "64"
    missing = dict(void, **{"11": f"{t1.next_stan():06d}", "61": "000001999999"})
    assert t1.call(missing)["39"] == "25"


def test_preauth_holds_and_balance_inquiry(host: AcquirerHost, t1: Terminal) -> None:
    card = CARDS["mc_debit"]
    start = host.accounts.balance("mc_debit")

    def inquiry() -> int:
        reply = t1.call(txn.balance_request(stan=t1.next_stan(), **t1.ids(),
                                            **t1.card(card, "tap")))
        assert reply["39"] == "00" and reply["54"][:7] == "1002156"
        assert "4" not in reply
        return txn.parse_balance(reply["54"])

    assert inquiry() == start
    pre = txn.preauth_request(stan=t1.next_stan(), **t1.ids(), amount_minor=1000,
                              **t1.card(card))
    reply = t1.call(pre)
    assert reply["t"] == "0110" and reply["39"] == "00" and reply["25"] == "06"
    assert host.accounts.held("mc_debit") == 1000 and host.accounts.balance("mc_debit") == start
    assert inquiry() == start - 1000
    over = txn.preauth_request(stan=t1.next_stan(), **t1.ids(), amount_minor=start,
                               **t1.card(card))
    assert t1.call(over)["39"] == "51"
    assert t1.call(txn.reversal_request(pre))["39"] == "00"
    assert inquiry() == start and host.accounts.held("mc_debit") == 0


def test_duplicate_stan(host: AcquirerHost, t1: Terminal) -> None:
    start = host.accounts.balance("cup_debit")
    first = t1.sale_msg("cup_debit", 100)
    assert t1.call(first)["39"] == "00"
    assert t1.call(t1.sale_msg("cup_debit", 100, stan=int(first["11"])))["39"] == "94"
    assert host.accounts.balance("cup_debit") == start - 100
    t1.batch = 2  # the same STAN in the next batch is a new transaction
    assert t1.call(t1.sale_msg("cup_debit", 100, stan=int(first["11"])))["39"] == "00"


def test_settlement_balanced_and_not(host: AcquirerHost, sink: ListSink,
                                     t1: Terminal) -> None:
    amounts = [100, 250, 999]
    sales = [t1.sale_msg("cup_credit", a) for a in amounts]
    for s in sales:
        assert t1.call(s)["39"] == "00"
    assert t1.call(txn.reversal_request(sales[2]))["39"] == "00"  # not in the totals
    assert t1.sale("visa_credit", 5)["39"] == "05"  # declined: not in the totals

    def settle(totals: txn.SettlementTotals) -> Message:
        return t1.call(txn.settlement_request(stan=t1.next_stan(), **t1.ids(), totals=totals))

    bad = settle(txn.SettlementTotals(3, 1349))
    assert bad["t"] == "0510" and bad["39"] == "00" and txn.settlement_result(bad) == "2"
    assert host.ledger.settled("T1", "000001") is False
    good = settle(txn.SettlementTotals(2, 350))
    assert txn.settlement_result(good) == "1" and good["48"][61] == "1"
    assert host.ledger.settled("T1", "000001") is True
    req = wait_event(sink, lambda e: e.kind is EventKind.SETTLE_REQ)
    assert req.clock is ClockSource.KERNEL and req.data["debit_count"] == 3
    rsps = wait_events(sink, EventKind.SETTLE_RSP, 2)
    assert [e.data["result"] for e in rsps] == ["2", "1"]
    assert rsps[1].data["host_debit_minor"] == 350


def test_unsupported_financial_request_gets_40(t1: Terminal) -> None:
    refund = dict(t1.sale_msg("cup_debit", 100), t="0220", **{"3": "200000"})
    reply = t1.call(refund)
    assert reply["t"] == "0230" and reply["39"] == "40"


def test_request_from_the_independent_encoder(host: AcquirerHost, t1: Terminal) -> None:
    """A sale packed by tests/cup_reference (as a real terminal would) is approved."""
    c = CARDS["cup_debit"]
    data = ref.encode_frame(
        bytes.fromhex("6000030000"), bytes.fromhex("603100310000"), "0200",
        {2: c.pan, 3: "000000", 4: "000000000123", 11: "000900", 14: c.expiry, 22: "0510",
         23: "001", 25: "00", 41: t1.cfg.terminal_id,
         42: t1.cfg.merchant_id, 49: "156", 60: "22000001000"},
        mak8=t1.mak[:8])  # type: ignore[index]
    _, raw, _ = exchange(t1.sock, data)
    f = ref.parse_frame(raw)
    assert f.fields[39] == "00" and f.fields[22] == "0510"
    assert ref.cup_mac(t1.mak[:8], raw[13:-8]) == f.binary(64)  # type: ignore[index]


def test_concurrent_terminals_share_balances(host: AcquirerHost, cfg: LabConfig) -> None:
    card = CARDS["cup_credit"]
    start = host.accounts.balance(card.name)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        term = Terminal(host, cfg, name)
        try:
            term.signon()
            for _ in range(15):
                assert term.sale(card, 10)["39"] == "00"
        except BaseException as e:  # surfaced below
            errors.append(e)
        finally:
            term.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("T1", "T2", "T3", "T4")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors
    assert host.accounts.balance(card.name) == start - 4 * 15 * 10


def test_no_full_pan_track_or_key_in_any_event(host: AcquirerHost, sink: ListSink,
                                               t1: Terminal) -> None:
    for name, card in CARDS.items():
        if name == "mute":
            continue
        t1.sale(card, 100, mode="swipe" if "chip" not in card.entry_modes else "chip")
        t1.sale(card, 100, mode="swipe")
    sale = t1.sale_msg("cup_debit", 50)
    t1.call(sale)
    t1.call(txn.reversal_request(sale))
    t1.call(txn.settlement_request(stan=t1.next_stan(), **t1.ids(),
                                   totals=txn.SettlementTotals()))
    t1.call(t1.sale_msg("cup_debit", 100), mak=bytes(8))  # A0 path
    wait_event(sink, lambda e: e.kind is EventKind.AUTH_RSP and e.data["rc"] == "A0")
    t1.close()
    wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT)
    text = repr([(e.kind, dict(e.data)) for e in sink.events])
    assert t1.mak is not None and t1.mak.hex() not in text.lower()
    for card in CARDS.values():
        assert card.pan not in text, card.name
        assert card.track2 not in text
    kinds = {e.kind for e in sink.events}
    assert {EventKind.AUTH_REQ, EventKind.AUTH_RSP, EventKind.REVERSAL_REQ,
            EventKind.REVERSAL_RSP, EventKind.SETTLE_REQ, EventKind.SETTLE_RSP} <= kinds
    assert not [e for e in sink.events if e.kind in (EventKind.ERROR,
                                                     EventKind.PROTOCOL_ERROR)]
