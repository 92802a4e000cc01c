"""A card as personalised: a profile's EMV data objects, brand defaults filled in, checked.

:func:`build_image` turns a :class:`~rig.cards.profiles.CardProfile` into a :class:`CardImage`:
per interface (contact, contactless) the AIP, AFL, PDOL (or none), CDOL1 / CDOL2 and the
records the AFL points to, plus the FCI data (label, priority, preferred name, language) and the
card's keys. Whatever is inconsistent raises :class:`ImageError` with the profile path of the
culprit (``emv.contact.afl``), which :func:`~rig.cards.profiles.load_cards` turns into
``file:line``: an AFL entry pointing at a record the card lacks, a record naming a data object
the card has no value for, a DOL asking for a tag no terminal can supply, a CDOL1 without the
terminal data the cryptogram covers, an AIP claiming what the card cannot do.

Values never reach an error text (they may be a PAN or track 2): errors name tags and paths.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from . import crypto, tags, tlv
from .brands import BRANDS, CONTACTLESS_ATR, INTERFACES, Brand, Interface
from .tlv import TlvError


class CardFields(Protocol):
    """What :func:`build_image` reads of a card profile (:class:`rig.cards.profiles.
    CardProfile` has these): the image depends on this shape, not on the profiles module,
    which calls :func:`build_image` to check every profile it loads."""

    name: str
    scheme: str
    pan: str
    pan_sequence: str
    expiry: str
    service_code: str
    cardholder: str
    currency: str
    aids: Sequence[str]
    entry_modes: Sequence[str]
    app_label: str
    atr: str
    emv: Any

    @property
    def track2(self) -> str: ...

# tags a profile sets through its own fields, never through emv.data
DERIVED = {0x57: "pan / expiry / service_code", 0x5A: "pan", 0x5F24: "expiry",
           0x5F34: "pan_sequence", 0x5F30: "service_code", 0x9F42: "currency",
           0x5F20: "cardholder", 0x8C: "emv.<interface>.cdol1", 0x8D: "emv.<interface>.cdol2",
           0x82: "emv.<interface>.aip", 0x94: "emv.<interface>.afl",
           0x9F38: "emv.<interface>.pdol", 0x50: "app_label", 0x87: "emv.priority",
           0x5F2D: "emv.language", 0x9F12: "emv.preferred_name", 0x9F10: "the brand's IAD",
           0x9F36: "the card (ATC)", 0x9F26: "the card (cryptogram)", 0x9F27: "the card (CID)"}
MANDATORY = (0x5A, 0x5F24, 0x8C, 0x8D, 0x57)  # Book 3 §7.2 (+ 57: the rig's terminal sends it)
AIP_ODA = 0x40 | 0x20 | 0x01  # SDA, DDA, CDA
AIP_CVM = 0x10
AIP_ISSUER_AUTH = 0x04


class ImageError(ValueError):
    """A profile that would build an inconsistent card; ``loc`` is the profile path."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc, self.msg = loc, msg


@dataclass(frozen=True)
class InterfaceImage:
    """What the card shows on one interface."""

    name: Interface
    aip: bytes
    afl: bytes
    pdol: bytes | None
    cdol1: bytes
    cdol2: bytes
    records: MappingProxyType[tuple[int, int], bytes] = field(repr=False)  # record contents
    record_tags: MappingProxyType[tuple[int, int], tuple[int, ...]] = field(repr=False)
    atr: bytes = b""
    response_format: int = 2  # GPO / GENERATE AC: 1 = template 80, 2 = template 77

    @property
    def issuer_auth(self) -> bool:
        """AIP says the card does issuer authentication (EXTERNAL AUTHENTICATE)."""
        return bool(self.aip[0] & AIP_ISSUER_AUTH)

    def afl_records(self) -> list[tuple[int, int]]:
        out = []
        for i in range(0, len(self.afl), 4):
            sfi, first, last = self.afl[i] >> 3, self.afl[i + 1], self.afl[i + 2]
            out += [(sfi, r) for r in range(first, last + 1)]
        return out

    def describe(self) -> dict[str, Any]:
        """The data objects as hex, for a report (no record values: they hold the PAN)."""
        return {
            "aip": self.aip.hex().upper(), "afl": self.afl.hex().upper(),
            "pdol": self.pdol.hex().upper() if self.pdol is not None else None,
            "cdol1": self.cdol1.hex().upper(), "cdol2": self.cdol2.hex().upper(),
            "response_format": self.response_format,
            "records": {f"{s}.{r}": [tlv.tag_hex(t) for t in self.record_tags[(s, r)]]
                        for s, r in sorted(self.record_tags)},
        }


