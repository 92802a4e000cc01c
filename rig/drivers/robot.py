"""GRBL 1.1 card-robot driver over pyserial (device paths, ``socket://`` for the virtual lab).

A reader thread owns the port's input, stamps each line and matches each ``ok`` / ``error:N``
to the oldest outstanding line; lines are streamed with GRBL's character counting (all
unacknowledged bytes fit its 127-byte RX buffer). ``ALARM:N`` fails everything outstanding and
locks the driver until ``unlock()`` / ``home()``; garbage or a dropped connection fails it and
the next call reconnects. Every wait is bounded (``cfg.timeout_s`` + the queued motion's time).

Card moves are planned as data by :mod:`rig.drivers.robot_moves` (steps, feed checks against
$110-$112, per-step seconds); the driver streams a plan, waits for every ``ok``, records
``ROBOT_MOVE`` (and ``CARD_PRESENTED`` for insert / swipe / tap) and returns the stamp of the
plan's marked sync. Terminals sharing the robot take turns through :meth:`RobotDriver.session`
(a FIFO lock)."""

from __future__ import annotations

import logging
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import serial

from ..config import Point, RobotConfig, RobotLayout, Stations
from ..core.clock import ClockSource, Stamp, WallToMono, now
from ..core.errors import InstrumentError, RigError, TestError
from ..core.netstamp import ANC_SPACE, enable_rx_timestamps, kernel_wall_ns
from ..terminal_profiles import Keypad
from ..timeline.events import Event, EventKind, Sink
from .robot_moves import Limits, MovePlans, Step, Vec, go_to, homing_s, plan

log = logging.getLogger(__name__)

RX_BUFFER = 127
ERRORS = dict(enumerate((  # GRBL 1.1 error codes (doc/csv/error_codes_en_US.csv), short names
    "|Expected command letter|Bad number format|Invalid statement|Value < 0|Setting disabled|"
    "Value < 3 usec|EEPROM read fail|Not idle|G-code lock|Homing not enabled|Line overflow|"
    "Step rate > 30kHz|Check Door|Line length exceeded|Travel exceeded|Invalid jog command|"
    "Laser mode requires PWM|||Unsupported command|Modal group violation|Undefined feed rate|"
    "Command value not integer|Axis command conflict|Word repeated|No axis words|"
    "Invalid line number|Value word missing|Unsupported coordinate system|"
    "G53 invalid motion mode|Axis words exist|No axis words in plane|Invalid target|"
    "Arc radius error|No offsets in plane|Unused words|G43.1 dynamic offset error|"
    "Tool number > max").split("|")))
ALARMS = {0: "locked after reset / power-up (homing or unlock required)", 1: "Hard limit",
          2: "Soft limit", 3: "Reset while in motion", 4: "Probe fail", 5: "Probe fail",
          6: "Homing fail (reset during homing)", 7: "Homing fail (safety door)",
          8: "Homing fail (pull-off)", 9: "Homing fail (switch not found)"}
_NUM = r"-?(?:\d+\.?\d*|\.\d+)"  # what GRBL prints: 12, -0.500, .5 (never '1.2.3' or '.')
_INFO = re.compile(r"^(\[.*\]|\$N?\d+=.*|>.*)$")
_SETTING = re.compile(rf"^\$(\d+)=({_NUM})(?=\s|$)", re.M)  # a garbled value: not a setting
_STATUS = re.compile(rf"<([A-Za-z]+(?::\d)?)\|(?:MPos|WPos):({_NUM}),({_NUM}),({_NUM})"
                     rf"(?:\|[^>]*?\bFS?:(\d+\.?\d*|\.\d+))?[^>]*>")


@dataclass(frozen=True, slots=True)
class RobotStatus:
    """A ``?`` status report: state (Idle Run Hold:0 Hold:1 Jog Home Alarm...), MPos, rate."""

    state: str
    mpos: Vec
    feed_mm_min: float = 0.0
    raw: str = ""

    @classmethod
    def parse(cls, text: str) -> RobotStatus | None:
        m = _STATUS.fullmatch(text)
        if m is None:
            return None
        x, y, z = (float(v) for v in m.group(2, 3, 4))
        return cls(m.group(1), (x, y, z), float(m.group(5) or 0.0), text)


