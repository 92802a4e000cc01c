"""Motion of the virtual GRBL robot: G-code blocks, the planner queue, a constant-velocity executor.

:func:`parse_block` validates a whole line before anything happens (GRBL's ``gc_execute_line``);
:class:`LineAssembler` is GRBL's filter of the serial stream. The :class:`Planner` holds 15
moves (GRBL's 16-block ring keeps one free); each takes exactly ``length / rate`` on the
monotonic clock (no acceleration: the head jumps to speed and stops dead), back to back when
queued in time. ``on_segment`` gets each :class:`Segment` as it starts and the zero-length rest
when a hold or stop cuts it. All in the event loop; ``position()`` may be read from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger(__name__)

Vec = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Segment:
    """One straight move as executed; times are ``time.monotonic_ns()``."""

    start: Vec
    end: Vec
    feed_mm_min: float
    t_start_ns: int
    t_end_ns: int  # when it arrives at ``end`` (== t_start_ns for a truncated segment)
    rapid: bool

    @property
    def length_mm(self) -> float:
        return math.dist(self.start, self.end)

    def at(self, t_ns: int) -> Vec:
        """Where the head is at ``t_ns`` (clamped to the segment)."""
        span = self.t_end_ns - self.t_start_ns
        f = 1.0 if span <= 0 else min(1.0, max(0.0, (t_ns - self.t_start_ns) / span))
        a, b = self.start, self.end
        return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f)


@dataclass(slots=True)
class Block:
    """A planned move (the start is wherever the previous block ends)."""

    target: Vec
    rate_mm_min: float  # already limited by the axis maximum rates
    rapid: bool = False
    kind: str = "gcode"  # "gcode" | "jog" | "home"
    queued_ns: int = 0


def axis_limited_rate(max_rates: Vec, start: Vec, end: Vec) -> float:
    """The fastest rate along start -> end with no axis over its maximum (a diagonal is faster)."""
    d = math.dist(start, end)
    fracs = [(abs(b - a) / d if d else 1.0, r) for a, b, r in zip(start, end, max_rates, strict=True)]
    return min(r / f for f, r in fracs if f > 0.0)


class Planner:
    """The planner buffer and the stepper, as seen from outside: segments on a clock."""

    def __init__(self, on_segment: Callable[[Segment], None] | None = None,
                 capacity: int = 15) -> None:
        self.on_segment, self.capacity = on_segment, capacity
        self.pos: Vec = (0.0, 0.0, 0.0)  # where the head is when no segment runs
        self.seg: Segment | None = None
        self.blocks: deque[Block] = deque()  # blocks[0] is the one running (or held)
        self.held = False
        self._timer: asyncio.TimerHandle | None = None
        self._chain_ns = 0  # planned end of the last finished block
        self._changed = asyncio.Event()
        self._idle: list[tuple[asyncio.Future[int], Callable[[], None] | None]] = []  # drain()

    # --- views ---------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Motion is running, held or queued (GRBL's ``plan_get_current_block() != NULL``)."""
        return self.seg is not None or bool(self.blocks)

    @property
    def kind(self) -> str | None:
        return self.blocks[0].kind if self.blocks else None

    def position(self) -> Vec:
        seg = self.seg
        return seg.at(time.monotonic_ns()) if seg is not None else self.pos

    def rate(self) -> float:  # mm/min, now
        seg = self.seg
        return seg.feed_mm_min if seg is not None and seg.t_end_ns > time.monotonic_ns() else 0.0

    # --- feeding -------------------------------------------------------------------------------
    async def add(self, block: Block) -> None:
        """Queue a block, waiting while the buffer is full (the ``ok`` waits with it)."""
        while len(self.blocks) >= self.capacity:
            await self.changed()
        block.queued_ns = time.monotonic_ns()
        self.blocks.append(block)
        self._kick()

    async def drain(self, then: Callable[[], None] | None = None) -> int:
        """Wait until all motion has finished (``protocol_buffer_synchronize``); when (ns).
        ``then`` runs at that very moment, in the timer callback, ahead of other loop work."""
        if not self.busy:
            if then is not None:
                then()
            return time.monotonic_ns()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._idle.append((fut, then))
        return await fut

    async def changed(self) -> None:
        """Wait for the next change (a block finished, the queue was flushed...)."""
        await self._changed.wait()

    # --- real-time control -----------------------------------------------------------------
    def hold(self) -> None:
        """Feed hold: stop at once where the head is; the rest of the block stays queued."""
        self._cut()
        self.held = True
        self._notify()

    def resume(self) -> None:
        """Cycle start after a hold: the remaining blocks run on from here."""
        if self.held:
            self.held = False
            self._chain_ns = time.monotonic_ns()
            self._notify()
            self._kick()

    def stop(self, kinds: tuple[str, ...] | None = None) -> bool:
        """Stop dead and flush the queue (all blocks, or only blocks of ``kinds``); returns
        whether anything was moving or queued."""
        was_busy = self.busy
        if kinds is None or self.kind in kinds:
            self._cut()
        keep = [] if kinds is None else [b for b in self.blocks if b.kind not in kinds]
        self.blocks = deque(keep)
        for fut, _ in self._idle if kinds is None else []:  # a reset: the line gets no reply
            fut.cancel()
        self._idle = [] if kinds is None else self._idle
        self.held = False
        self._chain_ns = time.monotonic_ns()
        self._notify()
        self._kick()
        return was_busy

    # --- executor ----------------------------------------------------------------------------
    def _cut(self) -> None:
        seg = self.seg
        if seg is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = time.monotonic_ns()
        here = seg.at(t)
        self.pos, self.seg = here, None
        self._emit(Segment(here, here, seg.feed_mm_min, t, t, seg.rapid))

    def _kick(self, now_ns: int | None = None) -> None:
        """Start the next block if nothing runs and nothing holds it; else settle drain()s."""
        while self.seg is None and not self.held and self.blocks:
            block = self.blocks[0]
            length = math.dist(self.pos, block.target)
            if length < 1e-9 or block.rate_mm_min <= 0:
                self.blocks.popleft()
                self.pos = block.target if length < 1e-9 else self.pos
                self._notify()
                continue
            t0 = max(self._chain_ns, block.queued_ns)
            t1 = t0 + round(length / block.rate_mm_min * 60e9)
            self.seg = Segment(self.pos, block.target, block.rate_mm_min, t0, t1, block.rapid)
            self._timer = asyncio.get_running_loop().call_at(t1 / 1e9, self._arrive)
            self._emit(self.seg)
        if not self.busy and self._idle:
            idle, self._idle, t = self._idle, [], now_ns or time.monotonic_ns()
            for fut, then in idle:
                if not fut.done():
                    self._call(then or (lambda: None))
                    fut.set_result(t)

    def _arrive(self) -> None:
        seg = self.seg
        self._timer = None
        if seg is None:
            return
        self.pos, self.seg = seg.end, None
        self._chain_ns = seg.t_end_ns
        if self.blocks:
            self.blocks.popleft()
        self._notify()
        self._kick(seg.t_end_ns)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _emit(self, seg: Segment) -> None:
        if self.on_segment is not None:
            self._call(lambda: self.on_segment(seg))  # type: ignore[misc]

    @staticmethod
    def _call(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            log.exception("grbl: a hook failed")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


# --- G-code --------------------------------------------------------------------------------------
LINE_BUFFER = 80  # GRBL's LINE_BUFFER_SIZE: 79 characters and the terminating NUL
G_GROUPS = {0: "motion", 1: "motion", 80: "motion", 4: "nonmodal", 17: "plane", 20: "units",
            21: "units", 54: "coord", 90: "distance", 91: "distance", 94: "feedmode"}
JOG_GROUPS = {20: "units", 21: "units", 53: "g53", 90: "distance", 91: "distance"}
M_GROUPS = {3: "spindle", 4: "spindle", 5: "spindle", 8: "coolant", 9: "coolant"}
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


class GrblError(Exception):
    def __init__(self, code: int) -> None:  # the line's reply is error:<code>
        super().__init__(f"error:{code}")
        self.code = code


class Line(NamedTuple):
    text: str
    overflow: bool


class LineAssembler:
    """GRBL's stream filter: drops whitespace, control characters and comments, upper-cases,
    flags lines over the line buffer; a ``\\n`` or ``\\r`` ends a line."""

    def __init__(self) -> None:
        self._chars: list[str] = []
        self._overflow = self._paren = self._semicolon = False

    def feed(self, data: bytes | bytearray) -> tuple[Line | None, int]:
        """Consume ``data`` up to the first end of line: (the line or None, bytes consumed)."""
        for i, b in enumerate(data):
            if b in (0x0A, 0x0D):
                line = Line("".join(self._chars), self._overflow)
                self._chars, self._overflow, self._paren, self._semicolon = [], False, False, False
                return line, i + 1
            if self._overflow or self._paren or self._semicolon:
                if b == 0x29:
                    self._paren = False
            elif b <= 0x20 or b == 0x2F:  # whitespace, control characters, block delete
                continue
            elif b == 0x28:
                self._paren = True
            elif b == 0x3B:
                self._semicolon = True
            elif len(self._chars) >= LINE_BUFFER - 1:
                self._overflow = True
            else:
                self._chars.append(chr(b).upper())
        return None, len(data)


@dataclass(slots=True)
class GcodeState:
    """The parser's modal state (reset by a soft reset)."""

    motion: int = 0
    units: int = 21
    distance: int = 90
    feed: float = 0.0  # mm/min; 0 = undefined
    position: Vec = (0.0, 0.0, 0.0)  # where the planned motion ends

    def report(self, coolant: bool) -> str:
        return (f"[GC:G{self.motion} G54 G17 G{self.units} G{self.distance} G94 M5 "
                f"{'M8' if coolant else 'M9'} T0 F{self.feed:.0f} S0]")


@dataclass(frozen=True, slots=True)
class GcodeBlock:
    """A validated line, ready to execute."""

    motion: int
    units: int
    distance: int
    feed: float | None = None
    coolant: bool | None = None  # True: M8 (gripper closed)
    spindle_sync: bool = False
    dwell_s: float | None = None
    target: Vec | None = None


def parse_words(line: str) -> list[tuple[str, float]]:
    """``G1X10F500`` -> [("G", 1.0), ("X", 10.0), ("F", 500.0)] (GRBL's ``read_float``)."""
    out: list[tuple[str, float]] = []
    i = 0
    while i < len(line):
        letter = line[i]
        if not "A" <= letter <= "Z":
            raise GrblError(1)
        m = NUMBER.match(line, i + 1)
        if m is None:
            raise GrblError(2)
        out.append((letter, float(m.group())))
        i = m.end()
    return out


def _words(line: str, allowed_values: str, g_table: dict[int, str] = G_GROUPS,
           m_table: dict[int, str] = M_GROUPS, unsupported: int = 20,
           ) -> tuple[dict[str, int], dict[str, float]]:
    groups: dict[str, int] = {}
    values: dict[str, float] = {}
    for letter, v in parse_words(line):
        if letter in "GM":
            table = g_table if letter == "G" else m_table
            code = int(v)
            if code not in table:
                raise GrblError(unsupported)
            if abs(v - code) > 1e-6:
                raise GrblError(23)
            if table[code] in groups:
                raise GrblError(21)
            groups[table[code]] = code
        elif letter in allowed_values:
            if letter in values:
                raise GrblError(25)
            if letter in "FNPST" and v < 0:
                raise GrblError(4)
            values[letter] = v
        else:
            raise GrblError(unsupported)
    if "N" in values and (values["N"] != int(values["N"]) or values["N"] > 9999999):
        raise GrblError(27)
    if "T" in values and values["T"] != int(values["T"]):
        raise GrblError(23)
    return groups, values


def _target(values: dict[str, float], scale: float, relative: bool, base: Vec) -> Vec | None:
    axes = {i: values[k] * scale for i, k in enumerate("XYZ") if k in values}
    if not axes:
        return None
    t = list(base)
    for i, v in axes.items():
        t[i] = t[i] + v if relative else v
    return (t[0], t[1], t[2])


def parse_block(line: str, gc: GcodeState) -> GcodeBlock:
    """Validate one G-code line against the modal state; raises :class:`GrblError`."""
    groups, values = _words(line, "FNPSTXYZ")
    units = groups.get("units", gc.units)
    scale = 25.4 if units == 20 else 1.0
    distance_mode = groups.get("distance", gc.distance)
    motion = groups.get("motion", gc.motion)
    feed = values["F"] * scale if "F" in values else None
    dwell = None
    if groups.get("nonmodal") == 4:
        if "P" not in values:
            raise GrblError(28)
        dwell = values["P"]
    elif "P" in values:
        raise GrblError(36)
    target = _target(values, scale, distance_mode == 91, gc.position)
    if target is not None:
        if motion == 80:
            raise GrblError(31)
        if motion == 1 and (feed if feed is not None else gc.feed) <= 0:
            raise GrblError(22)
    coolant = groups.get("coolant")
    return GcodeBlock(motion, units, distance_mode, feed,
                      None if coolant is None else coolant == 8, "spindle" in groups, dwell,
                      target)


def parse_jog(text: str, gc: GcodeState) -> tuple[Vec, float]:
    """``$J=`` line (after the ``=``) -> (target, feed mm/min); G20/21, G90/91, G53 only."""
    groups, values = _words(text, "FNXYZ", JOG_GROUPS, {}, unsupported=16)
    if values.get("F", 0.0) <= 0:
        raise GrblError(22)
    scale = 25.4 if groups.get("units", gc.units) == 20 else 1.0
    relative = groups.get("distance", gc.distance) == 91 and "g53" not in groups
    target = _target(values, scale, relative, gc.position)
    if target is None:
        raise GrblError(26)
    return target, values["F"] * scale
