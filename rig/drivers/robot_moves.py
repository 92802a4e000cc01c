"""The card robot's moves as data: G-code :class:`Step` lists, checked and timed before sending.

Nothing here does I/O or knows the driver; :class:`rig.drivers.robot.RobotDriver` executes
what these functions plan. Every card move travels at ``safe_z``: up from wherever the head is,
across, then down onto the target. The gripper is the coolant output (``M8`` close = grip,
``M9`` open); GRBL runs both only after the motion before them has finished. ``G4 P0`` is the
sync: its ``ok`` comes once all motion is done, so its stamp is when the card got there. A step
marked ``mark`` is the one whose stamp a presenting move (insert, swipe, tap) returns.

:func:`plan` checks the feeds against the controller's $110-$112 along each path before
anything is sent (GRBL would silently slow the move down, which would spoil a swipe) and gives
each step the seconds its motion may take (distance / rate + rate / acceleration, an upper
bound for a trapezoid), from which the driver sets each line's reply deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import Point, RobotLayout, Stations
from ..core.errors import LimitError, TestError
from ..terminal_profiles import Keypad

Axes = dict[str, float]
Vec = tuple[float, float, float]
GRIP_SETTLE_S = 0.2
DEFAULT_ACCEL_MM_S2 = 10.0  # assumed for an axis whose $12x the controller did not report


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


@dataclass(frozen=True, slots=True)
class MovePlans:
    """The step lists of the card moves for one layout, travelling at ``feed_mm_min``;
    ``who`` names the robot in the errors of arguments refused before anything is sent."""

    layout: RobotLayout
    feed_mm_min: float
    who: str = "robot"

    def up(self) -> Step:
        return line_to(self.feed_mm_min, z=self.layout.safe_z)

    def approach(self, p: Point) -> list[Step]:
        """Up to safe_z, across to above ``p``, down onto ``p``."""
        f = self.feed_mm_min
        return [self.up(), line_to(f, x=p.x, y=p.y), line_to(f, z=p.z)]

    def _slot_point(self, slot: int) -> Point:
        if slot not in self.layout.magazine.slots:
            raise TestError(f"{self.who}: no magazine slot {slot!r} (slots "
                            f"{sorted(self.layout.magazine.slots)})")
        return self.layout.slot_point(slot)

    def pick(self, slot: int) -> list[Step]:
        """Down into ``slot``, grip, settle, up."""
        return [*self.approach(self._slot_point(slot)), gripper(True),
                dwell(GRIP_SETTLE_S), self.up(), sync(mark=True)]

    def return_card(self, slot: int) -> list[Step]:
        """Down into ``slot``, release, settle, up."""
        return [*self.approach(self._slot_point(slot)), gripper(False),
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
        if not math.isfinite(dwell_ms) or dwell_ms < 0:
            raise LimitError(f"{self.who}: tap dwell {dwell_ms!r} ms is not valid; nothing was sent")
        return [*self.approach(st.nfc), sync(mark=True), dwell(dwell_ms / 1000.0), self.up(),
                sync()]

    def park(self) -> list[Step]:
        return [*self.approach(self.layout.park), sync(mark=True)]

    def press_keys(self, origin: Point, keypad: Keypad, keys: Sequence[str]) -> list[Step]:
        """Press ``keys`` in order: across at safe_z to above the first, down to ``lift_mm``
        over the key tops, then per key: across at that height, down ``press_mm`` below the
        top, sync (marked: the first key's stamp is the move's), hold ``press_ms``, back up;
        finally up to safe_z. Unknown keys are refused before anything is sent."""
        unknown = [k for k in keys if k not in keypad.keys]
        if unknown or not keys:
            raise TestError(f"{self.who}: no key(s) {', '.join(unknown) or '(none given)'} on this "
                            f"keypad (keys: {', '.join(keypad.keys)})")
        f = self.feed_mm_min
        hover, down = origin.z + keypad.lift_mm, origin.z - keypad.press_mm
        first = keypad.keys[keys[0]]
        steps = [self.up(), line_to(f, x=origin.x + first.x, y=origin.y + first.y),
                 line_to(f, z=hover)]
        for i, k in enumerate(keys):
            kk = keypad.keys[k]
            steps += [line_to(f, x=origin.x + kk.x, y=origin.y + kk.y), line_to(f, z=down),
                      sync(mark=i == 0), dwell(keypad.press_ms / 1000.0), line_to(f, z=hover)]
        return [*steps, self.up(), sync()]


@dataclass(frozen=True, slots=True)
class Limits:
    """What the controller allows, from its ``$$`` settings."""

    max_rates: Vec | None  # $110-$112 mm/min; None when the controller did not report all three
    accel_mm_s2: float  # the lowest of $120-$122
    feed_mm_min: float  # the travel feed: G0's rate when $110-$112 are unknown

    @classmethod
    def from_settings(cls, settings: Mapping[int, float], feed_mm_min: float) -> Limits:
        x, y, z = (settings.get(n) for n in (110, 111, 112))
        rates = (x, y, z) if x and y and z else None
        accel = min((settings.get(n) or DEFAULT_ACCEL_MM_S2) for n in (120, 121, 122))
        return cls(rates, accel, feed_mm_min)

    def rate_limit(self, a: Vec, b: Vec) -> float:
        """GRBL's rate limit along a -> b: no axis may exceed its $11x maximum."""
        if self.max_rates is None:
            return self.feed_mm_min
        d = math.dist(a, b)
        return min(r / (abs(y - x) / d) if d else r
                   for x, y, r in zip(a, b, self.max_rates, strict=True) if not d or y != x)

    def seconds(self, a: Vec, b: Vec, rate_mm_min: float) -> float:
        """An upper bound of a move's time: distance / rate + the time to reach the rate."""
        v = rate_mm_min / 60.0
        return math.dist(a, b) / v + v / self.accel_mm_s2


