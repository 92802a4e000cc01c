"""``python -m fuzz``: run the fuzz targets and print inputs, crashes, hangs, memory and rate.

    python -m fuzz                          # 1 M inputs over every target (make fuzz)
    python -m fuzz --budget 20000 --target psu-sim --seed 7
    python -m fuzz --seconds 600 --engine random
    python -m fuzz --list

The budget is shared out by each target's weight; ``--seconds`` caps the whole run (shared
out equally). Exit status 1 when any target crashed or hung.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .engine import CRASH_DIR, ROOT, Stats, corpus_files, run_random
from .targets import TARGETS


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def shares(names: Sequence[str], budget: int) -> dict[str, int]:
    """Inputs per target: ``budget`` split by weight (at least one each)."""
    total = sum(TARGETS[n].weight for n in names)
    out = {n: max(1, int(budget * TARGETS[n].weight / total)) for n in names}
    heaviest = max(names, key=lambda n: TARGETS[n].weight)
    out[heaviest] += max(0, budget - sum(out.values()))  # the rounding: exactly `budget` in all
    return out


def _child(name: str, engine: str, inputs: int, seconds: float | None, seed: int,
           crash_dir: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    out = log_dir / f"{name}.json"
    cmd = [sys.executable, "-m", "fuzz.atheris_child" if engine == "atheris" else "fuzz",
           "--target", name, "--budget", str(inputs), "--seed", str(seed),
           "--crash-dir", str(crash_dir), "--json", str(out)]
    if engine == "random":
        cmd += ["--engine", "random", "--jobs", "1"]
    if seconds is not None:
        cmd += ["--seconds", f"{seconds:.1f}"]
    with open(log_dir / f"{name}.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _collect(name: str, proc: subprocess.Popen[bytes], log_dir: Path, engine: str) -> Stats:
    rc = proc.wait()
    path = log_dir / f"{name}.json"
    if path.exists():
        return Stats.from_dict(json.loads(path.read_text()))
    st = Stats(name, engine, stopped=f"child died (rc {rc}); see {log_dir / (name + '.log')}")
    return st


def run_all(names: Sequence[str], budget: int, seconds: float | None, seed: int, engine: str,
            jobs: int, crash_dir: Path) -> list[Stats]:
    per = shares(names, budget)
    per_s = seconds / len(names) * max(1, jobs) if seconds is not None else None
    if engine == "random" and jobs <= 1:
        out = []
        for n in names:
            st = run_random(TARGETS[n], per[n], per_s, seed, crash_dir,
                            replay=[p.read_bytes() for p in corpus_files(n)])
            _progress(st)
            out.append(st)
        return out
    log_dir = Path(tempfile.mkdtemp(prefix="posrig-fuzz-run-"))
    results: dict[str, Stats] = {}
    queue = list(names)
    running: dict[str, subprocess.Popen[bytes]] = {}
    while queue or running:
        while queue and len(running) < max(1, jobs):
            n = queue.pop(0)
            running[n] = _child(n, engine, per[n], per_s, seed, crash_dir, log_dir)
        time.sleep(0.2)
        for n, p in list(running.items()):
            if p.poll() is not None:
                results[n] = _collect(n, running.pop(n), log_dir, engine)
                _progress(results[n])
    return [results[n] for n in names]


def _progress(st: Stats) -> None:
    print(f"  {st.target}: {st.inputs} inputs, {len(st.new_crashes)} crashes "
          f"(+{len(st.known_crashes)} known), {st.hangs} hangs "
          f"({st.seconds:.0f} s)", file=sys.stderr, flush=True)


def table(stats: Sequence[Stats]) -> str:
    head = ("target", "engine", "inputs", "rate/s", "crashes", "known", "crash in", "hangs",
            "doc. errors", "RSS warm", "RSS Δ", "corpus", "stop")
    rows = [head]
    for s in stats:
        rows.append((s.target, s.engine, f"{s.inputs:,}", f"{s.rate:,.0f}",
                     str(len(s.new_crashes)), str(len(s.known_crashes)), str(s.crash_inputs),
                     str(s.hangs), f"{s.expected:,}",
                     f"{s.rss_warm_kb / 1024:.0f} MB", f"{s.rss_growth_kb / 1024:+.1f} MB",
                     str(s.corpus), s.stopped))
    tot_in = sum(s.inputs for s in stats)
    tot_s = sum(s.seconds for s in stats)
    rows.append(("TOTAL", "", f"{tot_in:,}", f"{tot_in / tot_s if tot_s else 0:,.0f}",
                 str(sum(len(s.new_crashes) for s in stats)),
                 str(sum(len(s.known_crashes) for s in stats)),
                 str(sum(s.crash_inputs for s in stats)),
                 str(sum(s.hangs for s in stats)), f"{sum(s.expected for s in stats):,}", "", "",
                 "", f"{tot_s:.0f} s cpu"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def details(stats: Sequence[Stats]) -> str:
    out = []
    for s in stats:
        for c in s.crashes.values():
            label = "KNOWN" if c.known else "CRASH"
            out.append(f"{label} {s.target}: {c.kind} at {c.where} x{c.count}: {c.message}\n"
                       f"      input: {c.path}" + (f"\n      known: {c.known}" if c.known else ""))
        for p in s.hang_paths:
            out.append(f"HANG  {s.target}: input {p}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=1_000_000, help="inputs in all (default 1 M)")
    ap.add_argument("--seconds", type=float, default=None, help="cap on the whole run")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS),
                    help="only this target (repeatable)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto",
                    help="atheris (coverage-guided, when installed) or the seeded mutator")
    ap.add_argument("--jobs", type=int, default=1, help="targets run at once (processes)")
    ap.add_argument("--crash-dir", type=Path, default=CRASH_DIR)
    ap.add_argument("--json", type=Path, help="write the stats here")
    ap.add_argument("--list", action="store_true", help="list the targets")
    a = ap.parse_args(argv)
    if a.list:
        for t in TARGETS.values():
            print(f"{t.name:14} weight {t.weight:<5} {t.what}")
        return 0
    names = a.target or list(TARGETS)
    engine = a.engine
    if engine == "auto":
        engine = "atheris" if _have_atheris() else "random"
    os.environ.setdefault("PYTHONHASHSEED", "0")
    t0 = time.monotonic()
    print(f"fuzzing {len(names)} targets, {a.budget:,} inputs, engine {engine}, seed {a.seed}",
          file=sys.stderr, flush=True)
    stats = run_all(names, a.budget, a.seconds, a.seed, engine, a.jobs, a.crash_dir)
    if a.json:
        payload = [s.as_dict() for s in stats]
        a.json.write_text(json.dumps(payload[0] if len(payload) == 1 and a.target and
                                     len(a.target) == 1 else payload, indent=1))
    print(table(stats))
    extra = details(stats)
    if extra:
        print(extra)
    print(f"wall time {time.monotonic() - t0:.0f} s")
    return 1 if any(s.new_crashes or s.hangs for s in stats) else 0


if __name__ == "__main__":
    sys.exit(main())
