"""load_run / list_runs / export on real store files (synthetic runs written through the Store
API): figures re-derived from the stored events, a run read while it is written, a running or
dead run, the schema migration, Parquet export, and the `rig runs` / `rig export` commands."""

from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rig.analysis.load import list_runs, load_run
from rig.analysis.synth import Synth, synth_run
from rig.timeline.store import SCHEMA_VERSION, Store


def write_run(store: Store, s: Synth, label: str, *, end: str | None = "completed",
              config: dict | None = None) -> tuple[int, dict[int, int]]:
    """Store a synthetic run: its cycles (ended with the figures drawn), then its events."""
    cfg = config or {"terminals": {t: {"console": "socket://x", "tmk": "****"}
                                   for t in sorted(set(s.cycles["terminal"]))}}
    run = store.begin_run(lab="synth", label=label, config=cfg, clock={})
    ids = {}
    truth = s.truth
    for c in s.cycles.itertuples():
        cid = store.start_cycle(run, c.terminal, c.n, c.kind, int(c.start_mono_ns),
                                int(c.start_mono_ns))
        ids[c.cycle_id] = cid
        t = truth.loc[c.cycle_id]
        result = {"ok": bool(t["signon_ok"]) if c.kind == "signon" else None,
                  "ready_s": None if np.isnan(t["ready_s"]) else float(t["ready_s"])}
        store.end_cycle(cid, "completed", result)
    s.run_id = run
    ev = s.events
    mapped = ev["cycle_id"].map(ids)
    s.events = ev.assign(cycle_id=mapped)
    for i in range(0, len(ev), 5000):
        store.append_events(s.rows(i, i + 5000))
        store.commit()
    s.events = ev
    with sqlite3.connect(store.path) as con:  # end_cycle stamps now(); the synthetic end
        con.executemany("UPDATE cycles SET end_mono_ns=? WHERE id=?",
                        [(int(e), ids[c]) for c, e in zip(s.cycles["cycle_id"],
                                                          s.cycles["end_mono_ns"], strict=True)])
    if end:
        store.end_run(run, end)
    return run, ids


def test_load_run_re_derives_every_figure_from_the_stored_events(tmp_path):
    store = Store(tmp_path / "lab.db")
    s = synth_run(cycles=600, terminals=3, p_retry=0.1, p_refused=0.05, p_fault=0.1, seed=11)
    run_id, ids = write_run(store, s, "fw-1")
    run = load_run(tmp_path / "lab.db", run_id)
    assert run.run_id == run_id and run.label == "fw-1" and not run.running
    cyc = run.cycles.set_index("cycle_id")
    t = s.truth.rename(index=ids)
    for f in ("boot_s", "signon_req_s", "signon_host_s", "ready_s", "card_to_auth_s",
              "auth_host_s", "card_to_result_s", "robot_wait_s", "recover_s"):
        np.testing.assert_allclose(cyc[f].reindex(t.index).to_numpy(dtype=float),
                                   t[f].to_numpy(dtype=float), atol=2e-9, err_msg=f)
    assert (cyc["fault_case"].reindex(t.index) == t["fault_case"]).all()
    assert len(run.faults) == int((s.events["kind"] == "fault_on").sum())
    assert run.faults["off_ns"].notna().all() and (run.faults["held_s"] > 0).all()
    assert set(run.results.columns) >= {"cycle_id", "ok", "ready_s"}
    assert run.figures().equals(run.figures())  # cached, the same frame
    ev = run.events  # data parsed on first use
    assert len(ev) == len(s.events) and isinstance(ev["data"].iloc[0], dict)
    assert ev["seq"].is_monotonic_increasing
    runs = list_runs(tmp_path / "lab.db")
    row = runs.set_index("run_id").loc[run_id]
    assert (row["state"], row["cycles"], row["events"]) == ("completed", 600, len(s.events))
    assert not row["alive"]


def test_which_run_load_run_picks(tmp_path):
    store = Store(tmp_path / "lab.db")
    small = synth_run(cycles=8, terminals=1, seed=1)
    a, _ = write_run(store, small, "fw-1")
    b, _ = write_run(store, synth_run(cycles=8, terminals=1, seed=2), "fw-2")
    store.begin_run(lab="synth", label="service", config={}, clock={})  # the service's run
    c, _ = write_run(store, synth_run(cycles=8, terminals=1, seed=3), "soak", end=None)
    db = tmp_path / "lab.db"
    assert load_run(db).run_id == b  # the newest finished, not the service's, not running
    assert load_run(db, "fw-1").run_id == a
    assert load_run(db, -1).run_id == c and load_run(db, -1).running
    with pytest.raises(Exception, match="no run labelled 'nope'"):
        load_run(db, "nope")


def test_a_running_run_and_a_dead_one(tmp_path):
    store = Store(tmp_path / "lab.db")
    run, _ = write_run(store, synth_run(cycles=20, terminals=2, seed=4), "live", end=None)
    cyc = store.start_cycle(run, "T1", 99, "signon", 10**13, 10**13)  # still open
    db = tmp_path / "lab.db"
    r = load_run(db, run)
    assert r.running and r.run["state"] == "running" and r.run["alive"] is True
    open_ = r.cycles[r.cycles["cycle_id"] == cyc].iloc[0]
    assert open_["state"] == "started" and np.isnan(open_["ready_s"])
    assert "no power-on" in open_["why"]
    assert list_runs(db).set_index("run_id").loc[run, "open"] == 1
    with sqlite3.connect(db) as con:  # its process died (a PID no process has)
        con.execute("UPDATE runs SET pid=? WHERE id=?", (2**22 + 12345, run))
    dead = load_run(db, run)
    assert dead.run["state"] == "running" and dead.run["alive"] is False and not dead.running
    assert list_runs(db).set_index("run_id").loc[run, "alive"] == False  # noqa: E712


