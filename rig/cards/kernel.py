"""The terminal side of an EMV transaction (a small, online-only kernel).

It follows the card: the PDOL data it sends is what the card's PDOL asks for (``83 00`` when the
card has none), the first GENERATE AC carries what CDOL1 asks for, the second what CDOL2 asks
for; every DOL entry is filled from the terminal's data (:class:`TerminalData`, the amount, the
unpredictable number, the date) fitted to the length the card asks, or zeros for a tag the
terminal does not have, as EMV Book 3 §5.4 says.

:func:`begin` drives any ``transmit(apdu) -> rapdu`` (an in-process :class:`EmvCard`, or a PC/SC
reader): PSE (contact; list of AIDs as fallback) or PPSE (contactless) → the highest-priority
AID the terminal supports → SELECT → GET PROCESSING OPTIONS → READ RECORD per AFL → GENERATE AC
(ARQC) → a :class:`ChipTransaction` whose ``read`` holds the CUP field 55 and whose
:meth:`ChipTransaction.complete` takes the host's answer to the card (EXTERNAL AUTHENTICATE
when the card's AIP says it authenticates the issuer that way, then the second GENERATE AC: TC
or AAC). :func:`read_card` is the same up to the first GENERATE AC. Failures raise
:class:`CardReadError` with a short reason a terminal would show. PAN, track 2 and field 55
never reach a log line, an exception or a repr.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from types import MappingProxyType

from ..core.errors import ProtocolError
from ..core.redact import mask_pan
from . import tlv
from .tlv import TlvError

log = logging.getLogger(__name__)

Transmit = Callable[[bytes], bytes]

PSE = b"1PAY.SYS.DDF01"
PPSE = b"2PAY.SYS.DDF01"
SUPPORTED_AIDS: tuple[str, ...] = (
    "A000000333010101",  # UnionPay debit
    "A000000333010102",  # UnionPay credit
    "A0000000031010",  # Visa
    "A0000000041010",  # Mastercard
)
# terminal application version number (9F09) by RID
APP_VERSION = {"A000000333": "0030", "A000000003": "008C", "A000000004": "0002"}
# the usual CUP field 55 set, in the order terminals send it
FIELD55_TAGS = (0x9F26, 0x9F27, 0x9F10, 0x9F37, 0x9F36, 0x95, 0x9A, 0x9C, 0x9F02, 0x5F2A,
                0x82, 0x9F1A, 0x9F03, 0x9F33, 0x9F34, 0x9F35, 0x84, 0x9F09)
ARQC, TC, AAC = 0x80, 0x40, 0x00
APPROVING_ARC = ("00", "10", "11")
UNABLE_TO_GO_ONLINE = "Z3"  # ARC of a transaction the host never answered (Book 4 A6)
AIP_ISSUER_AUTH = 0x04
TVR_ODA_NOT_PERFORMED = (0, 0x80)
TVR_EXPIRED = (1, 0x40)
TVR_NOT_EFFECTIVE = (1, 0x20)
TVR_ISSUER_AUTH_FAILED = (4, 0x40)


class CardReadError(ProtocolError):
    """The card could not be read; ``reason`` is what a terminal would display."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TerminalData:
    """What the terminal itself contributes to PDOL / CDOL data and field 55."""

    country: str = "156"  # 9F1A
    capabilities: str = "E0E1C8"  # 9F33: IC, magstripe, manual; PIN, signature; SDA/DDA/CDA
    additional_capabilities: str = "6000F0A001"  # 9F40
    terminal_type: int = 0x22  # 9F35: attended, online only
    ttq: str = "26000000"  # 9F66 contactless terminal transaction qualifiers
    cvm_results: str = "1F0302"  # 9F34: no CVM required, successful
    terminal_id: str = "00000000"  # 9F1C
    merchant_id: str = "000000000000000"  # 9F16
    merchant_name: str = "POSRIG VIRTUAL LAB"  # 9F4E
    mcc: str = "5999"  # 9F15
    ifd_serial: str = "POSRIG01"  # 9F1E
    ec_support: int = 0x00  # 9F7A: no electronic cash (UnionPay)
    capp: int = 0x00  # DF60: no CAPP transaction (UnionPay qPBOC)
    sm_support: int = 0x00  # DF69: no SM algorithms (UnionPay)


