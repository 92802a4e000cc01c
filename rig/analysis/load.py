"""Load stored runs for analysis (notebooks, the CLI, reports): runs, cycles with every figure
re-derived from the events, sales, faults, the current trace.

``load_run`` opens the store read-only and reads everything in one read transaction, so it sees
one consistent snapshot even while the rig service is writing (WAL); a run still being written
says so (``run.running``). The figures come from :func:`rig.analysis.figures.figures` — the
same derivation as the live end-of-cycle result — never from what a cycle stored when it ended
(that is kept apart, in ``run.results``).
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.errors import TestError
from ..terminal_profiles import lab_gaps
from ..timeline.store import open_readonly, pid_alive
from .figures import FIGURES, KINDS, PAYLOAD_KINDS, fault_windows, figures

EVENT_COLUMNS = ("seq", "cycle_id", "mono_ns", "wall_ns", "kind", "source", "terminal", "clock")
CURRENT_COLUMNS = ("terminal", "instrument", "channel", "cycle_id", "mono_ns", "wall_ns",
                   "clock", "amps", "volts")
CYCLE_COLUMNS = ("cycle_id", "run_id", "label", "terminal", "n", "kind", "state",
                 "start_mono_ns", "end_mono_ns", "start_wall_ns", "end_wall_ns", "ok", "error")


def _q(kinds: Sequence[Any]) -> str:
    return ", ".join(f"'{k.value}'" for k in kinds)


def _payload_sql() -> str:
    """The payload fields the figures read, extracted by SQLite (no JSON parsed in Python)."""
    cols = []
    for name, kinds in PAYLOAD_KINDS.items():
        key = "id" if name == "fault_id" else name
        cols.append(f"CASE WHEN kind IN ({_q(kinds)}) THEN json_extract(data_json, '$.{key}') "
                    f"END AS {name}")
    return ", ".join(cols)


def _frame(cur: sqlite3.Cursor) -> pd.DataFrame:
    rows = cur.fetchall()
    names = [d[0] for d in cur.description]
    if not rows:
        return pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    return pd.DataFrame.from_records(rows, columns=names, coerce_float=False)


def _categorical(s: pd.Series, categories: Sequence[str] | None = None) -> pd.Series:
    return pd.Series(pd.Categorical(s.to_numpy(dtype=object), categories=categories),
                     index=s.index, name=s.name)


def _read_events(con: sqlite3.Connection, run_id: int, max_seq: int | None = None,
                 kinds: Sequence[Any] | None = None, extra: str = "") -> pd.DataFrame:
    """Typed event columns plus the figures' payload fields (``data`` is not parsed)."""
    where = "run_id=?" + ("" if max_seq is None else " AND seq<=?")
    params: tuple[Any, ...] = (run_id,) if max_seq is None else (run_id, max_seq)
    if kinds is not None:
        where += f" AND kind IN ({_q(kinds)})"
    ev = _frame(con.execute(
        f"SELECT {', '.join(EVENT_COLUMNS)}, {_payload_sql()}{extra} FROM events WHERE {where} "
        "ORDER BY seq", params))
    for c in ("seq", "mono_ns", "wall_ns"):
        ev[c] = ev[c].astype(np.int64)
    ev["cycle_id"] = ev["cycle_id"].astype("Int64")
    ev["kind"] = _categorical(ev["kind"], KINDS)
    for c in ("source", "terminal", "clock", "stan", "rc", "line", "fault_id"):
        ev[c] = _categorical(ev[c])  # few distinct values each: codes, not strings per row
    ev["waited_s"] = pd.to_numeric(ev["waited_s"], errors="coerce").astype(np.float64)
    return ev


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                       (name,)).fetchone() is not None


def _alive(run: dict[str, Any]) -> bool | None:
    """Whether the process that writes a running run is alive (None: on another host)."""
    if run.get("host") != socket.gethostname():
        return None
    return pid_alive(int(run["pid"]), (run.get("clock") or {}).get("proc_start"))


