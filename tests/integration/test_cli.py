"""The `rig` command: JSON output, and Ctrl-C leaving the safe state and a readable store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rig.config import load_lab
from rig.timeline.store import open_readonly

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _rig(*args: str, results: Path) -> list[str]:
    return [sys.executable, "-m", "rig.cli", "--results", str(results), *args]


def test_signon_json(lab_proc, lab_file, tmp_path):
    p = subprocess.run(_rig("signon", "T1", "-n", "3", "--config", str(lab_file), "--json",
                            results=tmp_path / "r"),
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["terminal"] == "T1" and len(doc["cycles"]) == 3
    c = doc["cycles"][0]
    assert c["ok"] is True and set(c) >= {"boot_s", "signon_req_s", "signon_host_s", "ready_s"}
    assert doc["summary"]["ready_s"]["p50"] > 0


def test_bad_config_exit_2_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs/labs/virtual.yaml").read_text().replace("key_mode: \"001\"",
                                                                          "key_mode: \"009\""))
    p = subprocess.run(_rig("signon", "T1", "--config", str(bad), results=tmp_path / "r"),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2
    assert f"{bad}:" in p.stderr and "terminals.T2.key_mode" in p.stderr


def _outputs(cfg_path: Path) -> list[str]:
    cfg = load_lab(cfg_path)
    host, port = cfg.sim.psu_listen.split(":")
    with socket.create_connection((host, int(port)), timeout=2) as c:
        f = c.makefile("rw", newline="\n")
        states = []
        for ch in range(1, 5):
            f.write(f"INST:NSEL {ch}\nOUTP?\n")
            f.flush()
            states.append(f.readline().strip())
    return states


def test_ctrl_c_leaves_safe_state_and_marks_cycle(lab_proc, lab_file, tmp_path):
    results = tmp_path / "r"
    proc = subprocess.Popen(_rig("signon", "all", "-n", "200", "--config", str(lab_file),
                                 "--off-s", "0.01", results=results),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    db = results / "virtual.db"
    end = time.monotonic() + 60
    done = 0
    while time.monotonic() < end and done < 6:
        time.sleep(0.1)
        if db.exists():
            con = open_readonly(db)
            with contextlib.suppress(sqlite3.OperationalError):  # no schema yet
                done = con.execute(
                    "SELECT count(*) FROM cycles WHERE state='completed'").fetchone()[0]
            con.close()
    assert done >= 6, "series did not get going"
    assert "1" in _outputs(lab_file) or "ON" in _outputs(lab_file)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert all(s in ("0", "OFF") for s in _outputs(lab_file))
    con = open_readonly(db)
    # the CLI's own run (the service's run, id 1, goes on)
    assert con.execute("SELECT state FROM runs ORDER BY id DESC").fetchone()[0] == "interrupted"
    states = [r[0] for r in con.execute("SELECT state FROM cycles")]
    assert "started" not in states
    assert states.count("aborted") >= 1
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_card_list_and_sale_json_never_show_full_pans(lab_proc, lab_file, tmp_path):
    from rig.cards.profiles import load_cards

    pans = [c.pan for c in load_cards().values()]
    p = subprocess.run(_rig("card", "list", results=tmp_path / "r"), capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "cup_debit" in p.stdout and "622202" in p.stdout
    q = subprocess.run(_rig("sale", "T1", "--card", "cup_debit", "--amount", "1.00", "--entry",
                            "tap", "--config", str(lab_file), "--json", results=tmp_path / "r"),
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert q.returncode == 0, q.stderr
    doc = json.loads(q.stdout)
    assert doc["outcome"] == "approved" and doc["rc"] == "00" and doc["entry"] == "tap"
    assert doc["card_to_result_s"] > 0
    for pan in pans:
        assert pan not in p.stdout + p.stderr + q.stdout + q.stderr


def test_fault_hold_list_and_clear(tmp_path):
    """`rig fault T1 latency --for` holds and undoes; `list` sees it from another process
    meanwhile; `clear` stops the holder and reports; bad parameters exit 1 before any change."""
    from tests.labcfg import virtual_config, write_config

    lab = write_config(virtual_config(tmp_path, proxies=True, time_scale=0.3), tmp_path / "l.yaml")
    res = tmp_path / "r"
    holder = subprocess.Popen(_rig("fault", "T1", "latency", "--ms", "50", "--for", "60",
                                   "-c", str(lab), results=res),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None
        assert "on, held for 60 s" in holder.stdout.readline() + holder.stdout.readline()
        p = subprocess.run(_rig("fault", "list", "--json", "-c", str(lab), results=res),
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        listed = json.loads(p.stdout)
        assert [(e["terminal"], e["fault"], e["alive"]) for e in listed] == [("T1", "latency", True)]
        p = subprocess.run(_rig("fault", "clear", "--json", "-c", str(lab), results=res),
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["stopped_pids"] == [holder.pid]
        assert holder.wait(30) is not None
    finally:
        holder.kill()
    p = subprocess.run(_rig("fault", "list", "--json", "-c", str(lab), results=res),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert json.loads(p.stdout) == []
    p = subprocess.run(_rig("fault", "T1", "loss", "--percent", "150", "-c", str(lab),
                            results=res), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 1 and "percent" in p.stderr and "less than or equal to 100" in p.stderr


def test_scenario_list_json():
    p = subprocess.run([sys.executable, "-m", "rig.cli", "scenario", "list", "--json"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    names = {s["name"] for s in json.loads(p.stdout)}
    assert {"no-network", "host-no-response", "mac-error", "brownout"} <= names
