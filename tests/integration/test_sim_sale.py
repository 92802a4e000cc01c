"""Sales on the virtual terminals: raw G-code moves real cards, the terminal reads them, asks
a small in-test CUP host, shows the result; the truth journal says when each step happened."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rig.iso8583 import cup_txn
from rig.sim import VirtualLab, read_journal
from rig.sim.journal import LINE_KINDS
from tests.labcfg import virtual_config
from tests.simkit import OPEN, CardMoves, FakeHost, Grbl, Lines, Scpi

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(\d+) (INFO|WARN|ERROR) (.+)$")
CUP_DEBIT_PAN = "6222021234567890128"
MASKED = "622202*********0128"
SLOT = {"cup_debit": 1, "mute": 6, "magstripe_only": 7, "contact_only": 8}


@dataclass
class Bench:
    lab: VirtualLab
    host: FakeHost
    scpi: Scpi
    con: Lines
    ecr: Lines
    robot: CardMoves
    results: int = 0

    def sale(self, amount: int = 100) -> None:
        assert self.ecr.ask(f"SALE {amount}") == "OK SALE started"
        assert ev(self.con.until("CARD wait")[-1]) == "CARD wait"

    def result(self, timeout: float = 10.0) -> list[str]:
        """Console events up to the next RESULT (once its journal entry is written too)."""
        got = [ev(x) for x in self.con.until("RESULT", timeout)]
        self.results += 1
        end = time.monotonic() + 2
        while len(self.lab.journal.entries("T1", "result")) < self.results and time.monotonic() < end:
            time.sleep(0.002)
        return got

    def whats(self, since: int = 0) -> list[str]:
        return [e["what"] for e in self.lab.journal.entries("T1")
                if e["what"] not in LINE_KINDS and e["mono_ns"] >= since]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def ev(line: str) -> str:
    m = LINE.match(line)
    assert m, f"bad console line {line!r}"
    return m.group(3)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``bench(power=True, **sim)`` -> a READY T1 with console, ECR and robot."""
    made: list[Any] = []

    def make(power: bool = True, **sim: Any) -> Bench:
        sim.setdefault("time_scale", 0.1)
        cfg = virtual_config(tmp_path, **sim)
        host = FakeHost(cfg)
        lab = VirtualLab(cfg).start()
        scpi = Scpi(lab.addresses()["psu"])
        grbl = Grbl(lab.addresses()["robot"])
        made.extend([grbl, scpi, lab, host])
        con = Lines(lab.addresses()["T1.console"])
        end = time.monotonic() + 2
        while lab.terminals["T1"].console.clients < 1 and time.monotonic() < end:
            time.sleep(0.005)
        b = Bench(lab, host, scpi, con, Lines(lab.addresses()["T1.ecr"]), CardMoves(grbl, cfg))
        if power:
            scpi.output(1, True)
            con.until("READY")
            assert lab.journal.wait_for(lambda e: e["terminal"] == "T1" and e["what"] == "ready", 2)
        return b

    yield make
    for thing in made:
        (thing.close if hasattr(thing, "close") else thing.stop)()


# --- tests ----------------------------------------------------------------------------------

