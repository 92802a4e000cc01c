"""Toxic validation: invalid parameters raise ValueError before anything changes."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rig.faults.proxy import DIRECTIONS, KINDS, FaultProxy, Toxic

pos = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
prob = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
direction = st.sampled_from(DIRECTIONS)


@st.composite
def valid_toxics(draw: st.DrawFn) -> Toxic:
    kind = draw(st.sampled_from(KINDS))
    common = {"direction": draw(direction), "toxicity": draw(prob)}
    if kind == "latency":
        lat = draw(nonneg)
        jit = draw(pos if lat == 0 else nonneg)
        return Toxic("latency", latency_ms=lat, jitter_ms=jit, **common)
    if kind == "bandwidth":
        return Toxic("bandwidth", rate_kbps=draw(pos), **common)
    if kind == "slicer":
        avg = draw(st.integers(1, 10_000))
        return Toxic("slicer", avg_bytes=avg, size_variation=draw(st.integers(0, avg - 1)),
                     delay_us=draw(st.integers(0, 10**6)), **common)
    if kind == "close_after":
        return Toxic("close_after", bytes=draw(st.integers(0, 10**9)), **common)
    if kind == "slow_close":
        return Toxic("slow_close", delay_ms=draw(pos), **common)
    return Toxic(kind, delay_ms=draw(nonneg), **common)  # stall, reset


@given(valid_toxics())
def test_valid_toxics_construct_and_replace_cleanly(t: Toxic) -> None:
    assert t.kind in KINDS and 0 <= t.toxicity <= 1
    assert dataclasses.replace(t) == t
    assert t.applies_to("up") == (t.direction in ("up", "both"))
    assert t.applies_to("down") == (t.direction in ("down", "both"))


# each kind's numeric fields, and the one that makes it valid when everything else is left at 0
NUMERIC = {
    "latency": ("latency_ms", "jitter_ms"),
    "bandwidth": ("rate_kbps",),
    "slicer": ("avg_bytes", "size_variation", "delay_us"),
    "close_after": ("bytes",),
    "slow_close": ("delay_ms",),
    "stall": ("delay_ms",),
    "reset": ("delay_ms",),
}


@given(valid_toxics(), st.data())
def test_negative_parameter_is_rejected(t: Toxic, data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(("toxicity",) + NUMERIC[t.kind]))
    value = data.draw(st.integers(-10**6, -1) if isinstance(getattr(t, field), int)
                      and field != "toxicity" else st.floats(max_value=-1e-9, min_value=-1e6))
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(t, **{field: value})


@given(valid_toxics(), st.one_of(st.floats(min_value=1.0000001, max_value=1e9),
                                 st.just(math.nan), st.just(math.inf), st.just(-0.5)))
def test_toxicity_outside_0_1_is_rejected(t: Toxic, tox: float) -> None:
    with pytest.raises(ValueError, match="toxicity"):
        dataclasses.replace(t, toxicity=tox)


@given(valid_toxics(), st.sampled_from(["latency_ms", "rate_kbps", "avg_bytes", "bytes",
                                        "delay_us", "delay_ms"]))
def test_parameter_of_another_kind_is_rejected(t: Toxic, field: str) -> None:
    if field in NUMERIC[t.kind]:
        return
    value = 5 if isinstance(getattr(t, field), int) else 5.0
    with pytest.raises(ValueError, match=f"{field} does not apply"):
        dataclasses.replace(t, **{field: value})


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "latency"}, "latency_ms or jitter_ms"),
    ({"kind": "bandwidth"}, "rate_kbps"),
    ({"kind": "slicer"}, "avg_bytes"),
    ({"kind": "slicer", "avg_bytes": 8, "size_variation": 8}, "size_variation"),
    ({"kind": "slow_close"}, "delay_ms"),
    ({"kind": "teleport"}, "unknown toxic kind"),
    ({"kind": "latency", "latency_ms": 1, "direction": "sideways"}, "direction"),
    ({"kind": "slicer", "avg_bytes": 8.5}, "integer"),
    ({"kind": "close_after", "bytes": True}, "integer"),
    ({"kind": "latency", "latency_ms": "5"}, "number"),
])
def test_missing_or_malformed_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Toxic(**kwargs)


@given(st.lists(valid_toxics(), max_size=4), st.floats(max_value=-1e-6, min_value=-1e3))
def test_an_invalid_toxic_changes_nothing(good: list[Toxic], bad_latency: float) -> None:
    p = FaultProxy("T1.proxy", "127.0.0.1:0", "127.0.0.1:1")  # never started: no sockets
    ids = [p.add(t) for t in good]
    before = p.active()
    with pytest.raises(ValueError, match="latency_ms"):
        p.add(Toxic("latency", latency_ms=bad_latency))
    with pytest.raises(TypeError):
        p.add({"kind": "latency", "latency_ms": 5})  # type: ignore[arg-type]
    assert p.active() == before and list(before) == ids
    assert p.stats()["toxics"] == len(good)
