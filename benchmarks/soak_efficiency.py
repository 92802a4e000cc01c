"""Soak campaign efficiency through the rig service, and the morning report of a long run.

1. Efficiency for 4 and 16 virtual terminals: a campaign (power_cycle off_s, await_signon,
   wait; baseline case only) submitted to the rig service, time_scale 1.0, a short fixed boot.
   The ideal cycle is what the configured delays imply: off_s + the terminal's own power-on ->
   READY time (from the virtual lab's truth journal) + the wait. Efficiency = sum of ideal
   cycles / (terminals x the campaign's wall time, POST -> the service records its end). Also
   cycles per hour (achieved vs ideal), the service's CPU per cycle and where the overhead goes.
2. The morning report of a synthetic 10 000-cycle run (16 terminals, 4 cases, some failures) in
   a fresh store: build() and render_html() timed, HTML size.

Goals (issue 8): efficiency >= 99 %; report of 10 000 cycles in < 10 s.

    .venv/bin/python benchmarks/soak_efficiency.py [--terminals 4,16] [--cycles 30]
                                                   [--report-cycles 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig.client import connect  # noqa: E402
from rig.timeline.store import Store, open_readonly  # noqa: E402
from tests.labcfg import grown, virtual_config, write_config  # noqa: E402
from tests.truth import read  # noqa: E402  (one truth, shared with the tests)

EFFICIENCY_GOAL = 99.0
REPORT_GOAL_S = 10.0


# --- process CPU ------------------------------------------------------------------------------
def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


# --- 1. efficiency ----------------------------------------------------------------------------
CAMPAIGN = """
name: bench-efficiency
label: bench
lab: {lab}
terminals: all
steps:
  - power_cycle: {{off_s: {off_s}}}
  - await_signon: {{timeout_s: 30}}
  - wait: {{s: {wait_s}}}
stop:
  cycles: {cycles}
matrix:
  cases:
    - id: baseline
      none: true
