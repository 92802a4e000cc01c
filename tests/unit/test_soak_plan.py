"""The dry-run planner: deterministic cases, exact chunks, an estimate from the configured steps."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.config import load_lab
from rig.core.errors import TestError
from rig.soak import Campaign, load_campaign, plan
from rig.soak.campaign import CAMPAIGNS_DIR
from rig.soak.plan import smooth_round_robin

ROOT = Path(__file__).resolve().parents[2]
LAB = load_lab(ROOT / "configs" / "labs" / "virtual.yaml")
TERMINALS = ["T1", "T2", "T3", "T4"]
SEED_SCRIPT = """
import json, sys
from rig.soak import load_campaign, plan
p = plan(load_campaign(sys.argv[1]))
n = p.cycles_per_terminal or 300
print(json.dumps({t: [p.case(t, i).id for i in range(n)] for t in p.terminals}))
"""


def campaign(**over: Any) -> Campaign:
    """A small campaign on the virtual lab, built in code (``over`` replaces top-level keys)."""
    data: dict[str, Any] = {
        "name": "t", "label": "fw-1", "lab": "configs/labs/virtual.yaml",
        "steps": [{"power_cycle": {"off_s": 0.5}}, {"await_signon": {"timeout_s": 30}},
                  {"sales": {"card": "cup_debit", "entry": "chip"}}, {"wait": {"s": 1}}],
        "stop": {"cycles": 10},
        "matrix": {"cases": [{"id": "a", "none": True},
                             {"id": "b", "faults": [{"fault": "latency", "ms": 100,
                                                     "during": "signon"}]},
                             {"id": "c", "scenario": "host-no-response"}]},
    }
    data.update(over)
    return Campaign.model_validate(data)


def random_matrix(weights: list[float], seed: int = 7) -> dict[str, Any]:
    return {"order": "random", "seed": seed,
            "cases": [{"id": f"k{i}", "none": True, "weight": w} for i, w in enumerate(weights)]}


# --- which case a cycle runs ----------------------------------------------------------------------

def test_round_robin_goes_through_the_cases_in_order() -> None:
    c = campaign(matrix={"stagger": False, "cases": [
        {"id": "a", "none": True}, {"id": "b", "none": True}, {"id": "c", "none": True}]})
    p = plan(c)
    for t in TERMINALS:
        assert [p.case(t, i).id for i in range(10)] == list("abcabcabca")


def test_round_robin_staggers_terminals_by_their_place() -> None:
    p = plan(campaign(stop={"cycles": 3}))  # 3 cases, stagger by default
    assert [[p.case(t, i).id for i in range(3)] for t in TERMINALS] == [
        list("abc"), list("bca"), list("cab"), list("abc")]
    # a plan for some terminals keeps each terminal's place in the campaign
    assert [plan(campaign(), ["T3"]).case("T3", i).id for i in range(3)] == list("cab")
    listed = campaign(terminals=["T4", "T2"])
    assert [plan(listed).case("T2", i).id for i in range(3)] == list("bca")
    with pytest.raises(TestError, match="not among its terminals"):
        plan(listed, ["T1"])


@given(st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_weighted_round_robin_keeps_the_weights_each_round(weights: list[int]) -> None:
    rr = smooth_round_robin(weights)
    assert Counter(rr) == {i: w for i, w in enumerate(weights)}
    if len(set(weights)) == 1:  # equal weights: the cases in order, round after round
        assert rr == list(range(len(weights))) * weights[0]


def test_random_follows_the_documented_generator() -> None:
    """Another process, host or version of the runner can recompute a cycle's case."""
    p = plan(campaign(matrix=random_matrix([1, 3, 6], seed=42), stop={"cycles": 200}))
    cum = [1, 4, 10]
    for t in TERMINALS:
        for i in range(200):
            x = random.Random(f"42:{t}:{i}").random() * 10
            assert p.case_number(t, i) == next(j for j, c in enumerate(cum) if x < c)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**63), st.lists(st.floats(0.1, 10), min_size=1, max_size=8),
       st.lists(st.tuples(st.sampled_from(TERMINALS), st.integers(0, 10**9)), max_size=30))
