"""Per-cycle figures derived from events (names as in docs/timing.md and DESIGN §4).

Pure functions of a cycle's events, so the live ``Rig`` and ``load_run`` on a stored run derive
exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..timeline.events import Event, EventKind

SIGNON_FIGURES = ("boot_s", "signon_req_s", "signon_host_s", "ready_s")


@dataclass(frozen=True)
class SignOn:
    """Outcome and figures of one power-on → READY cycle (seconds; None when not reached)."""

    terminal: str
    cycle: int | None
    ok: bool
    boot_s: float | None = None
    signon_req_s: float | None = None
    signon_host_s: float | None = None
    ready_s: float | None = None
    attempts: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _s(a: int | None, b: int | None) -> float | None:
    return None if a is None or b is None else (b - a) / 1e9


def _first(events: Sequence[Event], kinds: set[EventKind], after: int) -> Event | None:
    for e in events:
        if e.kind in kinds and e.mono_ns >= after:
            return e
    return None


def signon_figures(terminal: str, cycle: int | None, events: Iterable[Event],
                   has_console: bool = True, error: str | None = None) -> SignOn:
    """Figures of one cycle from its events (any order)."""
    evs = sorted(events, key=lambda e: e.mono_ns)
    on = _first(evs, {EventKind.POWER_ON}, 0)
    if on is None:
        return SignOn(terminal, cycle, False, error=error or "no power-on in this cycle")
    t0 = on.mono_ns
    console = [e for e in evs if e.source.endswith(".console") and e.kind != EventKind.ERROR
               and e.mono_ns >= t0]
    connect = _first(evs, {EventKind.HOST_CONNECT}, t0)
    first = console[0] if has_console and console else connect
    reqs = [e for e in evs if e.kind == EventKind.SIGNON_REQ and e.mono_ns >= t0]
    rsps = [e for e in evs if e.kind == EventKind.SIGNON_RSP and e.mono_ns >= t0]
    ok_rsp = next((r for r in reversed(rsps) if r.data.get("rc") == "00"), None)
    ok_req = None
    if ok_rsp is not None:
        ok_req = next((q for q in reversed(reqs) if q.data.get("stan") == ok_rsp.data.get("stan")
                       and q.mono_ns <= ok_rsp.mono_ns), None)
    ready = _first(evs, {EventKind.READY}, t0)
    signed = _first(evs, {EventKind.SIGNON_OK}, t0)
    ok = ready is not None and signed is not None
    if not ok and error is None:
        fail = _first(evs, {EventKind.SIGNON_FAIL}, t0)
        error = fail.data.get("line") if fail else "no READY"  # type: ignore[assignment]
    return SignOn(
        terminal=terminal,
        cycle=cycle,
        ok=ok,
        boot_s=_s(t0, first.mono_ns if first else None),
        signon_req_s=_s(t0, reqs[0].mono_ns if reqs else None),
        signon_host_s=_s(ok_req.mono_ns if ok_req else None, ok_rsp.mono_ns if ok_rsp else None),
        ready_s=_s(t0, ready.mono_ns if ready else None),
        attempts=len(reqs),
        error=None if ok else error,
    )


def summarize(rows: Sequence[dict[str, Any]], figures: Sequence[str] = SIGNON_FIGURES) -> dict[str, Any]:
    """count, ok, and p50/p90/p99/min/max/mean per figure over the ok cycles."""
    import numpy as np

    out: dict[str, Any] = {"cycles": len(rows), "ok": sum(1 for r in rows if r.get("ok"))}
    for f in figures:
        vals = np.array([r[f] for r in rows if r.get("ok") and r.get(f) is not None], dtype=float)
        if vals.size == 0:
            out[f] = None
            continue
        out[f] = {
            "n": int(vals.size),
            "mean": float(vals.mean()),
            "min": float(vals.min()),
            "p50": float(np.percentile(vals, 50)),
            "p90": float(np.percentile(vals, 90)),
            "p99": float(np.percentile(vals, 99)),
            "max": float(vals.max()),
        }
    return out
