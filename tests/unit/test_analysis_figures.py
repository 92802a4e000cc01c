"""Figures derived from the timeline: hand-computed cases (missing events, retries, overlapping
faults), a synthetic run against the figures it drew, and the vectorised derivation against a
plain per-cycle reference on random event streams."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.analysis.figures import Columns, figures, line_fields, result_outcome
from rig.analysis.metrics import signon_figures
from rig.analysis.sale_metrics import sale_figures
from rig.analysis.synth import synth_run
from rig.timeline.events import Event, EventKind

K = EventKind
S = 1_000_000_000  # ns
MS = 1_000_000


def ev(t_ms: float, kind: EventKind, source: str, terminal: str | None = "T1", **data) -> Event:
    ns = int(round(t_ms * MS))
    return Event(ns, ns + 10**18, kind, source, terminal, data)


def frame(cycles: dict[int, list[Event]], free: list[Event] = ()) -> pd.DataFrame:
    """Events of several cycles (and some in no cycle) as load_run gives them (data dicts)."""
    rows = [(cid, e) for cid, evs in cycles.items() for e in evs] + [(None, e) for e in free]
    return pd.DataFrame({
        "seq": np.arange(1, len(rows) + 1),
        "cycle_id": pd.array([c for c, _ in rows], dtype="Int64"),
        "mono_ns": [e.mono_ns for _, e in rows],
        "wall_ns": [e.wall_ns for _, e in rows],
        "kind": [str(e.kind) for _, e in rows],
        "source": [e.source for _, e in rows],
        "terminal": [e.terminal for _, e in rows],
        "clock": ["kernel"] * len(rows),
        "data": [dict(e.data) for _, e in rows],
    })


def cycles_of(spec: dict[int, tuple[str, str, float, float]]) -> pd.DataFrame:
    """cycle_id -> (terminal, kind, start ms, end ms)."""
    return pd.DataFrame([{"cycle_id": c, "terminal": t, "kind": k,
                          "start_mono_ns": int(a * MS), "end_mono_ns": int(b * MS)}
                         for c, (t, k, a, b) in spec.items()])


def signon(t0: float = 1000, *, boot=700, retry=False, rc="00", answered=True, ready=True,
           terminal="T1") -> list[Event]:
    """A sign-on cycle starting at ``t0`` ms: power off, on at t0+300, boot, 0800(s), 0810."""
    on = t0 + 300
    c = f"{terminal}.console"
    out = [ev(t0 + 1, K.POWER_OFF, "psu1", terminal), ev(t0 + 2, K.PSU_IO, "psu1", terminal),
           ev(on, K.POWER_ON, "psu1", terminal, tx_ns=1, ack_ns=2, bracket_ns=1),
           ev(on + boot, K.BOOT_DONE, c, terminal, line="BOOT done"),
           ev(on + boot + 40, K.LOGIN, c, terminal),
           ev(on + boot + 60, K.HOST_CONNECT, "host", terminal),
           ev(on + boot + 61, K.SIGNON_REQ, "host", terminal, stan="000001")]
    t = on + boot + 61
    if retry:
        out.append(ev(t + 3000, K.SIGNON_FAIL, c, terminal, line="SIGNON fail timeout"))
        t += 3300
        out.append(ev(t, K.SIGNON_REQ, "host", terminal, stan="000002"))
    if answered:
        out.append(ev(t + 2, K.SIGNON_RSP, "host", terminal, stan="000002" if retry else "000001",
                      rc=rc))
        if rc == "00":
            out.append(ev(t + 3, K.SIGNON_OK, c, terminal, line="SIGNON ok"))
            if ready:
                out.append(ev(t + 11, K.READY, c, terminal, line="READY"))
        else:
            out.append(ev(t + 3, K.SIGNON_FAIL, c, terminal, line=f"SIGNON fail rc={rc}"))
    return out


def sale(t0: float = 10_000, *, rc="00", answered=True, stan="000007", presented=True,
         terminal="T1", second_req=False) -> list[Event]:
    c = f"{terminal}.console"
    out = [ev(t0, K.SALE_START, c, terminal, line="SALE start"),
           ev(t0 + 1, K.CARD_WAIT, c, terminal),
           ev(t0 + 2, K.ROBOT_WAIT, "robot1", terminal, waited_s=0.25)]
    if not presented:
        return out
    out += [ev(t0 + 300, K.CARD_PRESENTED, "robot1", terminal, mode="chip"),
            ev(t0 + 420, K.CARD_READ, c, terminal, line="CARD read mode=chip pan=622202****0128")]
    req = t0 + 430
    if second_req:  # a reversal's 0200 before, with another STAN
        out.append(ev(req - 5, K.AUTH_REQ, "host", terminal, stan="000006"))
    out.append(ev(req, K.AUTH_REQ, "host", terminal, stan=stan))
    if answered:
        out.append(ev(req + 4, K.AUTH_RSP, "host", terminal, stan=stan, rc=rc))
        word = "approved" if rc == "00" else "declined"
        out.append(ev(req + 6, K.AUTH_RESULT, c, terminal,
                      line=f"RESULT {word} rc={rc} auth=123456 rrn=000000000001 stan={stan}"))
    else:
        out.append(ev(req + 8000, K.AUTH_RESULT, c, terminal,
                      line=f"RESULT failed rc=98 stan={stan}"))
    return out


# --- hand-computed ---------------------------------------------------------------------------------
def test_sign_on_figures_by_hand_including_a_retry_and_missing_events():
    evs = {1: signon(1000),  # on 1300, boot 700, 0800 at 2061, 0810 2063, READY 2072
           2: signon(5000, retry=True),  # first 0800 unanswered, the second answered
           3: signon(12000, rc="96"),  # refused: no READY
           4: signon(16000, answered=False),  # no 0810 at all
           5: signon(20000)[3:]}  # the power-on was lost (e.g. an aborted cycle)
    f = figures(frame(evs), cycles_of({c: ("T1", "signon", 0, 0) for c in evs}))
    one = f.loc[1]
    assert one["boot_s"] == pytest.approx(0.700)
    assert one["signon_req_s"] == pytest.approx(0.761)
    assert one["signon_host_s"] == pytest.approx(0.002)
    assert one["ready_s"] == pytest.approx(0.772)
    assert one["attempts"] == 1 and one["signon_ok"] and one["failure"] is None
    assert one["why"] is None
    two = f.loc[2]
    assert two["attempts"] == 2
    assert two["signon_req_s"] == pytest.approx(0.761)  # from the first 0800
    assert two["signon_host_s"] == pytest.approx(0.002)  # the 0800 the 0810 answered
    assert two["ready_s"] == pytest.approx(0.761 + 3.3 + 0.011)
    three = f.loc[3]
    assert math.isnan(three["signon_host_s"]) and math.isnan(three["ready_s"])
    assert three["boot_s"] == pytest.approx(0.700) and not three["signon_ok"]
    assert three["failure"] == "sign-on refused (rc=96)"
    assert "ready_s: no READY after power-on" in three["why"]
    assert "signon_host_s: no 0810 with rc=00" in three["why"]
    assert f.loc[4, "failure"] == "no 0810 (host or network)"
    five = f.loc[5]
    assert all(math.isnan(five[x]) for x in ("boot_s", "signon_req_s", "ready_s"))
    assert five["failure"] == "no power-on"
    assert five["why"].count("no power-on in this cycle") == 4
    assert (f["kind"] == "signon").all() and (f["fault_case"] == "none").all()


def test_boot_counts_to_the_host_connect_without_a_console():
    evs = {1: [e for e in signon(1000) if e.kind != K.BOOT_DONE]}
    f = figures(frame(evs), cycles_of({1: ("T1", "signon", 0, 0)}), has_console={"T1": False})
    assert f.loc[1, "boot_s"] == pytest.approx(0.760)  # power-on -> host connect
    f2 = figures(frame(evs), cycles_of({1: ("T1", "signon", 0, 0)}))
    assert f2.loc[1, "boot_s"] == pytest.approx(0.740)  # the console's LOGIN line came first


def test_sale_figures_by_hand():
    evs = {1: sale(10_000), 2: sale(20_000, rc="51"), 3: sale(30_000, answered=False),
           4: sale(40_000, presented=False), 5: sale(50_000, second_req=True)}
    f = figures(frame(evs), cycles_of({c: ("T1", "sale", 0, 0) for c in evs}))
    one = f.loc[1]
    assert one["card_to_auth_s"] == pytest.approx(0.130)
    assert one["auth_host_s"] == pytest.approx(0.004)
    assert one["auth_to_result_s"] == pytest.approx(0.002)
    assert one["card_to_result_s"] == pytest.approx(0.136)
    assert one["robot_wait_s"] == pytest.approx(0.25)
    assert (one["outcome"], one["rc"], one["stan"]) == ("approved", "00", "000007")
    assert f.loc[2, "outcome"] == "declined" and f.loc[2, "failure"] == "declined"
    three = f.loc[3]
    assert math.isnan(three["auth_host_s"]) and math.isnan(three["auth_to_result_s"])
    assert three["card_to_result_s"] == pytest.approx(8.130)
    assert three["outcome"] == "failed" and three["rc"] == "98"
    assert "auth_host_s: no 0210/0110 for the 0200/0100" in three["why"]
    four = f.loc[4]
    assert math.isnan(four["card_to_auth_s"]) and four["failure"] == "no result"
    assert "card_to_auth_s: card never presented" in four["why"]
    assert four["robot_wait_s"] == pytest.approx(0.25)
    assert f.loc[5, "card_to_auth_s"] == pytest.approx(0.130)  # the 0200 of the result's STAN
    assert (f.loc[1:3, ["boot_s", "ready_s"]].isna()).all().all()  # sign-on figures: NaN


def test_overlapping_faults_fault_cases_and_recovery():
    on = 1300
    a = signon(1000)  # READY at 2072
    faults = [ev(on + 0.001, K.FAULT_ON, "faults", id="f1", fault="latency", layer="proxy",
                 params={"ms": 300}),
              ev(on + 100, K.FAULT_ON, "faults", id="f2", fault="host_reply", layer="host",
                 params={"rc": "96"}),
              ev(1900, K.FAULT_OFF, "faults", id="f2", fault="host_reply"),
              ev(2100, K.FAULT_OFF, "faults", id="f1", fault="latency")]  # after READY
    b = signon(5000)  # READY at 6072; its fault goes off at 5500 (before READY)
    fb = [ev(5300.001, K.FAULT_ON, "faults", id="f3", fault="stall", layer="proxy",
             params={"toxicity": 1.0}), ev(5500, K.FAULT_OFF, "faults", id="f3")]
    c = signon(9000, terminal="T2")  # a fault that never goes off (on T2)
    fc = [ev(9300.001, K.FAULT_ON, "faults", "T2", id="f4", fault="host_down", layer="proxy",
             params={})]
    d = signon(13000, terminal="T2")  # no fault of its own, but T2's is still on
    # sale recovery: a declined sale under the fault, the terminal's next approved sale
    s1 = sale(40_000, rc="51") + [
        ev(39_999, K.FAULT_ON, "faults", id="f5", fault="host_reply", layer="host",
           params={"rc": "51"}),
        ev(40_440, K.FAULT_OFF, "faults", id="f5")]
    s2 = sale(42_000)  # approved: its result at 42436
    evs = {1: a + faults, 2: b + fb, 3: c + fc, 4: d, 5: s1, 6: s2}
    spans = {1: ("T1", "signon", 1000, 2200), 2: ("T1", "signon", 5000, 6100),
             3: ("T2", "signon", 9000, 10_100), 4: ("T2", "signon", 13000, 14_100),
             5: ("T1", "sale", 39_990, 40_500), 6: ("T1", "sale", 41_990, 42_500)}
    f = figures(frame(evs), cycles_of(spans))
    assert f.loc[1, "fault_case"] == "host_reply(rc=96) + latency(ms=300)"
    assert f.loc[1, "recover_s"] == 0.0  # READY (2072) came before the last off (2100)
    assert f.loc[2, "fault_case"] == "stall(toxicity=1.0)"
    assert f.loc[2, "recover_s"] == pytest.approx(0.572)  # off 5500 -> READY 6072
    assert f.loc[3, "fault_case"] == "host_down()" and math.isnan(f.loc[3, "recover_s"])
    assert "recover_s: a fault did not go off" in f.loc[3, "why"]
    assert f.loc[4, "fault_case"] == "host_down()"  # still on during the next cycle
    assert f.loc[5, "fault_case"] == "host_reply(rc=51)"
    assert f.loc[5, "recover_s"] == pytest.approx((42_436 - 40_440) / 1000)
    assert f.loc[6, "fault_case"] == "none" and math.isnan(f.loc[6, "recover_s"])


def test_events_in_no_cycle_and_cycles_without_events():
    evs = {1: signon(1000)}
    free = [ev(50, K.RUN_NOTE, "rig", None), ev(60, K.PSU_IO, "psu1", None)]
    f = figures(frame(evs, free), cycles_of({1: ("T1", "signon", 0, 0),
                                             2: ("T2", "signon", 0, 0)}))
    assert list(f.index) == [1, 2]
    assert f.loc[1, "ready_s"] == pytest.approx(0.772)
    assert f.loc[2, "terminal"] == "T2" and f.loc[2, "failure"] == "no power-on"


def test_payload_as_columns_or_as_data_dicts_gives_the_same():
    evs = {1: signon(1000, retry=True), 2: sale(10_000), 3: sale(20_000, answered=False)}
    df = frame(evs)
    cols = df.drop(columns="data").copy()
    for name, key in (("stan", "stan"), ("rc", "rc"), ("line", "line"), ("waited_s", "waited_s"),
                      ("fault_id", "id")):
        cols[name] = [d.get(key) for d in df["data"]]
    cy = cycles_of({1: ("T1", "signon", 0, 0), 2: ("T1", "sale", 0, 0), 3: ("T1", "sale", 0, 0)})
    pd.testing.assert_frame_equal(figures(df, cy), figures(cols, cy))


# --- a synthetic run against the figures it drew --------------------------------------------------
def test_synthetic_run_figures_equal_what_was_drawn():
    s = synth_run(cycles=6000, terminals=4, p_retry=0.1, p_refused=0.05, p_no_response=0.05,
                  p_declined=0.05, p_fault=0.1, p_overlap=0.5, seed=7)
    f = figures(s.events, s.cycles)
    t = s.truth
    assert (t["attempts"] == 2).sum() > 100 and (t["fault_case"] != "none").sum() > 100
    for c in ("boot_s", "signon_req_s", "signon_host_s", "ready_s", "card_to_auth_s",
              "auth_host_s", "auth_to_result_s", "card_to_result_s", "robot_wait_s",
              "recover_s"):
        np.testing.assert_allclose(f[c].reindex(t.index).to_numpy(dtype=float),
                                   t[c].to_numpy(dtype=float), atol=2e-9, err_msg=c)
    assert (f["attempts"].reindex(t.index) == t["attempts"]).all()
    assert (f["signon_ok"].reindex(t.index) == t["signon_ok"]).all()
    assert (f["fault_case"].reindex(t.index) == t["fault_case"]).all()
    got = f["outcome"].reindex(t.index).fillna("-").to_numpy(dtype=object)
    assert (got == t["outcome"].fillna("-").to_numpy(dtype=object)).all()


# --- the vectorised derivation against a per-cycle reference -----------------------------------
def _ref_signon(events, has_console=True):
    """The per-cycle definition as plain Python (the one the live rig used before figures.py)."""
    evs = sorted(events, key=lambda e: e.mono_ns)
    on = next((e for e in evs if e.kind == K.POWER_ON), None)
    if on is None:
        return None
    t0 = on.mono_ns
    console = [e for e in evs if e.source.endswith(".console") and e.kind != K.ERROR
               and e.mono_ns >= t0]
    connect = next((e for e in evs if e.kind == K.HOST_CONNECT and e.mono_ns >= t0), None)
    reqs = [e for e in evs if e.kind == K.SIGNON_REQ and e.mono_ns >= t0]
    # no console line: the host connect, else (the host could not tell whose it was) the 0800
    first = console[0] if has_console and console else connect or (reqs[0] if reqs else None)
    rsps = [e for e in evs if e.kind == K.SIGNON_RSP and e.mono_ns >= t0]
    ok_rsp = next((r for r in reversed(rsps) if r.data.get("rc") == "00"), None)
    ok_req = None
    if ok_rsp is not None:
        ok_req = next((q for q in reversed(reqs) if q.data.get("stan") == ok_rsp.data.get("stan")
                       and q.mono_ns <= ok_rsp.mono_ns), None)
    ready = next((e for e in evs if e.kind == K.READY and e.mono_ns >= t0), None)
    signed = next((e for e in evs if e.kind == K.SIGNON_OK and e.mono_ns >= t0), None)

    def s(a, b):
        return None if a is None or b is None else (b - a) / 1e9

    return {"ok": ready is not None and signed is not None,
            "boot_s": s(t0, first.mono_ns if first else None),
            "signon_req_s": s(t0, reqs[0].mono_ns if reqs else None),
            "signon_host_s": s(ok_req.mono_ns if ok_req else None,
                               ok_rsp.mono_ns if ok_rsp else None),
            "ready_s": s(t0, ready.mono_ns if ready else None), "attempts": len(reqs)}


_KV = re.compile(r"(\w+)=(\S+)")


def _ref_sale(events):
    evs = sorted(events, key=lambda e: e.mono_ns)
    presented = next((e for e in evs if e.kind == K.CARD_PRESENTED), None)
    after = presented.mono_ns if presented else 0
    result = next((e for e in evs if e.kind == K.AUTH_RESULT and e.mono_ns >= after), None)
    fields = dict(_KV.findall(str(result.data.get("line", "")))) if result else {}
    stan = fields.get("stan")
    reqs = [e for e in evs if e.kind == K.AUTH_REQ and e.mono_ns >= after]
    req = next((e for e in reqs if stan and e.data.get("stan") == stan), reqs[-1] if reqs else None)
    rsp = None
    if req is not None:
        rsp = next((e for e in evs if e.kind == K.AUTH_RSP and e.mono_ns >= req.mono_ns
                    and e.data.get("stan") == req.data.get("stan")), None)

    def s(a, b):
        return None if a is None or b is None else (b.mono_ns - a.mono_ns) / 1e9

    m = re.search(r"RESULT (\w+)", str(result.data.get("line", ""))) if result else None
    return {"outcome": (m.group(1) if m else "failed") if result else None, "rc": fields.get("rc"),
            "stan": stan or (req.data.get("stan") if req else None),
            "card_to_auth_s": s(presented, req), "auth_host_s": s(req, rsp),
            "auth_to_result_s": s(rsp, result), "card_to_result_s": s(presented, result)}


KINDS = [K.POWER_ON, K.POWER_OFF, K.BOOT_DONE, K.CONSOLE_LINE, K.ERROR, K.HOST_CONNECT,
         K.SIGNON_REQ, K.SIGNON_RSP, K.SIGNON_OK, K.SIGNON_FAIL, K.READY, K.CARD_PRESENTED,
         K.AUTH_REQ, K.AUTH_RSP, K.AUTH_RESULT, K.PSU_IO]
SOURCES = ["T1.console", "host", "psu1", "robot1"]


@st.composite
def event_lists(draw):
    n = draw(st.integers(0, 14))
    out = []
    for _ in range(n):
        kind = draw(st.sampled_from(KINDS))
        t = draw(st.integers(0, 40)) * MS  # coarse times: ties happen
        data = {}
        if kind in (K.SIGNON_REQ, K.SIGNON_RSP, K.AUTH_REQ, K.AUTH_RSP):
            data["stan"] = draw(st.sampled_from(["000001", "000002", None]))
        if kind == K.SIGNON_RSP:
            data["rc"] = draw(st.sampled_from(["00", "96"]))
        if kind == K.AUTH_RESULT:
            data["line"] = draw(st.sampled_from([
                "RESULT approved rc=00 stan=000001", "RESULT declined rc=51 stan=000002",
                "RESULT approved rc=00", "garbage", "RESULT failed rc=98 stan=000009"]))
        src = draw(st.sampled_from(SOURCES))
        out.append(Event(t, t, kind, src, "T1", data))
    return out


def _num_eq(a, b):
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and not (isinstance(b, float) and math.isnan(b)) and abs(a - b) < 1e-12


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_lists(), st.booleans())
def test_live_and_vectorised_equal_the_per_cycle_reference(evs, has_console):
    ref = _ref_signon(evs, has_console)
    live = signon_figures("T1", 1, evs, has_console=has_console)
    df = frame({1: evs}) if evs else None
    vec = figures(df, has_console=has_console).loc[1] if evs else None
    if ref is None:
        assert not live.ok and live.error == "no power-on in this cycle"
        if vec is not None:
            assert math.isnan(vec["boot_s"]) and vec["power_on_ns"] == -1
    else:
        assert live.ok == ref["ok"] and live.attempts == ref["attempts"]
        assert bool(vec["signon_ok"]) == ref["ok"] and vec["attempts"] == ref["attempts"]
        for f in ("boot_s", "signon_req_s", "signon_host_s", "ready_s"):
            assert _num_eq(ref[f], getattr(live, f)), (f, ref[f], getattr(live, f))
            assert _num_eq(ref[f], vec[f]), (f, ref[f], vec[f])
    rs, ls = _ref_sale(evs), sale_figures(evs)
    for k, v in rs.items():
        assert (_num_eq(v, ls[k]) if k.endswith("_s") else v == ls[k]), (k, v, ls[k])
        if evs:
            got = vec[k]
            got = None if got is None or (isinstance(got, float) and math.isnan(got)) else got
            assert (_num_eq(v, got) if k.endswith("_s") else v == got), (k, v, got)


def test_the_reference_agrees_on_a_whole_synthetic_run():
    s = synth_run(cycles=300, terminals=3, p_retry=0.2, p_refused=0.1, p_no_response=0.1, seed=3)
    f = figures(s.events, s.cycles)
    ev = s.events
    for cid, g in ev.groupby("cycle_id"):  # the reference needs Event objects: one per row
        evs = [Event(int(r.mono_ns), int(r.wall_ns), K(str(r.kind)), str(r.source),
                     str(r.terminal), {k: getattr(r, k) for k in ("stan", "rc", "line")
                                       if isinstance(getattr(r, k), str)})
               for r in g.itertuples()]
        kind = s.cycles.set_index("cycle_id").loc[cid, "kind"]
        ref = _ref_signon(evs) if kind == "signon" else _ref_sale(evs)
        for k, v in ref.items():
            if k.endswith("_s"):
                assert _num_eq(v, f.loc[cid, k]), (cid, k)


# --- console lines ---------------------------------------------------------------------------------
TOKENS = ["rc=00", "rc=51", "stan=000001", "x=rc=5", "a,rc=7", "=rc=9", "rc=", "rcx=1", "xrc=2",
          "RESULT", "approved", "auth=1=2", "pan=622202****0128", "é=1", "rc=a=b", "-", "k=",
          "érc=3", "é,rc=4", "RESULT_x", "٣rc=6", "a\x1frc=8", "b\trc=9", "c\xa0rc=1"]


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(st.sampled_from(TOKENS), max_size=6), min_size=20, max_size=40))
def test_console_line_fields_same_by_re_and_by_arrow(lines_tokens):
    lines = np.array([" ".join(t) for t in lines_tokens] + [None], dtype=object)
    keys = {"rc": "rc", "stan": "stan", "auth_code": "auth", "pan": "pan"}
    fast = line_fields(lines, keys)  # > 16 lines: Arrow's RE2
    for i, line in enumerate(lines):
        want = dict(_KV.findall(line)) if line is not None else {}
        for name, key in keys.items():
            assert fast[name][i] == want.get(key), (line, key, fast[name][i])
        small = line_fields(lines[i:i + 1], keys)
        assert all(small[n][0] == want.get(k) for n, k in keys.items())
    words = result_outcome(lines[:-1])
    for w, line in zip(words, lines[:-1], strict=True):
        m = re.search(r"RESULT (\w+)", line)
        assert w == (m.group(1) if m else "failed")


def test_columns_from_a_live_event_list():
    evs = signon(1000) + sale(5000)
    cols = Columns.from_events(evs)
    assert cols.C == 1 and cols.n == len(evs)
    s = signon_figures("T1", 9, signon(1000))
    assert s.ok and s.boot_s == pytest.approx(0.7) and s.cycle == 9
    r = sale_figures(sale(5000))
    assert r["outcome"] == "approved" and r["pan_masked"] == "622202****0128"
    assert r["auth_code"] == "123456" and r["rrn"] == "000000000001"


def test_sources_and_profile_reasons_of_figures():
    """boot_src / ready_src / result_src name where each end came from; a figure the profile
    cannot supply is NaN with the profile's reason."""
    def ev(ms, kind, source, **data):
        return Event(int(ms * MS), int(ms * MS), kind, source, "T1", data)

    console = [ev(0, K.POWER_ON, "psu1"), ev(80, K.BOOT_DONE, "T1.console", line="BOOT done"),
               ev(90, K.SIGNON_REQ, "host", stan="000001"),
               ev(92, K.SIGNON_RSP, "host", stan="000001", rc="00"),
               ev(93, K.SIGNON_OK, "T1.console"), ev(95, K.READY, "T1.console")]
    blind = [ev(1000, K.POWER_ON, "psu1"), ev(1090, K.SIGNON_REQ, "host", stan="000002"),
             ev(1092, K.SIGNON_RSP, "host", stan="000002", rc="00"),
             ev(1092, K.SIGNON_OK, "T1.host"), ev(1150, K.READY, "T1.ecr")]
    none = [ev(2000, K.POWER_ON, "psu1"), ev(2090, K.SIGNON_REQ, "host", stan="000003")]
    df = figures(frame({1: console, 2: blind, 3: none}),
                 cycles_of({1: ("T1", "signon", 0, 500), 2: ("T1", "signon", 1000, 1500),
                            3: ("T1", "signon", 2000, 2500)}),
                 has_console={"T1": True},
                 cannot={"T1": {"ready_s": "profile X cannot report READY"}})
    assert list(df["boot_src"]) == ["console", "host 0800", "host 0800"]
    assert list(df["ready_src"]) == ["console", "ecr", None]
    assert df.loc[2, "ready_s"] == pytest.approx(0.150)
    assert "ready_s: profile X cannot report READY" in df.loc[3, "why"]
    assert df["result_src"].isna().all()