@dataclass(frozen=True)
class CardImage:
    """A personalised card: FCI data, per-interface data objects, keys."""

    name: str
    scheme: str
    aids: tuple[str, ...]
    label: str
    priority: int
    preferred_name: str | None
    language: str
    issuer_code_table: int
    contact: InterfaceImage | None
    contactless: InterfaceImage | None
    iad: bytes
    cvr_byte: int
    arpc_method: int
    issuer_auth_required: bool
    mk: bytes = field(repr=False)  # ICC master key (AC)

    def interface(self, name: Interface) -> InterfaceImage | None:
        return self.contact if name == "contact" else self.contactless

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scheme": self.scheme, "aids": list(self.aids), "label": self.label,
            "priority": self.priority, "preferred_name": self.preferred_name,
            "language": self.language, "arpc_method": self.arpc_method,
            "iad": self.iad.hex().upper(), "mk_kcv": crypto.kcv(self.mk).hex().upper()}
        for i in INTERFACES:
            img = self.interface(i)
            out[i] = img.describe() if img is not None else None
        return out


def _hex(loc: tuple[str | int, ...], text: str, what: str) -> bytes:
    s = "".join(text.split())
    try:
        if len(s) % 2:
            raise ValueError
        return bytes.fromhex(s)
    except ValueError:
        raise ImageError(loc, f"{what} is not hex bytes") from None


def _tag(loc: tuple[str | int, ...], text: str) -> int:
    raw = _hex(loc, str(text), f"tag {text!r}")
    try:
        items_tag = int.from_bytes(raw, "big")
        if not raw or tlv.tag_bytes(items_tag) != raw:
            raise TlvError("bad")
    except TlvError:
        raise ImageError(loc, f"{text!r} is not a BER-TLV tag") from None
    return items_tag


def bcd(digits: str, length: int | None = None) -> bytes:
    if length is not None:
        digits = digits.zfill(length * 2)
    if len(digits) % 2:
        digits = "0" + digits
    return bytes.fromhex(digits)


def cn(digits: str) -> bytes:
    """Compressed numeric (PAN, track 2): left aligned, padded with F."""
    return bytes.fromhex(digits + "F" * (len(digits) % 2))


def expiry_yymmdd(expiry: str) -> bytes:
    yy, mm = int(expiry[:2]), int(expiry[2:])
    last = calendar.monthrange(2000 + yy, mm)[1] if 1 <= mm <= 12 else 31
    return bcd(f"{expiry}{last:02d}")


def _card_data(p: CardFields, brand: Brand) -> dict[int, bytes]:
    """The card's own data objects (those records may hold), before ``emv.data``."""
    return {
        0x57: cn(p.track2.replace("=", "D")), 0x5A: cn(p.pan),
        0x5F20: p.cardholder.encode("ascii", "replace"), 0x9F1F: b"000000",
        0x5F24: expiry_yymmdd(p.expiry), 0x5F25: bcd("200101"),
        0x5F28: bcd(brand.issuer_country, 2), 0x5F30: bcd(p.service_code, 2),
        0x5F34: bcd(p.pan_sequence), 0x9F07: b"\xff\x00",
        0x8E: bytes.fromhex("".join(brand.cvm_list.split())),
        0x9F0D: bytes.fromhex(brand.iac_default), 0x9F0E: bytes.fromhex(brand.iac_denial),
        0x9F0F: bytes.fromhex(brand.iac_online), 0x9F08: bytes.fromhex(brand.app_version),
        0x9F42: bcd(p.currency, 2), 0x9F44: b"\x02",
    }