def test_chip_sale_approved_with_field55_and_truth(bench: Any) -> None:
    b = bench()
    t0 = time.monotonic_ns()
    b.sale(100)
    b.scpi.write("INST:NSEL 1")
    assert float(b.scpi.query("MEAS:CURR?")) == pytest.approx(b.lab.cfg.sim.txn_current_a, abs=0.01)
    b.robot.pick(SLOT["cup_debit"])
    world = b.lab.world
    assert world is not None and world.where(world.cards[1]) == "gripper"
    b.robot.insert("T1")
    got = b.result()
    assert got == ["CARD present mode=chip", f"CARD read mode=chip pan={MASKED}", "AUTH req stan=000002",
                   "AUTH rsp rc=00", "RESULT approved rc=00 auth=000001 rrn=000000000001 stan=000002"]
    assert b.ecr.ask("RESULT?") == "OK " + got[-1]
    assert world.where(world.cards[1]) == "chip T1"

    req, mac_ok = b.host.txns[-1]
    assert mac_ok and req["t"] == "0200" and req["3"] == "000000" and req["4"] == "000000000100"
    assert req["22"].startswith("05") and req["2"] == CUP_DEBIT_PAN and req["11"] == "000002"
    assert isinstance(req["55"], bytes) and b"\x9f\x26" in req["55"] and req["35"].startswith(CUP_DEBIT_PAN)

    b.robot.withdraw()
    b.robot.give_back(SLOT["cup_debit"])
    assert world.where(world.cards[1]) == "slot 1"
    assert b.lab.journal.wait_for(lambda e: e["what"] == "card_removed", 2)
    whats = b.whats(t0)
    assert whats == ["sale_start", "card_inserted", "card_read", "auth_req_sent", "auth_rsp_received",
                     "result", "card_removed"]
    mine = [e for e in b.lab.journal.entries("T1") if e["mono_ns"] >= t0]
    stamps = [e["mono_ns"] for e in mine if not e["what"].startswith("ecr_")]
    assert stamps == sorted(stamps)
    by = {e["what"]: e for e in mine}
    assert by["auth_rsp_received"]["clock"] == "kernel_rx" and by["auth_rsp_received"]["rc"] == "00"
    assert by["auth_req_sent"]["clock"] == "kernel_tx" and by["result"]["clock"] == "kernel_tx"
    ecr = [(e["what"], e["line"], e["clock"]) for e in mine if e["what"].startswith("ecr_")]
    assert ecr[:2] == [("ecr_cmd", "SALE 100", "kernel_rx"), ("ecr_reply", "OK SALE started", "kernel_tx")]
    assert by["card_inserted"]["clock"] == "sim" and by["card_inserted"]["card"] == "cup_debit"
    assert by["auth_req_sent"]["mono_ns"] < by["auth_rsp_received"]["mono_ns"] < by["result"]["mono_ns"]
    result_line = next(e for e in mine if e["what"] == "console" and "RESULT" in e["line"])
    assert by["result"]["mono_ns"] == result_line["mono_ns"] and by["result"]["status"] == "approved"
    assert by["card_read"]["pan"] == MASKED
    # nothing secret reaches the journal: no full PAN, no track 2
    text = b.lab.journal_path.read_text()
    assert CUP_DEBIT_PAN not in text and "=3012" not in text
    last = [e for e in read_journal(b.lab.journal_path) if e["what"] not in LINE_KINDS][-1]
    assert last["what"] in ("card_removed", "card_returned")
    lines = [e for e in b.lab.journal.entries(what="robot_line") if e["mono_ns"] >= t0]
    assert lines and all(e["clock"] == "kernel_rx" for e in lines)


def test_swipe_speed_window(bench: Any) -> None:
    b = bench(robot_max_feed_mm_min=240000)
    b.sale(250)
    b.robot.pick(SLOT["cup_debit"])
    b.robot.swipe("T1", 3000)
    assert [ev(x) for x in b.con.until("CARD fail")] == ["CARD present mode=swipe", "CARD fail reason=swipe again"]
    b.robot.swipe("T1", 400)
    got = b.result()
    assert got[:2] == ["CARD present mode=swipe", f"CARD read mode=swipe pan={MASKED}"]
    assert got[-1].startswith("RESULT approved rc=00")
    speeds = [e["speed_mm_s"] for e in b.lab.journal.entries("T1", "card_swiped")]
    assert speeds == [pytest.approx(3000, rel=0.01), pytest.approx(400, rel=0.01)]
    req, mac_ok = b.host.txns[-1]
    assert mac_ok and req["22"].startswith("02") and "55" not in req and "2" not in req
    assert req["35"].startswith(CUP_DEBIT_PAN + "=")


def test_tap_needs_dwell(bench: Any) -> None:
    b = bench()
    b.sale()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.tap("T1", 50)  # below tap_dwell_min_ms (200): the card is not read
    assert not any("CARD" in ev(x) for x in b.con.quiet(0.3))
    assert b.lab.journal.entries("T1", "card_tapped") == []
    arrive = time.monotonic_ns()
    b.robot.tap("T1", 500)
    got = b.result()
    assert got[:2] == ["CARD present mode=tap", f"CARD read mode=tap pan={MASKED}"]
    assert got[-1].startswith("RESULT approved")
    tapped = b.lab.journal.entries("T1", "card_tapped")
    assert len(tapped) == 1 and tapped[0]["mono_ns"] - arrive >= 200e6
    in_field = b.lab.journal.entries("T1", "card_in_field")  # arrival in the field, both taps
    assert len(in_field) == 2
    # card events are stamped when they fire in the lab's loop: never before the plan says
    assert 190_000_000 <= tapped[0]["mono_ns"] - in_field[1]["mono_ns"] < 250_000_000
    req, _ = b.host.txns[-1]
    assert req["22"].startswith("07") and isinstance(req["55"], bytes)


