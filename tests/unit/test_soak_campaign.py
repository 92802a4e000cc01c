"""Campaign files: the shipped ones load; a bad one fails with file:line: field: problem."""

from __future__ import annotations

import shutil
from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rig.cards.profiles import load_cards
from rig.core.errors import ConfigError
from rig.faults import HostNoResponse, Latency
from rig.soak import (
    AwaitSignon,
    Campaign,
    PowerCycle,
    RobotHome,
    Sales,
    Settle,
    Wait,
    load_campaign,
    load_campaigns,
)
from rig.soak.campaign import CAMPAIGNS_DIR, parse_amount, parse_duration, parse_local_time

ROOT = Path(__file__).resolve().parents[2]
VIRTUAL = ROOT / "configs" / "labs" / "virtual.yaml"

HEAD = f"""name: t
label: fw-1
lab: {VIRTUAL}
"""
STEPS = """steps:
  - power_cycle: {off_s: 0.5}
  - await_signon: {timeout_s: 30}
  - sales: {count: 2, card: cup_debit, entry: chip, amount: "1.00"}
  - wait: {s: 0.2}
stop: {cycles: 3}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_campaign(path)
    return str(e.value)


# --- the shipped campaigns -------------------------------------------------------------------

def test_shipped_campaigns_load() -> None:
    camps = load_campaigns()
    assert {"demo", "nightly"} <= set(camps)
    demo = camps["demo"]
    assert demo.source == (CAMPAIGNS_DIR / "demo.yaml").resolve()
    assert demo.lab_path().resolve() == VIRTUAL.resolve()
    assert demo.terminal_names() == ["T1", "T2", "T3", "T4"]
    assert [s.kind for s in demo.steps] == ["power_cycle", "await_signon", "sales", "sales",
                                           "wait"]
    sales = [s for s in demo.steps if isinstance(s, Sales)]
    assert [(s.card, s.entry, s.amount) for s in sales] == [
        ("cup_debit", "chip", "1.00"), ("visa_credit", "tap", "2.00")]
    assert demo.matrix.order == "round_robin"
    kinds = {c.id: c.kind for c in demo.matrix.cases}
    assert kinds["baseline"] == "baseline" and "scenario" in kinds.values()
    faults = [f for c in demo.matrix.cases for f in c.fault_objects(demo.scenarios())]
    assert Latency(ms=200, during="signon") in faults
    assert any(isinstance(f, HostNoResponse) and f.during == "auth" for f in faults)

    night = camps["nightly"]
    assert night.matrix.order == "random" and night.matrix.seed is not None
    assert night.stop.cycles is None and night.stop.duration == 36000
    assert night.stop.until == time(7, 0)
    assert any(isinstance(s, RobotHome) for s in night.health.recover)
    assert len(night.matrix.cases) > len(demo.matrix.cases)


def test_snapshot_validates_again() -> None:
    demo = load_campaign(CAMPAIGNS_DIR / "demo.yaml")
    snap = demo.snapshot()
    assert snap["source"] and snap["lab_path"]
    again = Campaign.model_validate({k: v for k, v in snap.items()
                                     if k not in ("source", "lab_path")})
    assert again.model_dump() == demo.model_dump()  # (private attrs: where it came from)


# --- shape errors: file:line: field ------------------------------------------------------------

def test_bad_shape_names_file_line_field(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + """steps:
  - power_cycle: {off_s: 0.5}
  - await_signon: {timeout_s: 30}
  - sales: {card: cup_debit, amount: "1.001"}
  - reboot: {}
  - robot_home
  - wait
stop: {cycles: 0, duration: "8 parsecs"}
matrix:
  cases:
    - id: base
      none: true
    - id: slow
      faults:
        - {fault: latency, ms: -5}
