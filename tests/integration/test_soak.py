"""Soak campaigns in the rig service: exactly once across crashes, quarantine, pauses."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import httpx
import pytest

from rig.client import connect
from rig.service.runtime import Paths, read_info
from rig.timeline.store import open_readonly, pid_alive
from tests.labcfg import virtual_config, write_config
from tests.soakkit import campaign_file

pytestmark = pytest.mark.integration


def _campaign(tmp: Path, lab: Path, *, cycles: int, extra: str = "") -> Path:
    return campaign_file(tmp, lab, cycles=cycles, extra=extra)


class Api:
    def __init__(self, lab: Path, results: Path) -> None:
        self.lab, self.results = lab, results

    def __call__(self, method: str, path: str, body: object = None) -> object:
        info, _, _ = connect(self.lab, results=self.results)
        r = httpx.request(method, f"{info['url']}{path}", json=body, timeout=60)
        assert r.status_code < 400, r.text
        return r.json()

    def wait(self, run: int, timeout_s: float = 120) -> dict:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            st = self("GET", f"/v1/campaigns/{run}")
            if st["state"] != "running":
                return st
            time.sleep(0.3)
        raise AssertionError(f"campaign {run} still running: {st}")

    def service_pid(self) -> int:
        info = read_info(Paths(self.results.resolve(), "virtual"))
        assert info is not None
        return int(info["pid"])


@pytest.fixture
def soak(tmp_path: Path, service_stop: list) -> tuple[Path, Path, Api]:
    lab = write_config(virtual_config(tmp_path, time_scale=0.1), tmp_path / "lab.yaml")
    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    return lab, results, Api(lab, results)


def test_campaign_survives_five_kills_and_every_planned_cycle_exists_once(soak, tmp_path):
    lab, results, api = soak
    camp = _campaign(tmp_path, lab, cycles=10)
    run = api("POST", "/v1/campaigns", {"path": str(camp)})["run_id"]
    rnd = random.Random(7)
    for _ in range(5):
        time.sleep(rnd.uniform(0.8, 2.5))
        pid = api.service_pid()
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        st = api("GET", f"/v1/campaigns/{run}")  # a new service: the run was interrupted
        if st["state"] == "completed":
            break
        assert st["state"] == "interrupted", st
        api("POST", f"/v1/campaigns/{run}/resume")
    st = api.wait(run, 180)
    assert st["state"] == "completed", st
    con = open_readonly(results / "virtual.db")
    rows = con.execute("SELECT terminal, idx, state FROM soak_cycles WHERE run_id=?",
                       (run,)).fetchall()
    keys = [(t, i) for t, i, _ in rows]
    assert len(keys) == len(set(keys)) == 40  # 4 terminals x 10, each exactly once
    assert {i for _, i, _ in rows} == set(range(10))
    assert all(s in ("completed", "failed", "aborted") for _, _, s in rows)
    assert any(s == "aborted" for _, _, s in rows), "a kill should have caught a cycle in flight"
    orphans = con.execute("SELECT count(*) FROM events e WHERE e.cycle_id IS NOT NULL AND NOT "
                          "EXISTS (SELECT 1 FROM cycles c WHERE c.id=e.cycle_id)").fetchone()[0]
    assert orphans == 0
    assert con.execute("SELECT count(*) FROM cycles WHERE state='started'").fetchone()[0] == 0
    counts = {s: n for s, n in con.execute(
        "SELECT state, count(*) FROM soak_cycles WHERE run_id=? GROUP BY state", (run,))}
    assert (st["completed"], st["failed"], st["aborted"]) == (
        counts.get("completed", 0), counts.get("failed", 0), counts.get("aborted", 0))
    from rig.soak.report import build, render_html

    doc = build(results / "virtual.db", run)  # the morning report counts what the store has
    assert (doc["summary"]["completed"], doc["summary"]["failed"], doc["summary"]["aborted"]) \
        == (st["completed"], st["failed"], st["aborted"])
    assert len(doc["cycles"]) == 40 and doc["summary"]["planned"] == 40
    page = render_html(doc)
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page


def test_a_terminal_that_never_signs_on_is_quarantined_while_the_others_finish(
        lab_proc, lab_file, tmp_path, service_stop):
    """The lab's T2 has the terminal id lab_file gives it; the rig's host is told another one,
    so it answers every sign-on of T2 as from an unknown terminal."""
    from rig.config import load_lab

    cfg = load_lab(lab_file)
    t2 = cfg.terminals["T2"].model_copy(update={"terminal_id": "10000099"})
    cfg = cfg.model_copy(update={"terminals": {**cfg.terminals, "T2": t2}})
    rig_lab = write_config(cfg, tmp_path / "rig-lab.yaml")
    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    api = Api(rig_lab, results)
    camp = _campaign(tmp_path, rig_lab, cycles=6)
    run = api("POST", "/v1/campaigns", {"path": str(camp)})["run_id"]
    st = api.wait(run, 240)
    by = {w["terminal"]: w for w in st["terminals"]}
    assert by["T2"]["health"] == "quarantined", by["T2"]
    assert by["T2"]["completed"] < 6
    for t in ("T1", "T3", "T4"):
        assert by[t]["completed"] == 6 and by[t]["health"] == "good", by[t]
    con = open_readonly(results / "virtual.db")
    health = [json.loads(d)["state"] for (d,) in con.execute(
        "SELECT data_json FROM events WHERE kind='health' AND terminal='T2' ORDER BY seq")]
    assert health[0] == "suspect" and health[-1] == "quarantined"


def test_a_psu_that_disappears_for_a_while_pauses_the_workers_not_dut_failures(
        lab_proc, lab_file, tmp_path, service_stop):
    from tests.integration.conftest import LabProc

    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    api = Api(lab_file, results)
    camp = _campaign(tmp_path, lab_file, cycles=8, extra="chunk: 4\n")
    text = camp.read_text().replace("  quarantine_after: 2", "  quarantine_after: 2\n"
                                    "  infra_poll_s: 0.5")
    camp.write_text(text)
    run = api("POST", "/v1/campaigns", {"path": str(camp)})["run_id"]
    con = open_readonly(results / "virtual.db")
    end = time.monotonic() + 60
    while time.monotonic() < end and con.execute(
            "SELECT count(*) FROM soak_cycles WHERE state='completed'").fetchone()[0] < 4:
        time.sleep(0.1)
    lab_proc.proc.kill()  # the PSU (and the rest of the lab) gone
    lab_proc.proc.wait(10)
    time.sleep(10)
    back = LabProc(lab_file, tmp_path / "truth-2.jsonl")
    try:
        st = api.wait(run, 180)
    finally:
        back.stop()
    assert st["state"] == "completed", st
    rows = con.execute("SELECT state, class FROM soak_cycles WHERE run_id=?", (run,)).fetchall()
    assert len(rows) == 32
    assert not [r for r in rows if r[1] == "terminal"], rows
    assert [r for r in rows if r == ("aborted", "infrastructure")]
    kinds = [k for (k,) in con.execute("SELECT kind FROM events WHERE kind IN ('pause', "
                                       "'resume') ORDER BY seq")]
    assert "pause" in kinds and kinds[-1] == "resume"
    assert all(w["health"] == "good" for w in st["terminals"])


def _schedule(tmp: Path, entries: list[tuple[str, Path, str, float]]) -> Path:
    lines = ["schedules:"]
    for name, camp, start, dur in entries:
        lines += [f"  - name: {name}", f"    campaign: {camp}",
                  f"    window: {{start: '{start}', duration: {dur}}}"]
    path = tmp / "schedule.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait_state(api: Api, run: int, states: set[str], timeout_s: float) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        st = api("GET", f"/v1/campaigns/{run}")
        if st["state"] in states:
            return st
        time.sleep(0.2)
    raise AssertionError(f"run {run} never reached {states}: {st}")


def test_a_window_that_closes_stops_the_campaign_and_the_next_resumes_it(soak, tmp_path):
    lab, results, api = soak
    camp = _campaign(tmp_path, lab, cycles=12)
    camp.write_text(camp.read_text().replace("  - await_signon: {timeout_s: 5}",
                                             "  - await_signon: {timeout_s: 5}\n"
                                             "  - wait: {s: 0.4}"))
    # a 5 s window every 15 s (croniter's sixth field is seconds)
    sched = _schedule(tmp_path, [("short", camp, "* * * * * */15", 5)])
    api("POST", "/v1/schedules", {"path": str(sched)})
    end = time.monotonic() + 40
    while time.monotonic() < end and not api("GET", "/v1/schedules")[0]["run_id"]:
        time.sleep(0.2)
    run = api("GET", "/v1/schedules")[0]["run_id"]
    assert run, "the scheduler did not start the campaign in its window"
    st = _wait_state(api, run, {"stopped"}, 30)
    assert "window closed" in (st.get("stop_reason") or "")
    done_then = st["completed"]
    assert 0 < done_then < 48
    st = _wait_state(api, run, {"completed"}, 120)  # resumed in the next windows until done
    api("DELETE", "/v1/schedules")
    con = open_readonly(results / "virtual.db")
    keys = con.execute("SELECT terminal, idx FROM soak_cycles WHERE run_id=?", (run,)).fetchall()
    assert len(keys) == len(set(keys)) == 48


def test_two_schedules_never_run_two_campaigns_on_one_terminal(soak, tmp_path):
    lab, results, api = soak
    a = _campaign(tmp_path, lab, cycles=4)
    b = tmp_path / "b.yaml"
    b.write_text(a.read_text().replace("name: t-soak", "name: t-soak-b"))
    from datetime import datetime

    now = datetime.now()
    daily = f"{now.minute} {now.hour} * * *"  # a window that opened this minute, for an hour
    sched = _schedule(tmp_path, [("a", a, daily, 3600), ("b", b, daily, 3600)])
    api("POST", "/v1/schedules", {"path": str(sched)})
    end = time.monotonic() + 90
    runs: list[int] = []
    while time.monotonic() < end:
        rows = api("GET", "/v1/schedules")
        runs = [r["run_id"] for r in rows if r["run_id"]]
        if len(runs) == 2 and all(api("GET", f"/v1/campaigns/{r}")["state"] == "completed"
                                  for r in runs):
            break
        time.sleep(0.5)
    api("DELETE", "/v1/schedules")
    assert len(runs) == 2
    con = open_readonly(results / "virtual.db")
    rows = con.execute("SELECT run_id, terminal, started_mono_ns, ended_mono_ns FROM soak_cycles "
                       "WHERE run_id IN (?, ?)", tuple(runs)).fetchall()
    assert len(rows) == 32
    for t in ("T1", "T2", "T3", "T4"):
        spans = {r: [(s, e) for run, term, s, e in rows if term == t and run == r]
                 for r in runs}
        a_lo, a_hi = min(s for s, _ in spans[runs[0]]), max(e for _, e in spans[runs[0]])
        b_lo, b_hi = min(s for s, _ in spans[runs[1]]), max(e for _, e in spans[runs[1]])
        assert a_hi <= b_lo or b_hi <= a_lo, f"{t}: the two campaigns overlapped"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sixteen_terminals_two_hundred_cycles_each(tmp_path, service_stop):
    from tests.labcfg import grown

    lab = write_config(grown(virtual_config(tmp_path, time_scale=0.05), 16), tmp_path / "lab.yaml")
    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    api = Api(lab, results)
    camp = _campaign(tmp_path, lab, cycles=200)
    t0 = time.monotonic()
    run = api("POST", "/v1/campaigns", {"path": str(camp)})["run_id"]
    st = api.wait(run, 900)
    took = time.monotonic() - t0
    assert st["state"] == "completed", st
    assert st["completed"] + st["failed"] == 3200 and st["aborted"] == 0, st
    assert st["failed"] <= 32, st  # a virtual terminal may miss a rare deadline on 2 cores
    print(f"16 x 200 cycles in {took:.0f} s")


def test_a_notebook_runs_stops_and_resumes_a_campaign(soak, tmp_path):
    from rig import open_rig

    lab, results, _ = soak
    camp = _campaign(tmp_path, lab, cycles=6)
    camp.write_text(camp.read_text().replace("  - await_signon: {timeout_s: 5}",
                                             "  - await_signon: {timeout_s: 5}\n"
                                             "  - wait: {s: 0.3}"))
    with open_rig(lab, results=results) as rig:
        st = rig.campaign(camp, follow=False)
        time.sleep(0.8)
        rig.stop_campaign(st["run_id"])
        st = rig.follow_campaign(st["run_id"], progress=False)
        assert st["state"] == "stopped" and st["completed"] < 24
        st = rig.resume_campaign(st["run_id"])
        # the cycles in flight at the stop stay aborted; the resume went on with the next ones
        assert st["state"] == "completed"
        assert st["completed"] + st["failed"] + st["aborted"] == 24 and st["aborted"] <= 4
        df = rig.campaigns()
        assert df.loc[df["run_id"] == st["run_id"], "state"].item() == "completed"