class FairLock:
    """A FIFO lock: threads get the robot in the order they asked for it."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._queue: deque[object] = deque()
        self.holder: str | None = None
        self.holder_thread: int | None = None

    def acquire(self, who: str, timeout_s: float | None) -> float:
        """Wait for our turn; returns the seconds waited. TestError on a timeout or re-entry."""
        t0 = time.monotonic()
        me = object()
        with self._cv:
            if self.holder_thread == threading.get_ident():
                raise TestError(f"robot session for {who!r}: this thread already holds the robot "
                                f"(for {self.holder!r}); sessions do not nest")
            self._queue.append(me)
            while self._queue[0] is not me:
                left = None if timeout_s is None else timeout_s - (time.monotonic() - t0)
                if left is not None and left <= 0:
                    self._queue.remove(me)
                    self._cv.notify_all()
                    raise TestError(f"robot session for {who!r}: still waiting after "
                                    f"{timeout_s:g} s ({self.holder!r} holds the robot)")
                self._cv.wait(left)
            self.holder, self.holder_thread = who, threading.get_ident()
        return time.monotonic() - t0

    def release(self) -> None:
        with self._cv:
            self._queue.popleft()
            self.holder = self.holder_thread = None
            self._cv.notify_all()

    def terminal(self) -> str | None:
        """The session's terminal when the calling thread holds the robot."""
        return self.holder if self.holder_thread == threading.get_ident() else None


class SerialPort(Protocol):  # the part of a pyserial port the driver uses
    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> Any: ...


@dataclass(eq=False)
class _Pending:
    line: str
    size: int
    deadline: float
    sent: Stamp
    terminal: str | None = None
    info: list[str] = field(default_factory=list)
    stamp: Stamp | None = None
    error: InstrumentError | None = None

    finished = property(lambda self: self.stamp is not None or self.error is not None)


