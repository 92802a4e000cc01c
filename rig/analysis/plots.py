"""Plots of the figures (matplotlib): histogram / ECDF by group, a figure against time, one
cycle's timeline (phases as bars, fault windows shaded, the PSU current trace beneath), success
rate by fault case.

Each function returns a :class:`matplotlib.figure.Figure` made without pyplot, so nothing is
shown or saved unless asked: a notebook shows a figure that a cell returns; ``fig.savefig(path)``
writes it. ``run.plot.ecdf(...)`` and friends call these with the run's cycles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..timeline.events import EventKind
from .stats import ecdf as ecdf_values
from .stats import wilson

K = EventKind
# events drawn on a cycle's timeline, top to bottom
TIMELINE_KINDS = (K.POWER_OFF, K.POWER_ON, K.BOOT_DONE, K.LOGIN, K.HOST_CONNECT, K.SIGNON_REQ,
                  K.SIGNON_RSP, K.SIGNON_FAIL, K.SIGNON_OK, K.READY, K.SALE_START,
                  K.ROBOT_WAIT, K.CARD_PRESENTED, K.CARD_READ, K.CARD_FAIL, K.AUTH_REQ,
                  K.AUTH_RSP, K.AUTH_RESULT, K.REVERSAL_REQ, K.ERROR)


def _figure(figsize: tuple[float, float] = (8, 4), **kw: Any) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - the notebooks extra brings it
        raise ImportError("plots need matplotlib: pip install 'posrig[notebooks]'") from e
    return Figure(figsize=figsize, layout="constrained", **kw)


def _cycles(data: Any) -> pd.DataFrame:
    return data.cycles if hasattr(data, "cycles") else data


def _groups(data: Any, by: str | Sequence[str] | None) -> list[tuple[str, pd.DataFrame]]:
    """(label, cycles) per group: a mapping of label → run / cycles, or one run split by
    ``by``."""
    if isinstance(data, Mapping):
        return [(str(k), _cycles(v)) for k, v in data.items()]
    c = _cycles(data)
    if by is None:
        return [("all", c)]
    by_l = [by] if isinstance(by, str) else list(by)
    return [(" / ".join(str(x) for x in (k if isinstance(k, tuple) else (k,))), g)
            for k, g in c.groupby(by_l, observed=True, sort=True)]


def _ms(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float64) * 1e3


def ecdf(data: Any, figure: str = "ready_s", by: str | Sequence[str] | None = None) -> Any:
    """The ECDF of ``figure`` (ms), one line per group (``by``, or per run of a mapping)."""
    fig = _figure()
    ax = fig.subplots()
    for label, g in _groups(data, by):
        e = ecdf_values(g[figure]) if figure in g.columns else ecdf_values([])
        if len(e):
            ax.step(_ms(e["value"]), e["p"], where="post", label=f"{label} (n={len(e)})")
    ax.set_xlabel(f"{figure} (ms)")
    ax.set_ylabel("share of cycles ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.set_title(f"{figure}: ECDF")
    return fig


def hist(data: Any, figure: str = "ready_s", by: str | Sequence[str] | None = None,
         bins: int = 40) -> Any:
    """A histogram of ``figure`` (ms) per group, on shared bins."""
    fig = _figure()
    ax = fig.subplots()
    groups = [(lab, g[figure].dropna().to_numpy(dtype=float) * 1e3) for lab, g in
              _groups(data, by) if figure in g.columns]
    allv = np.concatenate([v for _, v in groups]) if groups else np.zeros(0)
    if len(allv):
        edges = np.histogram_bin_edges(allv, bins=bins)
        for lab, v in groups:
            ax.hist(v, bins=edges, alpha=0.55, label=f"{lab} (n={len(v)})")
        ax.legend(fontsize="small")
    ax.set_xlabel(f"{figure} (ms)")
    ax.set_ylabel("cycles")
    ax.set_title(f"{figure}: histogram")
    return fig


def trend(data: Any, figure: str = "ready_s", by: str | Sequence[str] | None = "terminal",
          window: int = 20) -> Any:
    """``figure`` (ms) against the cycle's start time, per group, with a rolling median over
    ``window`` cycles."""
    fig = _figure((9, 4))
    ax = fig.subplots()
    for lab, g in _groups(data, by):
        g = g[g[figure].notna()].sort_values("start_wall_ns")
        if len(g) == 0:
            continue
        t = pd.to_datetime(g["start_wall_ns"], unit="ns")
        y = g[figure].to_numpy(dtype=float) * 1e3
        pts = ax.plot(t, y, ".", alpha=0.5, label=f"{lab}")
        ax.plot(t, pd.Series(y).rolling(window, min_periods=1, center=True).median(), "-",
                color=pts[0].get_color(), lw=1.5)
    ax.set_ylabel(f"{figure} (ms)")
    ax.set_title(f"{figure} over time (line: rolling median of {window})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.autofmt_xdate()
    return fig


def success(data: Any, by: str | Sequence[str] = "fault_case", level: float = 0.95) -> Any:
    """Success rate (``ok``) per group with Wilson intervals."""
    fig = _figure((8, 3.5))
    ax = fig.subplots()
    groups = _groups(data, by)
    labels = [lab for lab, _ in groups]
    k = np.array([int(g["ok"].sum()) for _, g in groups])
    n = np.array([len(g) for _, g in groups])
    p, lo, hi = wilson(k, n, level)
    x = np.arange(len(groups))
    ax.bar(x, 100 * p, color="tab:blue", alpha=0.7)
    ax.errorbar(x, 100 * p, yerr=[100 * (p - lo), 100 * (hi - p)], fmt="none", color="k",
                capsize=4)
    for xi, ki, ni in zip(x, k, n, strict=True):
        ax.text(xi, 2, f"{ki}/{ni}", ha="center", fontsize="small")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize="small")
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    ax.set_title(f"success rate by {by if isinstance(by, str) else ' / '.join(by)} "
                 f"(Wilson {100 * level:.0f} %)")
    return fig


def _phases(row: pd.Series) -> list[tuple[str, float, float, str]]:
    """(name, start s, end s, colour) of a cycle's phases, from its figures (t=0: power-on for a
    sign-on, card presented for a sale)."""
    out = []
    if row.get("kind") == "signon":
        boot, req, ready = row.get("boot_s"), row.get("signon_req_s"), row.get("ready_s")
        if pd.notna(boot):
            out.append(("boot", 0.0, boot, "tab:gray"))
        if pd.notna(boot) and pd.notna(req):
            out.append(("login, sync, dial", boot, req, "tab:olive"))
        if pd.notna(req) and pd.notna(ready):
            out.append(("sign-on → READY", req, ready, "tab:green"))
    elif row.get("kind") == "sale":
        c2a, host, a2r = row.get("card_to_auth_s"), row.get("auth_host_s"), row.get(
            "auth_to_result_s")
        if pd.notna(c2a):
            out.append(("card → 0200", 0.0, c2a, "tab:purple"))
            if pd.notna(host):
                out.append(("host 0200 → 0210", c2a, c2a + host, "tab:orange"))
                if pd.notna(a2r):
                    out.append(("0210 → result", c2a + host, c2a + host + a2r, "tab:green"))
    return out


def timeline(run: Any, cycle: int) -> Any:
    """One cycle: its phases as bars, its events as ticks, the fault windows on during it
    shaded, and the PSU current trace beneath (a note when none was recorded)."""
    cyc = run.cycles.set_index("cycle_id")
    if cycle not in cyc.index:
        raise KeyError(f"run {run.run_id} has no cycle {cycle}")
    row = cyc.loc[cycle]
    ev = run.timeline
    ev = ev[ev["cycle_id"] == cycle]
    t0 = row.get("power_on_ns", -1)
    if row.get("kind") == "sale" and row.get("presented_ns", -1) >= 0:
        t0 = row["presented_ns"]
    if t0 is None or pd.isna(t0) or t0 < 0:
        t0 = row["start_mono_ns"]
    fig = _figure((10, 5.5))
    ax, cur_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    kinds = [k.value for k in TIMELINE_KINDS if (ev["kind"] == k.value).any()]
    for i, (name, a, b, colour) in enumerate(_phases(row)):
        ax.barh(-1 - i, b - a, left=a, color=colour, alpha=0.8)
        ax.text(a, -1 - i, f" {name} {1e3 * (b - a):.1f} ms", va="center", fontsize="small")
    nph = len(_phases(row))
    shown = ev[ev["kind"].isin(kinds)]
    ys = np.array([kinds.index(k) for k in shown["kind"].astype(str)])
    ax.scatter((shown["mono_ns"].to_numpy() - t0) / 1e9, ys, marker="|", s=250, color="k")
    ax.set_yticks([*range(len(kinds)), *[-1 - i for i in range(nph)]],
                  [*kinds, *[""] * nph], fontsize="small")
    ax.invert_yaxis()
    lo = (row["start_mono_ns"] - t0) / 1e9
    end = row.get("end_mono_ns")
    hi = (end - t0) / 1e9 if pd.notna(end) else (ev["mono_ns"].max() - t0) / 1e9
    f = run.faults
    if len(f):
        mine = f[(f["terminal"] == row["terminal"]) & (f["on_ns"] < (end if pd.notna(end) else
                                                                     np.inf))
                 & (f["off_ns"].fillna(np.inf) > row["start_mono_ns"])]
        for _, w in mine.iterrows():  # a handful of fault windows, not events
            a = (w["on_ns"] - t0) / 1e9
            b = (w["off_ns"] - t0) / 1e9 if pd.notna(w["off_ns"]) else hi
            ax.axvspan(a, b, color="tab:red", alpha=0.12)
            ax.text(a, len(kinds) - 0.5, f" {w['label']}", color="tab:red", fontsize="x-small",
                    va="bottom")
    title = f"run {run.run_id} cycle {cycle}: {row['terminal']} {row.get('kind')}"
    if row.get("fault_case") not in (None, "none"):
        title += f" · faults: {row['fault_case']}"
    ax.set_title(title, fontsize="medium")
    cur = run.current
    cur = cur[(cur["terminal"] == row["terminal"]) & (cur["mono_ns"] >= row["start_mono_ns"])
              & (cur["mono_ns"] <= (end if pd.notna(end) else np.inf))] if len(cur) else cur
    if len(cur):
        cur_ax.plot((cur["mono_ns"].to_numpy(dtype=float) - t0) / 1e9,
                    cur["amps"].to_numpy(dtype=float), "-", color="tab:blue")
        cur_ax.set_ylabel("A")
    else:
        cur_ax.text(0.5, 0.5, "no current trace recorded for this cycle", ha="center",
                    va="center", transform=cur_ax.transAxes, color="gray")
        cur_ax.set_yticks([])
    cur_ax.set_xlabel("s after " + ("card presented" if t0 == row.get("presented_ns") else
                                    "power-on" if t0 == row.get("power_on_ns") else
                                    "cycle start"))
    ax.set_xlim(lo, hi + 0.02 * (hi - lo + 1e-3))
    return fig


class RunPlots:
    """``run.plot.ecdf("ready_s", by="fault_case")``, ``.hist``, ``.trend``,
    ``.timeline(cycle=17)``, ``.success(by="fault_case")``: the functions of this module on
    one run."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def ecdf(self, figure: str = "ready_s", by: str | Sequence[str] | None = None) -> Any:
        return ecdf(self.run, figure, by)

    def hist(self, figure: str = "ready_s", by: str | Sequence[str] | None = None,
             bins: int = 40) -> Any:
        return hist(self.run, figure, by, bins)

    def trend(self, figure: str = "ready_s", by: str | Sequence[str] | None = "terminal",
              window: int = 20) -> Any:
        return trend(self.run, figure, by, window)

    def success(self, by: str | Sequence[str] = "fault_case") -> Any:
        return success(self.run, by)

    def timeline(self, cycle: int) -> Any:
        return timeline(self.run, cycle)