@dataclass(frozen=True, slots=True)
class CardRead:
    """What the terminal took from the chip. ``aids``: every AID the card offered. The data
    objects the card showed (FCI, AIP, AFL, DOLs, record tags) are kept for a card check."""

    aid: str
    pan: str = field(repr=False)
    expiry: str  # YYMM
    track2: str = field(repr=False)  # PAN=YYMMSSS…
    pan_sequence: str
    app_label: str
    field55: bytes = field(repr=False)  # empty when stopped before GENERATE AC
    cid: int  # 9F27: 0x80 ARQC, 0x40 TC, 0x00 AAC (0 when stopped before GENERATE AC)
    atc: int
    aids: tuple[str, ...] = ()
    interface: str = "contact"
    priority: int = 0  # 87 (0: none)
    language: str = ""  # 5F2D
    preferred_name: str = ""  # 9F12
    aip: bytes = b""
    afl: bytes = b""
    pdol: bytes | None = None  # None: the card has no PDOL
    cdol1: bytes = b""
    cdol2: bytes = b""
    record_tags: Mapping[tuple[int, int], tuple[int, ...]] = field(
        default_factory=lambda: MappingProxyType({}), repr=False)
    record_bodies: Mapping[tuple[int, int], bytes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False)  # hold the PAN: compare only

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.pan)

    def __repr__(self) -> str:
        return (f"CardRead(aid={self.aid}, pan={self.masked_pan}, expiry={self.expiry}, "
                f"label={self.app_label!r}, cid={self.cid:02X}, atc={self.atc})")

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of a chip transaction: the card's second cryptogram (TC approves, AAC declines)
    and what became of the issuer's authentication data (``ok`` / ``failed`` / ``none``)."""

    cid: int
    atc: int
    issuer_auth: str
    field55: bytes = field(repr=False)  # 9F26 9F27 9F10 9F36 95 of the second GENERATE AC

    @property
    def approved(self) -> bool:
        return self.cid == TC


class _Link:
    """APDU exchange with T=0 helpers (61xx GET RESPONSE, 6Cxx resend); ``step`` names
    what is going on for error reasons."""

    def __init__(self, transmit: Transmit) -> None:
        self._transmit = transmit
        self.answered = False
        self.step = "SELECT"

    def _x(self, apdu: bytes) -> tuple[bytes, int]:
        r = bytes(self._transmit(apdu))
        if len(r) < 2:
            raise CardReadError("card not responding" if self.answered else "no ATR")
        self.answered = True
        return r[:-2], int.from_bytes(r[-2:], "big")

    def cmd(self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"",
            le: bool = True) -> tuple[bytes, int]:
        self.step = {0xA4: "SELECT", 0xB2: "READ RECORD", 0xA8: "GPO", 0xAE: "GENERATE AC",
                     0x82: "EXTERNAL AUTHENTICATE"}.get(ins, f"INS {ins:02X}")
        head = bytes([cla, ins, p1, p2])
        apdu = head + (bytes([len(data)]) + data if data else b"") + (b"\x00" if le else b"")
        out, sw = self._x(apdu)
        if sw >> 8 == 0x6C and le:
            out, sw = self._x(apdu[:-1] + bytes([sw & 0xFF]))
        for _ in range(32):
            if sw >> 8 != 0x61:
                break
            more, sw = self._x(bytes([0x00, 0xC0, 0x00, 0x00, sw & 0xFF]))
            out += more
        log.debug("%s %02X%02X -> %04X (%d bytes)", self.step, p1, p2, sw, len(out))
        return out, sw


def _select(link: _Link, name: bytes) -> tuple[bytes, int]:
    return link.cmd(0x00, 0xA4, 0x04, 0x00, name)


@dataclass(frozen=True, slots=True)
class _Entry:
    aid: str
    label: str
    priority: int
    order: int


def _entries(items: list[tlv.Tlv], start: int = 0) -> list[_Entry]:
    out = []
    for t in tlv.walk(items):
        if t.tag != 0x61:
            continue
        f = tlv.flatten(t.children)
        if not 5 <= len(f.get(0x4F, b"")) <= 16:  # an AID is 5-16 bytes
            continue
        prio = f.get(0x87, b"\x00")[:1] or b"\x00"
        out.append(_Entry(f[0x4F].hex().upper(), _text(f.get(0x50, b"")),
                          prio[0] & 0x0F, start + len(out)))
    return out


