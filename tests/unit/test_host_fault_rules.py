"""HostFaultSpec validation and ResponseRules fault bookkeeping (no sockets)."""

from __future__ import annotations

import string
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rig.config import HostConfig
from rig.host.rules import (
    APPLIES_TO,
    FAULT_ACTIONS,
    NO_FAULTS,
    HostFaultSpec,
    ResponseRules,
)

RC_CHARS = string.ascii_letters + string.digits
valid_rc = st.text(alphabet=RC_CHARS, min_size=2, max_size=2)
bad_rc = st.one_of(
    st.text(max_size=5).filter(lambda s: not (len(s) == 2 and s.isascii() and s.isalnum())),
    st.integers(), st.none())
ms_ok = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
terminals = st.one_of(st.none(), st.sampled_from(["T1", "T2", "T3"]))


def kwargs_for(action: str, applies_to: str, rc: str, ms: float) -> dict[str, Any]:
    kw: dict[str, Any] = {"action": action, "applies_to": applies_to}
    if action == "rc":
        kw["rc"] = rc
    if action in ("delay", "slow_signon"):
        kw["ms"] = ms
    return kw


def allowed(action: str, applies_to: str) -> bool:
    if action == "slow_signon":
        return applies_to in ("signon", "all")
    if action == "bad_mac":
        return applies_to != "signon"
    return True


@given(st.sampled_from(FAULT_ACTIONS), st.sampled_from(APPLIES_TO), terminals, valid_rc, ms_ok,
       st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)))
def test_valid_specs_construct(action: str, applies_to: str, terminal: str | None, rc: str,
                               ms: float, count: int | None) -> None:
    kw = kwargs_for(action, applies_to, rc, ms)
    if not allowed(action, applies_to):
        with pytest.raises(ValueError, match=action):
            HostFaultSpec(terminal=terminal, count=count, **kw)
        return
    spec = HostFaultSpec(terminal=terminal, count=count, **kw)
    assert spec.action == action and spec.count == count and isinstance(spec.ms, float)
    assert spec.rc == (rc if action == "rc" else None)


@given(bad_rc)
def test_rc_must_be_two_alphanumerics(rc: Any) -> None:
    with pytest.raises(ValueError, match="rc"):
        HostFaultSpec("rc", rc=rc)


@given(st.sampled_from([a for a in FAULT_ACTIONS if a != "rc"]), valid_rc)
def test_rc_only_for_action_rc(action: str, rc: str) -> None:
    with pytest.raises(ValueError, match="takes no rc"):
        HostFaultSpec(action, rc=rc)  # type: ignore[arg-type]


@given(st.sampled_from(["delay", "slow_signon"]),
       st.one_of(st.floats(max_value=-1e-9), st.just(float("nan")), st.just(float("inf")),
                 st.text(max_size=3), st.booleans()))
def test_ms_must_be_a_finite_non_negative_number(action: str, ms: Any) -> None:
    with pytest.raises(ValueError, match="ms"):
        HostFaultSpec(action, ms=ms)  # type: ignore[arg-type]


@given(st.sampled_from(["no_response", "rc", "bad_mac", "garbage", "close"]),
       st.floats(min_value=1e-6, max_value=1e6))
def test_ms_only_for_delays(action: str, ms: float) -> None:
    with pytest.raises(ValueError, match="takes no ms"):
        HostFaultSpec(action, ms=ms, rc="96" if action == "rc" else None)  # type: ignore[arg-type]


@given(st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=2)))
def test_count_must_be_an_integer_from_one(count: Any) -> None:
    with pytest.raises(ValueError, match="count"):
        HostFaultSpec("close", count=count)


@given(st.text(max_size=12).filter(lambda s: s not in FAULT_ACTIONS))
def test_unknown_action(action: str) -> None:
    with pytest.raises(ValueError, match="action"):
        HostFaultSpec(action)  # type: ignore[arg-type]


@given(st.text(max_size=12).filter(lambda s: s not in APPLIES_TO))
def test_unknown_applies_to(applies_to: str) -> None:
    with pytest.raises(ValueError, match="applies_to"):
        HostFaultSpec("close", applies_to=applies_to)  # type: ignore[arg-type]


