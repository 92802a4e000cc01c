"""Statistics for the figures: percentiles with bootstrap confidence intervals, ECDFs, success
rates with Wilson intervals, run-to-run comparison (firmware A vs B), failure tables.

Everything is vectorised over the cycles (numpy resampling; scipy for the distributions and
Mann–Whitney U); loops run over groups and figures only. Results are DataFrames wrapped in
small objects that render readably in a notebook.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .figures import FIGURES

QUANTILES = (50, 95, 99)
SMALL = 4_000_000  # resample values held at once (32 MB): larger samples go in chunks
EXACT_ABOVE = 20_000  # above this many values, the exact bootstrap of an order statistic


# --- basic pieces ---------------------------------------------------------------------------------
def _values(x: Any) -> np.ndarray:
    a = np.asarray(pd.to_numeric(pd.Series(np.asarray(x).ravel()), errors="coerce"),
                   dtype=np.float64)
    return a[~np.isnan(a)]


def bootstrap_quantiles(x: Any, qs: Sequence[float] = QUANTILES, n_boot: int = 2000,
                        seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the ``qs`` percentiles of ``x``: shape
    (n_boot, len(qs)). Small samples are resampled (vectorised, in chunks of at most
    :data:`SMALL` values); above :data:`EXACT_ABOVE` values the replicates are drawn from the
    exact bootstrap distribution of the order statistic (what resampling converges to:
    P(q* ≤ x₍ⱼ₎) = P(Binomial(n, j/n) ≥ k)), which costs O(n) instead of O(n·n_boot)."""
    x = np.sort(_values(x))
    n = len(x)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = np.full((n_boot, len(qs)), np.nan)
    if n == 0:
        return out
    if n <= EXACT_ABOVE:
        chunk = max(1, SMALL // n)
        for i in range(0, n_boot, chunk):
            b = min(chunk, n_boot - i)
            sample = x[rng.integers(0, n, size=(b, n))]
            out[i:i + b] = np.percentile(sample, qs, axis=1).T
        return out
    from scipy.stats import binom

    j = np.arange(1, n + 1)
    for c, q in enumerate(qs):
        k = max(1, int(np.ceil(q / 100 * n)))
        cdf = binom.sf(k - 1, n, j / n)  # P(q* <= x_(j))
        out[:, c] = x[np.minimum(np.searchsorted(cdf, rng.random(n_boot)), n - 1)]
    return out


def percentile_ci(x: Any, qs: Sequence[float] = QUANTILES, level: float = 0.95,
                  n_boot: int = 2000, seed: int | np.random.Generator | None = 0
                  ) -> pd.DataFrame:
    """Each percentile of ``x`` with its bootstrap CI (percentile method): columns q, value,
    lo, hi, n."""
    v = _values(x)
    boot = bootstrap_quantiles(v, qs, n_boot, seed)
    a = (1 - level) / 2
    point = np.percentile(v, qs) if len(v) else np.full(len(qs), np.nan)
    with np.errstate(all="ignore"):
        lo = np.nanpercentile(boot, 100 * a, axis=0) if len(v) else point
        hi = np.nanpercentile(boot, 100 * (1 - a), axis=0) if len(v) else point
    return pd.DataFrame({"q": list(qs), "value": point, "lo": lo, "hi": hi, "n": len(v)})


def ecdf(x: Any) -> pd.DataFrame:
    """The empirical CDF of ``x``: columns value (sorted), p (share of values ≤ it)."""
    v = np.sort(_values(x))
    return pd.DataFrame({"value": v, "p": np.arange(1, len(v) + 1) / max(len(v), 1)})


def wilson(k: Any, n: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Success rate k/n with its Wilson score interval (rate, lo, hi), elementwise; NaN where
    n is 0."""
    from scipy.stats import norm

    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = norm.ppf(1 - (1 - level) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, np.clip(center - half, 0, 1), np.clip(center + half, 0, 1)


# --- display --------------------------------------------------------------------------------------
def fmt_s(v: float | None) -> str:
    """Seconds for people: ``812.3 ms``, ``2.41 s``, ``-`` for a missing value."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if abs(v) < 10:
        return f"{v * 1e3:.1f} ms" if abs(v) >= 1e-3 or v == 0 else f"{v * 1e6:.0f} µs"
    return f"{v:.2f} s"


def html_table(df: pd.DataFrame, max_rows: int = 60) -> str:
    """A compact HTML table (notebook display)."""
    shown = df.head(max_rows)
    more = "" if len(df) <= max_rows else f"<div>… {len(df) - max_rows} more rows</div>"
    return shown.to_html(index=False, escape=True, border=0, na_rep="-") + more


# --- summaries ------------------------------------------------------------------------------------
@dataclass
class Summary:
    """Percentiles with CIs per group and figure (``figures``) and success rates with Wilson
    intervals per group (``rates``)."""

    figures: pd.DataFrame
    rates: pd.DataFrame
    by: list[str]
    level: float
    title: str = ""

    def to_frame(self) -> pd.DataFrame:
        return self.figures

    def _fig_html(self) -> str:
        if len(self.figures) == 0:
            return "<div>no figures</div>"
        f = self.figures
        show = f[[*self.by, "figure", "n"]].copy()
        for q in QUANTILES:
            show[f"p{q}"] = [f"{fmt_s(v)} [{fmt_s(lo)} … {fmt_s(hi)}]" for v, lo, hi in zip(
                f[f"p{q}"], f[f"p{q}_lo"], f[f"p{q}_hi"], strict=True)]
        return html_table(show)

    def _rate_html(self) -> str:
        r = self.rates
        if len(r) == 0:
            return "<div>no cycles</div>"
        show = r[[*self.by, "cycles", "ok"]].copy()
        show["success"] = [f"{100 * p:.1f} % [{100 * lo:.1f} … {100 * hi:.1f}]" if n else "-"
                           for p, lo, hi, n in zip(r["rate"], r["rate_lo"], r["rate_hi"],
                                                   r["cycles"], strict=True)]
        return html_table(show)

    def _repr_html_(self) -> str:
        pct = f"{100 * self.level:.0f} %"
        return (f"<div><b>{html.escape(self.title or 'summary')}</b> · percentiles with {pct} "
                f"bootstrap CIs</div>{self._fig_html()}<div><b>success rates</b> (Wilson {pct})"
                f"</div>{self._rate_html()}")

    def __repr__(self) -> str:
        return f"Summary({self.title!r}, by={self.by})\n{self.figures}\n{self.rates}"


def summarize_cycles(cycles: pd.DataFrame, by: str | Sequence[str] | None = None,
                     figures: Sequence[str] | None = None, level: float = 0.95,
                     n_boot: int = 2000, seed: int = 0, title: str = "") -> Summary:
    """p50 / p95 / p99 (with bootstrap CIs), mean and n of each figure over the cycles where it
    exists, and the success rate (``ok``) with its Wilson interval, per group of ``by``."""
    by_l = [by] if isinstance(by, str) else list(by or [])
    figs = [f for f in (figures or FIGURES) if f in cycles.columns
            and cycles[f].notna().any()]
    groups = cycles.groupby(by_l, observed=True, sort=True, dropna=False) if by_l else [
        ((), cycles)]
    rows, rates = [], []
    rng = np.random.default_rng(seed)
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        keys = dict(zip(by_l, key, strict=True))
        ok = int(g["ok"].sum()) if "ok" in g.columns else 0
        rates.append({**keys, "cycles": len(g), "ok": ok})
        for f in figs:
            v = _values(g[f])
            if len(v) == 0:
                continue
            ci = percentile_ci(v, QUANTILES, level, n_boot, rng)
            row: dict[str, Any] = {**keys, "figure": f, "n": len(v), "mean": float(v.mean())}
            for q, val, lo, hi in zip(ci["q"], ci["value"], ci["lo"], ci["hi"], strict=True):
                row.update({f"p{q}": val, f"p{q}_lo": lo, f"p{q}_hi": hi})
            rows.append(row)
    fig_df = pd.DataFrame(rows)
    rate_df = pd.DataFrame(rates)
    if len(rate_df):
        rate_df["rate"], rate_df["rate_lo"], rate_df["rate_hi"] = wilson(
            rate_df["ok"], rate_df["cycles"], level)
    return Summary(fig_df, rate_df, by_l, level, title)


def failure_table(cycles: pd.DataFrame, by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Failed cycles counted by ``kind``, failure class and response code (sign-ons: the last
    0810's rc; sales: the result's), with their share of the group's cycles."""
    by_l = [by] if isinstance(by, str) else list(by or [])
    c = cycles.copy()
    if "failure" not in c.columns:
        return pd.DataFrame(columns=[*by_l, "kind", "failure", "rc", "cycles", "share"])
    rc = np.where(c["kind"] == "sale", c.get("rc"), c.get("signon_rc"))
    c["rc_"] = pd.Series(rc, index=c.index).fillna("-")
    failed = c[c["failure"].notna()]
    keys = [*by_l, "kind", "failure", "rc_"]
    tab = failed.groupby(keys, observed=True, dropna=False).size().rename("cycles").reset_index()
    total = c.groupby([*by_l, "kind"], observed=True, dropna=False).size().rename("of")
    tab = tab.merge(total.reset_index(), on=[*by_l, "kind"], how="left")
    tab["share"] = tab["cycles"] / tab["of"]
    return (tab.rename(columns={"rc_": "rc"}).drop(columns="of")
            .sort_values([*by_l, "cycles"], ascending=[True] * len(by_l) + [False])
            .reset_index(drop=True))


# --- comparison -----------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Run B against run A for one figure: the shift of the median (B − A) with its bootstrap
    CI, Mann–Whitney U's p-value, and a verdict in plain words."""

    figure: str
    label_a: str
    label_b: str
    n_a: int
    n_b: int
    median_a_s: float
    median_b_s: float
    shift_s: float
    ci_s: tuple[float, float]
    rel_shift: float
    p_value: float
    level: float
    detected: bool
    verdict: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.verdict

    def _repr_html_(self) -> str:
        colour = "#b00" if self.detected else "#070"
        rows = [("figure", self.figure),
                ("A", f"{html.escape(self.label_a)}: median {fmt_s(self.median_a_s)} "
                      f"(n={self.n_a})"),
                ("B", f"{html.escape(self.label_b)}: median {fmt_s(self.median_b_s)} "
                      f"(n={self.n_b})"),
                ("shift B − A", f"{fmt_s(self.shift_s)} ({100 * self.rel_shift:+.1f} %)"),
                (f"{100 * self.level:.0f} % CI", f"{fmt_s(self.ci_s[0])} … {fmt_s(self.ci_s[1])}"),
                ("Mann–Whitney U", f"p = {self.p_value:.3g}")]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
                       for k, v in rows)
        return (f"<div style='color:{colour}'><b>{html.escape(self.verdict)}</b></div>"
                f"<table>{body}</table>")


def _sample(x: Any, figure: str) -> tuple[np.ndarray, str]:
    label = "A"
    if hasattr(x, "cycles") and hasattr(x, "run"):  # RunData
        label = f"run {x.run['id']}" + (f" ({x.run['label']})" if x.run.get("label") else "")
        x = x.cycles
    if isinstance(x, pd.DataFrame):
        if figure not in x.columns:
            raise KeyError(f"no figure {figure!r} in these cycles; have "
                           f"{', '.join(c for c in x.columns if c.endswith('_s'))}")
        x = x[figure]
    return _values(x), label


def compare(a: Any, b: Any, figure: str = "ready_s", *, level: float = 0.95,
            n_boot: int = 4000, seed: int = 0, labels: tuple[str, str] | None = None
            ) -> Comparison:
    """Does ``figure`` differ between A and B (runs, cycle DataFrames or arrays of seconds)?
    The shift of the median B − A with a bootstrap CI (A and B resampled independently), and
    Mann–Whitney U (two-sided). "No detectable change" when the CI spans zero."""
    from scipy.stats import mannwhitneyu

    va, la = _sample(a, figure)
    vb, lb = _sample(b, figure)
    if labels:
        la, lb = labels
    elif la == lb:
        la, lb = "A", "B"
    if len(va) < 2 or len(vb) < 2:
        return Comparison(figure, la, lb, len(va), len(vb), np.nan, np.nan, np.nan,
                          (np.nan, np.nan), np.nan, np.nan, level, False,
                          f"not enough cycles with {figure} to compare ({la}: {len(va)}, "
                          f"{lb}: {len(vb)})")
    rng = np.random.default_rng(seed)
    ma, mb = float(np.median(va)), float(np.median(vb))
    diff = bootstrap_quantiles(vb, (50,), n_boot, rng)[:, 0] - bootstrap_quantiles(
        va, (50,), n_boot, rng)[:, 0]
    alpha = (1 - level) / 2
    lo, hi = (float(v) for v in np.percentile(diff, [100 * alpha, 100 * (1 - alpha)]))
    p = float(mannwhitneyu(va, vb, alternative="two-sided").pvalue)
    shift = mb - ma
    rel = shift / ma if ma else np.nan
    detected = not (lo <= 0 <= hi)
    pct = f"{100 * level:.0f} % CI {fmt_s(lo)} … {fmt_s(hi)}"
    if detected:
        word = "longer" if shift > 0 else "shorter"
        verdict = (f"{figure} is {fmt_s(abs(shift))} {word} in {lb} than in {la} "
                   f"({100 * rel:+.1f} %, median {fmt_s(ma)} → {fmt_s(mb)}; {pct}; "
                   f"Mann–Whitney p = {p:.2g})")
    else:
        verdict = (f"no detectable change in {figure} between {la} and {lb} (median "
                   f"{fmt_s(ma)} → {fmt_s(mb)}, shift {fmt_s(shift)}; {pct}; "
                   f"Mann–Whitney p = {p:.2g})")
    return Comparison(figure, la, lb, len(va), len(vb), ma, mb, shift, (lo, hi), rel, p, level,
                      detected, verdict)
