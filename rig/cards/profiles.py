"""Card profiles: the emulated cards of the lab (``configs/cards/*.yaml``).

A profile holds what a card carries (PAN, expiry, service code, AIDs, track 2) and what the
acquirer host should believe about it (balance). Full PANs live only in these files: every
event, log and report masks them (``rig.core.redact``); test cards are treated like real ones.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.errors import ConfigError

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

    def expired(self, today: date | None = None) -> bool:
        today = today or date.today()
        yy, mm = int(self.expiry[:2]), int(self.expiry[2:])
        return (2000 + yy, mm) < (today.year, today.month)

    def __repr__(self) -> str:  # never the full PAN
        from ..core.redact import mask_pan

        return f"CardProfile({self.name!r}, {self.scheme}, {mask_pan(self.pan)}, exp {self.expiry})"

    __str__ = __repr__


def load_cards(directory: str | Path = CARDS_DIR) -> dict[str, CardProfile]:
    """Every ``*.yaml`` profile in ``directory``, by name; errors name file, line and field."""
    from ruamel.yaml import YAML

    out: dict[str, CardProfile] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        tree = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
        try:
            card = CardProfile.model_validate(dict(tree))
        except ValidationError as e:
            lines = []
            for err in e.errors():
                key = err["loc"][0] if err["loc"] else None
                line = tree.lc.key(key)[0] + 1 if key in tree else 1
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown key"
                lines.append(f"{path}:{line}: {'.'.join(map(str, err['loc']))}: {msg}")
            raise ConfigError("\n".join(lines)) from None
        if card.name in out:
            raise ConfigError(f"{path}:1: name: card {card.name!r} is defined twice")
        out[card.name] = card
    return out
