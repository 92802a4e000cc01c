"""The virtual GRBL robot: raw-socket conformance, then the real RobotDriver over socket://."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.config import LabConfig, Point, RobotConfig, load_lab
from rig.core.clock import ClockSource
from rig.core.errors import InstrumentError
from rig.drivers.robot import RobotDriver
from rig.sim.grbl import BANNER, GrblServer, Segment
from rig.timeline.events import EventKind, ListSink

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STATUS = re.compile(r"^<(Idle|Run|Hold:[01]|Alarm|Home)\|MPos:(-?\d+\.\d{3}),(-?\d+\.\d{3}),"
                    r"(-?\d+\.\d{3})\|FS:\d+,\d+>$")
REPLY = re.compile(r"^(ok|error:\d+)$")


class LoopThread:
    """An asyncio loop in a background thread (as the virtual lab runs it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, fn, *args)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Sim:
    server: GrblServer
    loop: LoopThread
    segments: list[Segment]
    grips: list[tuple[bool, tuple[float, float, float], int]]  # (closed, position, mono_ns)
    alarms: list[int]

    def stop(self) -> None:
        self.loop.run(self.server.stop())

    def ending_at(self, p: Point) -> Segment:
        return [s for s in self.segments if s.length_mm > 0 and _near(s.end, p)][-1]


def _near(a: tuple[float, float, float], p: Point, tol: float = 1e-6) -> bool:
    return math.dist(a, (p.x, p.y, p.z)) <= tol


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def make_sim(loop: LoopThread) -> Iterator[Callable[..., Sim]]:
    sims: list[Sim] = []

    def make(**kw: Any) -> Sim:
        segments: list[Segment] = []
        grips: list[tuple[bool, tuple[float, float, float], int]] = []
        alarms: list[int] = []
        server = GrblServer(on_segment=segments.append, on_alarm=alarms.append,
                            on_gripper=lambda c, pos: grips.append((c, pos, time.monotonic_ns())),
                            **kw)
        sim = Sim(server, loop, segments, grips, alarms)
        loop.run(server.start("127.0.0.1", 0))
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim()


