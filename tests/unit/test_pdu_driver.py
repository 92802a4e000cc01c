"""PduDriver against a scripted pdudaemon HTTP transcript (no sockets); the live test against a
real pdudaemon process is tests/integration/test_pdudaemon.py."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import httpx
import pytest

from rig.config import LabConfig, PduConfig
from rig.control.hardware import Hardware
from rig.core.clock import ClockSource
from rig.core.errors import InstrumentError, TestError
from rig.drivers.pdu import PduDriver
from rig.faults import spec
from rig.faults.power import PowerPath, PowerTransient
from rig.timeline.events import EventKind, ListSink

URL = "http://127.0.0.1:16421"
OK = (200, "OK - accepted request\n")
INVALID = (500, "Invalid request\n")
PROBE = ("/power/control/on?hostname=rack1", INVALID)

Reply = tuple[int, str] | Exception


class Pdudaemon:
    """A transcript of (path with query, reply) that the driver's requests must follow."""

    def __init__(self, script: Sequence[tuple[str, Reply]]) -> None:
        self.script = deque(script)
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode()
        self.seen.append(target)
        assert self.script, f"unexpected request {target}"
        want, reply = self.script.popleft()
        assert target == want, f"request {target}, expected {want}"
        assert request.method == "GET"
        if isinstance(reply, Exception):
            raise reply
        return httpx.Response(reply[0], text=reply[1])

    def done(self) -> None:
        assert not self.script, f"requests never made: {[p for p, _ in self.script]}"


def _driver(script, sink=None, **cfg) -> tuple[PduDriver, Pdudaemon]:
    daemon = Pdudaemon(script)
    pcfg = PduConfig(url=URL, hostname="rack1", **{"ports": 8, "timeout_s": 2.0, **cfg})
    return PduDriver("pdu1", pcfg, sink or ListSink(),
                     transport=httpx.MockTransport(daemon)), daemon


def test_switch_is_one_get_bracketed_by_the_request_and_its_answer():
    sink = ListSink()
    d, daemon = _driver([PROBE, ("/power/control/on?hostname=rack1&port=3", OK),
                         ("/power/control/off?hostname=rack1&port=3", OK)], sink)
    with d:
        on = d.switch(3, True)
        off = d.switch(3, False)
    daemon.done()
    for edge in (on, off):
        assert edge.clock is ClockSource.THREAD
        assert edge.tx_ns <= edge.ack_ns == edge.stamp.mono_ns
        assert edge.bracket_ns == edge.ack_ns - edge.tx_ns >= 0
    assert on.ack_ns <= off.tx_ns
    io = [e for e in sink.events if e.kind is EventKind.PDU_IO]
    assert [(e.data["request"], e.data["port"], e.data["status"]) for e in io] == [
        ("on", 3, 200), ("off", 3, 200)]
    assert io[0].mono_ns == on.stamp.mono_ns and io[0].source == "pdu1"
    assert io[0].data["hostname"] == "rack1" and io[0].data["reply"] == "OK - accepted request"
    assert d.commanded(3) is False and d.commanded(4) is None


def test_a_refused_request_names_the_pdu_port_and_answer():
    sink = ListSink()
    d, _ = _driver([PROBE, ("/power/control/on?hostname=rack1&port=5", INVALID)], sink)
    d.open()
    with pytest.raises(InstrumentError) as err:
        d.switch(5, True)
    msg = str(err.value)
    assert msg.startswith(f"pdu1 (rack1 via pdudaemon {URL}): on port 5 refused: HTTP 500 "
                          "'Invalid request'")
    assert "'rack1' in pdudaemon's pdus:" in msg
    assert d.commanded(5) is None
    (io,) = [e for e in sink.events if e.kind is EventKind.PDU_IO]
    assert io.data["status"] == 500


def test_a_connection_refused_once_is_retried():
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    d, daemon = _driver([PROBE, ("/power/control/on?hostname=rack1&port=1", refused),
                         ("/power/control/on?hostname=rack1&port=1", OK)])
    d.open()
    d.switch(1, True)
    daemon.done()


def test_twice_refused_raises_with_a_hint():
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    d, _ = _driver([PROBE, ("/power/control/on?hostname=rack1&port=1", refused),
                    ("/power/control/on?hostname=rack1&port=1", refused)])
    d.open()
    with pytest.raises(InstrumentError, match=r"on port 1: connection failed .* is pdudaemon "
                       r"running with its HTTP listener on http://127.0.0.1:16421"):
        d.switch(1, True)