colour: red
""")
    text = problems(p)
    assert f"{p}:7: steps.2.sales.amount: amount '1.001': must be positive with at most 2 " \
           "decimals" in text
    assert f"{p}:8: steps.3: unknown cycle step 'reboot'" in text
    assert f"{p}:9: steps.4: unknown cycle step 'robot_home' (robot_home belongs in " \
           "health.recover" in text
    assert f"{p}:10: steps.5.wait.s: Field required" in text
    assert f"{p}:11: stop.cycles: Input should be greater than or equal to 1" in text
    assert f"{p}:11: stop.duration: duration '8 parsecs'" in text
    assert f"{p}:18: matrix.cases.1.faults.0: fault latency: ms: Input should be greater than " \
           "or equal to 0" in text
    assert f"{p}:19: colour: unknown key" in text


@pytest.mark.parametrize(("body", "line", "field", "message"), [
    ("stop: {}\n", 5, "stop", "give at least one of cycles, duration, until"),
    ("stop: {cycles: 2}\nmatrix: {order: random, cases: [{id: a, none: true}]}\n", 6, "matrix",
     "order random needs a seed"),
    ("stop: {cycles: 2}\nmatrix:\n  cases:\n    - {id: a, none: true}\n    - {id: a, none: true}\n",
     6, "matrix", "case ids must be unique: a given twice"),
    ("stop: {cycles: 2}\nmatrix:\n  cases:\n    - {id: a, none: true, weight: 1.5}\n", 6,
     "matrix", "round_robin weights are whole numbers"),
    ("stop: {cycles: 2}\nmatrix:\n  cases:\n    - {id: a}\n", 8, "matrix.cases.0",
     "give exactly one of `none: true`, `faults: [...]`, `scenario: <name>`"),
    ("stop: {cycles: 2}\nmatrix:\n  cases:\n    - {id: a, none: true, scenario: brownout}\n", 8,
     "matrix.cases.0", "(got none, scenario)"),
    ("stop: {cycles: 2}\nmatrix:\n  cases:\n    - {id: a, faults: []}\n", 8, "matrix.cases.0",
     "faults is empty"),
    ("stop: {until: 7}\n", 5, "stop.until", "quote the time"),
    ("stop: {cycles: 2}\nchunk: 0\n", 6, "chunk", "greater than or equal to 1"),
])
def test_bad_values_name_their_line(tmp_path: Path, body: str, line: int, field: str,
                                    message: str) -> None:
    p = write(tmp_path, HEAD + "steps: [wait: {s: 1}]\n" + body)
    text = problems(p)
    assert f"{p}:{line}: {field}: " in text and message in text, text


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + "steps:\n  - wait: {s: 1\nstop: {cycles: 1}\n")
    assert problems(p).startswith(f"{p}:6: YAML syntax")


# --- errors that need the lab, the scenarios and the cards ----------------------------------------

def test_bad_references_name_file_line_field(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + """terminals: [T1, T9]
steps:
  - power_cycle: {off_s: 1}
  - sales: {card: gold_card, entry: chip}
  - await_signon: {timeout_s: 30}
  - sales: {card: magstripe_only, entry: chip}
  - settle
stop: {cycles: 3}
matrix:
  cases:
    - id: base
      none: true
    - id: login
      scenario: wrong-operator
    - id: nope
      scenario: no-such-scenario
    - id: card
      faults: [{fault: card_mute, card: platinum}]
    - id: funds
      scenario: insufficient-funds
""")
    text = problems(p)
    assert f"{p}:4: terminals.1: no terminal 'T9' in lab virtual (T1, T2, T3, T4)" in text
    assert f"{p}:7: steps.1.sales: a sales step after a power_cycle needs an await_signon" in text
    assert f"{p}:7: steps.1.sales.card: unknown card 'gold_card'; known: contact_only" in text
    assert f"{p}:9: steps.3.sales.card: card 'magstripe_only' does not support entry 'chip'" \
           in text
    assert f"{p}:17: matrix.cases.1.scenario: scenario 'wrong-operator' (procedure login) " \
           "does not fit inside a soak cycle" in text
    assert f"{p}:19: matrix.cases.2.scenario: unknown scenario 'no-such-scenario'; known: " \
           "brownout" in text
    assert f"{p}:21: matrix.cases.3.faults.0: fault card_mute: unknown card 'platinum'" in text
    assert f"{p}:23: matrix.cases.4.scenario: scenario 'insufficient-funds' has no faults" in text


def test_fault_windows_must_meet_a_step(tmp_path: Path) -> None:
    p = write(tmp_path, HEAD + """steps:
  - power_cycle: {off_s: 1}
  - await_signon: {timeout_s: 30}
stop: {cycles: 3}
matrix:
  cases:
    - id: auth
      faults: [{fault: host_no_response, applies_to: auth}]
      during: auth
    - id: sale
      scenario: host-no-response
    - id: robot
      faults: [{fault: swipe_too_fast}]