class Raw:
    """A plain socket client of the sim."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, data: bytes | str) -> float:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)
        return time.monotonic()

    def line(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def reply(self, timeout: float = 5.0) -> tuple[list[str], str]:
        """Lines up to the next ok / error:N (status reports skipped)."""
        info = []
        while not REPLY.match(text := self.line(timeout)):
            if not text.startswith("<"):
                info.append(text)
        return info, text

    def ask(self, line: str, timeout: float = 5.0) -> str:
        self.send(line + "\n")
        return self.reply(timeout)[1]

    def status(self, pattern: re.Pattern[str] = STATUS) -> str:
        self.send("?")
        while not (text := self.line()).startswith("<"):
            pass
        assert pattern.match(text), text
        return text

    def mpos(self) -> tuple[float, float, float]:
        m = STATUS.match(self.status())
        assert m is not None
        return float(m.group(2)), float(m.group(3)), float(m.group(4))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(sim: Sim) -> Iterator[Raw]:
    client = Raw(sim.server.port)
    assert client.line() == "" and client.line() == "Grbl 1.1h ['$' for help]"
    yield client
    client.close()


# --- raw conformance -------------------------------------------------------------------------------
def test_banner_is_sent_on_connect(sim: Sim):
    with socket.create_connection(("127.0.0.1", sim.server.port), timeout=5) as s:
        data = b""
        while len(data) < len(BANNER):
            data += s.recv(64)
    assert data == BANNER.encode() == b"\r\nGrbl 1.1h ['$' for help]\r\n"


def test_one_reply_per_line_in_order(raw: Raw):
    raw.send("G21\nG90\n\n(a comment)\n$I\ng0 x0 ; lower case\nG5\n")
    replies = [raw.reply() for _ in range(7)]
    assert [r for _, r in replies] == ["ok"] * 6 + ["error:20"]
    assert replies[4][0] == ["[VER:1.1h.20190830:]", "[OPT:V,15,128]"]
    raw.send("G21\r\n")  # GRBL ends a line at \r and again at \n: two replies
    assert [raw.reply()[1], raw.reply()[1]] == ["ok", "ok"]


def test_status_report_format(raw: Raw):
    assert raw.status() == "<Idle|MPos:0.000,0.000,0.000|FS:0,0>"
    raw.ask("G1 X-10 F6000")
    time.sleep(0.02)
    assert re.match(r"<Run\|MPos:-\d\.\d{3},0\.000,0\.000\|FS:6000,0>", raw.status())
    assert raw.ask("G4 P0") == "ok"
    assert raw.status() == "<Idle|MPos:-10.000,0.000,0.000|FS:0,0>"


@pytest.mark.parametrize(("line", "error"), [
    ("G1 X10", 22), ("G1 X10 " + "Y1 " * 40, 11), ("G5", 20), ("G1 Xa", 2), ("1", 1),
    ("$Q", 3), ("G4", 28), ("P1", 36), ("G0 G1 X1", 21), ("F-5", 4), ("X1 X2", 25),
    ("G1.5 X1", 23), ("A1", 20), ("M7", 20), ("$110=NAN", 2), ("$110=1E5", 2), ("$999=1", 3)])
def test_errors(raw: Raw, line: str, error: int):
    assert raw.ask(line) == f"error:{error}"
    assert raw.status().startswith("<Idle")


def test_ok_on_planner_entry_and_g4_p0_after_the_motion(raw: Raw, sim: Sim):
    t0 = raw.send("G1 X15 F1800\n")  # 15 mm at 30 mm/s: 0.5 s
    assert raw.reply()[1] == "ok" and time.monotonic() - t0 < 0.1
    assert raw.ask("G4 P0") == "ok"
    assert 0.45 < time.monotonic() - t0 < 1.0
    assert raw.mpos() == (15.0, 0.0, 0.0)
    (seg,) = sim.segments
    assert seg.start == (0, 0, 0) and seg.end == (15, 0, 0) and seg.feed_mm_min == 1800
    assert not seg.rapid and abs((seg.t_end_ns - seg.t_start_ns) / 1e9 - 0.5) < 1e-6


def test_a_full_planner_delays_the_ok(raw: Raw):
    t0 = raw.send("".join(f"G1 X{i} F600\n" for i in range(1, 18)))  # 0.1 s each
    times = []
    for _ in range(17):
        assert raw.reply()[1] == "ok"
        times.append(time.monotonic() - t0)
    assert max(times[:15]) < 0.08  # 15 blocks fit the planner
    assert 0.08 < times[15] < 0.3 and times[16] > times[15] + 0.05
    assert raw.ask("G4 P0") == "ok" and raw.mpos() == (17.0, 0.0, 0.0)


def test_rapid_uses_the_axis_maximum_rates(raw: Raw, sim: Sim):
    assert raw.ask("G0 X30 Y40") == "ok" and raw.ask("G4 P0") == "ok"
    (seg,) = sim.segments
    assert seg.rapid and seg.feed_mm_min == pytest.approx(60000 / 0.8)  # Y limits a 3-4-5 move
    raw.send("$$\n")
    info, reply = raw.reply()
    assert reply == "ok" and {"$110=60000.000", "$111=60000.000", "$112=60000.000"} <= set(info)


def test_feed_hold_and_resume(raw: Raw, sim: Sim):
    t0 = raw.send("G1 X20 F1200\n")  # 1 s
    raw.reply()
    time.sleep(0.2)
    raw.send("!")
    held = raw.status()
    assert held.startswith("<Hold:0|") and held.endswith("|FS:0,0>")
    x = raw.mpos()[0]
    assert 3.0 < x < 6.0
    time.sleep(0.3)
    assert raw.mpos()[0] == x
    raw.send("~")
    assert raw.status().startswith("<Run|")
    assert raw.ask("G4 P0") == "ok"
    assert 1.25 < time.monotonic() - t0 < 1.8 and raw.mpos() == (20.0, 0.0, 0.0)
    full, cut, rest = sim.segments
    assert cut.start == cut.end == rest.start and cut.t_start_ns == cut.t_end_ns
    assert full.t_start_ns < cut.t_end_ns < full.t_end_ns < rest.t_end_ns and rest.end == full.end


def test_lines_wait_during_a_hold(raw: Raw):
    raw.send("!")
    raw.send("G21\n")
    with pytest.raises(TimeoutError):
        raw.line(timeout=0.3)
    raw.send("~")
    assert raw.reply()[1] == "ok"


def test_soft_reset_during_motion_alarms_then_unlock_and_home(make_sim: Callable[..., Sim]):
    sim = make_sim(homing_feed_mm_min=600)
    raw = Raw(sim.server.port)
    assert raw.line() == "" and raw.line().startswith("Grbl 1.1h")
    raw.ask("M8")
    raw.ask("G1 X50 F3000")
    time.sleep(0.1)
    raw.send(b"\x18")
    assert [raw.line() for _ in range(4)] == [
        "ALARM:3", "", "Grbl 1.1h ['$' for help]", "[MSG:'$H'|'$X' to unlock]"]
    assert sim.alarms == [3] and sim.segments[-1].length_mm == 0.0
    assert [g[0] for g in sim.grips] == [True, False]  # a reset switches the coolant off
    assert raw.status().startswith("<Alarm|")
    x = raw.mpos()[0]
    assert 4.0 < x < 8.0
    assert raw.ask("G0 X0") == "error:9"
    raw.send("$X\n")
    assert raw.reply() == (["[MSG:Caution: Unlocked]"], "ok")
    assert raw.status().startswith("<Idle|")
    t0 = raw.send("$H\n")
    time.sleep(0.1)
    assert raw.status().startswith("<Home|")
    assert raw.reply()[1] == "ok"
    assert abs(time.monotonic() - t0 - x / 10.0) < 0.2  # homing seek 600 mm/min
    assert raw.status() == "<Idle|MPos:0.000,0.000,0.000|FS:0,0>"
    raw.send(b"\x18")  # a reset while idle: banner only, no alarm
    assert [raw.line(), raw.line()] == ["", "Grbl 1.1h ['$' for help]"]
    assert raw.status().startswith("<Idle|")
    raw.close()


def test_require_homing_starts_locked(make_sim: Callable[..., Sim]):
    sim = make_sim(require_homing=True)
    raw = Raw(sim.server.port)
    assert [raw.line() for _ in range(3)] == ["", "Grbl 1.1h ['$' for help]",
                                              "[MSG:'$H'|'$X' to unlock]"]
    assert raw.status().startswith("<Alarm|") and raw.ask("G0 X1") == "error:9"
    assert raw.ask("$J=G91 X1 F100") == "error:8"
    assert raw.ask("$H") == "ok" and raw.status().startswith("<Idle|")
    raw.close()


def test_gripper_runs_after_the_motion_before_it(raw: Raw, sim: Sim):
    raw.send("G1 X10 F1200\nM8\n")  # 0.5 s, then close
    assert raw.reply()[1] == "ok" and raw.reply()[1] == "ok"
    (seg,) = sim.segments
    ((closed, pos, t),) = sim.grips
    assert closed and pos == (10.0, 0.0, 0.0) and t >= seg.t_end_ns
    assert sim.server.gripper_closed
    assert raw.ask("M8") == "ok" and len(sim.grips) == 1  # no change, no event
    assert raw.ask("M9") == "ok" and sim.grips[-1][0] is False


def test_jog_and_jog_cancel(raw: Raw, sim: Sim):
    assert raw.ask("$J=G91 X100 F6000") == "ok"
    time.sleep(0.05)
    assert raw.status(re.compile(r"^<Jog\|MPos:\d+\.\d{3},0\.000,0\.000\|FS:6000,0>$"))
    assert raw.ask("G0 X0") == "error:9"
    raw.send(b"\x85")
    time.sleep(0.05)
    x = raw.mpos()[0]
    assert 3 < x < 30 and raw.ask("G4 P0") == "ok" and raw.mpos()[0] == x


def test_rx_buffer_overflow_loses_bytes(raw: Raw):
    raw.send("G4 P0.3\n")
    time.sleep(0.05)
    raw.send("G21G90G17\n" * 20)  # 200 bytes while the dwell blocks the parser
    replies = []
    with pytest.raises(TimeoutError):
        while True:
            replies.append(raw.reply(timeout=1.0)[1])
    assert replies == ["ok"] * 13  # the dwell + the 12 lines that fit 127 bytes


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="Pp"),
               max_size=150))
def test_random_lines_never_crash_the_sim(raw: Raw, text: str, caplog: pytest.LogCaptureFixture):
    raw.send(b"\x18$X\n")  # a clean, unlocked, stopped machine (banner, alarm lines skipped)
    assert raw.reply()[1] == "ok"
    raw.send(text + "\n~")  # ~ ends any feed hold a ! in the text started
    assert REPLY.match(raw.reply(timeout=30)[1])
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]
    raw.status(re.compile(r"^<(Idle|Run|Jog|Home)\|MPos:[-\d.]+,[-\d.]+,[-\d.]+\|FS:\d+,0>$"))


# --- the real driver ---------------------------------------------------------------------------
def _lab() -> LabConfig:
    return load_lab(ROOT / "configs/labs/virtual.yaml")


def _driver(sim: Sim, sink: ListSink, lab: LabConfig | None = None, **cfg: Any) -> RobotDriver:
    lab = lab or _lab()
    rc = lab.instruments["robot1"]
    assert isinstance(rc, RobotConfig)
    rc = rc.model_copy(update={"port": f"socket://127.0.0.1:{sim.server.port}", **cfg})
    return RobotDriver("robot1", rc, sink, lab.robot)


def test_driver_card_moves_against_the_sim(make_sim: Callable[..., Sim]):
    lab, sink = _lab(), ListSink()
    sim = make_sim(max_feed_mm_min=lab.sim.robot_max_feed_mm_min)
    assert lab.robot is not None
    tc = lab.terminals["T1"].stations
    assert tc is not None
    robot = _driver(sim, sink, lab).open()
    slot = lab.robot.slot_point(1)
    with robot.session("T1") as waited:
        assert waited < 0.1
        robot.pick(1)
        assert sim.grips[-1][:2] == (True, (slot.x, slot.y, slot.z))
        stamp = robot.insert(tc)
        seg = sim.ending_at(tc.chip)
        assert -1e6 <= stamp.mono_ns - seg.t_end_ns < 100e6
        robot.withdraw(tc)
        assert _near(sim.server.position(), Point(x=tc.chip.x, y=tc.chip.y, z=lab.robot.safe_z))
        stamp = robot.swipe(tc, speed_mm_s=400)
        seg = sim.ending_at(tc.swipe_end)
        assert _near(seg.start, tc.swipe_start) and seg.feed_mm_min == 24000
        assert abs((seg.t_end_ns - seg.t_start_ns) / 1e9 - 80 / 400) < 1e-6
        assert -1e6 <= stamp.mono_ns - seg.t_end_ns < 100e6
        stamp = robot.tap(tc, dwell_ms=300)
        seg = sim.ending_at(tc.nfc)
        assert -1e6 <= stamp.mono_ns - seg.t_end_ns < 100e6
        leave = sim.segments[sim.segments.index(seg) + 1]
        assert leave.t_start_ns - seg.t_end_ns >= 300e6  # the dwell in the field
        robot.return_card(1)
        assert sim.grips[-1][:2] == (False, (slot.x, slot.y, slot.z))
    robot.close()
    robot.close()  # idempotent
    assert _near(sim.server.position(), lab.robot.park)
    moves = [e.data["move"] for e in sink.events if e.kind is EventKind.ROBOT_MOVE]
    assert moves == ["pick", "insert", "withdraw", "swipe", "tap", "return", "park"]
    presented = [(e.data["mode"], e.terminal) for e in sink.events
                 if e.kind is EventKind.CARD_PRESENTED]
    assert presented == [("chip", "T1"), ("swipe", "T1"), ("tap", "T1")]
    io = [e for e in sink.events if e.kind is EventKind.ROBOT_IO and e.data["line"] != "?"]
    assert all(e.data["reply"] == "ok" for e in io)
    assert {e.clock for e in io} == {ClockSource.KERNEL}  # socket:// lines carry kernel stamps


def test_driver_status_and_error_text(sim: Sim):
    robot = _driver(sim, ListSink()).open()
    st = robot.status()
    assert (st.state, st.mpos) == ("Idle", (0.0, 0.0, 0.0))
    with pytest.raises(InstrumentError) as err:
        robot.command("G1 X10")
    assert str(err.value) == (f"robot1 (socket://127.0.0.1:{sim.server.port}): 'G1 X10' → "
                              f"error:22 Undefined feed rate")
    assert robot.command("$I")[0].startswith("[VER:1.1h")
    robot.layout = None
    robot.close()


def test_fifo_session_lock_with_two_threads(sim: Sim):
    sink = ListSink()
    robot = _driver(sim, sink).open()
    order: list[str] = []
    waits: dict[str, float] = {}

    def use(terminal: str, x: float) -> None:
        with robot.session(terminal) as waited:
            waits[terminal] = waited
            order.append(terminal)
            robot.move_to(Point(x=x, y=0, z=0), feed_mm_min=6000)  # 0.2 s

    first = threading.Thread(target=use, args=("T1", 20.0))
    first.start()
    time.sleep(0.05)
    second = threading.Thread(target=use, args=("T2", 0.0))
    second.start()
    time.sleep(0.05)
    use("T3", 20.0)
    first.join(5), second.join(5)
    assert order == ["T1", "T2", "T3"]
    assert waits["T1"] < 0.05 and waits["T2"] > 0.1 and waits["T3"] > waits["T2"]
    assert len([e for e in sink.events if e.kind is EventKind.ROBOT_WAIT]) == 3
    robot.close()


def test_dropped_connection_mid_move_is_an_instrument_error(sim: Sim):
    robot = _driver(sim, ListSink()).open()
    threading.Timer(0.3, sim.stop).start()
    t0 = time.monotonic()
    with pytest.raises(InstrumentError, match=rf"robot1 \(socket://127.0.0.1:{sim.server.port}\)"
                                              r": 'G4 P0' failed: connection lost"):
        robot.move_to(Point(x=100, y=0, z=0), feed_mm_min=600)  # 10 s
    assert time.monotonic() - t0 < 2.0
    robot.close()  # no park on a dead connection, no hang


def test_alarm_mid_move_then_recover(sim: Sim):
    sink = ListSink()
    robot = _driver(sim, sink).open()
    sim.loop.call_later(0.2, sim.server.alarm, 1)
    with pytest.raises(InstrumentError, match="ALARM:1 Hard limit.*reset\\(\\), then unlock"):
        robot.move_to(Point(x=100, y=0, z=0), feed_mm_min=3000)
    assert robot.alarm == 1 and [e.data["code"] for e in sink.events
                                 if e.kind is EventKind.ROBOT_ALARM] == [1]
    with pytest.raises(InstrumentError, match="in alarm"):
        robot.park()
    robot.unlock()
    assert robot.status().state == "Idle"
    robot.home()
    assert robot.status().mpos == (0.0, 0.0, 0.0)
    robot.move_to(Point(x=5, y=5, z=-5))
    robot.close()
    assert _near(sim.server.position(), Point(x=0, y=0, z=0))


def test_driver_opens_a_locked_controller_and_homes(make_sim: Callable[..., Sim]):
    sim = make_sim(require_homing=True)
    sink = ListSink()
    robot = _driver(sim, sink).open()
    assert robot.alarm == 0
    assert [e.data["at"] for e in sink.events if e.kind is EventKind.ROBOT_ALARM] == ["open"]
    with pytest.raises(InstrumentError, match="in alarm"):
        robot.move_to(Point(x=1, y=1, z=0))
    robot.home()
    assert robot.alarm is None and robot.status().state == "Idle"
    robot.close()
