"""The fuzz targets: one thin harness per parser that reads bytes from a peer or a file.

Each ``_build_*`` imports what it drives (so atheris instruments it) and returns a
:class:`~fuzz.engine.Harness`: the per-input function and the errors the target documents.
Harnesses call public entry points where there are some; where a driver parses replies only in
a reader thread, the harness feeds that parsing step directly (named in ``what``). Keep them
thin: the modules under test change, and a harness should be a few lines to adapt.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .engine import ROOT, Harness, Target

FIXED_NOW = datetime(2026, 1, 2, 3, 4, 5)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


_NOT_YAML_CHARS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


def _yaml_text(data: bytes) -> bytes:
    """Valid UTF-8 without the characters YAML forbids: so campaign and scenario fuzzing gets
    past ``read_yaml``'s handling of undecodable files (the config target covers that)."""
    return _NOT_YAML_CHARS.sub("", _text(data)).encode()


def _files(pattern: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(ROOT.glob(pattern))]


# --- ISO 8583 ------------------------------------------------------------------------------

def _cup_seeds() -> list[bytes]:
    from rig.iso8583 import cup, cup_txn, get_dialect

    cupd = get_dialect("cup")
    common = {"terminal_id": "12345678", "merchant_id": "123456789012345", "batch": 1}
    req = cup.signon_request(stan=1, key_mode="004", operator="01", serial="SN0001", **common)
    rsp = cup.signon_response(req, rc="00", field62=bytes(60), rrn="000000000001",
                              when=FIXED_NOW)
    sale = cup_txn.sale_request(stan=2, amount_minor=100, entry_mode="chip",
                                pan="6222021234567890128", expiry="2812", pan_sequence="001",
                                track2="6222021234567890128=28121010000000000",
                                field55=bytes(range(40)), **common)
    settle = cup_txn.settlement_request(stan=3, totals=cup_txn.SettlementTotals(2, 300, 0, 0),
                                        **common)
    sale_rsp = cup_txn.txn_response(sale, rc="00", rrn="000000000002", when=FIXED_NOW,
                                    auth_code="123456", balance_minor=5000)
    mak = bytes.fromhex("1122334455667788")
    return [cupd.encode(req), cupd.encode(rsp), cupd.encode(sale, mak=mak),
            cupd.encode(cup_txn.reversal_request(sale), mak=mak), cupd.encode(settle, mak=mak),
            cupd.encode(sale_rsp, mak=mak),
            cupd.encode(cup.echo_request(stan=4, tpdu=bytes.fromhex("6000030000"),
                                         **{k: common[k] for k in ("terminal_id", "merchant_id")},
                                         batch=1))]


def _iso87_seeds() -> list[bytes]:
    from rig.iso8583 import get_dialect, iso87

    d = get_dialect("iso87")
    return [d.encode(iso87.signon_request(stan=7, when=FIXED_NOW)),
            d.encode(iso87.echo_request(stan=8, when=FIXED_NOW)),
            d.encode(iso87.network_response(iso87.signon_request(stan=9, when=FIXED_NOW),
                                            rc="00")),
            d.encode({"t": "0200", "2": "4761739001010010", "4": "000000000100",
                      "52": bytes(8)}, mak=bytes(16))]


def _cup_readers(msg: dict[str, Any]) -> None:
    """Everything the host and the terminal read out of a decoded CUP message."""
    from rig.core.errors import ProtocolError
    from rig.iso8583 import cup, cup_txn

    for fn in (cup_txn.check_financial, cup_txn.balance_of, cup.network_code, cup.key_mode_of):
        try:
            fn(msg)
        except ProtocolError:
            pass
    for fn in (cup_txn.txn_kind, cup_txn.card_pan, cup_txn.card_expiry, cup_txn.amount_of,
               cup_txn.batch_of, cup_txn.original_of, cup_txn.entry_mode_of,
               cup_txn.settlement_result):
        fn(msg)
    f48 = msg.get("48")
    if isinstance(f48, str):
        try:
            cup_txn.parse_totals(f48)
        except ProtocolError:
            pass


def _build_cup() -> Harness:
    from rig.core.errors import ProtocolError
    from rig.iso8583 import get_dialect, response_mti

    cupd = get_dialect("cup")
    mak = bytes.fromhex("1122334455667788")

    def run(body: bytes) -> object:
        msg = cupd.decode(body)
        assert cupd.encode(msg) == body, "a decoded CUP message does not re-encode to its bytes"
        cupd.mac_input(body)
        cupd.verify_mac(body, mak)
        _cup_readers(msg)
        try:
            response_mti(str(msg.get("t")))
        except ProtocolError:
            pass
        return msg.get("t"), tuple(sorted(k for k in msg if k.isdigit()))

    return Harness(run, (ProtocolError,))


def _build_iso87() -> Harness:
    from rig.core.errors import ProtocolError
    from rig.iso8583 import get_dialect

    d = get_dialect("iso87")

    def run(body: bytes) -> object:
        msg = d.decode(body)
        d.verify_mac(body, bytes(16))
        try:
            d.network_code(msg)
        except ProtocolError:
            pass
        return msg.get("t"), tuple(sorted(k for k in msg if k.isdigit()))

    return Harness(run, (ProtocolError,))


def _host_seeds() -> list[bytes]:
    from rig.iso8583 import frame

    cup_frames = [frame(b) for b in _cup_seeds()]
    iso_frames = [frame(b) for b in _iso87_seeds()]
    return [b"\x00" + b"".join(cup_frames[:3]), b"\x01" + b"".join(iso_frames),
            b"\x00" + cup_frames[4] + b"\x00\x00" + cup_frames[3], b"\x02" + cup_frames[0]]


