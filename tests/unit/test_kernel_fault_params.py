"""Kernel-fault parameters are checked before anything is touched.

The faults point at a namespace that does not exist, and every way to the kernel (``nft``,
netlink, the capability probe, subprocesses) is replaced by a tripwire: a bad parameter must
raise :class:`FaultParamError` (a TestError and a ValueError) without reaching any of them.
Needs no root.
"""

from __future__ import annotations

import ipaddress
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.core.errors import InfrastructureError, TestError
from rig.faults import kernel
from rig.faults.kernel import FaultParamError, KernelFaults, Match

NS = "rig-no-such-ns-for-unit-tests"
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class Tripwire(Exception):
    pass


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []

    def trip(what: str):
        def f(*a, **k):
            made.append(what)
            raise Tripwire(what)
        return f

    monkeypatch.setattr(KernelFaults, "_nft", trip("nft"))
    monkeypatch.setattr(KernelFaults, "_open_iproute", trip("netlink"))
    monkeypatch.setattr(kernel, "probe", trip("probe"))
    monkeypatch.setattr(kernel.subprocess, "run", trip("subprocess"))
    monkeypatch.setattr(kernel._netns, "exists", trip("netns"))
    return made


def bad_numbers(lo: float, hi: float, lo_open: bool = True) -> st.SearchStrategy:
    below = st.floats(max_value=lo, allow_nan=False) if lo_open else st.floats(
        max_value=lo, exclude_max=True, allow_nan=False)
    return st.one_of(below, st.floats(min_value=hi, exclude_min=True),
                     st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                     st.booleans(), st.text(max_size=3), st.none())


good_match = Match(port=7000)
bad_names = st.text(max_size=60).filter(lambda s: not re.fullmatch(r"[A-Za-z0-9_]{1,48}", s))
bad_ifaces = st.text(max_size=20).filter(
    lambda s: not re.fullmatch(r"[A-Za-z0-9_.+-]{1,15}", s) or s in (".", ".."))


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_network(s, strict=False)
        return True
    except ValueError:
        return False


def check(calls: list[str], fn, *args, **kwargs) -> FaultParamError:
    with pytest.raises(FaultParamError) as e:
        fn(*args, **kwargs)
    assert isinstance(e.value, TestError) and isinstance(e.value, ValueError)
    assert str(e.value)
    assert calls == [], f"touched {calls} before rejecting {args} {kwargs}"
    return e.value


@SETTINGS
@given(percent=bad_numbers(0, 100))
def test_loss_percent(calls, percent) -> None:
    check(calls, KernelFaults(NS).loss, "x", percent, good_match)


def test_loss_below_resolution(calls) -> None:
    assert "0.01" in str(check(calls, KernelFaults(NS).loss, "x", 0.001, good_match))


@SETTINGS
@given(name=bad_names)
def test_fault_names(calls, name) -> None:
    k = KernelFaults(NS)
    check(calls, k.loss, name, 10, good_match)
    check(calls, k.blackhole, name, good_match)
    check(calls, k.reject, name, good_match)


@SETTINGS
@given(iface=bad_ifaces)
def test_interface_names(calls, iface) -> None:
    k = KernelFaults(NS)
    check(calls, k.link_down, iface)
    check(calls, k.flap, iface, 1, 1)
    check(calls, k.rate, iface, 1000)
    check(calls, k.netem, iface, delay_ms=10)
    with pytest.raises(FaultParamError):
        Match(iface=iface)


@SETTINGS
@given(kbit=bad_numbers(0, 34_000_000))
def test_rate_kbit(calls, kbit) -> None:
    check(calls, KernelFaults(NS).rate, "eth0", kbit)


@SETTINGS
@given(burst=bad_numbers(0, 1_000_000), latency=bad_numbers(0, 60_000))
def test_rate_burst_and_latency(calls, burst, latency) -> None:
    check(calls, KernelFaults(NS).rate, "eth0", 1000, burst_kb=burst)
    check(calls, KernelFaults(NS).rate, "eth0", 1000, latency_ms=latency)


