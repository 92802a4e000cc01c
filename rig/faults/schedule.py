"""When a fault is on: windows tied to the terminal's phases, or offsets from power-on.

A fault armed with a window is switched on at its phase's start event and off at its end
event, every time the phase occurs while the window stays armed:

=========  =============================  ===============================================
phase      on at                          off at
=========  =============================  ===============================================
signon     ``POWER_ON``                   ``READY``, sign-on give-up, ``POWER_OFF``
sale       ``SALE_START`` (console)       ``AUTH_RESULT``
auth       ``CARD_PRESENTED`` (robot)     ``AUTH_RESULT``
cycle      the cycle's start              the cycle's end
=========  =============================  ===============================================

``at_s`` delays the on edge from the phase start (from ``POWER_ON`` when no phase is given);
``for_s`` ends the fault that long after its on edge, or at the phase end if that comes first.
A fault with only ``for_s`` (or no window at all) goes on at once. Edges are applied in
order by one worker thread, so a slow change (a PSU transient, an nftables call) never holds
up the thread that recorded the triggering event; each edge's ``FAULT_ON`` / ``FAULT_OFF`` names
the event that triggered it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import InfrastructureError
from ..timeline.events import Event, EventKind
from . import spec
from .inject import Active, Injector

log = logging.getLogger(__name__)

class FaultError(InfrastructureError):
    """A fault could not be switched on (the world is unchanged)."""


STARTS: dict[str, set[EventKind]] = {
    "signon": {EventKind.POWER_ON},
    "sale": {EventKind.SALE_START},
    "auth": {EventKind.CARD_PRESENTED},
    "cycle": {EventKind.CYCLE_START},
}
ENDS: dict[str, set[EventKind]] = {
    "signon": {EventKind.READY, EventKind.POWER_OFF},
    "sale": {EventKind.AUTH_RESULT},
    "auth": {EventKind.AUTH_RESULT},
    "cycle": {EventKind.CYCLE_END},
}


def is_giveup(ev: Event) -> bool:
    return ev.kind == EventKind.SIGNON_FAIL and "giveup" in str(ev.data.get("line", ""))


@dataclass
class Armed:
    """One fault armed for a terminal; ``occurrences`` lists the on/off pairs it produced."""

    id: int
    terminal: str
    fault: spec.Fault
    current: Active | None = None
    generation: int = 0  # bumps at every phase start / end: stale timers do nothing
    occurrences: list[Active] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disarmed: bool = False
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_off(self, timeout_s: float) -> Active | None:
        """Wait for the first occurrence to be on and off again; its Active (None on time-out)."""
        end = time.monotonic() + timeout_s
        with self.changed:
            while True:
                done = next((a for a in self.occurrences if a.done), None)
                if done is not None or self.errors:
                    return done
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(min(left, 0.1))


class Windows:
    """Arms faults with windows and applies their edges (one worker thread)."""

    def __init__(self, injector: Injector) -> None:
        self.injector = injector
        self._lock = threading.Condition()
        self._armed: dict[int, Armed] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="fault-windows", daemon=True)
        self._worker.start()

    # --- arming ---------------------------------------------------------------------------------
    def arm(self, terminal: str, fault: spec.Fault) -> Armed:
        """Arm ``fault`` on ``terminal``; checks it can act here first (nothing changes if not)."""
        self.injector.check(terminal, fault)
        a = Armed(next(self._ids), terminal, fault)
        with self._lock:
            self._armed[a.id] = a
        if fault.during is None and fault.at_s is None:  # on now: return once it is
            self._start(a, {"trigger": "armed"}, time.monotonic_ns())
            with a.changed:
                a.changed.wait_for(lambda: a.occurrences or a.errors, 60.0)
            if a.errors:
                self.disarm(a, "failed to switch on")
                raise FaultError(f"{terminal}: {fault.label()} could not be switched on: "
                                 f"{a.errors[0]}")
        return a

    def disarm(self, a: Armed, reason: str = "released") -> None:
        """Stop arming ``a``; its fault goes off now if on. Returns after the off edge."""
        with self._lock:
            a.disarmed = True
            self._armed.pop(a.id, None)
        done = threading.Event()

        def off() -> None:
            try:
                self._off(a, reason)
            finally:
                done.set()

        self._at(time.monotonic_ns(), off)
        done.wait(60.0)

    def close(self) -> None:
        with self._lock:
            armed = list(self._armed.values())
        for a in armed:
            self.disarm(a, "rig closing")
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join(5.0)

    # --- edges --------------------------------------------------------------------------------
    def on_event(self, ev: Event) -> None:
        """Recorder listener: phase starts and ends of armed terminals."""
        if ev.terminal is None or ev.kind in (EventKind.FAULT_ON, EventKind.FAULT_OFF):
            return
        with self._lock:
            armed = [a for a in self._armed.values() if a.terminal == ev.terminal]
        for a in armed:
            f = a.fault
            trig = {"trigger": str(ev.kind), "trigger_mono_ns": ev.mono_ns}
            phase = f.during
            if phase is None:  # at_s without a phase: from each power-on, no phase end
                if f.at_s is not None and ev.kind == EventKind.POWER_ON:
                    self._start(a, trig, ev.mono_ns)
                continue
            if ev.kind in STARTS[phase]:
                self._start(a, trig, ev.mono_ns)
            elif ev.kind in ENDS[phase] or (phase == "signon" and is_giveup(ev)):
                self._end(a, trig)

    def cycle_edge(self, terminal: str, start: bool) -> None:
        """The rig opened (``start``) or closed a cycle of ``terminal``."""
        kind = EventKind.CYCLE_START if start else EventKind.CYCLE_END
        self.on_event(Event.now(kind, "rig", terminal))

    def _start(self, a: Armed, trig: dict[str, Any], anchor_ns: int) -> None:
        with self._lock:
            a.generation += 1
            gen = a.generation
        f = a.fault
        due = anchor_ns + int((f.at_s or 0.0) * 1e9)

        def on() -> None:
            if a.generation != gen or a.disarmed or a.current is not None:
                return
            try:
                act = self.injector.on(a.terminal, f, trig)
            except Exception as e:
                log.error("%s: could not switch %s on: %s", a.terminal, f.label(), e)
                with a.changed:
                    a.errors.append(str(e))
                    a.changed.notify_all()
                return
            with a.changed:
                a.current = act
                a.occurrences.append(act)
                a.changed.notify_all()
            if f.for_s is not None:
                self._at(act.since.mono_ns + int(f.for_s * 1e9),
                         lambda: self._off(a, "for_s elapsed", only=act))

        self._at(due, on)

    def _end(self, a: Armed, trig: dict[str, Any]) -> None:
        with self._lock:
            a.generation += 1
        self._at(time.monotonic_ns(), lambda: self._off(a, f"phase end ({trig['trigger']})"))

    def _off(self, a: Armed, reason: str, only: Active | None = None) -> None:
        act = a.current
        if act is None or (only is not None and act is not only):
            return
        a.current = None
        act.off(reason)
        with a.changed:
            a.changed.notify_all()

    # --- the worker -----------------------------------------------------------------------------
    def _at(self, due_ns: int, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._heap, (due_ns, next(self._seq), fn))
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._closed and not self._heap:
                        return
                    if self._heap:
                        wait = (self._heap[0][0] - time.monotonic_ns()) / 1e9
                        if wait <= 0:
                            _, _, fn = heapq.heappop(self._heap)
                            break
                        self._lock.wait(min(wait, 0.5))
                    else:
                        self._lock.wait(0.5)
            try:
                fn()
            except Exception:  # one bad edge must not stop the others
                log.exception("fault window edge failed")
