"""Sale timing accuracy with 4 terminals sharing one card robot.

Each terminal runs N sales (cards and entry modes in rotation) in its own thread; the robot's
fair lock serializes the card moves. Prints p50 / p99 of |rig - truth| per sale figure (µs),
robot move time vs the time the motion plan says, and the rig's CPU time per sale.

    .venv/bin/python benchmarks/sale_accuracy.py [--sales 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.signon_accuracy import bench_config  # noqa: E402
from rig import load_run, open_rig  # noqa: E402

FIGURES = ("card_to_auth_s", "auth_host_s", "auth_to_result_s", "card_to_result_s")
PRESENT = {"chip": "card_inserted", "swipe": "card_swiped", "tap": "card_in_field"}
ROTATION = [("cup_debit", "chip"), ("visa_credit", "swipe"), ("mc_debit", "tap"),
            ("cup_credit", "chip"), ("cup_debit", "tap"), ("visa_credit", "chip")]


def truth_for(entries: list[dict], terminal: str, entry: str, start_ns: int, end_ns: int) -> dict:
    first: dict[str, int] = {}
    for e in entries:
        if e.get("terminal") == terminal and start_ns <= e["mono_ns"] <= end_ns:
            first.setdefault(e["what"], e["mono_ns"])
    p, q = first.get(PRESENT[entry]), first.get("auth_req_sent")
    r, s = first.get("auth_rsp_received"), first.get("result")
    if None in (p, q, r, s):
        return {}
    return {"card_to_auth_s": (q - p) / 1e9, "auth_host_s": (r - q) / 1e9,
            "auth_to_result_s": (s - r) / 1e9, "card_to_result_s": (s - p) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sales", type=int, default=6, help="sales per terminal")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = bench_config(tmp, 4)
        windows: list[tuple[str, str, int, int, object]] = []
        lock = threading.Lock()
        with open_rig(cfg, results=tmp / "r", label="bench-sales") as rig:
            for t in rig.terminals:
                rig.ensure_ready(t)

            def worker(t: str) -> None:
                for i in range(args.sales):
                    card, entry = ROTATION[i % len(ROTATION)]
                    t0 = time.monotonic_ns()
                    r = rig.sale(t, amount="1.00", card=card, entry=entry)
                    with lock:
                        windows.append((t, entry, t0, time.monotonic_ns(), r))

            cpu0, wall0 = time.process_time(), time.monotonic()
            threads = [threading.Thread(target=worker, args=(t,)) for t in rig.terminals]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            journal, db, run_id = rig.journal_path, rig.store.path, rig.run_id
        entries = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
        errs: dict[str, list[float]] = {f: [] for f in FIGURES}
        approved = 0
        for t, entry, a, b, r in windows:
            approved += r.approved  # type: ignore[attr-defined]
            truth = truth_for(entries, t, entry, a, b)
            for f in FIGURES:
                got = getattr(r, f)
                if got is not None and f in truth:
                    errs[f].append(abs(got - truth[f]) * 1e6)
        ev = load_run(db, run_id).events
        moves = ev[ev["kind"] == "robot_move"]
        waits = ev[ev["kind"] == "robot_wait"]
    n = len(windows)
    print(f"sale timing accuracy: 4 terminals x {args.sales} sales, one shared robot")
    print(f"{'figure':<18} {'n':>4} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9}")
    for f in FIGURES:
        v = np.array(errs[f])
        if v.size:
            print(f"{f:<18} {v.size:>4} {np.percentile(v, 50):>9.1f} {np.percentile(v, 99):>9.1f} "
                  f"{v.max():>9.1f}")
    over = [(m["duration_s"] - m["planned_s"]) * 1e3 for m in moves["data"]
            if m.get("planned_s") is not None]
    if over:
        o = np.array(over)
        print(f"robot moves: {len(o)}, actual - planned: p50 {np.percentile(o, 50):.1f} ms, "
              f"p99 {np.percentile(o, 99):.1f} ms")
    if len(waits):
        w = np.array([d.get("waited_s", 0.0) for d in waits["data"]])
        print(f"robot wait per sale: p50 {np.percentile(w, 50) * 1e3:.0f} ms, max {w.max() * 1e3:.0f} ms")
    print(f"{approved}/{n} approved, wall {wall:.1f} s, controller CPU {cpu:.2f} s = "
          f"{cpu / max(n, 1) * 1e3:.1f} ms/sale")


if __name__ == "__main__":
    main()
