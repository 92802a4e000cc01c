"""Sign-on timing accuracy: the rig's figures vs the virtual lab's truth journal.

4 terminals x 50 cycles at time_scale 1.0 with short boot times, twice: with the controller
process otherwise idle, and with a CPU-busy Python thread in it (a notebook computing while a
series runs). Prints p50 / p99 of |rig - truth| per figure (µs) and the rig's CPU per cycle.

    .venv/bin/python benchmarks/signon_accuracy.py [--cycles 50]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig import open_rig  # noqa: E402
from rig.config import load_lab  # noqa: E402
from tests.truth import read, truth_cycles  # noqa: E402  (one truth, shared with the tests)

FIGURES = ("boot_s", "signon_req_s", "signon_host_s", "ready_s")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_config(tmp: Path) -> Path:
    """configs/labs/virtual.yaml on free ports, short boots, time_scale 1.0."""
    base = load_lab(ROOT / "configs/labs/virtual.yaml")
    host, psu, grbl = f"127.0.0.1:{_port()}", _port(), _port()
    over = {
        "instruments": {"psu1": {"resource": f"TCPIP0::127.0.0.1::{psu}::SOCKET"},
                        "robot1": {"port": f"socket://127.0.0.1:{grbl}"}},
        "host": {"listen": host},
        "terminals": {t: {"console": f"socket://127.0.0.1:{_port()}",
                          "ecr": f"socket://127.0.0.1:{_port()}", "host_path": host}
                      for t in base.terminals},
        "sim": {"psu_listen": f"127.0.0.1:{psu}", "grbl_listen": f"127.0.0.1:{grbl}",
                "control_listen": f"127.0.0.1:{_port()}", "time_scale": 1.0,
                "boot": {"dist": "normal", "mean": 120, "sd": 15, "min": 60},
                "login": {"dist": "fixed", "ms": 10}, "clock_sync": {"dist": "fixed", "ms": 5}},
    }
    cfg = load_lab(ROOT / "configs/labs/virtual.yaml", overrides=over)
    path = tmp / "bench-lab.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return path


def truth_figures(journal: Path, terminal: str) -> list[dict[str, float | None]]:
    return truth_cycles(read(journal), terminal)


def busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(10000):
            x += i * i


def run_case(cfg: Path, results: Path, cycles: int, with_busy: bool) -> dict:
    stop = threading.Event()
    with open_rig(cfg, results=results, label="bench") as rig:
        rig.signon_series("all", n=2, off_s=0.05, progress=False)  # warm-up: caches, JIT-less
        th = threading.Thread(target=busy, args=(stop,), daemon=True)
        if with_busy:
            th.start()
        cpu0, wall0 = time.process_time(), time.monotonic()
        df = rig.signon_series("all", n=cycles, off_s=0.05, progress=False)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        stop.set()
        journal = rig.journal_path
    errs: dict[str, list[float]] = {f: [] for f in FIGURES}
    for t in df["terminal"].unique():
        mine = df[df["terminal"] == t].sort_values("i")
        truth = truth_figures(journal, t)[-len(mine):]  # the measured cycles are the last ones
        for (_, row), tr in zip(mine.iterrows(), truth, strict=True):
            for f in FIGURES:
                if row[f] is not None and tr[f] is not None and not np.isnan(row[f]):
                    errs[f].append(abs(row[f] - tr[f]) * 1e6)
    busy_cpu = cpu if not with_busy else None
    return {"errs": errs, "cycles": len(df), "ok": int(df["ok"].sum()), "cpu_s": cpu,
            "wall_s": wall, "cpu_per_cycle_ms": (busy_cpu / len(df) * 1e3) if busy_cpu else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = bench_config(tmp)
        cases = {"idle": run_case(cfg, tmp / "idle", args.cycles, False),
                 "busy thread": run_case(cfg, tmp / "busy", args.cycles, True)}
    print(f"sign-on timing accuracy: 4 terminals x {args.cycles} cycles, time_scale 1.0")
    print(f"{'case':<12} {'figure':<14} {'n':>4} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9}")
    for name, c in cases.items():
        for f in FIGURES:
            v = np.array(c["errs"][f])
            if v.size:
                print(f"{name:<12} {f:<14} {v.size:>4} {np.percentile(v, 50):>9.1f} "
                      f"{np.percentile(v, 99):>9.1f} {v.max():>9.1f}")
        print(f"{name:<12} ok {c['ok']}/{c['cycles']} cycles, wall {c['wall_s']:.1f} s, "
              f"controller CPU {c['cpu_s']:.2f} s"
              + (f" = {c['cpu_per_cycle_ms']:.2f} ms/cycle" if c["cpu_per_cycle_ms"] else
                 " (includes the busy thread)"))


if __name__ == "__main__":
    main()
