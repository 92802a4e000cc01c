"""A short seeded slice of ``make fuzz``: every target of :mod:`fuzz.targets` for a few hundred
inputs with a fixed seed (the seeded mutator, no atheris), and every saved regression input
of ``fuzz/corpus/<target>/`` replayed. No crash, no hang. (Targets that need loopback sockets,
the running acquirer host, have their slice in ``tests/integration/test_fuzz_slice_live.py``.)

Regression inputs named ``open-*.bin`` reproduce crashes in modules this suite does not own
yet (reported, not fixed); they are expected to fail until the owner fixes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.engine import CORPUS_DIR, Runner, corpus_files, run_random
from fuzz.targets import TARGETS

SEED = 20261130


def _report(stats: object) -> str:
    from fuzz.__main__ import details

    return details([stats])  # type: ignore[list-item]


def run_slice(name: str) -> None:
    """Replay the target's regression inputs, then its seeded slice: no new crash, no hang."""
    target = TARGETS[name]
    replay = [p.read_bytes() for p in corpus_files(name) if not p.name.startswith("open-")]
    st = run_random(target, target.slice_inputs + len(replay), None, SEED, crash_dir=None,
                    replay=replay)
    assert st.inputs == target.slice_inputs + len(replay)
    assert not st.new_crashes and not st.hangs, _report(st)
    assert st.ok + st.expected + st.crash_inputs == st.inputs


@pytest.mark.parametrize("name", sorted(n for n, t in TARGETS.items() if not t.sockets))
def test_seeded_slice(name: str) -> None:
    run_slice(name)


def _open_cases() -> list[tuple[str, Path]]:
    return [(name, p) for name in sorted(TARGETS) for p in corpus_files(name)
            if p.name.startswith("open-")]


def test_open_crashes_still_reproduce() -> None:
    """Known crashes in code owned elsewhere (``open-*.bin``, listed in fuzz/known.py) must
    still crash: one that no longer does is fixed (rename it without ``open-`` so the slice keeps
    it as a regression case, and drop its fuzz/known.py entry). None open: nothing to check."""
    fixed = []
    for name, path in _open_cases():
        runner = Runner(TARGETS[name], "replay", crash_dir=None)
        try:
            verdict, _ = runner.execute(path.read_bytes())
        finally:
            runner.close()
        if verdict not in ("crash", "hang"):
            fixed.append(f"{name}/{path.name}")
    assert not fixed, f"fixed now, rename without open-: {fixed}"


def test_corpus_dirs_name_targets() -> None:
    assert CORPUS_DIR.is_dir()
    stray = [d.name for d in CORPUS_DIR.iterdir() if d.is_dir() and d.name not in TARGETS]
    assert not stray, f"corpus directories without a target: {stray}"


def test_mutator_is_deterministic() -> None:
    import random

    from fuzz.engine import Mutator

    def run(seed: int) -> list[bytes]:
        m = Mutator(random.Random(seed), (b"TOK",), 256)
        corpus = [b"hello world 123\nline two 4.5", b"\x00\x01\x02"]
        return [m.mutate(corpus[i % 2], corpus) for i in range(200)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert all(len(x) <= 256 for x in run(3))


def test_runner_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from fuzz.__main__ import main

    out = tmp_path / "stats.json"
    rc = main(["--engine", "random", "--budget", "120", "--target", "fault-spec", "--target",
               "grbl-sim", "--seed", "3", "--crash-dir", str(tmp_path / "crashes"),
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "fault-spec" in text and "grbl-sim" in text and "TOTAL" in text
    stats = json.loads(out.read_text())
    assert sum(s["inputs"] for s in stats) == 120
    assert all(s["rate"] > 0 and s["crashes"] == {} for s in stats)


# --- the crashes fuzzing found and that were fixed, stated directly --------------------------

def test_fault_spec_with_a_non_string_key_is_a_test_error() -> None:
    from rig.core.errors import TestError
    from rig.faults.spec import fault_from_dict

    with pytest.raises(TestError, match="parameter names"):
        fault_from_dict({"fault": "latency", "ms": 300, 1: 2})


def test_campaign_amount_too_large_to_quantize_is_a_value_error() -> None:
    from rig.soak.campaign import parse_amount

    for bad in ("1e308", "10000000000", "1e-400"):
        with pytest.raises(ValueError, match="at most 2 decimals"):
            parse_amount(bad)
    assert parse_amount("9999999999.99") == "9999999999.99"


def test_scenario_console_regex_that_does_not_compile_is_a_test_error() -> None:
    from rig.control.scenario import console_patterns, judge
    from rig.core.errors import TestError
    from rig.faults.scenarios import Scenario

    sc = Scenario.model_validate({"name": "x", "title": "t", "procedure": "signon",
                                  "expect": {"console": ["READY", "("]}})
    with pytest.raises(TestError, match="not a regular expression"):
        console_patterns(sc)
    with pytest.raises(TestError):
        judge(sc, {}, ["1 INFO READY"])
    ok = Scenario.model_validate({"name": "x", "title": "t", "procedure": "signon",
                                  "expect": {"console": ["READY"]}})
    assert judge(ok, {}, ["1 INFO READY"]) == [
        {"check": "console ~ READY", "expected": True, "observed": "1 INFO READY", "ok": True}]