def _build_host() -> Harness:
    """A byte stream at the acquirer host: framing (sync and asyncio), the dialect's decode,
    then what the host's session reads before answering (classify, financial checks, the
    request event). First byte: 0 CUP, 1 ISO 87; odd second bit: the asyncio reader."""
    from rig.core.errors import ProtocolError
    from rig.host import responses
    from rig.host.txn import request_event
    from rig.iso8583 import ConnectionClosed, get_dialect, read_frame, read_frame_async
    from rig.iso8583.cup_txn import FINANCIAL_MTIS

    dialects = [get_dialect("cup"), get_dialect("iso87")]
    loop = asyncio.new_event_loop()

    async def frames_async(data: bytes) -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        out = []
        try:
            while True:
                out.append(await read_frame_async(reader, 1024))
        except ConnectionClosed:
            return out

    def frames_sync(data: bytes) -> list[bytes]:
        stream = io.BytesIO(data)
        out = []
        try:
            while True:
                out.append(read_frame(stream.read, 1024))
        except ConnectionClosed:
            return out

    def run(data: bytes) -> object:
        if not data:
            return None
        dialect = dialects[data[0] & 1]
        stream = data[1:]
        frames = loop.run_until_complete(frames_async(stream)) if data[0] & 2 else \
            frames_sync(stream)
        kinds = []
        for body in frames:
            if not body:
                continue
            msg = dialect.decode(body)
            mti = str(msg.get("t", ""))
            if dialect.name == "cup" and mti in FINANCIAL_MTIS:
                from rig.iso8583.cup_txn import check_financial

                check_financial(msg)
                kinds.append(request_event(msg)[0])
                continue
            kind = responses.classify(dialect, msg)
            if kind is None:
                raise ProtocolError(f"unexpected message {mti}")
            responses.key_mode(dialect, msg, "003")
            responses.batch(dialect, msg)
            kinds.append(kind)
        return tuple(kinds)

    return Harness(run, (ProtocolError,), close=loop.close)


class _PeerSink:
    """A thread-safe event sink that wakes a waiter when a given peer's connection ends."""

    def __init__(self) -> None:
        import threading

        self.cond = threading.Condition()
        self.events: list[Any] = []

    def record(self, event: Any) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_gone(self, peer: str, timeout_s: float) -> list[Any] | None:
        """This peer's events once HOST_DISCONNECT came (None: it did not); forgets them."""
        from rig.timeline.events import EventKind

        def mine() -> list[Any]:
            return [e for e in self.events if e.data.get("peer") == peer]

        with self.cond:
            ok = self.cond.wait_for(lambda: any(e.kind is EventKind.HOST_DISCONNECT
                                                for e in mine()), timeout_s)
            got = mine()
            self.events = [e for e in self.events if e.data.get("peer") not in (peer, None)]
            return got if ok else None


def _host_live_seeds() -> list[bytes]:
    from rig.config import load_lab
    from rig.iso8583 import cup, cup_txn, frame, get_dialect

    lab = load_lab(ROOT / "configs" / "labs" / "virtual.yaml")
    t = next(iter(lab.terminals.values()))
    cupd = get_dialect("cup")
    ids = {"terminal_id": t.terminal_id, "merchant_id": t.merchant_id, "batch": 1}
    signon = cupd.encode(cup.signon_request(stan=1, key_mode=t.key_mode, operator="01", **ids))
    echo = cupd.encode(cup.echo_request(stan=2, **ids))
    sale = cupd.encode(cup_txn.sale_request(stan=3, amount_minor=100, entry_mode="swipe",
                                            track2="6222021234567890128=28121010000000000",
                                            **ids), mak=bytes(8))
    settle = cupd.encode(cup_txn.settlement_request(
        stan=4, totals=cup_txn.SettlementTotals(1, 100, 0, 0), **ids), mak=bytes(8))
    return [frame(signon) + frame(echo), frame(signon) + frame(sale) + frame(settle),
            frame(signon) + frame(b"") + frame(signon)[:20], frame(sale)]


def _build_host_live() -> Harness:
    """Byte streams at the real acquirer host (``AcquirerHost`` on loopback, CUP, the virtual
    lab's terminals): one connection per input, half-closed after the bytes. Every reply must
    decode; the host must close the connection; an ERROR event (a host bug) is a crash."""
    import socket

    from rig.config import load_lab
    from rig.host import AcquirerHost
    from rig.iso8583 import get_dialect
    from rig.timeline.events import EventKind

    lab = load_lab(ROOT / "configs" / "labs" / "virtual.yaml",
                   overrides={"host": {"processing_ms": 0}})
    sink = _PeerSink()
    host = AcquirerHost(lab, sink, listen="127.0.0.1:0", idle_timeout_s=1.0,
                        frame_timeout_s=1.0).start()
    dialect = get_dialect(lab.host.dialect)

    def run(data: bytes) -> object:
        with socket.create_connection(host.address, timeout=3.0) as sock:
            ip, port = sock.getsockname()[:2]
            peer = f"{ip}:{port}"
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # the host closed already (a protocol error on the first bytes)
                pass
            replies = b""
            try:
                while chunk := sock.recv(65536):
                    replies += chunk
            except OSError:
                pass
        events = sink.wait_gone(peer, 3.0)
        assert events is not None, "the host did not close a half-closed connection"
        errors = [e for e in events if e.kind is EventKind.ERROR]
        assert not errors, f"host error: {errors[0].data}"
        rcs = []
        while len(replies) >= 2:  # every reply the host sent is a well-formed frame
            n = int.from_bytes(replies[:2], "big")
            body, replies = replies[2 : 2 + n], replies[2 + n :]
            assert len(body) == n, "a truncated reply frame"
            rcs.append(dialect.decode(body).get("39"))
        assert not replies, "a stray byte after the reply frames"
        return tuple(rcs[-3:]), tuple(e.kind.name for e in events[-2:])

    return Harness(run, (), close=host.stop)


