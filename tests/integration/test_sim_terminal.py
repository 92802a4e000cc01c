"""The virtual terminals over real sockets: SCPI power, console, ECR, a tiny fake CUP host."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.iso8583 import cup
from rig.sim import TruthJournal, VirtualLab, read_journal
from rig.sim.journal import LINE_KINDS
from tests.labcfg import virtual_config
from tests.simkit import OPEN, FakeHost, Lines, Scpi

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(\d+) (INFO|WARN|ERROR) (.+)$")
HAPPY = ["BOOT done", "LOGIN ok op=01", "CLOCK sync", "SIGNON start attempt=1", "SIGNON ok", "READY"]
HAPPY_WHATS = ["power_on", "boot_done", "login", "clock_sync", "host_connect", "signon_req_sent",
               "signon_rsp_received", "signon_ok", "ready"]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def events(lines: list[str]) -> list[str]:
    """The ``<EVENT> ...`` part of console lines (uptime and level stripped)."""
    out = []
    for line in lines:
        m = LINE.match(line)
        assert m, f"bad console line {line!r}"
        out.append(m.group(3))
    return out


def whats(journal: TruthJournal, terminal: str, last: str | None = None) -> list[str]:
    """The terminal's journal ``what``s (line I/O left out), after ``last`` was recorded."""
    if last is not None:
        assert journal.wait_for(lambda e: e["terminal"] == terminal and e["what"] == last, 2.0)
    return [e["what"] for e in journal.entries(terminal) if e["what"] not in LINE_KINDS]


