"""Per-terminal cycle objects and leases: ownership, cancel, ordering of end markers, errors."""

from __future__ import annotations

import threading
import time

import pytest

from rig.control.cycles import TerminalCycle
from rig.core.errors import Cancelled, InfrastructureError, LeaseError, TestError
from rig.service.leases import Leases
from rig.timeline.events import Event, EventKind
from rig.timeline.recorder import Recorder
from rig.timeline.store import Store


@pytest.fixture
def parts(tmp_path):
    store = Store(tmp_path / "lab.db")
    own = store.begin_run(lab="x", label="service", config={}, clock={})
    rec = Recorder(store, own)
    yield store, rec, own
    rec.close()
    store.close()


def _tc(store, rec, name="T1") -> TerminalCycle:
    tc = TerminalCycle(name, store=store, recorder=rec, has_console=True)
    rec.add_listener(tc.on_event)
    return tc


def test_cycle_events_go_to_the_cycle_and_its_run(parts):
    store, rec, own = parts
    run = store.begin_run(lab="x", label="client", config={}, clock={})
    tc = _tc(store, rec)
    cyc = tc.begin(run, "signon", owner="a")
    rec.record(Event.now(EventKind.CONSOLE_LINE, "T1.console", "T1", line="x"))
    assert tc.wait_event({EventKind.CONSOLE_LINE}, 1.0) is not None
    s = tc.finish("completed")
    assert s.cycle == cyc and not s.ok
    rec.record(Event.now(EventKind.CONSOLE_LINE, "T1.console", "T1", line="between"))
    rec.set_cycle("T1", None)
    rec.record(Event.now(EventKind.CONSOLE_LINE, "T1.console", "T1", line="after"))
    rec.flush()
    rows = store.query("SELECT run_id, cycle_id, data_json FROM events ORDER BY seq")
    assert [(r[0], r[1]) for r in rows] == [(run, cyc), (run, None), (own, None)]
    assert store.query("SELECT state FROM cycles WHERE id=?", (cyc,))[0][0] == "completed"
    assert tc.n(run) == 1


def test_another_owner_cannot_take_over_an_open_cycle(parts):
    store, rec, _ = parts
    run = store.begin_run(lab="x", label="c", config={}, clock={})
    tc = _tc(store, rec)
    with tc.using("a"):
        tc.begin(run, "signon", owner="a")
    with pytest.raises(TestError, match="a cycle of a is open"), tc.using("b"):
        pass
    with tc.using("a"):  # its owner may go on
        tc.finish("completed")
    with tc.using("b"):  # and once it ended, anyone
        pass


def test_cancel_wakes_a_waiting_procedure_and_its_cycle_ends_aborted(parts):
    store, rec, _ = parts
    run = store.begin_run(lab="x", label="c", config={}, clock={})
    tc = _tc(store, rec)
    cyc = tc.begin(run, "signon")
    got: list[BaseException] = []

    def wait() -> None:
        try:
            tc.wait_event({EventKind.READY}, 30.0)
        except BaseException as e:  # noqa: BLE001
            got.append(e)
            tc.abort(e)

    th = threading.Thread(target=wait)
    t0 = time.monotonic()
    th.start()
    time.sleep(0.05)
    tc.cancel.set()
    th.join(5)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(got[0], Cancelled) and isinstance(got[0], KeyboardInterrupt)
    assert store.query("SELECT state FROM cycles WHERE id=?", (cyc,))[0][0] == "aborted"
    with tc.using():  # the next procedure starts with a fresh token
        assert not tc.cancel.is_set()


def test_a_store_write_error_fails_the_cycle_loudly(parts):
    store, rec, _ = parts
    run = store.begin_run(lab="x", label="c", config={}, clock={})
    tc = _tc(store, rec)
    cyc = tc.begin(run, "signon")
    rec.error = OSError("disk full")
    with pytest.raises(InfrastructureError, match="disk full"):
        tc.finish("completed")
    assert store.query("SELECT state FROM cycles WHERE id=?", (cyc,))[0][0] == "failed"


def test_an_ended_cycle_is_never_marked_again(parts):
    store, rec, _ = parts
    run = store.begin_run(lab="x", label="c", config={}, clock={})
    tc = _tc(store, rec)
    cyc = tc.begin(run, "signon")
    tc.finish("completed")
    store.end_cycle(cyc, "aborted", {})  # e.g. a late abort after a crash
    store.end_run(run, "interrupted")
    assert store.query("SELECT state FROM cycles WHERE id=?", (cyc,))[0][0] == "completed"


def test_leases_are_exclusive_name_the_holder_and_go_with_it(parts):
    store, _, _ = parts
    leases = Leases(store, ["T1", "T2", "T3"])
    a = leases.acquire("sa", "alice@vm pid 1", ["T1", "T2"], note="fw 1.2.3")
    with pytest.raises(LeaseError, match=r"T2 is leased by alice@vm pid 1 \(fw 1\.2\.3\) since"):
        leases.acquire("sb", "bob@vm pid 2", ["T3", "T2"])
    assert leases.holder("T3") is None  # all or nothing
    assert leases.acquire("sa", "alice@vm pid 1", ["T1"]).terminals == ()  # already hers
    with pytest.raises(TestError, match="unknown terminal"):
        leases.acquire("sb", "bob", ["T9"])
    call = leases.acquire("sb", "bob@vm pid 2", ["T3"], implicit=True)
    with pytest.raises(LeaseError, match="T3 is a call of bob"):
        leases.check("sa", ["T3"])
    leases.release(call)
    assert leases.release_holder("sa", "client process 1 is gone") == ["T1", "T2"]
    assert leases.holder("T1") is None
    rows = store.query("SELECT terminal, released_why FROM leases ORDER BY id")
    assert [tuple(r) for r in rows] == [("T1", "client process 1 is gone"),
                                        ("T2", "client process 1 is gone")]
    assert a.note == "fw 1.2.3"