class RunData:
    """One stored run, for a notebook: ``run.cycles``, ``run.sales``, ``run.events``,
    ``run.faults``, ``run.current`` (pandas DataFrames), ``run.figures()``, ``run.summary()``,
    ``run.plot``, ``run.to_parquet(dir)``."""

    def __init__(self, db: Path, run: dict[str, Any], cycles: pd.DataFrame,
                 sales: pd.DataFrame, faults: pd.DataFrame, current: pd.DataFrame,
                 results: pd.DataFrame, timeline: pd.DataFrame | None, max_seq: int | None,
                 figs: pd.DataFrame | None) -> None:
        self.db, self.run = db, run
        self.cycles, self.sales, self.faults, self.current = cycles, sales, faults, current
        self.results = results  # what each cycle stored when it ended (result_json)
        self._timeline, self._max_seq, self._figs = timeline, max_seq, figs
        self._events: pd.DataFrame | None = None

    # --- identity -------------------------------------------------------------------------------
    @property
    def run_id(self) -> int:
        return int(self.run["id"])

    @property
    def label(self) -> str | None:
        return self.run.get("label")

    @property
    def running(self) -> bool:
        """The run is still being written (its process alive, as far as this host can tell)."""
        return self.run["state"] == "running" and self.run.get("alive") is not False

    @property
    def config(self) -> dict[str, Any]:
        return self.run["config"]

    def has_console(self) -> dict[str, bool]:
        terms = (self.run.get("config") or {}).get("terminals") or {}
        return {t: bool(c.get("console")) for t, c in terms.items()}

    # --- tables ---------------------------------------------------------------------------------
    @property
    def timeline(self) -> pd.DataFrame:
        """The events' typed columns and the payload the figures read (no ``data``)."""
        if self._timeline is None:
            con = open_readonly(self.db)
            try:
                self._timeline = _read_events(con, self.run_id, self._max_seq)
            finally:
                con.close()
        return self._timeline

    @property
    def events(self) -> pd.DataFrame:
        """Every event of the run with its ``data`` (dicts, parsed on first use)."""
        if self._events is None:
            tl = self.timeline
            con = open_readonly(self.db)
            try:
                where = "run_id=?" + ("" if self._max_seq is None else " AND seq<=?")
                params = (self.run_id,) if self._max_seq is None else (self.run_id, self._max_seq)
                texts = [r[0] for r in con.execute(
                    f"SELECT data_json FROM events WHERE {where} ORDER BY seq", params)]
            finally:
                con.close()
            ev = tl.copy()
            ev["data"] = json.loads("[" + ",".join(texts) + "]") if texts else []
            self._events = ev
        return self._events

    @property
    def signons(self) -> pd.DataFrame:
        """Completed sign-on cycles only."""
        c = self.cycles
        return c[(c["kind"] == "signon") & (c["state"] == "completed")].reset_index(drop=True)

    # --- analysis -------------------------------------------------------------------------------
    def figures(self) -> pd.DataFrame:
        """Every figure of every cycle, re-derived from the events (vectorised; see
        :func:`rig.analysis.figures.figures`), one row per cycle."""
        if self._figs is None:
            self._figs = figures(self.timeline, _cycle_spans(self.cycles),
                                 has_console=self.has_console(), faults=self.faults,
                                 cannot=lab_gaps(self.run.get("config")))
        return self._figs

    def summary(self, by: str | Sequence[str] | None = None,
                figures: Sequence[str] | None = None, **kw: Any) -> Any:
        """p50 / p95 / p99 of each figure with bootstrap CIs and success rates with Wilson
        intervals, per group of ``by`` (cycle columns, e.g. ``["terminal", "fault_case"]``)."""
        from .stats import summarize_cycles

        return summarize_cycles(self.cycles, by=by, figures=figures,
                                title=f"run {self.run_id} ({self.label or 'no label'})", **kw)

    def failures(self, by: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Failed cycles counted by class and response code (and ``by``)."""
        from .stats import failure_table

        return failure_table(self.cycles, by=by)

    @property
    def plot(self) -> Any:
        from .plots import RunPlots

        return RunPlots(self)

    def to_parquet(self, directory: str | Path) -> list[Path]:
        """One Parquet file per table in ``directory``; the run's config snapshot (secrets
        masked) in each file's metadata."""
        from .export import export_run

        return export_run(self, directory)

    def _repr_html_(self) -> str:
        from .stats import html_table

        r = self.run
        head = (f"<b>run {r['id']}</b> {r.get('label') or ''} · lab {r['lab']} · "
                f"{r['state']}{' (being written)' if self.running else ''} · "
                f"{len(self.cycles)} cycles, {len(self.sales)} sales, {len(self.faults)} faults")
        c = self.cycles
        table = (c.groupby(["terminal", "kind"], observed=True)
                 .agg(cycles=("cycle_id", "size"), ok=("ok", "sum")).reset_index()
                 if len(c) else pd.DataFrame())
        return f"<div>{head}</div>" + (html_table(table) if len(table) else "")

    def __repr__(self) -> str:
        return (f"<RunData run={self.run.get('id')} label={self.label!r} state="
                f"{self.run.get('state')} cycles={len(self.cycles)} sales={len(self.sales)}>")


