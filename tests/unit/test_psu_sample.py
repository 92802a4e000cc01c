"""PsuDriver.sample (the current trace's reads) against hand-written transcripts: one program
message for all channels where the dialect allows compound queries, one line per query where it
does not, readings stamped mid-exchange and kept out of the event stream."""

from __future__ import annotations

import pytest

from rig.core.errors import InstrumentError
from rig.timeline.events import EventKind, ListSink
from tests.unit.test_psu_protocol import psu

WIRE = {
    "generic": [("INST:NSEL 1;:MEAS:CURR?;:INST:NSEL 1;:MEAS:VOLT?;:INST:NSEL 2;:MEAS:CURR?;"
                 ":INST:NSEL 2;:MEAS:VOLT?", "0.900;12.000;0.000;0.000")],
    "keysight_e36300": [("MEAS:CURR? (@1);:MEAS:VOLT? (@1);:MEAS:CURR? (@2);:MEAS:VOLT? (@2)",
                         "+9.00000000E-01;+1.20000000E+01;+0.00000000E+00;+0.00000000E+00")],
    "rigol_dp800": [("MEAS:CURR? CH1;:MEAS:VOLT? CH1;:MEAS:CURR? CH2;:MEAS:VOLT? CH2",
                     "0.900;12.000;0.000;0.000")],
    "siglent_spd3303": [("MEAS:CURR? CH1", "0.900"), ("MEAS:VOLT? CH1", "12.000"),
                        ("MEAS:CURR? CH2", "0.000"), ("MEAS:VOLT? CH2", "0.000")],
}


@pytest.mark.parametrize("dialect", sorted(WIRE))
def test_sample_reads_all_channels_in_as_few_exchanges_as_the_dialect_allows(dialect):
    sink = ListSink()
    with psu(dialect, WIRE[dialect], sink=sink) as d:
        n_events = len(sink.events)
        got = d.sample([1, 2])
    assert [(r.channel, r.amps, r.volts) for r in got] == [(1, 0.9, 12.0), (2, 0.0, 0.0)]
    for r in got:
        assert r.span_ns >= 0 and r.mono_ns > 0 and r.wall_ns > 0
    assert not [e for e in sink.events[n_events:] if e.kind == EventKind.PSU_IO]


def test_sample_without_volts():
    with psu("generic", [("INST:NSEL 3;:MEAS:CURR?", "0.350")]) as d:
        (r,) = d.sample([3], volts=False)
    assert (r.channel, r.amps, r.volts) == (3, 0.35, None)


def test_a_short_compound_reply_is_a_clear_error():
    with psu("generic", [("INST:NSEL 1;:MEAS:CURR?;:INST:NSEL 1;:MEAS:VOLT?", "0.900")]) as d:
        with pytest.raises(InstrumentError, match="expected 2 values"):
            d.sample([1])
