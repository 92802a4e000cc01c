"""A chaos run of the store: SIGKILL the rig service at random moments during sign-on series,
sales, held faults and a soak campaign, restart it, and check what a kill -9 may not break.

The virtual lab runs as a process of its own (the bench's hardware outlives the service, as a
real bench does), so the checks look at the world after the kills, not at a fresh lab:

- **lost events**: every console line the lab's truth journal shows inside a *completed* cycle
  is stored as an event of that terminal (same text, stamped within ``MATCH_NS``), and every
  completed cycle's power-on is stored;
- **duplicate cycles**: no (run, terminal, n) twice; no soak cycle index completed twice;
- **runs**: none left ``running``; every run whose service was killed is ``interrupted``;
- **faults left**: the fault ledger is empty, the lab holds no card faults or quirks, every PSU
  channel is back at its terminal's nominal voltage;
- **outputs on**: every PSU output is off at the end (the lab's ``safe_power: off``);
- **strays**: no service or lab-child process of this results directory is left.

``python -m tests.chaos --kills 20`` (``make chaos``) prints the figures; the bounded slice in
``tests/integration/test_chaos.py`` runs three kills and asserts every figure is 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MATCH_NS = 20_000_000  # a stored console line may be stamped this far from the lab's own stamp
EDGE_NS = 5_000_000  # lines this close to a cycle's edges may belong to either side


@dataclass
class ChaosResult:
    kills: int = 0
    rounds: list[str] = field(default_factory=list)
    cycles_completed: int = 0
    cycles_aborted: int = 0
    soak_cycles: int = 0
    soak_completed: int = 0
    lines_checked: int = 0
    lost_events: list[str] = field(default_factory=list)
    duplicate_cycles: list[str] = field(default_factory=list)
    bad_runs: list[str] = field(default_factory=list)
    faults_left: list[str] = field(default_factory=list)
    outputs_on: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.lost_events or self.duplicate_cycles or self.bad_runs
                    or self.faults_left or self.outputs_on or self.strays)

    def table(self) -> str:
        rows = [
            ("kills", self.kills), ("cycles completed", self.cycles_completed),
            ("cycles aborted (in flight at a kill)", self.cycles_aborted),
            ("soak cycles (completed)", f"{self.soak_cycles} ({self.soak_completed})"),
            ("console lines checked", self.lines_checked),
            ("lost events (goal 0)", len(self.lost_events)),
            ("duplicate cycles (goal 0)", len(self.duplicate_cycles)),
            ("runs in a wrong state (goal 0)", len(self.bad_runs)),
            ("faults left (goal 0)", len(self.faults_left)),
            ("PSU outputs left on (goal 0)", len(self.outputs_on)),
            ("stray processes (goal 0)", len(self.strays)),
            ("wall time (s)", f"{self.seconds:.0f}"),
        ]
        w = max(len(k) for k, _ in rows)
        out = [f"{k:<{w}}  {v}" for k, v in rows]
        for name in ("lost_events", "duplicate_cycles", "bad_runs", "faults_left",
                     "outputs_on", "strays"):
            for item in getattr(self, name)[:10]:
                out.append(f"  {name}: {item}")
        return "\n".join(out)


def _service_pid(results: Path) -> int | None:
    from rig.service.runtime import Paths, read_info

    info = read_info(Paths(results.resolve(), "virtual"))
    return int(info["pid"]) if info else None


def _work(rig: Any, kind: str, stop: threading.Event, errors: list[str]) -> None:
    """One client workload until the service dies (or ``stop``)."""
    from rig.core.errors import RigError, ServiceError
    from rig.faults import Brownout, CardMute

    try:
        while not stop.is_set():
            if kind == "series":
                rig.signon_series(["T1"], n=20, off_s=0.05, progress=False)
            elif kind == "sales":
                rig.ensure_ready("T2")
                for _ in range(5):
                    rig.sale("T2", amount="1.00", card="cup_debit", entry="chip")
            elif kind == "faults":  # faults held in the lab when the kill comes
                with rig.fault("T4", Brownout(volts=10.5, ms=600_000),
                               CardMute(card="visa_credit")):
                    rig.signon_series(["T4"], n=20, off_s=0.05, progress=False)
    except ServiceError:
        return  # the service was killed: expected
    except RigError as e:
        if not stop.is_set():
            errors.append(f"{kind}: {type(e).__name__}: {e}")
    except Exception as e:  # an httpx error surfacing raw would be a client bug
        errors.append(f"{kind}: {type(e).__name__}: {e}")


def run_chaos(tmp: Path, *, kills: int = 20, seed: int = 1, soak_cycles: int = 200,
              min_s: float = 0.5, max_s: float = 4.0, log=print) -> ChaosResult:
    """Run ``kills`` rounds (work, SIGKILL the service at a random moment), a last clean round,
    then the checks; see the module doc."""
    from rig import open_rig
    from tests.labcfg import virtual_config, write_config
    from tests.simkit import LabProc
    from tests.soakkit import campaign_file

    t0 = time.monotonic()
    rnd = random.Random(seed)
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = virtual_config(tmp, time_scale=0.1)
    lab_yaml = write_config(cfg, tmp / "lab.yaml")
    results = tmp / "results"
    journal = tmp / "truth.jsonl"
    campaign = campaign_file(tmp, lab_yaml, cycles=soak_cycles, name="chaos-soak", label="chaos",
                             terminals="[T3]", signon_s=10, extra="chunk: 2")
    idle_before = os.environ.get("RIG_SERVICE_IDLE_S")
    os.environ["RIG_SERVICE_IDLE_S"] = "60"  # restored below: pytest runs more tests after
    res = ChaosResult()
    lab = LabProc(lab_yaml, journal)
    killed_runs: list[int] = []
    soak_run: int | None = None
    try:
        for i in range(kills):
            rig = open_rig(lab_yaml, results=results, label=f"chaos-{i}")
            killed_runs.append(rig.run_id)
            if soak_run is None:
                soak_run = int(rig.campaign(campaign, follow=False)["run_id"])
            else:
                st = rig._service("GET", f"/v1/campaigns/{soak_run}")
                if st["state"] != "running":
                    rig.resume_campaign(soak_run, follow=False)
            stop = threading.Event()
            threads = [threading.Thread(target=_work, args=(rig, k, stop, res.client_errors),
                                        daemon=True) for k in ("series", "sales", "faults")]
            for th in threads:
                th.start()
            wait = rnd.uniform(min_s, max_s)
            time.sleep(wait)
            pid = _service_pid(results)
            assert pid is not None, "no service to kill"
            os.kill(pid, signal.SIGKILL)
            res.kills += 1
            stop.set()
            for th in threads:
                th.join(60)
                if th.is_alive():
                    res.client_errors.append(f"round {i}: a client call hangs after the kill")
            try:
                rig.close()
            except Exception:  # the service is gone; the client only has to let go
                pass
            _wait_gone(pid)
            res.rounds.append(f"kill {i + 1} after {wait:.2f} s")
            log(f"kill {i + 1}/{kills} after {wait:.2f} s")
        # a last, clean round: recovery and the sweep, the soak to its end, then stop
        with open_rig(lab_yaml, results=results, label="chaos-final") as rig:
            if soak_run is not None:
                st = rig._service("GET", f"/v1/campaigns/{soak_run}")
                if st["state"] == "running":
                    rig.stop_campaign(soak_run)
            df = rig.signon_series(["T1", "T4"], n=1, off_s=0.05, progress=False)
            if not df["ok"].all():
                res.client_errors.append(f"final round: sign-on failed {df['error'].tolist()}")
            final_run = rig.run_id
        _stop_service(results)
        _check(res, cfg, results, journal, killed_runs, final_run)
    finally:
        _stop_service(results)
        lab.stop()
        if idle_before is None:
            os.environ.pop("RIG_SERVICE_IDLE_S", None)
        else:
            os.environ["RIG_SERVICE_IDLE_S"] = idle_before
    res.strays += _strays(results, lab_yaml)
    res.seconds = time.monotonic() - t0
    return res


def _wait_gone(pid: int, timeout_s: float = 10) -> None:
    from rig.timeline.store import pid_alive

    end = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.05)


def _stop_service(results: Path) -> None:
    pid = _service_pid(results)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _wait_gone(pid, 30)


def _strays(results: Path, lab_yaml: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    hits = []
    for line in out.splitlines():
        if (str(results) in line or str(lab_yaml) in line) and "tests.chaos" not in line \
                and "pytest" not in line:
            hits.append(line.strip())
    return hits


def _check(res: ChaosResult, cfg: Any, results: Path, journal: Path, killed_runs: list[int],
           final_run: int) -> None:
    import json

    from rig.faults.labctl import LabControl
    from rig.timeline.store import open_readonly

    con: sqlite3.Connection = open_readonly(results / "virtual.db")
    states = dict(con.execute("SELECT id, state FROM runs").fetchall())
    for rid, st in states.items():
        if st == "running":
            res.bad_runs.append(f"run {rid} left running")
    for rid in killed_runs:
        if states.get(rid) != "interrupted":
            res.bad_runs.append(f"run {rid} (killed) is {states.get(rid)!r}, not interrupted")
    if states.get(final_run) != "completed":
        res.bad_runs.append(f"run {final_run} (the clean one) is {states.get(final_run)!r}")
    left_started = con.execute("SELECT count(*) FROM cycles WHERE state='started'").fetchone()[0]
    if left_started:
        res.bad_runs.append(f"{left_started} cycles left 'started'")

    for run, term, n, k in con.execute(
            "SELECT run_id, terminal, n, count(*) AS k FROM cycles GROUP BY 1, 2, 3 HAVING k > 1"):
        res.duplicate_cycles.append(f"run {run} {term} cycle n={n} stored {k} times")
    for run, term, idx, k in con.execute(
            "SELECT run_id, terminal, idx, count(*) AS k FROM soak_cycles WHERE state='completed' "
            "GROUP BY 1, 2, 3 HAVING k > 1"):
        res.duplicate_cycles.append(f"soak run {run} {term} idx {idx} completed {k} times")
    res.soak_cycles = con.execute("SELECT count(*) FROM soak_cycles").fetchone()[0]
    res.soak_completed = con.execute(
        "SELECT count(*) FROM soak_cycles WHERE state='completed'").fetchone()[0]
    res.cycles_completed = con.execute(
        "SELECT count(*) FROM cycles WHERE state='completed'").fetchone()[0]
    res.cycles_aborted = con.execute(
        "SELECT count(*) FROM cycles WHERE state='aborted'").fetchone()[0]

    # lost events: the truth's console lines and power-ons inside completed cycles
    truth = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    stored: dict[str, list[tuple[int, str]]] = {}
    for term, mono, data in con.execute(
            "SELECT terminal, mono_ns, data_json FROM events WHERE source LIKE '%.console'"):
        stored.setdefault(term, []).append((mono, json.loads(data).get("line", "")))
    power_on = {(t, c) for t, c in con.execute(
        "SELECT terminal, cycle_id FROM events WHERE kind='power_on'")}
    cycles = con.execute("SELECT id, terminal, start_mono_ns, end_mono_ns FROM cycles "
                         "WHERE state='completed' AND end_mono_ns IS NOT NULL").fetchall()
    for cid, term, lo, hi in cycles:
        mine = stored.get(term, [])
        for e in truth:
            if e.get("terminal") != term or not lo + EDGE_NS < e["mono_ns"] < hi - EDGE_NS:
                continue
            if e["what"] == "console":
                res.lines_checked += 1
                if not any(abs(m - e["mono_ns"]) < MATCH_NS and line == e["line"]
                           for m, line in mine):
                    res.lost_events.append(f"cycle {cid} {term}: console {e['line']!r}")
            elif e["what"] == "power_on" and (term, cid) not in power_on:
                res.lost_events.append(f"cycle {cid} {term}: power_on")

    # faults and outputs: the ledger, the lab's own state, the PSU
    ledger = results / "virtual-faults.json"
    if ledger.exists():
        for entry in json.loads(ledger.read_text() or "[]"):
            res.faults_left.append(f"ledger: {entry}")
    ctl = LabControl(cfg.sim.control_listen)
    st = ctl.status()
    for key in ("card_faults", "quirks"):
        held = {k: v for k, v in (st.get(key) or {}).items() if v}
        if held:
            res.faults_left.append(f"lab {key}: {held}")
    _check_psu(res, cfg)


def _check_psu(res: ChaosResult, cfg: Any) -> None:
    from rig.drivers.psu import PsuDriver
    from rig.timeline.events import ListSink

    for name, inst in cfg.instruments.items():
        if inst.kind != "psu":
            continue
        with PsuDriver(name, inst, ListSink()) as psu:
            for tname, t in cfg.terminals.items():
                if t.power.psu != name:
                    continue
                ch = t.power.channel
                if psu.output_state(ch):
                    res.outputs_on.append(f"{name} channel {ch} ({tname}) is on")
                v = psu.voltage_setpoint(ch)
                if abs(v - (t.power.voltage or v)) > 1e-6 and v != 0.0:  # 0: never set up
                    res.faults_left.append(f"{name} channel {ch} ({tname}) at {v} V, nominal "
                                           f"{t.power.voltage} V")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-s", type=float, default=0.5, help="earliest kill after a round starts")
    ap.add_argument("--max-s", type=float, default=4.0, help="latest kill after a round starts")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="rig-chaos-"))
    res = run_chaos(tmp, kills=a.kills, seed=a.seed, min_s=a.min_s, max_s=a.max_s)
    print(res.table())
    for err in res.client_errors[:10]:
        print(f"  client: {err}")
    if a.keep:
        print(f"kept: {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if res.clean else 1


if __name__ == "__main__":
    sys.exit(main())
