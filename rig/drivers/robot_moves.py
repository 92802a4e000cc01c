"""The robot's motion: card moves as data (lists of :class:`Step`), and the driver's motion API.

Every move travels at ``safe_z``: up from wherever the head is, across, then down onto the
target. The gripper is the coolant output (``M8`` close = grip, ``M9`` open); GRBL runs both
only after the motion before them has finished. ``G4 P0`` is the sync: its ``ok`` comes once
all motion is done, so its stamp is when the card got there. A step marked ``mark`` is the
one whose stamp a presenting move (insert, swipe, tap) returns. Feeds are checked against the
controller's $110-$112 along each path before anything is sent (GRBL would silently slow the
move down, which would spoil a swipe), and each line's reply deadline allows for the motion
queued before it (distance / rate + rate / acceleration, an upper bound for a trapezoid).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Point, RobotConfig, RobotLayout, Stations
from ..core.clock import Stamp, now
from ..core.errors import InstrumentError, LimitError, RigError, TestError
from ..timeline.events import Event, EventKind, Sink

if TYPE_CHECKING:
    from .robot import _Pending

Axes = dict[str, float]
Vec = tuple[float, float, float]
GRIP_SETTLE_S = 0.2
_STATUS = re.compile(r"<([A-Za-z]+(?::\d)?)\|(?:MPos|WPos):(-?[\d.]+),(-?[\d.]+),(-?[\d.]+)"
                     r"(?:\|[^>]*?\bFS?:([\d.]+))?[^>]*>")


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


@dataclass(frozen=True, slots=True)
class Step:
    """One GRBL line of a move."""

    line: str
    axes: Axes | None = None  # absolute target of a motion line (axes not named stay)
    feed_mm_min: float | None = None  # None with axes: rapid (G0)
    dwell_s: float = 0.0
    mark: bool = False


def num(v: float) -> str:
    """GRBL-friendly number: at most 3 decimals, no exponent, no trailing zeros."""
    text = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _words(axes: Axes) -> str:
    return " ".join(f"{k.upper()}{num(v)}" for k, v in axes.items())


def line_to(feed_mm_min: float, **axes: float) -> Step:
    """``G1`` to the given absolute axes at ``feed_mm_min``."""
    return Step(f"G1 {_words(axes)} F{num(feed_mm_min)}", axes, feed_mm_min)


def rapid_to(**axes: float) -> Step:
    return Step(f"G0 {_words(axes)}", axes, None)


def dwell(seconds: float, mark: bool = False) -> Step:
    """``G4 P<seconds>``: waits for all motion, then dwells; ``dwell(0)`` is the sync."""
    return Step(f"G4 P{num(seconds)}", dwell_s=seconds, mark=mark)


def sync(mark: bool = False) -> Step:
    return dwell(0.0, mark)


def gripper(closed: bool) -> Step:
    return Step("M8" if closed else "M9")


def go_to(p: Point, feed_mm_min: float, rapid: bool = False) -> list[Step]:
    """Straight to ``p`` (G0 when ``rapid``), then the sync."""
    move = rapid_to(x=p.x, y=p.y, z=p.z) if rapid else line_to(feed_mm_min, x=p.x, y=p.y, z=p.z)
    return [move, sync(mark=True)]


class MovePlans:
    """The step lists of the card moves for one layout, travelling at ``feed_mm_min``."""

    def __init__(self, layout: RobotLayout, feed_mm_min: float) -> None:
        self.layout, self.feed = layout, feed_mm_min

    def up(self) -> Step:
        return line_to(self.feed, z=self.layout.safe_z)

    def approach(self, p: Point) -> list[Step]:
        """Up to safe_z, across to above ``p``, down onto ``p``."""
        f = self.feed
        return [self.up(), line_to(f, x=p.x, y=p.y), line_to(f, z=p.z)]

    def pick(self, slot: int) -> list[Step]:
        return [*self.approach(self.layout.slot_point(slot)), gripper(True),
                dwell(GRIP_SETTLE_S), self.up(), sync(mark=True)]

    def return_card(self, slot: int) -> list[Step]:
        return [*self.approach(self.layout.slot_point(slot)), gripper(False),
                dwell(GRIP_SETTLE_S), self.up(), sync(mark=True)]

    def insert(self, st: Stations) -> list[Step]:
        return [*self.approach(st.chip), sync(mark=True)]

    def withdraw(self, st: Stations) -> list[Step]:
        return [self.up(), sync(mark=True)]

    def swipe(self, st: Stations, speed_mm_s: float) -> list[Step]:
        e = st.swipe_end
        return [*self.approach(st.swipe_start), line_to(speed_mm_s * 60.0, x=e.x, y=e.y, z=e.z),
                sync(mark=True), self.up(), sync()]

    def tap(self, st: Stations, dwell_ms: float) -> list[Step]:
        return [*self.approach(st.nfc), sync(mark=True), dwell(dwell_ms / 1000.0), self.up(),
                sync()]

    def park(self) -> list[Step]:
        return [*self.approach(self.layout.park), sync(mark=True)]


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


class CardMoves:
    """Motion and recovery of :class:`rig.drivers.robot.RobotDriver` (a mixin over its link).

    Each move streams its steps, waits for the last ``ok``, records ``ROBOT_MOVE`` (and
    ``CARD_PRESENTED`` for insert / swipe / tap) and returns the stamp of the marked sync.
    """

    name: str
    cfg: RobotConfig
    layout: RobotLayout | None
    settings: dict[int, float]
    who: str
    _fair: FairLock
    _sink: Sink
    _moves: threading.RLock
    _cv: threading.Condition
    _alarm: int | None
    _critical: bool
    _plan_pos: Vec | None
    _banners: int
    _expect_banner: bool

    if TYPE_CHECKING:  # the link, in rig.drivers.robot
        def _ensure(self, motion: bool = True) -> None: ...
        def _send(self, line: str, motion_s: float = 0.0) -> _Pending: ...
        def _wait(self, p: _Pending) -> _Pending: ...
        def _write(self, data: bytes) -> Stamp: ...
        def status(self) -> RobotStatus: ...
        def command(self, line: str) -> list[str]: ...

    # --- card moves ----------------------------------------------------------------------------
    def _plans(self) -> MovePlans:
        if self.layout is None:
            raise TestError(f"{self.name}: card moves need a robot layout (cfg.robot)")
        return MovePlans(self.layout, self.cfg.feed_mm_min)

    def _slot(self, slot: int) -> int:
        layout = self._plans().layout
        if slot not in layout.magazine.slots:
            raise TestError(f"{self.name}: no magazine slot {slot!r} (slots "
                            f"{sorted(layout.magazine.slots)})")
        return slot

    def _present(self, mode: str, stamp: Stamp) -> Stamp:
        self._sink.record(Event.at(stamp, EventKind.CARD_PRESENTED, self.name,
                                   self._fair.terminal(), mode=mode))
        return stamp

    def pick(self, slot: int) -> Stamp:
        """Take the card out of magazine ``slot`` (down, grip, settle, up)."""
        return self._run("pick", self._plans().pick(self._slot(slot)), slot=slot)

    def return_card(self, slot: int) -> Stamp:
        """Put the held card back into ``slot`` (down, release, settle, up)."""
        return self._run("return", self._plans().return_card(self._slot(slot)), slot=slot)

    def insert(self, st: Stations) -> Stamp:
        """Insert the card into the chip slot; the stamp of its arrival."""
        return self._present("chip", self._run("insert", self._plans().insert(st)))

    def withdraw(self, st: Stations) -> Stamp:
        """Pull the card back up to safe_z."""
        return self._run("withdraw", self._plans().withdraw(st))

    def swipe(self, st: Stations, speed_mm_s: float | None = None) -> Stamp:
        """Swipe from swipe_start to swipe_end at ``speed_mm_s``; the stamp of the swipe's end."""
        speed = self._plans().layout.swipe_speed_mm_s if speed_mm_s is None else speed_mm_s
        stamp = self._run("swipe", self._plans().swipe(st, speed), speed_mm_s=speed)
        return self._present("swipe", stamp)

    def tap(self, st: Stations, dwell_ms: float | None = None) -> Stamp:
        """Lay the card on the NFC zone for ``dwell_ms``; the stamp of its arrival there."""
        dwell_ms = self._plans().layout.tap_dwell_ms if dwell_ms is None else dwell_ms
        if not math.isfinite(dwell_ms) or dwell_ms < 0:
            raise LimitError(f"{self.name}: tap dwell {dwell_ms!r} ms is not valid; nothing was sent")
        return self._present("tap", self._run("tap", self._plans().tap(st, dwell_ms),
                                              dwell_ms=dwell_ms))

    def park(self) -> Stamp:
        """Go to the park position (at safe_z first)."""
        return self._run("park", self._plans().park())

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
            here, g = self.status().mpos, self.settings.get  # seek ($25) up to 1.5 x travel ($13x)
            span = max(abs(here[2]) + math.hypot(here[0], here[1]), 1.5 * max(g(130, 0), g(131, 0)))
            locate = 4 * g(27, 1) / max(g(24, 25), 1)  # pull-off ($27) at the locate feed ($24)
            seconds = (span / (g(25) or self.cfg.feed_mm_min) + locate) * 60.0 + 2.0
            p = self._wait(self._send("$H", seconds))
            self._alarm, self._plan_pos = None, (0.0, 0.0, 0.0)
            self.command("G21 G90")
            assert p.stamp is not None
            return p.stamp

    # --- motion --------------------------------------------------------------------------------
    def _max_rates(self) -> Vec | None:
        r = [self.settings.get(n) for n in (110, 111, 112)]
        return (r[0], r[1], r[2]) if all(r) else None  # type: ignore[return-value]

    def _seconds(self, start: Vec, end: Vec, rate: float) -> float:
        accel = min((self.settings.get(n) or 10.0) for n in (120, 121, 122))
        v = rate / 60.0
        return math.dist(start, end) / v + v / accel

    def _resolve(self, steps: list[Step]) -> list[tuple[Step, float]]:
        """(step, expected seconds) for each step; LimitError before anything is sent."""
        if self._plan_pos is None:
            self._plan_pos = self.status().mpos
        pos, out, rates = self._plan_pos, [], self._max_rates()  # pos changes only on success
        self._motion_s = 0.0  # distance / feed + dwells: what the move should take
        for s in steps:
            if s.axes is None:
                out.append((s, s.dwell_s))
                self._motion_s += s.dwell_s
                continue
            end = tuple(s.axes.get(k, pos[i]) for i, k in enumerate("xyz"))
            limit = _axis_limited(rates, pos, end) if rates else self.cfg.feed_mm_min
            rate = limit if s.feed_mm_min is None else s.feed_mm_min
            if not math.isfinite(rate) or rate <= 0 or rate > limit * (1 + 1e-9):
                raise LimitError(f"{self.name}: {s.line!r}: feed {rate:g} mm/min is outside "
                                 f"0..{limit:g} mm/min ($110-$112 along this path); nothing "
                                 f"was sent")
            out.append((s, self._seconds(pos, end, rate)))  # type: ignore[arg-type]
            self._motion_s += math.dist(pos, end) / (rate / 60.0)  # type: ignore[arg-type]
            pos = end  # type: ignore[assignment]
        self._plan_pos = pos
        return out

    def _run(self, move: str, steps: list[Step], **data: object) -> Stamp:
        """Stream a move's steps, wait for all; record ROBOT_MOVE; the marked step's stamp."""
        with self._moves:
            self._ensure()
            t0, planned = now(), self._resolve(steps)
            try:
                sent = [self._send(s.line, secs) for s, secs in planned]
                done = [self._wait(p) for p in sent]
            except RigError:
                self._plan_pos = None
                raise
            end = done[-1].stamp
            mark = next((p.stamp for s, p in zip(steps, done, strict=True) if s.mark), end)
            assert end is not None and mark is not None
            self._sink.record(Event.at(end, EventKind.ROBOT_MOVE, self.name, self._fair.terminal(),
                                       move=move, duration_s=(end.mono_ns - t0.mono_ns) / 1e9,
                                       planned_s=round(self._motion_s, 6),
                                       **data))
            return mark

    def move_to(self, p: Point, feed_mm_min: float | None = None, rapid: bool = False) -> Stamp:
        """Straight to ``p`` (G1 at ``feed_mm_min`` or the travel feed; G0 if ``rapid``)."""
        steps = go_to(p, feed_mm_min or self.cfg.feed_mm_min, rapid)
        return self._run("move_to", steps, x=p.x, y=p.y, z=p.z)

    def sync(self) -> Stamp:
        """``G4 P0``: the stamp of its ``ok``, which comes when all motion is complete."""
        return self._run("sync", [Step("G4 P0", mark=True)])

    @contextmanager
    def session(self, terminal: str, timeout_s: float | None = None) -> Iterator[float]:
        """Hold the robot for ``terminal`` (FIFO among waiters); yields the seconds waited."""
        waited = self._fair.acquire(terminal, timeout_s)
        self._sink.record(Event.now(EventKind.ROBOT_WAIT, self.name, terminal, waited_s=waited))
        try:
            yield waited
        finally:
            self._fair.release()


def _axis_limited(rates: Vec, a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """GRBL's rate limit along a -> b: no axis may exceed its $11x maximum."""
    d = math.dist(a, b)
    return min(r / (abs(y - x) / d) if d else r for x, y, r in zip(a, b, rates, strict=True)
               if not d or y != x)