def _dol(loc: tuple[str | int, ...], text: str, kind: str) -> bytes:
    raw = _hex(loc, text, kind)
    try:
        entries = tlv.parse_dol(raw)
    except TlvError as e:
        raise ImageError(loc, f"{kind} is not a data object list ({e})") from None
    seen: set[int] = set()
    for tag, n in entries:
        t = tags.TAGS.get(tag)
        if t is None:
            raise ImageError(loc, f"{kind} asks for {tlv.tag_hex(tag)}, a data object no "
                                  "terminal knows (not in EMV Book 3 nor the brands' books)")
        if not tags.dol_fillable(tag):
            raise ImageError(loc, f"{kind} asks for {tlv.tag_hex(tag)} ({t.name}), which the "
                                  "card holds itself: a terminal cannot supply it")
        if t.source == "issuer" and kind != "CDOL2":
            raise ImageError(loc, f"{kind} asks for {tlv.tag_hex(tag)} ({t.name}), which only "
                                  "exists after the issuer answered (CDOL2 only)")
        if n == 0:
            raise ImageError(loc, f"{kind} asks for {tlv.tag_hex(tag)} with length 0")
        if tag in seen:
            raise ImageError(loc, f"{kind} asks for {tlv.tag_hex(tag)} twice")
        seen.add(tag)
    if len(raw) and 2 + tlv.dol_length(raw) > 255:
        raise ImageError(loc, f"{kind} data does not fit one command")
    return raw


def _afl(loc: tuple[str | int, ...], text: str) -> bytes:
    raw = _hex(loc, text, "AFL")
    if not raw or len(raw) % 4:
        raise ImageError(loc, "AFL must be entries of 4 bytes (SFI<<3, first, last, offline)")
    for i in range(0, len(raw), 4):
        b = raw[i:i + 4]
        sfi = b[0] >> 3
        if b[0] & 0x07 or not 1 <= sfi <= 30:
            raise ImageError(loc, f"AFL entry {i // 4 + 1} ({b.hex().upper()}): SFI byte must "
                                  "be SFI<<3 with SFI 1-30")
        if b[1] == 0 or b[2] < b[1]:
            raise ImageError(loc, f"AFL entry {i // 4 + 1} ({b.hex().upper()}): records "
                                  f"{b[1]}-{b[2]} are not a range starting at 1 or more")
        if b[3] > b[2] - b[1] + 1:
            raise ImageError(loc, f"AFL entry {i // 4 + 1} ({b.hex().upper()}): {b[3]} records "
                                  "for offline data authentication, more than it lists")
        if b[3]:
            raise ImageError(loc, f"AFL entry {i // 4 + 1} ({b.hex().upper()}): records for "
                                  "offline data authentication, which the rig's cards do not do")
    return raw


def _records(loc: tuple[str | int, ...], spec: dict[str, Any],
             data: dict[int, bytes]) -> tuple[dict[tuple[int, int], bytes],
                                              dict[tuple[int, int], tuple[int, ...]]]:
    contents: dict[tuple[int, int], bytes] = {}
    tag_lists: dict[tuple[int, int], tuple[int, ...]] = {}
    for key, tag_texts in spec.items():
        here = (*loc, key)
        sfi_s, dot, rec_s = str(key).partition(".")
        if not dot or not sfi_s.isdigit() or not rec_s.isdigit():
            raise ImageError(here, "a record is named SFI.record, e.g. \"2.1\"")
        sfi, rec = int(sfi_s), int(rec_s)
        if not 1 <= sfi <= 30 or not 1 <= rec <= 255:
            raise ImageError(here, "SFI must be 1-30 and the record 1-255")
        tag_ids = []
        for i, text in enumerate(tag_texts):
            t = _tag((*here, i), text)
            if t not in data:
                known = tags.TAGS.get(t)
                what = f" ({known.name})" if known else ""
                raise ImageError((*here, i), f"{tlv.tag_hex(t)}{what}: the card has no value "
                                             "for it (set it in emv.data)")
            if t in tag_ids:
                raise ImageError((*here, i), f"{tlv.tag_hex(t)} twice in one record")
            tag_ids.append(t)
        body = tlv.encode_many((t, data[t]) for t in tag_ids)
        if len(tlv.encode(0x70, body)) > 254:
            raise ImageError(here, "record longer than a READ RECORD response can carry")
        contents[(sfi, rec)] = body
        tag_lists[(sfi, rec)] = tuple(tag_ids)
    return contents, tag_lists


