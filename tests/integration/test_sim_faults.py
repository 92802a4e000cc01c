"""The virtual lab under faults, as POS field guides describe them: chip read errors →
insert again → fallback to swipe, a card not pushed home, a bad magstripe, a corrupt chip
record; the control port that switches card faults and terminal quirks (which break one
correct behaviour each, so a scenario's verdict can be shown to turn); brownout and reboot."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rig.host import AcquirerHost
from rig.iso8583 import cup_txn, get_dialect
from rig.sim import VirtualLab
from rig.timeline.events import EventKind, ListSink
from tests.labcfg import virtual_config
from tests.simkit import OPEN, CardMoves, FakeHost, Grbl, Lines, Scpi, hostport

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(\d+) (INFO|WARN|ERROR) (.+)$")
CUP_DEBIT_PAN = "6222021234567890128"
MASKED = "622202*********0128"
SLOT = {"cup_debit": 1, "mute": 6}
CUP = get_dialect("cup")


def ev(line: str) -> str:
    m = LINE.match(line)
    assert m, f"bad console line {line!r}"
    return m.group(3)


class Control:
    """A raw client of the lab's control port: one JSON line out, one JSON line back."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(hostport(address), timeout=5)
        self.f = self.sock.makefile("rb")

    def raw(self, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line + b"\n")
        reply = self.f.readline()
        assert reply.endswith(b"\n") and not reply.endswith(b"\r\n")
        out = json.loads(reply)
        assert isinstance(out, dict) and isinstance(out["ok"], bool)
        return out

    def __call__(self, **req: Any) -> dict[str, Any]:
        return self.raw(json.dumps(req).encode())

    def ok(self, **req: Any) -> dict[str, Any]:
        out = self(**req)
        assert out["ok"] is True, out
        return out

    def close(self) -> None:
        self.f.close()
        self.sock.close()


@dataclass
class Bench:
    lab: VirtualLab
    host: FakeHost | None
    real: AcquirerHost | None
    sink: ListSink
    scpi: Scpi
    con: Lines
    ecr: Lines
    robot: CardMoves
    ctl: Control

    def sale(self, amount: int = 100) -> None:
        assert self.ecr.ask(f"SALE {amount}") == "OK SALE started"
        assert ev(self.con.until("CARD wait")[-1]) == "CARD wait"

    def events(self, until: str, timeout: float = 10.0) -> list[str]:
        return [ev(x) for x in self.con.until(until, timeout)]

    def result(self, timeout: float = 10.0) -> list[str]:
        got = self.events("RESULT", timeout)
        assert self.lab.journal.wait_for(lambda e: e["terminal"] == "T1" and e["what"] == "result"
                                         and e["mono_ns"] >= self._since, 2)
        self._since = time.monotonic_ns()
        return got

    _since: int = 0

    def last(self, what: str, terminal: str | None = "T1") -> dict[str, Any]:
        """The latest journal entry ``what`` (waiting for the first one)."""
        assert self.lab.journal.wait_for(lambda e: e["terminal"] == terminal and e["what"] == what, 2)
        return self.lab.journal.entries(terminal, what)[-1]

    def reinsert(self) -> None:
        self.robot.withdraw()
        self.robot.insert("T1")

    def mtis(self) -> list[str]:
        assert self.host is not None
        return [r["t"] for r in self.host.requests]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``bench(power=True, real_host=False, **sim)`` -> T1 READY, with console, ECR,
    robot and the control port; ``real_host`` puts the rig's acquirer host behind the lab."""
    made: list[Any] = []

    def make(power: bool = True, real_host: bool = False, **sim: Any) -> Bench:
        sim.setdefault("time_scale", 0.1)
        cfg = virtual_config(tmp_path, **sim)
        sink = ListSink()
        fake = real = None
        if real_host:
            real = AcquirerHost(cfg, sink).start()
            made.append(real)
        else:
            fake = FakeHost(cfg)
            made.append(fake)
        lab = VirtualLab(cfg).start()
        made.append(lab)
        addr = lab.addresses()
        assert addr["control"] == cfg.sim.control_listen
        scpi, grbl, ctl = Scpi(addr["psu"]), Grbl(addr["robot"]), Control(addr["control"])
        made[:0] = [ctl, grbl, scpi]
        con = Lines(addr["T1.console"])
        end = time.monotonic() + 2
        while lab.terminals["T1"].console.clients < 1 and time.monotonic() < end:
            time.sleep(0.005)
        b = Bench(lab, fake, real, sink, scpi, con, Lines(addr["T1.ecr"]), CardMoves(grbl, cfg), ctl)
        if power:
            scpi.output(1, True)
            con.until("READY")
        return b

    yield make
    for thing in made:
        (thing.close if hasattr(thing, "close") else thing.stop)()