def test_a_cycles_case_depends_only_on_campaign_terminal_index(
        seed: int, weights: list[float], asks: list[tuple[str, int]]) -> None:
    c = campaign(matrix=random_matrix(weights, seed), stop={"duration": "8h"})
    first, second = plan(c), plan(c.model_copy())
    forward = [first.case(t, i).id for t, i in asks]
    backward = [second.case(t, i).id for t, i in reversed(asks)]
    assert forward == backward[::-1]


@pytest.mark.parametrize("name", ["demo", "nightly"])
def test_same_plan_in_another_process(name: str) -> None:
    path = CAMPAIGNS_DIR / f"{name}.yaml"
    here = plan(load_campaign(path))
    n = here.cycles_per_terminal or 300
    mine = {t: [here.case(t, i).id for i in range(n)] for t in here.terminals}
    for hashseed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        out = subprocess.run([sys.executable, "-c", SEED_SCRIPT, str(path)], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True, timeout=120)
        assert json.loads(out.stdout) == mine


def test_random_shares_approach_the_weights() -> None:
    weights = [6, 2, 1, 0.5, 0.5]
    p = plan(campaign(matrix=random_matrix(weights, seed=20261124), stop={"cycles": 5000}))
    counts = Counter(p.case(t, i).number for t in TERMINALS for i in range(5000))
    n, total = 4 * 5000, sum(weights)
    for j, w in enumerate(weights):
        share = w / total
        sigma = (share * (1 - share) / n) ** 0.5
        assert abs(counts[j] / n - share) < 4 * sigma, (j, counts)
        assert p.cases[j].share == pytest.approx(share)


def test_indices_outside_the_plan_are_refused() -> None:
    p = plan(campaign(stop={"cycles": 5}))
    with pytest.raises(TestError, match="past the plan's 5 cycles"):
        p.case("T1", 5)
    with pytest.raises(TestError, match="not a terminal of this plan"):
        plan(campaign(), ["T1"]).case("T2", 0)
    with pytest.raises(TestError, match="must be an int"):
        p.case("T1", -1)


# --- chunks ---------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 120), st.integers(1, 40), st.lists(st.sampled_from(TERMINALS), min_size=1,
                                                         max_size=4, unique=True))
def test_chunks_partition_the_planned_cycles_once(cycles: int, size: int,
                                                  terminals: list[str]) -> None:
    p = plan(campaign(stop={"cycles": cycles}, chunk=size), terminals)
    chunks = list(p.chunks())
    assert len(chunks) == p.n_chunks
    assert len(set(chunks)) == len(chunks)
    seen = Counter((ch.terminal, i) for ch in chunks for i in ch.indices())
    assert seen == Counter((t, i) for t in terminals for i in range(cycles))
    assert all(len(ch) <= size and ch.first % size == 0 for ch in chunks)
    assert sorted(p.cycles(), key=lambda c: (c.terminal, c.index)) == [
        (t, i, p.case(t, i)) for t in sorted(terminals) for i in range(cycles)]
    for t in terminals:
        mine = list(p.chunks(t))
        assert mine == sorted(ch for ch in chunks if ch.terminal == t)
        for i in range(cycles):  # a resume at cycle i starts with the chunk that holds it
            first = next(p.chunks(t, start=i))
            assert first == p.chunk_of(t, i) and i in first.indices()
        assert list(p.chunks(t, start=cycles)) == []


