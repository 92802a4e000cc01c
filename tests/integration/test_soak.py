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

pytestmark = pytest.mark.integration


def _campaign(tmp: Path, lab: Path, *, cycles: int, extra: str = "") -> Path:
    text = f"""
name: t-soak
label: fw-test
lab: {lab}
terminals: all
steps:
  - power_cycle: {{off_s: 0.05}}
  - await_signon: {{timeout_s: 5}}
stop:
  cycles: {cycles}
matrix:
  order: round_robin
  cases:
    - id: baseline
      none: true
    - id: slow-host
      faults:
        - {{fault: host_delay, ms: 20, applies_to: signon, during: signon}}
health:
  suspect_after: 2
  recover:
    - power_cycle: {{off_s: 0.05}}
  quarantine_after: 2
  check:
    - power_cycle: {{off_s: 0.05}}
    - await_signon: {{timeout_s: 3}}
{extra}
"""
    path = tmp / "campaign.yaml"
    path.write_text(text)
    return path


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
