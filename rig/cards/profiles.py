"""Card profiles: the emulated cards of the lab (``configs/cards/*.yaml``).

A profile holds what a card carries (PAN, expiry, service code, AIDs, track 2), how its chip
is personalised (``emv:``, the EMV data objects per interface; whatever it leaves out comes
from the brand's defaults in :mod:`rig.cards.brands`, see ``docs/cards.md``) and what the
acquirer host should believe about it (balance). :func:`load_cards` builds every card
(:func:`rig.cards.image.build_image`), so an inconsistent one fails with file:line. Full PANs
live only in these files: every event, log and report masks them (``rig.core.redact``); test
cards are treated like real ones.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.errors import ConfigError
from .image import ImageError, build_image

EntryMode = Literal["chip", "swipe", "tap"]
Scheme = Literal["unionpay", "visa", "mastercard"]

CARDS_DIR = Path(__file__).resolve().parents[2] / "configs" / "cards"


def luhn_ok(pan: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class InterfaceSpec(BaseModel):
    """One interface's data objects; a key left out takes the brand's default (``pdol: none``
    or null: the card has no PDOL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aip: str | None = Field(None, description="82, hex (2 bytes)")
    afl: str | None = Field(None, description="94, hex: 4 bytes per entry")
    pdol: str | None = Field(None, description="9F38 DOL, hex; none / null: no PDOL")
    cdol1: str | None = Field(None, description="8C DOL, hex")
    cdol2: str | None = Field(None, description="8D DOL, hex")
    records: dict[str, list[str]] | None = Field(
        None, description='"SFI.record" -> the tags it holds, in order')

    @field_validator("records", mode="before")
    @classmethod
    def _record_names(cls, v: object) -> object:
        if not isinstance(v, dict):
            return v
        out = {}
        for k, tags in v.items():
            if not isinstance(k, str):
                raise ValueError(f"write record names quoted, e.g. \"2.1\" (YAML read {k!r} "
                                 "as a number)")
            out[k] = [str(t) for t in tags] if isinstance(tags, list) else tags
        return out


class EmvSpec(BaseModel):
    """How the chip is personalised (see docs/cards.md); everything has a brand default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: int = Field(1, ge=1, le=15, description="87 application priority indicator")
    preferred_name: str | None = Field(None, description="9F12 (ASCII, up to 16)")
    language: str | None = Field(None, description="5F2D, e.g. zhen")
    issuer_code_table: int = Field(1, ge=1, le=10, description="9F11")
    imk: str | None = Field(None, repr=False, description="the issuer master key (AC) the "
                            "card was personalised from; default: the brand's, as the host's")
    issuer_auth_required: bool = Field(False, description="decline (AAC) when the issuer's "
                                       "answer (ARPC) never reached the card")
    data: dict[str, str] = Field(default_factory=dict, description="more card data objects "
                                 "(tag -> hex value) for records, e.g. 5F28 or 9F14")
    contact: InterfaceSpec = InterfaceSpec()
    contactless: InterfaceSpec = InterfaceSpec()

    @field_validator("data", mode="before")
    @classmethod
    def _data_keys(cls, v: object) -> object:
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v

    def interface(self, name: str) -> InterfaceSpec | None:
        if name not in self.model_fields_set:
            return None
        return self.contact if name == "contact" else self.contactless


class CardProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    scheme: Scheme
    product: Literal["debit", "credit"] = "debit"
    pan: str = Field(pattern=r"^\d{13,19}$", repr=False)
    expiry: str = Field(pattern=r"^\d{4}$", description="YYMM")
    service_code: str = Field("201", pattern=r"^\d{3}$")
    cardholder: str = Field("TEST/CARD", max_length=26)
    aids: list[str] = Field(default_factory=list, description="hex AIDs on the chip")
    app_label: str = ""
    entry_modes: list[EntryMode] = Field(default_factory=lambda: ["chip", "swipe", "tap"])
    balance_minor: int = Field(500000, ge=0, description="what the host believes is available")
    currency: str = Field("156", pattern=r"^\d{3}$")
    pan_sequence: str = Field("01", pattern=r"^\d{2}$")
    atr: str = Field("3B6800000073C84013009000", pattern=r"^([0-9A-Fa-f]{2})+$")
    mute: bool = Field(False, description="no ATR: the chip does not answer")
    known_to_host: bool = Field(True, description="False: the host answers 14 invalid card")
    emv: EmvSpec | None = Field(None, description="the chip's data objects (brand defaults)")

    @field_validator("pan")
    @classmethod
    def _luhn(cls, v: str) -> str:
        if not luhn_ok(v):
            raise ValueError("PAN fails the Luhn check")
        return v

    @field_validator("aids")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        for a in v:
            if len(a) < 10 or len(a) > 32 or len(a) % 2 or any(c not in "0123456789ABCDEFabcdef" for c in a):
                raise ValueError(f"AID {a!r} is not 5-16 bytes of hex")
        return [a.upper() for a in v]

    @property
    def track2(self) -> str:
        """Track 2 equivalent data as a terminal reads it: ``PAN=YYMMSSSdiscretionary``."""
        return f"{self.pan}={self.expiry}{self.service_code}0000000000"

    @property
    def has_chip(self) -> bool:
        return bool(self.aids) and ("chip" in self.entry_modes or "tap" in self.entry_modes)

    @property
    def has_contact(self) -> bool:
        """A chip with contacts (the card answers a reset in a contact reader)."""
        return bool(self.aids) and "chip" in self.entry_modes

    @property
    def has_contactless(self) -> bool:
        """A contactless antenna (the card answers in an NFC field)."""
        return bool(self.aids) and "tap" in self.entry_modes

    def expired(self, today: date | None = None) -> bool:
        today = today or date.today()
        yy, mm = int(self.expiry[:2]), int(self.expiry[2:])
        return (2000 + yy, mm) < (today.year, today.month)

    def __repr__(self) -> str:  # never the full PAN
        from ..core.redact import mask_pan

        return f"CardProfile({self.name!r}, {self.scheme}, {mask_pan(self.pan)}, exp {self.expiry})"

    __str__ = __repr__


def _line(tree: object, loc: tuple[str | int, ...]) -> int:
    """The 1-based line of the deepest key of ``loc`` present in the YAML tree."""
    line, node = 1, tree
    for key in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and key in node:
                line = lc.key(key)[0] + 1 if lc is not None else line
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                line = lc.item(key)[0] + 1 if lc is not None else line
            else:
                break
            node = node[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    return line


def load_cards(directory: str | Path = CARDS_DIR) -> dict[str, CardProfile]:
    """Every ``*.yaml`` profile in ``directory``, by name, each built and checked as a card;
    errors name file, line and field."""
    from ruamel.yaml import YAML

    out: dict[str, CardProfile] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        tree = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}:1: a card profile is a mapping of keys")
        try:
            card = CardProfile.model_validate(dict(tree))
        except ValidationError as e:
            lines = []
            for err in e.errors():
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown key"
                lines.append(f"{path}:{_line(tree, tuple(err['loc']))}: "
                             f"{'.'.join(map(str, err['loc']))}: {msg}")
            raise ConfigError("\n".join(lines)) from None
        try:
            build_image(card)
        except ImageError as e:
            raise ConfigError(f"{path}:{_line(tree, e.loc)}: {e}") from None
        if card.name in out:
            raise ConfigError(f"{path}:1: name: card {card.name!r} is defined twice")
        out[card.name] = card
    return out