# --- chip faults and fallback ------------------------------------------------------------------

def test_mute_chip_insert_again_then_fallback_swipe_accepted_by_the_host(bench: Any) -> None:
    b = bench(real_host=True)
    got = b.ctl.ok(op="card_fault", card="cup_debit", fault="mute")
    assert got == {"ok": True, "card": "cup_debit", "fault": "mute", "was": None, "slots": [1]}
    b.sale(1234)
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    assert b.events("CARD insert again") == ["CARD present mode=chip", "CARD fail reason=no ATR",
                                             "CARD insert again"]
    b.reinsert()
    assert b.events("CARD insert again")[-2:] == ["CARD fail reason=no ATR", "CARD insert again"]
    b.reinsert()
    assert b.events("CARD fallback")[-2:] == ["CARD fail reason=no ATR", "CARD fallback swipe"]
    b.reinsert()  # the chip had its chances: the terminal insists on the swipe
    assert b.events("CARD fallback") == ["CARD fallback swipe"]
    b.robot.withdraw()
    b.robot.swipe("T1", 400)
    got = b.result()
    assert got[:2] == ["CARD present mode=swipe", f"CARD read mode=fallback pan={MASKED}"]
    assert got[-1].startswith("RESULT approved rc=00"), got

    # the host took it as a fallback: 22 = 80x, track 2 only
    reqs = [e for e in b.sink.events if e.kind == EventKind.AUTH_REQ]
    assert len(reqs) == 1 and str(reqs[0].data["entry"]).startswith("80")
    assert reqs[0].data["pan"] == MASKED
    rsp = [e for e in b.sink.events if e.kind == EventKind.AUTH_RSP]
    assert rsp[-1].data["rc"] == "00"

    j = b.lab.journal
    fails = j.entries("T1", "card_fail")
    assert [(f["mode"], f["reason"]) for f in fails] == [("chip", "no ATR")] * 3
    assert [e["chip_failures"] for e in j.entries("T1", "card_insert_again")] == [1, 2]
    assert [e["chip_failures"] for e in j.entries("T1", "card_fallback")] == [3]
    assert j.entries("T1", "card_read")[-1]["mode"] == "fallback"
    assert j.entries(None, "card_fault")[-1]["fault"] == "mute"
    assert CUP_DEBIT_PAN not in b.lab.journal_path.read_text()


def test_fallback_request_fields() -> None:
    ids = dict(stan=7, terminal_id="10000001", merchant_id="898310048990001", batch=1,
               amount_minor=100, track2=f"{CUP_DEBIT_PAN}=30122200000000000")
    fb = cup_txn.sale_request(**ids, entry_mode=cup_txn.FALLBACK)
    swipe = cup_txn.sale_request(**ids, entry_mode="swipe")
    assert (fb["22"], fb["60"]) == ("801", "2200000100062")
    assert (swipe["22"], swipe["60"]) == ("021", "2200000100060")
    back = CUP.decode(CUP.encode(fb))
    assert back["22"] == "801" and back["60"] == "2200000100062"
    rev = cup_txn.reversal_request(fb)
    assert rev["22"] == "801" and rev["60"] == fb["60"] and rev["2"] == CUP_DEBIT_PAN


