"""RobotDriver (GRBL 1.1) against scripted serial ports: every write expected, every expected
write made, nothing left unread (the pyserial counterpart of tests/protocol.py)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import serial

from rig.config import Point, RobotConfig, load_lab
from rig.core.clock import Stamp
from rig.core.errors import InstrumentError, LimitError, TestError
from rig.drivers.robot import FairLock, RobotDriver
from rig.drivers.robot_moves import Limits, MovePlans, Step, line_to, plan, sync
from rig.timeline.events import EventKind, ListSink

ROOT = Path(__file__).resolve().parents[2]
PORT = "socket://127.0.0.1:15030"
BANNER = b"\r\nGrbl 1.1h ['$' for help]\r\n"
IDLE = b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n"
SETTINGS = b"$110=30000.000\r\n$111=30000.000\r\n$112=30000.000\r\n$120=1000.000\r\nok\r\n"
OPEN = [(b"?", IDLE), (b"$$\n", SETTINGS), (b"G21 G90\n", b"ok\r\n")]
Exchange = tuple[bytes, "bytes | None"]


class FakeSerial:
    """A scripted pyserial-like port. Each ``(write, reply)``: the driver must write exactly
    ``write`` next; ``reply`` then becomes readable. ``initial`` is readable at open."""

    def __init__(self, script: Sequence[Exchange], initial: bytes = BANNER) -> None:
        self.script: deque[Exchange] = deque(script)
        self.rx = bytearray(initial)
        self.cv = threading.Condition()
        self.written: list[bytes] = []
        self.problems: list[str] = []
        self.closed = False

    @property
    def in_waiting(self) -> int:
        return len(self.rx)

    def read(self, size: int = 1) -> bytes:
        with self.cv:
            self.cv.wait_for(lambda: self.rx or self.closed, 0.05)
            if self.closed:
                raise serial.SerialException("port closed")
            data = bytes(self.rx[:size])
            del self.rx[:size]
            self.cv.notify_all()
            return data

    def write(self, data: bytes) -> int:
        with self.cv:
            if not self.script:
                self.problems.append(f"unexpected write {data!r}: the script is exhausted")
                raise AssertionError(self.problems[-1])
            want, reply = self.script.popleft()
            if data != want:
                self.problems.append(f"wrote {data!r}, the script expected {want!r}")
                raise AssertionError(self.problems[-1])
            self.written.append(data)
            self.push(reply or b"")
            return len(data)

    def push(self, data: bytes) -> None:
        with self.cv:
            self.rx.extend(data)
            self.cv.notify_all()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def assert_done(self) -> None:
        with self.cv:
            self.cv.wait_for(lambda: not self.rx or self.closed, 1.0)
            assert not self.problems, self.problems
            assert not self.script, f"expected writes never happened: {[w for w, _ in self.script]}"
            assert not self.rx, f"left unread: {bytes(self.rx)!r}"


@contextmanager
def expected_protocol(script: Sequence[Exchange], *, layout: bool = False, timeout_s: float = 2.0,
                      sink: ListSink | None = None) -> Iterator[tuple[RobotDriver, FakeSerial]]:
    """An opened RobotDriver on a FakeSerial running ``OPEN`` + ``script`` (closed at the end)."""
    fake = FakeSerial([*OPEN, *script])
    lab = load_lab(ROOT / "configs/labs/virtual.yaml")
    robot = RobotDriver("robot1", RobotConfig(port=PORT, feed_mm_min=12000, timeout_s=timeout_s),
                        sink or ListSink(), lab.robot if layout else None, opener=lambda: fake)
    robot.open()
    yield robot, fake
    robot.close()
    fake.assert_done()


def stations():
    return load_lab(ROOT / "configs/labs/virtual.yaml").terminals["T1"].stations


def test_open_handshake_reads_settings_and_sets_modes():
    sink = ListSink()
    with expected_protocol([], sink=sink) as (robot, fake):
        assert robot.settings[110] == 30000.0 and robot.alarm is None
    io = [(e.data["line"], e.data["reply"]) for e in sink.events if e.kind is EventKind.ROBOT_IO]
    assert io == [("?", IDLE.decode().strip()), ("$$", "ok"), ("G21 G90", "ok")]


def test_open_without_banner_asks_then_soft_resets():
    fake = FakeSerial([(b"?", None), (b"?", None), (b"?", None), (b"\x18", BANNER), *OPEN],
                      initial=b"")
    robot = RobotDriver("robot1", RobotConfig(port=PORT), ListSink(), opener=lambda: fake).open()
    fake.assert_done()
    robot.close()


def test_open_in_alarm_reports_it_and_refuses_motion():
    sink = ListSink()
    fake = FakeSerial([(b"?", b"<Alarm|MPos:1.000,2.000,3.000|FS:0,0>\r\n"), (b"$$\n", SETTINGS),
                       (b"$X\n", b"[MSG:Caution: Unlocked]\r\nok\r\n"), (b"G21 G90\n", b"ok\r\n")],
                      initial=BANNER + b"[MSG:'$H'|'$X' to unlock]\r\n")
    robot = RobotDriver("robot1", RobotConfig(port=PORT), sink, opener=lambda: fake).open()
    assert robot.alarm == 0
    assert [e.data["at"] for e in sink.events if e.kind is EventKind.ROBOT_ALARM] == ["open"]
    with pytest.raises(InstrumentError, match=r"robot1 \(socket://127.0.0.1:15030\): in alarm.*"
                                              r"nothing was sent.*unlock\(\)"):
        robot.move_to(Point(x=1, y=2, z=0))
    robot.unlock()
    assert robot.alarm is None
    fake.assert_done()
    robot.close()


def test_move_and_sync_stream_then_return_the_sync_stamp():
    sink = ListSink()
    script = [(b"G1 X10 Y0 Z0 F600\n", b"ok\r\n"), (b"G4 P0\n", b"ok\r\n"), (b"G4 P0\n", b"ok\r\n")]
    with expected_protocol(script, sink=sink) as (robot, _):
        stamp = robot.move_to(Point(x=10, y=0, z=0), feed_mm_min=600)
        assert isinstance(stamp, Stamp)
        assert isinstance(robot.sync(), Stamp)
    io = [e for e in sink.events if e.kind is EventKind.ROBOT_IO and e.data["line"] == "G4 P0"]
    assert io[0].mono_ns == stamp.mono_ns and io[0].data["sent_mono_ns"] <= stamp.mono_ns
    moves = [e.data["move"] for e in sink.events if e.kind is EventKind.ROBOT_MOVE]
    assert moves == ["move_to", "sync"]


def test_error_22_names_the_line_and_grbls_text():
    with expected_protocol([(b"G1 X10\n", b"error:22\r\n")]) as (robot, _):
        with pytest.raises(InstrumentError) as err:
            robot.command("G1 X10")
    assert str(err.value) == ("robot1 (socket://127.0.0.1:15030): 'G1 X10' → error:22 "
                              "Undefined feed rate")


def test_hard_limit_alarm_mid_move_fails_the_move_and_locks_until_reset_and_unlock():
    sink = ListSink()
    script = [(b"G1 X50 Y0 Z0 F6000\n", b"ok\r\n"),
              (b"G4 P0\n", b"ALARM:1\r\n[MSG:Reset to continue]\r\n"),
              (b"\x18", BANNER + b"[MSG:'$H'|'$X' to unlock]\r\n"),
              (b"?", b"<Alarm|MPos:20.000,0.000,0.000|FS:0,0>\r\n"),
              (b"$X\n", b"[MSG:Caution: Unlocked]\r\nok\r\n"), (b"G21 G90\n", b"ok\r\n")]
    with expected_protocol(script, sink=sink) as (robot, _):
        with pytest.raises(InstrumentError, match=r"'G4 P0' failed: ALARM:1 Hard limit; the robot "
                                                  r"stopped; call reset\(\), then unlock\(\)"):
            robot.move_to(Point(x=50, y=0, z=0), feed_mm_min=6000)
        with pytest.raises(InstrumentError, match="in alarm"):
            robot.move_to(Point(x=0, y=0, z=0))
        robot.unlock()
    alarms = [e.data for e in sink.events if e.kind is EventKind.ROBOT_ALARM]
    assert alarms[0]["code"] == 1 and alarms[0]["pending"] == ["G4 P0"]


def test_reset_alarm_3_then_unlock():
    script = [(b"G1 X50 Y0 Z0 F6000\n", b"ok\r\n"),
              (b"G4 P0\n", b"ALARM:3\r\n" + BANNER + b"[MSG:'$H'|'$X' to unlock]\r\n"),
              (b"$X\n", b"[MSG:Caution: Unlocked]\r\nok\r\n"), (b"G21 G90\n", b"ok\r\n")]
    with expected_protocol(script) as (robot, _):
        with pytest.raises(InstrumentError, match="ALARM:3 Reset while in motion.*unlock"):
            robot.move_to(Point(x=50, y=0, z=0), feed_mm_min=6000)
        assert robot.alarm == 3
        robot.unlock()


def test_garbage_is_an_instrument_error_naming_robot_and_port():
    sink = ListSink()
    with expected_protocol([(b"$I\n", b"\x00\xffw@t?\r\n")], sink=sink) as (robot, _):
        with pytest.raises(InstrumentError, match=r"^robot1 \(socket://127.0.0.1:15030\): '\$I' "
                                                  r"failed: unexpected reply '\\x00"):
            robot.command("$I")
    assert any(e.kind is EventKind.ERROR for e in sink.events)


def test_unexpected_banner_fails_the_pending_line():
    with expected_protocol([(b"G4 P0\n", BANNER)]) as (robot, _):
        with pytest.raises(InstrumentError, match="'G4 P0' failed: the controller reset"):
            robot.sync()


def test_dropped_connection_fails_the_pending_line():
    class Dropping(FakeSerial):
        def read(self, size: int = 1) -> bytes:
            if not self.rx and self.written and self.written[-1] == b"G4 P0\n":
                raise serial.SerialException("socket disconnected")
            return super().read(size)

    fake = Dropping([*OPEN, (b"G4 P0\n", None)])
    robot = RobotDriver("robot1", RobotConfig(port=PORT), ListSink(), opener=lambda: fake).open()
    with pytest.raises(InstrumentError, match=r"robot1 \(socket://127.0.0.1:15030\): 'G4 P0' "
                                              r"failed: connection lost \(socket disconnected\)"):
        robot.sync()
    fake.assert_done()
    robot.close()


def test_no_reply_times_out_instead_of_hanging():
    with expected_protocol([(b"$I\n", None)], timeout_s=0.3) as (robot, _):
        t0 = time.monotonic()
        with pytest.raises(InstrumentError, match=r"no reply to '\$I' within 0.3 s"):
            robot.command("$I")
        assert time.monotonic() - t0 < 1.0


class CountingPort(FakeSerial):
    """Acknowledges each line a little later and checks GRBL's RX buffer never overflows."""

    def __init__(self) -> None:
        super().__init__([])
        self.unacked: deque[int] = deque()
        self.peak = 0
        self.lines = 0
        threading.Thread(target=self._ack, daemon=True).start()

    def write(self, data: bytes) -> int:
        with self.cv:
            if data == b"?":
                self.push(IDLE)
                return 1
            self.unacked.append(len(data))
            self.lines += 1
            self.peak = max(self.peak, sum(self.unacked))
            if sum(self.unacked) > 127:
                self.problems.append(f"{sum(self.unacked)} bytes unacknowledged")
            return len(data)

    def _ack(self) -> None:
        while not self.closed:
            time.sleep(0.002)
            with self.cv:
                if self.unacked:
                    self.unacked.popleft()
                    self.push(SETTINGS if self.lines == 1 else b"ok\r\n")