@pytest.mark.parametrize(("card", "move", "reason"), [
    ("mute", "insert", "no ATR"),
    ("magstripe_only", "insert", "no ATR"),  # no chip: nothing answers the reset, as if mute
    ("contact_only", "tap", "no contactless answer"),  # no antenna: nothing in the field
])
def test_card_read_failures_keep_waiting_then_cancel(bench: Any, card: str, move: str, reason: str) -> None:
    b = bench()
    b.sale()
    b.robot.pick(SLOT[card])
    (b.robot.insert("T1") if move == "insert" else b.robot.tap("T1", 500))
    got = [ev(x) for x in b.con.until("CARD fail")]
    assert got[-1] == f"CARD fail reason={reason}"
    assert b.ecr.ask("SALE 100") == "ERR 21 busy"  # still waiting for a card
    assert b.ecr.ask("CANCEL") == "OK"
    assert b.result()[-1] == "RESULT failed rc=CX reason=cancelled"
    fail = b.lab.journal.entries("T1", "card_fail")[-1]
    assert fail["reason"] == reason
    assert b.host.txns == []
    assert b.ecr.ask("STATUS") == "OK READY"


def test_not_signed_on_busy_usage_and_card_timeout(bench: Any) -> None:
    b = bench(power=False, time_scale=0.02)  # card timeout 30 s x 0.02 = 0.6 s
    assert b.ecr.ask("SALE 100") == "ERR 20 not signed on"
    assert b.ecr.ask("RESULT?") == "ERR 22 no result"
    b.scpi.output(1, True)
    b.con.until("READY")
    assert b.ecr.ask("SALE abc") == "ERR 04 usage: SALE <amount_minor>"
    assert b.ecr.ask("VOID 000042") == "ERR 23 no such transaction"
    b.sale()
    assert b.ecr.ask("PREAUTH 5") == "ERR 21 busy"
    assert b.ecr.ask("SIGNON") == "ERR 21 busy"
    t0 = time.monotonic()
    assert b.result()[-1] == "RESULT failed rc=CT reason=card timeout"
    assert time.monotonic() - t0 >= 0.5
    assert b.ecr.ask("RESULT?") == "OK RESULT failed rc=CT reason=card timeout"


def test_timeout_stores_reversal_sent_before_next_sale(bench: Any) -> None:
    b = bench(auth_timeout_ms=300)
    b.host.script = ["silent"]
    b.sale(700)
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    sent = time.monotonic_ns()
    assert b.result()[-2:] == ["AUTH req stan=000002", "RESULT failed rc=98 reason=timeout"]
    assert (time.monotonic_ns() - sent) / 1e6 >= 250  # auth timeout is real time, not scaled
    assert b.lab.terminals["T1"].txns.reversal is not None

    b.sale(800)  # the card is still inserted: read at once
    got = b.result()
    assert got == ["CARD present mode=chip", f"CARD read mode=chip pan={MASKED}",
                   "REVERSAL sent stan=000002", "REVERSAL ok stan=000002 rc=00",
                   "AUTH req stan=000003", "AUTH rsp rc=00", got[-1]]
    assert got[-1].startswith("RESULT approved rc=00")
    rev, mac_ok = b.host.txns[1]
    assert mac_ok and rev["t"] == "0400" and rev["11"] == "000002" and rev["39"] == "98"
    assert rev["4"] == "000000000700"
    assert b.lab.terminals["T1"].txns.reversal is None
    whats = [w for w in b.whats() if w.startswith(("reversal", "auth", "result"))]
    assert whats == ["auth_req_sent", "result", "reversal_sent", "reversal_ok", "auth_req_sent",
                     "auth_rsp_received", "result"]


