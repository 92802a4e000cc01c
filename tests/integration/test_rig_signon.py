"""The sign-on slice end to end: Rig → PSU (pyvisa socket) → virtual terminals → host → store."""

from __future__ import annotations

import socket

import pytest

from rig import load_run, open_local
from rig.core.errors import InstrumentError, TestError
from rig.timeline.events import EventKind
from tests.truth import read, truth_cycles

pytestmark = [pytest.mark.integration, pytest.mark.timing]  # timing: run alone (pyproject markers)
FIGURES = ("boot_s", "signon_req_s", "signon_host_s", "ready_s")
TOL_S = 0.002


def test_four_terminals_in_parallel_agree_with_truth(lab_file, tmp_path):
    with open_local(lab_file, results=tmp_path / "results", label="fw-test") as rig:
        assert rig.lab is not None, "open_local should have started the virtual lab"
        df = rig.signon_series("all", n=4, off_s=0.05, progress=False)
        journal = rig.journal_path
        run_id, db = rig.run_id, rig.store.path
    assert len(df) == 16
    assert df["ok"].all(), df[~df["ok"]][["terminal", "error"]]
    entries = read(journal)
    for t in ("T1", "T2", "T3", "T4"):
        mine = df[df["terminal"] == t].sort_values("i")
        truth = truth_cycles(entries, t)
        assert len(truth) == len(mine) == 4
        for (_, row), tr in zip(mine.iterrows(), truth, strict=True):
            for f in FIGURES:
                assert row[f] is not None and tr[f] is not None, (t, f)
                assert abs(row[f] - tr[f]) < TOL_S, f"{t} cycle {row['i']} {f}: rig {row[f]:.6f} truth {tr[f]:.6f}"
    # the same figures come back from the store, for notebooks
    data = load_run(db, run_id)
    assert data.run["label"] == "fw-test" and data.run["state"] == "completed"
    assert data.run["config"]["terminals"]["T1"]["tmk"] == "****"
    s = data.signons
    assert len(s) == 16 and s["ok"].all()
    kernel = data.events[data.events["kind"] == EventKind.SIGNON_REQ.value]
    assert (kernel["clock"] == "kernel").all()
    # T4 needs an operator login over ECR; the password never reaches the store
    ecr = data.events[data.events["kind"] == "ecr_io"]
    assert len(ecr) == 4 and all("****" in d["cmd"] for d in ecr["data"])
    assert "0000" not in " ".join(str(d) for d in ecr["data"])


def test_wait_signon_api_and_safe_state(lab_proc, lab_file, tmp_path):
    with open_local(lab_file, results=tmp_path / "r") as rig:
        assert rig.lab is None  # the test's lab was already listening
        rig.power_cycle("T1", off_s=0.01)
        s = rig.wait_signon("T1")
        assert s.ok and s.attempts == 1
        assert 0 < s.boot_s < s.signon_req_s < s.ready_s
        with pytest.raises(TestError, match="unknown terminal 'T9'"):
            rig.power_on("T9")
        st = rig.status()
        assert st["instruments"]["psu1"]["ok"]
        assert st["terminals"]["T1"]["output"] is True
    # closed: every output is off (safe_power: off)
    psu = rig.cfg.sim.psu_listen.split(":")
    with socket.create_connection((psu[0], int(psu[1])), timeout=2) as c:
        f = c.makefile("rw", newline="\n")
        for ch in range(1, 5):
            f.write(f"INST:NSEL {ch}\nOUTP?\n")
            f.flush()
            assert f.readline().strip() in ("0", "OFF")


def test_unreachable_psu_names_the_resource(tmp_path):
    from tests.labcfg import free_port, virtual_config

    cfg = virtual_config(tmp_path)
    port = free_port()
    cfg = cfg.model_copy(update={"virtual": False, "instruments": {
        "psu1": cfg.instruments["psu1"].model_copy(update={"resource": f"TCPIP0::127.0.0.1::{port}::SOCKET",
                                                           "timeout_s": 0.5})}})
    with pytest.raises(InstrumentError, match=rf"psu1 \(TCPIP0::127.0.0.1::{port}::SOCKET\)"):
        open_local(cfg, results=tmp_path / "r")


def test_psu_killed_mid_series_loses_no_cycle(lab_proc, lab_file, tmp_path):
    import threading
    import time

    from rig.timeline.store import open_readonly

    rig = open_local(lab_file, results=tmp_path / "r")
    db = rig.store.path
    outcome: dict = {}

    def series():
        try:
            outcome["df"] = rig.signon_series(["T1", "T2"], n=200, off_s=0.01, timeout_s=2.0,
                                              progress=False)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome["error"] = e

    th = threading.Thread(target=series)
    th.start()
    con = open_readonly(db)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        n_ok = con.execute("SELECT count(*) FROM cycles WHERE state='completed'").fetchone()[0]
        if n_ok >= 6:
            break
        time.sleep(0.05)
    before = con.execute("SELECT id FROM cycles WHERE state='completed'").fetchall()
    lab_proc.proc.kill()
    th.join(60)
    assert not th.is_alive()
    rig.close()
    # each terminal's part ends with the instrument's error in its last row; nothing raised
    df = outcome.get("df")
    assert df is not None, outcome
    errs = df[df["error"].fillna("").str.startswith("InstrumentError")]
    assert set(errs["terminal"]) == {"T1", "T2"}
    assert all("psu1" in e for e in errs["error"])
    rows = con.execute("SELECT id, state, result_json FROM cycles ORDER BY id").fetchall()
    ids = {r[0] for r in rows}
    assert {b[0] for b in before} <= ids  # every cycle recorded before the kill is still there
    assert all(r[1] in ("completed", "aborted") for r in rows)  # none left half-marked
    assert any(r[1] == "aborted" or '"ok":false' in r[2] for r in rows)