def _text(b: bytes) -> str:
    return b.decode("ascii", "replace").strip()


def _directory(link: _Link, contactless: bool, supported: Sequence[str]) -> list[_Entry]:
    """Candidate applications, as the card lists them."""
    if contactless:
        data, sw = _select(link, PPSE)
        if sw != 0x9000:
            raise CardReadError("no supported application")
        return _entries(tlv.parse(data))
    data, sw = _select(link, PSE)
    if sw == 0x6A81:
        raise CardReadError("card blocked")
    if sw == 0x9000:
        sfi = tlv.find(tlv.parse(data), 0x88)
        if not sfi or not 1 <= sfi[0] <= 30:
            raise CardReadError("unreadable: PSE without directory SFI")
        out: list[_Entry] = []
        for rec in range(1, 17):
            data, sw = link.cmd(0x00, 0xB2, rec, (sfi[0] << 3) | 4)
            if sw != 0x9000:
                break
            out += _entries(tlv.parse(data, skip_padding=True), len(out))
        if out:
            return out
    # no PSE (or an empty one): the list-of-AIDs method
    found = []
    for aid in supported:
        data, sw = _select(link, bytes.fromhex(aid))
        if sw == 0x9000:
            fci = tlv.flatten(tlv.parse(data))
            df = fci.get(0x84, b"")
            name = df.hex().upper() if 5 <= len(df) <= 16 else aid
            prio = fci.get(0x87, b"\x00")[:1] or b"\x00"
            found.append(_Entry(name, _text(fci.get(0x50, b"")), prio[0] & 0x0F, len(found)))
    return found


def _ascii(text: str, n: int) -> bytes:
    return text.encode("ascii", "replace")[:n].ljust(n, b" ")


def _terminal_values(term: TerminalData, *, amount_minor: int, currency: str,
                     unpredictable: bytes, when: date, tvr: bytes) -> dict[int, bytes]:
    hhmmss = when.strftime("%H%M%S") if isinstance(when, datetime) else "000000"
    return {
        0x9F02: bytes.fromhex(f"{amount_minor:012d}"), 0x9F03: bytes(6),
        0x9F1A: bytes.fromhex(term.country.zfill(4)), 0x5F2A: bytes.fromhex(currency.zfill(4)),
        0x5F36: b"\x02", 0x9A: bytes.fromhex(when.strftime("%y%m%d")),
        0x9F21: bytes.fromhex(hhmmss), 0x9C: b"\x00", 0x9F37: bytes(unpredictable), 0x95: tvr,
        0x9F33: bytes.fromhex(term.capabilities),
        0x9F40: bytes.fromhex(term.additional_capabilities),
        0x9F35: bytes([term.terminal_type]), 0x9F34: bytes.fromhex(term.cvm_results),
        0x9F66: bytes.fromhex(term.ttq), 0x9F1C: _ascii(term.terminal_id, 8),
        0x9F16: _ascii(term.merchant_id, 15), 0x9F4E: term.merchant_name.encode("ascii", "replace"),
        0x9F15: bytes.fromhex(term.mcc.zfill(4)), 0x9F1E: _ascii(term.ifd_serial, 8),
        0x9F7A: bytes([term.ec_support]), 0xDF60: bytes([term.capp]),
        0xDF69: bytes([term.sm_support]), 0x9F53: b"R",
    }


def _yymmdd(b: bytes | None) -> date | None:
    try:
        s = b.hex() if b else ""
        return date(2000 + int(s[:2]), int(s[2:4]), int(s[4:6])) if len(s) == 6 else None
    except ValueError:
        return None


def _digits(b: bytes) -> str:
    s = b.hex().upper().rstrip("F")
    if not s.isdigit():
        raise CardReadError("unreadable: bad PAN")
    return s


def _gpo(link: _Link, pdol: bytes | None, values: Mapping[int, bytes]) -> tuple[bytes, bytes]:
    data = tlv.build_dol(pdol, values) if pdol else b""
    resp, sw = link.cmd(0x80, 0xA8, 0x00, 0x00, tlv.encode(0x83, data))
    if sw != 0x9000:
        raise CardReadError(f"GPO failed ({sw:04X})")
    items = tlv.parse(resp)
    if len(items) == 1 and items[0].tag == 0x80 and len(items[0].value) >= 2:
        aip, afl = items[0].value[:2], items[0].value[2:]
    else:
        f = tlv.flatten(items)
        if 0x82 not in f or 0x94 not in f:
            raise CardReadError(f"GPO response missing {'82' if 0x82 not in f else '94'}")
        aip, afl = f[0x82], f[0x94]
    if len(aip) != 2 or not afl or len(afl) % 4:
        raise CardReadError("unreadable: bad AFL")
    return aip, afl