def test_rate_burst_that_never_drains(calls) -> None:
    assert "drain" in str(check(calls, KernelFaults(NS).rate, "eth0", 1, burst_kb=64))


@SETTINGS
@given(down=bad_numbers(0, 3600), up=st.floats(0.1, 10))
def test_flap_times(calls, down, up) -> None:
    check(calls, KernelFaults(NS).flap, "eth0", down, up)
    check(calls, KernelFaults(NS).flap, "eth0", up, down)


@SETTINGS
@given(field=st.sampled_from(["loss", "reorder", "corrupt", "duplicate"]),
       value=bad_numbers(0, 100, lo_open=False))
def test_netem_percentages(calls, field, value) -> None:
    check(calls, KernelFaults(NS).netem, "eth0", delay_ms=10, **{field: value})


@pytest.mark.parametrize("kw", [{}, {"jitter_ms": 5}, {"reorder": 10}, {"delay_ms": -1},
                                {"delay_ms": math.nan}])
def test_netem_combinations(calls, kw) -> None:
    check(calls, KernelFaults(NS).netem, "eth0", **kw)


@SETTINGS
@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536), st.booleans(),
                      st.floats(), st.text(max_size=3)),
       addr=st.one_of(st.text(max_size=20).filter(lambda s: not _is_ip(s)),
                      st.integers(), st.just("10.0.0.300"), st.just("fd00::g")),
       direction=st.text(max_size=5).filter(lambda s: s not in ("in", "out", "both")))
def test_match(calls, port, addr, direction) -> None:
    with pytest.raises(FaultParamError, match="port"):
        Match(port=port)
    with pytest.raises(FaultParamError, match="addr"):
        Match(addr=addr)
    with pytest.raises(FaultParamError, match="direction"):
        Match(port=1, direction=direction)  # type: ignore[arg-type]
    with pytest.raises(FaultParamError, match="at least one"):
        Match(direction="in")
    check(calls, KernelFaults(NS).loss, "x", 10, "port 7000")  # not a Match
    assert calls == []


def test_bad_handles_and_namespace_names(calls) -> None:
    with pytest.raises(TestError, match="handle"):
        KernelFaults(NS).undo("table rig_x")
    with pytest.raises(TestError, match="namespace"):
        KernelFaults("../etc")
    assert calls == []


def test_good_parameters_reach_the_namespace_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid parameters get as far as 'that namespace does not exist', nothing further."""
    made: list[str] = []
    monkeypatch.setattr(KernelFaults, "_nft", lambda *a: made.append("nft"))
    monkeypatch.setattr(KernelFaults, "_open_iproute", lambda *a: made.append("netlink"))
    monkeypatch.setattr(kernel, "probe", lambda *a, **k: made.append("probe"))
    k = KernelFaults(NS)
    for call in (lambda: k.loss("x", 30, Match(addr="10.0.0.2", port=7000)),
                 lambda: k.blackhole("x", Match(iface="eth0")),
                 lambda: k.reject("x", Match(addr="fd00::2/64", direction="out")),
                 lambda: k.link_down("eth0"), lambda: k.flap("eth0", 0.5, 1.5),
                 lambda: k.rate("eth0", 512), lambda: k.netem("eth0", delay_ms=50, loss=1)):
        with pytest.raises(InfrastructureError, match="does not exist"):
            call()
    assert made == [] and k.records == []


def test_match_expressions() -> None:
    m = Match(iface="rig0", addr="10.0.0.2", port=7000)
    assert m.nft("in") == 'iifname "rig0" ip saddr 10.0.0.2 meta l4proto { tcp, udp } th dport 7000'
    assert m.nft("out") == 'oifname "rig0" ip daddr 10.0.0.2 meta l4proto { tcp, udp } th sport 7000'
    assert Match(addr="fd00::1:2/64").nft("in") == "ip6 saddr fd00::/64"
