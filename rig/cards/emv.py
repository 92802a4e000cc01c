"""An emulated EMV chip: an APDU responder for a personalised card (:mod:`rig.cards.image`).

The card answers on the interface it was powered in (:meth:`EmvCard.power_up`): contact
(PSE ``1PAY.SYS.DDF01``) or contactless (PPSE ``2PAY.SYS.DDF01``), each with its own AIP, AFL,
PDOL, CDOL1 / CDOL2 and records. A card that has no chip, or no antenna, answers nothing in
that reader or field (:meth:`EmvCard.atr` is None and every command gets ``b""``), as does a
mute chip. Unpowered, a card picks the interface from the directory a reader selects.

Commands: SELECT (by name, P2 00 / 02), READ RECORD, GET PROCESSING OPTIONS (the exact PDOL
data, or ``83 00`` when the card has no PDOL; the ATC counts here, as EMV cards count it),
GENERATE AC (first over CDOL1: ARQC or AAC; second over CDOL2: TC or AAC, after the issuer's
answer), EXTERNAL AUTHENTICATE (issuer authentication data, when the AIP says the card does
it) and GET DATA (ATC, last online ATC, PIN try counter). Status words as a card gives them:
``67 00`` wrong length, ``69 85`` out of sequence, ``6A 81`` a function this card does not
have (EXTERNAL AUTHENTICATE without issuer authentication, a CDA signature), ``6A 80`` /
``6A 82`` / ``6A 83`` / ``6A 86`` / ``6A 88``, ``63 00`` issuer authentication failed,
``6D 00`` / ``6E 00``. Any byte string gets data + SW1 SW2: the card never raises.

The application cryptogram is EMV Book 2's (:mod:`rig.cards.crypto`): the card's master key is
derived from its issuer's master key, the session key from the ATC, the MAC covers the CDOL
data the cryptogram takes plus AIP, ATC and the issuer application data. The host verifies it
and answers with an ARPC that the second GENERATE AC (or EXTERNAL AUTHENTICATE) checks.
"""

from __future__ import annotations

import logging
import threading

from . import crypto, tlv
from .brands import Interface
from .image import CardImage, InterfaceImage, bcd, build_image
from .profiles import CardProfile
from .tlv import TlvError, encode, encode_many

log = logging.getLogger(__name__)

PSE = b"1PAY.SYS.DDF01"
PPSE = b"2PAY.SYS.DDF01"
DIRECTORY_SFI = 1

# status words
SW_OK = b"\x90\x00"
SW_AUTH_FAILED = b"\x63\x00"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_WRONG_DATA = b"\x6a\x80"
SW_FUNCTION = b"\x6a\x81"
SW_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_DATA_NOT_FOUND = b"\x6a\x88"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"

CID_AAC, CID_TC, CID_ARQC = 0x00, 0x40, 0x80
P1_CDA = 0x10
# CVR bits (the byte of 9F10 the brand keeps the AC types in, as VIS / M/Chip / PBOC do):
# bits 8-7 second GENERATE AC (00 AAC, 01 TC, 10 not requested), 6-5 first (00 AAC, 10 ARQC)
CVR_SECOND = {CID_AAC: 0x00, CID_TC: 0x40, None: 0x80}
CVR_FIRST = {CID_AAC: 0x00, CID_ARQC: 0x20}
CVR_ISSUER_AUTH_FAILED = 0x08
PIN_TRY_COUNTER = 3


def _sw(apdu_sw: bytes, data: bytes = b"") -> bytes:
    return data + apdu_sw


