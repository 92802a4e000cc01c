"""Power and sign-on procedures on one terminal: power on / off / cycle, wait for READY
(logging the operator in over ECR when the terminal asks), ensure ready."""

from __future__ import annotations

from ..analysis.metrics import SignOn
from ..core.clock import Deadline
from ..core.errors import InfrastructureError, TerminalError, TestError
from ..faults.schedule import is_giveup
from ..timeline.events import EventKind
from .cycles import TerminalCycle
from .hardware import Hardware


def power_on(hw: Hardware, tc: TerminalCycle, run_id: int, owner: str | None = None) -> int:
    """Switch on. Opens a new cycle unless ``power_cycle`` already did; returns its id."""
    fresh = tc.open and not tc.has(EventKind.POWER_ON)
    cycle = tc.cycle_id if fresh else tc.begin(run_id, "signon", owner)
    assert cycle is not None
    try:
        hw.switch(tc.terminal, True)
    except BaseException as e:
        tc.abort(e)
        raise
    return cycle


def power_off(hw: Hardware, tc: TerminalCycle) -> None:
    """Switch off (the open cycle, if any, ends)."""
    tc.finish("completed")
    hw.switch(tc.terminal, False)


def power_cycle(hw: Hardware, tc: TerminalCycle, run_id: int, off_s: float | None = None,
                owner: str | None = None) -> int:
    """Off, wait ``off_s`` (config default), on: one cycle from the off edge; returns its id."""
    tc.begin(run_id, "signon", owner)
    try:
        hw.switch(tc.terminal, False)
        tc.sleep(hw.cfg.terminals[tc.terminal].power.off_s if off_s is None else off_s)
    except BaseException as e:
        tc.abort(e)
        raise
    return power_on(hw, tc, run_id, owner)


CONSOLE_GRACE_S = 2.0  # a console port that dropped gets this long to come back


def check_console(hw: Hardware, terminal: str) -> None:
    """A terminal whose console is configured but not connected cannot be timed: say so
    (an infrastructure error of this terminal), rather than report figures without it."""
    reader = hw.consoles.get(terminal)
    if reader is None or reader.connected:
        return
    if not reader.wait_connected(CONSOLE_GRACE_S):
        raise InfrastructureError(f"{terminal}: its console {reader.url} is not connected; "
                                  f"is the cable or the terminal server port right?")


def wait_ready(hw: Hardware, tc: TerminalCycle, timeout_s: float) -> str | None:
    """Wait for READY (or the terminal giving up); log in over ECR when it asks. Returns an
    error text on time-out, None otherwise."""
    check_console(hw, tc.terminal)
    deadline = Deadline(timeout_s)
    logged_in = hw.cfg.terminals[tc.terminal].auto_login
    error = None
    while True:
        with tc.cond:
            kinds = {e.kind for e in tc.events}
            giveup = any(is_giveup(e) for e in tc.events)
            if EventKind.READY in kinds or giveup:
                break
            if deadline.expired:
                error = f"no READY within {timeout_s:.1f} s"
                break
            need_login = not logged_in and EventKind.BOOT_DONE in kinds
            if not need_login:
                tc.cond.wait(min(0.1, deadline.remaining()))
        tc.check_cancel()
        if need_login:
            login(hw, tc.terminal)
            logged_in = True
    if error is None:  # the host records its response a moment after the terminal got it
        tc.wait_event({EventKind.SIGNON_RSP}, 1.0)
    return error


def wait_signon(hw: Hardware, tc: TerminalCycle, timeout_s: float = 60.0) -> SignOn:
    """Wait until READY / give-up / time-out and end the cycle with its figures."""
    if not tc.open:
        raise TestError(f"{tc.terminal}: no open cycle; call power_on/power_cycle first")
    try:
        error = wait_ready(hw, tc, timeout_s)
    except BaseException as e:
        tc.abort(e)
        raise
    return tc.finish("completed", error=error)


def ensure_ready(hw: Hardware, tc: TerminalCycle, run_id: int, timeout_s: float = 60.0,
                 owner: str | None = None) -> SignOn | None:
    """Power-cycle and sign on unless the terminal's ECR says READY already."""
    ecr = hw.ecrs.get(tc.terminal)
    if ecr is not None:
        try:
            if ecr.command("STATUS").split()[:1] == ["READY"]:
                return None
        except TerminalError:
            pass
    power_cycle(hw, tc, run_id, owner=owner)
    s = wait_signon(hw, tc, timeout_s)
    if not s.ok:
        raise TerminalError(f"{tc.terminal}: did not sign on: {s.error}")
    return s


def login(hw: Hardware, terminal: str) -> None:
    """``LOGIN <op> <pwd>`` over ECR; the password never reaches an event."""
    ecr = hw.ecrs.get(terminal)
    if ecr is None:
        raise TerminalError(f"{terminal}: needs an operator login but has no ECR port configured")
    op = hw.cfg.terminals[terminal].operator
    ecr.command(f"LOGIN {op.id} {op.password}", secret=op.password)
