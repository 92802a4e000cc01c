"""Power through a real pdudaemon: the rig asks pdudaemon's HTTP API, pdudaemon's own
``localcmdline`` driver switches a virtual terminal's power, the terminal boots and signs on.

The virtual lab's wiring for this test: pdudaemon's PDU ``vpdu`` port n is the virtual PSU's
output n (its ``cmd_on`` / ``cmd_off`` send the SCPI line that switches it, through socat), so
the lab runs with T1 on PSU channel 1 while the rig's config says T1 is on ``vpdu`` port 1: the
rig reaches T1's power only through pdudaemon. pdudaemon is started from its Python package
(the ``dev`` extra) on a free loopback port.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig import load_run, open_local
from rig.config import LabConfig, PduConfig
from rig.core.errors import InstrumentError
from rig.drivers.pdu import PduDriver
from rig.sim.lab import VirtualLab
from rig.timeline.events import EventKind, ListSink
from tests.labcfg import free_port, virtual_config
from tests.truth import read

pytestmark = pytest.mark.integration

HOSTNAME = "vpdu"


def _need(what: str, ok: bool, how: str) -> None:
    """A missing prerequisite fails under CI and skips (saying how to get it) elsewhere."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing: {how}")
    pytest.skip(f"{what} is missing: {how}")


class Pdudaemon:
    """``pdudaemon --listener http`` as a process the test owns, on a free loopback port."""

    def __init__(self, tmp: Path, psu_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        scpi = "printf 'INST:NSEL %s;:VOLT 12;:CURR 1.5;:OUTP {state};*OPC?\\n' | " \
               f"socat -t 5 - TCP:127.0.0.1:{psu_port}"
        conf = {"daemon": {"hostname": "127.0.0.1", "port": self.port, "listener": "http",
                           "logging_level": "DEBUG"},
                "pdus": {HOSTNAME: {"driver": "localcmdline", "retries": 1, "retrydelay": 1,
                                    "cmd_on": scpi.format(state="ON"),
                                    "cmd_off": scpi.format(state="OFF")}}}
        self.conf = tmp / "pdudaemon.conf"
        self.conf.write_text(json.dumps(conf))
        self.log = tmp / "pdudaemon.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pdudaemon import main; sys.exit(main())",
             "--conf", str(self.conf), "--logfile", str(self.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"pdudaemon exited with {self.proc.returncode}: {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pdudaemon not listening on {self.url} after 30 s")

    def config(self) -> PduConfig:
        return PduConfig(url=self.url, hostname=HOSTNAME, ports=4, timeout_s=10.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def sim_cfg(tmp_path: Path) -> LabConfig:
    _need("pdudaemon", importlib.util.find_spec("pdudaemon") is not None,
          ".venv/bin/pip install -e '.[dev]' (its systemd-python needs libsystemd-dev: "
          "scripts/install-system.sh)")
    _need("socat", shutil.which("socat") is not None, "scripts/install-system.sh installs it")
    cfg = virtual_config(tmp_path, time_scale=0.05)
    assert cfg.sim.psu_model == "generic" and cfg.terminals["T1"].power.channel == 1
    return cfg


@pytest.fixture
def pdud(tmp_path: Path, sim_cfg: LabConfig) -> Iterator[Pdudaemon]:
    d = Pdudaemon(tmp_path, int(sim_cfg.sim.psu_listen.rsplit(":", 1)[1]))
    yield d
    d.stop()


def _on_pdu(sim: LabConfig, pdud: Pdudaemon) -> LabConfig:
    """The rig's view of the lab: T1 on pdudaemon's vpdu port 1 instead of PSU channel 1."""
    raw = sim.model_dump(mode="json")
    raw["pdus"] = {"vpdu": pdud.config().model_dump(mode="json")}
    raw["terminals"]["T1"]["power"] = {"pdu": "vpdu", "port": 1, "off_s": 0.05}
    return LabConfig.model_validate(raw)


def test_pdudaemon_power_cycles_a_virtual_terminal_and_it_signs_on(tmp_path, sim_cfg, pdud):
    cfg = _on_pdu(sim_cfg, pdud)
    with VirtualLab(sim_cfg) as lab:
        with open_local(cfg, results=tmp_path / "results", start_lab=False) as rig:
            for _ in range(2):
                rig.power_cycle("T1", off_s=0.05)
                s = rig.wait_signon("T1", timeout_s=30)
                assert s.ok, s
                assert 0 < s.boot_s < s.signon_req_s < s.ready_s
            assert lab.state("T1") == "READY"
            run_id, db = rig.run_id, rig.store.path
        # the rig closed: its safe state (off) reached T1 through pdudaemon too
        assert lab.psu.effective(1) == (False, 0.0)
    events = load_run(db, run_id).events
    power = events[events["kind"].isin([EventKind.POWER_ON.value, EventKind.POWER_OFF.value])
                   & (events["terminal"] == "T1")]
    assert list(power["kind"]) == ["power_off", "power_on"] * 2 + ["power_off"]  # + safe state
    assert (power["source"] == "vpdu").all() and (power["clock"] == "thread").all()
    for d in power["data"]:
        assert d["edge"] == "pdudaemon" and d["port"] == 1
        assert 0 <= d["tx_ns"] <= d["ack_ns"] and d["bracket_ns"] == d["ack_ns"] - d["tx_ns"]
    io = events[events["kind"] == EventKind.PDU_IO.value]
    assert len(io) >= 4 and all(d["status"] == 200 for d in io["data"])
    # the truth: the virtual PSU switched T1 inside each bracket pdudaemon's answer closed
    truth = [e for e in read(sim_cfg.sim.truth_journal) if e.get("terminal") == "T1"
             and e["what"] in ("power_on", "power_off")]
    ons = [e["mono_ns"] for e in truth if e["what"] == "power_on"]
    rig_ons = [d for k, d in zip(power["kind"], power["data"], strict=True) if k == "power_on"]
    assert len(ons) == len(rig_ons) == 2
    for t, d in zip(ons, rig_ons, strict=True):
        assert d["tx_ns"] <= t <= d["ack_ns"], (d, t)


def test_pdudaemon_refuses_an_unknown_pdu_with_a_clear_error(pdud):
    sink = ListSink()
    cfg = pdud.config().model_copy(update={"hostname": "rack-missing"})
    with PduDriver("pdu9", cfg, sink) as d, pytest.raises(InstrumentError) as err:
        d.switch(1, True)
    msg = str(err.value)
    assert f"pdu9 (rack-missing via pdudaemon {pdud.url}): on port 1 refused: HTTP 500" in msg
    assert "'rack-missing' in pdudaemon's pdus:" in msg


def test_no_pdudaemon_listening_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(InstrumentError, match=rf"pdu1 \(rack1 via pdudaemon {url}\): cannot "
                       r"reach pdudaemon: connection failed"):
        PduDriver("pdu1", PduConfig(url=url, hostname="rack1"), ListSink()).open()
