"""The issuer's side of a chip cryptogram: verify the ARQC of a request's field 55, answer
with the issuer authentication data (tag 91, the ARPC) the card checks.

The issuer derives the card's master key from the brand's issuer master key
(:func:`rig.cards.brands.issuer_master_key`), the PAN and the PAN sequence number, then
recomputes the cryptogram over the field 55 values (:mod:`rig.cards.crypto`). A card
personalised from another key (``emv.imk`` in its profile) fails here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from . import crypto, tlv
from .brands import BRANDS, issuer_master_key
from .tags import CRYPTOGRAM_TERMINAL_DATA
from .tlv import TlvError

ArqcStatus = Literal["ok", "failed", "absent", "unverifiable", "malformed"]
_NEEDED = (0x9F26, 0x9F36, 0x9F10, 0x82) + tuple(t for t, _ in CRYPTOGRAM_TERMINAL_DATA)


@dataclass(frozen=True)
class ArqcCheck:
    """What the issuer made of a request's cryptogram.

    ``ok``: it verifies; ``failed``: it does not (decline); ``absent``: no field 55 or no
    9F26 (a swipe); ``unverifiable``: a 9F26 without the data it covers (9F36, 9F10, 82, the
    terminal data): not checked; ``malformed``: field 55 is not TLV.
    """

    status: ArqcStatus
    scheme: str | None = None
    _mk: bytes = field(default=b"", repr=False)
    _arqc: bytes = field(default=b"", repr=False)
    _atc: bytes = field(default=b"", repr=False)

    def issuer_auth_data(self, rc: str) -> bytes | None:
        """Tag 91 (its value) for a reply with response code ``rc``; None when the ARQC did
        not verify (the issuer answers no cryptogram it cannot trust)."""
        if self.status != "ok" or self.scheme is None:
            return None
        arc = rc.encode("ascii", "replace")[:2]
        return crypto.issuer_auth_data(self._mk, self._atc, self._arqc,
                                       method=BRANDS[self.scheme].arpc_method,
                                       approved=rc == "00", arc=arc)

    def reply_field55(self, rc: str) -> bytes | None:
        """Field 55 of the reply (``91``), or None."""
        iad = self.issuer_auth_data(rc)
        return tlv.encode(0x91, iad) if iad is not None else None


@lru_cache(maxsize=256)
def _card_mk(scheme: str, pan: str, psn: str) -> bytes:
    """The card's master key as its issuer derives it (cached: one derivation per card)."""
    return crypto.derive_icc_mk(issuer_master_key(scheme), pan, psn)


def check_arqc(field55: bytes | None, *, scheme: str, pan: str,
               pan_sequence: str | None) -> ArqcCheck:
    """Verify the application cryptogram in ``field55`` for the card ``pan`` of ``scheme``."""
    if not field55:
        return ArqcCheck("absent")
    try:
        values = tlv.flatten(tlv.parse(bytes(field55)))
    except TlvError:
        return ArqcCheck("malformed")
    if 0x9F26 not in values:
        return ArqcCheck("absent")
    if any(t not in values for t in _NEEDED) or len(values[0x9F36]) != 2 \
            or len(values[0x9F26]) != 8 or scheme not in BRANDS:
        return ArqcCheck("unverifiable")
    try:
        data = crypto.cryptogram_input(values, aip=values[0x82], atc=values[0x9F36],
                                       iad=values[0x9F10])
        mk = _card_mk(scheme, pan, (pan_sequence or "00")[-2:])
    except (KeyError, ValueError):
        return ArqcCheck("unverifiable")
    ok = crypto.cryptogram(mk, data) == values[0x9F26]
    return ArqcCheck("ok" if ok else "failed", scheme, mk, values[0x9F26], values[0x9F36])
