"""SCPI dialects of the supported power-supply families: command templates as data.

A :class:`PsuDialect` is a small table of templates plus parsing, not a class hierarchy of string
building. Templates are ``str.format`` strings over ``ch`` (channel), ``v`` (volts), ``a``
(amps) and ``state`` (one of ``on_off``). When ``select`` is set (instruments that address the
channel selected with ``INST:NSEL``), it is prepended to every command in the same line
(``INST:NSEL 1;:VOLT 12.000``), so selection and command are one program message and cannot be
split by another client. ``ack`` is the query that acknowledges a setting (``*OPC?``); a dialect
without one (Siglent SPD3303X) acknowledges by reading the setting back. ``identity`` is what
the ``*IDN?`` answer of a fitting instrument looks like: the driver checks it on connect, before
any output changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


def parse_float(reply: str) -> float:
    """``12.000``, ``+1.20000000E+01`` or the first of a comma list -> float."""
    return float(reply.split(",")[0].strip())


def parse_on_off(reply: str, ch: int) -> bool:
    """``1``/``0``/``ON``/``OFF`` (Keysight, Rigol, generic)."""
    word = reply.strip().upper()
    if word in ("1", "ON", "+1"):
        return True
    if word in ("0", "OFF", "+0"):
        return False
    raise ValueError(f"not an output state: {reply!r}")


def parse_siglent_status(reply: str, ch: int) -> bool:
    """SPD3303X ``SYST:STAT?`` hex word: bit 4 = CH1 on, bit 5 = CH2 on (bit 3+ch)."""
    return bool((int(reply.strip(), 16) >> (3 + ch)) & 1)


_ERROR = re.compile(r'\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*')


def parse_error(reply: str) -> tuple[int, str]:
    """``-113,"Undefined header"`` / ``+0,"No error"`` -> (code, message)."""
    m = _ERROR.fullmatch(reply)
    if not m:
        raise ValueError(f"not a SCPI error reply: {reply!r}")
    return int(m.group(1)), m.group(2)


@dataclass(frozen=True)
class PsuDialect:
    """The command templates and reply parsers of one PSU family."""

    name: str
    select: str | None
    set_voltage: str
    set_current: str
    output: str
    query_output: str
    query_voltage: str
    query_current: str
    measure_voltage: str
    measure_current: str
    ack: str | None = "*OPC?"
    compound: bool = True  # several queries in one program message, replies joined by ';'
    error_query: str = "SYST:ERR?"
    idn: str = "*IDN?"
    # what the *IDN? answer of a fitting instrument looks like (re.match, case-insensitive,
    # on "maker,model,serial,firmware"); None: any SCPI identity (the generic dialect)
    identity: str | None = None
    family: str = "any SCPI power supply"  # said in the error when the identity does not fit
    on_off: tuple[str, str] = ("ON", "OFF")
    parse_output: Callable[[str, int], bool] = parse_on_off
    parse_float: Callable[[str], float] = parse_float
    parse_error: Callable[[str], tuple[int, str]] = parse_error

    def command(self, template: str, ch: int, **values: object) -> str:
        """One program message line for ``template`` addressed to channel ``ch``."""
        line = template.format(ch=ch, **values)
        if self.select is not None and "{ch}" not in template:
            line = f"{self.select.format(ch=ch)};:{line}"
        return line

    def state(self, on: bool) -> str:
        return self.on_off[0] if on else self.on_off[1]

    def fits(self, idn: str) -> bool:
        """Whether an instrument answering ``idn`` to ``*IDN?`` speaks this dialect."""
        if self.identity is None:
            return True
        return re.match(self.identity, idn.strip(), re.IGNORECASE) is not None


GENERIC = PsuDialect(
    name="generic",
    select="INST:NSEL {ch}",
    set_voltage="VOLT {v:.3f}",
    set_current="CURR {a:.3f}",
    output="OUTP {state}",
    query_output="OUTP?",
    query_voltage="VOLT?",
    query_current="CURR?",
    measure_voltage="MEAS:VOLT?",
    measure_current="MEAS:CURR?",
)

KEYSIGHT_E36300 = PsuDialect(
    name="keysight_e36300",
    select=None,
    set_voltage="VOLT {v:.3f},(@{ch})",
    set_current="CURR {a:.3f},(@{ch})",
    output="OUTP {state},(@{ch})",
    query_output="OUTP? (@{ch})",
    query_voltage="VOLT? (@{ch})",
    query_current="CURR? (@{ch})",
    measure_voltage="MEAS:VOLT? (@{ch})",
    measure_current="MEAS:CURR? (@{ch})",
    identity=r"(Keysight|Agilent) Technologies\s*,\s*E363\d\d",
    family="Keysight E36300 series (E36311A / E36312A / E36313A)",
)

RIGOL_DP800 = PsuDialect(
    name="rigol_dp800",
    select=None,  # the channel is named in each command
    set_voltage=":APPL CH{ch},{v:.3f}",
    set_current=":SOUR{ch}:CURR {a:.3f}",
    output=":OUTP CH{ch},{state}",
    query_output=":OUTP? CH{ch}",
    query_voltage=":SOUR{ch}:VOLT?",
    query_current=":SOUR{ch}:CURR?",
    measure_voltage=":MEAS:VOLT? CH{ch}",
    measure_current=":MEAS:CURR? CH{ch}",
    identity=r"RIGOL TECHNOLOGIES\s*,\s*DP8\d\d",
    family="Rigol DP800 series (DP811 / DP821 / DP831 / DP832)",
)

SIGLENT_SPD3303 = PsuDialect(
    name="siglent_spd3303",
    select=None,
    set_voltage="CH{ch}:VOLT {v:.3f}",
    set_current="CH{ch}:CURR {a:.3f}",
    output="OUTP CH{ch},{state}",
    query_output="SYST:STAT?",  # no OUTP? on the SPD3303X: the status word says
    query_voltage="CH{ch}:VOLT?",
    query_current="CH{ch}:CURR?",
    measure_voltage="MEAS:VOLT? CH{ch}",
    measure_current="MEAS:CURR? CH{ch}",
    ack=None,  # no *OPC? habit: acknowledge by reading the setting back
    compound=False,  # the SPD3303X answers one query per line
    parse_output=parse_siglent_status,
    identity=r"Siglent Technologies\s*,\s*SPD3303",
    family="Siglent SPD3303X / SPD3303X-E",
)

DIALECTS: dict[str, PsuDialect] = {
    d.name: d for d in (GENERIC, KEYSIGHT_E36300, RIGOL_DP800, SIGLENT_SPD3303)
}