# --- EMV card ------------------------------------------------------------------------------

def _apdus(*hexes: str) -> bytes:
    """A fuzz input for the card: each APDU preceded by its 1-byte length."""
    out = bytearray(b"\x00")  # profile selector
    for h in hexes:
        a = bytes.fromhex(h.replace(" ", ""))
        out += bytes([len(a)]) + a
    return bytes(out)


def _emv_seeds() -> list[bytes]:
    pse, ppse = b"1PAY.SYS.DDF01".hex(), b"2PAY.SYS.DDF01".hex()
    gpo = "80A80000 0E 830C" + "00" * 12 + "00"
    cdol1 = "80AE8000 21" + "00" * 33 + "00"
    cdol2 = "80AE4000 0B 3030" + "00" * 9 + "00"
    contact = _apdus(f"00A40400 0E {pse} 00", "00B2010C00", "00A40400 08 A000000333010101 00",
                     gpo, "00B2010C00", "00B2020C00", "00B2011400", cdol1, cdol2,
                     "80CA9F3600", "80CA9F1700")
    tap = _apdus(f"00A40400 0E {ppse} 00", "00A40400 07 A0000000031010 00", gpo, cdol1)
    # first byte: card profile (low bits), contactless when 0x80 is set
    cup_tap = _apdus(f"00A40400 0E {ppse} 00", "00A40400 08 A000000333010102 00", gpo, cdol1)
    names = sorted(_emv_profiles())

    def on(name: str, contactless: bool, apdus: bytes) -> bytes:
        return bytes([names.index(name) | (0x80 if contactless else 0)]) + apdus[1:]

    recorded = [on(n, tap_, _kernel_transcript(n, tap_)) for n, tap_ in (
        ("cup_debit", False), ("cup_credit", True), ("visa_credit", True), ("mc_debit", False),
        ("mc_debit", True), ("expired", False))]
    return [*(r for r in recorded if len(r) > 2), on("cup_debit", False, contact),
            on("visa_credit", True, tap),
            on("expired", False, contact), on("cup_credit", True, cup_tap),
            on("mute", False, contact), on("magstripe_only", True, tap),
            _apdus("00A4040000", "FF")]


def _kernel_transcript(name: str, contactless: bool) -> bytes:
    """The APDUs the rig's EMV kernel sends to card ``name`` in a whole transaction (a
    good seed whatever the card's DOLs); just the selector when the kernel API moved."""
    from rig.cards import kernel
    from rig.cards.emv import EmvCard

    card = EmvCard(_emv_profiles()[name])
    sent: list[bytes] = []

    def transmit(apdu: bytes) -> bytes:
        sent.append(bytes(apdu))
        return card.transmit(apdu)

    try:
        card.power_up(contactless=contactless)
        txn = kernel.begin(transmit, contactless=contactless, amount_minor=100,
                           unpredictable=bytes(4), when=FIXED_NOW.date())
        txn.complete("00")
    except Exception:  # a seed helper: whatever was sent so far is still a seed
        pass
    return _apdus(*(a.hex() for a in sent if len(a) < 0xFF))


def _emv_profiles() -> dict[str, Any]:
    from rig.cards.profiles import load_cards

    return load_cards(ROOT / "configs" / "cards")


def _build_emv() -> Harness:
    from rig.cards.emv import EmvCard

    profiles = [p for _, p in sorted(_emv_profiles().items())]

    def run(data: bytes) -> object:
        if not data:
            return None
        profile = profiles[(data[0] & 0x7F) % len(profiles)]
        card = EmvCard(profile, atc=data[0] * 257 % 65536)
        power_up = getattr(card, "power_up", None)  # the card's interfaces (contact / tap)
        if power_up is not None:
            power_up(contactless=bool(data[0] & 0x80))
        sws = []
        i = 1
        while i < len(data):
            n = data[i]
            apdu = data[i + 1 : i + 1 + n]
            i += 1 + n
            if n == 0xFF:
                card.reset()
                continue
            rapdu = card.transmit(apdu)
            if not rapdu:  # nothing answers: a mute chip, or no chip on this interface
                assert card.atr() is None, "a card with an ATR answered nothing"
                continue
            assert len(rapdu) >= 2, f"R-APDU without a status word: {rapdu.hex()}"
            assert rapdu[-2:] != b"\x6f\x00", "the card answered 6F00 (internal error)"
            sws.append(rapdu[-2:])
        return tuple(sws[-3:])

    return Harness(run, ())


# --- SCPI: the virtual PSU and the driver's reply parsing ----------------------------------

SCPI_TOKENS = tuple(t.encode() for t in (
    "*IDN?", "*RST", "*CLS", "*OPC?", "SYST:ERR?", "INST:NSEL ", "INST CH", "VOLT ", "VOLT?",
    "CURR ", "CURR?", "OUTP ", "OUTP?", "ON", "OFF", "MEAS:VOLT?", "MEAS:CURR?", "MEAS:POW?",
    ":APPL CH1,", ":APPL? CH", "(@1)", "(@1:3)", "(@", "CH1:VOLT ", "SYST:STAT?", "VOLT:PROT ",
    "VOLT:PROT:TRIP?", "VOLT:PROT:CLE", "OUTP:PROT:CLE", ":SOUR2:", "MIN", "MAX", "DEF", "mV",
    "V", "A", ";", ",", ":", "\n", "\"", "'", "1e308", "-0"))


