"""The rig service through its clients: sharing, leases, crash recovery, isolation, timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rig import open_rig
from rig.config import load_lab
from rig.core.errors import LeaseError, ServiceError
from rig.service.runtime import Paths, read_info
from rig.timeline.store import open_readonly, pid_alive
from tests.labcfg import free_port, write_config
from tests.truth import read, truth_cycles

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("boot_s", "signon_req_s", "signon_host_s", "ready_s")
TOL_S = 0.002

CLIENT = """
import sys, time
from rig import open_rig
from rig.config import load_lab
rig = open_rig(sys.argv[1], results=sys.argv[2], label="client-a")
mode = sys.argv[3]
if mode == "lease":
    rig.lease("T1", note="fw 1.2.3")
    print("leased", flush=True)
    time.sleep(600)
elif mode == "busy":
    print("busy", flush=True)
    import threading
    def burn():
        x = 0
        while True:
            x = (x * 31 + 7) % 1000003
    for _ in range(2):
        threading.Thread(target=burn, daemon=True).start()
    burn()
"""


def _client(path: Path, results: Path, mode: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", CLIENT, str(path), str(results), mode],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip() in ("leased", "busy"), (line, p.stderr.read() if p.poll() else "")
    return p


def test_two_clients_share_status_and_a_lease_is_exclusive_until_its_holder_dies(lab):
    path, results = lab
    a = _client(path, results, "lease")
    try:
        with open_rig(path, results=results, label="client-b") as rig:
            st = rig.service_status()
            assert len(st["clients"]) == 2
            assert st["terminals"]["T1"]["leased_by"] and "fw 1.2.3" == st["terminals"]["T1"][
                "lease_note"]
            assert rig.status()["instruments"]["psu1"]["ok"]  # both read status
            with pytest.raises(LeaseError, match=rf"T1 is leased by .*pid {a.pid}.*fw 1\.2\.3"):
                rig.power_cycle("T1", off_s=0.01)
            with pytest.raises(LeaseError, match="T1"):
                rig.lease("T1", "T2")
            assert rig.power_cycle("T2", off_s=0.01) > 0  # the others are free
            assert rig.wait_signon("T2").ok
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            end = time.monotonic() + 10
            while rig.service_status()["terminals"]["T1"]["leased_by"] and time.monotonic() < end:
                time.sleep(0.1)
            with rig.lease("T1", note="mine now"):
                rig.power_cycle("T1", off_s=0.01)
                assert rig.wait_signon("T1").ok
    finally:
        if a.poll() is None:
            a.kill()
    con = open_readonly(results / "virtual.db")
    leases = con.execute("SELECT terminal, note, released_why FROM leases ORDER BY id").fetchall()
    assert ("T1", "fw 1.2.3") == leases[0][:2] and "gone" in leases[0][2]
    runs = dict(con.execute("SELECT label, state FROM runs WHERE label LIKE 'client-%'").fetchall())
    assert runs == {"client-a": "interrupted", "client-b": "completed"}


@pytest.mark.timing  # run alone: a test beside it would disturb the figures too
def test_busy_client_process_does_not_disturb_the_figures(lab):
    path, results = lab
    with open_rig(path, results=results) as rig:
        busy = _client(path, results, "busy")
        try:
            df = rig.signon_series("all", n=3, off_s=0.05, progress=False)
        finally:
            busy.kill()
        journal = rig.journal_path
    assert df["ok"].all(), df[~df["ok"]]["error"].tolist()
    entries = read(journal)
    for t in ("T1", "T2", "T3", "T4"):
        mine = df[df["terminal"] == t].sort_values("i")
        truth = truth_cycles(entries, t)[-3:]
        for (_, row), tr in zip(mine.iterrows(), truth, strict=True):
            for f in FIGURES:
                assert abs(row[f] - tr[f]) < TOL_S, (t, f, row[f], tr[f])


def test_service_killed_mid_series_recovers_on_the_next_open(lab):
    path, results = lab
    rig = open_rig(path, results=results, label="first")
    info = read_info(Paths(results.resolve(), "virtual"))
    assert info is not None
    lab_child = rig.service_status()["lab_child"]
    assert lab_child and pid_alive(lab_child)
    outcome: dict = {}

    def series() -> None:
        try:
            rig.signon_series(["T1", "T2"], n=200, off_s=0.01, progress=False)
        except BaseException as e:  # noqa: BLE001 - inspected below
            outcome["error"] = e

    th = threading.Thread(target=series)
    th.start()
    con = open_readonly(results / "virtual.db")
    end = time.monotonic() + 60
    while time.monotonic() < end and con.execute(
            "SELECT count(*) FROM cycles WHERE state='completed'").fetchone()[0] < 4:
        time.sleep(0.05)
    os.kill(int(info["pid"]), signal.SIGKILL)
    th.join(20)
    assert not th.is_alive(), "the client hangs after its service died"
    assert isinstance(outcome.get("error"), ServiceError), outcome
    end = time.monotonic() + 10
    while pid_alive(lab_child) and time.monotonic() < end:
        time.sleep(0.1)
    assert not pid_alive(lab_child), "the virtual lab outlived its service"
    rig.close()
    completed_before = {r[0] for r in con.execute(
        "SELECT id FROM cycles WHERE state='completed'").fetchall()}

    with open_rig(path, results=results, label="second") as rig2:
        df = rig2.signon_series(["T1"], n=1, off_s=0.01, progress=False)
        assert df["ok"].all()
    runs = dict(con.execute("SELECT label, state FROM runs").fetchall())
    assert runs["first"] == "interrupted" and runs["second"] == "completed"
    states = dict(con.execute("SELECT id, state FROM cycles").fetchall())
    assert all(states[c] == "completed" for c in completed_before)  # kept, not re-marked
    assert "started" not in states.values()
    aborted = [c for c, s in states.items() if s == "aborted"]
    assert aborted, "the cycle in flight was marked aborted"
    n_ev = con.execute(f"SELECT count(*) FROM events WHERE cycle_id IN "
                       f"({','.join(map(str, aborted))})").fetchone()[0]
    assert n_ev > 0  # its events were kept


def test_one_terminal_whose_console_is_gone_does_not_stop_the_others(lab_proc, lab_file,
                                                                     tmp_path, service_stop):
    """The lab serves T3's console where lab_file says; the rig is told another port."""
    from rig.config import load_lab

    cfg = load_lab(lab_file)
    t3 = cfg.terminals["T3"].model_copy(update={"console": f"socket://127.0.0.1:{free_port()}"})
    cfg = cfg.model_copy(update={"terminals": {**cfg.terminals, "T3": t3}})
    path = write_config(cfg, tmp_path / "rig-lab.yaml")
    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    with open_rig(path, results=results) as rig:
        df = rig.signon_series(["T1", "T2", "T3"], n=2, off_s=0.05, timeout_s=3.0,
                               progress=False)
    ok = df.groupby("terminal")["ok"].all()
    assert ok["T1"] and ok["T2"] and not ok["T3"]
    assert len(df[df["terminal"] == "T1"]) == 2 and len(df[df["terminal"] == "T2"]) == 2
    t3 = df[df["terminal"] == "T3"]
    assert len(t3) == 1 and "console" in t3["error"].iloc[0] and "not connected" in t3[
        "error"].iloc[0]


def test_the_service_hands_out_no_keys_and_refuses_a_config_that_differs_only_in_a_key(lab):
    path, results = lab
    text = path.read_text()
    tmk = load_lab(path).terminals["T1"].tmk
    with open_rig(path, results=results, label="keys") as rig:
        shown = str(rig.service_config)
        assert rig.service_config["terminals"]["T1"]["tmk"] == "****"
        assert tmk.lower() not in shown.lower()
        assert rig.cfg.terminals["T1"].tmk == tmk  # the client keeps its own file's config
        other = tmk[:-1] + ("0" if tmk[-1] != "0" else "1")
        assert tmk in text
        path.write_text(text.replace(tmk, other, 1))
        with pytest.raises(ServiceError, match="tmk or operator password"):
            open_rig(path, results=results, label="other-key")
        path.write_text(text)
