"""PsuDriver against hand-written transcripts, one set per SCPI dialect."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import pytest

from rig.config import PsuConfig
from rig.core.clock import ClockSource, Stamp
from rig.core.errors import InstrumentError, LimitError, TestError
from rig.core.netstamp import RxStamp
from rig.drivers.power_edge import PowerEdge
from rig.drivers.psu import PsuDriver
from rig.drivers.psu_dialects import DIALECTS, GENERIC
from rig.timeline.events import EventKind, ListSink
from tests.protocol import REOPEN, Exchange, expected_protocol, timeout_error

RESOURCE = "TCPIP0::127.0.0.1::5025::SOCKET"
LIMITS = {1: (12.6, 2.0), 2: (12.6, 2.0)}

IDN = {
    "generic": "posrig,VPSU,VLAB000001,1.0",
    "keysight_e36300": "Keysight Technologies,E36312A,MY59000001,2.1.0-1.0.4-1.12",
    "rigol_dp800": "RIGOL TECHNOLOGIES,DP832,DP8C000000001,00.01.16",
    "siglent_spd3303": "Siglent Technologies,SPD3303X,SPD3XIDX000001,1.01.01.02.05,V3.0",
}
NO_ERROR = {"generic": '0,"No error"', "keysight_e36300": '+0,"No error"',
            "rigol_dp800": '0,"No error"', "siglent_spd3303": '0,"No error"'}
OPC = ("*OPC?", "1")

# What each operation on channel 1 must put on the wire, written out by hand per dialect:
# (command, acknowledgement exchange) for settings, (query, reply) for queries.
WIRE: dict[str, dict[str, Sequence[Exchange]]] = {
    "generic": {
        "on": [("INST:NSEL 1;:OUTP ON;*OPC?", "1")],
        "off": [("INST:NSEL 1;:OUTP OFF;*OPC?", "1")],
        "volt": [("INST:NSEL 1;:VOLT 12.000;*OPC?", "1")],
        "curr": [("INST:NSEL 1;:CURR 1.500;*OPC?", "1")],
        "state": [("INST:NSEL 1;:OUTP?", "1")],
        "meas_v": [("INST:NSEL 1;:MEAS:VOLT?", "12.000")],
        "meas_i": [("INST:NSEL 1;:MEAS:CURR?", "0.350")],
    },
    "keysight_e36300": {
        "on": [("OUTP ON,(@1);*OPC?", "1")],
        "off": [("OUTP OFF,(@1);*OPC?", "1")],
        "volt": [("VOLT 12.000,(@1);*OPC?", "1")],
        "curr": [("CURR 1.500,(@1);*OPC?", "1")],
        "state": [("OUTP? (@1)", "1")],
        "meas_v": [("MEAS:VOLT? (@1)", "+1.20000000E+01")],
        "meas_i": [("MEAS:CURR? (@1)", "+3.50000000E-01")],
    },
    "rigol_dp800": {
        "on": [(":OUTP CH1,ON;*OPC?", "1")],
        "off": [(":OUTP CH1,OFF;*OPC?", "1")],
        "volt": [(":APPL CH1,12.000;*OPC?", "1")],
        "curr": [(":SOUR1:CURR 1.500;*OPC?", "1")],
        "state": [(":OUTP? CH1", "ON")],
        "meas_v": [(":MEAS:VOLT? CH1", "12.000")],
        "meas_i": [(":MEAS:CURR? CH1", "0.350")],
    },
    "siglent_spd3303": {  # no *OPC? habit: settings are read back
        "on": [("OUTP CH1,ON", None), ("SYST:STAT?", "0x14")],
        "off": [("OUTP CH1,OFF", None), ("SYST:STAT?", "0x4")],
        "volt": [("CH1:VOLT 12.000", None), ("CH1:VOLT?", "12.000")],
        "curr": [("CH1:CURR 1.500", None), ("CH1:CURR?", "1.500")],
        "state": [("SYST:STAT?", "0x14")],
        "meas_v": [("MEAS:VOLT? CH1", "12.000")],
        "meas_i": [("MEAS:CURR? CH1", "0.350")],
    },
}
ALL = list(WIRE)


def check(dialect: str) -> Exchange:
    return ("SYST:ERR?", NO_ERROR[dialect])


class KernelStamps:
    """Stands in for the kernel-stamping socket: the reply to a line containing ``ack`` (the
    acknowledgement) gets a ``kernel`` stamp, every other reply none (a thread stamp)."""

    def __init__(self, fake, ack: str) -> None:
        self.fake, self.ack = fake, ack
        self.given: list[RxStamp] = []

    def take(self) -> RxStamp | None:
        if self.ack not in self.fake._last:
            return None
        mono = time.monotonic_ns() - 1_000  # the segment arrived a little before the read returned
        self.given.append(RxStamp(mono, time.time_ns() - 1_000, ClockSource.KERNEL, 1_000))
        return self.given[-1]


@contextmanager
def psu(dialect: str, exchanges: Sequence[Exchange], *, limits=LIMITS, sink=None,
        timeout_s: float = 2.0, override=None, kernel: str | None = None) -> Iterator[PsuDriver]:
    """An open PsuDriver on a scripted resource; open() identifies and drains the error queue.
    ``kernel``: replies to lines containing it get kernel stamps (:class:`KernelStamps`)."""
    cfg = PsuConfig(resource=RESOURCE, dialect=dialect, channels=3, timeout_s=timeout_s)
    preamble = [("*IDN?", IDN[dialect]), check(dialect)]

    def factory(opener):
        d = PsuDriver("psu1", cfg, sink or ListSink(), limits, opener=opener, dialect=override)
        if kernel is not None:
            d._stamper = KernelStamps(opener.__self__, kernel)  # type: ignore[assignment]
        return d.open()

    with expected_protocol(factory, [*preamble, *exchanges]) as driver:
        yield driver


def test_every_config_dialect_has_a_table():
    assert set(DIALECTS) == {"generic", "keysight_e36300", "rigol_dp800", "siglent_spd3303"}


@pytest.mark.parametrize("dialect", ALL)
def test_open_identifies(dialect):
    with psu(dialect, []) as d:
        assert d.identity == IDN[dialect]


@pytest.mark.parametrize("dialect", ALL)
def test_output_on_returns_stamp_of_the_acknowledgement(dialect):
    sink = ListSink()
    with psu(dialect, [*WIRE[dialect]["on"], check(dialect)], sink=sink) as d:
        stamp = d.output(1, True)
    assert isinstance(stamp, Stamp)
    io = [e for e in sink.events if e.kind is EventKind.PSU_IO]
    ack = io[-2]  # the "<setting>;*OPC?" / read-back exchange
    assert (ack.mono_ns, ack.wall_ns) == (stamp.mono_ns, stamp.wall_ns)
    sent = [cmd for cmd, _ in WIRE[dialect]["on"]] + ["SYST:ERR?"]
    assert [e.data["cmd"] for e in io[-len(sent):]] == sent
    assert all(e.source == "psu1" for e in io)


ACK_LINE = {"generic": "*OPC?", "keysight_e36300": "*OPC?", "rigol_dp800": "*OPC?",
            "siglent_spd3303": "SYST:STAT?"}  # the line whose reply acknowledges OUTP


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("on", [True, False])
def test_switch_brackets_the_edge_from_command_write_to_acknowledgement(dialect, on):
    sink = ListSink()
    wire = [*WIRE[dialect]["on" if on else "off"], check(dialect)]
    with psu(dialect, wire, sink=sink) as d:
        before = time.monotonic_ns()
        edge = d.switch(1, on)
    assert isinstance(edge, PowerEdge)
    io = [e for e in sink.events if e.kind is EventKind.PSU_IO][-len(wire):]
    ack = next(e for e in io if ACK_LINE[dialect] in e.data["cmd"])
    assert before <= edge.tx_ns <= io[0].mono_ns  # before the OUTP line's write (its stamp)
    assert edge.tx_ns <= edge.stamp.mono_ns == edge.ack_ns  # reported: the acknowledgement
    assert (edge.stamp.mono_ns, edge.stamp.wall_ns) == (ack.mono_ns, ack.wall_ns)
    assert edge.bracket_ns == edge.ack_ns - edge.tx_ns >= 0
    assert edge.clock is ClockSource.THREAD is ack.clock  # a fake resource has no kernel stamps


@pytest.mark.parametrize("dialect", ALL)
def test_switch_reports_the_acknowledgements_kernel_stamp_not_the_last_replys_clock(dialect):
    with psu(dialect, [*WIRE[dialect]["on"], check(dialect)], kernel=ACK_LINE[dialect]) as d:
        edge = d.switch(1, True)
        given = d._stamper.given[-1]  # type: ignore[union-attr]
        assert d.last_clock is ClockSource.THREAD  # SYST:ERR? came last, thread-stamped
    assert edge.clock is ClockSource.KERNEL
    assert (edge.stamp.mono_ns, edge.stamp.wall_ns) == (given.mono_ns, given.wall_ns)
    assert edge.tx_ns <= edge.stamp.mono_ns == edge.ack_ns and edge.bracket_ns >= 0


def test_switch_after_a_reconnect_brackets_the_replayed_command():
    wire = [("INST:NSEL 1;:OUTP ON;*OPC?", timeout_error()), ("SYST:ERR?", '0,"No error"'),
            REOPEN, ("INST:NSEL 1;:OUTP ON;*OPC?", "1"), check("generic")]
    sink = ListSink()
    with psu("generic", wire, sink=sink) as d:
        edge = d.switch(1, True)
    failed = next(e for e in sink.events if "error" in e.data)
    assert failed.mono_ns < edge.tx_ns <= edge.ack_ns


def test_concurrent_switches_each_get_their_own_edge():
    fake = _Strict()
    d = PsuDriver("psu1", PsuConfig(resource=RESOURCE), ListSink(), opener=lambda: fake).open()
    edges: dict[int, list[PowerEdge]] = {1: [], 2: []}

    def work(ch: int) -> None:
        for i in range(50):
            edges[ch].append(d.switch(ch, i % 2 == 0))

    threads = [threading.Thread(target=work, args=(ch,)) for ch in edges]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted((e.tx_ns, e.ack_ns) for es in edges.values() for e in es)
    assert len(spans) == 100
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # never overlap


@pytest.mark.parametrize("dialect", ALL)
def test_output_off(dialect):
    with psu(dialect, [*WIRE[dialect]["off"], check(dialect)]) as d:
        assert isinstance(d.output(1, False), Stamp)


@pytest.mark.parametrize("dialect", ALL)
def test_set_voltage(dialect):
    with psu(dialect, [*WIRE[dialect]["volt"], check(dialect)]) as d:
        d.set_voltage(1, 12.0)


@pytest.mark.parametrize("dialect", ALL)
def test_set_current(dialect):
    with psu(dialect, [*WIRE[dialect]["curr"], check(dialect)]) as d:
        d.set_current(1, 1.5)


@pytest.mark.parametrize("dialect", ALL)
def test_measure(dialect):
    with psu(dialect, [*WIRE[dialect]["meas_v"], *WIRE[dialect]["meas_i"]]) as d:
        assert d.measure_voltage(1) == pytest.approx(12.0)
        assert d.measure_current(1) == pytest.approx(0.35)


@pytest.mark.parametrize("dialect", ALL)
def test_output_state(dialect):
    with psu(dialect, WIRE[dialect]["state"]) as d:
        assert d.output_state(1) is True


@pytest.mark.parametrize("dialect", ALL)
def test_error_queue_entry_raises_and_is_drained(dialect):
    wire = [*WIRE[dialect]["on"], ("SYST:ERR?", '-221,"Settings conflict"'),
            ("SYST:ERR?", '-113,"Undefined header"'), check(dialect)]
    with psu(dialect, wire) as d, pytest.raises(InstrumentError) as err:
        d.output(1, True)
    text = str(err.value)
    assert text.startswith(f"psu1 ({RESOURCE}): ")
    assert '-221,"Settings conflict"' in text and '-113,"Undefined header"' in text
    assert dialect in text


@pytest.mark.parametrize("dialect", ALL)
def test_voltage_limit_sends_nothing(dialect):
    with psu(dialect, []) as d, pytest.raises(LimitError) as err:
        d.set_voltage(1, 13.0)
    assert all(s in str(err.value) for s in ("psu1", "channel 1", "13 V", "12.6 V", "nothing was sent"))


@pytest.mark.parametrize("dialect", ALL)
def test_current_limit_sends_nothing(dialect):
    with psu(dialect, []) as d, pytest.raises(LimitError) as err:
        d.set_current(2, 2.5)
    assert all(s in str(err.value) for s in ("psu1", "channel 2", "2.5 A", "2 A"))


def test_channel_without_a_limit_is_refused_when_limits_are_given():
    with psu("generic", []) as d, pytest.raises(LimitError, match="channel 3: no voltage limit"):
        d.set_voltage(3, 5.0)


def test_without_limits_any_valid_value_goes_out():
    with psu("generic", [("INST:NSEL 3;:VOLT 24.000;*OPC?", "1"), check("generic")],
             limits=None) as d:
        d.set_voltage(3, 24.0)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_nonsense_values_are_refused(value):
    with psu("generic", [], limits=None) as d, pytest.raises(LimitError):
        d.set_voltage(1, value)


@pytest.mark.parametrize("ch", [0, 4, True, "1"])
def test_bad_channel_is_a_test_error(ch):
    with psu("rigol_dp800", []) as d, pytest.raises(TestError, match="psu1: no channel"):
        d.output(ch, True)


def test_second_channel_is_addressed():
    wire = {
        "generic": [("INST:NSEL 2;:OUTP ON;*OPC?", "1")],
        "keysight_e36300": [("OUTP ON,(@2);*OPC?", "1")],
        "rigol_dp800": [(":OUTP CH2,ON;*OPC?", "1")],
        "siglent_spd3303": [("OUTP CH2,ON", None), ("SYST:STAT?", "0x24")],
    }
    for dialect, exchanges in wire.items():
        with psu(dialect, [*exchanges, check(dialect)]) as d:
            d.output(2, True)


def test_siglent_read_back_that_disagrees_raises():
    with psu("siglent_spd3303", [("OUTP CH1,ON", None), ("SYST:STAT?", "0x4"),
                                 check("siglent_spd3303")]) as d:
        with pytest.raises(InstrumentError, match="not confirmed: 'SYST:STAT\\?' answered '0x4'"):
            d.output(1, True)


def test_open_drains_stale_errors():
    cfg = PsuConfig(resource=RESOURCE, dialect="generic")
    wire = [("*IDN?", IDN["generic"]), ("SYST:ERR?", '-113,"Undefined header"'),
            ("SYST:ERR?", '0,"No error"')]
    with expected_protocol(lambda o: PsuDriver("psu1", cfg, ListSink(), opener=o).open(), wire) as d:
        assert d.identity == IDN["generic"]


def test_something_that_is_not_an_instrument_is_refused_at_open():
    cfg = PsuConfig(resource=RESOURCE)
    wire = [("*IDN?", "HTTP/1.1 400 Bad Request")]
    with pytest.raises(InstrumentError, match="not an instrument identity"):
        with expected_protocol(lambda o: PsuDriver("psu1", cfg, ListSink(), opener=o).open(), wire):
            pass


def test_timeout_reconnects_once_and_replays_the_exchange():
    wire = [("INST:NSEL 1;:OUTP ON;*OPC?", timeout_error()), ("SYST:ERR?", '0,"No error"'),
            REOPEN, ("INST:NSEL 1;:OUTP ON;*OPC?", "1"), check("generic")]
    sink = ListSink()
    with psu("generic", wire, sink=sink) as d:
        d.output(1, True)
    errors = [e for e in sink.events if "error" in e.data]
    assert [e.data["error"] for e in errors] == [
        "no reply to 'INST:NSEL 1;:OUTP ON;*OPC?' within 2.0 s"]


def test_second_timeout_raises_a_clear_error():
    wire = [("INST:NSEL 1;:OUTP ON;*OPC?", timeout_error()), ("SYST:ERR?", timeout_error()),
            REOPEN, ("INST:NSEL 1;:OUTP ON;*OPC?", timeout_error()), REOPEN,
            ("INST:NSEL 1;:MEAS:CURR?", "0.100")]
    with psu("generic", wire) as d:
        with pytest.raises(InstrumentError) as err:
            d.output(1, True)
        assert str(err.value) == (
            f"psu1 ({RESOURCE}): no reply to 'INST:NSEL 1;:OUTP ON;*OPC?' within 2.0 s (also "
            "after reconnecting); "
            "is the instrument on and the LAN port right?")
        assert d.measure_current(1) == pytest.approx(0.1)  # the next call reconnects


def test_dropped_socket_reconnects():
    wire = [("MEAS:CURR? (@1)", ConnectionResetError(104, "Connection reset by peer")), REOPEN,
            ("MEAS:CURR? (@1)", "+1.00000000E-01")]
    with psu("keysight_e36300", wire) as d:
        assert d.measure_current(1) == pytest.approx(0.1)


def test_unopenable_resource_is_an_instrument_error():
    def opener():
        raise OSError("could not connect: StatusCode.error_timeout")

    cfg = PsuConfig(resource=RESOURCE)
    with pytest.raises(InstrumentError, match=r"psu1 \(TCPIP0::127.0.0.1::5025::SOCKET\): cannot open"):
        PsuDriver("psu1", cfg, ListSink(), opener=opener).open()


def test_garbage_reply_is_an_instrument_error():
    with psu("generic", [("INST:NSEL 1;:MEAS:VOLT?", "volts!")]) as d:
        with pytest.raises(InstrumentError, match="not a number"):
            d.measure_voltage(1)


def test_custom_dialect_overrides_the_config():
    odd = replace(GENERIC, name="odd", output="OUTPut:STATe {state}", on_off=("1", "0"))
    with psu("generic", [("INST:NSEL 1;:OUTPut:STATe 1;*OPC?", "1"), check("generic")],
             override=odd) as d:
        d.output(1, True)


class _Strict:
    """Answers every query, but fails if two exchanges interleave."""

    def __init__(self) -> None:
        self.pending: str | None = None
        self.count = 0

    def write(self, message: str) -> None:
        assert self.pending is None, f"interleaved write {message!r} after {self.pending!r}"
        self.pending = message if "?" in message else None
        self.count += 1

    def read(self) -> str:
        assert self.pending is not None
        msg, self.pending = self.pending, None
        if msg.endswith("*OPC?"):
            return "1"
        return {"*IDN?": "x,y,z,1", "SYST:ERR?": '0,"No error"'}.get(msg, "0.5")

    def close(self) -> None:
        pass


def test_concurrent_callers_never_interleave():
    fake = _Strict()
    d = PsuDriver("psu1", PsuConfig(resource=RESOURCE), ListSink(), opener=lambda: fake).open()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(100):
                d.measure_current(1)
                d.output(2, True)
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert fake.count == 2 + 4 * 100 * 3  # measure; "OUTP ON;*OPC?"; SYST:ERR?


def test_a_bad_setting_in_one_message_is_explained_by_the_error_queue():
    # SCPI drops the rest of a message after a command error, so "...;*OPC?" never answers
    wire = [("INST:NSEL 1;:OUTP ON;*OPC?", timeout_error()),
            ("SYST:ERR?", '-113,"Undefined header"'), ("SYST:ERR?", '0,"No error"')]
    with psu("generic", wire) as d:
        with pytest.raises(InstrumentError,
                           match=r"'INST:NSEL 1;:OUTP ON' failed, the instrument reports -113"):
            d.output(1, True)


# --- instrument identity: *IDN? is checked against the dialect before anything else ----------

@pytest.mark.parametrize("dialect", ALL)
def test_each_dialect_fits_its_own_family(dialect):
    assert DIALECTS[dialect].fits(IDN[dialect])


@pytest.mark.parametrize("dialect,idn", [
    ("keysight_e36300", "Agilent Technologies,E36313A,MY00000001,1.0.0"),
    ("keysight_e36300", "KEYSIGHT TECHNOLOGIES, E36311A, MY1, 2.0"),
    ("rigol_dp800", "RIGOL TECHNOLOGIES,DP811A,DP8B000001,00.01.14"),
    ("siglent_spd3303", "Siglent Technologies,SPD3303X-E,SPD3XGC000001,1.01.01.02.07R2"),
    ("generic", IDN["rigol_dp800"]),  # generic SCPI: any instrument identity
])
def test_identities_of_the_same_family_fit(dialect, idn):
    assert DIALECTS[dialect].fits(idn)


@pytest.mark.parametrize("dialect,answer", [
    ("keysight_e36300", IDN["rigol_dp800"]),  # a Rigol where a Keysight is configured
    ("rigol_dp800", IDN["siglent_spd3303"]),
    ("siglent_spd3303", IDN["keysight_e36300"]),
    ("keysight_e36300", "Keysight Technologies,34465A,MY1,A.03"),  # a DMM of the same maker
])
def test_a_mismatching_identity_is_refused_before_any_output_changes(dialect, answer):
    cfg = PsuConfig(resource=RESOURCE, dialect=dialect)
    sink = ListSink()
    fake: list = []

    def factory(opener):
        fake.append(opener.__self__)
        return PsuDriver("psu1", cfg, sink, LIMITS, opener=opener).open()

    # the transcript is the *IDN? alone: no error-queue drain, no setting, no OUTP
    with pytest.raises(InstrumentError) as err:
        with expected_protocol(factory, [("*IDN?", answer)]):
            pass
    msg = str(err.value)
    assert msg.startswith(f"psu1 ({RESOURCE}): '*IDN?' answered {answer!r}")
    assert f"dialect {dialect!r}" in msg and DIALECTS[dialect].family in msg
    assert "nothing was sent to its outputs" in msg
    assert fake[0].written == ["*IDN?"] and fake[0].closed == 1
    assert [e.data["cmd"] for e in sink.events if e.kind is EventKind.PSU_IO] == ["*IDN?"]
