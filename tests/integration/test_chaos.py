"""The kill -9 slice of `make chaos`: three SIGKILLs of the rig service during sign-on series,
sales, held lab faults and a soak campaign, each followed by a restart; nothing lost, nothing
duplicated, every run's state true, every fault undone, every output safe, no stray process."""

from __future__ import annotations

import pytest

from tests.chaos import run_chaos

pytestmark = pytest.mark.integration


def test_three_kills_lose_nothing(tmp_path):
    res = run_chaos(tmp_path / "chaos", kills=3, seed=7, min_s=1.0, max_s=3.0, log=lambda _: None)
    report = res.table() + "\n" + "\n".join(res.client_errors)
    assert res.kills == 3
    assert res.cycles_completed > 0 and res.lines_checked > 0, report
    assert res.cycles_aborted > 0, report  # the kills did land inside cycles
    assert res.soak_completed > 0, report
    assert not res.lost_events, report
    assert not res.duplicate_cycles, report
    assert not res.bad_runs, report
    assert not res.faults_left, report
    assert not res.outputs_on, report
    assert not res.strays, report
    assert not res.client_errors, report