def test_no_fallback_quirk_keeps_asking_for_the_chip(bench: Any) -> None:
    b = bench(chip_fallback_after=2, swipe_chip_cards=False)
    b.ctl.ok(op="card_fault", card="cup_debit", fault="mute")
    got = b.ctl.ok(op="quirk", terminal="T1", quirk="no_fallback", on=True)
    assert got["quirks"] == ["no_fallback"] and got["was"] is False
    b.sale()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    for _ in range(3):
        assert b.events("CARD insert again")[-2:] == ["CARD fail reason=no ATR", "CARD insert again"]
        b.reinsert()
    b.events("CARD insert again")
    b.robot.withdraw()
    b.robot.swipe("T1", 400)  # a chip card, no fallback offered: refused
    assert b.events("CARD fail") == ["CARD fail reason=use chip"]
    assert b.ecr.ask("CANCEL") == "OK"
    assert b.result()[-1] == "RESULT failed rc=CX reason=cancelled"
    assert b.host.txns == []
    assert not b.lab.journal.entries("T1", "card_fallback")
    effects = b.lab.journal.entries("T1", "quirk_effect")
    assert [e["chip_failures"] for e in effects] == [2, 3, 4] and effects[0]["quirk"] == "no_fallback"


def test_corrupt_record_fails_the_kernel_until_cleared(bench: Any) -> None:
    b = bench()
    b.ctl.ok(op="card_fault", card="cup_debit", fault="corrupt_record")
    b.sale()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    assert b.events("CARD insert again") == [
        "CARD present mode=chip", "CARD fail reason=unreadable: bad data in READ RECORD",
        "CARD insert again"]
    got = b.ctl.ok(op="card_fault", card="cup_debit", fault=None)
    assert got["was"] == "corrupt_record" and got["fault"] is None
    b.reinsert()
    got = b.result()
    assert got[:2] == ["CARD present mode=chip", f"CARD read mode=chip pan={MASKED}"]
    assert got[-1].startswith("RESULT approved")
    req, mac_ok = b.host.txns[-1]
    assert mac_ok and req["22"].startswith("05") and isinstance(req["55"], bytes)
    assert req["60"].endswith("0")  # no fallback
    assert [e["fault"] for e in b.lab.journal.entries(None, "card_fault")] == ["corrupt_record", None]


def test_bad_lrc_swipe_fails_until_cleared(bench: Any) -> None:
    b = bench()
    b.ctl.ok(op="card_fault", card="cup_debit", fault="bad_lrc")
    b.sale()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.swipe("T1", 400)
    assert b.events("CARD fail") == ["CARD present mode=swipe", "CARD fail reason=bad LRC, swipe again"]
    assert b.last("card_fail")["reason"] == "bad LRC, swipe again"
    b.ctl.ok(op="card_fault", card="cup_debit", fault=None)
    b.robot.swipe("T1", 400)
    got = b.result()
    assert got[1] == f"CARD read mode=swipe pan={MASKED}" and got[-1].startswith("RESULT approved")
    req, _ = b.host.txns[-1]
    assert req["22"].startswith("02")