def test_rc_required_and_empty_terminal_refused() -> None:
    with pytest.raises(ValueError, match="needs rc"):
        HostFaultSpec("rc")
    with pytest.raises(ValueError, match="terminal"):
        HostFaultSpec("close", terminal="")


# --- ResponseRules --------------------------------------------------------------------------------

@pytest.fixture
def rules() -> ResponseRules:
    return ResponseRules(HostConfig())


def test_add_remove_faults_clear(rules: ResponseRules) -> None:
    a = rules.add_fault(HostFaultSpec("close", terminal="T1"))
    b = rules.add_fault(HostFaultSpec("delay", ms=5))
    assert a != b and [f for f, _ in rules.faults()] == [a, b]
    rules.remove_fault(a)
    rules.remove_fault(a)
    rules.remove_fault("nope")
    assert [f for f, _ in rules.faults()] == [b]
    rules.clear()
    assert rules.faults() == []
    with pytest.raises(TypeError):
        rules.add_fault({"action": "close"})  # type: ignore[arg-type]


def test_matching_by_terminal_and_message_class(rules: ResponseRules) -> None:
    rules.add_fault(HostFaultSpec("rc", terminal="T1", applies_to="reversal", rc="96"))
    rules.add_fault(HostFaultSpec("slow_signon", ms=100))
    rules.add_fault(HostFaultSpec("bad_mac"))
    assert rules.take_faults("T1", "reversal").event_data()["fault"] == "rc,bad_mac"
    assert rules.take_faults("T2", "reversal").event_data()["fault"] == "bad_mac"
    plan = rules.take_faults("T2", "signon")
    assert plan.event_data() == {"fault": "slow_signon", "fault_ids": ["hf2"],
                                 "fault_delay_ms": 100.0}
    assert not rules.take_faults("T1", "network").applied
    assert rules.take_faults(None, "signon") is NO_FAULTS  # unknown terminal id


def test_own_terminal_first_then_order_added(rules: ResponseRules) -> None:
    rules.add_fault(HostFaultSpec("rc", rc="96"))
    rules.add_fault(HostFaultSpec("rc", rc="91"))
    rules.add_fault(HostFaultSpec("rc", terminal="T1", rc="05"))
    assert rules.take_faults("T1", "auth").rc == "05"
    assert rules.take_faults("T2", "auth").rc == "96"


def test_dispositions_mask_the_rest(rules: ResponseRules) -> None:
    rules.add_fault(HostFaultSpec("delay", ms=10))
    rules.add_fault(HostFaultSpec("rc", rc="96", count=1))
    rules.add_fault(HostFaultSpec("garbage", count=1))
    rules.add_fault(HostFaultSpec("close", count=1))
    plan = rules.take_faults("T1", "auth")
    assert plan.disposition == "garbage" and plan.rc is None and plan.delay_ms == 10
    plan = rules.take_faults("T1", "auth")  # garbage spent: close masks rc and delay
    assert plan.disposition == "close" and [s.action for _, s in plan.applied] == ["close"]
    plan = rules.take_faults("T1", "auth")
    assert plan.disposition is None and plan.rc == "96"  # never spent while masked


def test_count_spends_and_refund_gives_back(rules: ResponseRules) -> None:
    fid = rules.add_fault(HostFaultSpec("rc", rc="A0", count=2))
    assert rules.take_faults("T1", "auth").rc_id == fid
    rules.refund_fault(fid)
    assert rules.take_faults("T1", "auth").rc == "A0"
    assert rules.take_faults("T1", "auth").rc == "A0"
    assert rules.faults() == [] and rules.take_faults("T1", "auth").rc is None
    rules.refund_fault(fid)  # a spent fault can be given back until pruned
    assert rules.take_faults("T1", "auth").rc == "A0"
    rules.add_fault(HostFaultSpec("close"))  # prunes spent faults
    rules.refund_fault(fid)
    assert rules.take_faults("T1", "auth").rc is None


@given(st.integers(min_value=1, max_value=40))
def test_count_is_exact_under_concurrency(count: int) -> None:
    rules = ResponseRules(HostConfig())
    rules.add_fault(HostFaultSpec("no_response", count=count))
    hits: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        n = sum(1 for _ in range(20) if rules.take_faults("T1", "auth").disposition)
        with lock:
            hits.append(n)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(hits) == min(count, 80)
