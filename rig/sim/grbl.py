"""Virtual GRBL 1.1 card robot: an asyncio TCP server (reached with pyserial ``socket://``).

Serves what :mod:`rig.drivers.robot` speaks, the way GRBL 1.1h does it:

- ``\r\nGrbl 1.1h ['$' for help]\r\n`` on connect (which does not reset the machine: a serial
  bridge without DTR auto-reset) and after a soft reset, then ``[MSG:'$H'|'$X' to unlock]`` in alarm.
- ``\n`` and ``\r`` each end a line (``\r\n`` answers twice, as GRBL does); whitespace, control
  characters and comments are dropped, letters upper-cased, then a line over 79 characters is
  ``error:11``. One ``ok`` / ``error:N`` per line, in order. Bytes arriving while a line executes
  wait in the 127-byte RX buffer; beyond it they are lost: hosts must count characters.
- Real-time bytes act on arrival: ``?`` status (``<Idle|MPos:0.000,0.000,0.000|FS:0,0>``; Idle
  Run Hold:0 Jog Home Alarm), ``!`` feed hold (stops dead, so only ``Hold:0``; lines wait for
  ``~``), ``~`` resume, 0x18 soft reset (``ALARM:3`` if it interrupts motion, ``ALARM:6`` when
  homing; the coolant, i.e. the gripper, opens), 0x85 jog cancel; other bytes >= 0x80 ignored.
- G-code (:mod:`rig.sim.grbl_motion`: constant velocity, no acceleration): G0 G1 G4 G17 G20 G21
  G54 G80 G90 G91 G94, M3-M5 M8 M9, F N P S T X Y Z. A motion line's ``ok`` comes when it enters
  the 15-block planner; G4, M8/M9 (gripper) and M3-M5 wait for all motion first, so ``G4 P0`` is
  the sync. ``$ $$ $I $G $X $H $J= $N=value`` as in GRBL, other ``$``: ``error:3``. Homing
  ($22=1) moves Z to 0, then X and Y, at the $25 seek rate.
- :meth:`GrblServer.alarm` injects an alarm (robot faults); 1 (hard limit) and 2 (soft limit)
  block everything but ``?`` until a soft reset, like the real thing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .grbl_motion import (
    NUMBER,
    Block,
    GcodeState,
    GrblError,
    Line,
    LineAssembler,
    Planner,
    Segment,
    Vec,
    axis_limited_rate,
    parse_block,
    parse_jog,
)
from .wire import Conn, Server, WireStamp

log = logging.getLogger(__name__)

BANNER = "\r\nGrbl 1.1h ['$' for help]\r\n"
RX_BUFFER = 127
UNLOCK_HINT = "[MSG:'$H'|'$X' to unlock]"
HELP = "[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]"
FLOAT_SETTINGS = {11, 12, 24, 25, 27, 100, 101, 102, 110, 111, 112, 120, 121, 122, 130, 131, 132}
RT_STATUS, RT_HOLD, RT_RESUME, RT_RESET, RT_JOG_CANCEL = 0x3F, 0x21, 0x7E, 0x18, 0x85


class _Session:
    """One client: its line assembler, the line being executed and the RX buffer behind it.

    While no line executes, bytes go straight through the assembler (GRBL's main loop keeps
    up with the serial line); while one executes, they wait in ``rx`` (127 bytes, then lost),
    each with the kernel's receive stamp of the read that brought it, so a line carries the
    stamp of its end-of-line byte.
    """

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.clear()

    def clear(self) -> None:
        self.rx = bytearray()
        self.rx_stamps: list[WireStamp] = []  # one per byte of rx
        self.lines = LineAssembler()
        self.ready: Line | None = None  # a complete line for the processor
        self.ready_rx: WireStamp | None = None  # when its last byte arrived
        self.more = asyncio.Event()

    def send(self, text: str, raw: bool = False) -> None:
        if not self.conn.closed:
            self.conn.write(text.encode() if raw else text.encode() + b"\r\n")


class GrblServer:
    """A GRBL 1.1h controller with a card gripper on the coolant output (M8 close, M9 open).

    Hooks run in the event loop: ``on_segment(Segment)`` when a move starts and again
    (zero-length) when one is cut short; ``on_gripper(closed, pos)`` when M8/M9 executes (after
    the motion before it) or a reset opens the gripper; ``on_alarm(code)``; ``on_line(text, rx)``
    when a (non-empty) line starts executing, with the kernel's receive stamp of its last byte. With
    ``require_homing`` it starts in Alarm (homing lock), otherwise Idle at (0, 0, 0).
    """

    def __init__(self, max_feed_mm_min: float = 60000,
                 on_segment: Callable[[Segment], None] | None = None,
                 on_gripper: Callable[[bool, Vec], None] | None = None,
                 on_alarm: Callable[[int], None] | None = None, *,
                 on_line: Callable[[str, WireStamp], None] | None = None,
                 require_homing: bool = False, homing_feed_mm_min: float | None = None,
                 rx_buffer: int = RX_BUFFER) -> None:
        self.on_gripper, self.on_alarm, self.on_line, self.rx_buffer = on_gripper, on_alarm, on_line, rx_buffer
        self.settings: dict[int, float] = {
            0: 10, 1: 25, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 10: 1, 11: 0.010, 12: 0.002, 13: 0,
            20: 0, 21: 0, 22: 1, 23: 0, 24: 25.0, 25: homing_feed_mm_min or max_feed_mm_min / 10,
            26: 250, 27: 1.0, 30: 1000, 31: 0, 32: 0, 100: 80.0, 101: 80.0, 102: 80.0,
            110: max_feed_mm_min, 111: max_feed_mm_min, 112: max_feed_mm_min,
            120: 1000.0, 121: 1000.0, 122: 1000.0, 130: 1000.0, 131: 1000.0, 132: 200.0}
        self.planner = Planner(on_segment)
        self.gc = GcodeState()
        self.gripper_closed = False
        self.alarm_code: int | None = 0 if require_homing else None  # 0: homing lock
        self._critical = self._homing = False  # critical: hard/soft limit, only a reset gets out
        self._server: Server | None = None
        self._sessions: set[_Session] = set()

    # --- public --------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("GrblServer is not started")
        return self._server.port

    def position(self) -> Vec:
        """Machine position now (interpolated along the running segment)."""
        return self.planner.position()

    @property
    def state(self) -> str:
        if self.alarm_code is not None:
            return "Alarm"
        if self._homing:
            return "Home"
        if self.planner.held:
            return "Hold:0"
        if self.planner.busy:
            return "Jog" if self.planner.kind == "jog" else "Run"
        return "Idle"

    def status_report(self) -> str:
        x, y, z = (round(v, 3) + 0.0 for v in self.position())
        return f"<{self.state}|MPos:{x:.3f},{y:.3f},{z:.3f}|FS:{self.planner.rate():.0f},0>"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0: a free one, read ``.port``)."""
        server = Server("GRBL sim", self._client)
        await server.start(host, port)
        self._server = server
        log.info("GRBL sim listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        """Stop listening, drop every client, stop the motion timers."""
        for s in list(self._sessions):
            if s.task is not None:
                s.task.cancel()
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self.planner.close()

    def reset(self) -> None:
        """Soft reset (0x18), as if sent by a client."""
        moving = self.planner.busy or self._homing
        code = 6 if self._homing else 3
        self._abort(code if moving and self.alarm_code is None else None)

    def alarm(self, code: int) -> None:
        """Raise ``ALARM:code`` now (a fault): motion stops; 1 and 2 then wait for a reset."""
        if code in (1, 2):
            self._stop_everything()
            self._raise_alarm(code)
            self._critical = True
            self._broadcast("[MSG:Reset to continue]")
        else:
            self._abort(code)

    # --- connection and real-time bytes --------------------------------------------------------
    async def _client(self, conn: Conn) -> None:
        s = _Session(conn)
        self._sessions.add(s)
        s.send(BANNER, raw=True)
        if self.alarm_code is not None:
            s.send(UNLOCK_HINT)
        s.task = asyncio.create_task(self._process(s))
        try:
            while True:
                chunk, rx = await conn.read(4096)
                if not chunk:
                    break
                assert rx is not None
                for b in chunk:
                    if b >= 0x80 or b in (RT_STATUS, RT_HOLD, RT_RESUME, RT_RESET):
                        self._realtime(b, s)
                    elif self._receive(s, b, rx):
                        await asyncio.sleep(0)  # the line runs now unless it has to wait
                if s.dropped:
                    log.warning("grbl: RX buffer full, %d bytes lost (host not counting?)", s.dropped)
                    s.dropped = 0
        except (ConnectionError, OSError):
            pass
        finally:
            self._sessions.discard(s)
            if s.task is not None:
                s.task.cancel()
            conn.close()

    def _realtime(self, b: int, s: _Session) -> None:
        if b == RT_STATUS:
            s.send(self.status_report())
        elif b == RT_RESET:
            self.reset()
        elif self._critical or self.alarm_code is not None or self._homing:
            return
        elif b == RT_HOLD:
            if self.planner.kind == "jog":
                self._cancel_jog()
            else:
                self.planner.hold()
        elif b == RT_RESUME:
            self.planner.resume()
        elif b == RT_JOG_CANCEL and self.planner.kind == "jog":
            self._cancel_jog()

    def _cancel_jog(self) -> None:
        self.planner.stop(kinds=("jog",))
        self.gc.position = self.planner.position()

    # --- alarms and resets -------------------------------------------------------------------
    def _stop_everything(self) -> None:
        self.planner.stop()
        self._homing = False
        for s in self._sessions:  # the line in execution gets no reply; unread bytes are lost
            s.clear()
            if s.task is not None:
                s.task.cancel()
            s.task = asyncio.get_running_loop().create_task(self._process(s))

    def _raise_alarm(self, code: int) -> None:
        self.alarm_code = code
        self._broadcast(f"ALARM:{code}")
        if self.on_alarm is not None:
            try:
                self.on_alarm(code)
            except Exception:
                log.exception("grbl: on_alarm hook failed")

    def _abort(self, code: int | None) -> None:
        """A system abort: stop, report the alarm (if any), re-initialise, print the banner."""
        self._stop_everything()
        if code is not None:
            self._raise_alarm(code)
        self._critical = False
        self._set_gripper(False)  # coolant_stop() on reset
        self.gc = GcodeState(position=self.planner.position())
        self._broadcast(BANNER, raw=True)
        if self.alarm_code is not None:
            self._broadcast(UNLOCK_HINT)

    def _broadcast(self, text: str, raw: bool = False) -> None:
        for s in list(self._sessions):
            s.send(text, raw)

    def _set_gripper(self, closed: bool) -> None:
        if closed == self.gripper_closed:
            return
        self.gripper_closed = closed
        if self.on_gripper is not None:
            try:
                self.on_gripper(closed, self.planner.position())
            except Exception:
                log.exception("grbl: on_gripper hook failed")

    # --- lines -------------------------------------------------------------------------------
    def _receive(self, s: _Session, b: int, rx: WireStamp) -> bool:
        """A byte that is no real-time command: to the assembler (True: a line is complete),
        or, while a line executes, into the RX buffer."""
        if s.ready is None and not s.rx:
            s.ready = s.lines.feed(bytes((b,)))[0]
            if s.ready is not None:
                s.ready_rx = rx
                s.more.set()
            return s.ready is not None
        if len(s.rx) < self.rx_buffer:
            s.rx.append(b)
            s.rx_stamps.append(rx)
        else:
            s.dropped += 1
        return False

    async def _process(self, s: _Session) -> None:
        """Execute each line as GRBL's main loop does, then the lines waiting in ``rx``."""
        while True:
            if s.ready is None:
                s.more.clear()
                await s.more.wait()
                continue
            while self._critical or self.planner.held:  # protocol_exec_rt_suspend()
                await self.planner.changed()
            if s.ready.text and self.on_line is not None and s.ready_rx is not None:
                try:
                    self.on_line(s.ready.text, s.ready_rx)
                except Exception:
                    log.exception("grbl: on_line hook failed")
            try:
                if s.ready.overflow:
                    raise GrblError(11)
                if not await self._execute(s.ready.text, s):
                    s.send("ok")
            except GrblError as e:
                s.send(f"error:{e.code}")
            except Exception:  # a bug of the sim: say so, answer, keep serving
                log.exception("grbl: %r crashed the sim", s.ready.text)
                s.send("error:20")
            s.ready = s.ready_rx = None
            while s.rx and s.ready is None:
                s.ready, used = s.lines.feed(s.rx)
                s.ready_rx = s.rx_stamps[used - 1]
                del s.rx[:used]
                del s.rx_stamps[:used]

    async def _execute(self, line: str, s: _Session) -> bool:
        """Run one line; True when it already answered ``ok`` itself."""
        if line[:1] == "$":
            await self._system(line[1:], s)
        elif line and (self.alarm_code is not None or self.planner.kind == "jog"):
            raise GrblError(9)
        elif line:
            return await self._gcode(line, s)
        return False

    async def _gcode(self, line: str, s: _Session) -> bool:
        blk = parse_block(line, self.gc)  # validates everything before anything happens
        gc = self.gc
        gc.units, gc.distance, gc.motion = blk.units, blk.distance, blk.motion
        gc.feed = gc.feed if blk.feed is None else blk.feed
        if blk.spindle_sync:
            await self.planner.drain()
        if blk.coolant is not None and blk.coolant != self.gripper_closed:
            await self.planner.drain(lambda: self._set_gripper(bool(blk.coolant)))
        if blk.dwell_s == 0 and blk.target is None:  # the sync: answer the instant motion ends
            await self.planner.drain(lambda: s.send("ok"))
            return True
        if blk.dwell_s is not None:
            done_ns = await self.planner.drain()
            await asyncio.sleep(max(0.0, done_ns / 1e9 + blk.dwell_s - time.monotonic()))
        if blk.target is not None:
            await self._move(blk.target, gc.feed, rapid=blk.motion == 0, kind="gcode")
        return False

    async def _move(self, target: Vec, feed: float, rapid: bool, kind: str) -> None:
        start = self.gc.position
        limit = axis_limited_rate(self._max_rates(), start, target)
        await self.planner.add(Block(target, limit if rapid else min(feed, limit), rapid, kind))
        self.gc.position = target

    def _max_rates(self) -> Vec:
        return (max(self.settings[110], 1.0), max(self.settings[111], 1.0),
                max(self.settings[112], 1.0))

    # --- $ commands --------------------------------------------------------------------------
    async def _system(self, cmd: str, s: _Session) -> None:
        if cmd.startswith("J="):
            if self.state not in ("Idle", "Jog"):
                raise GrblError(8)
            await self._move(*parse_jog(cmd[2:], self.gc), rapid=False, kind="jog")
        elif cmd in ("", "G"):
            s.send(HELP if cmd == "" else self.gc.report(self.gripper_closed))
        elif self.state not in ("Idle", "Alarm"):
            raise GrblError(8)
        elif cmd == "$":
            for n, v in self.settings.items():
                s.send(f"${n}={v:.3f}" if n in FLOAT_SETTINGS else f"${n}={int(v)}")
        elif cmd == "I":
            s.send("[VER:1.1h.20190830:]")
            s.send(f"[OPT:V,{self.planner.capacity},{self.rx_buffer + 1}]")
        elif cmd == "X":
            if self.alarm_code is not None:
                s.send("[MSG:Caution: Unlocked]")
                self.alarm_code = None
        elif cmd == "H":
            if not self.settings[22]:
                raise GrblError(5)
            await self._home()
        elif "=" in cmd:
            self._write_setting(*cmd.split("=", 1))
        else:
            raise GrblError(3)

    def _write_setting(self, key: str, value: str) -> None:
        if not key.isdigit() or int(key) not in self.settings:
            raise GrblError(3)
        if not NUMBER.fullmatch(value):
            raise GrblError(2)
        if float(value) < 0:
            raise GrblError(4)
        self.settings[int(key)] = float(value)

    async def _home(self) -> None:
        """Z up to 0 first, then X and Y to 0, at the homing seek rate ($25)."""
        self._homing = True
        self.alarm_code = None
        rate = max(self.settings[25], 1.0)
        x, y, _ = self.planner.position()
        await self.planner.add(Block((x, y, 0.0), rate, False, "home"))
        await self.planner.add(Block((0.0, 0.0, 0.0), rate, False, "home"))
        await self.planner.drain()
        self._homing = False
        self.gc.position = (0.0, 0.0, 0.0)

