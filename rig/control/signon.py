"""Power and sign-on procedures on one terminal: power on / off / cycle, wait for READY
(logging the operator in over ECR when the terminal asks), ensure ready.

A terminal whose console cannot show READY (no console, or its profile cannot report it) is
timed from the host side: sign-on is the host's ``0810`` with rc=00 (a SIGNON_OK event from
``<T>.host``, stamped with the 0810's), READY is the first ECR ``STATUS`` answering READY
(``<T>.ecr``, polled every :data:`STATUS_POLL_S`) or, without ECR, the profile's
``ready_after_0810_ms`` after the 0810 (``<T>.estimate``, clock ``derived``). Each such event
says ``via`` what it came from; the figures name the source (``ready_src``)."""

from __future__ import annotations

import time

from ..analysis.metrics import SignOn
from ..core.clock import ClockSource, Deadline
from ..core.errors import InfrastructureError, TerminalError, TestError
from ..drivers.profiles import get_profile
from ..faults.schedule import is_giveup
from ..timeline.events import Event, EventKind
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


STATUS_POLL_S = 0.05  # ECR STATUS polling for READY on a terminal whose console cannot show it


def console_shows(hw: Hardware, terminal: str, event: str) -> bool:
    """Whether ``terminal``'s console is read and its profile has a pattern for ``event``."""
    return terminal in hw.consoles and event in get_profile(
        hw.cfg.models[hw.cfg.terminals[terminal].model].profile).console


def wait_ready(hw: Hardware, tc: TerminalCycle, timeout_s: float) -> str | None:
    """Wait for READY (or the terminal giving up); log in over ECR when it asks. Returns an
    error text on time-out, None otherwise."""
    check_console(hw, tc.terminal)
    deadline = Deadline(timeout_s)
    logged_in = hw.cfg.terminals[tc.terminal].auto_login
    ready_on_console = console_shows(hw, tc.terminal, "ready")
    # no prompt to wait for: log in as soon as the terminal takes it
    blind_login = not (console_shows(hw, tc.terminal, "login_prompt")
                       or console_shows(hw, tc.terminal, "boot"))
    error = None
    while True:
        with tc.cond:
            kinds = {e.kind for e in tc.events}
            giveup = any(is_giveup(e) for e in tc.events)
            host_ok = None if ready_on_console else _signed_on_by_host(tc.events)
            if EventKind.READY in kinds or giveup or host_ok is not None:
                break
            if deadline.expired:
                error = f"no READY within {timeout_s:.1f} s"
                break
            need_login = not logged_in and (blind_login or EventKind.LOGIN_PROMPT in kinds
                                            or EventKind.BOOT_DONE in kinds)
            if not need_login:
                tc.cond.wait(min(0.1, deadline.remaining()))
        tc.check_cancel()
        if need_login:
            try:
                login(hw, tc.terminal)
                logged_in = True
            except TerminalError:
                if not blind_login:
                    raise
                tc.sleep(0.1)  # still booting: try again
    if error is None and host_ok is not None:
        error = _ready_without_console(hw, tc, host_ok, deadline)
    if error is None:  # the host records its response a moment after the terminal got it
        tc.wait_event({EventKind.SIGNON_RSP}, 1.0)
    return error


def _signed_on_by_host(events: list[Event]) -> Event | None:
    """The host's 0810 with rc=00 of this cycle, if any."""
    return next((e for e in reversed(events)
                 if e.kind == EventKind.SIGNON_RSP and e.data.get("rc") == "00"), None)


def _ready_without_console(hw: Hardware, tc: TerminalCycle, rsp: Event,
                           deadline: Deadline) -> str | None:
    """READY of a terminal whose console cannot show it: ECR STATUS, else 0810 + the profile's
    delay. Records SIGNON_OK (host side) and READY; an error text when neither source exists."""
    t = tc.terminal
    profile = get_profile(hw.cfg.models[hw.cfg.terminals[t].model].profile)
    if not console_shows(hw, t, "signon_ok"):
        hw.recorder.record(Event(rsp.mono_ns, rsp.wall_ns, EventKind.SIGNON_OK, f"{t}.host", t,
                                 {"line": "SIGNON ok", "via": "host 0810 rc=00"}, rsp.clock))
    ecr = hw.ecrs.get(t)
    if ecr is not None:
        while not deadline.expired:
            try:
                state = ecr.command("STATUS")
            except TerminalError:
                state = ""
            if state.split()[:1] == ["READY"]:
                hw.recorder.record(Event.now(EventKind.READY, f"{t}.ecr", t, line="READY",
                                             via="ecr STATUS", poll_s=STATUS_POLL_S))
                return None
            tc.sleep(STATUS_POLL_S)
        return "no READY from ECR STATUS in time"
    if profile.ready_after_0810_ms is not None:
        delay_ns = int(profile.ready_after_0810_ms * 1e6)
        tc.sleep(max(0.0, (rsp.mono_ns + delay_ns - time.monotonic_ns()) / 1e9))
        hw.recorder.record(Event(rsp.mono_ns + delay_ns, rsp.wall_ns + delay_ns, EventKind.READY,
                                 f"{t}.estimate", t, {"line": "READY", "via": "0810 + "
                                 f"ready_after_0810_ms={profile.ready_after_0810_ms:g}"},
                                 ClockSource.DERIVED))
        return None
    return (f"READY cannot be seen: profile {profile.name} "
            f"({profile.why_not('ready') or 'no console'}), no ECR port and no "
            "ready_after_0810_ms")


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
