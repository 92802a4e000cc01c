"""Virtual SCPI power supply: an asyncio TCP server (raw socket, like port 5025).

Serves what :mod:`rig.drivers.psu` speaks. One line is one program message (``\\n``-terminated,
``\\r`` ignored); replies end with ``\\n``. Every model answers ``*IDN? *RST *CLS *OPC? *OPC *WAI
*TST?`` and ``SYST:ERR?`` / ``SYST:VERS?``; the rest is the syntax of the model family:

- ``generic``: ``INST:NSEL n`` / ``INST CHn`` then ``VOLT``, ``CURR``, ``OUTP``, ``MEAS:VOLT?``...
- ``keysight_e36300`` (E36312A): the generic tree plus channel lists ``VOLT 12,(@1)``,
  ``OUTP ON,(@1:2)``, ``MEAS:CURR? (@1)``; numbers as ``+1.20000000E+01``, ``+0,"No error"``.
- ``rigol_dp800`` (DP832): the generic tree plus ``:APPL CH1,12,1.5``, ``:APPL? CH1``,
  ``:SOUR2:VOLT 5``, ``:OUTP CH1,ON``, ``:OUTP? CH1`` (``ON``/``OFF``), ``:MEAS:CURR? CH1``.
- ``siglent_spd3303`` (SPD3303X): ``CH1:VOLT 12``, ``CH1:CURR 1.5``, ``OUTP CH1,ON``,
  ``MEAS:CURR? CH1``, ``INST CH1``, ``SYST:STAT?`` (hex; bit 3+n = channel n on). No bare
  ``VOLT``/``OUTP?``, like the real one; OVP as ``CH1:VOLT:PROT`` is a sim extension.

OVP: ``VOLT:PROT v``; a channel whose voltage exceeds it while on trips off
(``VOLT:PROT:TRIP?`` -> 1) and refuses ``OUTP ON`` (-221) until ``VOLT:PROT:CLE`` /
``OUTP:PROT:CLE`` / ``*RST``. Error queues are per connection (as on Keysight LAN sessions);
the output state is the instrument's, shared by every client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import scpi
from .scpi import Call, CommandTable, ErrorQueue, ScpiError
from .wire import Conn, Server, WireStamp

log = logging.getLogger(__name__)

OnPower = Callable[[int, bool, float], None]
Load = Callable[[int], float]


@dataclass(frozen=True)
class _Model:
    idn: str
    volts_max: float
    amps_max: float
    number: str = "{:.3f}"
    no_error: str = '0,"No error"'
    on_off: tuple[str, str] = ("1", "0")
    chanlist: bool = False  # trailing "(@1,2)" parameters (Keysight)
    chname: bool = False  # "CH1" parameters (Rigol, Siglent)


MODELS: dict[str, _Model] = {
    "generic": _Model("posrig,VPSU,VLAB000001,1.0", 30.0, 3.0),
    "keysight_e36300": _Model("Keysight Technologies,E36312A,MY59000001,2.1.0-1.0.4-1.12",
                              25.0, 3.0, number="{:+.8E}", no_error='+0,"No error"',
                              chanlist=True),
    "rigol_dp800": _Model("RIGOL TECHNOLOGIES,DP832,DP8C000000001,00.01.16", 30.0, 3.0,
                          on_off=("ON", "OFF"), chname=True),
    "siglent_spd3303": _Model("Siglent Technologies,SPD3303X,SPD3XIDX000001,1.01.01.02.05,V3.0",
                              32.0, 3.2, chname=True),
}


@dataclass
class _Channel:
    volts: float
    amps: float
    ovp: float
    on: bool = False
    tripped: bool = False


class _Session:
    """One client connection: its own error queue."""

    def __init__(self) -> None:
        self.errors = ErrorQueue()


class ScpiPsuServer:
    """A multi-channel SCPI PSU on a TCP port; see the module docstring for the syntax.

    ``on_power(channel, powered, volts)`` runs in the event loop whenever a channel's effective
    output (on/off, or its voltage while on) changes (the line that changed it arrived at
    :attr:`line_rx`, the kernel's receive stamp); ``load(channel)`` is the current (A) the
    load draws now, ``MEAS:CURR?`` reports ``min(load, limit)`` and 0 when off. ``*IDN?``
    answers the model family's identity (so the rig's identity check passes for the dialect of
    the same name); ``idn`` replaces it (an instrument other than the one configured).
    """

    def __init__(self, channels: int, model: str = "generic", on_power: OnPower | None = None,
                 load: Load | None = None, idn: str | None = None) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown PSU model {model!r}; known: {', '.join(MODELS)}")
        if not 1 <= channels <= 99:
            raise ValueError(f"channels must be 1..99, not {channels}")
        self.model_name = model
        self.model = MODELS[model] if idn is None else replace(MODELS[model], idn=idn)
        self.channels = channels
        self._on_power = on_power
        self._load = load
        self._ch: dict[int, _Channel] = {}
        self.selected = 1
        self._reset()
        self._effective = {n: self.effective(n) for n in self._ch}
        self._table: CommandTable[_Session] = _build_table(self)
        self._server: Server | None = None
        self.line_rx: WireStamp | None = None  # stamp of the line being executed

    # --- state -------------------------------------------------------------------------------
    def _reset(self) -> None:
        """``*RST``: every output off, setpoints and OVP to defaults, channel 1 selected."""
        m = self.model
        self._ch = {n: _Channel(0.0, m.amps_max, m.volts_max * 1.1) for n in range(1, self.channels + 1)}
        self.selected = 1

    def effective(self, channel: int) -> tuple[bool, float]:
        """(powered, volts) as the load sees it."""
        c = self._ch[channel]
        return (True, c.volts) if c.on else (False, 0.0)

    def _notify(self) -> None:
        for n in self._ch:
            now = self.effective(n)
            if now != self._effective[n]:
                self._effective[n] = now
                log.debug("psu ch%d -> %s %.3f V", n, "on" if now[0] else "off", now[1])
                if self._on_power is not None:
                    try:
                        self._on_power(n, *now)
                    except Exception:
                        log.exception("on_power callback failed (channel %d)", n)

    def _check_ovp(self, n: int) -> None:
        c = self._ch[n]
        if c.on and c.volts > c.ovp:
            c.on, c.tripped = False, True
            log.info("psu ch%d OVP tripped: %.3f V > %.3f V", n, c.volts, c.ovp)

    def _load_of(self, n: int) -> float:
        if self._load is None:
            return 0.0
        try:
            return max(0.0, float(self._load(n)))
        except Exception:
            log.exception("load callback failed (channel %d)", n)
            return 0.0

    def process(self, line: str, session: _Session | None = None,
                rx: WireStamp | None = None) -> str | None:
        """Execute one program message line (what a client's line does); returns the reply.

        ``rx``: when the line arrived (the kernel's receive stamp); ``on_power`` callbacks run
        while it executes and find it in :attr:`line_rx` (None for a line not read from a socket).
        """
        session = session or _Session()
        self.line_rx = rx
        try:
            return self._table.execute(line, session, session.errors, after_unit=self._notify)
        finally:
            self.line_rx = None

    # --- channel addressing ------------------------------------------------------------------
    def _fmt(self, value: float) -> str:
        return self.model.number.format(value)

    def _targets(self, call: Call[_Session], extra: list[str]) -> list[int]:
        """Channels a unit addresses: header suffix, a channel list / name, or the selection."""
        if call.suffix is not None:
            if extra:
                raise ScpiError(scpi.PARAMETER_NOT_ALLOWED)
            if not 1 <= call.suffix <= self.channels:
                raise ScpiError(scpi.UNDEFINED_HEADER)
            return [call.suffix]
        if not extra:
            return [self.selected]
        if len(extra) > 1 or not (self.model.chanlist or self.model.chname):
            raise ScpiError(scpi.PARAMETER_NOT_ALLOWED)
        if self.model.chanlist:
            return scpi.channel_list(extra[0], self.channels)
        return [scpi.channel_name(extra[0], self.channels)]

    # --- handlers ----------------------------------------------------------------------------
    def _each(self, call: Call[_Session], value: Callable[[int], str]) -> str:
        """A query's reply: ``value(channel)`` for each addressed channel, comma-separated."""
        return ",".join(value(n) for n in self._targets(call, call.params(0, 1)))

    def error(self, call: Call[_Session]) -> str:
        call.params(0)
        code, message = call.ctx.errors.pop()
        return self.model.no_error if code == 0 else f'{code},"{message}"'

    def select(self, call: Call[_Session]) -> None:
        (name,) = call.params(1)
        self.selected = scpi.channel_name(name, self.channels, ("CH", "OUT", "OUTP", "OUTPUT"))

    def select_query(self, call: Call[_Session]) -> str:
        call.params(0)
        return f"CH{self.selected}"

    def nselect(self, call: Call[_Session]) -> None:
        (n,) = call.params(1)
        self.selected = int(scpi.number(n, unit="", lo=1, hi=self.channels))

    def nselect_query(self, call: Call[_Session]) -> str:
        call.params(0)
        return str(self.selected)

    def set_volts(self, call: Call[_Session]) -> None:
        value, *extra = call.params(1, 2)
        v = scpi.number(value, unit="V", lo=0.0, hi=self.model.volts_max, default=0.0)
        for n in self._targets(call, extra):
            self._ch[n].volts = v
            self._check_ovp(n)

    def get_volts(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: self._fmt(self._ch[n].volts))

    def set_amps(self, call: Call[_Session]) -> None:
        value, *extra = call.params(1, 2)
        a = scpi.number(value, unit="A", lo=0.0, hi=self.model.amps_max, default=self.model.amps_max)
        for n in self._targets(call, extra):
            self._ch[n].amps = a

    def get_amps(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: self._fmt(self._ch[n].amps))

    def set_ovp(self, call: Call[_Session]) -> None:
        value, *extra = call.params(1, 2)
        hi = self.model.volts_max * 1.1
        v = scpi.number(value, unit="V", lo=0.0, hi=hi, default=hi)
        for n in self._targets(call, extra):
            self._ch[n].ovp = v
            self._check_ovp(n)

    def get_ovp(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: self._fmt(self._ch[n].ovp))

    def ovp_tripped(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: str(int(self._ch[n].tripped)))

    def ovp_clear(self, call: Call[_Session]) -> None:
        for n in self._targets(call, call.params(0, 1)):
            self._ch[n].tripped = False

    def set_output(self, call: Call[_Session]) -> None:
        args = call.params(1, 2)
        if self.model.chname and len(args) == 2:  # OUTP CH1,ON
            channels, state = [scpi.channel_name(args[0], self.channels)], args[1]
        else:  # OUTP ON[,(@1)]
            state = args[0]
            channels = self._targets(call, args[1:])
        on = scpi.boolean(state)
        for n in channels:
            c = self._ch[n]
            if on and c.tripped:
                raise ScpiError(scpi.SETTINGS_CONFLICT, f"OVP tripped on channel {n}")
            c.on = on
            self._check_ovp(n)

    def get_output(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: self.model.on_off[0 if self._ch[n].on else 1])

    def _amps_drawn(self, n: int) -> float:
        c = self._ch[n]
        return min(self._load_of(n), c.amps) if c.on else 0.0

    def meas_volts(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: self._fmt(self.effective(n)[1]))

    def meas_amps(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: self._fmt(self._amps_drawn(n)))

    def meas_power(self, call: Call[_Session]) -> str:
        return self._each(call, lambda n: self._fmt(self.effective(n)[1] * self._amps_drawn(n)))

    def apply(self, call: Call[_Session]) -> None:
        """Rigol ``:APPL [CHn,]volts[,amps]``."""
        args = call.params(1, 3)
        n = self.selected
        if args[0][:1].upper() == "C":
            n, args = scpi.channel_name(args[0], self.channels), args[1:]
            if not args:
                raise ScpiError(scpi.MISSING_PARAMETER)
        if len(args) > 2:
            raise ScpiError(scpi.PARAMETER_NOT_ALLOWED)
        c = self._ch[n]
        v = scpi.number(args[0], unit="V", lo=0.0, hi=self.model.volts_max, default=0.0)
        a = c.amps
        if len(args) == 2:
            a = scpi.number(args[1], unit="A", lo=0.0, hi=self.model.amps_max, default=self.model.amps_max)
        c.volts, c.amps = v, a
        self._check_ovp(n)

    def apply_query(self, call: Call[_Session]) -> str:
        (n,) = self._targets(call, call.params(0, 1))
        c = self._ch[n]
        rating = f"{self.model.volts_max:g}V/{self.model.amps_max:g}A"
        return f"CH{n}:{rating},{self._fmt(c.volts)},{self._fmt(c.amps)}"

    def status(self, call: Call[_Session]) -> str:
        """Siglent ``SYST:STAT?``: bits 2-3 = 01 (independent), bit 3+n = channel n output on."""
        call.params(0)
        word = 0x04
        for n, c in self._ch.items():
            word |= int(c.on) << (3 + n)
        return f"0x{word:X}"

    # --- server ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ScpiPsuServer is not started")
        return self._server.port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0: a free one, read ``.port``)."""
        server = Server("SCPI PSU", self._client)
        await server.start(host, port)
        self._server = server
        log.info("SCPI PSU (%s, %d ch) listening on %s:%d", self.model_name, self.channels,
                 host, self.port)

    async def stop(self) -> None:
        """Stop listening and drop every client."""
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def _client(self, conn: Conn) -> None:
        session = _Session()
        await scpi.serve_lines(conn, lambda line, rx: self.process(line, session, rx),
                               on_overrun=lambda: session.errors.push(*scpi.TOO_MUCH_DATA))


def _build_table(s: ScpiPsuServer) -> CommandTable[_Session]:
    """The command tree of the server's model family."""
    t: CommandTable[_Session] = CommandTable()
    t.common("*IDN?", scpi.fixed(s.model.idn))
    t.common("*RST", scpi.fixed(None, s._reset))
    t.common("*CLS", lambda call: scpi.fixed(None, call.ctx.errors.clear)(call))
    t.common("*OPC?", scpi.fixed("1"))
    t.common("*OPC", scpi.fixed(None))
    t.common("*WAI", scpi.fixed(None))
    t.common("*TST?", scpi.fixed("0"))
    t.add("SYSTem:ERRor[:NEXT]", query=s.error)
    t.add("SYSTem:VERSion", query=scpi.fixed("1999.0"))
    if s.model_name == "siglent_spd3303":
        t.add("INSTrument", write=s.select, query=s.select_query)
        t.add("CH#:VOLTage", write=s.set_volts, query=s.get_volts)
        t.add("CH#:CURRent", write=s.set_amps, query=s.get_amps)
        t.add("CH#:VOLTage:PROTection", write=s.set_ovp, query=s.get_ovp)
        t.add("CH#:VOLTage:PROTection:TRIPped", query=s.ovp_tripped)
        t.add("CH#:VOLTage:PROTection:CLEar", write=s.ovp_clear)
        t.add("OUTPut", write=s.set_output)
        t.add("MEASure:VOLTage", query=s.meas_volts)
        t.add("MEASure:CURRent", query=s.meas_amps)
        t.add("MEASure:POWEr", query=s.meas_power)
        t.add("SYSTem:STATus", query=s.status)
        return t
    source = "[SOURce#]" if s.model_name == "rigol_dp800" else "[SOURce]"
    t.add("INSTrument[:SELect]", write=s.select, query=s.select_query)
    t.add("INSTrument:NSELect", write=s.nselect, query=s.nselect_query)
    t.add(f"{source}:VOLTage[:LEVel][:IMMediate][:AMPLitude]", write=s.set_volts, query=s.get_volts)
    t.add(f"{source}:CURRent[:LEVel][:IMMediate][:AMPLitude]", write=s.set_amps, query=s.get_amps)
    t.add(f"{source}:VOLTage:PROTection[:LEVel]", write=s.set_ovp, query=s.get_ovp)
    t.add(f"{source}:VOLTage:PROTection:TRIPped", query=s.ovp_tripped)
    t.add(f"{source}:VOLTage:PROTection:CLEar", write=s.ovp_clear)
    t.add("OUTPut:PROTection:CLEar", write=s.ovp_clear)
    t.add("OUTPut[:STATe]", write=s.set_output, query=s.get_output)
    if s.model_name == "rigol_dp800":
        t.add("APPLy", write=s.apply, query=s.apply_query)
        t.add("MEASure[:VOLTage][:DC]", query=s.meas_volts)
        t.add("MEASure:CURRent[:DC]", query=s.meas_amps)
        t.add("MEASure:POWEr[:DC]", query=s.meas_power)
    else:
        t.add("MEASure[:SCALar]:VOLTage[:DC]", query=s.meas_volts)
        t.add("MEASure[:SCALar]:CURRent[:DC]", query=s.meas_amps)
        t.add("MEASure[:SCALar]:POWer[:DC]", query=s.meas_power)
    return t