def test_a0_declines_then_signs_on_again(bench: Any) -> None:
    b = bench()
    b.host.script = ["A0"]
    b.sale()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    assert b.result()[-2:] == ["AUTH rsp rc=A0", "RESULT declined rc=A0 stan=000002"]
    assert [ev(x) for x in b.con.until("READY")] == ["SIGNON start attempt=1", "SIGNON ok", "READY"]
    assert [r["t"] for r in b.host.requests] == ["0800", "0200", "0800"]
    assert b.lab.terminals["T1"].keys == b.host.keys["10000001"]
    b.sale(300)  # the inserted card, new keys: approved
    assert b.result()[-1].startswith("RESULT approved")
    assert b.host.txns[-1][1]


def test_bad_response_mac_is_a_failure_with_reversal(bench: Any) -> None:
    b = bench()
    b.host.script = ["badmac"]
    b.sale()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    assert b.result()[-1] == "RESULT failed rc=A0 reason=MAC error"
    rev = b.lab.terminals["T1"].txns.reversal
    assert rev is not None and rev["39"] == "A0"


def test_void_balance_settle(bench: Any) -> None:
    b = bench()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")  # inserted before the sale: read as soon as the sale asks for a card
    for amount in (100, 200):
        b.sale(amount)
        assert b.result()[-1].startswith("RESULT approved")
    assert b.ecr.ask("VOID 2") == "OK VOID started"
    assert b.result()[-1].startswith("RESULT approved")
    assert b.ecr.ask("VOID 2") == "ERR 24 already voided"
    assert b.ecr.ask("BALANCE") == "OK BALANCE started"
    assert b.result()[-1].endswith("balance=12345")
    assert b.ecr.ask("SETTLE") == "OK SETTLE started"
    assert b.result()[-1].endswith("settle=balanced")
    kinds = [cup_txn.txn_kind(r) for r, _ in b.host.txns]
    assert kinds == ["sale", "sale", "void", "balance", "settlement"]
    void, settle = b.host.txns[2][0], b.host.txns[4][0]
    assert void["61"] == "000001000002" and void["4"] == "000000000100"
    totals, _ = cup_txn.parse_totals(settle["48"])
    assert (totals.debit_count, totals.debit_minor) == (1, 200)
    assert b.lab.terminals["T1"].memory.batch == 2


def test_cards_are_physical(bench: Any) -> None:
    b = bench()
    world = b.lab.world
    assert world is not None
    debit, mute = world.cards[1], world.cards[6]
    b.robot.pick(1)
    b.robot.insert("T1")
    b.robot.g.run("M9")  # let go: the card stays in the chip slot
    b.robot.withdraw()
    assert world.where(debit) == "chip T1" and world.held is None
    b.robot.pick(6)
    assert world.where(mute) == "gripper"
    b.robot.insert("T1")  # the slot is taken: the mute card is not inserted
    assert world.inserted("T1") is debit
    b.robot.withdraw()
    b.robot.g.run("G0 X600 Y300", "M9", "G4 P0")  # released over nothing: dropped
    assert world.where(mute) == "dropped"
    b.robot.insert("T1")
    b.robot.g.run("M8")  # grip the card left in the slot, take it back home
    b.robot.withdraw()
    assert world.inserted("T1") is None and world.where(debit) == "gripper"
    b.robot.give_back(1)
    places = sorted(world.where(c) for c in world.cards.values())
    assert places.count("dropped") == 1 and all(p.startswith(("slot", "dropped")) for p in places)
    whats = [e["what"] for e in b.lab.journal.entries() if e["what"].startswith("card_")]
    assert whats == ["card_picked", "card_inserted", "card_picked", "card_dropped", "card_removed",
                     "card_returned"]


def test_power_off_mid_sale_is_silent(bench: Any) -> None:
    b = bench()
    b.sale()
    b.scpi.output(1, False)
    assert b.con.quiet(0.2) == [] and b.lab.state("T1") == "OFF"
    assert b.lab.terminals["T1"].load() == 0.0
    b.scpi.output(1, True)
    b.con.until("READY")
    b.sale()  # not busy any more
    assert b.ecr.ask("CANCEL") == "OK"
    assert b.result()[-1] == "RESULT failed rc=CX reason=cancelled"
    assert [e["status"] for e in b.lab.journal.entries("T1", "result")] == ["failed"]


def test_cards_dir_falls_back_to_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rig.sim.world import resolve_cards_dir

    monkeypatch.chdir(tmp_path)
    assert (resolve_cards_dir("configs/cards") / "cup_debit.yaml").is_file()
    (tmp_path / "mine").mkdir()
    assert resolve_cards_dir("mine") == Path("mine")