def _read_records(link: _Link, afl: bytes) -> tuple[dict[int, bytes],
                                                      dict[tuple[int, int], tuple[int, ...]],
                                                      dict[tuple[int, int], bytes]]:
    out: dict[int, bytes] = {}
    tags_of: dict[tuple[int, int], tuple[int, ...]] = {}
    bodies: dict[tuple[int, int], bytes] = {}
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        if not 1 <= sfi <= 30 or first == 0 or last < first:
            raise CardReadError("unreadable: bad AFL")
        for rec in range(first, last + 1):
            data, sw = link.cmd(0x00, 0xB2, rec, (sfi << 3) | 4)
            if sw != 0x9000:
                raise CardReadError(f"READ RECORD failed ({sw:04X})")
            items = tlv.parse(data)
            if sfi <= 10 and (len(items) != 1 or items[0].tag != 0x70):
                raise CardReadError("unreadable: bad record")
            inner = items[0].children if len(items) == 1 and items[0].tag == 0x70 else items
            tags_of[(sfi, rec)] = tuple(t.tag for t in inner)
            bodies[(sfi, rec)] = items[0].value if len(items) == 1 else data
            for tag, value in tlv.flatten(items).items():
                out.setdefault(tag, value)
    return out, tags_of, bodies


def _parse_ac(resp: bytes) -> dict[int, bytes]:
    items = tlv.parse(resp)
    if len(items) == 1 and items[0].tag == 0x80:  # format 1: CID ATC AC IAD
        v = items[0].value
        if len(v) < 11:
            raise CardReadError("unreadable: short GENERATE AC response")
        return {0x9F27: v[:1], 0x9F36: v[1:3], 0x9F26: v[3:11], 0x9F10: v[11:]}
    f = tlv.flatten(items)
    for tag, n in ((0x9F27, 1), (0x9F36, 2), (0x9F26, 8)):
        if tag not in f:
            raise CardReadError(f"GENERATE AC missing {tag:X}")
        if len(f[tag]) != n:
            raise CardReadError(f"unreadable: bad {tag:X} in GENERATE AC")
    return f


def _generate_ac(link: _Link, p1: int, dol: bytes,
                 values: Mapping[int, bytes]) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """(the card's answer, the values the DOL carried as sent)."""
    items = tlv.dol_items(dol, values)
    resp, sw = link.cmd(0x80, 0xAE, p1, 0x00, b"".join(v for _, v in items))
    if sw != 0x9000:
        raise CardReadError(f"GENERATE AC failed ({sw:04X})")
    sent: dict[int, bytes] = {}
    for t, v in items:
        sent.setdefault(t, v)
    return _parse_ac(resp), sent


