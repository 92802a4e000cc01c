"""What a fault is: its target layer, its parameters, and its window — as validated data.

Every fault is a small frozen pydantic model, so a bad parameter (negative latency, loss over
100 %, an unknown phase) fails with a clear message before anything in the world changes, and
the same classes serve the notebook API, the CLI and scenario YAML (``{fault: latency, ms: 300}``
through :func:`fault_from_dict`).

A window says when the fault is on (see :mod:`rig.faults.schedule`): ``during`` one of the
terminal's phases, or ``at_s`` after the cycle's power-on, for ``for_s`` seconds. Without a
window a fault is on for as long as the ``with rig.fault(...)`` block (or the call) that holds it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..core.errors import TestError

Phase = Literal["signon", "auth", "sale", "cycle"]
PHASES: tuple[str, ...] = ("signon", "auth", "sale", "cycle")
Direction = Literal["up", "down", "both"]
Layer = Literal["proxy", "kernel", "host", "power", "card", "robot"]
WINDOW_FIELDS = ("during", "at_s", "for_s")


class Fault(BaseModel):
    """Base of every fault: the window fields; subclasses add their parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    layer: ClassVar[Layer]
    name: ClassVar[str]
    what: ClassVar[str] = ""

    during: Phase | None = Field(None, description="on for this phase of the terminal's cycle")
    at_s: float | None = Field(None, ge=0, description="on this long after the cycle's power-on")
    for_s: float | None = Field(None, gt=0, description="off again after this long")

    def params(self) -> dict[str, Any]:
        """The fault's own parameters (no window), for events and tables."""
        return self.model_dump(exclude=set(WINDOW_FIELDS))

    def window(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(include=set(WINDOW_FIELDS)).items()
                if v is not None}

    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in {**self.params(), **self.window()}.items())
        return f"{self.name}({args})"

    def __str__(self) -> str:
        return self.label()


# --- network, L4 (the terminal's fault proxy) ---------------------------------------------------

class _Proxy(Fault):
    layer: ClassVar[Layer] = "proxy"
    direction: Direction = Field("both", description="up: terminal→host, down: host→terminal")
    toxicity: float = Field(1.0, ge=0, le=1, description="share of connections affected")


class Latency(_Proxy):
    name: ClassVar[str] = "latency"
    what: ClassVar[str] = "delay every chunk by ms ± jitter_ms (from its kernel receive stamp)"
    ms: float = Field(ge=0, le=600_000)
    jitter_ms: float = Field(0.0, ge=0, le=600_000)

    @model_validator(mode="after")
    def _some_delay(self) -> Latency:
        if self.ms == 0 and self.jitter_ms == 0:
            raise ValueError("ms or jitter_ms must be above 0 (a latency of nothing)")
        return self


class Bandwidth(_Proxy):
    name: ClassVar[str] = "bandwidth"
    what: ClassVar[str] = "limit throughput to kbps kilobytes per second"
    kbps: float = Field(gt=0)


class Stall(_Proxy):
    name: ClassVar[str] = "stall"
    what: ClassVar[str] = "hold every byte (blackhole) while connections stay open"


class Reset(_Proxy):
    name: ClassVar[str] = "reset"
    what: ClassVar[str] = "reset (RST) connections as data arrives"


class Refuse(_Proxy):
    name: ClassVar[str] = "refuse"
    what: ClassVar[str] = "proxy down: connections refused, live ones closed"


class Slicer(_Proxy):
    name: ClassVar[str] = "slicer"
    what: ClassVar[str] = "cut data into small pieces with a delay between them"
    avg_bytes: int = Field(8, ge=1)
    size_variation: int = Field(0, ge=0)
    delay_us: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _variation(self) -> Slicer:
        if self.size_variation >= self.avg_bytes:
            raise ValueError("size_variation must be below avg_bytes")
        return self


class CloseAfter(_Proxy):
    name: ClassVar[str] = "close_after"
    what: ClassVar[str] = "close the connection after this many bytes"
    bytes: int = Field(ge=0)


class SlowClose(_Proxy):
    name: ClassVar[str] = "slow_close"
    what: ClassVar[str] = "delay the close of a connection"
    ms: float = Field(gt=0)


# --- network, L3 (kernel: nftables, links, qdiscs) -----------------------------------------------