def test_shallow_insert_says_insert_again(bench: Any) -> None:
    b = bench()
    chip = b.lab.cfg.terminals["T1"].stations.chip
    b.sale()
    b.robot.pick(SLOT["cup_debit"])
    g = b.robot.g
    g.run("G0 Z0", f"G0 X{chip.x} Y{chip.y}", f"G1 Z{chip.z + 8} F30000", "G4 P0")  # 8 mm short
    assert b.events("CARD insert again") == ["CARD fail reason=insert again", "CARD insert again"]
    shallow = b.lab.journal.entries("T1", "card_shallow")
    assert len(shallow) == 1 and shallow[0]["short_mm"] == pytest.approx(8) and shallow[0]["card"] == "cup_debit"
    assert b.lab.world.inserted("T1") is None
    g.run(f"G1 Z{chip.z} F30000", "G4 P0")  # pushed home
    got = b.result()
    assert got[:2] == ["CARD present mode=chip", f"CARD read mode=chip pan={MASKED}"]
    assert got[-1].startswith("RESULT approved")
    fail = b.lab.journal.entries("T1", "card_fail")
    assert [(f["mode"], f["reason"]) for f in fail] == [("chip", "insert again")]
    again = b.lab.journal.entries("T1", "card_insert_again")
    assert [(e["shallow"], e["chip_failures"]) for e in again] == [(True, 0)]  # no step to fallback
    # passing through a shallow depth on the way down is no shallow insert
    b.robot.withdraw()
    b.sale()
    g.run(f"G1 Z{chip.z + 8} F30000", f"G1 Z{chip.z} F30000", "G4 P0")
    assert b.result()[-1].startswith("RESULT approved")
    assert len(b.lab.journal.entries("T1", "card_shallow")) == 1


# --- quirks ----------------------------------------------------------------------------------

def test_no_reversal_quirk(bench: Any) -> None:
    b = bench(auth_timeout_ms=300)
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    # correct terminal: a timed-out sale leaves a reversal, sent before the next sale
    b.host.script = ["silent"]
    b.sale(700)
    assert b.result()[-1] == "RESULT failed rc=98 reason=timeout"
    st = b.ctl.ok(op="state", terminal="T1")
    assert st["reversal_pending"] is True and st["reversal_stan"] == "000002"
    b.sale(800)
    assert b.result()[-1].startswith("RESULT approved")
    assert [r["t"] for r, _ in b.host.txns] == ["0200", "0400", "0200"]
    # broken terminal: no reversal stored, none sent
    b.ctl.ok(op="quirk", terminal="T1", quirk="no_reversal", on=True)
    b.host.script = ["silent"]
    b.sale(900)
    assert b.result()[-1] == "RESULT failed rc=98 reason=timeout"
    st = b.ctl.ok(op="state", terminal="T1")
    assert st == {"ok": True, "terminal": "T1", "state": "READY", "signed_on": True, "busy": False,
                  "reversal_pending": False, "reversal_stan": None, "quirks": ["no_reversal"]}
    b.sale(1000)
    got = b.result()
    assert not any(x.startswith("REVERSAL") for x in got) and got[-1].startswith("RESULT approved")
    assert [r["t"] for r, _ in b.host.txns] == ["0200", "0400", "0200", "0200", "0200"]
    effects = b.lab.journal.entries("T1", "quirk_effect")
    assert [(e["quirk"], e["skipped"], e["stan"]) for e in effects] == [  # stored before each 0200
        ("no_reversal", "store reversal", "000004"), ("no_reversal", "store reversal", "000005")]


def test_no_resignon_quirk_ignores_a0(bench: Any) -> None:
    b = bench()
    b.robot.pick(SLOT["cup_debit"])
    b.robot.insert("T1")
    b.ctl.ok(op="quirk", terminal="T1", quirk="no_resignon", on=True)
    b.host.script = ["A0"]
    b.sale()
    assert b.result()[-1] == "RESULT declined rc=A0 stan=000002"
    assert not any("SIGNON" in ev(x) for x in b.con.quiet(0.3))
    assert b.mtis() == ["0800", "0200"] and b.lab.state("T1") == "READY"
    assert b.last("quirk_effect")["skipped"] == "sign-on after A0"
    # switched off: the next A0 signs on again
    b.ctl.ok(op="quirk", terminal="T1", quirk="no_resignon", on=False)
    b.host.script = ["A0"]
    b.sale()
    assert b.result()[-1].startswith("RESULT declined rc=A0")
    assert b.events("READY")[-1] == "READY"
    assert b.mtis() == ["0800", "0200", "0200", "0800"]


