"""The analysis on real virtual-lab runs: the figures re-derived from the stored events equal the
live end-of-cycle results; load_run reads a run while it is being written; compare finds a
firmware's boot-time shift and no change between two runs of one configuration."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from rig import compare, list_runs, load_run, open_local
from rig.analysis.figures import SALE_FIGURES, SIGNON_FIGURES
from rig.faults import HostDown, Latency
from tests.labcfg import virtual_config

pytestmark = [pytest.mark.integration, pytest.mark.timing]  # timing: run alone (pyproject markers)


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b


def test_derived_figures_equal_the_live_results(tmp_path):
    cfg = virtual_config(tmp_path, proxies=True, time_scale=0.2)
    with open_local(cfg, results=tmp_path / "r", label="live-vs-derived") as rig:
        rig.signon_series("all", n=3, off_s=0.05, progress=False)
        with rig.fault("T2", Latency(ms=40, during="signon")):  # a faulted cycle
            rig.power_cycle("T2", off_s=0.05)
            rig.wait_signon("T2")
        rec = rig.recovery("T3", HostDown(for_s=0.6), during="signon")
        assert rec.recovered and rec.recover_s is not None
        sales = [rig.sale("T1", amount="1.00", card="cup_debit", entry="chip"),
                 rig.sale("T1", amount="9999.00", card="cup_debit", entry="swipe"),  # 51
                 rig.sale("T1", amount="1.00", card="visa_credit", entry="tap")]
        run_id, db = rig.run_id, rig.store.path
    assert [s.outcome for s in sales] == ["approved", "declined", "approved"]
    run = load_run(db, run_id)
    res = run.results.set_index("cycle_id")
    cyc = run.cycles.set_index("cycle_id")
    checked = 0
    for cid, row in cyc.iterrows():
        stored = res.loc[cid]
        if row["kind"] == "signon":
            for f in (*SIGNON_FIGURES, "attempts"):
                assert _same(stored[f], row[f]), (cid, f, stored[f], row[f])
            assert bool(stored["ok"]) == bool(row["signon_ok"]), cid
            checked += 1
        elif row["kind"] == "sale":
            for f in SALE_FIGURES:
                assert _same(stored[f], row[f]), (cid, f, stored[f], row[f])
            assert (stored["outcome"], stored["rc"], stored["stan"]) == (
                row["outcome"], row["rc"], row["stan"])
            checked += 1
    assert checked == len(cyc) == 12 + 1 + 1 + 3
    # recover_s: the recovery cycle stored it; the same definition on the stored events
    rc = cyc.loc[rec.cycle]
    assert rc["fault_case"].startswith("host_down(")
    assert rc["recover_s"] == pytest.approx(rec.recover_s, abs=1e-9)
    assert cyc[cyc["terminal"] == "T2"]["fault_case"].str.startswith("latency(").sum() == 1
    # the faults table and the sales table
    assert set(run.faults["fault"]) == {"latency", "host_down"}
    assert run.faults["off_ns"].notna().all()
    assert len(run.sales) == 3 and list(run.sales["outcome"]) == ["approved", "declined",
                                                                  "approved"]
    assert run.running is False and run.run["state"] == "completed"
    assert len(run.current) > 0  # the PSU current trace (tests/integration/test_current_trace.py)


def test_load_run_while_the_run_is_written(tmp_path):
    cfg = virtual_config(tmp_path, time_scale=0.1)
    rig = open_local(cfg, results=tmp_path / "r", label="busy")
    db, run_id = rig.store.path, rig.run_id
    done = threading.Event()

    def series():
        try:
            rig.signon_series(["T1", "T2"], n=15, off_s=0.02, progress=False)
        finally:
            done.set()

    th = threading.Thread(target=series)
    th.start()
    seen = []
    try:
        while not done.is_set():
            run = load_run(db, run_id)
            assert run.running and run.run["state"] == "running"
            c = run.cycles
            # every cycle it shows is consistent: a completed one has all its figures
            ok = c[(c["state"] == "completed") & c["ok"]]
            assert ok["ready_s"].notna().all()
            seen.append((len(c), int((c["state"] == "started").sum())))
            time.sleep(0.05)
    finally:
        th.join(60)
        rig.close()
    assert len(seen) >= 3 and seen[-1][0] > seen[0][0]
    assert any(open_ > 0 for _, open_ in seen)  # it saw cycles still open
    runs = list_runs(db).set_index("run_id")
    assert runs.loc[run_id, "state"] == "completed" and runs.loc[run_id, "cycles"] == 30
    final = load_run(db, run_id)
    assert not final.running and final.cycles["ok"].all()


def _firmware(tmp_path, name: str, boot_mean_ms: float, seed: int):
    """One run of 200 sign-on cycles (4 terminals x 50) with boot ~ normal(mean, 30 ms)."""
    cfg = virtual_config(tmp_path / name, time_scale=0.1, seed=seed,
                         boot={"dist": "normal", "mean": boot_mean_ms, "sd": 30, "min": 100},
                         login={"dist": "fixed", "ms": 10}, clock_sync={"dist": "fixed", "ms": 5})
    with open_local(cfg, results=tmp_path / "r", label=name) as rig:
        rig.signon_series("all", n=50, off_s=0.01, progress=False)
        db, run_id = rig.store.path, rig.run_id
    return load_run(db, run_id)


def test_compare_finds_a_10_percent_boot_shift_and_no_change_within_a_firmware(tmp_path):
    """Virtual lab (not synthetic events): time_scale 0.1 and 300 ms boots (30 ms in real
    time), so each 200-cycle run takes a few seconds. Firmware B boots 10 % slower than A; A'
    is A's configuration again with another random seed."""
    a = _firmware(tmp_path, "fw-A", 300, seed=1)
    a2 = _firmware(tmp_path, "fw-A-again", 300, seed=2)
    b = _firmware(tmp_path, "fw-B", 330, seed=3)
    for r in (a, a2, b):
        assert len(r.cycles) == 200 and r.cycles["ok"].all()
    shift = compare(a, b, figure="boot_s")
    assert shift.detected, shift.verdict
    # 30 ms of simulated boot at time_scale 0.1 is 3 ms of real time
    assert shift.shift_s == pytest.approx(0.003, abs=0.0012), shift.verdict
    assert shift.ci_s[0] > 0 and shift.p_value < 0.01
    assert "longer" in shift.verdict and "fw-B" in shift.verdict
    ready = compare(a, b, figure="ready_s")
    assert ready.detected and ready.shift_s > 0
    same = compare(a, a2, figure="boot_s")
    assert not same.detected, same.verdict
    assert same.verdict.startswith("no detectable change")
    assert same.ci_s[0] <= 0 <= same.ci_s[1]
    assert np.isfinite(same.p_value)