def test_time_bounded_plans_are_lazy() -> None:
    p = plan(campaign(stop={"duration": "8h"}, chunk=7,
                      matrix=random_matrix([1, 1, 1])))
    assert p.cycles_per_terminal is None and p.n_chunks is None and not p.bounded
    assert p.case("T2", 10**12).id in {"k0", "k1", "k2"}
    endless = list(islice(p.chunks("T1", start=100), 1000))
    assert endless[0].first == 98 and endless[-1].last == 98 + 7 * 1000 - 1
    assert all(b.first == a.last + 1 for a, b in zip(endless, endless[1:], strict=False))
    with pytest.raises(TestError, match="bounded by time only"):
        list(p.chunks())
    with pytest.raises(TestError, match="bounded by time only"):
        next(p.cycles())
    assert [c.index for c in islice(p.cycles("T3"), 5)] == [0, 1, 2, 3, 4]
    assert p.as_dict()["chunks"] is None and p.as_dict()["cycles_per_terminal"] is None


def test_chunk_keys_name_run_terminal_first() -> None:
    ch = plan(campaign(stop={"cycles": 25}, chunk=10)).chunk_of("T3", 23)
    assert (ch.first, ch.last, len(ch)) == (20, 24, 5)
    assert ch.key(7) == (7, "T3", 20)
    assert ch.as_dict() == {"terminal": "T3", "first": 20, "last": 24}


# --- the estimate ---------------------------------------------------------------------------------

def test_demo_takes_about_two_minutes() -> None:
    p = plan(load_campaign(CAMPAIGNS_DIR / "demo.yaml"))
    d = p.as_dict()
    assert 90 <= d["estimated_s"] <= 150 and d["estimated"] == "~2 min"
    # every case runs on the 4 terminals, each case 3 times (staggered round robin)
    runs = Counter(c.case.id for c in p.cycles())
    assert runs == {c.id: 3 for c in p.cases}
    assert d["estimate"]["robot_bound"] and d["estimate"]["case_extra_s"]["host-timeout"] == 8.0


def test_estimate_scales_with_the_steps() -> None:
    one = plan(campaign(stop={"cycles": 10}), ["T1"]).estimate()
    two = plan(campaign(stop={"cycles": 20}), ["T1"]).estimate()
    assert two.seconds == pytest.approx(2 * one.seconds, rel=0.05)
    slow = plan(campaign(steps=[{"power_cycle": {"off_s": 0.5}}, {"await_signon": {}},
                                {"sales": {"card": "cup_debit"}}, {"wait": {"s": 31}}]), ["T1"])
    assert slow.estimate().seconds == pytest.approx(one.seconds + 10 * 30)
    # four terminals share one robot: a round of sales takes the sum of their robot times
    four = plan(campaign(stop={"cycles": 10})).estimate()
    assert four.robot_s_per_round > max(four.cycle_s.values())
    assert four.seconds == pytest.approx(10 * four.robot_s_per_round, rel=0.05)
    steps = one.steps_s
    boot = LAB.sim.boot.mean / 1000.0
    assert steps["power_cycle"] == pytest.approx(0.52) and steps["wait"] == 1
    assert boot < steps["await_signon"] < boot + 0.2


def test_estimate_counts_each_case_by_its_cycles() -> None:
    cases = [{"id": "a", "none": True}, {"id": "b", "none": True, "extra_s": 100}]
    rr = plan(campaign(stop={"cycles": 3}, matrix={"stagger": False, "cases": cases}), ["T1"])
    base = plan(campaign(stop={"cycles": 3}, matrix={"cases": cases[:1]}), ["T1"])
    assert rr.estimate_s() == pytest.approx(base.estimate_s() + 100)  # a, b, a: b once


def test_bench_lab_estimate_says_what_it_assumed(tmp_path: Path) -> None:
    bench = dict(name="b", lab="configs/labs/bench-example.yaml", terminals="all",
                 steps=[{"power_cycle": {}}, {"await_signon": {}}, {"wait": {"s": 10}}],
                 stop={"cycles": 4}, matrix={"cases": [{"id": "base", "none": True}]})
    p = plan(campaign(**bench))
    est = p.estimate()
    assert any("not virtual" in n and "estimate.boot_s" in n for n in est.notes)
    off = max(t.power.off_s for t in load_lab(ROOT / "configs/labs/bench-example.yaml")
              .terminals.values())
    assert est.seconds == pytest.approx(4 * (off + 0.02 + 30 + 10))
    hinted = plan(campaign(**bench, estimate={"boot_s": 45})).estimate()
    assert not any("not virtual" in n for n in hinted.notes)
    assert hinted.seconds == pytest.approx(4 * (off + 0.02 + 45 + 10))


