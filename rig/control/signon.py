"""Waiting for a terminal's sign-on: READY, give-up or time-out; the ECR operator login."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.clock import Deadline
from ..core.errors import TerminalError
from ..timeline.events import EventKind

if TYPE_CHECKING:
    from .bench import Rig


def wait_ready(rig: Rig, terminal: str, track: Any, timeout_s: float) -> str | None:
    """Wait for READY (or SIGNON giveup); log in over ECR when the terminal asks. Returns an
    error text on time-out, None otherwise."""
    deadline = Deadline(timeout_s)
    logged_in = rig.cfg.terminals[terminal].auto_login
    error = None
    while True:
        with track.cond:
            kinds = {e.kind for e in track.events}
            giveup = any(e.kind == EventKind.SIGNON_FAIL and "giveup" in str(e.data.get("line"))
                         for e in track.events)
            if EventKind.READY in kinds or giveup:
                break
            if deadline.expired:
                error = f"no READY within {timeout_s:.1f} s"
                break
            need_login = not logged_in and EventKind.BOOT_DONE in kinds
            if not need_login:
                track.cond.wait(min(0.1, deadline.remaining()))
        if rig._stop.is_set():
            raise KeyboardInterrupt
        if need_login:
            login(rig, terminal)
            logged_in = True
    if error is None:  # the host records its response a moment after the terminal got it
        rig._await(track, EventKind.SIGNON_RSP, 1.0)
    return error


def login(rig: Rig, terminal: str) -> None:
    """``LOGIN <op> <pwd>`` over ECR; the password never reaches an event."""
    ecr = rig.ecrs.get(terminal)
    if ecr is None:
        raise TerminalError(f"{terminal}: needs an operator login but has no ECR port configured")
    op = rig.cfg.terminals[terminal].operator
    ecr.command(f"LOGIN {op.id} {op.password}", secret=op.password)
