"""Per-sale figures derived from events (DESIGN §4): card presented → 0200 → 0210 → result."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..timeline.events import Event, EventKind

SALE_FIGURES = ("card_to_auth_s", "auth_host_s", "auth_to_result_s", "card_to_result_s",
                "robot_wait_s")
_KV = re.compile(r"(\w+)=(\S+)")
_RESULT = re.compile(r"RESULT (\w+)")


@dataclass(frozen=True)
class SaleResult:
    """Outcome (approved, declined, failed, read_failed, refused) and figures (s) of a sale."""

    terminal: str
    card: str
    entry: str
    amount_minor: int | None
    outcome: str
    rc: str | None = None
    auth_code: str | None = None
    rrn: str | None = None
    stan: str | None = None
    pan_masked: str | None = None
    balance: str | None = None  # balance inquiry: as the terminal showed it
    card_to_auth_s: float | None = None
    auth_host_s: float | None = None
    auth_to_result_s: float | None = None
    card_to_result_s: float | None = None
    robot_wait_s: float | None = None
    txn: str = "sale"
    cycle: int | None = None
    error: str | None = None

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _s(a: Event | None, b: Event | None) -> float | None:
    return None if a is None or b is None else (b.mono_ns - a.mono_ns) / 1e9


def line_fields(ev: Event | None) -> dict[str, str]:
    """key=value pairs of a console line event."""
    return dict(_KV.findall(str(ev.data.get("line", "")))) if ev else {}


def sale_figures(events: Iterable[Event]) -> dict[str, Any]:
    """Figures and result fields of one sale cycle from its events (any order)."""
    evs = sorted(events, key=lambda e: e.mono_ns)
    presented = next((e for e in evs if e.kind == EventKind.CARD_PRESENTED), None)
    after = presented.mono_ns if presented else 0
    result = next((e for e in evs if e.kind == EventKind.AUTH_RESULT and e.mono_ns >= after), None)
    fields = line_fields(result)
    stan = fields.get("stan")
    reqs = [e for e in evs if e.kind == EventKind.AUTH_REQ and e.mono_ns >= after]
    req = next((e for e in reqs if stan and e.data.get("stan") == stan), reqs[-1] if reqs else None)
    rsp = None
    if req is not None:
        rsp = next((e for e in evs if e.kind == EventKind.AUTH_RSP and e.mono_ns >= req.mono_ns
                    and e.data.get("stan") == req.data.get("stan")), None)
    read = next((e for e in evs if e.kind == EventKind.CARD_READ), None)
    outcome = None
    if result is not None:
        m = _RESULT.search(str(result.data.get("line", "")))
        outcome = m.group(1) if m else "failed"
    wait = next((e for e in evs if e.kind == EventKind.ROBOT_WAIT), None)
    return {
        "outcome": outcome,
        "rc": fields.get("rc"),
        "auth_code": fields.get("auth"),
        "rrn": fields.get("rrn"),
        "stan": stan or (req.data.get("stan") if req else None),
        "pan_masked": line_fields(read).get("pan"),
        "balance": fields.get("balance"),
        "card_to_auth_s": _s(presented, req),
        "auth_host_s": _s(req, rsp),
        "auth_to_result_s": _s(rsp, result),
        "card_to_result_s": _s(presented, result),
        "robot_wait_s": float(wait.data.get("waited_s", 0.0)) if wait else None,  # type: ignore[arg-type]
    }
