"""Fault parameters are checked before anything changes; scenario files fail with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from rig.config import load_lab
from rig.core.errors import ConfigError, TestError
from rig.faults import (
    FAULTS,
    Brownout,
    CardMute,
    Latency,
    Loss,
    PowerDropout,
    SlowRamp,
    fault_from_dict,
    make_fault,
)
from rig.faults.inject import Backends, Injector
from rig.faults.scenarios import load_scenario, load_scenarios
from rig.timeline.events import ListSink

VIRTUAL = Path(__file__).resolve().parents[2] / "configs" / "labs" / "virtual.yaml"


@given(st.floats(max_value=-1e-9, allow_nan=False))
def test_negative_latency_is_refused(ms: float) -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Latency(ms=ms)


@given(st.one_of(st.floats(min_value=100.0001, max_value=1e9), st.floats(max_value=0)))
def test_loss_outside_0_100_is_refused(percent: float) -> None:
    with pytest.raises(ValidationError):
        Loss(percent=percent)


@given(st.text(min_size=1).filter(lambda s: s not in ("signon", "auth", "sale", "cycle")))
def test_unknown_phase_is_refused(phase: str) -> None:
    with pytest.raises(TestError, match="during"):
        make_fault("latency", ms=10, during=phase)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
       st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_bad_window_is_refused(at_s: float, for_s: float) -> None:
    if at_s >= 0 and for_s > 0:
        Latency(ms=1, at_s=at_s, for_s=for_s)
    else:
        with pytest.raises(ValidationError):
            Latency(ms=1, at_s=at_s, for_s=for_s)


def test_every_fault_is_described_and_round_trips() -> None:
    for name, cls in FAULTS.items():
        assert cls.what, name
        assert cls.layer in ("proxy", "kernel", "host", "power", "card", "robot")
    f = fault_from_dict({"fault": "latency", "ms": "300", "jitter_ms": 5, "during": "signon"})
    assert f == Latency(ms=300, jitter_ms=5, during="signon")
    assert f.label() == "latency(direction=both, toxicity=1.0, ms=300.0, jitter_ms=5.0, during=signon)"
    with pytest.raises(TestError, match="unknown fault 'latnecy'"):
        make_fault("latnecy", ms=1)
    with pytest.raises(TestError, match="unknown parameter"):
        make_fault("latency", ms=1, msec=2)


class Spy:
    """A backend that records every call: none may happen when a check fails."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        def call(*a, **k):
            self.calls.append(name)
            return "id"
        return call


def _injector(tmp_path: Path, relay: bool = False) -> tuple[Injector, Spy]:
    over = {}
    if relay:
        over = {"instruments": {"relay1": {"kind": "relay", "port": "loop://"}},
                "terminals": {"T1": {"power": {"relay": "relay1", "channel": 1, "psu": None,
                                               "voltage": None, "current_limit": None}}}}
    cfg = load_lab(VIRTUAL, overrides=over)
    spy = Spy()
    inj = Injector(Backends(cfg=cfg, sink=ListSink(), host_rules=spy, proxies={"T1": spy},
                            power=lambda t: spy, lab=None))
    return inj, spy


def test_a_relay_can_only_drop_out(tmp_path: Path) -> None:
    inj, spy = _injector(tmp_path, relay=True)
    for f in (Brownout(volts=6, ms=100), SlowRamp(s=1)):
        with pytest.raises(TestError, match="through relay .*can only switch"):
            inj.on("T1", f)
    inj.check("T1", PowerDropout(ms=100))
    assert spy.calls == [] and inj.active == {}


def test_checks_happen_before_any_change(tmp_path: Path) -> None:
    inj, spy = _injector(tmp_path)
    with pytest.raises(TestError, match="above the terminal's nominal"):
        inj.on("T1", Brownout(volts=13, ms=10))
    with pytest.raises(TestError, match="unknown terminal"):
        inj.on("T9", Latency(ms=1))
    with pytest.raises(TestError, match="fault proxy"):
        inj.on("T2", Latency(ms=1))  # T2 has no proxy in this backend
    with pytest.raises(TestError, match="card faults"):
        inj.on("T1", CardMute(card="cup_debit"))  # no virtual lab control here
    assert spy.calls == [] and inj.active == {}


def test_shipped_scenarios_load() -> None:
    scs = load_scenarios()
    for need in ("no-power", "no-network", "unstable-network", "host-down", "host-no-response",
                 "host-error-96", "mac-error", "wrong-operator", "not-signed-on", "damaged-chip",
                 "expired-card", "insufficient-funds", "brownout"):
        assert need in scs


def test_bad_scenario_file_names_file_line_field(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("name: broken\ntitle: x\nprocedure: signon\nfaults:\n"
                 "  - {fault: latency, ms: -5}\nexpect: {recovers: true, colour: red}\n")
    with pytest.raises(ConfigError) as e:
        load_scenario(p)
    text = str(e.value)
    assert f"{p}:5: faults.0: fault latency: ms" in text and "greater than or equal to 0" in text
    assert f"{p}:6: expect.colour: unknown key" in text
