"""Analysis throughput: store ingest, figures() on 1 M / 10 M events, load_run of a 10 000-cycle
run. Synthetic runs (rig.analysis.synth): sign-ons and sales as the rig records them, with
retries, refusals, faults and instrument chatter (~18 events per cycle).

    .venv/bin/python benchmarks/analysis_speed.py [--sizes 1000000,10000000] [--ingest 1000000]
                                                  [--load-cycles 10000]

Goals (issue 9): ingest >= 200 k events/s (batched, synchronous=FULL); 10 M events -> all
figures in < 3 s and < 2 GB. Each figures() size runs in a fresh process; its peak memory is the
process's high-water mark (VmHWM, reset after the events were generated), i.e. the events frame
plus everything figures() allocates.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVENTS_PER_CYCLE = 18.2  # synth_run's mix (sign-ons 70 %, sales 30 %, chatter 8 per cycle)


def _status(key: str) -> float:
    """A /proc/self/status field in MB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        pass


def bench_ingest(n: int, tmp: Path) -> dict:
    from rig.analysis.synth import synth_run
    from rig.core.clock import now
    from rig.timeline.events import Event, EventKind
    from rig.timeline.recorder import Recorder
    from rig.timeline.store import Store

    s = synth_run(cycles=int(n / EVENTS_PER_CYCLE), terminals=8, seed=1)
    store = Store(tmp / "ingest.db")
    run = store.begin_run(lab="bench", label="ingest", config={}, clock={})
    s.run_id = run
    rows = s.rows()
    t = time.perf_counter()
    for i in range(0, len(rows), 2000):  # as the recorder: batches of 2000, one commit each
        store.append_events(rows[i:i + 2000])
        store.commit()
    store_rate = len(rows) / (time.perf_counter() - t)
    # through the recorder: record() from the producer, the writer thread batches and commits
    m = min(len(rows), 200_000)
    st = now()
    evs = [Event(st.mono_ns + i, st.wall_ns + i, EventKind.PSU_IO, "psu1", "T1",
                 {"cmd": "MEAS:CURR?", "reply": "0.351"}) for i in range(m)]
    rec = Recorder(store, run)
    t = time.perf_counter()
    for e in evs:
        rec.record(e)
    rec.flush(120)
    rec_rate = m / (time.perf_counter() - t)
    rec.close()
    store.close()
    return {"events": len(rows), "store_events_per_s": round(store_rate),
            "recorder_events": m, "recorder_events_per_s": round(rec_rate)}


def make_events(n: int, path: Path) -> dict:
    """In a fresh process: ~n synthetic events and their cycles, pickled to ``path``."""
    import pickle

    from rig.analysis.synth import synth_run

    t = time.perf_counter()
    s = synth_run(cycles=int(n / EVENTS_PER_CYCLE), terminals=8, seed=2)
    gen_s = time.perf_counter() - t
    cyc = s.cycles[["cycle_id", "terminal", "kind", "start_mono_ns", "end_mono_ns"]]
    with open(path, "wb") as f:
        pickle.dump((s.events, cyc), f, protocol=5)
    return {"generate_s": round(gen_s, 1)}


def bench_figures_child(path: Path) -> dict:
    """In a fresh process: load the events frame, then time figures() (cold, then again); peak
    memory is the process's high-water mark: interpreter + libraries + frame + figures()."""
    import pickle

    import numpy as np  # noqa: F401 (loaded before the baseline is taken)
    import pandas as pd  # noqa: F401
    import pyarrow  # noqa: F401

    from rig.analysis.figures import figures

    base0 = _status("VmRSS")
    with open(path, "rb") as f:
        ev, cyc = pickle.load(f)
    gc.collect()
    frame_mb = ev.memory_usage(deep=True).sum() / 2**20
    _reset_peak()
    base = _status("VmRSS")
    t = time.perf_counter()
    f = figures(ev, cyc)
    cold = time.perf_counter() - t
    peak = _status("VmHWM")
    del f
    gc.collect()
    t = time.perf_counter()
    f = figures(ev, cyc)
    warm = time.perf_counter() - t
    return {"events": len(ev), "cycles": len(cyc), "frame_mb": round(frame_mb),
            "libs_mb": round(base0), "rss_before_mb": round(base),
            "figures_cold_s": round(cold, 2), "figures_warm_s": round(warm, 2),
            "peak_rss_mb": round(peak), "figures_own_mb": round(peak - base),
            "cycles_out": len(f)}