""")
    text = problems(p)
    assert f"{p}:11: matrix.cases.0.faults.0: fault host_no_response is on during auth, but " \
           "the cycle has no sales step" in text
    assert f"{p}:14: matrix.cases.1.scenario: scenario 'host-no-response' is about a sale but " \
           "the cycle has no sales step" in text
    assert f"{p}:16: matrix.cases.2.faults.0: fault swipe_too_fast acts on a sale's card" in text


def test_card_outside_the_magazine(tmp_path: Path) -> None:
    cards_dir = tmp_path / "cards"
    shutil.copytree(ROOT / "configs" / "cards", cards_dir)
    text = (cards_dir / "cup_debit.yaml").read_text().replace("name: cup_debit", "name: jcb_gold")
    (cards_dir / "jcb_gold.yaml").write_text(text)
    p = write(tmp_path, HEAD + """steps:
  - sales: {card: jcb_gold, entry: tap}
stop: {cycles: 1}
""")
    with pytest.raises(ConfigError) as e:
        load_campaign(p, cards=load_cards(cards_dir))
    assert f"{p}:5: steps.0.sales.card: card 'jcb_gold' is not in lab virtual's robot " \
           "magazine" in str(e.value)


@pytest.mark.parametrize(("kinds", "bad"), [
    (["power_cycle", "sales", "await_signon"], [1]),
    (["sales", "power_cycle", "await_signon"], []),  # cyclic: the previous cycle signed on
    (["await_signon", "sales"], []),  # no power cycle: the terminal stays signed on
    (["power_cycle", "await_signon", "sales", "power_cycle", "settle"], [4]),
    (["power_cycle", "settle", "sales", "await_signon"], [1, 2]),
    (["sales", "power_cycle"], [0]),
])
def test_sales_need_a_signon_after_a_power_cycle(tmp_path: Path, kinds: list[str],
                                                 bad: list[int]) -> None:
    body = {"power_cycle": "power_cycle: {off_s: 1}", "await_signon": "await_signon",
            "sales": "sales: {card: cup_debit}", "settle": "settle"}
    steps = "".join(f"  - {body[k]}\n" for k in kinds)
    p = write(tmp_path, HEAD + "steps:\n" + steps + "stop: {cycles: 1}\n")
    if not bad:
        load_campaign(p)
        return
    text = problems(p)
    flagged = [i for i in range(len(kinds)) if f"steps.{i}.{kinds[i]}: a {kinds[i]} step" in text]
    assert flagged == bad, text


def test_lab_relative_to_file_then_project(tmp_path: Path) -> None:
    (tmp_path / "labs").mkdir()
    shutil.copy(VIRTUAL, tmp_path / "labs" / "mine.yaml")
    body = "label: fw\nsteps: [wait: {s: 1}]\nstop: {cycles: 1}\n"
    near = write(tmp_path, "name: near\nlab: labs/mine.yaml\n" + body, "near.yaml")
    assert load_campaign(near).lab_path() == tmp_path / "labs" / "mine.yaml"
    project = write(tmp_path, "name: proj\nlab: configs/labs/virtual.yaml\n" + body, "p.yaml")
    assert load_campaign(project).lab_path() == ROOT / "configs" / "labs" / "virtual.yaml"
    missing = write(tmp_path, "name: gone\nlab: labs/gone.yaml\n" + body, "gone.yaml")
    assert problems(missing).startswith(f"{missing}:2: lab: lab config 'labs/gone.yaml' not "
                                        "found")
    broken = tmp_path / "labs" / "broken.yaml"
    broken.write_text(VIRTUAL.read_text().replace("voltage_max: 12.6", "voltage_max: -1"))
    bad_lab = write(tmp_path, "name: b\nlab: labs/broken.yaml\n" + body, "b.yaml")
    text = problems(bad_lab)
    assert text.startswith(f"{bad_lab}:2: lab: {broken}:") and "voltage_max" in text


# --- the parts ------------------------------------------------------------------------------------

def test_steps_defaults_and_deadlines(tmp_path: Path) -> None:
    c = load_campaign(write(tmp_path, HEAD + """steps:
  - power_cycle
  - await_signon: {timeout_s: 20, deadline_s: 25}
  - sales: {count: 3, amount: 2}
  - settle
  - wait: {s: 1.5}
stop: {cycles: 1}
health:
  recover: [power_cycle: {off_s: 30}, robot_home]