"""


def _stop_service(results: Path, lab: Path) -> None:
    subprocess.run([sys.executable, "-m", "rig", "--results", str(results), "serve", "stop",
                    "--config", str(lab)], capture_output=True, cwd=ROOT, timeout=120)


def run_efficiency(tmp: Path, terminals: int, cycles: int, off_s: float, wait_s: float,
                   boot_ms: float) -> dict[str, Any]:
    import httpx

    tmp.mkdir(parents=True, exist_ok=True)
    cfg = grown(virtual_config(tmp, time_scale=1.0,
                               boot={"dist": "fixed", "ms": boot_ms}), terminals)
    lab = write_config(cfg, tmp / "lab.yaml")
    results = tmp / "results"
    camp = tmp / "campaign.yaml"
    camp.write_text(CAMPAIGN.format(lab=lab, off_s=off_s, wait_s=wait_s, cycles=cycles))
    try:
        info, _, _ = connect(lab, results=results)
        pid = int(info["pid"])
        headers = {"Authorization": f"Bearer {info['token']}"} if info.get("token") else {}
        with httpx.Client(base_url=info["url"], headers=headers, timeout=60) as api:
            time.sleep(1.0)  # let the service and its lab settle before the clock starts
            kids = _children(pid)
            cpu0, kcpu0 = _cpu_s(pid), sum(_cpu_s(k) for k in kids)
            t_post = time.time_ns()
            r = api.post("/v1/campaigns", json={"path": str(camp)})
            r.raise_for_status()
            run_id = int(r.json()["run_id"])
            end = time.monotonic() + 30 + cycles * (off_s + wait_s + boot_ms / 1e3 + 2) * 2
            while True:
                st = api.get(f"/v1/campaigns/{run_id}").json()
                if st["state"] != "running":
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"campaign still running: {st}")
                time.sleep(0.25)
            cpu, kcpu = _cpu_s(pid) - cpu0, sum(_cpu_s(k) for k in kids) - kcpu0
        con = open_readonly(results / f"{cfg.name}.db")
        c_start, c_end = con.execute("SELECT started_wall_ns, ended_wall_ns FROM campaigns "
                                     "WHERE run_id=?", (run_id,)).fetchone()
        rows = con.execute("SELECT terminal, idx, state, started_mono_ns, ended_mono_ns "
                           "FROM soak_cycles WHERE run_id=? ORDER BY terminal, idx",
                           (run_id,)).fetchall()
        firsts, lasts = zip(*con.execute(
            "SELECT min(started_wall_ns), max(ended_wall_ns) FROM soak_cycles WHERE run_id=? "
            "GROUP BY terminal", (run_id,)).fetchall(), strict=True)
        con.close()
    finally:
        _stop_service(results, lab)
    assert st["state"] == "completed", st
    assert len(rows) == terminals * cycles, (len(rows), terminals * cycles)
    failed = sum(1 for r in rows if r[2] != "completed")

    journal = read(results / f"{cfg.name}-truth.jsonl")  # where the service's lab writes it
    truth: dict[str, list[tuple[str, int]]] = {}
    for e in journal:
        if e.get("what") in ("power_off", "power_on", "ready") and e.get("terminal"):
            truth.setdefault(e["terminal"], []).append((e["what"], int(e["mono_ns"])))

    ideal_s: list[float] = []
    to_on, after_ready, between, to_off = [], [], [], []  # overhead parts (s) per cycle
    by_term: dict[str, list[tuple]] = {}
    for r in rows:
        by_term.setdefault(r[0], []).append(r)
    for t, cs in by_term.items():
        marks = truth.get(t, [])
        for i, (_, _, _, s0, s1) in enumerate(cs):
            inside = [(w, m) for w, m in marks if s0 <= m <= s1]
            on = next((m for w, m in inside if w == "power_on"), None)
            rdy = next((m for w, m in inside if w == "ready" and on is not None and m >= on),
                       None)
            off = next((m for w, m in inside if w == "power_off"), None)
            assert on is not None and rdy is not None, f"{t} cycle {i}: no power-on / READY"
            ideal_s.append(off_s + (rdy - on) / 1e9 + wait_s)
            to_on.append((on - s0) / 1e9 - off_s)
            after_ready.append((s1 - rdy) / 1e9 - wait_s)
            if off is not None:
                to_off.append((off - s0) / 1e9)
            if i + 1 < len(cs):
                between.append((cs[i + 1][3] - s1) / 1e9)

    n = len(rows)
    wall = (c_end - t_post) / 1e9
    wall_rec = (c_end - c_start) / 1e9
    ideal = float(sum(ideal_s))
    eff = ideal / (terminals * wall) * 100
    return {
        "terminals": terminals, "cycles": n, "failed": failed, "wall_s": wall,
        "wall_record_s": wall_rec, "ideal_s": ideal, "ideal_cycle_s": ideal / n,
        "efficiency": eff, "efficiency_record": ideal / (terminals * wall_rec) * 100,
        "per_hour": n / wall * 3600, "per_hour_ideal": n / (ideal / terminals) * 3600,
        "overhead_ms": (terminals * wall - ideal) / n * 1e3,
        "cpu_ms": cpu / n * 1e3, "lab_cpu_ms": kcpu / n * 1e3,
        "to_on_ms": np.array(to_on) * 1e3, "to_off_ms": np.array(to_off) * 1e3,
        "after_ready_ms": np.array(after_ready) * 1e3, "between_ms": np.array(between) * 1e3,
        "lead_ms": np.mean([f - t_post for f in firsts]) / 1e6,
        "tail_ms": np.mean([c_end - x for x in lasts]) / 1e6,
        "finish_ms": (c_end - max(lasts)) / 1e6,
        "edges_ms": (terminals * wall - sum((s1 - s0) / 1e9 for *_, s0, s1 in rows)
                     - sum(between)) / n * 1e3,
    }


def print_efficiency(cases: list[dict[str, Any]], off_s: float, wait_s: float,
                     boot_ms: float) -> None:
    print(f"soak efficiency through the rig service: steps power_cycle(off_s={off_s}), "
          f"await_signon, wait({wait_s} s); baseline only; time_scale 1.0, boot fixed "
          f"{boot_ms:.0f} ms")
    print("ideal cycle = off_s + the terminal's power-on -> READY (truth journal) + wait; "
          "wall = POST /v1/campaigns -> the campaign's recorded end")
    print(f"{'terms':>5} {'cycles':>6} {'fail':>4} {'wall s':>7} {'ideal/cyc s':>11} "
          f"{'eff %':>6} {'cyc/h':>7} {'ideal cyc/h':>11} {'ovh ms/cyc':>10} "
          f"{'svc CPU ms/cyc':>14} {'lab CPU ms/cyc':>14}")
    for c in cases:
        print(f"{c['terminals']:>5} {c['cycles']:>6} {c['failed']:>4} {c['wall_s']:>7.1f} "
              f"{c['ideal_cycle_s']:>11.3f} {c['efficiency']:>6.2f} {c['per_hour']:>7.0f} "
              f"{c['per_hour_ideal']:>11.0f} {c['overhead_ms']:>10.1f} {c['cpu_ms']:>14.2f} "
              f"{c['lab_cpu_ms']:>14.2f}")
    print("where a cycle's overhead goes (ms per cycle, mean / p95):")
    for c in cases:
        def mp(a: np.ndarray) -> str:
            return f"{a.mean():6.1f} / {np.percentile(a, 95):6.1f}" if a.size else "     -"

        print(f"  {c['terminals']:>2} terminals: cycle start -> on edge beyond off_s "
              f"{mp(c['to_on_ms'])} (of which start -> off edge {mp(c['to_off_ms'])}); READY "
              f"-> cycle end beyond the wait {mp(c['after_ready_ms'])}; cycle end -> next start "
              f"{mp(c['between_ms'])}; POST -> first cycle + last cycle -> campaign end "
              f"(amortised) {c['edges_ms']:.1f} [per terminal: POST -> its first cycle "
              f"{c['lead_ms']:.0f} ms, its last cycle -> campaign end {c['tail_ms']:.0f} ms, of which "
              f"{c['finish_ms']:.0f} ms after the last terminal's last cycle]")
    for c in cases:
        met = "met" if c["efficiency"] >= EFFICIENCY_GOAL else "NOT met"
        print(f"  {c['terminals']:>2} terminals: efficiency {c['efficiency']:.2f} % "
              f"(goal >= {EFFICIENCY_GOAL:.0f} %: {met}); overhead {c['overhead_ms']:.1f} "
              f"ms per cycle of {c['ideal_cycle_s'] * 1e3:.0f} ms ideal; by the service's "
              f"own campaign record (start -> end) {c['efficiency_record']:.2f} % over "
              f"{c['wall_record_s']:.1f} s")


# --- 2. the report of a long run ------------------------------------------------------------
CASES = ("baseline", "signon-latency", "host-timeout", "mac-error")
SALE_CARDS = (("cup_debit", "chip", 100), ("visa_credit", "tap", 200))


def _num(v: Any) -> float | None:
    return None if v is None or v != v else round(float(v), 6)


def soak_result(rng: random.Random, case: str, sign: dict[str, Any],
                sales: list[dict[str, Any]]) -> tuple[str, str | None, dict[str, Any]]:
    """One planned cycle as the runner records it, from the figures of its store cycles (a
    sign-on and the sales after it): (state, class, result)."""
    res: dict[str, Any] = {"case": case, "label": "fw-2.4.1"}
    if rng.random() < 0.003:  # the PSU or the robot went away: a pause, the cycle aborted
        res["error"] = "psu1: no answer within 2 s"
        return "aborted", "infrastructure", res
    ok = bool(sign["signon_ok"])
    res["signon"] = {"terminal": sign["terminal"], "cycle": int(sign["cycle_id"]), "ok": ok,
                     **{f: _num(sign[f]) for f in ("boot_s", "signon_req_s", "signon_host_s",
                                                   "ready_s")},
                     "attempts": int(sign["attempts"]),
                     "error": None if ok else "SIGNON fail rc=96 attempt=4"}
    res["sales"] = []
    if not ok:
        res["error"] = "sign-on: SIGNON fail rc=96 attempt=4"
        return "failed", "terminal", res
    for k, s in enumerate(sales[:2]):
        card, entry, amount = SALE_CARDS[k % 2]
        outcome = str(s["outcome"])
        rc = {"approved": "00", "declined": "51"}.get(outcome, "98")
        if case == "host-timeout" and k == 0:
            outcome, rc = "failed", "98"
        res["sales"].append({
            "card": card, "entry": entry, "amount_minor": amount, "outcome": outcome, "rc": rc,
            "auth_code": f"{rng.randrange(10**6):06d}" if outcome == "approved" else None,
            "rrn": f"{rng.randrange(10**12):012d}", "stan": f"{int(s['cycle_id']) % 10**6:06d}",
            "pan_masked": "623456******1234", "balance": None,
            **{f: _num(s[f]) for f in ("card_to_auth_s", "auth_host_s", "auth_to_result_s",
                                       "card_to_result_s", "robot_wait_s")},
            "txn": "sale", "cycle": int(s["cycle_id"]),
            "error": "no 0210 within 8 s; reversed" if outcome == "failed" else None})
    if case == "mac-error":
        passed = rng.random() > 0.02
        res.update(verdict="pass" if passed else "fail", recover_s=round(rng.gauss(1.1, 0.1), 3),
                   error=None if passed else "the terminal did not sign on again after A0")
        return ("completed", None, res) if passed else ("failed", "terminal", res)
    bad = [s for s in res["sales"] if s["outcome"] != "approved"]
    if bad and case == "baseline":
        res["error"] = f"sale: {bad[0]['outcome']} {bad[0]['rc']}"
        return "failed", "terminal", res
    if bad:
        res["under_fault"] = f"sale: {bad[0]['outcome']} {bad[0]['rc']} {bad[0]['error'] or ''}"
    return "completed", None, res


def make_report_store(db: Path, n_cycles: int, terminals: int) -> tuple[int, int]:
    """A campaign run of ``n_cycles`` planned cycles in a fresh store, with what a real one
    leaves: the store cycles (sign-ons and sales, rig.analysis.synth) and their events, the
    soak_cycles rows over them, health changes and a pause. Returns (run id, events)."""
    from rig.analysis.synth import synth_run
    from rig.config import load_lab
    from tests.labcfg import VIRTUAL_YAML

    rng = random.Random(8)
    names = [f"T{i}" for i in range(1, terminals + 1)]
    per = -(-n_cycles // terminals)
    # ~40 % sign-ons: every terminal has more than `per` of them, each followed by its sales
    s = synth_run(cycles=int(per * terminals * 3.6), terminals=terminals, sale_share=0.6,
                  p_refused=0.005, p_declined=0.01, p_no_response=0.005, seed=8)
    store = Store(db)
    store._db.execute("PRAGMA synchronous=OFF")  # filling speed is not what is measured
    run_id = store.begin_run(lab="virtual", label="fw-2.4.1",
                             config=load_lab(VIRTUAL_YAML).model_dump(mode="json"),
                             clock={"host": "bench"})
    ids: dict[int, int] = {}
    for c in s.cycles.itertuples():
        ids[c.cycle_id] = store.start_cycle(run_id, c.terminal, c.n, c.kind,
                                            int(c.start_mono_ns), int(c.start_wall_ns))
        store.end_cycle(ids[c.cycle_id], "completed", {"ok": True})
    s.events = s.events.assign(cycle_id=s.events["cycle_id"].map(ids))
    s.run_id = run_id
    rows = s.rows()
    for i in range(0, len(rows), 2000):
        store.append_events(rows[i:i + 2000])
        store.commit()
    campaign = {"name": "nightly", "label": "fw-2.4.1", "lab": "../labs/virtual.yaml",
                "terminals": names,
                "steps": [{"kind": "power_cycle", "off_s": 0.3},
                          {"kind": "await_signon", "timeout_s": 30.0},
                          {"kind": "sales", "count": 1, "card": "cup_debit", "entry": "chip",
                           "amount": "1.00"},
                          {"kind": "sales", "count": 1, "card": "visa_credit", "entry": "tap",
                           "amount": "2.00"}],
                "stop": {"cycles": per}, "matrix": {"order": "round_robin",
                                                     "cases": [{"id": c} for c in CASES]}}
    store.add_campaign(run_id, name="nightly", label="fw-2.4.1", source=None,
                       campaign=campaign, terminals=names, planned=per)
    cyc = s.cycles.merge(s.truth.drop(columns="terminal"), on="cycle_id").sort_values("cycle_id")
    times: list[tuple[int, int, int, int, int]] = []
    made = 0
    for k, t in enumerate(names):
        mine = cyc[cyc["terminal"] == t].to_dict("records")
        starts = [i for i, c in enumerate(mine) if c["kind"] == "signon"]
        assert len(starts) > per, (t, len(starts), per)
        for idx in range(per):
            if made == n_cycles:
                break
            group = mine[starts[idx]:starts[idx + 1]]
            case = CASES[(idx + k) % len(CASES)]
            sid = store.start_soak_cycle(run_id, t, idx, case)
            assert sid is not None
            state, cls, result = soak_result(rng, case, group[0], group[1:])
            store.end_soak_cycle(sid, state, result, cls=cls,
                                 first_cycle=ids[group[0]["cycle_id"]],
                                 last_cycle=ids[group[-1]["cycle_id"]])
            m0, m1 = int(group[0]["start_mono_ns"]), int(group[-1]["end_mono_ns"])
            w0 = int(group[0]["start_wall_ns"])
            times.append((w0, w0 + m1 - m0, m0, m1, sid))
            made += 1
    span = max(x[3] for x in times) - min(x[2] for x in times)
    m_first, w_first = min(x[2] for x in times), min(x[0] for x in times)
    marks = []
    for j, (t, state, why) in enumerate([
            ("T7", "suspect", "2 DUT failures in a row"), ("T7", "good", "health check passed"),
            ("T12", "suspect", "2 DUT failures in a row"),
            ("T12", "bad", "health check failed: sign-on: no READY"),
            ("T12", "good", "health check passed")]):
        at = span * (j + 1) // 7
        marks.append((run_id, None, m_first + at, w_first + at, "health", "soak", t, "derived",
                      json.dumps({"state": state, "why": why, "run": run_id})))
    for j, kind in enumerate(("pause", "resume")):
        at = span * 6 // 10 + j * 10_000_000_000
        marks.append((run_id, None, m_first + at, w_first + at, kind, "soak", "T3", "derived",
                      json.dumps({"why": "psu1: no answer within 2 s", "run": run_id})))
    store.append_events(marks)
    store.commit()
    store.end_run(run_id, "completed")
    store.set_campaign_state(run_id, "completed")
    store.close()
    con = sqlite3.connect(db)  # the store cycles' and soak cycles' own times, not the fill's
    con.executemany("UPDATE cycles SET end_mono_ns=?, end_wall_ns=? WHERE id=?",
                    [(int(e), int(w) + int(e) - int(m), ids[c]) for c, m, e, w in zip(
                        s.cycles["cycle_id"], s.cycles["start_mono_ns"], s.cycles["end_mono_ns"],
                        s.cycles["start_wall_ns"], strict=True)])
    con.executemany("UPDATE soak_cycles SET started_wall_ns=?, ended_wall_ns=?, "
                    "started_mono_ns=?, ended_mono_ns=? WHERE id=?", times)
    con.execute("UPDATE runs SET started_wall_ns=?, started_mono_ns=? WHERE id=?",
                (w_first, m_first, run_id))
    con.commit()
    con.close()
    return run_id, len(rows)


def run_report(tmp: Path, n_cycles: int, terminals: int) -> dict[str, Any]:
    from rig.soak import report

    db = tmp / "report.db"
    t = time.perf_counter()
    run_id, events = make_report_store(db, n_cycles, terminals)
    fill = time.perf_counter() - t
    t0 = time.perf_counter()
    doc = report.build(db, run_id)
    t1 = time.perf_counter()
    # `rig report --html` (write_html with the store) adds the failed / slowest cycles'
    # event timelines; a report.py without them renders the page alone
    lines = report.timelines(db, doc) if hasattr(report, "timelines") else None
    t2 = time.perf_counter()
    page = report.render_html(doc, lines) if lines is not None else report.render_html(doc)
    t3 = time.perf_counter()
    assert len(doc["cycles"]) == n_cycles and page.startswith("<!doctype html>")
    s = doc["summary"]
    return {"cycles": len(doc["cycles"]), "events": events, "fill_s": fill,
            "build_s": t1 - t0, "timelines_s": t2 - t1, "timelines": len(lines or []),
            "render_s": t3 - t2, "html_kb": len(page.encode()) / 1024,
            "images": page.count("data:image/png;base64,"),
            "json_kb": len(json.dumps(doc, default=str).encode()) / 1024,
            "states": (s["completed"], s["failed"], s["aborted"]), "verdict": s["verdict"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--terminals", default="4,16")
    ap.add_argument("--cycles", type=int, default=30, help="per terminal")
    ap.add_argument("--off-s", type=float, default=0.3)
    ap.add_argument("--wait-s", type=float, default=0.5)
    ap.add_argument("--boot-ms", type=float, default=300)
    ap.add_argument("--report-cycles", type=int, default=10_000)
    ap.add_argument("--report-terminals", type=int, default=16)
    args = ap.parse_args()
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory(prefix="soak-eff-") as d:
        tmp = Path(d)
        cases = [run_efficiency(tmp / f"t{n}", int(n), args.cycles, args.off_s, args.wait_s,
                                args.boot_ms) for n in args.terminals.split(",")]
        print_efficiency(cases, args.off_s, args.wait_s, args.boot_ms)
        rep = run_report(tmp, args.report_cycles, args.report_terminals)
    total = rep["build_s"] + rep["timelines_s"] + rep["render_s"]
    print(f"morning report of a {rep['cycles']}-cycle run ({args.report_terminals} terminals, "
          f"{len(CASES)} cases; completed / failed / aborted {rep['states'][0]} / "
          f"{rep['states'][1]} / {rep['states'][2]}; {rep['events']:,} events; store filled "
          f"in {rep['fill_s']:.1f} s):")
    print(f"  build() {rep['build_s']:.2f} s + timelines() {rep['timelines_s']:.2f} s "
          f"({rep['timelines']} cycles) + render_html() {rep['render_s']:.2f} s = "
          f"{total:.2f} s (goal < {REPORT_GOAL_S:.0f} s: "
          f"{'met' if total < REPORT_GOAL_S else 'NOT met'}); HTML {rep['html_kb']:.0f} KB "
          f"({rep['images']} embedded PNGs), JSON document {rep['json_kb']:.0f} KB")
    print(f"  verdict: {rep['verdict']}")


if __name__ == "__main__":
    main()