class _Kernel(Fault):
    layer: ClassVar[Layer] = "kernel"


class Loss(_Kernel):
    name: ClassVar[str] = "loss"
    what: ClassVar[str] = "drop this percentage of the terminal's packets (nftables)"
    percent: float = Field(gt=0, le=100)


class Blackhole(_Kernel):
    name: ClassVar[str] = "blackhole"
    what: ClassVar[str] = "drop every packet of the terminal's path (nftables)"


class Reject(_Kernel):
    name: ClassVar[str] = "reject"
    what: ClassVar[str] = "reject the terminal's packets with a TCP reset (nftables)"


class LinkDown(_Kernel):
    name: ClassVar[str] = "link_down"
    what: ClassVar[str] = "take the terminal's link down (needs an interface: sim.netns or a bench NIC)"


class LinkFlap(_Kernel):
    name: ClassVar[str] = "link_flap"
    what: ClassVar[str] = "take the link down and up again repeatedly"
    down_s: float = Field(1.0, gt=0)
    up_s: float = Field(1.0, gt=0)


class Rate(_Kernel):
    name: ClassVar[str] = "rate"
    what: ClassVar[str] = "shape the link to kbit kilobits per second (tbf)"
    kbit: float = Field(gt=0)


class Netem(_Kernel):
    name: ClassVar[str] = "netem"
    what: ClassVar[str] = "netem delay / loss / reorder / corrupt / duplicate (needs sch_netem)"
    delay_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    loss: float = Field(0.0, ge=0, le=100)
    reorder: float = Field(0.0, ge=0, le=100)
    corrupt: float = Field(0.0, ge=0, le=100)
    duplicate: float = Field(0.0, ge=0, le=100)


# --- acquirer host ---------------------------------------------------------------------------------

Applies = Literal["signon", "auth", "reversal", "settle", "all"]


class _Host(Fault):
    layer: ClassVar[Layer] = "host"
    action: ClassVar[str]
    applies_to: Applies = Field("all", description="which messages: 0800, 0100/0200, 0400, 0500")
    count: int | None = Field(None, ge=1, description="only the next N matching requests")


class HostDelay(_Host):
    name: ClassVar[str] = "host_delay"
    action: ClassVar[str] = "delay"
    what: ClassVar[str] = "the host answers ms later"
    ms: float = Field(gt=0)


class HostNoResponse(_Host):
    name: ClassVar[str] = "host_no_response"
    action: ClassVar[str] = "no_response"
    what: ClassVar[str] = "the host reads requests and never answers"


class HostReply(_Host):
    name: ClassVar[str] = "host_reply"
    action: ClassVar[str] = "rc"
    what: ClassVar[str] = "the host answers with this response code (96, 91, A0, 05...)"
    rc: str

    @field_validator("rc")
    @classmethod
    def _rc(cls, v: str) -> str:
        if len(v) != 2 or not v.isascii() or not v.isalnum():
            raise ValueError(f"response code must be 2 letters or digits, got {v!r}")
        return v.upper()


class HostBadMac(_Host):
    name: ClassVar[str] = "host_bad_mac"
    action: ClassVar[str] = "bad_mac"
    what: ClassVar[str] = "financial replies carry a wrong MAC"


class HostGarbage(_Host):
    name: ClassVar[str] = "host_garbage"
    action: ClassVar[str] = "garbage"
    what: ClassVar[str] = "the host answers with random bytes"


class HostClose(_Host):
    name: ClassVar[str] = "host_close"
    action: ClassVar[str] = "close"
    what: ClassVar[str] = "the host closes the connection on each request"


class HostSlowSignon(_Host):
    name: ClassVar[str] = "host_slow_signon"
    action: ClassVar[str] = "slow_signon"
    what: ClassVar[str] = "the host answers sign-ons ms later"
    ms: float = Field(gt=0)


class HostDown(Fault):
    """The host is unreachable: the terminal's proxy refuses connections (same wire effect as a
    host process that is not listening, without stopping the host other terminals use)."""

    layer: ClassVar[Layer] = "proxy"
    name: ClassVar[str] = "host_down"
    what: ClassVar[str] = "the host is not listening (connection refused)"


# --- power -----------------------------------------------------------------------------------------

class _Power(Fault):
    layer: ClassVar[Layer] = "power"
    relay_ok: ClassVar[bool] = False


