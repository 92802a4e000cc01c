"""SIGKILL of a rig that holds an nftables fault and a PSU brownout; the next rig sweeps both
and records what it undid. Runs inside a network namespace the test makes (root, as in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.labcfg import virtual_config, write_config
from tests.netnsfix import require_netadmin

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent('''
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    lab, results = sys.argv[1], Path(sys.argv[2])
    labp = subprocess.Popen([sys.executable, "-m", "rig.sim", lab, "--journal",
                             str(results / "truth.jsonl")], stdout=subprocess.PIPE, text=True)
    assert "ready" in labp.stdout.readline()
    holder = subprocess.Popen([sys.executable, "-c", """
    import sys, time
    from rig import open_local
    from rig.faults import Brownout, Loss
    rig = open_local(sys.argv[1], results=sys.argv[2])
    rig.power_cycle("T1"); rig.wait_signon("T1")
    with rig.fault("T1", Brownout(volts=6.0, ms=600000)), rig.fault("T1", Loss(percent=50)):
        print("held", flush=True)
        time.sleep(600)
    """, lab, str(results)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    def tables():
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        return [line.split()[-1] for line in out.splitlines() if " rig_" in line]
    before = tables()
    holder.send_signal(signal.SIGKILL); holder.wait()
    from rig import open_local
    with open_local(lab, results=results) as rig:
        swept = list(rig.swept)
        volts = rig.psus["psu1"].voltage_setpoint(1)
        rig.recorder.flush()
        n = rig.store.query("SELECT COUNT(*) AS n FROM events WHERE kind='fault_sweep' AND run_id=?",
                            (rig.run_id,))[0]["n"]
    labp.terminate(); labp.wait(10)
    print(json.dumps({"before": before, "after": tables(), "swept": swept, "volts": volts,
                      "sweep_events": n}))
''')


def test_sigkill_leftovers_are_swept_and_recorded(tmp_path):
    require_netadmin()
    from rig.core import netns

    name = f"rigk{__import__('os').getpid()}"
    netns.create(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        lab = write_config(virtual_config(tmp_path, proxies=True, time_scale=0.3),
                           tmp_path / "lab.yaml")
        (tmp_path / "driver.py").write_text(DRIVER)
        p = subprocess.run(["ip", "netns", "exec", name, sys.executable,
                            str(tmp_path / "driver.py"), str(lab), str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    finally:
        netns.delete(name)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(r["before"]) == 1 and r["before"][0].startswith("rig_p")  # the fault was real
    assert r["after"] == []                                                # and is gone
    assert r["volts"] == pytest.approx(12.0)                               # nominal again
    assert any("6 V, back to nominal 12 V" in s for s in r["swept"]), r["swept"]
    assert any(s.startswith("kernel: nft: deleted table") for s in r["swept"]), r["swept"]
    assert any(s.startswith("ledger:") and "dead pid" in s for s in r["swept"]), r["swept"]
    assert r["sweep_events"] == 1