class EmvCard:
    """The card side of one emulated chip; thread-safe. ``atc`` counts transactions (GPOs)."""

    def __init__(self, profile: CardProfile, atc: int = 0, *,
                 image: CardImage | None = None) -> None:
        self.profile = profile
        self.image = image if image is not None else build_image(profile)
        self.atc = atc
        self.last_online_atc = 0
        self.interface: Interface | None = None  # where it was powered (None: not yet)
        self.last_cid: int | None = None  # the last cryptogram's type (9F27), for tests / logs
        self._lock = threading.Lock()
        self.reset()

    def __repr__(self) -> str:
        return f"EmvCard({self.profile!r}, atc={self.atc})"

    # ---- power
    def power_up(self, contactless: bool = False) -> bytes | None:
        """The card enters a contact reader (or an NFC field): its answer to reset, or None
        when it has no chip (no antenna) there, or a mute one."""
        with self._lock:
            self.interface = "contactless" if contactless else "contact"
            self._reset()
        return self.atr()

    def atr(self) -> bytes | None:
        """The answer to reset on the current interface (contact until powered otherwise), or
        None: a mute chip, or nothing to answer with there."""
        if self.profile.mute:
            return None
        img = self.image.interface(self.interface or "contact")
        return img.atr if img is not None else None

    def reset(self) -> None:
        """Power cycle / warm reset: forget the selection and the transaction (not the ATC,
        nor the interface the card sits in)."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._inferred: Interface | None = None  # chosen by PSE / PPSE when never powered
        self._selected: bytes | str | None = None  # PSE / PPSE name, or an AID (hex)
        self._gpo_done = False
        self._acs = 0  # GENERATE ACs in this transaction
        self._first: dict[int, bytes] = {}  # CDOL1 values of the first GENERATE AC
        self._arqc: bytes | None = None
        self._issuer_auth: bool | None = None  # EXTERNAL AUTHENTICATE: None not done
        self._issuer_approves = False  # what the verified issuer authentication data said

    @property
    def _iface_name(self) -> Interface | None:
        return self.interface or self._inferred

    def _img(self) -> InterfaceImage | None:
        name = self._iface_name
        if name is None:  # never powered, nothing selected yet: whichever the card has
            return self.image.contact or self.image.contactless
        return self.image.interface(name)

    # ---- APDUs
    def transmit(self, apdu: bytes) -> bytes:
        """One C-APDU in, R-APDU (data + SW1 SW2) out; ``b""`` when nothing can answer (no
        chip here, a mute one). Never raises."""
        try:
            if self.atr() is None:
                return b""
            with self._lock:
                return self._dispatch(bytes(apdu))
        except Exception:  # a responder bug must still answer like a card
            log.exception("card %s: internal error", self.profile.name)
            return b"\x6f\x00"

    def _dispatch(self, apdu: bytes) -> bytes:
        if len(apdu) < 4:
            return SW_WRONG_LENGTH
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if len(body) <= 1:
            data = b""  # case 1, or case 2 (Le only)
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
            (0x00, 0x82): self._external_authenticate,
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
        powered, inferred = self.interface, self._inferred
        self._reset()
        self._inferred = inferred
        im = self.image
        if name in (PSE, PPSE):
            want: Interface = "contact" if name == PSE else "contactless"
            if powered not in (None, want) or im.interface(want) is None:
                return SW_NOT_FOUND  # PSE in the field / PPSE on contacts: not there
            if powered is None:
                self._inferred = want
            self._selected = name
            return _sw(SW_OK, self._fci_pse() if name == PSE else self._fci_ppse())
        if len(name) < 5:
            return SW_NOT_FOUND
        aid = next((a for a in im.aids if bytes.fromhex(a).startswith(name)), None)
        if aid is None or self._img() is None:
            return SW_NOT_FOUND
        self._selected = aid
        return _sw(SW_OK, self._fci_aid(aid))

    def _priority(self, aid: str) -> int:
        return min(15, self.image.priority + self.image.aids.index(aid))

    def _directory_entries(self) -> bytes:
        im = self.image
        out = b""
        for a in im.aids:
            items = [(0x4F, bytes.fromhex(a)), (0x50, im.label.encode("ascii"))]
            if im.preferred_name:
                items.append((0x9F12, im.preferred_name.encode("ascii")))
            items.append((0x87, bytes([self._priority(a)])))
            out += encode(0x61, encode_many(items))
        return out

    def _fci_pse(self) -> bytes:
        a5 = encode_many([(0x88, bytes([DIRECTORY_SFI])),
                          (0x5F2D, self.image.language.encode("ascii"))])
        return encode(0x6F, encode(0x84, PSE) + encode(0xA5, a5))

    def _fci_ppse(self) -> bytes:
        a5 = encode(0xBF0C, self._directory_entries())
        return encode(0x6F, encode(0x84, PPSE) + encode(0xA5, a5))

    def _fci_aid(self, aid: str) -> bytes:
        im, img = self.image, self._img()
        assert img is not None
        items = [(0x50, im.label.encode("ascii")), (0x87, bytes([self._priority(aid)]))]
        if img.pdol is not None:
            items.append((0x9F38, img.pdol))
        items += [(0x5F2D, im.language.encode("ascii")),
                  (0x9F11, bcd(str(im.issuer_code_table), 1))]
        if im.preferred_name:
            items.append((0x9F12, im.preferred_name.encode("ascii")))
        return encode(0x6F, encode(0x84, bytes.fromhex(aid)) + encode(0xA5, encode_many(items)))

    # ---- READ RECORD
    def _read_record(self, p1: int, p2: int, _data: bytes) -> bytes:
        if p2 & 0x07 != 0x04 or p1 == 0:
            return SW_WRONG_P1P2
        sfi = p2 >> 3
        if self._selected is None:
            return SW_CONDITIONS
        if self._selected == PPSE:
            return SW_NOT_FOUND
        if self._selected == PSE:
            if sfi != DIRECTORY_SFI:
                return SW_NOT_FOUND
            return SW_RECORD_NOT_FOUND if p1 != 1 else _sw(SW_OK, encode(
                0x70, self._directory_entries()))
        img = self._img()
        assert img is not None
        if not any(s == sfi for s, _ in img.records):
            return SW_NOT_FOUND
        body = img.records.get((sfi, p1))
        if body is None:
            return SW_RECORD_NOT_FOUND
        return _sw(SW_OK, encode(0x70, body))

    # ---- GET PROCESSING OPTIONS
    def _gpo(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0, 0):
            return SW_WRONG_P1P2
        if not isinstance(self._selected, str) or self._gpo_done:
            return SW_CONDITIONS  # no application selected, or GPO twice
        img = self._img()
        assert img is not None
        try:
            items = tlv.parse(data)
        except TlvError:
            return SW_WRONG_DATA
        if len(items) != 1 or items[0].tag != 0x83:
            return SW_WRONG_DATA
        want = tlv.dol_length(img.pdol) if img.pdol is not None else 0
        if len(items[0].value) != want:
            return SW_WRONG_LENGTH
        if self.atc >= 0xFFFF:
            return SW_CONDITIONS  # the ATC is spent: the application is blocked for good
        self.atc += 1
        self._gpo_done = True
        self._acs = 0
        if img.response_format == 1:
            return _sw(SW_OK, encode(0x80, img.aip + img.afl))
        return _sw(SW_OK, encode(0x77, encode_many([(0x82, img.aip), (0x94, img.afl)])))

    # ---- GENERATE AC
    def _iad(self, first: int, second: int | None, auth_failed: bool) -> bytes:
        im = self.image
        iad = bytearray(im.iad)
        cvr = CVR_SECOND[second] | CVR_FIRST[first] | (CVR_ISSUER_AUTH_FAILED if auth_failed else 0)
        iad[im.cvr_byte] = cvr
        return bytes(iad)

    def _generate_ac(self, p1: int, p2: int, data: bytes) -> bytes:
        if p2 != 0 or p1 & 0x2F:
            return SW_WRONG_P1P2
        requested = p1 & 0xC0
        if requested == 0xC0:
            return SW_WRONG_P1P2  # RFU
        img = self._img()
        if not self._gpo_done or self._acs >= 2 or img is None:
            return SW_CONDITIONS
        if p1 & P1_CDA:
            return SW_FUNCTION  # no CDA: the card signs nothing
        dol = img.cdol1 if self._acs == 0 else img.cdol2
        if len(data) != tlv.dol_length(dol):
            return SW_WRONG_LENGTH
        values = crypto.fit(zip((t for t, _ in tlv.parse_dol(dol)),
                                _split(data, tlv.parse_dol(dol)), strict=True))
        atc = self.atc.to_bytes(2, "big")
        auth_failed = False
        if self._acs == 0:
            # an online-only card: a TC request is answered with an ARQC, an AAC stays an AAC
            cid = CID_AAC if requested == CID_AAC else CID_ARQC
            iad = self._iad(cid, None, False)
            self._first = values
        else:
            if requested == CID_ARQC:
                return SW_CONDITIONS  # no second ARQC
            cid, auth_failed = self._second_decision(requested, values)
            values = {**self._first, **values}
            iad = self._iad(CID_ARQC if self._arqc else CID_AAC, cid, auth_failed)
        try:
            ac_in = crypto.cryptogram_input(values, aip=img.aip, atc=atc, iad=iad)
        except (KeyError, ValueError):
            return SW_CONDITIONS  # cannot happen with a checked image; never a crash
        ac = crypto.cryptogram(self.image.mk, ac_in)
        if self._acs == 0 and cid == CID_ARQC:
            self._arqc = ac
            self.last_online_atc = self.atc
        self._acs = 2 if cid == CID_AAC and self._acs == 0 else self._acs + 1
        self.last_cid = cid
        log.debug("card %s: GENERATE AC cid=%02X atc=%d", self.profile.name, cid, self.atc)
        if img.response_format == 1:
            return _sw(SW_OK, encode(0x80, bytes([cid]) + atc + ac + iad))
        body = encode_many([(0x9F27, bytes([cid])), (0x9F36, atc), (0x9F26, ac), (0x9F10, iad)])
        return _sw(SW_OK, encode(0x77, body))

    def _second_decision(self, requested: int, values: dict[int, bytes]) -> tuple[int, bool]:
        """(CID, issuer authentication failed) of the second GENERATE AC."""
        if self._arqc is None:
            return CID_AAC, False
        method = self.image.arpc_method
        atc = self.atc.to_bytes(2, "big")
        auth = self._issuer_auth
        approves: bool | None = None
        iad91 = values.get(0x91, b"")
        if auth is None and iad91.strip(b"\x00"):  # 91 in CDOL2 (all zeros: none was sent)
            auth = bool(crypto.check_issuer_auth(self.image.mk, atc, self._arqc, iad91,
                                                 method=method))
            if auth:
                approves = crypto.issuer_approves(iad91, method=method)
        elif auth:
            approves = self._issuer_approves
        if requested != CID_TC:
            return CID_AAC, auth is False
        arc_ok = values.get(0x8A, b"") in crypto.APPROVING_ARC
        if auth is False:
            return CID_AAC, True
        if auth is None and self.image.issuer_auth_required:
            return CID_AAC, False
        ok = arc_ok and (approves is None or approves)
        return (CID_TC if ok else CID_AAC), False

    # ---- EXTERNAL AUTHENTICATE
    def _external_authenticate(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0, 0):
            return SW_WRONG_P1P2
        img = self._img()
        if img is None or not img.issuer_auth:
            return SW_FUNCTION  # this card does no issuer authentication
        if self._arqc is None or self._acs != 1 or self._issuer_auth is not None:
            return SW_CONDITIONS  # only between an ARQC and the second GENERATE AC, once
        if not 8 <= len(data) <= 16:
            return SW_WRONG_LENGTH
        method = self.image.arpc_method
        atc = self.atc.to_bytes(2, "big")
        ok = bool(crypto.check_issuer_auth(self.image.mk, atc, self._arqc, data, method=method))
        self._issuer_auth = ok
        self._issuer_approves = ok and crypto.issuer_approves(data, method=method)
        return SW_OK if ok else SW_AUTH_FAILED

    # ---- GET DATA
    def _get_data(self, p1: int, p2: int, _data: bytes) -> bytes:
        tag = (p1 << 8) | p2
        if tag == 0x9F36:
            return _sw(SW_OK, encode(0x9F36, self.atc.to_bytes(2, "big")))
        if tag == 0x9F13:
            return _sw(SW_OK, encode(0x9F13, self.last_online_atc.to_bytes(2, "big")))
        if tag == 0x9F17:
            return _sw(SW_OK, encode(0x9F17, bytes([PIN_TRY_COUNTER])))
        return SW_DATA_NOT_FOUND


def _split(data: bytes, entries: list[tuple[int, int]]) -> list[bytes]:
    out, i = [], 0
    for _, n in entries:
        out.append(data[i:i + n])
        i += n
    return out
