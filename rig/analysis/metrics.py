"""Per-cycle figures derived from events (names as in docs/timing.md and DESIGN §4).

Pure functions of a cycle's events, so the live ``Rig`` and ``load_run`` on a stored run derive
exactly the same numbers: both run :func:`rig.analysis.figures.derive_cycles`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..timeline.events import Event
from .figures import SIGNON_FIGURES, Columns, derive_cycles

__all__ = ["SIGNON_FIGURES", "SignOn", "signon_figures", "summarize"]


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

    def _repr_html_(self) -> str:
        from .stats import fmt_s

        state = ("<span style='color:#070'>signed on</span>" if self.ok else
                 f"<span style='color:#b00'>not signed on: {html.escape(str(self.error))}</span>")
        cells = "".join(f"<tr><th style='text-align:left'>{f}</th><td>{fmt_s(getattr(self, f))}"
                        f"</td></tr>" for f in SIGNON_FIGURES)
        return (f"<div><b>{html.escape(self.terminal)}</b> cycle {self.cycle}: {state}, "
                f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}</div>"
                f"<table>{cells}</table>")


def _num(v: Any) -> float | None:
    return None if v is None or v != v else float(v)  # NaN -> None


def signon_figures(terminal: str, cycle: int | None, events: Iterable[Event],
                   has_console: bool = True, error: str | None = None) -> SignOn:
    """Figures of one cycle from its events (any order): the same derivation as
    :func:`rig.analysis.figures.figures` on a stored run (one definition)."""
    cols = Columns.from_events(events)
    d = derive_cycles(cols, has_console=has_console, explain=False) if cols.C else None
    if d is None or d["power_on_ns"][0] < 0:
        return SignOn(terminal, cycle, False, error=error or "no power-on in this cycle")
    ok = bool(d["signon_ok"][0])
    if not ok and error is None:
        error = d["signon_fail_line"][0] if d["signon_fail"][0] else "no READY"
    return SignOn(
        terminal=terminal,
        cycle=cycle,
        ok=ok,
        boot_s=_num(d["boot_s"][0]),
        signon_req_s=_num(d["signon_req_s"][0]),
        signon_host_s=_num(d["signon_host_s"][0]),
        ready_s=_num(d["ready_s"][0]),
        attempts=int(d["attempts"][0]),
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
