"""Sign-on timing accuracy through the rig service: the figures vs the virtual lab's truth.

8 terminals (one 8-channel virtual PSU) x 50 cycles at time_scale 1.0 with short boot times, a
series run by a client of the rig service, in three cases in one run: the host otherwise idle;
a CPU-busy client process (a notebook computing); a client hammering the service's API (status
and event-stream requests in a loop). Prints p50 / p99 / max of |rig - truth| per figure (µs),
the service's CPU per cycle, and the power-on bracket (command TX -> acknowledge RX).

    .venv/bin/python benchmarks/signon_accuracy.py [--cycles 50] [--terminals 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
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


def bench_config(tmp: Path, terminals: int) -> Path:
    """configs/labs/virtual.yaml grown to ``terminals`` terminals on one PSU with as many
    channels, on free ports, short boots, time_scale 1.0."""
    base = load_lab(ROOT / "configs/labs/virtual.yaml")
    host, psu, grbl = f"127.0.0.1:{_port()}", _port(), _port()
    t1 = base.terminals["T1"].model_dump(mode="json")
    names = [f"T{i}" for i in range(1, terminals + 1)]
    terms = {}
    for i, t in enumerate(names, start=1):
        d = base.terminals[t].model_dump(mode="json") if t in base.terminals else json.loads(
            json.dumps(t1))
        d.update(console=f"socket://127.0.0.1:{_port()}", ecr=f"socket://127.0.0.1:{_port()}",
                 host_path=host)
        d["power"]["channel"] = i
        if t not in base.terminals:
            d["terminal_id"] = f"{10000000 + i:08d}"
        terms[t] = d
    raw = base.model_dump(mode="json")
    raw["terminals"] = terms
    raw["instruments"]["psu1"]["channels"] = max(terminals, 4)
    over = {
        "instruments": {"psu1": {"resource": f"TCPIP0::127.0.0.1::{psu}::SOCKET"},
                        "robot1": {"port": f"socket://127.0.0.1:{grbl}"}},
        "host": {"listen": host},
        "sim": {"psu_listen": f"127.0.0.1:{psu}", "grbl_listen": f"127.0.0.1:{grbl}",
                "psu_channels": max(terminals, 4),
                "control_listen": f"127.0.0.1:{_port()}", "time_scale": 1.0,
                "boot": {"dist": "normal", "mean": 120, "sd": 15, "min": 60},
                "login": {"dist": "fixed", "ms": 10}, "clock_sync": {"dist": "fixed", "ms": 5}},
    }
    raw_path = tmp / "bench-base.yaml"
    raw_path.write_text(json.dumps(raw))
    cfg = load_lab(raw_path, overrides=over)
    path = tmp / "bench-lab.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return path


def truth_figures(journal: Path, terminal: str) -> list[dict[str, float | None]]:
    return truth_cycles(read(journal), terminal)


CLIENT = """
import sys, time, threading
from rig import open_rig
rig = open_rig(sys.argv[1], results=sys.argv[2], label="bench-" + sys.argv[3])
print("ready", flush=True)
if sys.argv[3] == "busy":
    def burn():
        x = 0
        while True:
            x = (x * 31 + 7) % 1000003
    for _ in range(3):
        threading.Thread(target=burn, daemon=True).start()
    burn()
else:  # hammer: status and event-stream requests as fast as they come back
    while True:
        rig.service_status()
        for _ in rig.events(follow=False):
            pass
"""


def _service_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(cfg: Path, results: Path, cycles: int, case: str) -> dict:
    other = None
    with open_rig(cfg, results=results, label="bench") as rig:
        pid = rig.service_status()["pid"]
        rig.signon_series("all", n=2, off_s=0.05, progress=False)  # warm-up
        if case != "idle":
            other = subprocess.Popen([sys.executable, "-c", CLIENT, str(cfg), str(results), case],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert other.stdout is not None and "ready" in other.stdout.readline()
        try:
            cpu0, wall0 = _service_cpu_s(pid), time.monotonic()
            df = rig.signon_series("all", n=cycles, off_s=0.05, progress=False)
            cpu, wall = _service_cpu_s(pid) - cpu0, time.monotonic() - wall0
        finally:
            if other is not None:
                other.kill()
                other.wait()
        journal, db, run_id = rig.journal_path, rig.store.path, rig.run_id
    errs: dict[str, list[float]] = {f: [] for f in FIGURES}
    for t in df["terminal"].unique():
        mine = df[df["terminal"] == t].sort_values("i")
        truth = truth_figures(journal, t)[-len(mine):]  # the measured cycles are the last ones
        for (_, row), tr in zip(mine.iterrows(), truth, strict=True):
            for f in FIGURES:
                if row[f] is not None and tr[f] is not None and not np.isnan(row[f]):
                    errs[f].append(abs(row[f] - tr[f]) * 1e6)
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    brackets = [json.loads(d).get("bracket_ns") for (d,) in con.execute(
        "SELECT data_json FROM events e JOIN cycles c ON e.cycle_id=c.id "
        "WHERE c.run_id=? AND e.kind='power_on'", (run_id,))]
    con.close()
    return {"errs": errs, "cycles": len(df), "ok": int(df["ok"].sum()), "cpu_s": cpu,
            "wall_s": wall, "cpu_per_cycle_ms": cpu / max(1, len(df)) * 1e3,
            "bracket_us": [b / 1e3 for b in brackets if b is not None]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--terminals", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = bench_config(tmp, args.terminals)
        results = tmp / "results"
        cases = {}
        for case in ("idle", "busy", "hammer"):
            cases[case] = run_case(cfg, results, args.cycles, case)
        subprocess.run([sys.executable, "-m", "rig", "--results", str(results), "serve", "stop",
                        "--config", str(cfg)], capture_output=True, cwd=ROOT)
    print(f"sign-on timing accuracy through the rig service: {args.terminals} terminals x "
          f"{args.cycles} cycles, time_scale 1.0")
    print("cases: idle; busy = a client process burning 4 threads; hammer = a client looping "
          "status + event-stream requests")
    print(f"{'case':<8} {'figure':<14} {'n':>4} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9}")
    for name, c in cases.items():
        for f in FIGURES:
            v = np.array(c["errs"][f])
            if v.size:
                print(f"{name:<8} {f:<14} {v.size:>4} {np.percentile(v, 50):>9.1f} "
                      f"{np.percentile(v, 99):>9.1f} {v.max():>9.1f}")
        b = np.array(c["bracket_us"])
        print(f"{name:<8} ok {c['ok']}/{c['cycles']} cycles, wall {c['wall_s']:.1f} s, service "
              f"CPU {c['cpu_s']:.2f} s = {c['cpu_per_cycle_ms']:.2f} ms/cycle"
              + (f"; power-on bracket p50 {np.percentile(b, 50):.0f} µs, p99 "
                 f"{np.percentile(b, 99):.0f} µs" if b.size else ""))


if __name__ == "__main__":
    main()