def test_character_counting_keeps_unacknowledged_bytes_within_127():
    port = CountingPort()
    robot = RobotDriver("robot1", RobotConfig(port=PORT), ListSink(), opener=lambda: port).open()
    steps = [line_to(6000, x=float(i % 7), y=1.5) for i in range(29)] + [sync(mark=True)]
    robot._run("stream", steps)
    assert port.lines == 2 + 30
    assert 100 < port.peak <= 127  # really streamed, never overflowed
    port.assert_done()
    robot.close()


def test_speed_limit_is_refused_before_anything_is_sent():
    with expected_protocol([], layout=True) as (robot, _):
        with pytest.raises(LimitError, match=r"F600000'.*outside 0..30000 mm/min.*nothing was sent"):
            robot.swipe(stations(), speed_mm_s=10000)
        with pytest.raises(LimitError, match="nothing was sent"):
            robot.move_to(Point(x=1, y=1, z=1), feed_mm_min=1e6)
        with pytest.raises(LimitError, match="nothing was sent"):
            robot._run("bad", [Step("G1 X1 F0", {"x": 1.0}, 0.0)])
        with pytest.raises(TestError, match="no magazine slot 99"):
            robot.pick(99)
        robot.layout = None  # close() would park; this test sends nothing more


def test_moves_are_planned_as_data_checked_and_timed_without_a_driver():
    layout = load_lab(ROOT / "configs/labs/virtual.yaml").robot
    assert layout is not None
    steps = MovePlans(layout, 12000, "robot1").swipe(stations(), speed_mm_s=100)
    limits = Limits.from_settings({110: 30000, 111: 30000, 112: 30000, 120: 1000, 121: 1000,
                                   122: 1000}, 12000)
    p = plan(steps, (0.0, 0.0, 0.0), limits, "robot1")
    assert [s.line for s in p.steps] == ["G1 Z0 F12000", "G1 X160 Y150 F12000", "G1 Z-10 F12000",
                                         "G1 X240 Y150 Z-10 F6000", "G4 P0", "G1 Z0 F12000",
                                         "G4 P0"]
    assert p.mark == 4 and p.end == (240.0, 150.0, 0.0)  # the sync right after the swipe
    travel = (math.hypot(160, 150) + 10 + 10) / 200.0  # mm / (mm/s) at 12000 mm/min
    assert p.motion_s == pytest.approx(travel + 80 / 100.0)
    assert p.seconds[3] == pytest.approx(80 / 100.0 + 100 / 1000)  # + rate / acceleration
    slow = Limits.from_settings({110: 3000, 111: 3000, 112: 30000}, 12000)
    with pytest.raises(LimitError, match=r"robot1: 'G1 X160 Y150 F12000': feed 12000 mm/min is "
                                         r"outside 0..4112.\d+ mm/min"):  # 3000 / cos(43°)
        plan(steps, (0.0, 0.0, -5.0), slow, "robot1")  # up along z alone is fine
    with pytest.raises(LimitError, match="robot1: tap dwell -1 ms is not valid"):
        MovePlans(layout, 12000, "robot1").tap(stations(), dwell_ms=-1)


