"""Faults through the rig on the virtual lab: timed to the terminal's phase, recorded, undone."""

from __future__ import annotations

import time

import pytest

from rig import open_local
from rig.faults import HostDown, HostNoResponse, Latency, PowerDropout
from rig.faults.ledger import Ledger
from rig.timeline.events import EventKind
from tests import truth
from tests.labcfg import virtual_config

pytestmark = pytest.mark.integration


@pytest.fixture
def rig(tmp_path):
    cfg = virtual_config(tmp_path, proxies=True, time_scale=0.3)
    with open_local(cfg, results=tmp_path) as r:
        yield r


def _events(rig, *kinds):
    rig.recorder.flush()
    rows = rig.store.query("SELECT kind, terminal, mono_ns, data_json FROM events WHERE run_id=? "
                           "ORDER BY seq", (rig.run_id,))
    import json
    return [(r["kind"], r["terminal"], r["mono_ns"], json.loads(r["data_json"])) for r in rows
            if not kinds or r["kind"] in kinds]


def test_latency_during_signon_is_on_from_power_on_to_ready(rig, tmp_path):
    rig.power_cycle("T1")
    base = rig.wait_signon("T1")
    with rig.fault("T1", Latency(ms=200, during="signon")) as armed:
        assert armed[0].current is None  # armed, not on: the window opens at power-on
        rig.power_cycle("T1")
        s = rig.wait_signon("T1")
    assert base.ok and s.ok
    # the 0800 reached the host >= 200 ms after the terminal sent it (truth vs host stamp)
    sent = [e for e in truth.read(rig.journal_path)
            if e.get("terminal") == "T1" and e["what"] == "signon_req_sent"][-1]
    req = [e for e in _events(rig, "signon_req") if e[1] == "T1"][-1]
    assert 0.199 <= (req[2] - sent["mono_ns"]) / 1e9 < 0.6
    on = [e for e in _events(rig, "fault_on") if e[1] == "T1"]
    off = [e for e in _events(rig, "fault_off") if e[1] == "T1"]
    assert len(on) == 1 and len(off) == 1
    assert on[0][3]["fault"] == "latency" and on[0][3]["trigger"] == "power_on"
    assert on[0][3]["params"]["ms"] == 200
    assert off[0][3]["reason"].startswith("phase end (ready")
    assert on[0][2] < req[2] < off[0][2]
    assert rig.injector.active == {}


def test_sale_with_host_no_response_then_reversal(rig):
    rig.ensure_ready("T2")
    r = rig.sale("T2", "1.00", "cup_debit", entry="chip", faults=[HostNoResponse(during="auth")])
    assert (r.outcome, r.rc) == ("failed", "98")
    assert rig.sale("T2", "1.00", "cup_debit", entry="chip").outcome == "approved"
    kinds = [k for k, t, _, _ in _events(rig) if t == "T2"]
    assert "reversal_req" in kinds
    i_on, i_off = kinds.index("fault_on"), kinds.index("fault_off")
    assert kinds.index("card_presented") < i_on < kinds.index("auth_req") < i_off
    assert kinds.index("reversal_req") > i_off  # sent before the next sale, after the fault


def test_recovery_after_host_down(rig):
    rec = rig.recovery("T3", HostDown(for_s=1.0), during="signon")
    assert rec.recovered, rec
    assert rec.recover_s is not None and 0 <= rec.recover_s < 10
    assert rec.fault_held_s == pytest.approx(1.0, abs=0.3) or rec.remedy == "signon"
    stored = rig.store.query("SELECT result_json FROM cycles WHERE id=?", (rec.cycle,))[0]
    assert '"recover_s"' in stored["result_json"]


def test_power_dropout_resets_the_terminal_and_is_recorded(rig, tmp_path):
    rig.ensure_ready("T1")
    ledger = Ledger(tmp_path / "virtual-faults.json")
    with rig.fault("T1", PowerDropout(ms=300)):
        held = ledger.entries()
        assert [e["fault"] for e in held] == ["power_dropout"] and held[0]["alive"]
        time.sleep(1.0)
    assert ledger.entries() == []
    off = [e for e in _events(rig, "fault_off") if e[1] == "T1"][-1]
    assert off[3]["reason"] == "transient over" and 0.25 < off[3]["held_s"] < 1.0
    journal = [e for e in truth.read(rig.journal_path) if e.get("terminal") == "T1"]
    whats = [e["what"] for e in journal]
    assert whats.count("power_on") >= 2  # it lost power and booted again
    assert EventKind.FAULT_ON in {EventKind(k) for k, *_ in _events(rig)}


def test_fault_without_proxy_is_refused_before_anything_changes(tmp_path):
    cfg = virtual_config(tmp_path, time_scale=0.3)  # terminals dial the host directly
    with open_local(cfg, results=tmp_path) as rig:
        from rig.core.errors import TestError
        with pytest.raises(TestError, match="host_path"), rig.fault("T1", Latency(ms=5)):
            pass
        assert rig.injector.active == {}
