"""An emulated EMV chip: an APDU responder built from a :class:`CardProfile`.

Answers what a POS kernel sends on the contact (PSE ``1PAY.SYS.DDF01``) and contactless (PPSE
``2PAY.SYS.DDF01``) paths: SELECT, READ RECORD, GET PROCESSING OPTIONS, GENERATE AC and GET
DATA (ATC), with ISO 7816-4 status words for everything else. It never raises: any byte string
gets data + SW1 SW2 (a mute card answers nothing: ``b""``).

The application cryptogram is a deterministic **test** value (first 8 bytes of
SHA-256(PAN | ATC | CDOL data)); it is not an issuer key scheme and proves nothing.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import threading

from . import tlv
from .profiles import CardProfile
from .tlv import TlvError, encode, encode_many

log = logging.getLogger(__name__)

PSE = b"1PAY.SYS.DDF01"
PPSE = b"2PAY.SYS.DDF01"
DIRECTORY_SFI = 1

# status words
SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_WRONG_DATA = b"\x6a\x80"
SW_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_DATA_NOT_FOUND = b"\x6a\x88"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"

PDOL = bytes.fromhex("9F0206" "5F2A02" "9F3704")  # amount, currency, unpredictable number
CDOL1 = bytes.fromhex("9F0206 9F0306 9F1A02 9505 5F2A02 9A03 9C01 9F3704 9F3501 9F3403")
CDOL2 = bytes.fromhex("8A02 9505 9F3704")  # after online: ARC, TVR, UN
AIP = bytes.fromhex("1C00")  # cardholder verification, terminal risk mgmt, issuer auth
AFL = bytes.fromhex("08010201" "10010100")  # SFI 1 records 1-2, SFI 2 record 1
CVM_LIST = bytes(8) + bytes.fromhex("4203" "1E03" "1F03")  # online PIN, signature, no CVM

APP_VERSION = {"unionpay": "0030", "visa": "008C", "mastercard": "0002"}
DEFAULT_LABEL = {"unionpay": "UnionPay", "visa": "VISA", "mastercard": "Mastercard"}

CID_AAC, CID_TC, CID_ARQC = 0x00, 0x40, 0x80


def bcd(digits: str, length: int | None = None) -> bytes:
    """Numeric digits as packed BCD, left-padded with 0 to ``length`` bytes."""
    if length is not None:
        digits = digits.zfill(length * 2)
    if len(digits) % 2:
        digits = "0" + digits
    return bytes.fromhex(digits)


def cn(digits: str) -> bytes:
    """Compressed numeric (PAN, track 2): left aligned, padded with F."""
    return bytes.fromhex(digits + "F" * (len(digits) % 2))


def _sw(apdu_sw: bytes, data: bytes = b"") -> bytes:
    return data + apdu_sw


class EmvCard:
    """The card side of one emulated chip; thread-safe. ``atc`` counts GENERATE ACs."""

    def __init__(self, profile: CardProfile, atc: int = 0) -> None:
        self.profile = profile
        self.atc = atc
        self._lock = threading.Lock()
        self.reset()

    def __repr__(self) -> str:
        return f"EmvCard({self.profile!r}, atc={self.atc})"

    # ---- power
    def atr(self) -> bytes | None:
        """The answer to reset, or None for a mute chip."""
        return None if self.profile.mute else bytes.fromhex(self.profile.atr)

    def reset(self) -> None:
        """Power cycle / warm reset: forget the selection and the transaction (not the ATC)."""
        self._selected: str | bytes | None = None  # PSE / PPSE name, or an AID (hex)
        self._gpo_done = False
        self._acs = 0  # GENERATE ACs in this transaction

    # ---- APDUs
    def transmit(self, apdu: bytes) -> bytes:
        """One C-APDU in, R-APDU (data + SW1 SW2) out; never raises."""
        if self.profile.mute:
            return b""
        with self._lock:
            try:
                return self._dispatch(bytes(apdu))
            except Exception:  # a responder bug must still answer like a card
                log.exception("card %s: internal error", self.profile.name)
                return b"\x6f\x00"

    def _dispatch(self, apdu: bytes) -> bytes:
        if len(apdu) < 4:
            return SW_WRONG_LENGTH
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if len(body) == 0:
            data = b""
        elif len(body) == 1:
            data = b""  # case 2: Le only
        else:
            lc = body[0]
            if lc == 0 or len(body) not in (1 + lc, 2 + lc):
                return SW_WRONG_LENGTH  # extended lengths are not supported either
            data = body[1 : 1 + lc]
        handlers = {
            (0x00, 0xA4): self._select,
            (0x00, 0xB2): self._read_record,
            (0x80, 0xA8): self._gpo,
            (0x80, 0xAE): self._generate_ac,
            (0x80, 0xCA): self._get_data,
        }
        handler = handlers.get((cla, ins))
        if handler is None:
            if cla not in (0x00, 0x80):
                return SW_CLA
            known = {i for _, i in handlers}
            return SW_CLA if ins in known else SW_INS
        return handler(p1, p2, data)

    # ---- SELECT
    def _select(self, p1: int, p2: int, name: bytes) -> bytes:
        if p1 != 0x04:
            return SW_WRONG_P1P2
        if p2 == 0x02:
            return SW_NOT_FOUND  # next occurrence: we have one of each
        if p2 != 0x00:
            return SW_WRONG_P1P2
        if not name:
            return SW_WRONG_LENGTH
        self.reset()
        p = self.profile
        if name == PSE and p.aids and "chip" in p.entry_modes:
            self._selected = PSE
            return _sw(SW_OK, self._fci_pse())
        if name == PPSE and p.aids and "tap" in p.entry_modes:
            self._selected = PPSE
            return _sw(SW_OK, self._fci_ppse())
        aid = next((a for a in p.aids if len(name) >= 5 and bytes.fromhex(a).startswith(name)), None)
        if aid is None:
            return SW_NOT_FOUND
        self._selected = aid
        return _sw(SW_OK, self._fci_aid(aid))

    def _label(self) -> bytes:
        p = self.profile
        return (p.app_label or DEFAULT_LABEL[p.scheme]).encode("ascii", "replace")[:16]

    def _directory_entries(self) -> bytes:
        return b"".join(
            encode(0x61, encode_many([(0x4F, bytes.fromhex(a)), (0x50, self._label()),
                                      (0x87, bytes([prio]))]))
            for prio, a in enumerate(self.profile.aids, start=1)
        )

    def _fci_pse(self) -> bytes:
        a5 = encode_many([(0x88, bytes([DIRECTORY_SFI])), (0x5F2D, b"zhen")])
        return encode(0x6F, encode(0x84, PSE) + encode(0xA5, a5))

    def _fci_ppse(self) -> bytes:
        a5 = encode(0xBF0C, self._directory_entries())
        return encode(0x6F, encode(0x84, PPSE) + encode(0xA5, a5))

    def _fci_aid(self, aid: str) -> bytes:
        prio = self.profile.aids.index(aid) + 1
        a5 = encode_many([(0x50, self._label()), (0x87, bytes([prio])), (0x9F38, PDOL),
                          (0x5F2D, b"zhen"), (0x9F11, b"\x01")])
        return encode(0x6F, encode(0x84, bytes.fromhex(aid)) + encode(0xA5, a5))

    # ---- READ RECORD
    def _read_record(self, p1: int, p2: int, _data: bytes) -> bytes:
        if p2 & 0x07 != 0x04 or p1 == 0:
            return SW_WRONG_P1P2
        sfi = p2 >> 3
        if self._selected is None:
            return SW_CONDITIONS
        if self._selected == PPSE:
            return SW_NOT_FOUND
        files = self._directory() if self._selected == PSE else self._records()
        if sfi not in files:
            return SW_NOT_FOUND
        records = files[sfi]
        if p1 > len(records):
            return SW_RECORD_NOT_FOUND
        return _sw(SW_OK, encode(0x70, records[p1 - 1]))

    def _directory(self) -> dict[int, list[bytes]]:
        return {DIRECTORY_SFI: [self._directory_entries()]}

    def _expiry_yymmdd(self) -> bytes:
        yy, mm = int(self.profile.expiry[:2]), int(self.profile.expiry[2:])
        last = calendar.monthrange(2000 + yy, mm)[1] if 1 <= mm <= 12 else 31
        return bcd(f"{self.profile.expiry}{last:02d}")

    def _records(self) -> dict[int, list[bytes]]:
        p = self.profile
        track2 = cn(p.track2.replace("=", "D"))
        name = p.cardholder.encode("ascii", "replace")
        rec_1_1 = encode_many([(0x57, track2), (0x5F20, name), (0x9F1F, b"000000")])
        rec_1_2 = encode_many([
            (0x5A, cn(p.pan)), (0x5F24, self._expiry_yymmdd()), (0x5F25, bcd("200101")),
            (0x5F28, bcd("156", 2)), (0x5F34, bcd(p.pan_sequence)),
            (0x9F07, b"\xff\x00"), (0x8E, CVM_LIST), (0x8C, CDOL1), (0x8D, CDOL2),
            (0x9F0D, bytes.fromhex("D860A48800")), (0x9F0E, bytes(5)),
            (0x9F0F, bytes.fromhex("D868BC9800")),
        ])
        rec_2_1 = encode_many([
            (0x9F08, bytes.fromhex(APP_VERSION[p.scheme])), (0x9F42, bcd(p.currency, 2)),
            (0x5F30, bcd(p.service_code, 2)), (0x9F44, b"\x02"),
        ])
        return {1: [rec_1_1, rec_1_2], 2: [rec_2_1]}

    # ---- GET PROCESSING OPTIONS
    def _gpo(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0, 0):
            return SW_WRONG_P1P2
        if not isinstance(self._selected, str):
            return SW_CONDITIONS  # no application selected
        if self._gpo_done:
            return SW_CONDITIONS
        try:
            items = tlv.parse(data)
        except TlvError:
            return SW_WRONG_DATA
        if len(items) != 1 or items[0].tag != 0x83:
            return SW_WRONG_DATA
        if len(items[0].value) != tlv.dol_length(PDOL):
            return SW_WRONG_LENGTH
        self._gpo_done = True
        self._acs = 0
        return _sw(SW_OK, encode(0x77, encode_many([(0x82, AIP), (0x94, AFL)])))

    # ---- GENERATE AC
    def _generate_ac(self, p1: int, p2: int, data: bytes) -> bytes:
        if p2 != 0 or p1 & 0x2F:
            return SW_WRONG_P1P2
        if not self._gpo_done or self._acs >= 2:
            return SW_CONDITIONS
        dol = CDOL1 if self._acs == 0 else CDOL2
        if len(data) != tlv.dol_length(dol):
            return SW_WRONG_LENGTH
        requested = p1 & 0xC0
        if requested == 0xC0:
            return SW_WRONG_P1P2  # RFU
        if self._acs == 0:
            # online-only card: a TC request is answered with an ARQC, an AAC stays an AAC
            cid = CID_AAC if requested == CID_AAC else CID_ARQC
        else:
            arc = data[:2]
            cid = CID_TC if requested == CID_TC and arc == b"00" else CID_AAC
        self._acs += 1
        self.atc = (self.atc + 1) & 0xFFFF
        atc = self.atc.to_bytes(2, "big")
        ac = hashlib.sha256(self.profile.pan.encode() + atc + data).digest()[:8]
        cvr_ac = {CID_AAC: 0x80, CID_TC: 0x90, CID_ARQC: 0xA0}[cid]
        iad = bytes([0x07, 0x01, 0x01, 0x03, cvr_ac, 0x00, 0x00])  # Visa-style IAD, test CVR
        body = encode_many([(0x9F27, bytes([cid])), (0x9F36, atc), (0x9F26, ac), (0x9F10, iad)])
        log.debug("card %s: GENERATE AC cid=%02X atc=%d", self.profile.name, cid, self.atc)
        return _sw(SW_OK, encode(0x77, body))

    # ---- GET DATA
    def _get_data(self, p1: int, p2: int, _data: bytes) -> bytes:
        tag = (p1 << 8) | p2
        if tag == 0x9F36:
            return _sw(SW_OK, encode(0x9F36, self.atc.to_bytes(2, "big")))
        if tag == 0x9F17:
            return _sw(SW_OK, encode(0x9F17, b"\x03"))  # PIN try counter
        return SW_DATA_NOT_FOUND