def test_load_run_while_a_writer_appends(tmp_path):
    store = Store(tmp_path / "lab.db")
    s = synth_run(cycles=400, terminals=4, seed=6)
    run = store.begin_run(lab="synth", label="w", config={}, clock={})
    s.run_id = run
    stop = threading.Event()

    def writer():
        for i in range(0, len(s.events), 200):
            store.append_events(s.rows(i, i + 200))
            store.commit()
        stop.set()

    th = threading.Thread(target=writer)
    th.start()
    sizes = []
    while not stop.is_set():
        r = load_run(tmp_path / "lab.db", run)
        tl = r.timeline
        assert len(tl) == 0 or tl["seq"].max() == r._max_seq  # one snapshot
        assert len(r.events) == len(tl)  # the data of exactly those events
        sizes.append(len(tl))
    th.join()
    assert sizes == sorted(sizes) and len(load_run(tmp_path / "lab.db", run).timeline) == len(
        s.events)


def test_store_migrates_to_the_current_schema(tmp_path):
    db = tmp_path / "old.db"
    Store(db).close()
    with sqlite3.connect(db) as con:  # make it look like a schema-1 store
        con.execute("DROP TABLE current_samples")
        con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    s = Store(db)
    assert s.query("SELECT value FROM meta WHERE key='schema_version'")[0][0] == str(
        SCHEMA_VERSION)
    run = s.begin_run(lab="x", label="m", config={}, clock={})
    s.append_current([(run, None, "T1", "psu1", 1, 5, 6, "kernel", 0.35, 12.0)])
    s.commit()
    r = load_run(db, run)
    assert list(r.current["amps"]) == [0.35] and r.current["terminal"].iloc[0] == "T1"


def test_a_schema_1_store_without_the_current_table_still_loads(tmp_path):
    db = tmp_path / "old.db"
    store = Store(db)
    run, _ = write_run(store, synth_run(cycles=10, terminals=1, seed=8), "old")
    store.close()
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE current_samples")
    r = load_run(db, run)  # read-only: nothing migrated, the trace is empty
    assert len(r.current) == 0 and list(r.current.columns)[:3] == ["terminal", "instrument",
                                                                  "channel"]


def test_export_parquet_one_file_per_table_with_the_config_masked(tmp_path):
    store = Store(tmp_path / "lab.db")
    cfg = {"terminals": {"T1": {"console": "x", "tmk": "1111222233334444"}},
           "service": {"token": "abc"}}
    run, _ = write_run(store, synth_run(cycles=30, terminals=1, p_fault=0.3, seed=9), "x",
                       config=cfg)
    paths = load_run(tmp_path / "lab.db", run).to_parquet(tmp_path / "out")
    assert [p.name for p in paths] == [f"run{run}-{t}.parquet" for t in
                                       ("run", "cycles", "events", "sales", "faults", "current")]
    t = pq.read_table(tmp_path / "out" / f"run{run}-cycles.parquet")
    meta = json.loads(t.schema.metadata[b"posrig.config"])
    assert meta["terminals"]["T1"]["tmk"] == "****" and meta["service"]["token"] == "****"
    assert json.loads(t.schema.metadata[b"posrig.run"])["label"] == "x"
    assert t.num_rows == 30 and "ready_s" in t.column_names
    ev = pq.read_table(tmp_path / "out" / f"run{run}-events.parquet")
    assert json.loads(ev.column("data")[0].as_py()) is not None
    assert pq.read_table(tmp_path / "out" / f"run{run}-faults.parquet").num_rows > 0


def test_cli_runs_and_export(tmp_path):
    from rig.cli import app

    store = Store(tmp_path / "lab.db")
    run, _ = write_run(store, synth_run(cycles=12, terminals=2, seed=10), "fw-9")
    store.close()
    runner = CliRunner()
    res = runner.invoke(app, ["runs", "--db", str(tmp_path / "lab.db"), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["run_id"] == run and rows[0]["label"] == "fw-9" and rows[0]["cycles"] == 12
    res = runner.invoke(app, ["runs", "--db", str(tmp_path / "lab.db")])
    assert res.exit_code == 0 and "fw-9" in res.stdout
    res = runner.invoke(app, ["export", "fw-9", "--parquet", str(tmp_path / "exp"), "--db",
                              str(tmp_path / "lab.db"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["files"]) == 6


def test_list_runs_names_a_soak_runs_campaign(tmp_path):
    store = Store(tmp_path / "lab.db")
    plain, _ = write_run(store, synth_run(cycles=4, terminals=1, seed=13), "manual")
    soak = store.begin_run(lab="synth", label="nightly", config={}, clock={})
    store.add_campaign(soak, name="nightly", label="nightly", source=None, campaign={},
                       terminals=["T1"], planned=10)
    runs = list_runs(tmp_path / "lab.db").set_index("run_id")
    assert runs.loc[soak, "campaign"] == "nightly" and runs.loc[soak, "state"] == "running"
    assert runs.loc[soak, "alive"] and pd.isna(runs.loc[plain, "campaign"])