def _cycle_spans(cycles: pd.DataFrame) -> pd.DataFrame:
    return cycles[["cycle_id", "terminal", "kind", "start_mono_ns", "end_mono_ns"]]


def list_runs(db: str | Path) -> pd.DataFrame:
    """The store's runs: run_id, label, campaign, lab, host, state, alive, started, ended,
    duration_s, cycles (and how many completed / ok / failed / aborted / still open), sales,
    events."""
    con = open_readonly(db)
    try:
        con.execute("BEGIN")
        soak = _has_table(con, "campaigns")  # a soak campaign's run (rig.soak) has a row there
        runs = _frame(con.execute(
            "SELECT r.id AS run_id, r.label, "
            + ("c.name" if soak else "NULL") + " AS campaign, r.lab, r.host, r.pid, r.state,"
            " r.started_wall_ns, r.ended_wall_ns, r.started_mono_ns, r.ended_mono_ns,"
            " r.clock_json FROM runs r"
            + (" LEFT JOIN campaigns c ON c.run_id = r.id" if soak else "") + " ORDER BY r.id"))
        counts = _frame(con.execute(
            "SELECT run_id, count(*) AS cycles,"
            " sum(state='completed') AS completed,"
            " sum(json_extract(result_json, '$.ok') = 1 OR"
            "     json_extract(result_json, '$.outcome') = 'approved') AS ok,"
            " sum(state='failed') AS failed, sum(state='aborted') AS aborted,"
            " sum(state='started') AS open FROM cycles GROUP BY run_id"))
        sales = _frame(con.execute("SELECT run_id, count(*) AS sales FROM sales GROUP BY run_id"))
        events = _frame(con.execute(
            "SELECT run_id, count(*) AS events FROM events GROUP BY run_id"))
        con.execute("COMMIT")
    finally:
        con.close()
    out = runs
    for extra in (counts, sales, events):
        if len(extra):
            out = out.merge(extra, on="run_id", how="left")
    for c in ("cycles", "completed", "ok", "failed", "aborted", "open", "sales", "events"):
        out[c] = (out[c] if c in out.columns else pd.Series(0, index=out.index)).fillna(
            0).astype(np.int64)
    here = socket.gethostname()
    alive = []
    for host, pid, state, clock in zip(out["host"], out["pid"], out["state"], out["clock_json"],
                                       strict=True):  # one check per run, not per event
        if state != "running" or host != here:
            alive.append(None if state == "running" else False)
        else:
            alive.append(pid_alive(int(pid), json.loads(clock or "{}").get("proc_start")))
    out["alive"] = pd.array(alive, dtype="boolean")
    out["started"] = pd.to_datetime(out["started_wall_ns"], unit="ns", utc=True)
    out["ended"] = pd.to_datetime(out["ended_wall_ns"], unit="ns", utc=True)
    out["duration_s"] = (out["ended_mono_ns"] - out["started_mono_ns"]) / 1e9
    return out[["run_id", "label", "campaign", "lab", "host", "state", "alive", "started",
                "ended", "duration_s", "cycles", "completed", "ok", "failed", "aborted", "open",
                "sales", "events"]]