def test_card_moves_send_the_documented_lines():
    ok = b"ok\r\n"
    st = stations()
    tap = [b"G1 Z0 F12000\n", b"G1 X200 Y60 F12000\n", b"G1 Z-2 F12000\n", b"G4 P0\n",
           b"G4 P0.5\n", b"G1 Z0 F12000\n", b"G4 P0\n"]
    pick = [b"G1 Z0 F12000\n", b"G1 X40 Y20 F12000\n", b"G1 Z-15 F12000\n", b"M8\n",
            b"G4 P0.2\n", b"G1 Z0 F12000\n", b"G4 P0\n"]
    park = [b"G1 Z0 F12000\n", b"G1 X0 Y0 F12000\n", b"G1 Z0 F12000\n", b"G4 P0\n"]
    sink = ListSink()
    with expected_protocol([(w, ok) for w in pick + tap + park], layout=True, sink=sink) as (robot, _):
        with robot.session("T1") as waited:
            assert waited >= 0
            robot.pick(2)
            stamp = robot.tap(st, dwell_ms=500)
    presented = [e for e in sink.events if e.kind is EventKind.CARD_PRESENTED]
    assert [(e.terminal, e.data["mode"], e.mono_ns) for e in presented] == [
        ("T1", "tap", stamp.mono_ns)]
    moves = [(e.data["move"], e.terminal) for e in sink.events if e.kind is EventKind.ROBOT_MOVE]
    assert moves == [("pick", "T1"), ("tap", "T1"), ("park", None)]  # close() parks


def test_fair_lock_serves_in_arrival_order():
    lock = FairLock()
    order: list[str] = []
    lock.acquire("T0", None)
    threads = []
    for name in ("T1", "T2", "T3"):
        t = threading.Thread(target=lambda n=name: (lock.acquire(n, 5), order.append(n),
                                                    lock.release()))
        t.start()
        threads.append(t)
        time.sleep(0.05)
    lock.release()
    for t in threads:
        t.join(2)
    assert order == ["T1", "T2", "T3"]
    lock.acquire("T0", None)
    with pytest.raises(TestError, match="do not nest"):
        lock.acquire("T0", None)
    waiter: list[BaseException] = []
    t = threading.Thread(target=_catch(lambda: lock.acquire("T9", 0.1), waiter))
    t.start()
    t.join(2)
    assert isinstance(waiter[0], TestError) and "still waiting" in str(waiter[0])
    lock.release()


def _catch(fn: Callable[[], object], into: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            into.append(e)
    return run
