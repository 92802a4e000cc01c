"""The real PsuDriver (pyvisa-py sockets) against the virtual SCPI PSU, for every model family."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig.config import PsuConfig
from rig.core.errors import InstrumentError
from rig.drivers.psu import PsuDriver
from rig.drivers.psu_dialects import DIALECTS
from rig.sim.psu import MODELS, ScpiPsuServer, _Session
from rig.timeline.events import ListSink

pytestmark = pytest.mark.integration

ALL = list(MODELS)
# OVP level / trip query of channel 1, in each family's syntax
OVP = {
    "generic": ("INST:NSEL 1;:VOLT:PROT 13", "INST:NSEL 1;:VOLT:PROT:TRIP?"),
    "keysight_e36300": ("VOLT:PROT 13,(@1)", "VOLT:PROT:TRIP? (@1)"),
    "rigol_dp800": (":SOUR1:VOLT:PROT 13", ":SOUR1:VOLT:PROT:TRIP?"),
    "siglent_spd3303": ("CH1:VOLT:PROT 13", "CH1:VOLT:PROT:TRIP?"),
}


class LoopThread:
    """An asyncio loop in a background thread (as the virtual lab runs it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Raw:
    """A plain socket client: one line out, one line back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("rb")

    def send(self, line: str | bytes) -> None:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\n")

    def readline(self) -> str:
        return self.file.readline().decode().rstrip("\n")

    def ask(self, line: str) -> str:
        self.send(line)
        return self.readline()

    def errors(self) -> list[str]:
        out = []
        while not (e := self.ask("SYST:ERR?")).lstrip("+").startswith("0,"):
            out.append(e)
        return out

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Bench:
    """A started ScpiPsuServer with a scripted load and a log of on_power calls."""

    def __init__(self, lt: LoopThread, model: str, channels: int = 3) -> None:
        self.lt, self.model = lt, model
        self.load = dict.fromkeys(range(1, channels + 1), 0.0)
        self.power: list[tuple[int, bool, float, int]] = []
        self.server = ScpiPsuServer(channels, model, on_power=self._on_power,
                                    load=lambda ch: self.load[ch])
        lt.run(self.server.start("127.0.0.1", 0))
        self.resource = f"TCPIP0::127.0.0.1::{self.server.port}::SOCKET"
        self._open: list[Any] = []

    def _on_power(self, ch: int, powered: bool, volts: float) -> None:
        self.power.append((ch, powered, volts, time.monotonic_ns()))

    def powered(self) -> list[tuple[int, bool, float]]:
        return [p[:3] for p in self.power]

    def driver(self, limits: dict[int, tuple[float, float]] | None = None, timeout_s: float = 1.0,
               **kw: Any) -> PsuDriver:
        cfg = PsuConfig(resource=self.resource, dialect=self.model, channels=3, timeout_s=timeout_s)
        d = PsuDriver("psu1", cfg, ListSink(), limits, **kw)
        self._open.append(d)
        return d.open()

    def raw(self) -> Raw:
        r = Raw(self.server.port)
        self._open.append(r)
        return r

    def stop(self) -> None:
        self.lt.run(self.server.stop())

    def close(self) -> None:
        for x in self._open:
            x.close()
        self.stop()


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


@pytest.fixture(params=ALL)
def bench(request: pytest.FixtureRequest, lt: LoopThread) -> Iterator[Bench]:
    b = Bench(lt, request.param)
    yield b
    b.close()


@pytest.fixture
def generic(lt: LoopThread) -> Iterator[Bench]:
    b = Bench(lt, "generic")
    yield b
    b.close()


# --- the driver, every model ---------------------------------------------------------------------

def test_identifies(bench: Bench) -> None:
    assert bench.driver().identity == MODELS[bench.model].idn


def test_output_on_off_drives_on_power(bench: Bench) -> None:
    psu = bench.driver(limits={1: (12.6, 2.0)})
    psu.set_voltage(1, 12.0)
    psu.set_current(1, 1.5)
    assert bench.powered() == []
    on = psu.output(1, True)
    assert bench.powered() == [(1, True, 12.0)]
    assert bench.power[0][3] <= on.mono_ns  # applied before the acknowledgement was read
    assert psu.output_state(1) is True
    psu.set_voltage(1, 11.0)  # a voltage change while on is a power change
    off = psu.output(1, False)
    assert bench.powered() == [(1, True, 12.0), (1, True, 11.0), (1, False, 0.0)]
    assert on.mono_ns < bench.power[-1][3] <= off.mono_ns
    assert psu.output_state(1) is False


def test_measured_current_follows_the_load(bench: Bench) -> None:
    psu = bench.driver()
    psu.set_voltage(2, 12.0)
    psu.set_current(2, 1.5)
    bench.load[2] = 0.9
    assert psu.measure_current(2) == 0.0  # off
    assert psu.measure_voltage(2) == 0.0
    psu.output(2, True)
    assert psu.measure_current(2) == pytest.approx(0.9)
    assert psu.measure_voltage(2) == pytest.approx(12.0)
    bench.load[2] = 0.35
    assert psu.measure_current(2) == pytest.approx(0.35)
    bench.load[2] = 2.5  # more than the limit: the supply limits the current
    assert psu.measure_current(2) == pytest.approx(1.5)


def test_ovp_trips_the_output(bench: Bench) -> None:
    set_ovp, tripped = OVP[bench.model]
    raw = bench.raw()
    psu = bench.driver(limits={1: (20.0, 2.0)})
    psu.set_voltage(1, 12.0)
    psu.output(1, True)
    raw.send(set_ovp)
    assert raw.ask(tripped) == "0"
    psu.set_voltage(1, 14.0)
    assert bench.powered() == [(1, True, 12.0), (1, False, 0.0)]
    assert psu.output_state(1) is False
    assert raw.ask(tripped) == "1"
    assert raw.errors() == []
    with pytest.raises(InstrumentError, match=r'-221,"Settings conflict'):
        psu.output(1, True)  # refused until the trip is cleared


def test_unknown_command_is_queued_and_raised(bench: Bench) -> None:
    broken = replace(DIALECTS[bench.model], output="FROB{ch} {state}")
    psu = bench.driver(dialect=broken)
    with pytest.raises(InstrumentError) as err:
        psu.output(1, True)
    assert "'FROB1 ON' failed" in str(err.value)
    assert '-113,"Undefined header"' in str(err.value)
    assert psu.idn() == MODELS[bench.model].idn  # the connection survives
    assert bench.powered() == []


def test_server_stopped_gives_a_clear_error(bench: Bench) -> None:
    psu = bench.driver(timeout_s=0.5)
    bench.stop()
    t0 = time.monotonic()
    with pytest.raises(InstrumentError) as err:
        psu.output(1, True)
    assert str(err.value).startswith(f"psu1 ({bench.resource}): ")
    assert "is the instrument on and the LAN port right?" in str(err.value)
    assert time.monotonic() - t0 < 3
    with pytest.raises(InstrumentError, match=r"psu1 \(TCPIP0::127\.0\.0\.1::\d+::SOCKET\)"):
        PsuDriver("psu1", psu.cfg, ListSink()).open()
    bench.lt.run(bench.server.start("127.0.0.1", 0))  # for the fixture's teardown


def test_wrong_dialect_is_reported(lt: LoopThread) -> None:
    b = Bench(lt, "siglent_spd3303")
    try:
        cfg = PsuConfig(resource=b.resource, dialect="generic", timeout_s=1.0)
        with PsuDriver("psu1", cfg, ListSink()) as psu, pytest.raises(InstrumentError) as err:
            psu.output(1, True)
        assert "-113" in str(err.value) and "dialect (generic)" in str(err.value)
    finally:
        b.close()


def test_two_drivers_on_one_supply(generic: Bench) -> None:
    """Selection and command travel in one line, so clients cannot split them."""
    drivers = [generic.driver(), generic.driver()]
    failures: list[BaseException] = []

    def work(psu: PsuDriver, ch: int) -> None:
        try:
            for i in range(40):
                psu.set_voltage(ch, float(ch * 2 + i % 2))
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    threads = [threading.Thread(target=work, args=(d, n + 1)) for n, d in enumerate(drivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    raw = generic.raw()
    assert raw.ask("INST:NSEL 1;:VOLT?;:INST:NSEL 2;:VOLT?") == "3.000;5.000"


def test_closing_one_driver_leaves_the_others_connected(generic: Bench) -> None:
    first, second = generic.driver(), generic.driver()
    first.close()
    assert second.idn() == MODELS["generic"].idn
    assert first.idn() == MODELS["generic"].idn  # a closed driver reconnects when used


# --- SCPI conformance over a raw socket ----------------------------------------------------------

def test_scpi_forms_chaining_and_error_queue(generic: Bench) -> None:
    raw = generic.raw()
    assert raw.ask("*IDN?") == MODELS["generic"].idn
    assert raw.ask("SOURce:VOLTage:LEVel:IMMediate:AMPLitude 5;:VOLTage?") == "5.000"
    assert raw.ask("volt 6;volt?") == "6.000"
    assert raw.ask("SOUR:VOLT 3;CURR 0.5;CURR?;:VOLT?") == "0.500;3.000"  # SCPI path rule
    assert raw.ask("INSTrument:NSELect 2;:VOLT 7;:INST:NSEL 1;:VOLT?;:INST:NSEL 2;:VOLT?") == "3.000;7.000"
    assert raw.ask("INST CH1;:INST:NSEL?") == "1"
    assert raw.ask("VOLT 1500 mV;VOLT?") == "1.500"
    assert raw.ask("OUTPut:STATe ON;OUTP?") == "1"
    assert raw.ask("OUTP 0;OUTP?") == "0"
    assert raw.ask("MEASure:SCALar:VOLTage:DC?;MEAS:CURR?") == "0.000;0.000"
    for bad in ("FOO", "VOLT 99", "VOLT", "OUTP MAYBE", "VOLT 1,2", "VOLT abc"):
        raw.send(bad)
    assert raw.errors() == ['-113,"Undefined header"', '-222,"Data out of range"',
                            '-109,"Missing parameter"', '-224,"Illegal parameter value"',
                            '-108,"Parameter not allowed"', '-104,"Data type error"']
    assert raw.ask("SYSTem:ERRor:NEXT?") == '0,"No error"'
    raw.send("BAR")
    raw.send("*CLS")
    assert raw.ask("SYST:ERR?") == '0,"No error"'
    raw.send("VOLT 2;BAZ;VOLT 4;VOLT?")  # command error: the rest of the line is dropped
    assert raw.ask("VOLT?") == "2.000"
    assert raw.ask("VOLT 99;VOLT 4;VOLT?") == "4.000"  # execution error: the line goes on
    assert raw.errors() == ['-113,"Undefined header"', '-222,"Data out of range"']
    assert raw.ask("*OPC?") == "1"


def test_reset(generic: Bench) -> None:
    raw = generic.raw()
    raw.send("INST:NSEL 2;:VOLT 12;:OUTP ON")
    assert raw.ask("*RST;OUTP?;VOLT?;INST:NSEL?") == "0;0.000;1"
    assert generic.powered() == [(2, True, 12.0), (2, False, 0.0)]
    assert raw.ask("INST:NSEL 2;:OUTP?") == "0"


def test_error_queues_are_per_client_and_state_is_shared(generic: Bench) -> None:
    a, b = generic.raw(), generic.raw()
    a.send("NOPE")
    a.send("VOLT 9")
    assert b.ask("SYST:ERR?") == '0,"No error"'
    assert b.ask("VOLT?") == "9.000"
    assert a.errors() == ['-113,"Undefined header"']


def test_error_queue_overflows_at_20(generic: Bench) -> None:
    raw = generic.raw()
    for _ in range(25):
        raw.send("X")
    errors = raw.errors()
    assert len(errors) == 20 and errors[-1] == '-350,"Queue overflow"'


def test_over_long_line_is_dropped(generic: Bench) -> None:
    raw = generic.raw()
    raw.send("VOLT " + "1" * 100_000)
    assert raw.ask("*IDN?") == MODELS["generic"].idn
    assert raw.errors() == ['-223,"Too much data"']


@pytest.mark.parametrize(("model", "exchanges"), [
    ("keysight_e36300", [("OUTP ON,(@1:2);OUTP? (@1:3)", "1,1,0"), ("VOLT 5,(@3);VOLT? (@3)", "+5.00000000E+00"),
                         ("SYST:ERR?", '+0,"No error"'), ("INST:NSEL 3;:VOLT?", "+5.00000000E+00")]),
    ("rigol_dp800", [(":APPL CH2,5,0.25;:APPL? CH2", "CH2:30V/3A,5.000,0.250"),
                     (":OUTP CH2,ON;:OUTP? CH2", "ON"), (":SOUR2:VOLT?", "5.000"),
                     (":INST:NSEL 2;:CURR?", "0.250"), (":MEAS? CH2", "5.000")]),
    ("siglent_spd3303", [("CH2:VOLT 5;CH2:VOLT?", "5.000"), ("OUTP CH2,ON;SYST:STAT?", "0x24"),
                         ("INST CH2;INST?", "CH2"), ("MEAS:VOLT? CH2", "5.000"),
                         ("VOLT 5", None), ("SYST:ERR?", '-113,"Undefined header"')]),
])
def test_model_syntax(lt: LoopThread, model: str, exchanges: list[tuple[str, str | None]]) -> None:
    b = Bench(lt, model)
    try:
        raw = b.raw()
        for line, reply in exchanges:
            if reply is None:
                raw.send(line)
            else:
                assert raw.ask(line) == reply, line
    finally:
        b.close()


# --- robustness ----------------------------------------------------------------------------------

_WORDS = ["VOLT", "VOLTage", "CURR", "OUTP", "MEAS", "INST", "NSEL", "PROT", "TRIP", "APPL",
          "SYST", "ERR", "STAT", "CH1", "CH9", "SOUR2", "*IDN?", "*RST", "*CLS", "*OPC?", ":", "?",
          ";", ",", " ", "(@1:3)", "(@", ")", "ON", "OFF", "12.5", "-1", "1e999", "MAX", '"', "\t"]
scpi_ish = st.lists(st.sampled_from(_WORDS), max_size=12).map("".join)
lines = st.one_of(scpi_ish, st.text(max_size=80).map(lambda s: s.replace("\n", " ")))


@settings(max_examples=300, deadline=None)
@given(line=lines, model=st.sampled_from(ALL))
def test_random_lines_never_break_the_parser(line: str, model: str) -> None:
    server = ScpiPsuServer(3, model, load=lambda ch: 0.5)
    session = _Session()
    reply = server.process(line, session)
    assert reply is None or isinstance(reply, str)
    drained = [server.process("SYST:ERR?", session) for _ in range(21)]
    assert not any(d and d.startswith("-300") for d in drained), (line, drained)
    assert server.process("*IDN?", session) == MODELS[model].idn


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(lines.map(str.encode), st.binary(max_size=120)))
def test_random_bytes_over_the_socket(generic: Bench, data: bytes) -> None:
    raw = Raw(generic.server.port)
    try:
        raw.send(data)
        raw.send("*IDN?")
        seen = []
        while (line := raw.readline()) != MODELS["generic"].idn:
            seen.append(line)
            assert len(seen) < 50, seen
    finally:
        raw.close()