def _pick_run(con: sqlite3.Connection, db: Any, run_id: int | str | None) -> int:
    """``None``: the newest finished run that is not a service run (else the newest run);
    a string: the newest run with that label; a negative number counts back from the end."""
    if isinstance(run_id, str):
        row = con.execute("SELECT max(id) FROM runs WHERE label=?", (run_id,)).fetchone()
        if row[0] is None:
            raise TestError(f"{db}: no run labelled {run_id!r}")
        return int(row[0])
    if run_id is None:
        row = con.execute("SELECT max(id) FROM runs WHERE state!='running' AND "
                          "coalesce(label, '')!='service'").fetchone()
        if row[0] is None:
            row = con.execute("SELECT max(id) FROM runs").fetchone()
        if row[0] is None:
            raise TestError(f"{db}: no runs stored yet")
        return int(row[0])
    if run_id < 0:
        ids = [r[0] for r in con.execute("SELECT id FROM runs ORDER BY id")]
        if -run_id > len(ids):
            raise TestError(f"{db}: only {len(ids)} runs stored")
        return int(ids[run_id])
    return int(run_id)


def load_run(db: str | Path, run_id: int | str | None = None, events: bool = True) -> RunData:
    """A stored run: ``load_run("results/virtual.db", 12)``; ``run_id`` may be a label (the
    newest run with it), negative (``-1``: the last run), or None (the newest finished run
    that is not the service's own). Works while the run is being written: ``run.running``.
    ``events=False`` skips the events (cycles then carry the figures each cycle stored)."""
    db = Path(db)
    con = open_readonly(db)
    try:
        con.execute("BEGIN")  # one snapshot for every table
        rid = _pick_run(con, db, run_id)
        cur = con.execute("SELECT * FROM runs WHERE id=?", (rid,))
        vals = cur.fetchone()
        if vals is None:
            raise TestError(f"{db}: no run {rid}")
        run = dict(zip([d[0] for d in cur.description], vals, strict=True))
        run["config"] = json.loads(run.pop("config_json"))
        run["clock"] = json.loads(run.pop("clock_json"))
        run["alive"] = _alive(run) if run["state"] == "running" else False
        base = _frame(con.execute(
            "SELECT id AS cycle_id, run_id, terminal, n, kind, state, start_mono_ns, end_mono_ns,"
            " start_wall_ns, end_wall_ns, result_json FROM cycles WHERE run_id=? ORDER BY id",
            (rid,)))
        max_seq = con.execute("SELECT max(seq) FROM events WHERE run_id=?", (rid,)).fetchone()[
            0] or 0  # the snapshot's last event: later reads (data) stop there
        timeline = _read_events(con, rid, max_seq) if events else None
        fault_ev = _read_events(
            con, rid, max_seq, kinds=_fault_kinds(),
            extra=", json_extract(data_json, '$.fault') AS fault,"
                  " json_extract(data_json, '$.layer') AS layer,"
                  " json_extract(data_json, '$.params') AS params,"
                  " json_extract(data_json, '$.error') AS error")
        sales = _frame(con.execute(
            "SELECT id AS sale_id, cycle_id, result_json FROM sales WHERE run_id=? ORDER BY id",
            (rid,)))
        current = (_frame(con.execute(
            f"SELECT {', '.join(CURRENT_COLUMNS)} FROM current_samples WHERE run_id=? "
            "ORDER BY mono_ns", (rid,))) if _has_table(con, "current_samples") else None)
        con.execute("COMMIT")
    finally:
        con.close()
    results = _results(base)
    faults = fault_windows(fault_ev)
    cyc = base.drop(columns="result_json")
    cyc["label"] = run.get("label")
    figs = None
    if timeline is not None:
        figs = figures(timeline, _cycle_spans(cyc), has_console=_consoles(run), faults=faults,
                       cannot=lab_gaps(run.get("config")))
    cycles = _cycles(cyc, results, figs)
    if current is None or len(current) == 0:
        current = pd.DataFrame({c: pd.Series(dtype=object) for c in CURRENT_COLUMNS})
    sale_rows = json.loads("[" + ",".join(sales["result_json"]) + "]") if len(sales) else []
    sales_df = pd.DataFrame(sale_rows)
    if len(sales_df):
        sales_df.insert(0, "cycle_id", sales["cycle_id"].to_numpy())
        sales_df.insert(0, "sale_id", sales["sale_id"].to_numpy())
    return RunData(db, run, cycles, sales_df, faults, current, results, timeline, max_seq, figs)