@dataclass(frozen=True, slots=True)
class Plan:
    """A move checked against the limits."""

    steps: tuple[Step, ...]
    seconds: tuple[float, ...]  # per step: the most its motion / dwell may take (reply deadline)
    end: Vec  # where the head is once the move is done
    motion_s: float  # distance / feed + dwells: what the move should take

    @property
    def mark(self) -> int:
        """The index of the step whose stamp the move returns: the marked one, else the last."""
        return next((i for i, s in enumerate(self.steps) if s.mark), len(self.steps) - 1)


def plan(steps: Sequence[Step], start: Vec, limits: Limits, who: str = "robot") -> Plan:
    """Check and time ``steps`` from ``start``; :class:`LimitError` (naming ``who``) on a feed
    outside what $110-$112 allow along its path."""
    pos, seconds, motion_s = start, [], 0.0
    for s in steps:
        if s.axes is None:
            seconds.append(s.dwell_s)
            motion_s += s.dwell_s
            continue
        end = (s.axes.get("x", pos[0]), s.axes.get("y", pos[1]), s.axes.get("z", pos[2]))
        limit = limits.rate_limit(pos, end)
        rate = limit if s.feed_mm_min is None else s.feed_mm_min
        if not math.isfinite(rate) or rate <= 0 or rate > limit * (1 + 1e-9):
            raise LimitError(f"{who}: {s.line!r}: feed {rate:g} mm/min is outside "
                             f"0..{limit:g} mm/min ($110-$112 along this path); nothing "
                             f"was sent")
        seconds.append(limits.seconds(pos, end, rate))
        motion_s += math.dist(pos, end) / (rate / 60.0)
        pos = end
    return Plan(tuple(steps), tuple(seconds), pos, motion_s)


def homing_s(here: Vec, settings: Mapping[int, float], feed_mm_min: float) -> float:
    """The most ``$H`` may take from ``here``: seek ($25) up to 1.5 x the travel ($130/$131),
    then the locate cycles at the locate feed ($24) over the pull-off ($27), plus 2 s."""
    g = settings.get
    span = max(abs(here[2]) + math.hypot(here[0], here[1]), 1.5 * max(g(130, 0), g(131, 0)))
    locate = 4 * g(27, 1) / max(g(24, 25), 1)
    return (span / (g(25) or feed_mm_min) + locate) * 60.0 + 2.0
