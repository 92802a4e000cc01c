"""The PSU current trace on the virtual lab: samples during each cycle, in the cycle's bounds,
and the terminal's draw as the virtual PSU's load follows it (off, boot, idle, transaction),
lined up with the truth journal's power and boot stamps."""

from __future__ import annotations

import pytest

from rig import load_run, open_local
from tests import truth
from tests.labcfg import virtual_config

pytestmark = pytest.mark.integration

EDGE_NS = 15_000_000  # samples this close to a state change may read either side of it


def test_the_trace_follows_the_terminal(tmp_path):
    cfg = virtual_config(tmp_path, time_scale=0.5)
    sim = cfg.sim
    with open_local(cfg, results=tmp_path / "r", label="trace") as rig:
        rig.power_cycle("T1", off_s=0.3)
        assert rig.wait_signon("T1").ok
        sale = rig.sale("T1", amount="1.00", card="cup_debit", entry="chip")
        assert sale.outcome == "approved"
        run_id, db, journal = rig.run_id, rig.store.path, rig.journal_path
    run = load_run(db, run_id)
    cur = run.current
    cycles = run.cycles.set_index("cycle_id")
    mine = cur[cur["terminal"] == "T1"]
    assert len(mine) > 20 and set(mine["instrument"]) == {"psu1"}
    assert (mine["channel"] == cfg.terminals["T1"].power.channel).all()
    assert set(mine["cycle_id"]) == set(cycles[cycles["terminal"] == "T1"].index)
    for cid, samples in mine.groupby("cycle_id"):  # every sample inside its cycle
        c = cycles.loc[cid]
        assert samples["mono_ns"].min() >= c["start_mono_ns"]
        assert samples["mono_ns"].max() <= c["end_mono_ns"]
    assert mine["volts"].notna().all()
    assert mine["mono_ns"].is_monotonic_increasing

    entries = [e for e in truth.read(journal) if e.get("terminal") == "T1"]
    on = next(e["mono_ns"] for e in entries if e["what"] == "power_on")
    off = max([e["mono_ns"] for e in entries if e["what"] == "power_off" and e["mono_ns"] < on],
              default=int(cycles["start_mono_ns"].min()))  # the lab starts with outputs off
    boot = next(e["mono_ns"] for e in entries if e["what"] == "boot_done" and e["mono_ns"] > on)

    def during(lo: int, hi: int):
        return mine[(mine["mono_ns"] > lo + EDGE_NS) & (mine["mono_ns"] < hi - EDGE_NS)]

    dark, booting = during(off, on), during(on, boot)
    assert len(dark) >= 2 and (dark["amps"] == 0).all()
    assert len(booting) >= 2
    assert list(booting["amps"]) == pytest.approx([sim.boot_current_a] * len(booting))
    idle = during(boot, boot + 10**12)
    assert set(idle["amps"].round(3)) <= {sim.idle_current_a, sim.txn_current_a}
    sale_samples = mine[mine["cycle_id"] == sale.cycle]
    assert (sale_samples["amps"].round(3) == sim.txn_current_a).any()  # the transaction