class ChipTransaction:
    """A chip transaction after its first GENERATE AC: ``read`` (with field 55 and the ARQC)
    and :meth:`complete`, the second half once the host answered (contact cards only: a
    contactless card has left the field by then)."""

    def __init__(self, link: _Link, read: CardRead, *, values: dict[int, bytes],
                 aip: bytes, cdol2: bytes, contactless: bool) -> None:
        self._link, self.read, self._values = link, read, values
        self._aip, self._cdol2, self.contactless = aip, cdol2, contactless
        self.completion: Completion | None = None

    def __repr__(self) -> str:
        return f"ChipTransaction({self.read!r}, completion={self.completion})"

    @property
    def needs_completion(self) -> bool:
        """The card gave an ARQC on contact and waits for the issuer's answer."""
        return (not self.contactless and self.read.cid == ARQC and self.completion is None
                and bool(self._cdol2))

    def complete(self, arc: str | None, issuer_auth_data: bytes | None = None) -> Completion:
        """Give the card the host's answer: ``arc`` the response code (None: the host never
        answered, ARC Z3), ``issuer_auth_data`` tag 91 of the reply if any. Asks for a TC when
        the host approved, an AAC otherwise. Raises :class:`CardReadError`."""
        if self.completion is not None:
            return self.completion
        if not self.needs_completion:
            raise CardReadError("no transaction to complete")
        arc_text = UNABLE_TO_GO_ONLINE if arc is None else arc
        approve = arc_text in APPROVING_ARC
        values = dict(self._values)
        tvr = bytearray(values.get(0x95, bytes(5)))
        iad = issuer_auth_data or b""
        asks_91 = 0x91 in dict(tlv.parse_dol(self._cdol2))
        issuer_auth = "none"
        try:
            if iad and self._aip[0] & AIP_ISSUER_AUTH and not asks_91:
                _, sw = self._link.cmd(0x00, 0x82, 0x00, 0x00, iad[:16], le=False)
                issuer_auth = "ok" if sw == 0x9000 else "failed"
                if sw != 0x9000:
                    tvr[TVR_ISSUER_AUTH_FAILED[0]] |= TVR_ISSUER_AUTH_FAILED[1]
            elif iad and asks_91:
                issuer_auth = "sent"
            values.update({0x8A: arc_text.encode("ascii", "replace")[:2], 0x91: iad,
                           0x95: bytes(tvr)})
            ac, _ = _generate_ac(self._link, TC if approve else AAC, self._cdol2, values)
        except TlvError:
            raise CardReadError("unreadable: bad data in GENERATE AC") from None
        cid, atc = ac[0x9F27][0], int.from_bytes(ac[0x9F36], "big")
        if issuer_auth == "sent":
            issuer_auth = "ok" if cid == TC or not approve else "failed"
        f55 = tlv.encode_many((t, v) for t, v in (
            (0x9F26, ac[0x9F26]), (0x9F27, ac[0x9F27]), (0x9F10, ac.get(0x9F10, b"")),
            (0x9F36, ac[0x9F36]), (0x95, bytes(tvr))) if v)
        self.completion = Completion(cid & 0xC0, atc, issuer_auth, f55)
        log.debug("completed %s cid=%02X issuer_auth=%s", self.read.masked_pan, cid, issuer_auth)
        return self.completion


def begin(transmit: Transmit, *, contactless: bool, amount_minor: int,
          currency: str = "156", unpredictable: bytes, when: date,
          stop_before_ac: bool = False, supported_aids: Sequence[str] = SUPPORTED_AIDS,
          terminal: TerminalData = TerminalData()) -> ChipTransaction:
    """Read the chip through ``transmit`` and ask it for an ARQC over ``amount_minor``.

    ``unpredictable`` is 9F37 (4 bytes); ``when`` gives 9A (and 9F21 for a datetime).
    ``stop_before_ac`` reads the records only (``field55`` empty, ``cid``/``atc`` 0).
    Raises :class:`CardReadError`.
    """
    if len(unpredictable) != 4:
        raise ValueError("unpredictable number must be 4 bytes")
    if not 0 <= amount_minor < 10**12:
        raise ValueError(f"amount {amount_minor} out of range")
    link = _Link(transmit)
    try:
        return _read(link, contactless=contactless, amount_minor=amount_minor,
                     currency=currency, unpredictable=unpredictable, when=when,
                     stop_before_ac=stop_before_ac, supported=supported_aids, term=terminal)
    except TlvError as e:
        log.debug("bad TLV in %s: %s", link.step, e)
        raise CardReadError(f"unreadable: bad data in {link.step}") from None


def read_card(transmit: Transmit, *, contactless: bool, amount_minor: int,
              currency: str = "156", unpredictable: bytes, when: date,
              stop_before_ac: bool = False, supported_aids: Sequence[str] = SUPPORTED_AIDS,
              terminal: TerminalData = TerminalData()) -> CardRead:
    """:func:`begin` up to the first GENERATE AC: what the terminal read."""
    return begin(transmit, contactless=contactless, amount_minor=amount_minor,
                 currency=currency, unpredictable=unpredictable, when=when,
                 stop_before_ac=stop_before_ac, supported_aids=supported_aids,
                 terminal=terminal).read


def _supports(aid: str, supported: Sequence[str]) -> bool:
    return any(aid.startswith(s.upper()) for s in supported)


