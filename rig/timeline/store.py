"""The results store: one SQLite file per lab (WAL, ``synchronous=FULL``), append-only events.

All SQL of the project lives here, behind a small interface, so results can later be shipped to
a central database: every event row has a contiguous per-store ``seq`` and every store a random
``epoch`` made at creation; rows are keyed ``(host, epoch, seq)``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..core.clock import now
from ..core.errors import InfrastructureError

SCHEMA_VERSION = 2  # 2: current_samples (a PSU channel's current / voltage trace)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    label TEXT, lab TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    state TEXT NOT NULL,                       -- running, completed, interrupted, failed
    started_wall_ns INTEGER NOT NULL, started_mono_ns INTEGER NOT NULL,
    ended_wall_ns INTEGER, ended_mono_ns INTEGER,
    config_json TEXT NOT NULL,                 -- resolved lab config, secrets masked
    clock_json TEXT NOT NULL                   -- host, clock sources, wall-mono offset
);
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    terminal TEXT NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL,                       -- started, completed, aborted
    start_mono_ns INTEGER NOT NULL, start_wall_ns INTEGER NOT NULL,
    end_mono_ns INTEGER, end_wall_ns INTEGER,
    result_json TEXT                           -- derived figures and outcome
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,                   -- contiguous per store
    run_id INTEGER NOT NULL, cycle_id INTEGER,
    mono_ns INTEGER NOT NULL, wall_ns INTEGER NOT NULL,
    kind TEXT NOT NULL, source TEXT NOT NULL, terminal TEXT, clock TEXT NOT NULL,
    data_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sales (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL, cycle_id INTEGER NOT NULL,
    terminal TEXT NOT NULL, card TEXT NOT NULL, entry TEXT NOT NULL, txn TEXT NOT NULL,
    amount_minor INTEGER, outcome TEXT NOT NULL, rc TEXT, stan TEXT, auth_code TEXT, rrn TEXT,
    pan_masked TEXT, result_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS campaigns (        -- a soak campaign's run (rig.soak)
    run_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL, label TEXT NOT NULL, source TEXT,
    campaign_json TEXT NOT NULL,               -- the campaign as validated (replayed on resume)
    terminals_json TEXT NOT NULL,
    planned INTEGER,                           -- cycles per terminal; NULL: until stop criteria
    state TEXT NOT NULL,                       -- running, completed, stopped, interrupted, failed
    started_wall_ns INTEGER NOT NULL, ended_wall_ns INTEGER, note TEXT
);
CREATE TABLE IF NOT EXISTS soak_cycles (       -- one planned (terminal, index) of a campaign
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL, terminal TEXT NOT NULL, idx INTEGER NOT NULL,
    case_id TEXT NOT NULL,
    state TEXT NOT NULL,                       -- started, completed, failed, aborted
    class TEXT,                                -- a failure's class: terminal, infrastructure, test
    started_wall_ns INTEGER NOT NULL, started_mono_ns INTEGER NOT NULL,
    ended_wall_ns INTEGER, ended_mono_ns INTEGER,
    first_cycle_id INTEGER, last_cycle_id INTEGER,  -- the store cycles it made
    result_json TEXT,
    UNIQUE (run_id, terminal, idx)
);
CREATE TABLE IF NOT EXISTS schedules (        -- windows in which a campaign runs (rig.soak)
    name TEXT PRIMARY KEY, campaign TEXT NOT NULL, start TEXT NOT NULL,
    duration_s REAL NOT NULL, run_id INTEGER, installed_wall_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    terminal TEXT NOT NULL, holder TEXT NOT NULL, run_id INTEGER, note TEXT,
    since_wall_ns INTEGER NOT NULL, released_wall_ns INTEGER, released_why TEXT
);
CREATE TABLE IF NOT EXISTS current_samples (   -- a PSU channel sampled during cycles
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL, cycle_id INTEGER,
    terminal TEXT NOT NULL, instrument TEXT NOT NULL, channel INTEGER NOT NULL,
    mono_ns INTEGER NOT NULL, wall_ns INTEGER NOT NULL, clock TEXT NOT NULL,
    amps REAL, volts REAL                      -- NULL: not measured in this sample
);
CREATE INDEX IF NOT EXISTS events_cycle ON events(cycle_id);
CREATE INDEX IF NOT EXISTS current_run ON current_samples(run_id, terminal, mono_ns);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, mono_ns);
CREATE INDEX IF NOT EXISTS cycles_run ON cycles(run_id, terminal, n);
"""

