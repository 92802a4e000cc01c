"""Card check: the operator's "check the card" step, through PC/SC.

On a bench the card sits in a real PC/SC reader. On the virtual lab the named emulated card is
attached to pcscd's virtual reader (vsmartcard-vpcd) for the duration of the check, so the same
pyscard code path reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import TestError
from .hardware import Hardware

VIRTUAL_READER = "Virtual PCD"


def cards_dir(rig: Hardware) -> Path:
    from ..cards.profiles import CARDS_DIR

    d = Path(rig.cfg.robot.cards_dir) if rig.cfg.robot else CARDS_DIR
    return d if d.is_dir() else CARDS_DIR


def card_check(rig: Hardware, card: str | None, *, reader: str | None = None,
               contactless: bool = False, timeout_s: float = 5.0) -> Any:
    from ..drivers.reader import check_card

    if card is None:
        return check_card(reader, timeout_s=timeout_s, contactless=contactless)
    if not rig.cfg.virtual:
        raise TestError("card= names an emulated card (virtual labs only); on a bench put the "
                        "card in the reader and call card_check() without it")
    from ..cards.emv import EmvCard
    from ..cards.profiles import load_cards
    from ..cards.vpcd import VpcdCard

    profiles = load_cards(cards_dir(rig))
    if card not in profiles:
        raise TestError(f"unknown card {card!r}; known: {', '.join(sorted(profiles))}")
    bridge = VpcdCard(EmvCard(profiles[card]))
    bridge.start()
    try:
        return check_card(reader or VIRTUAL_READER, timeout_s=timeout_s, contactless=contactless)
    finally:
        bridge.stop()