def _read(link: _Link, *, contactless: bool, amount_minor: int, currency: str,
          unpredictable: bytes, when: date, stop_before_ac: bool, supported: Sequence[str],
          term: TerminalData) -> ChipTransaction:
    entries = _directory(link, contactless, supported)
    offered = tuple(dict.fromkeys(e.aid for e in entries))
    candidates = sorted((e for e in entries if _supports(e.aid, supported)),
                        key=lambda e: (e.priority or 16, e.order))
    fci: dict[int, bytes] | None = None
    chosen = None
    last_sw = 0x6A82
    for e in candidates:
        data, last_sw = _select(link, bytes.fromhex(e.aid))
        if last_sw == 0x9000:
            fci, chosen = tlv.flatten(tlv.parse(data)), e
            break
    if fci is None or chosen is None:
        raise CardReadError("application blocked" if last_sw == 0x6283
                            else "no supported application")
    aid = fci.get(0x84, bytes.fromhex(chosen.aid)).hex().upper()
    label = _text(fci.get(0x50, b"")) or chosen.label
    tvr = bytearray(5)
    tvr[TVR_ODA_NOT_PERFORMED[0]] |= TVR_ODA_NOT_PERFORMED[1]  # an online-only kernel: no ODA
    values = _terminal_values(term, amount_minor=amount_minor, currency=currency,
                              unpredictable=unpredictable, when=when, tvr=bytes(tvr))
    pdol = fci.get(0x9F38)
    aip, afl = _gpo(link, pdol, values)
    rec, record_tags, bodies = _read_records(link, afl)
    for tag in (0x5A, 0x5F24, 0x57) + (() if stop_before_ac else (0x8C,)):
        if tag not in rec:
            raise CardReadError(f"record missing {tag:X}")
    pan = _digits(rec[0x5A])
    t2 = rec[0x57].hex().upper().rstrip("F")
    t2_pan, sep, t2_rest = t2.partition("D")
    if not sep or t2_pan != pan or not t2_rest.isdigit():
        raise CardReadError("track 2 does not match PAN")
    expiry = rec[0x5F24].hex()[:4]
    exp_date, eff_date = _yymmdd(rec[0x5F24]), _yymmdd(rec.get(0x5F25))
    if exp_date is None:
        raise CardReadError("unreadable: bad expiry date")
    today = when.date() if isinstance(when, datetime) else when
    if exp_date < today:
        tvr[TVR_EXPIRED[0]] |= TVR_EXPIRED[1]
    if eff_date and eff_date > today:
        tvr[TVR_NOT_EFFECTIVE[0]] |= TVR_NOT_EFFECTIVE[1]
    seq = rec[0x5F34].hex()[:2] if 0x5F34 in rec else ""
    prio = fci.get(0x87, b"")[:1]
    base = CardRead(aid=aid, pan=pan, expiry=expiry, track2=f"{pan}={t2_rest}",
                    pan_sequence=seq, app_label=label, field55=b"", cid=0, atc=0, aids=offered,
                    interface="contactless" if contactless else "contact",
                    priority=prio[0] & 0x0F if prio else 0,
                    language=_text(fci.get(0x5F2D, b"")),
                    preferred_name=_text(fci.get(0x9F12, b"")), aip=aip, afl=afl, pdol=pdol,
                    cdol1=rec.get(0x8C, b""), cdol2=rec.get(0x8D, b""),
                    record_tags=MappingProxyType(record_tags),
                    record_bodies=MappingProxyType(bodies))
    values[0x95] = bytes(tvr)
    if stop_before_ac:
        return ChipTransaction(link, base, values=values, aip=aip, cdol2=b"",
                               contactless=contactless)
    ac, sent = _generate_ac(link, ARQC, rec[0x8C], values)
    values.update(sent)  # the cryptogram covers the values as the CDOL carried them
    all_values = {**values, **ac, 0x82: aip, 0x84: bytes.fromhex(aid),
                  0x9F09: bytes.fromhex(APP_VERSION.get(aid[:10], "0001"))}
    f55 = tlv.encode_many((t, all_values[t]) for t in FIELD55_TAGS if t in all_values)
    cid, atc = ac[0x9F27][0], int.from_bytes(ac[0x9F36], "big")
    log.debug("read %s aid=%s cid=%02X atc=%d", mask_pan(pan), aid, cid, atc)
    read = replace(base, field55=f55, cid=cid, atc=atc)
    return ChipTransaction(link, read, values=values, aip=aip, cdol2=rec.get(0x8D, b""),
                           contactless=contactless)