EventRow = tuple[int, int | None, int, int, str, str, str | None, str, str]
# run_id, cycle_id, terminal, instrument, channel, mono_ns, wall_ns, clock, amps, volts
CurrentRow = tuple[int, int | None, str, str, int, int, int, str, float | None, float | None]


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str, sort_keys=True)


class Store:
    """Thread-safe access to one results file. Writers share one connection under a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise InfrastructureError(f"store {self.path}: cannot open: {e}") from e
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            have = dict(self._db.execute("SELECT key, value FROM meta"))
            if "epoch" not in have:
                self._db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("epoch", uuid.uuid4().hex), ("schema_version", str(SCHEMA_VERSION)),
                     ("created_wall_ns", str(now().wall_ns)), ("host", socket.gethostname())],
                )
            elif int(have.get("schema_version", "1")) < SCHEMA_VERSION:
                # the migration is additive (the tables above, created if missing)
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                                 (str(SCHEMA_VERSION),))
            self._db.execute("COMMIT")
        self._in_tx = False

    # --- identity -----------------------------------------------------------------------------
    @property
    def epoch(self) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]

    # --- writing ------------------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        with self._lock:
            if self._in_tx:
                self._db.execute("COMMIT")
                self._in_tx = False

    def recover(self) -> list[int]:
        """Mark runs left 'running' by a dead process on this host as interrupted, and their
        open cycles as aborted (their events stay). Returns the ids of the runs marked."""
        host = socket.gethostname()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, pid, clock_json FROM runs WHERE state='running' AND host=?", (host,)
            ).fetchall()
            dead = [rid for rid, pid, clock in rows
                    if not pid_alive(pid, json.loads(clock or "{}").get("proc_start"))]
            if dead:
                self._begin()
                for rid in dead:
                    self._db.execute("UPDATE runs SET state='interrupted' WHERE id=?", (rid,))
                    self._db.execute(
                        "UPDATE cycles SET state='aborted', result_json=? "
                        "WHERE run_id=? AND state='started'",
                        (_json({"ok": False, "error": "rig process died during the cycle"}), rid),
                    )
                    self._db.execute(
                        "UPDATE soak_cycles SET state='aborted', class='infrastructure', "
                        "result_json=? WHERE run_id=? AND state='started'",
                        (_json({"error": "rig service died during the cycle"}), rid))
                    self._db.execute("UPDATE campaigns SET state='interrupted' WHERE run_id=? "
                                     "AND state='running'", (rid,))
                self.commit()
            return dead

    def begin_run(self, *, lab: str, label: str | None, config: Mapping[str, Any],
                  clock: Mapping[str, Any]) -> int:
        st = now()
        with self._lock:
            self._begin()
            cur = self._db.execute(
                "INSERT INTO runs (label, lab, host, pid, state, started_wall_ns, started_mono_ns,"
                " config_json, clock_json) VALUES (?,?,?,?,?,?,?,?,?)",
                (label, lab, socket.gethostname(), os.getpid(), "running", st.wall_ns, st.mono_ns,
                 _json(config), _json({**clock, "proc_start": proc_start(os.getpid())})),
            )
            self.commit()
            return int(cur.lastrowid)

    def end_run(self, run_id: int, state: str) -> None:
        st = now()
        with self._lock:
            self._begin()
            self._db.execute(
                "UPDATE runs SET state=?, ended_wall_ns=?, ended_mono_ns=? WHERE id=?",
                (state, st.wall_ns, st.mono_ns, run_id),
            )
            self._db.execute(
                "UPDATE cycles SET state='aborted' WHERE run_id=? AND state='started'", (run_id,)
            )
            self._db.execute("UPDATE soak_cycles SET state='aborted' WHERE run_id=? AND "
                             "state='started'", (run_id,))
            self.commit()

    def start_cycle(self, run_id: int, terminal: str, n: int, kind: str,
                    mono_ns: int, wall_ns: int) -> int:
        with self._lock:
            self._begin()
            cur = self._db.execute(
                "INSERT INTO cycles (run_id, terminal, n, kind, state, start_mono_ns, start_wall_ns)"
                " VALUES (?,?,?,?,?,?,?)",
                (run_id, terminal, n, kind, "started", mono_ns, wall_ns),
            )
            self.commit()
            return int(cur.lastrowid)

    def last_cycle_n(self, run_id: int, terminal: str) -> int:
        """The highest cycle number ``terminal`` has in ``run_id`` (0: none), so a run resumed
        by a new process (a campaign after a crash) numbers on instead of from 1 again."""
        with self._lock:
            row = self._db.execute("SELECT MAX(n) FROM cycles WHERE run_id=? AND terminal=?",
                                   (run_id, terminal)).fetchone()
        return int(row[0] or 0)

    def end_cycle(self, cycle_id: int, state: str, result: Mapping[str, Any]) -> None:
        st = now()
        with self._lock:
            self._begin()
            self._db.execute(
                "UPDATE cycles SET state=?, end_mono_ns=?, end_wall_ns=?, result_json=? "
                "WHERE id=? AND state='started'",
                (state, st.mono_ns, st.wall_ns, _json(result), cycle_id),
            )
            self.commit()

    def add_sale(self, run_id: int, cycle_id: int, sale: Mapping[str, Any]) -> None:
        """One sale's outcome and figures (``sale`` holds masked data only)."""
        cols = ("terminal", "card", "entry", "txn", "amount_minor", "outcome", "rc", "stan",
                "auth_code", "rrn", "pan_masked")
        with self._lock:
            self._begin()
            self._db.execute(
                f"INSERT INTO sales (run_id, cycle_id, {', '.join(cols)}, result_json)"
                f" VALUES (?, ?, {', '.join('?' * len(cols))}, ?)",
                (run_id, cycle_id, *(sale.get(c) for c in cols), _json(dict(sale))),
            )
            self.commit()

    def append_events(self, rows: Iterable[EventRow]) -> None:
        """Append event rows (run_id, cycle_id, mono_ns, wall_ns, kind, source, terminal,
        clock, data_json) inside the current transaction; call :meth:`commit` to make them
        durable."""
        with self._lock:
            self._begin()
            self._db.executemany(
                "INSERT INTO events (run_id, cycle_id, mono_ns, wall_ns, kind, source, terminal,"
                " clock, data_json) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def append_current(self, rows: Iterable[CurrentRow]) -> None:
        """Append current-trace samples (run_id, cycle_id, terminal, instrument, channel,
        mono_ns, wall_ns, clock, amps, volts) inside the current transaction, like
        :meth:`append_events`."""
        with self._lock:
            self._begin()
            self._db.executemany(
                "INSERT INTO current_samples (run_id, cycle_id, terminal, instrument, channel,"
                " mono_ns, wall_ns, clock, amps, volts) VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

    # --- soak campaigns ---------------------------------------------------------------------
    def add_campaign(self, run_id: int, *, name: str, label: str, source: str | None,
                     campaign: Mapping[str, Any], terminals: list[str],
                     planned: int | None) -> None:
        with self._lock:
            self._begin()
            self._db.execute(
                "INSERT INTO campaigns (run_id, name, label, source, campaign_json, "
                "terminals_json, planned, state, started_wall_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, name, label, source, _json(campaign), _json(terminals), planned,
                 "running", now().wall_ns))
            self.commit()

    def set_campaign_state(self, run_id: int, state: str, note: str | None = None) -> None:
        with self._lock:
            self._begin()
            ended = None if state == "running" else now().wall_ns
            self._db.execute("UPDATE campaigns SET state=?, ended_wall_ns=?, note=? "
                             "WHERE run_id=?", (state, ended, note, run_id))
            if state == "running":
                self._db.execute("UPDATE runs SET state='running', pid=?, ended_wall_ns=NULL, "
                                 "ended_mono_ns=NULL WHERE id=?", (os.getpid(), run_id))
            self.commit()

    def start_soak_cycle(self, run_id: int, terminal: str, idx: int, case_id: str) -> int | None:
        """Record that (run, terminal, idx) starts; None if it was recorded before (a resume
        never runs a planned cycle twice)."""
        st = now()
        with self._lock:
            self._begin()
            cur = self._db.execute(
                "INSERT OR IGNORE INTO soak_cycles (run_id, terminal, idx, case_id, state, "
                "started_wall_ns, started_mono_ns) VALUES (?,?,?,?,?,?,?)",
                (run_id, terminal, idx, case_id, "started", st.wall_ns, st.mono_ns))
            self.commit()
            return int(cur.lastrowid) if cur.rowcount else None

    def end_soak_cycle(self, soak_id: int, state: str, result: Mapping[str, Any], *,
                       cls: str | None = None, first_cycle: int | None = None,
                       last_cycle: int | None = None) -> None:
        st = now()
        with self._lock:
            self._begin()
            self._db.execute(
                "UPDATE soak_cycles SET state=?, class=?, ended_wall_ns=?, ended_mono_ns=?, "
                "first_cycle_id=?, last_cycle_id=?, result_json=? WHERE id=? AND state='started'",
                (state, cls, st.wall_ns, st.mono_ns, first_cycle, last_cycle, _json(result),
                 soak_id))
            self.commit()

    def put_schedule(self, name: str, campaign: str, start: str, duration_s: float) -> None:
        with self._lock:
            self._begin()
            self._db.execute("INSERT OR REPLACE INTO schedules (name, campaign, start, "
                             "duration_s, run_id, installed_wall_ns) VALUES (?,?,?,?,NULL,?)",
                             (name, campaign, start, duration_s, now().wall_ns))
            self.commit()

    def set_schedule_run(self, name: str, run_id: int) -> None:
        with self._lock:
            self._begin()
            self._db.execute("UPDATE schedules SET run_id=? WHERE name=?", (run_id, name))
            self.commit()

    def clear_schedules(self) -> int:
        with self._lock:
            self._begin()
            n = self._db.execute("DELETE FROM schedules").rowcount
            self.commit()
            return n

    # --- leases ----------------------------------------------------------------------------
    def add_lease(self, terminal: str, holder: str, run_id: int | None, note: str | None) -> int:
        with self._lock:
            self._begin()
            cur = self._db.execute(
                "INSERT INTO leases (terminal, holder, run_id, note, since_wall_ns) "
                "VALUES (?,?,?,?,?)", (terminal, holder, run_id, note, now().wall_ns))
            self.commit()
            return int(cur.lastrowid)

    def end_lease(self, lease_id: int, why: str) -> None:
        with self._lock:
            self._begin()
            self._db.execute("UPDATE leases SET released_wall_ns=?, released_why=? "
                             "WHERE id=? AND released_wall_ns IS NULL",
                             (now().wall_ns, why, lease_id))
            self.commit()

    def end_stale_leases(self, why: str) -> int:
        """Release every lease still open (a service starting: its clients are gone)."""
        with self._lock:
            self._begin()
            cur = self._db.execute("UPDATE leases SET released_wall_ns=?, released_why=? "
                                   "WHERE released_wall_ns IS NULL", (now().wall_ns, why))
            self.commit()
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self.commit()
            self._db.close()

    # --- reading ------------------------------------------------------------------------------
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return self._db.execute(sql, params).fetchall()
            finally:
                self._db.row_factory = None


def proc_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): with the
    PID it names one process, so a PID reused later is not mistaken for it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs on this host (a zombie does not); with ``started`` (its
    :func:`proc_start`), also that it is the same process, not a later one given its PID."""
    if started is not None:
        now_start = proc_start(pid)
        if now_start is not None and now_start != started:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for notebooks, safe while a soak writes (WAL)."""
    p = Path(path)
    if not p.exists():
        raise InfrastructureError(f"store {p}: no such file")
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=10000")
    return db


def event_row(run_id: int, cycle_id: int | None, ev: Any) -> EventRow:
    return (run_id, cycle_id, ev.mono_ns, ev.wall_ns, str(ev.kind), ev.source, ev.terminal,
            str(ev.clock), _json(dict(ev.data)))
