"""Every scenario passes on the virtual lab; a broken terminal turns a verdict to fail.

The whole rig runs inside a network namespace the test makes (kernel faults then act on that
namespace's loopback only): as root in CI, skipped elsewhere with a reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rig import open_local
from rig.control.scenario import run_scenario
from rig.faults.labctl import LabControl
from rig.faults.scenarios import load_scenarios
from tests.labcfg import virtual_config, write_config
from tests.netnsfix import require_netadmin

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def isolated_ns():
    """A fresh network namespace with only ``lo`` up; deleted afterwards."""
    from rig.core import netns

    require_netadmin()
    name = f"rigs{os.getpid()}_{len(netns.names('rigs'))}"
    netns.create(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        netns.delete(name)


def test_every_scenario_passes_on_the_virtual_lab(tmp_path, isolated_ns):
    lab = write_config(virtual_config(tmp_path, proxies=True, time_scale=0.5), tmp_path / "lab.yaml")
    p = subprocess.run(
        ["ip", "netns", "exec", isolated_ns, sys.executable, "-m", "rig.cli",
         "--results", str(tmp_path), "scenario", "run", "all", "T1", "--json", "-c", str(lab)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert p.stdout.strip(), p.stderr[-3000:]
    verdicts = json.loads(p.stdout)
    names = {v["scenario"] for v in verdicts}
    assert names == set(load_scenarios())
    bad = [(v["scenario"], v["error"], [c for c in v["checks"] if not c["ok"]])
           for v in verdicts if v["verdict"] != "pass"]
    assert not bad, bad
    assert p.returncode == 0
    for v in verdicts:  # each says what it expected and what it saw
        assert v["expected"] and v["observed"]


def test_a_terminal_that_does_not_reverse_fails_host_no_response(tmp_path):
    cfg = virtual_config(tmp_path, proxies=True, time_scale=0.5)
    sc = load_scenarios()["host-no-response"]
    with open_local(cfg, results=tmp_path) as rig:
        good = run_scenario(rig, sc, "T2")
        LabControl(cfg.sim.control_listen).quirk("T2", "no_reversal", True)
        broken = run_scenario(rig, sc, "T2")
    assert good.verdict == "pass", good.checks
    assert broken.verdict == "fail"
    failed = {c["check"] for c in broken.checks if not c["ok"]}
    assert failed == {"reversal"}, broken.checks


def test_a_terminal_that_ignores_a0_fails_mac_error(tmp_path):
    cfg = virtual_config(tmp_path, proxies=True, time_scale=0.5)
    sc = load_scenarios()["mac-error"]
    with open_local(cfg, results=tmp_path) as rig:
        LabControl(cfg.sim.control_listen).quirk("T3", "no_resignon", True)
        broken = run_scenario(rig, sc, "T3")
    assert broken.verdict == "fail"
    assert "signon_again" in {c["check"] for c in broken.checks if not c["ok"]}