def _psu_seeds() -> list[bytes]:
    return [b"\x00" + b"\n".join(lines) for lines in (
        [b"*IDN?", b"INST:NSEL 2;:VOLT 12.000;*OPC?", b"SYST:ERR?", b"OUTP ON;*OPC?",
         b"MEAS:CURR?", b"VOLT:PROT 5;VOLT?;VOLT:PROT:TRIP?", b"VOLT:PROT:CLE", b"*RST"],
        [b"\x01VOLT 12,(@1);*OPC?", b"OUTP ON,(@1:2)", b"MEAS:CURR? (@1)", b"SYST:ERR?"],
        [b"\x02:APPL CH1,12,1.5", b":APPL? CH1", b":SOUR2:VOLT 5", b":OUTP CH1,ON",
         b":OUTP? CH1", b":MEAS:CURR? CH1"],
        [b"\x03CH1:VOLT 12", b"CH1:CURR 1.5", b"OUTP CH1,ON", b"MEAS:CURR? CH1", b"INST CH2",
         b"SYST:STAT?", b"CH1:VOLT:PROT 3"],
    )]


def _build_psu_sim() -> Harness:
    """Program message lines at the virtual SCPI PSU (``ScpiPsuServer.process``). First byte:
    the model (and channel count); every handler bug is logged and counted as a crash."""
    from rig.sim.psu import MODELS, ScpiPsuServer

    models = sorted(MODELS)
    seen: list[object] = []

    def run(data: bytes) -> object:
        if not data:
            return None
        model = models[data[0] % len(models)]
        psu = ScpiPsuServer(1 + data[0] // 4 % 4, model,
                            on_power=lambda n, on, v: seen.append(on),
                            load=lambda n: 0.25 * n)
        seen.clear()
        replies = []
        for raw in _text(data[1:]).split("\n"):
            line = raw.strip("\r\n\x00 ")  # as serve_lines hands it over
            reply = psu.process(line)
            assert reply is None or isinstance(reply, str)
            if reply is not None:
                replies.append(reply[:12])
        return model, tuple(replies[-2:])

    return Harness(run, ())


def _psu_driver_seeds() -> list[bytes]:
    return [bytes([i]) + b"\n".join(lines) for i, lines in enumerate((
        [b"posrig,VPSU,VLAB000001,1.0", b'0,"No error"', b"1", b'0,"No error"', b"12.000",
         b"1", b'0,"No error"'],
        [b"Keysight Technologies,E36312A,MY59000001,2.1.0", b'+0,"No error"', b"1",
         b'+0,"No error"', b"+1.20000000E+01", b'-113,"Undefined header"', b'+0,"No error"'],
        [b"RIGOL TECHNOLOGIES,DP832,DP8C000000001,00.01.16", b'0,"No error"', b"ON",
         b"1", b'0,"No error"', b"0.350"],
        [b"Siglent Technologies,SPD3303X,SPD3XIDX000001,1.01", b'0,"No error"', b"0x14",
         b"12.000", b'0,"No error"', b"0x4"],
    ))]


class _ScriptedVisa:
    """A pyvisa-like resource whose ``read`` returns the fuzz input's lines, then times out."""

    def __init__(self, replies: deque[str], timeout: Callable[[], BaseException]) -> None:
        self.replies = replies
        self.timeout = timeout  # a fresh exception each time: a re-raised one grows its traceback

    def write(self, message: str) -> int:
        return len(message) + 1

    def read(self) -> str:
        if not self.replies:
            raise self.timeout()
        return self.replies.popleft()

    def close(self) -> None:
        pass


def _build_psu_driver() -> Harness:
    """Instrument replies at the PSU driver (``PsuDriver`` over a scripted resource), and at
    each dialect's reply parsers. First byte: dialect and which calls run."""
    from pyvisa import constants
    from pyvisa.errors import VisaIOError

    from rig.config import PsuConfig
    from rig.core.errors import RigError
    from rig.drivers.psu import PsuDriver
    from rig.drivers.psu_dialects import DIALECTS
    from rig.timeline.events import NullSink

    names = sorted(DIALECTS)
    def timeout() -> VisaIOError:
        return VisaIOError(constants.StatusCode.error_timeout)

    cfgs = {n: PsuConfig(resource="TCPIP0::127.0.0.1::5025::SOCKET", dialect=n, channels=3,
                         timeout_s=0.01) for n in names}
    calls = [
        lambda d: d.open(), lambda d: d.set_voltage(1, 12.0), lambda d: d.set_current(2, 1.5),
        lambda d: d.output(1, True), lambda d: d.switch(3, False), lambda d: d.output_state(1),
        lambda d: d.measure_voltage(2), lambda d: d.measure_current(1),
        lambda d: d.voltage_setpoint(3), lambda d: d.idn(),
    ]

    def run(data: bytes) -> object:
        if not data:
            return None
        name = names[data[0] % len(names)]
        dialect = DIALECTS[name]
        lines = _text(data[1:]).split("\n")
        for reply in lines[:8]:  # the parsers on their own: ValueError is theirs
            for parse in (dialect.parse_float, dialect.parse_error,
                          lambda r: dialect.parse_output(r, 1)):
                try:
                    parse(reply)
                except ValueError:
                    pass
        replies = deque(line.rstrip("\r") for line in lines)
        res = _ScriptedVisa(replies, timeout)
        drv = PsuDriver("psu1", cfgs[name], NullSink(), {1: (24.0, 3.0), 2: (24.0, 3.0),
                                                          3: (24.0, 3.0)}, opener=lambda: res)
        done = []
        start = data[0] // 4
        for k in range(4):
            if not replies:
                break
            try:
                calls[(start + k) % len(calls)](drv)
                done.append(k)
            except RigError:
                pass
        return name, tuple(done)

    return Harness(run, ())