class RobotDriver:
    """One GRBL card robot; thread-safe. ``opener`` replaces pyserial (tests)."""

    def __init__(self, name: str, cfg: RobotConfig, sink: Sink, layout: RobotLayout | None = None,
                 *, opener: Callable[[], SerialPort] | None = None) -> None:
        self.name, self.cfg, self.layout, self.who = name, cfg, layout, f"{name} ({cfg.port})"
        self.settings: dict[int, float] = {}
        self._sink, self._opener, self._fair = sink, opener or self._open_port, FairLock()
        self._moves = threading.RLock()  # one move / command sequence at a time
        self._cv = threading.Condition()  # guards everything below; the reader notifies
        self._port: SerialPort | None = None
        self._reader: threading.Thread | None = None
        self._pending: deque[_Pending] = deque()
        self._rx_used, self._busy_until = 0, 0.0  # bytes in GRBL's RX buffer, motion done (s)
        self._dead: str | None = None  # why the connection is unusable (the next call reopens)
        self._closing = self._expect_banner = self._critical = False  # critical: hard/soft limit
        self._alarm: int | None = None  # 0: locked without an alarm code
        self._status: tuple[RobotStatus, Stamp, ClockSource] | None = None  # the last report
        self._plan_pos: Vec | None = None  # where the queued motion ends
        self._w2m, self._rx_clock, self._banners, self._reports = WallToMono(), ClockSource.THREAD, 0, 0

    @property
    def alarm(self) -> int | None:
        """The active alarm code (0: locked after a reset), None when unlocked."""
        return self._alarm

    # --- connection --------------------------------------------------------------------------
    def _open_port(self) -> SerialPort:
        return cast(SerialPort, serial.serial_for_url(
            self.cfg.port, baudrate=self.cfg.baudrate, timeout=0.1, write_timeout=self.cfg.timeout_s))

    def open(self) -> RobotDriver:
        """Connect, wait for the banner (soft reset if none within 1 s), read ``$$``, G21 G90."""
        with self._moves:
            if self._port is not None and self._dead is None:
                return self
            self._drop()
            try:
                self._port = self._opener()
            except (serial.SerialException, OSError, ValueError) as e:
                raise InstrumentError(f"{self.who}: cannot open: {e}; is the robot controller "
                                      f"on and the port right?") from e
            with self._cv:
                self._dead, self._closing, self._alarm, self._critical = None, False, None, False
                self._rx_used, self._plan_pos, self._expect_banner = 0, None, True
            self._reader = threading.Thread(target=self._read_loop, args=(self._port,),
                                            name=f"robot-{self.name}", daemon=True)
            self._reader.start()
            try:
                self._handshake()
            except RigError:
                self._drop()
                raise
        return self

    def _handshake(self) -> None:
        if not self._alive():
            self._write(b"\x18")
            if not self._wait_banner(self.cfg.timeout_s):
                raise InstrumentError(f"{self.who}: no GRBL banner, also not after a soft reset; "
                                      f"is it a GRBL 1.1 controller at {self.cfg.baudrate} baud?")
        self._expect_banner = False
        st = self._settled(self.status())
        self._plan_pos = st.mpos if st.state == "Idle" else None
        dump = _SETTING.findall("\n".join(self.command("$$")))  # $N=value lines
        self.settings.update((int(k), float(v)) for k, v in dump)
        if self.cfg.home_on_open:
            self.home()
        elif st.state == "Alarm" or self._alarm is not None:
            self._alarm = 0 if self._alarm is None else self._alarm
            self._sink.record(Event.now(EventKind.ROBOT_ALARM, self.name, code=self._alarm,
                                        text=ALARMS.get(self._alarm, "?"), at="open"))
            log.warning("%s: controller is in alarm; call unlock() or home()", self.who)
        else:
            self.command("G21 G90")
        log.info("%s: GRBL ready (%s)", self.who, st.state)

    def _settled(self, st: RobotStatus, timeout_s: float = 30.0) -> RobotStatus:
        """A controller still moving at open (its last client died mid-move: a killed rig)
        finishes the moves it buffered; wait for that rather than reset it (a reset while moving
        loses the position, ALARM:3). Still not settled after ``timeout_s``: soft reset."""
        if st.state in ("Idle", "Alarm"):
            return st
        log.warning("%s: controller is %s at open (a previous client's moves); waiting for "
                    "them to end", self.who, st.state)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            time.sleep(0.1)
            st = self.status()
            if st.state in ("Idle", "Alarm"):
                return st
        log.warning("%s: still %s after %.0f s; soft reset", self.who, st.state, timeout_s)
        with self._cv:
            self._expect_banner, n = True, self._banners
            self._write(b"\x18")
            self._cv.wait_for(lambda: self._banners > n, self.cfg.timeout_s)
            self._expect_banner = False
        return self.status()

    def _wait_banner(self, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._banners > 0, timeout_s)

    def _alive(self) -> bool:
        """A banner within 0.25 s or an answer to ``?`` within 1 s (pyserial's ``socket://`` drops
        what came before it opened; asking avoids a reset, i.e. ALARM:3 on a moving machine)."""
        if self._wait_banner(0.25):
            return True
        end = time.monotonic() + 0.75
        with self._cv:
            seq = self._reports
            while time.monotonic() < end:
                self._write(b"?")
                if self._cv.wait_for(lambda: self._banners > 0 or self._reports > seq, 0.25):
                    return True
        return False

    def close(self) -> None:
        """Park (when a layout is given and no alarm), then close; idempotent."""
        with self._moves:
            if self._port is None:
                return
            try:
                if self.layout is not None and self._alarm is None and self._dead is None:
                    self.park()
            except RigError as e:
                log.warning("%s: not parked on close: %s", self.who, e)
                self._sink.record(Event.now(EventKind.ERROR, self.name, error=f"park on close: {e}"))
            finally:
                self._drop()

    def __enter__(self) -> RobotDriver:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self) -> None:
        with self._cv:
            port, self._port, self._closing = self._port, None, True
            self._fail_all("the connection was closed")
            self._banners = 0
        if port is not None:
            try:
                port.close()
            except Exception as e:
                log.debug("%s: closing: %s", self.who, e)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2.0)
        self._reader = None

    def _ensure(self, motion: bool = True) -> None:
        if self._port is None or self._dead is not None:
            self.open()
        if motion and self._alarm is not None:
            raise InstrumentError(f"{self.who}: in alarm (ALARM:{self._alarm} "
                                  f"{ALARMS.get(self._alarm, '?')}); nothing was sent; "
                                  f"{self._recovery()}")

    def _recovery(self) -> str:
        return ("call reset(), then unlock() or home()" if self._critical
                else "call unlock() ($X) or home() ($H) to recover")

    # --- the reader thread -------------------------------------------------------------------
    def _read_loop(self, port: SerialPort) -> None:
        """Stamp: the read that brought a line's end, or the kernel's (``socket://``, DESIGN §4)."""
        sock, buf = getattr(port, "_socket", None), b""
        kernel = isinstance(sock, socket.socket) and enable_rx_timestamps(sock)
        try:
            while not self._closing:
                if kernel:
                    if not select.select([sock], [], [], 0.1)[0]:
                        continue
                    chunk, anc, _, _ = sock.recvmsg(4096, ANC_SPACE)  # type: ignore[union-attr]
                    if not chunk:
                        raise serial.SerialException("socket disconnected")
                    wall = kernel_wall_ns(anc)
                    stamp = Stamp(self._w2m.to_mono(wall), wall) if wall else now()
                    self._rx_clock = ClockSource.KERNEL if wall else ClockSource.THREAD
                else:
                    chunk, stamp = port.read(max(1, port.in_waiting)), now()
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    text = raw.decode("ascii", "replace").strip()
                    if text:
                        self._on_line(text, stamp)
                if len(buf) > 256:
                    raise InstrumentError(f"{self.who}: {len(buf)} bytes without a line end")
        except InstrumentError as e:
            self._connection_failed(str(e))
        except Exception as e:  # pyserial raises many types when the peer or close() drops it
            if not self._closing:
                self._connection_failed(f"connection lost ({e})")

    def _connection_failed(self, reason: str) -> None:
        with self._cv:
            if self._closing:
                return
            reason = reason.removeprefix(f"{self.who}: ")
            self._dead = f"{self.who}: {reason}"
            self._fail_all(f"{reason}; the next command reconnects")
        log.warning("%s: %s", self.who, reason)
        self._sink.record(Event.now(EventKind.ERROR, self.name, error=reason))

    def _fail_all(self, why: str) -> None:
        while self._pending:
            p = self._pending.popleft()
            p.error = p.error or InstrumentError(f"{self.who}: {p.line!r} failed: {why}")
        self._rx_used = 0
        self._cv.notify_all()

    def _on_line(self, text: str, stamp: Stamp) -> None:
        if text == "ok" or re.fullmatch(r"error:\d+", text):
            self._on_reply(text, stamp)
        elif text.startswith("<"):
            st = RobotStatus.parse(text)
            if st is None:
                raise InstrumentError(f"{self.who}: unreadable status report {text!r}")
            with self._cv:
                self._status, self._reports = (st, stamp, self._rx_clock), self._reports + 1
                self._cv.notify_all()
        elif m := re.fullmatch(r"ALARM:(\d+)", text):
            self._on_alarm(int(m.group(1)), stamp)
        elif text.startswith("Grbl "):
            self._on_banner(text, stamp)
        elif _INFO.match(text):
            with self._cv:
                if "'$H'|'$X' to unlock" in text and self._alarm is None:
                    self._alarm = 0
                self._critical |= text == "[MSG:Reset to continue]"
                if self._pending:
                    self._pending[0].info.append(text)
            log.debug("%s: %s", self.name, text)
        else:
            raise InstrumentError(f"{self.who}: unexpected reply {text!r}; is it a GRBL 1.1 "
                                  f"controller at {self.cfg.baudrate} baud?")

    def _on_reply(self, text: str, stamp: Stamp) -> None:
        with self._cv:
            if not self._pending:
                raise InstrumentError(f"{self.who}: {text!r} arrived with no line outstanding")
            p = self._pending.popleft()
            self._rx_used -= p.size
            p.stamp = stamp
            if text != "ok":
                code = int(text[6:])
                p.error = InstrumentError(f"{self.who}: {p.line!r} → {text} "
                                          f"{ERRORS.get(code) or 'unknown error'}")
            self._cv.notify_all()
        self._sink.record(Event.at(stamp, EventKind.ROBOT_IO, self.name, p.terminal,
                                   clock=self._rx_clock, line=p.line, reply=text, info=list(p.info),
                                   sent_mono_ns=p.sent.mono_ns))

    def _on_alarm(self, code: int, stamp: Stamp) -> None:
        text = ALARMS.get(code, "unknown alarm")
        with self._cv:
            lines = [p.line for p in self._pending]
            self._alarm, self._critical, self._plan_pos = code, code in (1, 2), None
            self._fail_all(f"ALARM:{code} {text}; the robot stopped; {self._recovery()}")
        self._sink.record(Event.at(stamp, EventKind.ROBOT_ALARM, self.name, self._fair.terminal(),
                                   code=code, text=text, pending=lines))
        log.warning("%s: ALARM:%d %s", self.who, code, text)

    def _on_banner(self, text: str, stamp: Stamp) -> None:
        with self._cv:
            expected, self._expect_banner = self._expect_banner, False
            self._banners += 1
            self._plan_pos, self._critical = None, False
            self._fail_all(f"the controller reset ({text!r})")
        if not expected and self._alarm is None:
            why = f"unexpected reset: the controller sent its banner {text!r}"
            self._sink.record(Event.at(stamp, EventKind.ERROR, self.name, error=why))
            log.warning("%s: %s", self.who, why)

    def interrupt(self) -> Stamp:
        """Soft-reset the controller at once, even mid-move (fault injection: a moving GRBL
        answers ALARM:3 and the move in progress fails). Recover with :meth:`unlock`."""
        with self._cv:
            self._expect_banner = True
        return self._write(b"\x18")

    # --- writing and waiting -----------------------------------------------------------------
    def _write(self, data: bytes) -> Stamp:
        port = self._port
        if port is None:
            raise InstrumentError(f"{self.who}: not open")
        try:
            port.write(data)
        except (serial.SerialException, OSError) as e:
            self._connection_failed(f"cannot write {data!r} ({e})")
            raise InstrumentError(f"{self._dead}; the next command reconnects") from e
        return now()

    def _send(self, line: str, motion_s: float = 0.0) -> _Pending:
        """Write one line once it fits GRBL's RX buffer (character counting)."""
        data = line.encode("ascii") + b"\n"
        if len(data) > RX_BUFFER:
            raise TestError(f"{self.name}: line {line!r} is longer than GRBL's RX buffer")
        with self._cv:
            while self._dead is None and self._rx_used + len(data) > RX_BUFFER:
                oldest = self._pending[0]
                self._cv.wait(max(0.0, oldest.deadline - time.monotonic()))
                if not oldest.finished and time.monotonic() >= oldest.deadline:
                    self._timed_out(oldest)
            if self._dead is not None:
                raise InstrumentError(f"{self._dead}; the next command reconnects")
            self._busy_until = max(self._busy_until, time.monotonic()) + motion_s
            deadline = self._busy_until + self.cfg.timeout_s
            p = _Pending(line, len(data), deadline, self._write(data), self._fair.terminal())
            self._pending.append(p)
            self._rx_used += len(data)
            return p

    def _timed_out(self, p: _Pending) -> None:
        reason = (f"{self.who}: no reply to {p.line!r} within "
                  f"{p.deadline - p.sent.mono_ns / 1e9:.1f} s")
        self._dead = reason
        self._fail_all(reason.removeprefix(f"{self.who}: "))
        self._sink.record(Event.now(EventKind.ERROR, self.name, error=reason))
        raise InstrumentError(f"{reason}; is the controller on? (the next command reconnects)")

    def _wait(self, p: _Pending) -> _Pending:
        with self._cv:
            while not p.finished:
                left = p.deadline - time.monotonic()
                if left <= 0:
                    self._timed_out(p)
                self._cv.wait(left)
        if p.error is not None:
            raise p.error
        return p

    def command(self, line: str) -> list[str]:
        """Send one line (e.g. ``$I``, ``$G``); the info lines before its ``ok``."""
        with self._moves:
            self._ensure(motion=False)
            return self._wait(self._send(line)).info

    def status(self) -> RobotStatus:
        """A real-time ``?`` status report."""
        self._ensure(motion=False)
        with self._cv:
            seq, sent = self._reports, self._write(b"?")
            ok = self._cv.wait_for(lambda: self._reports > seq or self._dead is not None,
                                   self.cfg.timeout_s)
            last = self._status
        if self._dead is not None or not ok or last is None:
            raise InstrumentError(self._dead or f"{self.who}: no status report within "
                                  f"{self.cfg.timeout_s} s; is the controller on?")
        st, at, clock = last
        self._sink.record(Event.at(at, EventKind.ROBOT_IO, self.name, self._fair.terminal(), clock,
                                   line="?", reply=st.raw, sent_mono_ns=sent.mono_ns))
        return st


    # --- card moves ----------------------------------------------------------------------------
    def _plans(self) -> MovePlans:
        if self.layout is None:
            raise TestError(f"{self.name}: card moves need a robot layout (cfg.robot)")
        return MovePlans(self.layout, self.cfg.feed_mm_min, self.name)

    def _present(self, mode: str, stamp: Stamp) -> Stamp:
        self._sink.record(Event.at(stamp, EventKind.CARD_PRESENTED, self.name,
                                   self._fair.terminal(), mode=mode))
        return stamp

    def pick(self, slot: int) -> Stamp:
        """Take the card out of magazine ``slot`` (down, grip, settle, up)."""
        return self._run("pick", self._plans().pick(slot), slot=slot)

    def return_card(self, slot: int) -> Stamp:
        """Put the held card back into ``slot`` (down, release, settle, up)."""
        return self._run("return", self._plans().return_card(slot), slot=slot)

    def insert(self, st: Stations) -> Stamp:
        """Insert the card into the chip slot; the stamp of its arrival."""
        return self._present("chip", self._run("insert", self._plans().insert(st)))

    def withdraw(self, st: Stations) -> Stamp:
        """Pull the card back up to safe_z."""
        return self._run("withdraw", self._plans().withdraw(st))

    def swipe(self, st: Stations, speed_mm_s: float | None = None) -> Stamp:
        """Swipe from swipe_start to swipe_end at ``speed_mm_s``; the stamp of the swipe's end."""
        plans = self._plans()
        speed = plans.layout.swipe_speed_mm_s if speed_mm_s is None else speed_mm_s
        stamp = self._run("swipe", plans.swipe(st, speed), speed_mm_s=speed)
        return self._present("swipe", stamp)

    def tap(self, st: Stations, dwell_ms: float | None = None) -> Stamp:
        """Lay the card on the NFC zone for ``dwell_ms``; the stamp of its arrival there."""
        plans = self._plans()
        dwell_ms = plans.layout.tap_dwell_ms if dwell_ms is None else dwell_ms
        return self._present("tap", self._run("tap", plans.tap(st, dwell_ms), dwell_ms=dwell_ms))

    def press_keys(self, st: Stations, keypad: Keypad, keys: Sequence[str]) -> Stamp:
        """Press ``keys`` on the keypad at ``st.keypad`` (offsets, depth and dwell from the
        terminal's profile ``keypad``); the stamp of the first key reaching its depth.
        Recorded as ROBOT_MOVE ``keys`` with the keys pressed."""
        if st.keypad is None:
            raise TestError(f"{self.name}: the terminal has no stations.keypad in the lab config")
        keys = list(keys)
        return self._run("keys", self._plans().press_keys(st.keypad, keypad, keys), keys=keys)

    def holding(self) -> bool:
        """Whether the calling thread holds the robot (inside :meth:`session`)."""
        return self._fair.terminal() is not None

    def park(self) -> Stamp:
        """Go to the park position (at safe_z first)."""
        return self._run("park", self._plans().park())

    def move_to(self, p: Point, feed_mm_min: float | None = None, rapid: bool = False) -> Stamp:
        """Straight to ``p`` (G1 at ``feed_mm_min`` or the travel feed; G0 if ``rapid``)."""
        steps = go_to(p, feed_mm_min or self.cfg.feed_mm_min, rapid)
        return self._run("move_to", steps, x=p.x, y=p.y, z=p.z)

    def sync(self) -> Stamp:
        """``G4 P0``: the stamp of its ``ok``, which comes when all motion is complete."""
        return self._run("sync", [Step("G4 P0", mark=True)])

    def _run(self, move: str, steps: list[Step], **data: object) -> Stamp:
        """Plan ``steps`` from where the queued motion ends (LimitError before anything is
        sent), stream them, wait for all; record ROBOT_MOVE; the marked step's stamp."""
        with self._moves:
            self._ensure()
            t0 = now()
            start = self._plan_pos if self._plan_pos is not None else self.status().mpos
            pl = plan(steps, start, Limits.from_settings(self.settings, self.cfg.feed_mm_min),
                      self.name)
            self._plan_pos = pl.end
            try:
                sent = [self._send(s.line, secs) for s, secs in zip(pl.steps, pl.seconds,
                                                                     strict=True)]
                done = [self._wait(p) for p in sent]
            except RigError:
                self._plan_pos = None
                raise
            end, mark = done[-1].stamp, done[pl.mark].stamp
            assert end is not None and mark is not None
            self._sink.record(Event.at(end, EventKind.ROBOT_MOVE, self.name, self._fair.terminal(),
                                       move=move, duration_s=(end.mono_ns - t0.mono_ns) / 1e9,
                                       planned_s=round(pl.motion_s, 6), **data))
            return mark

    @contextmanager
    def session(self, terminal: str, timeout_s: float | None = None) -> Iterator[float]:
        """Hold the robot for ``terminal`` (FIFO among waiters); yields the seconds waited."""
        waited = self._fair.acquire(terminal, timeout_s)
        self._sink.record(Event.now(EventKind.ROBOT_WAIT, self.name, terminal, waited_s=waited))
        try:
            yield waited
        finally:
            self._fair.release()

    # --- recovery ------------------------------------------------------------------------------
    def reset(self) -> RobotStatus:
        """Soft reset (0x18): stops at once (ALARM:3 if it was moving); waits for the banner."""
        with self._moves:
            self._ensure(motion=False)
            with self._cv:
                self._expect_banner, banners = True, self._banners
                self._write(b"\x18")
                if not self._cv.wait_for(lambda: self._banners > banners, self.cfg.timeout_s):
                    raise InstrumentError(f"{self.who}: no banner within {self.cfg.timeout_s} s "
                                          f"after a soft reset")
            st = self.status()
            if st.state != "Alarm" and self._alarm is None:
                self.command("G21 G90")
            return st

    def unlock(self) -> None:
        """``$X``: clear the alarm lock (after a reset when the alarm was a limit)."""
        with self._moves:
            self._ensure(motion=False)
            if self._critical:
                self.reset()
            self._wait(self._send("$X"))
            self._alarm = None
            self.command("G21 G90")

    def home(self) -> Stamp:
        """``$H``: home to (0, 0, 0); clears an alarm. The stamp of its ``ok``."""
        with self._moves:
            self._ensure(motion=False)
            if self._critical:
                self.reset()
            seconds = homing_s(self.status().mpos, self.settings, self.cfg.feed_mm_min)
            p = self._wait(self._send("$H", seconds))
            self._alarm, self._plan_pos = None, (0.0, 0.0, 0.0)
            self.command("G21 G90")
            assert p.stamp is not None
            return p.stamp