def bench_load(cycles: int, tmp: Path) -> dict:
    """A run of ``cycles`` cycles written through the Store API, then load_run from the file."""
    import sqlite3

    from rig.analysis.load import list_runs, load_run
    from rig.analysis.synth import synth_run
    from rig.timeline.store import Store

    s = synth_run(cycles=cycles, terminals=8, seed=3)
    store = Store(tmp / "load.db")
    run = store.begin_run(lab="bench", label="load", config={"terminals": {}}, clock={})
    ids = {}
    for c in s.cycles.itertuples():
        ids[c.cycle_id] = store.start_cycle(run, c.terminal, c.n, c.kind, int(c.start_mono_ns),
                                            int(c.start_mono_ns))
        store.end_cycle(ids[c.cycle_id], "completed", {"ok": True})
    with sqlite3.connect(store.path) as con:
        con.executemany("UPDATE cycles SET end_mono_ns=? WHERE id=?",
                        [(int(e), ids[c]) for c, e in zip(s.cycles["cycle_id"],
                                                          s.cycles["end_mono_ns"], strict=True)])
    s.events = s.events.assign(cycle_id=s.events["cycle_id"].map(ids))
    s.run_id = run
    rows = s.rows()
    for i in range(0, len(rows), 2000):
        store.append_events(rows[i:i + 2000])
        store.commit()
    store.end_run(run, "completed")
    store.close()
    t = time.perf_counter()
    r = load_run(tmp / "load.db", run)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    n_ev = len(r.events)
    data_s = time.perf_counter() - t
    t = time.perf_counter()
    r2 = load_run(tmp / "load.db", run, events=False)
    light_s = time.perf_counter() - t
    t = time.perf_counter()
    list_runs(tmp / "load.db")
    list_s = time.perf_counter() - t
    return {"cycles": len(r.cycles), "events": n_ev, "load_run_s": round(load_s, 2),
            "events_with_data_s": round(data_s, 2), "load_run_no_events_s": round(light_s, 2),
            "list_runs_s": round(list_s, 3), "ok": bool(len(r2.cycles) == cycles)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--ingest", type=int, default=1_000_000)
    ap.add_argument("--load-cycles", type=int, default=10_000)
    ap.add_argument("--make", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.make:
        print(json.dumps(make_events(int(a.make[0]), Path(a.make[1]))))
        return 0
    if a.child:
        print(json.dumps(bench_figures_child(Path(a.child))))
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ing = bench_ingest(a.ingest, tmp)
        print(f"ingest: {ing['events']:,} events into the store in batches of 2000, one commit "
              f"each (synchronous=FULL): {ing['store_events_per_s']:,} events/s; through the "
              f"Recorder ({ing['recorder_events']:,} events): "
              f"{ing['recorder_events_per_s']:,} events/s   (goal >= 200,000)", flush=True)
        for n in (int(float(x)) for x in a.sizes.split(",")):
            pkl = tmp / f"events-{n}.pkl"
            runs = []
            for args in (["--make", str(n), str(pkl)], ["--child", str(pkl)]):
                out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT,
                                     capture_output=True, text=True, env=dict(os.environ))
                if out.returncode != 0:
                    print(f"figures() at {n:,} events failed: {out.stderr[-800:]}")
                    break
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            else:
                g, r = runs
                print(f"figures(): {r['events']:,} events / {r['cycles']:,} cycles: "
                      f"{r['figures_cold_s']} s (first call), {r['figures_warm_s']} s (again); "
                      f"peak RSS {r['peak_rss_mb']} MB = interpreter and libraries "
                      f"{r['libs_mb']} MB + events frame {r['frame_mb']} MB + figures() "
                      f"{r['figures_own_mb']} MB   (goal at 10 M: < 3 s, < 2048 MB; generating "
                      f"the events took {g['generate_s']} s)", flush=True)
            pkl.unlink(missing_ok=True)
        ld = bench_load(a.load_cycles, tmp)
        print(f"load_run: {ld['cycles']:,} cycles / {ld['events']:,} events: {ld['load_run_s']} s "
              f"(typed events + every figure re-derived); events' data dicts parsed on first "
              f"use {ld['events_with_data_s']} s; events=False {ld['load_run_no_events_s']} s; "
              f"list_runs {ld['list_runs_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