"""))
    pc, aw, sa, se, wa = c.steps
    assert isinstance(pc, PowerCycle) and pc.off_s is None and pc.deadline() == 30
    assert isinstance(aw, AwaitSignon) and aw.deadline() == 25
    assert isinstance(sa, Sales) and sa.amount == "2.00" and sa.card == "cup_debit"
    assert sa.deadline() == 3 * (60 + 30)
    assert isinstance(se, Settle) and isinstance(wa, Wait) and wa.deadline() == 6.5
    assert [s.kind for s in c.health.recover] == ["power_cycle", "robot_home"]
    assert c.check_steps() == list(c.steps)  # no check given: the cycle, without faults
    assert c.matrix.cases[0].kind == "baseline"  # no matrix: one baseline case


def test_case_during_applies_to_faults_without_a_window(tmp_path: Path) -> None:
    c = load_campaign(write(tmp_path, HEAD + STEPS + """matrix:
  cases:
    - id: two
      during: signon
      faults:
        - {fault: latency, ms: 100}
        - {fault: host_no_response, applies_to: auth, during: auth}
"""))
    assert c.matrix.cases[0].fault_objects() == [
        Latency(ms=100, during="signon"), HostNoResponse(applies_to="auth", during="auth")]


@given(st.integers(0, 48), st.integers(0, 59), st.integers(0, 59))
def test_duration_text(h: int, m: int, s: int) -> None:
    total = h * 3600 + m * 60 + s
    text = "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"
    if total == 0:
        with pytest.raises(ValueError):
            parse_duration(text)
    else:
        assert parse_duration(text) == total
        assert parse_duration(total) == total
        assert parse_duration(str(total)) == total


@given(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999"), places=2))
def test_amounts_keep_two_decimals(d: Decimal) -> None:
    assert parse_amount(str(d)) == f"{d:.2f}"
    assert parse_amount(float(d)) == f"{d:.2f}"
    with pytest.raises(ValueError):
        parse_amount(str(d) + "1" if "." in str(d) else str(d) + ".001")


def test_local_times() -> None:
    assert parse_local_time("07:00") == time(7, 0)
    assert parse_local_time("6:30:15") == time(6, 30, 15)
    for bad in ("24:00", "7", "07:60", "noon", 420):
        with pytest.raises(ValueError):
            parse_local_time(bad)


def test_stop_deadline_is_the_earlier_criterion(tmp_path: Path) -> None:
    c = load_campaign(write(tmp_path, HEAD + STEPS.replace(
        "stop: {cycles: 3}", 'stop: {duration: 10h, until: "07:00"}')))
    evening = datetime(2026, 11, 24, 20, 0).astimezone()
    assert c.stop.deadline(evening) == evening + timedelta(hours=10)  # before 07:00
    late = datetime(2026, 11, 24, 23, 0).astimezone()
    assert c.stop.deadline(late) == datetime(2026, 11, 25, 7, 0).astimezone()
    morning = datetime(2026, 11, 25, 6, 0).astimezone()
    assert c.stop.deadline(morning) == datetime(2026, 11, 25, 7, 0).astimezone()
    only_cycles = load_campaign(write(tmp_path, HEAD + STEPS, "n.yaml"))
    assert only_cycles.stop.deadline(evening) is None


def test_faults_the_lab_cannot_apply(tmp_path: Path) -> None:
    bench = tmp_path / "bench.yaml"
    bench.write_text(VIRTUAL.read_text().replace("virtual: true", "virtual: false"))
    p = write(tmp_path, f"""name: b
label: fw
lab: {bench}
steps:
  - power_cycle
  - await_signon
  - sales: {{card: cup_debit}}
stop: {{cycles: 1}}
matrix:
  cases:
    - id: chip
      scenario: damaged-chip
    - id: mute
      faults: [{{fault: card_corrupt}}]
""")
    text = problems(p)
    assert f"{p}:12: matrix.cases.0.scenario: scenario 'damaged-chip' needs the virtual lab" \
           in text
    assert f"{p}:14: matrix.cases.1.faults: fault card_corrupt needs the virtual lab's control " \
           "port" in text
    relay = write(tmp_path, """name: r
label: fw
lab: configs/labs/bench-example.yaml
terminals: [A920-01, N910-01]
steps: [power_cycle, await_signon]
stop: {cycles: 1}
matrix:
  cases:
    - {id: sag, scenario: brownout}
    - {id: drop, scenario: no-power}
""", "relay.yaml")
    text = problems(relay)
    assert f"{relay}:9: matrix.cases.0.scenario: fault brownout needs a PSU channel; N910-01 " \
           "is powered through a relay" in text
    assert "cases.1" not in text  # a dropout works through a relay