def _fault_kinds() -> tuple[Any, ...]:
    from ..timeline.events import EventKind

    return (EventKind.FAULT_ON, EventKind.FAULT_OFF)


def _consoles(run: dict[str, Any]) -> dict[str, bool]:
    terms = (run.get("config") or {}).get("terminals") or {}
    return {t: bool(c.get("console")) for t, c in terms.items()}


def _results(base: pd.DataFrame) -> pd.DataFrame:
    """What each cycle stored when it ended (its result_json), one row per cycle."""
    texts = [t if isinstance(t, str) and t else "{}" for t in base["result_json"]]
    rows = json.loads("[" + ",".join(texts) + "]") if texts else []
    res = pd.DataFrame(rows, index=base.index)
    res.insert(0, "cycle_id", base["cycle_id"].to_numpy() if len(base) else [])
    return res


def _cycles(cyc: pd.DataFrame, results: pd.DataFrame, figs: pd.DataFrame | None) -> pd.DataFrame:
    """Cycle rows: the cycles table, the figures (re-derived; stored ones without events), the
    cycle's own verdict (ok, error) and whatever else it stored (card, entry, recovery…)."""
    out = cyc.copy()
    stored = results.drop(columns=["cycle_id", "terminal", "cycle", "n"], errors="ignore")
    derived_cols = [] if figs is None else [c for c in figs.columns
                                            if c not in ("terminal", "kind")]
    if figs is not None:
        f = figs.reindex(out["cycle_id"].to_numpy())
        for c in derived_cols:
            out[c] = f[c].to_numpy()
    ok_stored = (stored["ok"] if "ok" in stored.columns else pd.Series(None, index=out.index)
                 ).to_numpy(dtype=object)
    if figs is not None:
        derived_ok = np.where(out["kind"] == "sale", out["outcome"] == "approved",
                              out["signon_ok"].astype(bool))
    else:
        derived_ok = np.where(out["kind"] == "sale", stored.get("outcome", pd.Series(
            None, index=out.index)) == "approved", False)
    out["ok"] = np.where(pd.isna(ok_stored), derived_ok, ok_stored).astype(bool)
    out["error"] = stored["error"] if "error" in stored.columns else None
    for c in stored.columns:
        if c in ("ok", "error") or c in out.columns:
            continue
        if figs is not None and c in FIGURES:
            continue
        out[c] = stored[c].to_numpy()
    if figs is None:  # no events loaded: the figures each cycle stored
        for f in FIGURES:
            if f not in out.columns:
                out[f] = np.nan
    return out