def _interface(p: CardFields, brand: Brand, name: Interface,
               common: dict[int, bytes]) -> InterfaceImage:
    d = brand.interface(name)
    spec = p.emv.interface(name) if p.emv is not None else None
    given = spec.model_fields_set if spec is not None else set()
    loc: tuple[str | int, ...] = ("emv", name)

    def pick(key: str) -> tuple[Any, tuple[str | int, ...]]:
        if key in given:
            return getattr(spec, key), (*loc, key)
        return getattr(d, key), (*loc, key)

    aip_text, aip_loc = pick("aip")
    aip = _hex(aip_loc, aip_text, "AIP")
    if len(aip) != 2:
        raise ImageError(aip_loc, "AIP is 2 bytes")
    if aip[0] & AIP_ODA:
        raise ImageError(aip_loc, "AIP claims offline data authentication (SDA / DDA / CDA); "
                                  "the rig's cards carry no certificates to do it")
    afl_text, afl_loc = pick("afl")
    afl = _afl(afl_loc, afl_text)
    pdol_text, pdol_loc = pick("pdol")
    pdol = None if pdol_text is None or str(pdol_text).strip().lower() in ("", "none") \
        else _dol(pdol_loc, pdol_text, "PDOL")
    cdol1_text, cdol1_loc = pick("cdol1")
    cdol1 = _dol(cdol1_loc, cdol1_text, "CDOL1")
    asked = dict(tlv.parse_dol(cdol1))
    for tag, n in tags.CRYPTOGRAM_TERMINAL_DATA:
        if asked.get(tag) != n:
            got = "no" if tag not in asked else f"{asked[tag]} bytes of"
            raise ImageError(cdol1_loc, f"CDOL1 asks for {got} {tlv.tag_hex(tag)} "
                                        f"({tags.name(tag)}); the cryptogram covers it "
                                        f"({n} bytes)")
    cdol2_text, cdol2_loc = pick("cdol2")
    cdol2 = _dol(cdol2_loc, cdol2_text, "CDOL2")
    if 0x8A not in dict(tlv.parse_dol(cdol2)):
        raise ImageError(cdol2_loc, "CDOL2 must ask for 8A (the authorisation response code "
                                    "the card decides on)")
    data = {**common, 0x8C: cdol1, 0x8D: cdol2}
    rec_spec, rec_loc = pick("records")
    rec_spec = dict(rec_spec)
    contents, tag_lists = _records(rec_loc, rec_spec, data)
    reachable: set[int] = set()
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        for r in range(first, last + 1):
            if (sfi, r) not in contents:
                raise ImageError(afl_loc, f"AFL points at SFI {sfi} record {r}, which is not "
                                          f"in {'.'.join(map(str, rec_loc))}")
            reachable.update(tag_lists[(sfi, r)])
    for t in MANDATORY:
        if t not in reachable:
            raise ImageError(afl_loc, f"no record the AFL points at holds {tlv.tag_hex(t)} "
                                      f"({tags.name(t)}), which the card must provide")
    if aip[0] & AIP_CVM and name == "contact" and 0x8E not in reachable:
        raise ImageError(aip_loc, "AIP says cardholder verification is supported, but no "
                                  "record the AFL points at holds the CVM list (8E)")
    if not aip[0] & AIP_ISSUER_AUTH and name == "contact" and \
            0x91 not in dict(tlv.parse_dol(cdol2)) and p.emv is not None \
            and p.emv.issuer_auth_required:
        raise ImageError(("emv", "issuer_auth_required"), "the card requires issuer "
                         "authentication but neither its AIP (EXTERNAL AUTHENTICATE) nor its "
                         "CDOL2 (91) lets the issuer's answer reach it")
    atr = bytes.fromhex(p.atr) if name == "contact" else bytes.fromhex(CONTACTLESS_ATR)
    fmt = brand.contact_format if name == "contact" else 2
    return InterfaceImage(name, aip, afl, pdol, cdol1, cdol2, MappingProxyType(contents),
                          MappingProxyType(tag_lists), atr, fmt)