# --- GRBL: the sim's line parsing and the robot driver's reply parsing ------------------------

GRBL_TOKENS = tuple(t.encode() for t in (
    "G0", "G1", "G4", "G20", "G21", "G53", "G54", "G80", "G90", "G91", "G94", "M3", "M5", "M8",
    "M9", "F", "N", "P", "S", "T", "X", "Y", "Z", "$J=", "$$", "$X", "$H", "$G", "$I", "$N0=",
    "$110=", "(", ")", ";", "\n", "\r", ".", "-", "?", "!", "~", "\x18"))


def _grbl_seeds() -> list[bytes]:
    return [b"G21 G90\nG0 X10 Y20 Z-5\nG1 X12.5 F600\nG4 P0\nM8\nG4 P0.2\nM9\n",
            b"$J=G91 X-5 F1000\n$J=G53 G21 X0 Y0 F500\n$110=6000\n$$\n$G\n",
            b"G20 G91 G1 X1 Y-1 F10 N100 (comment) ; rest\nG80 X1\nG1X1Y2Z3F-1\n"]


def _build_grbl_sim() -> Harness:
    """Bytes at the virtual GRBL: the line assembler, then each line as the sim executes it:
    ``parse_block`` with the modal state updated as ``GrblServer._gcode`` does, ``$J=`` jogs
    with ``parse_jog``."""
    from rig.sim.grbl_motion import GcodeState, GrblError, LineAssembler, parse_block, parse_jog

    def run(data: bytes) -> object:
        lines = LineAssembler()
        gc = GcodeState()
        replies = []
        rest = data
        while rest:
            line, used = lines.feed(rest)
            rest = rest[used:]
            if line is None:
                break
            try:
                if line.overflow:
                    raise GrblError(11)
                if line.text.startswith("$J="):
                    target, feed = parse_jog(line.text[3:], gc)
                    assert feed > 0
                    gc.position = target
                elif line.text and not line.text.startswith("$"):
                    blk = parse_block(line.text, gc)
                    gc.units, gc.distance, gc.motion = blk.units, blk.distance, blk.motion
                    gc.feed = gc.feed if blk.feed is None else blk.feed
                    if blk.target is not None:
                        gc.position = blk.target
                gc.report(False)
                replies.append("ok")
            except GrblError as e:
                replies.append(f"error:{e.code}")
        return tuple(replies[-3:])

    return Harness(run, ())


def _robot_seeds() -> list[bytes]:
    return [b"Grbl 1.1h ['$' for help]\n<Idle|MPos:0.000,0.000,0.000|FS:0,0>\nok\n"
            b"$0=10\n$110=6000.000\n$22=1\nok\n[MSG:'$H'|'$X' to unlock]\nALARM:3\nerror:9\n",
            b"<Run|MPos:10.000,-2.500,0.000|Bf:15,127|FS:600,0|WCO:0,0,0>\n"
            b"[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]\nok\n>G54G17:ok\n"]


def _build_robot_driver() -> Harness:
    """Controller lines at the robot driver: the reader thread's per-line dispatch
    (``RobotDriver._on_line``: ok / error / status / ALARM / banner / info), the status report
    parser, and the ``$$`` dump as ``open()`` reads it."""
    from rig.config import RobotConfig
    from rig.core.clock import now
    from rig.core.errors import InstrumentError
    from rig.drivers import robot
    from rig.timeline.events import NullSink

    cfg = RobotConfig(port="socket://127.0.0.1:1", timeout_s=0.01)

    def run(data: bytes) -> object:
        drv = robot.RobotDriver("robot", cfg, NullSink())
        texts = [raw.decode("ascii", "replace").strip() for raw in data.split(b"\n")]
        got = []
        for text in texts:
            if not text:
                continue
            if text.startswith("<"):
                st = robot.RobotStatus.parse(text)
                got.append(st.state if st else None)
            try:
                drv._on_line(text, now())
            except InstrumentError:
                got.append("err")
        dump = robot._SETTING.findall("\n".join(texts))  # what open() does with `$$`
        settings = {int(k): float(v) for k, v in dump}
        return tuple(got[-3:]), len(settings)

    return Harness(run, ())


# --- ECR and console lines -----------------------------------------------------------------