def test_no_retry_quirk_gives_up_after_one_attempt(bench: Any) -> None:
    b = bench(power=False, signon_retries=2, backoff_ms=[200, 200])
    b.host.rc = "96"
    b.ctl.ok(op="quirk", terminal="T1", quirk="no_retry", on=True)
    b.scpi.output(1, True)
    got = b.events("giveup")
    assert got[-3:] == ["SIGNON start attempt=1", "SIGNON fail rc=96 attempt=1", "SIGNON giveup"]
    assert b.ctl.ok(op="state", terminal="T1")["state"] == "NOT_SIGNED_ON"
    assert b.ecr.ask("SALE 100") == "ERR 20 not signed on"
    b.ctl.ok(op="quirk", terminal="T1", quirk="no_retry", on=False)
    assert b.ecr.ask("SIGNON") == "OK SIGNON"
    got = b.events("giveup")
    assert [x for x in got if x.startswith("SIGNON fail")] == [
        "SIGNON fail rc=96 attempt=1", "SIGNON fail rc=96 attempt=2", "SIGNON fail rc=96 attempt=3"]
    b.host.rc = "00"
    assert b.ecr.ask("SIGNON") == "OK SIGNON"
    assert b.events("READY")[-2:] == ["SIGNON ok", "READY"]


def test_ignore_login_quirk_accepts_a_wrong_password(bench: Any) -> None:
    b = bench(power=False)
    addr = b.lab.addresses()
    con, ecr = Lines(addr["T4.console"]), Lines(addr["T4.ecr"])
    end = time.monotonic() + 2
    while b.lab.terminals["T4"].console.clients < 1 and time.monotonic() < end:
        time.sleep(0.005)
    b.scpi.output(4, True)
    con.until("BOOT done")
    assert ev(con.next()) == "LOGIN wait"  # the login prompt (no auto login on T4)
    assert ecr.ask("LOGIN 01 9999") == "ERR 11 bad operator"
    assert ev(con.next()) == "LOGIN fail op=01"
    b.ctl.ok(op="quirk", terminal="T4", quirk="ignore_login", on=True)
    assert ecr.ask("LOGIN 01 9999") == "OK LOGIN"
    assert [ev(x) for x in con.until("READY")][-1] == "READY"
    assert b.last("quirk_effect", "T4")["skipped"] == "operator check"


# --- power -----------------------------------------------------------------------------------

def test_brownout_then_reboot_when_the_voltage_comes_back(bench: Any) -> None:
    b = bench()
    b.scpi.write("INST:NSEL 1")
    b.scpi.write("VOLT 9.5")  # above sim.min_voltage (9 V): nothing happens
    assert b.scpi.query("*OPC?") == "1" and b.lab.state("T1") == "READY"
    b.scpi.write("VOLT 6")  # on a live output: a brownout
    assert b.scpi.query("*OPC?") == "1"
    assert b.lab.state("T1") == "OFF"
    assert b.ecr.ask("SALE 100") == "ERR 20 not signed on"
    assert b.ctl.ok(op="state", terminal="T1")["state"] == "OFF"
    off = b.lab.journal.entries("T1", "power_off")[-1]
    assert off["reason"] == "brownout" and off["volts"] == pytest.approx(6.0)
    assert b.con.quiet(0.1) == []
    b.scpi.write("VOLT 12")  # restored, output still on: the terminal boots again
    assert b.scpi.query("*OPC?") == "1"
    assert [ev(x) for x in b.con.until("READY")] == [
        "BOOT done", "LOGIN ok op=01", "CLOCK sync", "SIGNON start attempt=1", "SIGNON ok", "READY"]
    on = b.lab.journal.entries("T1", "power_on")
    assert len(on) == 2 and on[-1]["volts"] == pytest.approx(12.0)
    assert b.mtis() == ["0800", "0800"]


# --- the control port ------------------------------------------------------------------------

