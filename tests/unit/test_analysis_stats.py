"""Statistics: bootstrap percentile CIs, Wilson intervals, ECDF, comparison verdicts, summaries
and failure tables (synthetic event streams)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rig.analysis.figures import figures
from rig.analysis.stats import (
    bootstrap_quantiles,
    compare,
    ecdf,
    failure_table,
    fmt_s,
    percentile_ci,
    summarize_cycles,
    wilson,
)
from rig.analysis.synth import synth_run


def test_wilson_matches_the_textbook_values():
    p, lo, hi = wilson([8, 0, 10], [10, 10, 10])
    assert p[0] == pytest.approx(0.8)
    assert (lo[0], hi[0]) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert lo[1] == 0 and hi[1] == pytest.approx(0.2775, abs=1e-4)  # 0 of 10 is not "0 %"
    assert hi[2] == pytest.approx(1) and lo[2] == pytest.approx(0.7225, abs=1e-4)
    p, lo, hi = wilson(0, 0)
    assert np.isnan(p)


def test_bootstrap_ci_covers_the_true_median_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = percentile_ci(rng.normal(1.0, 0.1, 100), qs=(50,))
    big = percentile_ci(rng.normal(1.0, 0.1, 10_000), qs=(50,))
    for ci in (small, big):
        assert ci["lo"][0] < 1.0 < ci["hi"][0]
    assert (big["hi"] - big["lo"])[0] < (small["hi"] - small["lo"])[0] / 5
    assert big["n"][0] == 10_000


def test_exact_order_statistic_bootstrap_agrees_with_resampling():
    rng = np.random.default_rng(2)
    x = rng.exponential(1.0, 30_000)  # above EXACT_ABOVE: the binomial path
    exact = bootstrap_quantiles(x, (50, 99), 4000, seed=3)
    idx = np.random.default_rng(4).integers(0, len(x), (400, len(x)))
    resampled = np.percentile(x[idx], (50, 99), axis=1).T
    for c in range(2):
        assert np.percentile(exact[:, c], [2.5, 97.5]) == pytest.approx(
            np.percentile(resampled[:, c], [2.5, 97.5]), rel=0.03)


def test_ecdf():
    e = ecdf([3.0, 1.0, np.nan, 2.0])
    assert list(e["value"]) == [1.0, 2.0, 3.0]
    assert list(e["p"]) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_compare_finds_a_shift_and_says_so_in_words():
    a = synth_run(cycles=200, terminals=4, sale_share=0, boot_ms=(700, 60), seed=1, p_retry=0,
                  p_refused=0, p_fault=0)
    b = synth_run(cycles=200, terminals=4, sale_share=0, boot_ms=(770, 60), seed=2, p_retry=0,
                  p_refused=0, p_fault=0)
    a2 = synth_run(cycles=200, terminals=4, sale_share=0, boot_ms=(700, 60), seed=3, p_retry=0,
                   p_refused=0, p_fault=0)
    fa, fb, fa2 = (figures(s.events, s.cycles) for s in (a, b, a2))
    c = compare(fa, fb, "boot_s", labels=("fw 1.4", "fw 1.5"))
    assert c.detected and c.ci_s[0] > 0 and c.p_value < 1e-6
    assert c.shift_s == pytest.approx(0.070, abs=0.02)
    assert c.rel_shift == pytest.approx(0.10, abs=0.03)
    assert c.verdict.startswith("boot_s is ") and "longer in fw 1.5 than in fw 1.4" in c.verdict
    back = compare(fb, fa, "boot_s")
    assert back.detected and "shorter" in back.verdict
    same = compare(fa, fa2, "boot_s")
    assert not same.detected and same.verdict.startswith("no detectable change in boot_s")
    assert same.ci_s[0] <= 0 <= same.ci_s[1]
    assert "CI" in str(same) and "<table>" in same._repr_html_()
    few = compare([1.0], [2.0, 3.0], "ready_s")
    assert not few.detected and few.verdict.startswith("not enough cycles")
    with pytest.raises(KeyError, match="no figure 'nope'"):
        compare(fa, fb, "nope")


def test_summary_by_terminal_and_fault_case_with_rates():
    s = synth_run(cycles=2000, terminals=2, p_refused=0.1, p_fault=0.2, seed=5)
    f = figures(s.events, s.cycles)
    cyc = s.cycles.merge(f.drop(columns=["terminal", "kind"]), left_on="cycle_id",
                         right_index=True)
    cyc["ok"] = np.where(cyc["kind"] == "sale", cyc["outcome"] == "approved", cyc["signon_ok"])
    summ = summarize_cycles(cyc, by=["terminal", "fault_case"], n_boot=300)
    fig = summ.figures
    assert set(fig["terminal"]) == {"T1", "T2"}
    row = fig[(fig["terminal"] == "T1") & (fig["fault_case"] == "none")
              & (fig["figure"] == "boot_s")].iloc[0]
    assert row["p50_lo"] <= row["p50"] <= row["p50_hi"]
    assert row["p50"] == pytest.approx(0.7, abs=0.02) and row["p99"] > row["p95"] > row["p50"]
    r = summ.rates
    assert (r["rate_lo"] <= r["rate"]).all() and (r["rate"] <= r["rate_hi"]).all()
    assert r["cycles"].sum() == 2000
    html = summ._repr_html_()
    assert "bootstrap" in html and "Wilson" in html and "ms [" in html
    fails = failure_table(cyc, by="terminal")
    refused = fails[fails["failure"] == "sign-on refused (rc=96)"]
    assert set(refused["rc"]) == {"96"} and refused["cycles"].sum() == (
        cyc["failure"] == "sign-on refused (rc=96)").sum()
    assert (fails["share"] > 0).all() and (fails["share"] < 1).all()


def test_fmt_s():
    assert fmt_s(0.8123) == "812.3 ms" and fmt_s(12.5) == "12.50 s"
    assert fmt_s(None) == "-" and fmt_s(float("nan")) == "-" and fmt_s(0.0002) == "200 µs"


def test_summary_of_an_empty_group_set():
    empty = pd.DataFrame({"terminal": [], "ok": [], "ready_s": []})
    s = summarize_cycles(empty, by="terminal")
    assert len(s.figures) == 0 and len(s.rates) == 0
    assert "no figures" in s._repr_html_()
