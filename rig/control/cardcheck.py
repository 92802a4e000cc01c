"""Card check: the operator's "check the card" step, through PC/SC.

On a bench the card sits in a real PC/SC reader. On the virtual lab the named emulated card is
attached to pcscd's virtual reader (vsmartcard-vpcd) for the duration of the check, so the same
pyscard code path reads it; ``contactless=True`` puts it in the reader as in an NFC field.

For an emulated card the report also holds the profile's EMV data objects (brand defaults
filled in: AIP, AFL, PDOL or none, CDOL1 / CDOL2, label, priority, preferred name, language,
the records per interface) and every deviation the card showed the reader from them: the bridge
records each APDU the card answered through pcscd and the terminal kernel re-reads that
transcript, so what is compared is what went over PC/SC. A card that should not answer (no
chip, no antenna, a mute chip) deviates when it does, and not when it stays silent.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ..core.errors import TestError
from .hardware import Hardware

VIRTUAL_READER = "Virtual PCD"


@dataclass(frozen=True)
class CardReport:
    """A card check: what the reader saw (the fields of the driver's ``CardCheck``), and for
    an emulated card its profile's data objects and the card's deviations from them."""

    reader: str
    atr: str | None
    aids: list[str] = field(default_factory=list)
    app_label: str = ""
    masked_pan: str = ""
    expiry: str = ""
    problems: list[str] = field(default_factory=list)
    card: str | None = None  # the emulated card's profile
    interface: str = "contact"
    data_objects: dict[str, Any] = field(default_factory=dict)  # the profile's, as built
    seen: dict[str, Any] = field(default_factory=dict)  # what the card showed the reader
    deviations: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # problems the profile explains

    @property
    def ok(self) -> bool:
        """Readable with no problem a terminal would trip over, and no deviation."""
        return not [p for p in self.problems if p not in self.expected] and not self.deviations

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cards_dir(rig: Hardware) -> Path:
    from ..cards.profiles import CARDS_DIR

    d = Path(rig.cfg.robot.cards_dir) if rig.cfg.robot else CARDS_DIR
    return d if d.is_dir() else CARDS_DIR


def card_check(rig: Hardware, card: str | None, *, reader: str | None = None,
               contactless: bool = False, timeout_s: float = 5.0) -> CardReport:
    from ..drivers.reader import check_card

    if card is None:
        chk = check_card(reader, timeout_s=timeout_s, contactless=contactless)
        return CardReport(**asdict(chk), interface="contactless" if contactless else "contact")
    if not rig.cfg.virtual:
        raise TestError("card= names an emulated card (virtual labs only); on a bench put the "
                        "card in the reader and call card_check() without it")
    from ..cards.emv import EmvCard
    from ..cards.profiles import load_cards
    from ..cards.vpcd import VpcdCard

    profiles = load_cards(cards_dir(rig))
    if card not in profiles:
        raise TestError(f"unknown card {card!r}; known: {', '.join(sorted(profiles))}")
    chip = EmvCard(profiles[card])
    transcript: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def record(capdu: bytes, rapdu: bytes) -> None:
        with lock:
            transcript.append((capdu, rapdu))

    bridge = VpcdCard(chip, contactless=contactless, transcript=record)
    bridge.start()
    try:
        chk = check_card(reader or VIRTUAL_READER, timeout_s=timeout_s, contactless=contactless)
    finally:
        bridge.stop()
    with lock:
        seen = list(transcript)
    return compare(chip, asdict(chk), seen, contactless=contactless)


def compare(chip: Any, check: dict[str, Any], transcript: list[tuple[bytes, bytes]], *,
            contactless: bool) -> CardReport:
    """The report of an emulated card: ``check`` (the driver's fields), the profile's data
    objects, and the deviations of what the card answered (``transcript``) from them."""
    from ..cards.kernel import CardReadError, read_card

    p, image = chip.profile, chip.image
    iface = "contactless" if contactless else "contact"
    img = image.interface(iface)
    objects = image.describe()
    deviations: list[str] = []
    expected: list[str] = []
    answers_here = img is not None and not p.mute
    problems = list(check.get("problems", []))
    if not answers_here:
        why = ("a mute chip" if p.mute else "no chip" if not p.aids
               else f"no {iface} interface")
        silent = [x for x in problems if x.startswith(("no ATR", "no card"))]
        if silent:
            expected += silent
        else:
            deviations.append(f"the card answered in a {iface} reader, but its profile has "
                              f"{why}")
        return CardReport(**check, card=p.name, interface=iface, data_objects=objects,
                          deviations=deviations, expected=expected)
    if p.expired():
        expected += [x for x in problems if x.startswith("expired")]
    if not transcript:  # the reader never got to talk to it: the driver's problems say why
        return CardReport(**check, card=p.name, interface=iface, data_objects=objects,
                          expected=expected)
    replies = iter([r for _, r in transcript])
    try:
        got = read_card(lambda _apdu: next(replies, b""), contactless=contactless,
                        amount_minor=0, unpredictable=bytes(4), when=date.today(),
                        stop_before_ac=True)
    except CardReadError as e:
        deviations.append(f"the card's answers do not read back as a card ({e.reason})")
        return CardReport(**check, card=p.name, interface=iface, data_objects=objects,
                          deviations=deviations, expected=expected)
    seen = {"aid": got.aid, "label": got.app_label, "priority": got.priority,
            "language": got.language, "preferred_name": got.preferred_name or None,
            "aip": got.aip.hex().upper(), "afl": got.afl.hex().upper(),
            "pdol": got.pdol.hex().upper() if got.pdol is not None else None,
            "cdol1": got.cdol1.hex().upper(), "cdol2": got.cdol2.hex().upper(),
            "records": {f"{s}.{r}": [f"{t:X}" for t in tags]
                        for (s, r), tags in sorted(got.record_tags.items())}}
    want = img.describe()

    def differ(what: str, card_value: Any, profile_value: Any) -> None:
        if card_value != profile_value:
            deviations.append(f"{what}: the card shows {card_value}, the profile says "
                              f"{profile_value}")

    differ("application", got.aid, image.aids[0])
    differ("label (50)", got.app_label, image.label)
    differ("priority (87)", got.priority, min(15, image.priority))
    differ("language (5F2D)", got.language, image.language)
    differ("preferred name (9F12)", got.preferred_name or None, image.preferred_name)
    for key, tag in (("aip", "82"), ("afl", "94"), ("pdol", "9F38"), ("cdol1", "8C"),
                     ("cdol2", "8D")):
        differ(f"{key.upper()} ({tag})", seen[key], want[key])
    for key in sorted(set(seen["records"]) | set(want["records"])):
        s, r = (int(x) for x in key.split("."))
        if seen["records"].get(key) != want["records"].get(key):
            differ(f"record {key} tags", seen["records"].get(key), want["records"].get(key))
        elif got.record_bodies.get((s, r)) != img.records.get((s, r)):
            deviations.append(f"record {key}: the card's values differ from the profile's")
    return CardReport(**check, card=p.name, interface=iface, data_objects=objects, seen=seen,
                      deviations=deviations, expected=expected)
