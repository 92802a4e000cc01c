"""`rig console --capture`, `rig profile check` and `rig keypad` against a virtual lab whose
terminals run every shipped profile: each profile's captured transcript checks clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.labcfg import write_config
from tests.profilelab import PROFILE_OF, profile_lab

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _rig(*args: str, results: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rig.cli", "--results", str(results), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "400"})  # no wrapped lines


def test_capture_check_and_keypad_on_every_profile(tmp_path, service_stop):
    cfg = profile_lab(tmp_path, time_scale=0.1)  # terminals stay on between commands:
    cfg = cfg.model_copy(update={"safe_power": "leave"})  # rig keypad needs T3 READY
    path = write_config(cfg, tmp_path / "lab.yaml")
    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    for terminal in ("T1", "T2", "T3"):
        profile = PROFILE_OF[terminal]
        log = tmp_path / f"{profile}.log"
        p = _rig("console", terminal, "--capture", str(log), "--sale", "--config", str(path),
                 results=results)
        assert p.returncode == 0, p.stdout + p.stderr
        text = log.read_text(encoding="utf-8")
        assert text.startswith("# rig console capture") and len(text.splitlines()) > 8
        p = _rig("profile", "check", f"configs/profiles/{profile}.yaml", str(log), "--json",
                 results=results)
        assert p.returncode == 0, p.stdout + p.stderr
        doc = json.loads(p.stdout)
        assert doc["clean"] and doc["missing"] == []
        for ev in ("boot", "signon_start", "signon_ok", "ready", "card_prompt", "result"):
            assert doc["seen"].get(ev), (profile, ev, doc["seen"])
        result = next(x for x in doc["lines"] if x["event"] == "result")
        assert result["canonical"].startswith("RESULT approved rc=00")
    assert "交易成功" in (tmp_path / "newland-n910.log").read_text(encoding="utf-8")
    # the vlab capture is not the pax-a920 format: checking it with the wrong profile fails
    p = _rig("profile", "check", "pax-a920", str(tmp_path / "vlab.log"), results=results)
    assert p.returncode == 1 and "not clean" in p.stdout

    live = subprocess.Popen([sys.executable, "-m", "rig.cli", "--results", str(results),
                             "console", "T2", "--config", str(path)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "400"})
    try:
        time.sleep(2.0)  # its event stream is open
        p = _rig("power", "T2", "cycle", "--config", str(path), results=results)
        assert p.returncode == 0, p.stdout + p.stderr
        assert live.stdout is not None
        seen = []
        for line in live.stdout:
            seen.append(line)
            if "[UI] Idle screen" in line:
                break
        assert any("boot_done" in x and "[SYS] Boot complete" in x for x in seen), seen
    finally:
        live.send_signal(signal.SIGINT)
        live.wait(10)

    p = _rig("keypad", "T3", "SALE", "1", "0", "0", "ENTER", "--config", str(path),
             results=results)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pressed SALE 1 0 0 ENTER" in p.stdout
    p = _rig("keypad", "T3", "CANCEL", "--config", str(path), results=results)
    assert p.returncode == 0, p.stdout + p.stderr
    journal = [json.loads(x) for x in (results / "virtual-truth.jsonl").read_text().splitlines()]
    t3 = [e for e in journal if e.get("terminal") == "T3"]
    keys = [e["key"] for e in t3 if e["what"] == "key_pressed"][-6:]
    assert keys == ["SALE", "1", "0", "0", "ENTER", "CANCEL"]
    keyed = [e for e in t3 if e["what"] in ("sale_start", "result")
             and e["mono_ns"] > next(k["mono_ns"] for k in reversed(t3)
                                     if k["what"] == "key_pressed" and k["key"] == "SALE")]
    assert [(e["what"], e.get("amount"), e.get("rc")) for e in keyed] == [
        ("sale_start", 100, None), ("result", 100, "CX")]


def test_broken_profile_fails_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("console:\n  ready: {pattern: 'READY'}\n  sale: {pattern: 'x'}\n")
    log = tmp_path / "boot.log"
    log.write_text("906 INFO READY\n")
    p = _rig("profile", "check", str(bad), str(log), results=tmp_path / "r", timeout=60)
    assert p.returncode == 2
    assert f"{bad}:3: console.sale: unknown event 'sale'" in " ".join(p.stderr.split())
