"""Per-sale figures derived from events (DESIGN §4): card presented → 0200 → 0210 → result."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..timeline.events import Event
from .figures import SALE_FIGURES, Columns, derive_cycles

__all__ = ["SALE_FIGURES", "SaleResult", "line_fields", "sale_figures"]
_KV = re.compile(r"(\w+)=(\S+)")


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

    def _repr_html_(self) -> str:
        from .stats import fmt_s

        colour = "#070" if self.approved else "#b00"
        head = (f"<b>{html.escape(self.terminal)}</b> {html.escape(self.txn)} "
                f"<span style='color:{colour}'>{html.escape(self.outcome)}</span>"
                f" rc={self.rc or '-'} · {html.escape(self.card)} ({self.pan_masked or '-'}) "
                f"{html.escape(self.entry)}" + (f" · {html.escape(self.error)}" if self.error
                                                 else ""))
        cells = "".join(f"<tr><th style='text-align:left'>{f}</th><td>{fmt_s(getattr(self, f))}"
                        f"</td></tr>" for f in SALE_FIGURES)
        return f"<div>{head}</div><table>{cells}</table>"


def line_fields(ev: Event | None) -> dict[str, str]:
    """key=value pairs of a console line event."""
    return dict(_KV.findall(str(ev.data.get("line", "")))) if ev else {}


def _num(v: Any) -> float | None:
    return None if v is None or v != v else float(v)  # NaN -> None


def sale_figures(events: Iterable[Event]) -> dict[str, Any]:
    """Figures and result fields of one sale cycle from its events (any order): the same
    derivation as :func:`rig.analysis.figures.figures` on a stored run (one definition)."""
    cols = Columns.from_events(events)
    if cols.C == 0:
        return {k: None for k in ("outcome", "rc", "auth_code", "rrn", "stan", "pan_masked",
                                  "balance", *SALE_FIGURES)}
    d = derive_cycles(cols, explain=False)
    out: dict[str, Any] = {k: d[k][0] for k in ("outcome", "rc", "auth_code", "rrn", "stan",
                                               "pan_masked", "balance")}
    out.update({f: _num(d[f][0]) for f in SALE_FIGURES})
    return out
