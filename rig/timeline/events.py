"""One timeline of small immutable events (after Bluesky's documents).

Whoever owns a socket or port stamps ``clock.now()`` (or takes the kernel's stamp) right at the
I/O boundary, builds an :class:`Event` and hands it to a :class:`Sink`. Nothing downstream
re-stamps. ``data`` must already be redacted (see :mod:`rig.core.redact`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ..core.clock import ClockSource, Stamp, now


class EventKind(StrEnum):
    # power
    POWER_ON = "power_on"  # PSU/relay acknowledged output on
    POWER_OFF = "power_off"
    PSU_IO = "psu_io"  # one SCPI exchange (command, reply)
    RELAY_IO = "relay_io"
    PDU_IO = "pdu_io"  # one pdudaemon HTTP request (on/off of a PDU port) and its answer
    # terminal console / ECR
    CONSOLE_LINE = "console_line"
    BOOT_DONE = "boot_done"
    LOGIN_PROMPT = "login_prompt"  # the terminal asks for the operator
    LOGIN = "login"
    SIGNON_START = "signon_start"  # a sign-on attempt starts (console)
    SIGNON_OK = "signon_ok"
    SIGNON_FAIL = "signon_fail"
    READY = "ready"
    ECR_IO = "ecr_io"
    # acquirer host
    HOST_CONNECT = "host_connect"  # a terminal opened a TCP connection to the host
    HOST_DISCONNECT = "host_disconnect"
    SIGNON_REQ = "signon_req"  # 0800 received (kernel stamp of its last segment)
    SIGNON_RSP = "signon_rsp"  # 0810 sent (write returned)
    NET_REQ = "net_req"  # other 08x0 (echo, sign-off) received
    NET_RSP = "net_rsp"
    PROTOCOL_ERROR = "protocol_error"
    AUTH_REQ = "auth_req"  # 0200/0100 received (kernel stamp); data: mti, proc, stan, amount_minor, pan (masked), entry
    AUTH_RSP = "auth_rsp"  # 0210/0110 sent; data: rc, stan, auth_code, rrn
    REVERSAL_REQ = "reversal_req"  # 0400 received
    REVERSAL_RSP = "reversal_rsp"
    SETTLE_REQ = "settle_req"  # 0500 received
    SETTLE_RSP = "settle_rsp"
    # card robot
    ROBOT_IO = "robot_io"  # one GRBL line exchange (line, reply)
    ROBOT_WAIT = "robot_wait"  # a terminal waited for the shared robot; data: waited_s
    ROBOT_MOVE = "robot_move"  # a card move finished (motion complete); data: move, slot/station
    CARD_PRESENTED = "card_presented"  # the robot finished presenting the card (insert/swipe/tap)
    ROBOT_ALARM = "robot_alarm"
    # terminal transaction (console)
    SALE_START = "sale_start"
    CARD_WAIT = "card_wait"
    CARD_READ = "card_read"
    CARD_FAIL = "card_fail"
    CARD_RETRY = "card_retry"  # the terminal asks for the card again ("insert again")
    CARD_FALLBACK = "card_fallback"  # chip failed too often: the terminal asks for a swipe
    AUTH_RESULT = "auth_result"  # the result shown on the terminal (console RESULT line)
    REVERSAL = "reversal"
    # faults (rig.faults): data: id, fault, layer, params, window; FAULT_SWEEP: what a sweep undid
    FAULT_ON = "fault_on"
    FAULT_OFF = "fault_off"
    FAULT_SWEEP = "fault_sweep"
    # soak campaigns (rig.soak): a terminal's health changed; a worker paused / went on
    HEALTH = "health"
    PAUSE = "pause"
    RESUME = "resume"
    # bookkeeping
    CYCLE_START = "cycle_start"
    CYCLE_END = "cycle_end"
    RUN_NOTE = "run_note"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Event:
    mono_ns: int
    wall_ns: int
    kind: EventKind
    source: str  # "psu1", "host", "T1.console"...
    terminal: str | None = None
    data: Mapping[str, object] = field(default_factory=dict)
    clock: ClockSource = ClockSource.THREAD

    @classmethod
    def at(
        cls,
        stamp: Stamp,
        kind: EventKind,
        source: str,
        terminal: str | None = None,
        clock: ClockSource = ClockSource.THREAD,
        **data: object,
    ) -> Event:
        return cls(stamp.mono_ns, stamp.wall_ns, kind, source, terminal, data, clock)

    @classmethod
    def now(cls, kind: EventKind, source: str, terminal: str | None = None, **data: object) -> Event:
        return cls.at(now(), kind, source, terminal, **data)


class Sink(Protocol):
    """Anything that accepts events (the Recorder, a list in tests)."""

    def record(self, event: Event) -> None: ...


class ListSink:
    """Collects events in memory (tests, standalone drivers)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)


class NullSink:
    def record(self, event: Event) -> None:  # noqa: D102
        pass
