"""RelayDriver frames (LCUS protocol) over pyserial's loop:// and a failing fake port."""

from __future__ import annotations

import time

import pytest
import serial

from rig.config import RelayConfig
from rig.core.clock import ClockSource, Stamp
from rig.core.errors import InstrumentError, TestError
from rig.drivers.power_edge import PowerEdge
from rig.drivers.relay import RelayDriver, frame
from rig.timeline.events import EventKind, ListSink


@pytest.mark.parametrize(("ch", "on", "wire"), [
    (1, True, "a0 01 01 a2"), (1, False, "a0 01 00 a1"), (2, True, "a0 02 01 a3"),
    (8, False, "a0 08 00 a8"), (16, True, "a0 10 01 b1"),
])
def test_frames(ch, on, wire):
    assert frame(ch, on) == bytes.fromhex(wire)


def test_set_over_loop_writes_the_frame_and_records_the_stamp():
    port = serial.serial_for_url("loop://", timeout=1.0)
    sink = ListSink()
    relay = RelayDriver("relay1", RelayConfig(port="loop://", channels=4), sink,
                        opener=lambda: port).open()
    stamp = relay.set(1, True)
    relay.set(3, False)
    assert port.read(8) == bytes.fromhex("a00101a2 a00300a3")
    assert isinstance(stamp, Stamp)
    events = [e for e in sink.events if e.kind is EventKind.RELAY_IO]
    assert [(e.data["channel"], e.data["on"], e.data["frame"]) for e in events] == [
        (1, True, "a00101a2"), (3, False, "a00300a3")]
    assert (events[0].mono_ns, events[0].wall_ns) == (stamp.mono_ns, stamp.wall_ns)
    assert relay.commanded(1) is True and relay.commanded(3) is False
    assert relay.commanded(2) is None  # never commanded; the board cannot be asked
    relay.close()


class _Recording:
    """A port that notes when each write began and each flush returned (monotonic ns)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def write(self, data: bytes) -> int:
        self.log.append(("write", time.monotonic_ns()))
        return len(data)

    def flush(self) -> None:
        self.log.append(("flushed", time.monotonic_ns()))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("on", [True, False])
def test_switch_brackets_write_to_flush_and_reports_the_flush(on):
    port = _Recording()
    sink = ListSink()
    relay = RelayDriver("relay1", RelayConfig(port="/dev/ttyUSB0", channels=4), sink,
                        opener=lambda: port).open()
    edge = relay.switch(2, on)
    assert isinstance(edge, PowerEdge)
    (_, wrote), (_, flushed) = port.log
    assert edge.tx_ns <= wrote <= flushed <= edge.ack_ns == edge.stamp.mono_ns
    assert edge.bracket_ns == edge.ack_ns - edge.tx_ns >= 0
    assert edge.clock is ClockSource.THREAD  # the board never answers; nothing to kernel-stamp
    (event,) = [e for e in sink.events if e.kind is EventKind.RELAY_IO]
    assert (event.mono_ns, event.wall_ns) == (edge.stamp.mono_ns, edge.stamp.wall_ns)
    assert (event.data["channel"], event.data["on"]) == (2, on) and relay.commanded(2) is on


def test_switch_after_a_failed_write_brackets_the_retry():
    sink = ListSink()
    ports = iter([_FailingPort(fail=1), port := _FailingPort(fail=0)])
    relay = RelayDriver("relay1", RelayConfig(port="/dev/ttyUSB0"), sink, opener=lambda: next(ports))
    edge = relay.switch(1, True)
    failed = next(e for e in sink.events if "error" in e.data)
    assert failed.mono_ns < edge.tx_ns <= edge.ack_ns
    assert port.written == [bytes.fromhex("a00101a2")]


def test_default_opener_uses_the_url():
    with RelayDriver("relay1", RelayConfig(port="loop://"), ListSink()) as relay:
        relay.set(2, True)


@pytest.mark.parametrize("ch", [0, 5, True])
def test_bad_channel_sends_nothing(ch):
    port = serial.serial_for_url("loop://", timeout=0.1)
    relay = RelayDriver("relay1", RelayConfig(port="loop://", channels=4), ListSink(),
                        opener=lambda: port)
    with pytest.raises(TestError, match="relay1: no relay"):
        relay.set(ch, True)
    assert port.read(4) == b""


class _FailingPort:
    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.written: list[bytes] = []

    def write(self, data: bytes) -> int:
        if self.fail:
            self.fail -= 1
            raise serial.SerialException("device reports readiness to read but returned no data")
        self.written.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_write_failure_reopens_once_and_retries():
    port = _FailingPort(fail=1)
    opened = []
    relay = RelayDriver("relay1", RelayConfig(port="/dev/ttyUSB0"), ListSink(),
                        opener=lambda: opened.append(1) or port)
    relay.set(1, True)
    assert port.written == [bytes.fromhex("a00101a2")]
    assert len(opened) == 2


def test_write_failing_twice_names_the_port():
    relay = RelayDriver("relay1", RelayConfig(port="/dev/ttyUSB0"), ListSink(),
                        opener=lambda: _FailingPort(fail=1))
    with pytest.raises(InstrumentError, match=r"relay1 \(/dev/ttyUSB0\): cannot send a0 01 01 a2"):
        relay.set(1, True)


def test_missing_device_is_an_instrument_error():
    relay = RelayDriver("relay1", RelayConfig(port="/dev/does-not-exist-rig"), ListSink())
    with pytest.raises(InstrumentError, match=r"relay1 \(/dev/does-not-exist-rig\): cannot open"):
        relay.open()