class PowerDropout(_Power):
    name: ClassVar[str] = "power_dropout"
    relay_ok: ClassVar[bool] = True
    what: ClassVar[str] = "switch the output off for ms, then on again"
    ms: float = Field(gt=0, le=600_000)


class Brownout(_Power):
    name: ClassVar[str] = "brownout"
    what: ClassVar[str] = "lower the voltage to volts for ms, then back to nominal"
    volts: float = Field(ge=0)
    ms: float = Field(gt=0, le=600_000)


class SlowRamp(_Power):
    name: ClassVar[str] = "slow_ramp"
    what: ClassVar[str] = "drop to from_volts and ramp up to nominal over s seconds"
    s: float = Field(gt=0, le=600)
    from_volts: float = Field(0.0, ge=0)
    steps: int = Field(20, ge=2, le=1000)


# --- card and robot --------------------------------------------------------------------------------

class _Card(Fault):
    layer: ClassVar[Layer] = "card"
    card: str | None = Field(None, description="card profile (default: the sale's card)")


class CardMute(_Card):
    name: ClassVar[str] = "card_mute"
    what: ClassVar[str] = "the chip does not answer a reset (no ATR)"


class CardCorrupt(_Card):
    name: ClassVar[str] = "card_corrupt"
    what: ClassVar[str] = "a chip record reads back corrupt"


class CardBadLrc(_Card):
    name: ClassVar[str] = "card_bad_lrc"
    what: ClassVar[str] = "the magstripe is unreadable (bad LRC)"


class _Robot(Fault):
    layer: ClassVar[Layer] = "robot"


class ExpiredCard(_Robot):
    name: ClassVar[str] = "expired_card"
    what: ClassVar[str] = "the robot presents this (expired) card instead of the one asked for"
    card: str = "expired"


class InsertShallow(_Robot):
    name: ClassVar[str] = "insert_shallow"
    what: ClassVar[str] = "the robot stops mm short of full insert depth"
    mm: float = Field(5.0, gt=0, le=30)


class SwipeTooFast(_Robot):
    name: ClassVar[str] = "swipe_too_fast"
    what: ClassVar[str] = "the robot swipes at this speed (above the reader's limit)"
    mm_s: float = Field(2000.0, gt=0)


class RobotAlarm(_Robot):
    name: ClassVar[str] = "robot_alarm"
    what: ClassVar[str] = "the robot is reset mid-move (GRBL ALARM:3), the sale's move fails"
    after_ms: float = Field(50.0, ge=0, description="into the presenting move")


FAULTS: dict[str, type[Fault]] = {
    c.name: c for c in (
        Latency, Bandwidth, Stall, Reset, Refuse, Slicer, CloseAfter, SlowClose,
        Loss, Blackhole, Reject, LinkDown, LinkFlap, Rate, Netem,
        HostDelay, HostNoResponse, HostReply, HostBadMac, HostGarbage, HostClose, HostSlowSignon,
        HostDown, PowerDropout, Brownout, SlowRamp,
        CardMute, CardCorrupt, CardBadLrc, ExpiredCard, InsertShallow, SwipeTooFast, RobotAlarm)
}


def problems(e: ValidationError) -> str:
    """pydantic's errors as ``field: problem; …``."""
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(fault)"
        msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        out.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return "; ".join(out)


def make_fault(name: str, **params: Any) -> Fault:
    """A fault by name (``make_fault("latency", ms=300)``); a TestError says what is wrong."""
    cls = FAULTS.get(name.replace("-", "_"))
    if cls is None:
        raise TestError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}")
    try:
        return cls(**params)
    except ValidationError as e:
        raise TestError(f"fault {name}: {problems(e)}") from None


def fault_from_dict(data: dict[str, Any]) -> Fault:
    """``{"fault": "latency", "ms": 300, "during": "signon"}`` → :class:`Latency`."""
    if not isinstance(data, dict) or "fault" not in data:
        raise TestError(f"a fault needs a `fault:` name, got {data!r}")
    params = dict(data)
    name = str(params.pop("fault"))
    odd = [k for k in params if not isinstance(k, str)]
    if odd:  # YAML allows `1: x` or `[a]: x`; they cannot be parameter names
        raise TestError(f"fault {name}: parameter names must be words, got {odd[0]!r}")
    return make_fault(name, **params)
