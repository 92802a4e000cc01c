"""Recovery: inject a fault during one phase, then time how the terminal comes back.

``recover_s`` is fault off (its ``FAULT_OFF`` stamp) → the next successful sign-on (``READY``)
or the next approved sale (its ``AUTH_RESULT``). When the terminal gave up while the fault
was on, the rig applies the field's remedy — sign on again over ECR (``SIGNON``), or for a sale
a fresh sale after making the terminal ready — and says so in ``remedy``. A fault that never
went off, or a terminal that never came back within ``timeout_s``, gives ``recovered=False``
and no ``recover_s``, never a guessed number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import TerminalError, TestError
from ..faults.schedule import is_giveup
from ..faults.spec import Fault
from ..timeline.events import Event, EventKind
from .signon import wait_ready

# Procedures take the session (rig.control.session.Session) duck-typed: it calls them, so
# this module never imports it back.
Rig = Any

RECOVERY_PHASES = ("signon", "sale")


@dataclass(frozen=True)
class Recovery:
    terminal: str
    fault: str
    during: str
    recovered: bool
    recover_s: float | None = None
    attempts: int = 0  # sign-on attempts the terminal reported (console), or sales tried
    host_requests: int = 0  # 0800s (signon) the host received while recovering
    fault_on_s: float | None = None  # after the cycle's power-on (signon) / the sale's start
    fault_held_s: float | None = None
    remedy: str | None = None
    cycle: int | None = None
    first_outcome: str | None = None  # the sale under the fault (during="sale")
    first_rc: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Watch:
    """Every event of one terminal from now on, with a condition to wait on."""

    def __init__(self, rig: Rig, terminal: str) -> None:
        self.rig, self.terminal = rig, terminal
        self.events: list[Event] = []
        self.cond = threading.Condition()
        rig.hw.recorder.add_listener(self._on)

    def _on(self, ev: Event) -> None:
        if ev.terminal == self.terminal:
            with self.cond:
                self.events.append(ev)
                self.cond.notify_all()

    def close(self) -> None:
        self.rig.hw.recorder.remove_listener(self._on)

    def first(self, pred: Callable[[Event], bool], after_ns: int = 0) -> Event | None:
        with self.cond:
            return next((e for e in self.events if e.mono_ns >= after_ns and pred(e)), None)

    def wait(self, pred: Callable[[Event], bool], timeout_s: float, after_ns: int = 0) -> Event | None:
        end = time.monotonic() + timeout_s
        with self.cond:
            while True:
                ev = next((e for e in self.events if e.mono_ns >= after_ns and pred(e)), None)
                if ev is not None:
                    return ev
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.1))


def signon_attempts(events: list[Event], after_ns: int = 0) -> int:
    """Sign-on attempts the terminal reported (each ok or failed attempt, not the give-up)."""
    return sum(1 for e in events if e.mono_ns >= after_ns and (
        e.kind == EventKind.SIGNON_OK or (e.kind == EventKind.SIGNON_FAIL and not is_giveup(e))))


def _kind(*kinds: EventKind) -> Callable[[Event], bool]:
    return lambda e: e.kind in kinds


def run_recovery(rig: Rig, terminal: str, fault: Fault | list[Fault], *, during: str,
                 timeout_s: float, watch: Watch | None = None, **sale: Any) -> Recovery:
    """Recovery from one fault (or several held together) during ``during``."""
    if during not in RECOVERY_PHASES:
        raise TestError(f"recovery during {during!r}: choose one of {', '.join(RECOVERY_PHASES)}")
    faults = fault if isinstance(fault, list) else [fault]
    for f in faults:
        if not isinstance(f, Fault):
            raise TestError(f"{f!r} is not a fault; use the classes of rig.faults")
    # robot faults change how the rig presents the card, read when it does: on for the call
    windowed = [f if f.during is not None or f.layer == "robot"
                else f.model_copy(update={"during": during}) for f in faults]
    own = watch is None
    w = watch or Watch(rig, terminal)
    try:
        if during == "signon":
            return _signon(rig, terminal, windowed, w, timeout_s)
        return _sale(rig, terminal, windowed, w, timeout_s, sale)
    finally:
        if own:
            w.close()


def _off_event(watch: Watch, fault_id: str | None, timeout_s: float) -> Event | None:
    if fault_id is None:
        return None
    return watch.wait(lambda e: e.kind == EventKind.FAULT_OFF and e.data.get("id") == fault_id,
                      timeout_s)


def _label(faults: list[Fault]) -> str:
    return " + ".join(f.label() for f in faults)


def _last_off(watch: Watch, armed: list[Any], timeout_s: float) -> Event | None:
    """The latest FAULT_OFF of the first occurrence of every armed fault (None if one never
    went off)."""
    offs = []
    for a in armed:
        occ = a.wait_off(timeout_s)
        off = _off_event(watch, occ.id if occ else None, 5.0)
        if off is None:
            return None
        offs.append(off)
    return max(offs, key=lambda e: e.mono_ns) if offs else None


def _signon(rig: Rig, terminal: str, faults: list[Fault], watch: Watch,
            timeout_s: float) -> Recovery:
    track = rig.cycle(terminal)
    base = {"terminal": terminal, "fault": _label(faults), "during": "signon"}
    with rig.fault(terminal, *faults) as armed:
        cycle = rig.power_cycle(terminal)
        try:
            wait_ready(rig.hw, track, timeout_s)
            off = _last_off(watch, armed, timeout_s)
        except BaseException as e:
            rig.cycle(terminal).finish("aborted", error=str(e) or type(e).__name__)
            raise
    on = watch.first(_kind(EventKind.POWER_ON))
    fon = watch.first(lambda e: e.kind == EventKind.FAULT_ON)
    remedy = None
    ready = None
    if off is not None:
        ready = watch.first(_kind(EventKind.READY), after_ns=on.mono_ns if on else 0)
        if ready is None and watch.first(is_giveup, after_ns=on.mono_ns if on else 0):
            remedy = "signon"  # the terminal stopped trying: the operator signs on again
            try:
                if terminal in rig.hw.ecrs:
                    rig.hw.ecrs[terminal].command("SIGNON")
            except TerminalError as e:
                remedy = f"signon refused: {e}"
        if ready is None:
            ready = watch.wait(_kind(EventKind.READY), timeout_s, after_ns=off.mono_ns)
    attempts = signon_attempts(watch.events)
    host_requests = sum(1 for e in watch.events if e.kind == EventKind.SIGNON_REQ)
    error = None
    if off is None:
        error = f"{base['fault']} did not go off within {timeout_s:.0f} s"
    elif ready is None:
        error = f"no READY within {timeout_s:.0f} s after the fault went off"
    rec = Recovery(
        **base, recovered=error is None,
        recover_s=max(0.0, (ready.mono_ns - off.mono_ns) / 1e9) if ready and off else None,
        attempts=attempts, host_requests=host_requests,
        fault_on_s=(fon.mono_ns - on.mono_ns) / 1e9 if fon and on else None,
        fault_held_s=(off.mono_ns - fon.mono_ns) / 1e9 if off and fon else None,
        remedy=remedy, cycle=cycle, error=error)
    rig.cycle(terminal).finish("completed", error=error,
                extra={"recover_s": rec.recover_s, "recovery": rec.as_dict()})
    return rec


def settle(rig: Rig, terminal: str, timeout_s: float = 10.0) -> str | None:
    """Wait until the terminal is neither booting nor signing on (STATUS over ECR)."""
    ecr = rig.hw.ecrs.get(terminal)
    if ecr is None:
        return None
    end = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < end:
        try:
            state = ecr.command("STATUS").split()[0]
        except (TerminalError, IndexError):
            state = None
        if state not in ("BOOTING", "SIGNON", "LOGIN", None):
            return state
        time.sleep(0.05)
    return state


def _sale(rig: Rig, terminal: str, faults: list[Fault], watch: Watch, timeout_s: float,
          sale: dict[str, Any], max_sales: int = 4) -> Recovery:
    base = {"terminal": terminal, "fault": _label(faults), "during": "sale"}
    rig.ensure_ready(terminal, timeout_s=timeout_s)
    t0 = time.monotonic_ns()
    with rig.fault(terminal, *faults) as armed:
        first = rig.sale(terminal, **sale)
    off = _last_off(watch, armed, 10.0)  # a fault without a window went off with the block
    fon = watch.first(lambda e: e.kind == EventKind.FAULT_ON, after_ns=t0)
    sales, remedy, ok = 1, None, None
    if first.outcome == "approved" and off is not None:
        ok = watch.first(lambda e: e.kind == EventKind.AUTH_RESULT and "approved" in
                         str(e.data.get("line", "")), after_ns=t0)
    deadline = time.monotonic() + timeout_s
    while ok is None and off is not None and sales < max_sales and time.monotonic() < deadline:
        settle(rig, terminal)
        try:
            if rig.ensure_ready(terminal, timeout_s=timeout_s) is not None:
                remedy = "restart and sign on"
        except TerminalError as e:
            remedy = f"restart failed: {e}"
            break
        r = rig.sale(terminal)
        sales += 1
        if r.outcome == "approved":
            ok = watch.first(lambda e: e.kind == EventKind.AUTH_RESULT and "approved" in
                             str(e.data.get("line", "")), after_ns=off.mono_ns)
    error = None
    if off is None:
        error = f"{base['fault']} did not go off"
    elif ok is None:
        error = f"no approved sale in {sales} tries after the fault went off"
    return Recovery(
        **base, recovered=error is None,
        recover_s=max(0.0, (ok.mono_ns - off.mono_ns) / 1e9) if ok and off else None,
        attempts=sales, fault_on_s=(fon.mono_ns - t0) / 1e9 if fon else None,
        fault_held_s=(off.mono_ns - fon.mono_ns) / 1e9 if off and fon else None,
        remedy=remedy, cycle=first.cycle, first_outcome=first.outcome, first_rc=first.rc,
        error=error)
