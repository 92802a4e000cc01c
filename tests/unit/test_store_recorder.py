"""Store and recorder: WAL, contiguous seq, epoch, cycles, crash recovery, batching."""

import json
import os
import subprocess
import sys
import threading

from rig.core.clock import ClockSource, now
from rig.timeline.events import Event, EventKind
from rig.timeline.recorder import Recorder
from rig.timeline.store import Store, open_readonly


def _store(tmp_path):
    return Store(tmp_path / "lab.db")


def test_store_is_wal_with_epoch(tmp_path):
    s = _store(tmp_path)
    assert s.query("PRAGMA journal_mode")[0][0] == "wal"
    epoch = s.epoch
    assert len(epoch) == 32
    s.close()
    assert Store(tmp_path / "lab.db").epoch == epoch  # made once, at creation


def test_recorder_commits_events_with_contiguous_seq(tmp_path):
    s = _store(tmp_path)
    run = s.begin_run(lab="x", label="fw1", config={"a": 1}, clock={})
    rec = Recorder(s, run)
    st = now()
    cyc = s.start_cycle(run, "T1", 1, "signon", st.mono_ns, st.wall_ns)
    rec.set_cycle("T1", cyc)

    def burst(k):
        for i in range(200):
            rec.record(Event.now(EventKind.CONSOLE_LINE, f"src{k}", "T1", i=i))

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.record(Event.now(EventKind.RUN_NOTE, "rig", None, note="no terminal"))
    rec.flush()
    # a second connection (a notebook) sees everything committed
    con = open_readonly(tmp_path / "lab.db")
    seqs = [r[0] for r in con.execute("SELECT seq FROM events ORDER BY seq")]
    assert seqs == list(range(1, 802))
    assert con.execute("SELECT count(*) FROM events WHERE cycle_id=?", (cyc,)).fetchone()[0] == 800
    rec.close()
    s.end_run(run, "completed")
    assert con.execute("SELECT state FROM runs").fetchone()[0] == "completed"
    assert con.execute("SELECT state FROM cycles").fetchone()[0] == "aborted"  # never ended


def test_event_clock_source_and_data_stored(tmp_path):
    s = _store(tmp_path)
    run = s.begin_run(lab="x", label=None, config={}, clock={})
    rec = Recorder(s, run)
    st = now()
    rec.record(Event.at(st, EventKind.SIGNON_REQ, "host", "T1", clock=ClockSource.KERNEL, stan="000001"))
    rec.close()
    row = s.query("SELECT mono_ns, wall_ns, kind, clock, data_json FROM events")[0]
    assert (row[0], row[1], row[2], row[3]) == (st.mono_ns, st.wall_ns, "signon_req", "kernel")
    assert json.loads(row[4]) == {"stan": "000001"}


def test_recorder_commits_within_interval_without_flush(tmp_path):
    s = _store(tmp_path)
    run = s.begin_run(lab="x", label=None, config={}, clock={})
    rec = Recorder(s, run, commit_interval_s=0.05)
    rec.record(Event.now(EventKind.RUN_NOTE, "rig"))
    con = open_readonly(tmp_path / "lab.db")
    import time

    end = time.monotonic() + 5
    while time.monotonic() < end:
        if con.execute("SELECT count(*) FROM events").fetchone()[0] == 1:
            break
        time.sleep(0.02)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    rec.close()


CRASHER = r"""
import os, sys
from rig.timeline.store import Store
from rig.core.clock import now
s = Store(sys.argv[1])
run = s.begin_run(lab="x", label=None, config={}, clock={})
st = now()
done = s.start_cycle(run, "T1", 1, "signon", st.mono_ns, st.wall_ns)
s.end_cycle(done, "completed", {"ok": True})
s.start_cycle(run, "T1", 2, "signon", st.mono_ns, st.wall_ns)
os.kill(os.getpid(), 9)
"""


def test_kill9_leaves_completed_cycles_and_marks_the_open_one(tmp_path):
    db = tmp_path / "lab.db"
    p = subprocess.run([sys.executable, "-c", CRASHER, str(db)], env=dict(os.environ))
    assert p.returncode == -9
    s = Store(db)
    assert s.recover() == [1]
    rows = [tuple(r) for r in s.query("SELECT n, state FROM cycles ORDER BY n")]
    assert rows == [(1, "completed"), (2, "aborted")]
    assert s.query("SELECT state FROM runs")[0][0] == "interrupted"