@pytest.fixture
def rig_lab(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``rig_lab(host="ok", **sim)`` -> (lab, host | None, scpi); all closed at the end."""
    made: list[Any] = []

    def make(host: str | None = "ok", rc: str = "00", **sim: Any) -> tuple[VirtualLab, FakeHost | None, Scpi]:
        cfg = virtual_config(tmp_path, **sim)
        fake = FakeHost(cfg, host, rc) if host else None
        lab = VirtualLab(cfg).start()
        scpi = Scpi(lab.addresses()["psu"])
        made.extend([scpi, lab] + ([fake] if fake else []))
        return lab, fake, scpi

    yield make
    for thing in made:
        (thing.close if hasattr(thing, "close") else thing.stop)()


def console(lab: VirtualLab, name: str) -> Lines:
    c = Lines(lab.addresses()[f"{name}.console"])
    end = time.monotonic() + 2
    while lab.terminals[name].console.clients < 1 and time.monotonic() < end:
        time.sleep(0.005)
    return c


def channel(lab: VirtualLab, name: str) -> int:
    return lab.cfg.terminals[name].power.channel


# --- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["T1", "T2", "T3"])
def test_boot_login_signon_ready(rig_lab: Any, name: str) -> None:
    lab, host, scpi = rig_lab()
    con = console(lab, name)
    t0 = time.monotonic_ns()
    scpi.output(channel(lab, name), True)
    got = con.until("READY")
    assert events(got) == HAPPY
    uptimes = [int(LINE.match(x).group(1)) for x in got]  # type: ignore[union-attr]
    assert uptimes == sorted(uptimes)
    assert lab.state(name) == "READY"

    j = lab.journal
    assert whats(j, name, "ready") == HAPPY_WHATS
    entries = j.entries(name)
    stamps = [e["mono_ns"] for e in entries]
    assert stamps == sorted(stamps) and stamps[0] >= t0
    assert [e["line"] for e in entries if e["what"] == "console"] == got
    assert all(e["terminal"] == name and e["wall_ns"] > 0 for e in entries)
    first_line = next(e for e in entries if e["what"] == "console")
    assert first_line["line"].endswith("BOOT done")
    assert next(e for e in entries if e["what"] == "boot_done")["mono_ns"] == first_line["mono_ns"]
    rsp = next(e for e in entries if e["what"] == "signon_rsp_received")
    assert rsp["rc"] == "00"

    # the host got one 0800 with the configured ids, key mode and operator
    tcfg = lab.cfg.terminals[name]
    assert host is not None and len(host.requests) == 1
    req = host.requests[0]
    assert (req["t"], req["41"], req["42"]) == ("0800", tcfg.terminal_id, tcfg.merchant_id)
    assert cup.key_mode_of(req) == tcfg.key_mode and req["63"].strip() == tcfg.operator.id
    assert req["11"] == next(e for e in entries if e["what"] == "signon_req_sent")["stan"]
    assert lab.terminals[name].keys == host.keys[tcfg.terminal_id]

    # the file holds the same entries, one object per line
    assert read_journal(lab.journal_path) == j.entries()

    ecr = Lines(lab.addresses()[f"{name}.ecr"])
    assert ecr.ask("STATUS") == "OK READY"
    assert ecr.ask("status") == "OK READY"
    scpi.write(f"INST:NSEL {channel(lab, name)}")
    assert float(scpi.query("MEAS:CURR?")) == pytest.approx(lab.cfg.sim.idle_current_a, abs=0.01)
    ecr.close()
    con.close()


def test_power_off_mid_boot_then_reboot(rig_lab: Any) -> None:
    lab, host, scpi = rig_lab(time_scale=1.0)  # boot >= 300 ms
    con = console(lab, "T1")
    scpi.output(1, True)
    time.sleep(0.05)
    assert lab.state("T1") == "BOOTING"
    scpi.write("INST:NSEL 1")
    assert float(scpi.query("MEAS:CURR?")) == pytest.approx(lab.cfg.sim.boot_current_a, abs=0.01)
    scpi.output(1, False)
    assert lab.state("T1") == "OFF"
    assert con.quiet(0.6) == []
    assert whats(lab.journal, "T1") == ["power_on", "power_off"]
    assert float(scpi.query("MEAS:CURR?")) == 0.0
    assert host is not None and host.requests == []

    # a later power on boots from scratch: uptime restarts near 0
    t0 = time.monotonic()
    scpi.output(1, True)
    got = con.until("READY", timeout=10)
    elapsed_ms = (time.monotonic() - t0) * 1000
    assert events(got) == HAPPY
    assert int(LINE.match(got[0]).group(1)) <= elapsed_ms  # type: ignore[union-attr]
    assert whats(lab.journal, "T1", "ready") == ["power_on", "power_off"] + HAPPY_WHATS


def test_power_off_while_ready_is_silent(rig_lab: Any) -> None:
    lab, _, scpi = rig_lab()
    con = console(lab, "T1")
    scpi.output(1, True)
    con.until("READY")
    scpi.output(1, False)
    assert con.quiet(0.2) == []
    assert whats(lab.journal, "T1")[-1] == "power_off"
    assert lab.state("T1") == "OFF"


def test_brownout_turns_the_terminal_off(rig_lab: Any) -> None:
    lab, _, scpi = rig_lab()
    con = console(lab, "T1")
    scpi.output(1, True)
    con.until("READY")
    scpi.write("INST:NSEL 1")
    scpi.write("VOLT 5")
    assert scpi.query("*OPC?") == "1"
    assert lab.state("T1") == "OFF"
    off = lab.journal.entries("T1", "power_off")[-1]
    assert off["reason"] == "brownout" and off["volts"] == pytest.approx(5.0)


def test_host_refusing_retries_with_backoff_then_gives_up(rig_lab: Any) -> None:
    lab, _, scpi = rig_lab(host=None, signon_retries=2, backoff_ms=[1000, 2000])  # x0.05
    con = console(lab, "T1")
    scpi.output(1, True)
    got = con.until("giveup")
    assert events(got) == HAPPY[:4] + [
        "SIGNON fail rc=NC attempt=1", "SIGNON start attempt=2",
        "SIGNON fail rc=NC attempt=2", "SIGNON start attempt=3",
        "SIGNON fail rc=NC attempt=3", "SIGNON giveup"]
    assert got[4].split()[1] == "WARN" and got[-1].split()[1] == "ERROR"
    fails = lab.journal.entries("T1", "signon_fail")
    assert [(f["attempt"], f["rc"], f["reason"]) for f in fails] == [
        (1, "NC", "refused"), (2, "NC", "refused"), (3, "NC", "refused")]
    # back-off: 50 ms then 100 ms (scaled) between a failure and the next attempt
    starts = [e["mono_ns"] for e in lab.journal.entries("T1", "console") if "SIGNON start" in e["line"]]
    assert (starts[1] - fails[0]["mono_ns"]) / 1e6 >= 45
    assert (starts[2] - fails[1]["mono_ns"]) / 1e6 >= 95
    assert lab.state("T1") == "NOT_SIGNED_ON"
    assert con.quiet(0.2) == []

    # once the host is up, an ECR SIGNON signs on
    fake = FakeHost(lab.cfg)
    try:
        ecr = Lines(lab.addresses()["T1.ecr"])
        assert ecr.ask("STATUS") == "OK NOT_SIGNED_ON"
        assert ecr.ask("SIGNON") == "OK SIGNON"
        assert events(con.until("READY")) == ["SIGNON start attempt=1", "SIGNON ok", "READY"]
        assert lab.state("T1") == "READY"
        ecr.close()
    finally:
        fake.close()


@pytest.mark.parametrize(("mode", "rc", "want_rc", "reason"), [
    ("ok", "96", "96", "rc"),
    ("badkcv", "00", "KE", "kcv"),
    ("silent", "00", "98", "timeout"),
])
def test_signon_failures(rig_lab: Any, mode: str, rc: str, want_rc: str, reason: str) -> None:
    lab, host, scpi = rig_lab(host=mode, rc=rc, signon_retries=1, backoff_ms=[100],
                              signon_timeout_ms=300)  # real time: not scaled
    con = console(lab, "T1")
    scpi.output(1, True)
    got = events(con.until("giveup"))
    assert got[-4:] == [f"SIGNON fail rc={want_rc} attempt=1", "SIGNON start attempt=2",
                        f"SIGNON fail rc={want_rc} attempt=2", "SIGNON giveup"]
    fails = lab.journal.entries("T1", "signon_fail")
    assert [f["reason"] for f in fails] == [reason, reason]
    if reason == "timeout":  # the sign-on timeout runs in real time, not scaled
        sent = lab.journal.entries("T1", "signon_req_sent")
        assert all(f["mono_ns"] - s["mono_ns"] >= 290e6 for s, f in zip(sent, fails, strict=True))
        assert lab.journal.entries("T1", "signon_rsp_received") == []
    assert host is not None and [r["11"] for r in host.requests] == ["000001", "000002"]
    assert lab.state("T1") == "NOT_SIGNED_ON"


def test_manual_login_over_ecr(rig_lab: Any) -> None:
    lab, _, scpi = rig_lab()
    assert lab.cfg.terminals["T4"].auto_login is False
    con = console(lab, "T4")
    ecr = Lines(lab.addresses()["T4.ecr"])
    assert ecr.ask("STATUS") == "OK OFF"
    assert ecr.ask("LOGIN 01 0000") == "ERR 02 terminal off"
    scpi.output(4, True)
    assert events(con.until("BOOT done")) == ["BOOT done"]
    assert events(con.quiet(0.3)) == ["LOGIN wait"]  # the login prompt, then it waits
    assert ecr.ask("STATUS") == "OK LOGIN"
    assert ecr.ask("SIGNON") == "ERR 12 not logged in"
    assert ecr.ask("LOGIN 01 9999") == "ERR 11 bad operator"
    assert events([con.next()]) == ["LOGIN fail op=01"]
    assert ecr.ask("LOGIN 01") == "ERR 04 usage: LOGIN <op> <pwd>"
    assert ecr.ask("LOGIN 01 0000") == "OK LOGIN"
    assert events(con.until("READY")) == HAPPY[1:]
    assert whats(lab.journal, "T4", "ready") == [*HAPPY_WHATS[:2], "login_prompt",
                                                 *HAPPY_WHATS[2:]]
    assert ecr.ask("FOO 1") == "ERR 01 unknown command"
    assert ecr.ask("CANCEL") == "OK"
    ecr.close()
    con.close()


def test_console_broadcasts_to_every_client(rig_lab: Any) -> None:
    lab, _, scpi = rig_lab()
    a = console(lab, "T2")
    b = Lines(lab.addresses()["T2.console"])
    end = time.monotonic() + 2
    while lab.terminals["T2"].console.clients < 2 and time.monotonic() < end:
        time.sleep(0.005)
    scpi.output(2, True)
    assert a.until("READY") == b.until("READY")


def test_seeded_draws_are_reproducible(tmp_path: Path) -> None:
    cfg = virtual_config(tmp_path)
    one, two = VirtualLab(cfg, str(tmp_path / "a.jsonl")), VirtualLab(cfg, str(tmp_path / "b.jsonl"))
    draws = [[cfg.sim.boot.draw(lab.terminals[n].rng) for n in ("T1", "T2")] for lab in (one, two)]
    assert draws[0] == draws[1] and draws[0][0] != draws[0][1]
    one.stop()
    two.stop()


def test_journal_default_path_and_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = virtual_config(tmp_path).model_copy(
        update={"sim": virtual_config(tmp_path).sim.model_copy(update={"truth_journal": None})})
    lab = VirtualLab(cfg)
    assert lab.journal_path == Path("results/virtual-truth.jsonl") and lab.journal_path.parent.is_dir()
    lab.stop()
    j = TruthJournal(tmp_path / "x" / "j.jsonl")
    workers = [threading.Thread(target=lambda i=i: [j.record(f"T{i}", "console", line=str(k))
                                                    for k in range(200)]) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(read_journal(tmp_path / "x" / "j.jsonl")) == 800 == len(j.entries())
    assert j.wait_for(lambda e: e["line"] == "199", 0.1) is not None
    assert j.wait_for(lambda e: e["what"] == "nope", 0.05) is None
    j.close()


def test_a_task_that_outlives_its_power_off_cannot_keep_the_terminal_on(tmp_path):
    """asyncio.wait_for (3.11) can swallow the cancel a power-off sends the terminal's task; the
    late task must not leave a state that makes the next power-on look like no change."""
    import asyncio
    import random

    from rig.sim.terminal import TerminalState, VirtualTerminal

    cfg = virtual_config(tmp_path)
    journal = TruthJournal(tmp_path / "t.jsonl")

    async def run() -> list[str]:
        t = VirtualTerminal("T1", cfg.terminals["T1"], cfg.sim, journal, random.Random(1))
        t.power(True, 12.0)
        t.power(False, 0.0)
        t.state = TerminalState.READY  # what a task that ignored its cancel would do
        assert t.state is TerminalState.OFF
        t.power(True, 12.0)  # must boot again
        assert t.state is TerminalState.BOOTING
        await t.stop()
        return [e["what"] for e in read_journal(tmp_path / "t.jsonl") if e.get("terminal") == "T1"]

    whats = asyncio.run(run())
    journal.close()
    assert whats[:3] == ["power_on", "power_off", "power_on"]
