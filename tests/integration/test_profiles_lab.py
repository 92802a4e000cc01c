"""Terminals of every shipped profile in one virtual lab: the virtual terminals print each
profile's console (English, GBK Chinese, the native one), speak its ECR protocol (line,
framed) or take key presses; sign-on series and sales run end to end and their figures agree
with the truth journal. A fourth terminal has no console: its figures come from the host, ECR
STATUS and ECR RESULT?, and say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rig import load_run, open_local
from tests.labcfg import write_config
from tests.profilelab import profile_lab
from tests.truth import truth_cycles

pytestmark = [pytest.mark.integration, pytest.mark.timing]  # timing: run alone (pyproject markers)
TOL_S = 0.002
ROOT = Path(__file__).resolve().parents[2]
SALE_FIGURES = ("card_to_auth_s", "auth_host_s", "auth_to_result_s", "card_to_result_s")


@pytest.fixture(scope="module")
def plab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profiles")
    cfg = profile_lab(tmp, time_scale=0.1)
    raw = cfg.model_dump(mode="json")
    raw["terminals"]["T4"]["console"] = None  # T4: vlab model, no console, manual login
    # T5: no console, no ECR; its profile says READY comes 30 ms after the 0810
    est = tmp / "estimate.yaml"
    est.write_text((ROOT / "configs/profiles/newland-n910.yaml").read_text(encoding="utf-8")
                   + "ready_after_0810_ms: 30\n", encoding="utf-8")
    raw["models"]["estimate"] = {**raw["models"]["vlab-pos"], "profile": str(est)}
    t5 = json.loads(json.dumps(raw["terminals"]["T3"]))
    t5.update(model="estimate", terminal_id="10000005", console=None, ecr=None,
              power={**t5["power"], "channel": 5}, stations=None)
    raw["terminals"]["T5"] = t5
    raw["instruments"]["psu1"]["channels"] = raw["sim"]["psu_channels"] = 5
    path = write_config(type(cfg).model_validate(raw), tmp / "lab.yaml")
    with open_local(path, results=tmp / "results") as rig:
        yield rig


def _journal(rig) -> list[dict]:
    return [json.loads(x) for x in rig.journal_path.read_text().splitlines() if x.strip()]


def test_signon_series_on_every_profile_agrees_with_truth(plab):
    rig = plab
    start = len(_journal(rig))
    df = rig.signon_series(["T1", "T2", "T3", "T4"], n=2, progress=False)
    assert df["ok"].all(), df[["terminal", "error"]]
    entries = _journal(rig)[start:]
    for t in ("T1", "T2", "T3"):
        truth = truth_cycles(entries, t)
        mine = df[df["terminal"] == t].reset_index(drop=True)
        assert len(truth) == len(mine) == 2
        for i, row in mine.iterrows():
            for f in ("boot_s", "signon_req_s", "signon_host_s", "ready_s"):
                assert abs(row[f] - truth[i][f]) < TOL_S, (t, i, f, row[f], truth[i][f])
    figs = load_run(rig.store.path, rig.run_id).figures()
    sig = figs[figs["kind"] == "signon"]
    assert set(sig[sig["terminal"] != "T4"]["ready_src"]) == {"console"}
    t4 = sig[sig["terminal"] == "T4"]
    assert set(t4["ready_src"]) == {"ecr"} and set(t4["boot_src"]) <= {"host connect", "host 0800"}
    assert t4["signon_ok"].all()
    truth4 = truth_cycles(entries, "T4")
    for (_, row), tr in zip(t4.iterrows(), truth4, strict=True):
        # READY from STATUS polled every 50 ms: late by up to a poll and an ECR exchange
        assert 0 <= row["ready_s"] - tr["ready_s"] < 0.25, (row["ready_s"], tr["ready_s"])


def test_ready_from_a_configured_delay_says_it_is_an_estimate(plab):
    rig = plab
    rig.power_cycle("T5")
    s = rig.wait_signon("T5", timeout_s=20)
    assert s.ok, s
    rig.flush()
    figs = load_run(rig.store.path, rig.run_id).figures()
    row = figs[(figs["terminal"] == "T5") & (figs["kind"] == "signon")].iloc[-1]
    assert row["ready_src"] == "estimate" and row["boot_src"] in ("host connect", "host 0800")
    rsp = rig.store.query("SELECT mono_ns FROM events WHERE kind='signon_rsp' AND terminal='T5' "
                          "ORDER BY mono_ns DESC LIMIT 1")[0][0]
    ready = rig.store.query("SELECT mono_ns, source, clock FROM events WHERE kind='ready' AND "
                            "terminal='T5' ORDER BY mono_ns DESC LIMIT 1")[0]
    assert ready[0] - rsp == 30_000_000 and ready[1] == "T5.estimate" and ready[2] == "derived"
    rig.power_off("T5")


def _truth_sale(entries: list[dict], terminal: str, after_ns: int) -> dict:
    first: dict[str, int] = {}
    for e in entries:
        if e.get("terminal") == terminal and e["mono_ns"] >= after_ns:
            first.setdefault(e["what"], e["mono_ns"])
    presented, req = first["card_inserted"], first["auth_req_sent"]
    rsp, res = first["auth_rsp_received"], first["result"]
    return {"card_to_auth_s": (req - presented) / 1e9, "auth_host_s": (rsp - req) / 1e9,
            "auth_to_result_s": (res - rsp) / 1e9, "card_to_result_s": (res - presented) / 1e9}


@pytest.mark.parametrize("terminal", ["T1", "T2", "T3"])
def test_sale_on_every_profile_agrees_with_truth(plab, terminal):
    """T1 over the line ECR, T2 over the framed ECR, T3 by key presses alone (no ECR port)."""
    rig = plab
    rig.ensure_ready(terminal)
    start = rig.store.query("SELECT max(mono_ns) FROM events")[0][0] or 0
    r = rig.sale(terminal, amount="1.00", card="cup_debit", entry="chip")
    assert (r.outcome, r.rc) == ("approved", "00"), r
    assert r.auth_code and r.rrn and "*" in (r.pan_masked or "")
    entries = _journal(rig)
    truth = _truth_sale(entries, terminal, start)
    for f in SALE_FIGURES:
        assert abs(getattr(r, f) - truth[f]) < TOL_S, (terminal, f, getattr(r, f), truth[f])
    if terminal == "T3":  # the amount went in digit by digit, then ENTER started the sale
        keys = [e["key"] for e in entries if e.get("terminal") == "T3"
                and e["what"] == "key_pressed" and e["mono_ns"] >= start]
        assert keys == ["SALE", "1", "0", "0", "ENTER"]
        sale = next(e for e in entries if e.get("terminal") == "T3" and e["what"] == "sale_start"
                    and e["mono_ns"] >= start)
        assert sale["amount"] == 100
        moves = rig.store.query("SELECT data_json FROM events WHERE kind='robot_move' AND "
                                "terminal='T3' AND mono_ns >= ?", (start,))
        assert any('"move":"keys"' in m[0] for m in moves)
    if terminal == "T2":
        ecr = rig.store.query("SELECT data_json FROM events WHERE kind='ecr_io' AND "
                              "terminal='T2' AND mono_ns >= ?", (start,))
        assert ecr and all('"attempts":1' in e[0] for e in ecr)


def test_sale_without_console_takes_its_result_from_ecr(plab):
    rig = plab
    rig.ensure_ready("T4")
    start = rig.store.query("SELECT max(mono_ns) FROM events")[0][0] or 0
    r = rig.sale("T4", amount="2.00", card="cup_debit", entry="swipe")
    assert (r.outcome, r.rc) == ("approved", "00"), r
    entries = _journal(rig)
    first = {}
    for e in entries:
        if e.get("terminal") == "T4" and e["mono_ns"] >= start:
            first.setdefault(e["what"], e["mono_ns"])
    truth_res = (first["result"] - first["card_swiped"]) / 1e9
    assert 0 <= r.card_to_result_s - truth_res < 0.25  # RESULT? polled every 50 ms
    assert abs(r.card_to_auth_s - (first["auth_req_sent"] - first["card_swiped"]) / 1e9) < TOL_S
    rig.flush()
    figs = load_run(rig.store.path, rig.run_id).figures()
    assert figs.loc[r.cycle, "result_src"] == "ecr"