class _FakePort:
    """A pyserial-like port that delivers the fuzz input in small chunks, then fails."""

    def __init__(self, data: bytes, error: type[Exception]) -> None:
        self.data = data
        self.error = error
        self.is_open = True
        self.in_waiting = min(len(data), 7)

    def read(self, size: int = 1) -> bytes:
        if not self.data:
            raise self.error("end of fuzz input")
        chunk, self.data = self.data[:size], self.data[size:]
        self.in_waiting = min(len(self.data), 1 + len(chunk) % 13)
        return chunk

    def write(self, data: bytes) -> int:
        return len(data)

    def reset_input_buffer(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.is_open = False


def _ecr_driver_seeds() -> list[bytes]:
    return [b"\x00OK READY\r\n", b"\x01OK SALE started\r\n", b"\x02ERR 11 bad operator\r\n",
            b"\x03OK approved rc=00 auth=123456 pan=622202******0128 amount=100\r\n",
            b"\x04\xff\xfeOK \xe4\xb8\xad\n"]


def _build_ecr_driver() -> Harness:
    """Replies at the ECR driver (``EcrDriver.command`` over a scripted port)."""
    import serial

    from rig.core.errors import InstrumentError, TerminalError
    from rig.drivers.ecr import EcrDriver
    from rig.timeline.events import NullSink

    commands = ["STATUS", "LOGIN 01 0000", "SALE 100", "RESULT?", "SIGNON", "SETTLE"]

    def run(data: bytes) -> object:
        if not data:
            return None
        drv = EcrDriver("T1", "socket://127.0.0.1:1", NullSink(), timeout_s=0.05)
        drv._port = _FakePort(data[1:], serial.SerialException)  # type: ignore[assignment]
        cmd = commands[data[0] % len(commands)]
        reply = drv.command(cmd, secret="0000" if cmd.startswith("LOGIN") else None)
        return reply[:8]

    return Harness(run, (InstrumentError, TerminalError))


def _ecr_sim_seeds() -> list[bytes]:
    return [bytes([s]) + b"\n".join(lines) for s, lines in (
        (0, [b"STATUS", b"LOGIN 01 0000", b"SIGNON", b"SALE 100", b"RESULT?", b"CANCEL"]),
        (3, [b"SALE 100", b"PREAUTH 5000", b"BALANCE", b"VOID 000001", b"SETTLE", b"RESULT?"]),
        (2, [b"LOGIN 01 0000", b"LOGIN x", b"STATUS extra", b"sale 99999999999999"]),
        (1, [b"SIGNON", b"CANCEL", b"BOGUS", b"VOID 00000000000000000000001"]),
    )]


def _build_ecr_sim() -> Harness:
    """ECR lines at the virtual terminal (its ECR line handler, as ``LineServer`` calls it),
    in the terminal state the first byte picks; anything it starts is cancelled after."""
    import random

    from rig.config import load_lab
    from rig.sim.journal import TruthJournal
    from rig.sim.terminal import TerminalState, VirtualTerminal
    from rig.sim.wire import thread_stamp

    lab = load_lab(ROOT / "configs" / "labs" / "virtual.yaml")
    # simulated delays near zero: a sign-on started by a line ends (refused) within the input
    sim = lab.sim.model_copy(update={"time_scale": 1e-4})
    name, tcfg = next(iter(lab.terminals.items()))
    states = list(TerminalState)
    loop = asyncio.new_event_loop()

    async def session(data: bytes) -> list[str]:
        term = VirtualTerminal(name, tcfg, sim, TruthJournal(None, keep=64),
                               random.Random(1))
        term.state = states[data[0] % len(states)]
        out = []
        try:
            for raw in _text(data[1:]).split("\n"):
                text = raw.strip()
                if text:  # LineServer drops empty lines before the handler
                    out.append(term._on_ecr(text, thread_stamp()))
                    await asyncio.sleep(0)
        finally:
            await term.stop()
        return out

    def run(data: bytes) -> object:
        if not data:
            return None
        replies = loop.run_until_complete(session(data))
        return tuple(r[:6] for r in replies[-3:])

    def close() -> None:
        loop.close()

    return Harness(run, (), close=close)


def _build_ecr_wire() -> Harness:
    """ECR bytes over a socket at the virtual terminal's ECR port (``rig.sim.lines.LineServer``
    and the terminal's handler), half-closed after the bytes; every reply is one line."""
    import random

    from rig.config import load_lab
    from rig.sim.journal import TruthJournal
    from rig.sim.terminal import TerminalState, VirtualTerminal

    lab = load_lab(ROOT / "configs" / "labs" / "virtual.yaml")
    sim = lab.sim.model_copy(update={"time_scale": 1e-4})
    name, tcfg = next(iter(lab.terminals.items()))
    states = list(TerminalState)
    loop = asyncio.new_event_loop()

    async def session(data: bytes) -> bytes:
        term = VirtualTerminal(name, tcfg, sim, TruthJournal(None, keep=64), random.Random(1))
        await term.ecr.start("127.0.0.1", 0)
        term.state = states[data[0] % len(states)]
        try:
            assert term.ecr.address is not None
            reader, writer = await asyncio.open_connection(*term.ecr.address)
            writer.write(data[1:])
            writer.write_eof()
            replies = b""
            try:  # the server keeps the connection after EOF: read until quiet
                while chunk := await asyncio.wait_for(reader.read(65536), 0.02):
                    replies += chunk
            except TimeoutError:
                pass
            writer.close()
            return replies
        finally:
            await term.stop()

    def run(data: bytes) -> object:
        if not data:
            return None
        replies = loop.run_until_complete(session(data))
        lines = replies.split(b"\r\n")
        assert lines[-1] == b"", f"a reply without its line end: {lines[-1][:40]!r}"
        return tuple(line[:6] for line in lines[-4:-1])

    return Harness(run, (), close=loop.close)


def _console_seeds() -> list[bytes]:
    return [b"120 INFO BOOT done fw=1.2.3\r\n130 INFO LOGIN ok op=01\r\n"
            b"900 INFO SIGNON ok stan=000001\r\n901 INFO READY\r\n",
            b"2000 INFO SALE start type=sale amount=100\n2001 INFO CARD wait\n"
            b"2100 INFO CARD read pan=6222021234567890128 entry=chip\n"
            b"2500 INFO RESULT approved rc=00\n2600 WARN REVERSAL sent\n",
            b"1 ERR SIGNON fail rc=96\n;6222021234567890128=28121010000000000?\n"
            b"%B6222021234567890128^ZHANG/SAN^2812101?\n"]


def _build_console() -> Harness:
    """Console bytes at the console reader (``ConsoleReader._read`` over a scripted port):
    line splitting, the terminal profile's classification and redaction of every line."""
    import serial

    from rig.drivers.console import ConsoleReader
    from rig.drivers.profiles import get_profile
    from rig.timeline.events import ListSink

    profile = get_profile("vlab")

    def run(data: bytes) -> object:
        sink = ListSink()
        reader = ConsoleReader("T1", "socket://127.0.0.1:1", profile, sink)
        try:
            reader._read(_FakePort(data, serial.SerialException))  # type: ignore[arg-type]
        except serial.SerialException:
            pass
        return tuple(str(e.kind) for e in sink.events[-3:])

    return Harness(run, ())


# --- files: lab config, campaigns, scenarios, fault specs ---------------------------------------

YAML_TOKENS = tuple(t.encode() for t in (
    ": ", "- ", "\n  ", "{", "}", "[", "]", "&a ", "*a", "<<: *a", "!!python/object", "~",
    "null", "true", "no", "0x1F", "1e9", ".inf", "-.nan", "'", '"', "#", "|", ">", "---",
    "...", "%YAML 1.2", "? ", "\t", "T1", "T2", "virtual", "cup_debit", "latency", "ms: ",
    "during: ", "signon", "auth", "faults:", "steps:", "stop:", "matrix:", "cases:",
    "scenario:", "weight: ", "cycles: ", "duration: ", "until: ", "8h", "07:00"))


class _Files:
    """A private temp directory: loaders take paths, so each input is written to a file."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="posrig-fuzz-"))

    def write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _build_config() -> Harness:
    """Lab config files at ``rig.config.load_lab`` (and the snapshot of what loads)."""
    from rig.config import load_lab
    from rig.core.errors import ConfigError

    files = _Files()

    def run(data: bytes) -> object:
        lab = load_lab(files.write("lab.yaml", data))
        lab.snapshot()
        for t in lab.terminals:
            lab.model_of(t)
        return len(lab.terminals)

    return Harness(run, (ConfigError,), close=files.close)


def _build_campaign() -> Harness:
    """Campaign files at ``load_campaign`` (against the virtual lab, shipped scenarios and
    cards), then ``plan``: its estimate, first cycles and chunks."""
    from rig.cards.profiles import load_cards
    from rig.config import load_lab
    from rig.core.errors import ConfigError, TestError
    from rig.faults.scenarios import load_scenarios
    from rig.soak.campaign import load_campaign
    from rig.soak.plan import plan

    lab = load_lab(ROOT / "configs" / "labs" / "virtual.yaml")
    scenarios = load_scenarios()
    cards = load_cards(ROOT / "configs" / "cards")
    files = _Files()
    (files.dir / "labs").symlink_to(ROOT / "configs" / "labs")  # `lab: ../labs/…` resolves
    (files.dir / "campaigns").mkdir()

    def run(data: bytes) -> object:
        camp = load_campaign(files.write("campaigns/c.yaml", _yaml_text(data)), lab=lab,
                             scenarios=scenarios, cards=cards)
        camp.snapshot()
        p = plan(camp, lab=lab, now=FIXED_NOW)
        p.as_dict(first=4)
        p.estimate_s()
        if p.bounded:
            cycles = list(itertools.islice(p.cycles(), 16))
            list(itertools.islice(p.chunks(), 4))
        else:  # bounded by time only: a terminal's chunks never end
            cycles = list(itertools.islice(p.chunks(p.terminals[0]), 4))
        return len(p.cases), len(cycles), p.bounded

    return Harness(run, (ConfigError, TestError), close=files.close)


def _build_scenario() -> Harness:
    """Scenario files at ``load_scenario`` (file name = the scenario's name when it parses),
    then their fault objects and a verdict by ``rig.control.scenario.judge``."""
    from rig.control.scenario import judge
    from rig.core.errors import ConfigError, TestError
    from rig.faults.scenarios import load_scenario

    files = _Files()
    console = ["120 INFO BOOT done", "900 INFO SIGNON fail rc=96", "901 INFO READY",
               "2500 INFO RESULT approved rc=00"]
    obs = {"outcome": "approved", "rc": "00", "signed_on": True, "attempts": 2,
           "recover_s": 1.5, "reversal": False}

    named = re.compile(rb"^name:\s*['\"]?([a-z0-9][a-z0-9-]{0,60})['\"]?\s*$", re.M)

    def run(data: bytes) -> object:
        text = _yaml_text(data)
        m = named.search(text)  # the file name must be the scenario's name: get past that check
        sc = load_scenario(files.write(f"{m.group(1).decode() if m else 'x'}.yaml", text))
        faults = sc.fault_objects()
        for f in faults:
            f.label()
        sc.summary()
        checks = judge(sc, obs, console)
        return sc.procedure, len(faults), tuple(c["ok"] for c in checks)

    return Harness(run, (ConfigError, TestError), close=files.close)


def _fault_seeds() -> list[bytes]:
    return [b"{fault: latency, ms: 300, jitter_ms: 50, during: signon}",
            b"{fault: loss, percent: 20, for_s: 5}", b"{fault: host_down, for_s: 5}",
            b"{fault: host_reply, rc: '96', applies_to: auth, count: 1}",
            b"{fault: brownout, volts: 9.5, ms: 200, at_s: 1}", b"{fault: robot_alarm}",
            b"{fault: netem, delay_ms: 100, loss_percent: 1, during: cycle}",
            b"{fault: slicer, bytes: 3, delay_ms: 5}"]


def _build_fault_spec() -> Harness:
    """Fault specs (``{fault: name, ...}``, as in scenario and campaign files) at
    ``fault_from_dict``, then the fault's label, parameters and window."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from rig.core.errors import TestError
    from rig.faults.spec import fault_from_dict
    from rig.soak.plan import fault_label

    class _NotYaml(Exception):
        pass

    def run(data: bytes) -> object:
        try:
            spec = YAML(typ="safe", pure=True).load(_text(data))  # one each: YAML() keeps docs
        except (YAMLError, ValueError, RecursionError) as e:  # the YAML library's problem
            raise _NotYaml(str(e)) from None
        f = fault_from_dict(spec)
        f.label()
        f.params()
        f.window()
        fault_label(f)
        return f.name

    return Harness(run, (TestError, _NotYaml))


# --- the list ------------------------------------------------------------------------------

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("iso8583-cup", "CUP frame bodies: decode, re-encode, MAC input, field readers",
           _build_cup, _cup_seeds, tokens=(b"\x60\x00\x03\x00\x00", b"\x60\x31\x00\x31\x00\x00",
                                           b"\x08\x00", b"\x02\x00", b"\x05\x00", b"\x04\x00",
                                           b"\xff" * 8, b"\x99", b"\x00" * 8), weight=3.0),
    Target("iso8583-iso87", "ISO 8583:1987 bodies: decode, MAC, DE70", _build_iso87,
           _iso87_seeds, tokens=(b"0800", b"0200", b"001", b"301", b"\xff" * 8), weight=2.0),
    Target("host-frames", "byte streams at the host: framing (sync + asyncio), decode, "
           "classify, financial checks, request event", _build_host, _host_seeds,
           tokens=(b"\x00\x00", b"\xff\xff", b"\x04\x00", b"\x00\x05"), weight=2.0),
    Target("host-live", "byte streams at the running acquirer host (one connection each): "
           "replies must decode, no host error", _build_host_live, _host_live_seeds,
           tokens=(b"\x00\x00", b"\x60\x00\x03\x00\x00", b"\x08\x00", b"\x02\x00",
                   b"\x04\x00", b"\x05\x00", b"10000001", b"898310048990001"),
           weight=0.5, time_limit_s=10.0, slice_inputs=150, sockets=True),
    Target("emv-card", "APDU sequences at the emulated EMV card (EmvCard.transmit)",
           _build_emv, _emv_seeds, tokens=(b"\x00\xa4\x04\x00", b"\x00\xb2", b"\x80\xa8\x00\x00",
                                           b"\x80\xae\x80\x00", b"\x80\xca\x9f\x36", b"\x83",
                                           b"1PAY.SYS.DDF01", b"\xa0\x00\x00\x03\x33\x01\x01\x01"),
           weight=2.0),
    Target("psu-sim", "SCPI program messages at the virtual PSU (ScpiPsuServer.process)",
           _build_psu_sim, _psu_seeds, tokens=SCPI_TOKENS, weight=1.5),
    Target("psu-driver", "instrument replies at PsuDriver and the dialects' reply parsers",
           _build_psu_driver, _psu_driver_seeds, tokens=SCPI_TOKENS, weight=1.0),
    Target("grbl-sim", "G-code / $ lines at the GRBL sim's line assembler and parser",
           _build_grbl_sim, _grbl_seeds, tokens=GRBL_TOKENS, weight=1.5),
    Target("robot-driver", "GRBL controller lines at RobotDriver's line dispatch, status and "
           "$$ parsing", _build_robot_driver, _robot_seeds,
           tokens=GRBL_TOKENS + (b"<Idle|MPos:", b"|FS:", b"ALARM:", b"error:", b"ok",
                                 b"Grbl 1.1h", b"[MSG:"), weight=1.0),
    Target("ecr-driver", "ECR replies at EcrDriver.command", _build_ecr_driver,
           _ecr_driver_seeds, tokens=(b"OK ", b"ERR ", b"\r\n", b"\n"), weight=0.5),
    Target("ecr-sim", "ECR command lines at the virtual terminal's ECR handler",
           _build_ecr_sim, _ecr_sim_seeds,
           tokens=(b"STATUS", b"LOGIN ", b"SIGNON", b"SALE ", b"PREAUTH ", b"BALANCE", b"VOID ",
                   b"SETTLE", b"RESULT?", b"CANCEL", b"\n"), weight=0.5),
    Target("ecr-wire", "ECR bytes over a socket at the virtual terminal's ECR LineServer",
           _build_ecr_wire, _ecr_sim_seeds,
           tokens=(b"STATUS", b"LOGIN ", b"SIGNON", b"SALE ", b"RESULT?", b"CANCEL", b"\r\n",
                   b"\n", b"\r"), weight=0.2, time_limit_s=5.0, slice_inputs=60, sockets=True),
    Target("console", "console bytes at ConsoleReader: lines, profile classification, "
           "redaction", _build_console, _console_seeds,
           tokens=(b" INFO ", b"BOOT done", b"SIGNON ok", b"READY", b"RESULT ", b"CARD read",
                   b"6222021234567890128", b"=2812101", b"^", b"%B", b";", b"?", b"\n"),
           weight=1.0),
    Target("config", "lab config YAML at rig.config.load_lab", _build_config,
           lambda: _files("configs/labs/*.yaml"), tokens=YAML_TOKENS, weight=0.4,
           time_limit_s=5.0, max_len=8192, slice_inputs=60),
    Target("campaign", "campaign YAML at load_campaign + plan", _build_campaign,
           lambda: _files("configs/campaigns/*.yaml"), tokens=YAML_TOKENS, weight=0.3,
           time_limit_s=5.0, max_len=8192, slice_inputs=50),
    Target("scenario", "scenario YAML at load_scenario + judge", _build_scenario,
           lambda: _files("configs/scenarios/*.yaml"), tokens=YAML_TOKENS, weight=0.4,
           time_limit_s=5.0, max_len=4096, slice_inputs=80),
    Target("fault-spec", "fault specs at fault_from_dict", _build_fault_spec, _fault_seeds,
           tokens=YAML_TOKENS, weight=0.5, time_limit_s=2.0, slice_inputs=150),
)}