def test_time_bounds_cap_the_estimate() -> None:
    evening = datetime(2026, 11, 24, 20, 0).astimezone()
    until = plan(campaign(stop={"until": "07:00"}), now=evening).estimate()
    assert until.bound == "until" and until.seconds == 11 * 3600
    both = plan(campaign(stop={"until": "07:00", "duration": "10h", "cycles": 10**6}),
                now=evening).estimate()
    assert both.bound == "duration" and both.seconds == 10 * 3600
    assert both.expected_cycles_per_terminal == pytest.approx(36000 / both.round_s)
    short = plan(campaign(stop={"cycles": 2, "duration": "10h"}), now=evening).estimate()
    assert short.bound == "cycles" and short.expected_cycles_per_terminal == 2


def test_nightly_plan_is_open_ended_and_seeded() -> None:
    evening = datetime(2026, 11, 24, 20, 0).astimezone()
    p = plan(load_campaign(CAMPAIGNS_DIR / "nightly.yaml"), now=evening)
    d = p.as_dict()
    assert d["cycles_per_terminal"] is None and d["estimated_s"] == 36000
    assert d["estimated"] == "~10 h" and d["seed"] == p.campaign.matrix.seed
    assert d["estimate"]["expected_cycles_per_terminal"] > 100
    assert not any(n.startswith("funds") for n in d["estimate"]["notes"])


def test_draining_a_card_is_noted() -> None:
    p = plan(campaign(steps=[{"power_cycle": {}}, {"await_signon": {}},
                             {"sales": {"card": "cup_debit", "amount": "100.00", "count": 2}}],
                      stop={"cycles": 10}))
    notes = [n for n in p.estimate().notes if n.startswith("funds")]
    assert notes and "cup_debit" in notes[0] and "8000.00 of its 5000.00" in notes[0]
    assert "after about 25 cycles" in notes[0]


def test_as_dict_for_the_cli() -> None:
    p = plan(load_campaign(CAMPAIGNS_DIR / "demo.yaml"))
    d = json.loads(json.dumps(p.as_dict()))
    for key in ("campaign", "label", "terminals", "cycles_per_terminal", "cases", "chunks",
                "estimated_s", "first"):
        assert key in d
    assert d["campaign"] == "demo" and d["label"] == "vlab-1.0.0"
    assert d["terminals"] == TERMINALS and d["cycles_per_terminal"] == 3
    assert d["chunks"] == 4 * 2  # 3 cycles in chunks of 2: two per terminal
    assert [set(c) >= {"id", "kind", "what", "share"} for c in d["cases"]] == [True] * 4
    assert sum(c["share"] for c in d["cases"]) == pytest.approx(1)
    assert d["first"][:5] == [
        {"terminal": "T1", "index": 0, "case": "baseline"},
        {"terminal": "T2", "index": 0, "case": "signon-latency"},
        {"terminal": "T3", "index": 0, "case": "host-timeout"},
        {"terminal": "T4", "index": 0, "case": "mac-error"},
        {"terminal": "T1", "index": 1, "case": "signon-latency"}]
    assert len(d["first"]) == 10
    latency = next(c for c in d["cases"] if c["id"] == "signon-latency")
    assert latency["faults"] == ["latency(ms=200, during=signon)"]


def test_kernel_faults_are_noted() -> None:
    p = plan(campaign(matrix={"cases": [{"id": "lossy", "faults": [{"fault": "loss",
                                                                     "percent": 5}]}]}))
    assert any("lossy use kernel faults" in n for n in p.estimate().notes)
