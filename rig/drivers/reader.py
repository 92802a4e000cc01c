"""PC/SC card reader (pyscard): check that a test card is present and readable.

:func:`check_card` waits for a card, reads its ATR and runs the EMV kernel up to (not
including) GENERATE AC, then lists what a terminal would trip over: ``no ATR (mute)``,
``no supported application``, ``expired (YYMM)``, ``unreadable: …``. The result carries the
masked PAN only; nothing here logs or returns a full PAN or track 2.

The virtual lab's card reader is vsmartcard's vpcd inside pcscd ("Virtual PCD 00 00"), fed by
:class:`rig.cards.vpcd.VpcdCard`; real benches use any PC/SC reader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from ..cards.kernel import CardRead, CardReadError, read_card
from ..core.errors import InfrastructureError
from ..core.redact import mask_pan

log = logging.getLogger(__name__)

PCSCD_HINT = "is pcscd running? start it with `pcscd -f` (Debian: apt-get install pcscd)"


@dataclass(frozen=True)
class CardCheck:
    """What a reader saw; ``problems`` is empty for a card a terminal would accept."""

    reader: str
    atr: str | None  # hex; None when the chip gave no ATR
    aids: list[str] = field(default_factory=list)
    app_label: str = ""
    masked_pan: str = ""
    expiry: str = ""  # YYMM
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_with(transmit: Callable[[bytes], bytes], atr: bytes | None, *, reader: str = "",
               contactless: bool = False, today: date | None = None) -> CardCheck:
    """The check itself, on any ``transmit`` (a PC/SC card, or an in-process EmvCard)."""
    today = today or date.today()
    atr_hex = atr.hex().upper() if atr else None
    if atr is None:
        return CardCheck(reader, None, problems=["no ATR (mute)"])
    try:
        read: CardRead = read_card(transmit, contactless=contactless, amount_minor=0,
                                   unpredictable=bytes(4), when=today, stop_before_ac=True)
    except CardReadError as e:
        reason = e.reason
        if reason == "no ATR":
            problem = "no ATR (mute)"
        elif reason == "no supported application" or reason.startswith("unreadable"):
            problem = reason
        else:
            problem = f"unreadable: {reason}"
        return CardCheck(reader, atr_hex, problems=[problem])
    problems = []
    yy, mm = int(read.expiry[:2]), int(read.expiry[2:])
    if (2000 + yy, mm) < (today.year, today.month):
        problems.append(f"expired ({read.expiry})")
    return CardCheck(reader, atr_hex, aids=list(read.aids), app_label=read.app_label,
                     masked_pan=mask_pan(read.pan), expiry=read.expiry, problems=problems)


def _hr(code: int) -> int:
    return code & 0xFFFFFFFF


def _msg(sc: Any, hr: int) -> str:
    return f"{str(sc.SCardGetErrorMessage(hr)).rstrip('. ')} (0x{_hr(hr):08X})"


def _scard() -> Any:
    try:
        from smartcard import scard
    except ImportError as e:  # pragma: no cover - depends on the install
        raise InfrastructureError(
            f"pyscard is not installed ({e}); install it with `pip install pyscard` "
            "(needs libpcsclite-dev and swig)") from None
    return scard


def _choose(names: list[str], wanted: str | None) -> str:
    if not names:
        raise InfrastructureError(f"PC/SC: no reader found; plug one in, or for the virtual lab "
                                  f"install vsmartcard-vpcd and restart pcscd ({PCSCD_HINT})")
    if wanted is None:
        return names[0]
    if wanted in names:
        return wanted
    matches = [n for n in names if wanted.lower() in n.lower()]
    if matches:  # e.g. "Virtual PCD" -> "Virtual PCD 00 00" (pcscd lists slots in order)
        return matches[0]
    raise InfrastructureError(f"PC/SC: reader {wanted!r} not found (have: {', '.join(names)})")


def _wait_present(sc: Any, ctx: int, reader: str, timeout_s: float) -> int:
    """The reader's state flags once a card is in it (or whatever it is at the timeout)."""
    deadline = time.monotonic() + timeout_s
    states = [(reader, sc.SCARD_STATE_UNAWARE)]
    state = 0
    while True:
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        hr, got = sc.SCardGetStatusChange(ctx, left_ms, states)
        if _hr(hr) == _hr(sc.SCARD_E_TIMEOUT):
            return state
        if hr != sc.SCARD_S_SUCCESS:
            raise InfrastructureError(f"PC/SC {reader}: {_msg(sc, hr)}; {PCSCD_HINT}")
        state = got[0][1]
        log.debug("PC/SC %s: state %X", reader, state)
        if state & (sc.SCARD_STATE_PRESENT | sc.SCARD_STATE_MUTE) or left_ms == 0:
            return state
        states = [(reader, state & ~sc.SCARD_STATE_CHANGED)]