def _text(loc: tuple[str | int, ...], text: str, limit: int, what: str) -> str:
    if not text.isascii() or not text.isprintable():
        raise ImageError(loc, f"{what} must be printable ASCII")
    if not 1 <= len(text) <= limit:
        raise ImageError(loc, f"{what} must be 1-{limit} characters")
    return text


def build_image(p: CardFields) -> CardImage:
    """The card ``p`` describes; raises :class:`ImageError` when it would be inconsistent."""
    brand = BRANDS[p.scheme]
    e = p.emv
    has = {"contact": bool(p.aids) and "chip" in p.entry_modes,
           "contactless": bool(p.aids) and "tap" in p.entry_modes}
    if e is not None:
        for i in INTERFACES:
            if i in e.model_fields_set and not has[i]:
                why = "no AIDs: the card has no chip" if not p.aids else \
                    f"entry_modes has no {'chip' if i == 'contact' else 'tap'}"
                raise ImageError(("emv", i), f"the card has no {i} interface ({why})")
    common = _card_data(p, brand)
    for key, value in (e.data.items() if e is not None else ()):
        loc = ("emv", "data", key)
        t = _tag(loc, key)
        if t in DERIVED:
            raise ImageError(loc, f"{tlv.tag_hex(t)} comes from {DERIVED[t]}, not emv.data")
        known = tags.TAGS.get(t)
        if known is not None and known.source != "icc":
            raise ImageError(loc, f"{tlv.tag_hex(t)} ({known.name}) is {known.source} data, "
                                  "not something a card holds")
        v = _hex(loc, value, f"{tlv.tag_hex(t)}'s value")
        if known is not None and not known.fits(len(v)):
            raise ImageError(loc, f"{tlv.tag_hex(t)} ({known.name}) cannot be {len(v)} bytes")
        common[t] = v
    label = _text(("app_label",), p.app_label or brand.label, 16, "the application label")
    preferred = None
    if e is not None and e.preferred_name is not None:
        preferred = _text(("emv", "preferred_name"), e.preferred_name, 16,
                          "the preferred name")
    language = e.language if e is not None and e.language is not None else brand.language
    if not (2 <= len(language) <= 8 and len(language) % 2 == 0 and language.isascii()
            and language.isalpha() and language.islower()):
        raise ImageError(("emv", "language"), "language preference is 1-4 ISO 639 codes, "
                         "e.g. \"zhen\"")
    images = {i: _interface(p, brand, i, common) if has[i] else None for i in INTERFACES}
    imk_text = e.imk if e is not None and e.imk is not None else brand.imk
    imk = _hex(("emv", "imk"), imk_text, "the issuer master key")
    if len(imk) != 16:
        raise ImageError(("emv", "imk"), "the issuer master key is 16 bytes (32 hex digits)")
    iad = bytes.fromhex("".join(brand.iad.split()))
    return CardImage(
        name=p.name, scheme=p.scheme, aids=tuple(p.aids), label=label,
        priority=e.priority if e is not None else 1, preferred_name=preferred,
        language=language, issuer_code_table=e.issuer_code_table if e is not None else 1,
        contact=images["contact"], contactless=images["contactless"], iad=iad,
        cvr_byte=brand.cvr_byte, arpc_method=brand.arpc_method,
        issuer_auth_required=e.issuer_auth_required if e is not None else False,
        mk=crypto.derive_icc_mk(imk, p.pan, p.pan_sequence))
