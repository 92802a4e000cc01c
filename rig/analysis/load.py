"""Load a stored run for analysis (notebooks): runs, cycles with figures, events."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.errors import TestError
from ..timeline.store import open_readonly


@dataclass
class RunData:
    run: dict[str, Any]
    cycles: pd.DataFrame  # one row per cycle: terminal, n, state, ok, figures…
    events: pd.DataFrame  # seq, cycle_id, mono_ns, wall_ns, kind, source, terminal, clock, data
    sales: pd.DataFrame  # one row per sale: terminal, card, entry, outcome, rc, figures…

    @property
    def signons(self) -> pd.DataFrame:
        """Completed sign-on cycles only."""
        c = self.cycles
        return c[(c["kind"] == "signon") & (c["state"] == "completed")].reset_index(drop=True)


def list_runs(db: str | Path) -> pd.DataFrame:
    con = open_readonly(db)
    try:
        return pd.read_sql_query(
            "SELECT id, label, lab, host, state, started_wall_ns, ended_wall_ns FROM runs "
            "ORDER BY id", con)
    finally:
        con.close()


def load_run(db: str | Path, run_id: int | None = None, events: bool = True) -> RunData:
    """``load_run("results/virtual.db")`` → the latest run; ``run_id=`` picks one."""
    con = open_readonly(db)
    try:
        if run_id is None:
            row = con.execute("SELECT max(id) FROM runs").fetchone()
            if row[0] is None:
                raise TestError(f"{db}: no runs stored yet")
            run_id = int(row[0])
        cur = con.execute("SELECT * FROM runs WHERE id=?", (run_id,))
        vals = cur.fetchone()
        if vals is None:
            raise TestError(f"{db}: no run {run_id}")
        run = dict(zip([d[0] for d in cur.description], vals, strict=True))
        run["config"] = json.loads(run.pop("config_json"))
        run["clock"] = json.loads(run.pop("clock_json"))
        cycles = pd.read_sql_query(
            "SELECT id AS cycle_id, terminal, n, kind, state, start_mono_ns, end_mono_ns,"
            " start_wall_ns, result_json FROM cycles WHERE run_id=? ORDER BY id", con,
            params=(run_id,))
        results = [json.loads(r) if r else {} for r in cycles.pop("result_json")]
        extra = pd.DataFrame(results, index=cycles.index)
        extra = extra.drop(columns=[c for c in ("terminal", "cycle", "n") if c in extra.columns])
        cycles = pd.concat([cycles, extra], axis=1)
        ev = pd.read_sql_query(
            "SELECT seq, cycle_id, mono_ns, wall_ns, kind, source, terminal, clock, data_json "
            "FROM events WHERE run_id=? ORDER BY seq", con, params=(run_id,)) if events else (
            pd.DataFrame())
        if events:
            ev["data"] = [json.loads(d) for d in ev.pop("data_json")]
        sales = pd.read_sql_query(
            "SELECT cycle_id, result_json FROM sales WHERE run_id=? ORDER BY id", con,
            params=(run_id,))
        sales = pd.DataFrame([{"cycle_id": c, **json.loads(r)} for c, r in
                              zip(sales["cycle_id"], sales["result_json"], strict=True)])
        return RunData(run=run, cycles=cycles, events=ev, sales=sales)
    finally:
        con.close()