def test_a_timeout_is_not_retried():
    """The job may still be queued in pdudaemon: sending it again would run it twice."""
    sink = ListSink()
    d, daemon = _driver([PROBE, ("/power/control/off?hostname=rack1&port=2",
                                 httpx.ReadTimeout("timed out"))], sink)
    d.open()
    with pytest.raises(InstrumentError, match="off port 2: no answer within the timeout"):
        d.switch(2, False)
    daemon.done()
    (io,) = [e for e in sink.events if e.kind is EventKind.PDU_IO]
    assert "no answer" in str(io.data["error"])


@pytest.mark.parametrize("port", [0, 9, -1, True, "3"])
def test_a_port_outside_the_pdu_sends_nothing(port):
    d, daemon = _driver([PROBE])
    d.open()
    with pytest.raises(TestError, match=r"pdu1: no port .* \(it has 1\.\.8\)"):
        d.switch(port, True)  # type: ignore[arg-type]
    assert daemon.seen == ["/power/control/on?hostname=rack1"]


@pytest.mark.parametrize("reply,problem", [
    ((404, "Not Found"), "got HTTP 404 'Not Found', not pdudaemon's '500 Invalid request'"),
    (httpx.RemoteProtocolError("illegal status line"), "not an HTTP answer"),
    (httpx.ConnectError("[Errno 111] Connection refused"), "cannot reach pdudaemon"),
])
def test_open_checks_that_pdudaemon_answers(reply, problem):
    d, _ = _driver([("/power/control/on?hostname=rack1", reply)])
    with pytest.raises(InstrumentError, match=problem):
        d.open()


# --- the rest of the rig with a PDU-powered terminal ----------------------------------------

def _lab() -> LabConfig:
    term = {"model": "m", "terminal_id": "10000001", "merchant_id": "898310048990001",
            "tmk": "11111111111111112222222222222222", "host_path": "127.0.0.1:5800",
            "power": {"pdu": "pdu1", "port": 3, "off_s": 0.1}}
    return LabConfig.model_validate({
        "name": "t", "models": {"m": {"voltage_max": 12.6, "current_max": 2, "nominal_voltage": 12}},
        "pdus": {"pdu1": {"url": URL, "hostname": "rack1", "ports": 8}}, "terminals": {"T1": term}})


def test_hardware_records_coarse_power_edges_of_a_pdu():
    sink = ListSink()
    d, _ = _driver([("/power/control/on?hostname=rack1&port=3", OK)], sink)
    hw = Hardware(_lab(), store=None, recorder=sink)  # type: ignore[arg-type]
    hw.pdus["pdu1"] = d
    stamp = hw.switch("T1", True)
    (ev,) = [e for e in sink.events if e.kind is EventKind.POWER_ON]
    assert (ev.mono_ns, ev.source, ev.terminal, ev.clock) == (stamp.mono_ns, "pdu1", "T1", "thread")
    assert ev.data["edge"] == "pdudaemon" and ev.data["port"] == 3
    assert ev.data["tx_ns"] <= ev.data["ack_ns"] == ev.mono_ns
    assert ev.data["bracket_ns"] == ev.data["ack_ns"] - ev.data["tx_ns"]
    path = hw.power_path("T1")
    assert (path.kind, path.driver, path.channel) == ("pdu", d, 3)


@pytest.mark.parametrize("fault", [spec.Brownout(volts=6.0, ms=100),
                                   spec.SlowRamp(from_volts=6.0, s=1.0)])
def test_a_pdu_outlet_refuses_voltage_faults_before_anything_changes(fault):
    d, daemon = _driver([])
    with pytest.raises(TestError, match=r"T1: a PDU outlet \(pdudaemon\) can only switch; "
                       rf"{fault.name} needs a PSU \(use PowerDropout\)"):
        PowerTransient("T1", PowerPath("pdu", d, 3), fault)
    assert daemon.seen == []


def test_a_dropout_through_a_pdu_switches_off_then_on():
    d, daemon = _driver([("/power/control/off?hostname=rack1&port=3", OK),
                         ("/power/control/on?hostname=rack1&port=3", OK)])
    tr = PowerTransient("T1", PowerPath("pdu", d, 3), spec.PowerDropout(ms=20))
    done: list[bool] = []
    tr.start()
    tr.when_done(lambda: done.append(True))
    tr.stop()
    daemon.done()
    assert done == [True] and d.commanded(3) is True