def check_card(reader: str | None = None, timeout_s: float = 5.0,
               contactless: bool = False) -> CardCheck:
    """Wait up to ``timeout_s`` for a card in ``reader`` (its name, or part of it: the first
    reader that matches; default: the first reader) and check it. Raises
    :class:`InfrastructureError` when pcscd or the reader is missing; card trouble goes into
    ``problems``."""
    sc = _scard()
    hr, ctx = sc.SCardEstablishContext(sc.SCARD_SCOPE_USER)
    if hr != sc.SCARD_S_SUCCESS:
        raise InfrastructureError(f"PC/SC: {_msg(sc, hr)}; {PCSCD_HINT}")
    try:
        hr, names = sc.SCardListReaders(ctx, [])
        if _hr(hr) not in (_hr(sc.SCARD_S_SUCCESS), _hr(sc.SCARD_E_NO_READERS_AVAILABLE)):
            raise InfrastructureError(f"PC/SC: {_msg(sc, hr)}; {PCSCD_HINT}")
        name = _choose(list(names or []), reader)
        state = _wait_present(sc, ctx, name, timeout_s)
        if not state & (sc.SCARD_STATE_PRESENT | sc.SCARD_STATE_MUTE):
            return CardCheck(name, None, problems=[f"no card (waited {timeout_s:g} s)"])
        if state & sc.SCARD_STATE_MUTE:
            return check_with(lambda apdu: b"", None, reader=name)
        return _check_connected(sc, ctx, name, contactless)
    finally:
        sc.SCardReleaseContext(ctx)


def _check_connected(sc: Any, ctx: int, name: str, contactless: bool) -> CardCheck:
    hr, card, proto = sc.SCardConnect(ctx, name, sc.SCARD_SHARE_SHARED,
                                      sc.SCARD_PROTOCOL_T0 | sc.SCARD_PROTOCOL_T1)
    if _hr(hr) in (_hr(sc.SCARD_W_UNRESPONSIVE_CARD), _hr(sc.SCARD_W_UNPOWERED_CARD)):
        return check_with(lambda apdu: b"", None, reader=name)
    if hr != sc.SCARD_S_SUCCESS:
        return CardCheck(name, None, problems=[f"unreadable: {_msg(sc, hr)}"])
    try:
        hr, _reader, _state, _proto, atr = sc.SCardStatus(card)
        atr_bytes = bytes(atr) if hr == sc.SCARD_S_SUCCESS and atr else None
        pci = sc.SCARD_PCI_T0 if proto == sc.SCARD_PROTOCOL_T0 else sc.SCARD_PCI_T1

        def transmit(apdu: bytes) -> bytes:
            hr, resp = sc.SCardTransmit(card, pci, list(apdu))
            if hr != sc.SCARD_S_SUCCESS:
                log.debug("PC/SC %s: transmit: %s", name, _msg(sc, hr))
                removed = _hr(hr) in (_hr(sc.SCARD_W_REMOVED_CARD), _hr(sc.SCARD_E_NO_SMARTCARD))
                raise CardReadError("card removed" if removed else "card not responding")
            return bytes(resp)

        result = check_with(transmit, atr_bytes, reader=name, contactless=contactless)
    finally:
        sc.SCardDisconnect(card, sc.SCARD_RESET_CARD)
    log.info("card check %s: atr=%s aids=%s pan=%s expiry=%s problems=%s", name, result.atr,
             ",".join(result.aids), result.masked_pan, result.expiry,
             "; ".join(result.problems) or "none")
    return result