def test_control_port_errors_status_and_clear(bench: Any) -> None:
    b = bench(power=False)
    c = b.ctl
    bad = {
        b"{not json": "bad JSON",
        b"[1, 2]": "a request is a JSON object",
        b'{"op": "explode"}': "unknown op 'explode'",
        b'{"no": "op"}': "unknown op None",
        b'{"op": "card_fault", "card": "nosuch", "fault": "mute"}': "no card of profile 'nosuch'",
        b'{"op": "card_fault", "card": "cup_debit", "fault": "melted"}': "unknown fault 'melted'",
        b'{"op": "card_fault", "card": "cup_debit"}': "fault is missing",
        b'{"op": "card_fault", "card": 3, "fault": null}': "card must be a card profile name",
        b'{"op": "quirk", "terminal": "T9", "quirk": "no_retry", "on": true}': "unknown terminal 'T9'",
        b'{"op": "quirk", "terminal": "T1", "quirk": "lazy", "on": true}': "unknown quirk 'lazy'",
        b'{"op": "quirk", "terminal": "T1", "quirk": "no_retry", "on": "yes"}': "on must be true or false",
        b'{"op": "state"}': "unknown terminal None",
        b'{"op": "status", "extra": 1}': "unexpected key(s) extra",
    }
    for line, error in bad.items():
        got = c.raw(line)
        assert got["ok"] is False and error in got["error"], (line, got)
    assert c.raw(b'{"op": "explode", "id": 7}') == {"ok": False, "error": c(op="explode")["error"], "id": 7}
    st = c.ok(op="status")
    assert st["card_faults"] == {} and st["quirks"] == {}  # errors changed nothing
    assert st["known_faults"] == ["mute", "corrupt_record", "bad_lrc"]
    assert st["known_quirks"] == ["no_reversal", "no_resignon", "no_retry", "no_fallback", "ignore_login"]
    assert "cup_debit" in st["cards"] and st["terminals"] == ["T1", "T2", "T3", "T4"]

    c.ok(op="card_fault", card="cup_debit", fault="bad_lrc")
    c.ok(op="card_fault", card="cup_debit", fault="mute")  # replaces
    c.ok(op="quirk", terminal="T2", quirk="no_retry", on=True)
    c.ok(op="quirk", terminal="T2", quirk="ignore_login", on=True)
    assert c.ok(op="quirk", terminal="T2", quirk="ignore_login", on=True)["was"] is True
    st = c.ok(op="status", id="s")
    assert st["id"] == "s" and st["card_faults"] == {"cup_debit": "mute"}
    assert st["quirks"] == {"T2": ["ignore_login", "no_retry"]}
    assert b.lab.world.cards[1].fault == "mute"
    got = c.ok(op="clear")
    assert got == {"ok": True, "cleared": ["card cup_debit: mute", "T2 quirk ignore_login", "T2 quirk no_retry"],
                   "card_faults": {"cup_debit": "mute"}, "quirks": {"T2": ["ignore_login", "no_retry"]}}
    assert c.ok(op="clear")["cleared"] == []  # nothing left
    st = c.ok(op="status")
    assert st["card_faults"] == {} and st["quirks"] == {} and b.lab.world.cards[1].fault is None
    assert c.ok(op="state", terminal="T2") == {
        "ok": True, "terminal": "T2", "state": "OFF", "signed_on": False, "busy": False,
        "reversal_pending": False, "reversal_stan": None, "quirks": []}

    j = b.lab.journal
    assert [(e["fault"], e["was"]) for e in j.entries(None, "card_fault")] == [
        ("bad_lrc", None), ("mute", "bad_lrc"), (None, "mute")]
    assert [(e["quirk"], e["on"], e["was"]) for e in j.entries("T2", "quirk")] == [
        ("no_retry", True, False), ("ignore_login", True, False), ("ignore_login", True, True),
        ("ignore_login", False, True), ("no_retry", False, True)]
    clears = j.entries(None, "control_clear")
    assert [len(e["cleared"]) for e in clears] == [3, 0] and clears[0]["card_faults"] == {"cup_debit": "mute"}
