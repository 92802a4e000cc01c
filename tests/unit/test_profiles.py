"""Terminal profiles as data: the shipped ones load and read back what they print; broken ones
fail with file:line; console logs are checked; keypad moves are planned from the map."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.config import Point, load_lab
from rig.core.errors import ConfigError, TestError
from rig.drivers.profiles import KIND_OF, classify
from rig.drivers.robot_moves import MovePlans
from rig.terminal_profiles import (
    EVENTS,
    FIGURE_EVENTS,
    canonical_event,
    check_log,
    decode_log,
    figure_gaps,
    lab_gaps,
    load_profile,
    load_profile_file,
    shipped_profiles,
)
from rig.timeline.events import EventKind

ROOT = Path(__file__).resolve().parents[2]
VLAB_LINES = ["812 INFO BOOT done", "850 INFO LOGIN ok op=01", "871 INFO CLOCK sync",
              "872 INFO SIGNON start attempt=1", "905 INFO SIGNON ok", "906 INFO READY",
              "2000 INFO SALE start type=sale amount=100", "2001 INFO CARD wait",
              "2100 INFO CARD read mode=chip pan=622202*********0128",
              "2200 INFO RESULT approved rc=00 auth=123456 rrn=000000000001 stan=000002"]


def test_shipped_profiles_and_the_template_load():
    assert {"vlab", "pax-a920", "newland-n910"} <= set(shipped_profiles())
    assert load_profile_file(ROOT / "configs/profiles/template.yaml").drive == "ecr"
    assert set(KIND_OF) == set(EVENTS)
    assert load_profile("newland-n910").encoding == "gbk"
    assert load_profile("pax-a920").ecr == "framed"


@pytest.mark.parametrize("name", ["vlab", "pax-a920", "newland-n910"])
def test_each_profile_reads_back_every_event_it_prints(name):
    prof = load_profile(name)
    for text in [line.split(" ", 2)[2] for line in VLAB_LINES] + [
            "SIGNON fail rc=96 attempt=1", "SIGNON giveup", "CARD insert again",
            "CARD fail reason=no ATR", "REVERSAL sent stan=000003",
            "RESULT declined rc=51 auth= rrn=000000000009 stan=000004"]:
        ev = canonical_event(text)
        line = prof.render(ev, text, ms=812, level="INFO", time="12:00:00", date="2026-01-01")
        if ev is None or line is None:
            continue
        line.encode(prof.encoding)  # printable in the console's encoding
        m = prof.match(line)
        assert m is not None and m.event == ev, (name, text, line)
        if ev == "result":
            assert m.canonical().startswith(f"RESULT {text.split()[1]} rc={text.split()[2][3:]}")
            assert "stan=" in m.canonical()


def test_classify_keeps_vlab_lines_and_rewrites_others():
    assert classify(load_profile("vlab"), "906 INFO READY") == (EventKind.READY, None)
    kind, line = classify(load_profile("newland-n910"),
                          "12:00:01 交易拒绝 应答码:51 授权码: 参考号:000000000009 凭证号:000004")
    assert kind is EventKind.AUTH_RESULT
    assert line == "RESULT declined rc=51 rrn=000000000009 stan=000004"
    assert classify(load_profile("pax-a920"), "[12:00:00] [DBG] CLOCK sync") == (
        EventKind.CONSOLE_LINE, None)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "broken.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("body, line, words", [
    ("console:\n  ready: {pattern: 'READY('}\n", 2, ["console.ready.pattern",
                                                      "bad regular expression"]),
    ("console:\n  boot: {pattern: 'x'}\n  redy: {pattern: 'READY'}\n", 3,
     ["console.redy", "unknown event 'redy'"]),
    ("console:\n  ready: {pattern: '(?P<colour>x)'}\n", 2, ["named group(s) colour"]),
    ("console:\n  ready: {pattern: 'READY', emit: 'IDLE'}\n", 2,
     ["console.ready.emit", "reads as no event"]),
    ("unsupported:\n  sign_on: no idea\n", 2, ["unknown event 'sign_on'"]),
    ("drive: keypad\nkeypad: {SALE: {x: 0, y: 0}}\n", 2, ["needs keys ENTER"]),
    ("encoding: klingon\n", 1, ["unknown encoding"]),
    ("console:\n  ready: {pattern: 'R', emit: 'R {rc:>4}'}\n", 2, ["format specs only on {ms}"]),
])
def test_a_broken_profile_fails_with_file_and_line(tmp_path, body, line, words):
    path = _write(tmp_path, "description: broken\n" + body)
    with pytest.raises(ConfigError) as e:
        load_profile_file(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line + 1}:"), msg
    for w in words:
        assert w in msg, msg


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown terminal profile 'nope'.*vlab"):
        load_profile("nope")


def test_check_log_reads_a_capture_and_lists_what_is_missing():
    prof = load_profile("vlab")
    capture = ["# rig console capture: terminal T1"] + [
        f"2026-11-30T07:38:36.{i:06d}Z\t{line}" for i, line in enumerate(VLAB_LINES)]
    r = check_log(prof, capture)
    assert r.clean and r.missing == []
    assert r.seen["result"] == 1 and r.lines[0] == (2, VLAB_LINES[0], "boot", "BOOT done")
    assert "insert_again" in r.not_seen and "reversal" in r.not_seen
    r = check_log(prof, [line for line in VLAB_LINES if "READY" not in line])
    assert not r.clean and r.missing == ["ready"]
    assert not check_log(prof, ["garbage", "\x00\xff"]).clean


def test_decode_log_takes_gbk_and_any_bytes():
    gbk = "12:00:00 待机 请选择交易\n".encode("gbk")
    assert decode_log(gbk, "gbk") == ["12:00:00 待机 请选择交易"]
    assert check_log(load_profile("newland-n910"), decode_log(gbk, "gbk")).seen == {"ready": 1}
    assert len(decode_log(bytes(range(256)) * 3, "gbk")) >= 1  # never raises


def test_figure_gaps_say_why_a_figure_cannot_come():
    tmpl = load_profile_file(ROOT / "configs/profiles/template.yaml")
    assert figure_gaps(load_profile("vlab"), console=True, ecr=False) == {}
    assert figure_gaps(tmpl, console=True, ecr=True) == {}
    gaps = figure_gaps(load_profile("newland-n910"), console=False, ecr=False)
    assert set(gaps) == {"ready_s", "auth_to_result_s", "card_to_result_s"}
    assert "no console" in gaps["ready_s"]
    snap = load_lab(ROOT / "configs/labs/bench-example.yaml").snapshot()
    gaps = lab_gaps(snap)
    assert "A920-02" not in gaps  # console, profile reads READY and results


def test_keypad_plan_presses_each_key_at_its_place():
    lab = load_lab(ROOT / "configs/labs/virtual.yaml")
    assert lab.robot is not None
    plans = MovePlans(lab.robot, 6000)
    kp = load_profile("vlab").keypad
    assert kp is not None
    origin = Point(x=170, y=170, z=-5)
    steps = plans.press_keys(origin, kp, ["SALE", "1", "0", "ENTER"])
    downs = [s.axes for s in steps if s.axes and s.axes.get("z") == pytest.approx(-6.5)]
    assert len(downs) == 4
    xy = [(s.axes["x"], s.axes["y"]) for s in steps if s.axes and "x" in s.axes][1:]
    assert xy == [(206, 170), (170, 170), (182, 206), (194, 206)]
    dwells = [s.dwell_s for s in steps if s.line.startswith("G4") and s.dwell_s]
    assert dwells == [0.12] * 4 and sum(s.mark for s in steps) == 1
    with pytest.raises(TestError, match="no key.*PAY"):
        plans.press_keys(origin, kp, ["PAY"])


def test_figure_events_are_known_events():
    assert set(FIGURE_EVENTS) <= set(EVENTS)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_console_bytes_classify_without_error(data):
    for name in ("vlab", "pax-a920", "newland-n910"):
        prof = load_profile(name)
        line = data.decode(prof.encoding, "replace")
        kind, canonical = classify(prof, line)
        assert isinstance(kind, EventKind)
        assert canonical is None or canonical.split()[0] in {s.head.split()[0]
                                                             for s in EVENTS.values()}
        canonical_event(line)
