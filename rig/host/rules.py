"""Response rules of the acquirer host: processing delay, response-code overrides, and the
checks of financial requests (MAC, card, expiry).

Overrides are thread-safe so a test (or a host fault) can change them while the host serves.
"""

from __future__ import annotations

import threading
from datetime import date

from rig.cards.profiles import CardProfile
from rig.config import HostConfig, HostOverride
from rig.iso8583.dialects import Dialect
from rig.iso8583.keys import WorkingKeys

APPROVED = "00"
RC_INVALID_CARD = "14"
RC_EXPIRED = "54"
RC_INSUFFICIENT = "51"
RC_DUPLICATE = "94"
RC_MAC_ERROR = "A0"
RC_FORMAT_ERROR = "30"
RC_NOT_SUPPORTED = "40"
RC_NO_ORIGINAL = "25"
RC_BAD_AMOUNT = "13"
RC_INVALID_TXN = "12"


def mac_ok(dialect: Dialect, body: bytes, keys: WorkingKeys | None) -> bool:
    """Whether ``body`` carries a MAC that verifies under the session MAK (no keys: False)."""
    if keys is None:
        return False
    try:
        return dialect.verify_mac(body, keys.mak)
    except Exception:  # undecodable / wrong key length: not a valid MAC either
        return False


def expiry_passed(yymm: str, today: date) -> bool:
    """A YYMM expiry before this month (an invalid month counts as expired)."""
    if len(yymm) != 4 or not yymm.isdigit() or not 1 <= int(yymm[2:]) <= 12:
        return True
    return (2000 + int(yymm[:2]), int(yymm[2:])) < (today.year, today.month)


def card_rc(card: CardProfile | None, sent_expiry: str | None, today: date) -> str | None:
    """14 for a card the host does not know, 54 when the card (as sent, or as the host
    knows it) has expired, else None."""
    if card is None or not card.known_to_host:
        return RC_INVALID_CARD
    if card.expired(today) or (sent_expiry is not None and expiry_passed(sent_expiry, today)):
        return RC_EXPIRED
    return None


def override_matches(rule: HostOverride, terminal: str | None, card: str | None,
                     amount_minor: int | None) -> bool:
    """Every criterion the rule gives matches (a rule without criteria matches all)."""
    return ((rule.terminal is None or rule.terminal == terminal)
            and (rule.card is None or rule.card == card)
            and (rule.amount_minor is None or rule.amount_minor == amount_minor))


class ResponseRules:
    """Decides how the host answers a terminal (``terminal`` is a name from the lab config)."""

    def __init__(self, host: HostConfig) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._rc: dict[str | None, str] = {}
        self._delay_ms: dict[str | None, float] = {}
        self._overrides: list[HostOverride] = []

    def processing_delay_s(self, terminal: str | None) -> float:
        """Delay between request received and response sent (override, rule, else default)."""
        with self._lock:
            if terminal in self._delay_ms:
                return self._delay_ms[terminal] / 1000.0
        rule = self._host.rules.get(terminal) if terminal is not None else None
        ms = rule.processing_ms if rule is not None else self._host.processing_ms
        return ms / 1000.0

    def rc_for(self, terminal: str | None, default: str = APPROVED) -> str:
        """The response code to send: an override for this terminal, else ``default``."""
        with self._lock:
            return self._rc.get(terminal, default)

    def set_rc(self, terminal: str | None, rc: str | None) -> None:
        """Force response code ``rc`` for ``terminal`` (None clears the override)."""
        if rc is not None and (len(rc) != 2 or not rc.isascii() or not rc.isalnum()):
            raise ValueError(f"response code must be 2 alphanumeric characters, got {rc!r}")
        with self._lock:
            if rc is None:
                self._rc.pop(terminal, None)
            else:
                self._rc[terminal] = rc

    def set_delay_ms(self, terminal: str | None, ms: float | None) -> None:
        """Override the processing delay for ``terminal`` (None clears the override)."""
        if ms is not None and ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {ms}")
        with self._lock:
            if ms is None:
                self._delay_ms.pop(terminal, None)
            else:
                self._delay_ms[terminal] = ms

    def txn_rc(self, terminal: str | None, card: str | None,
               amount_minor: int | None) -> str | None:
        """The forced rc of the first matching override (runtime ones first, then
        ``HostConfig.overrides``), or None."""
        with self._lock:
            rules = [*self._overrides, *self._host.overrides]
        for rule in rules:
            if override_matches(rule, terminal, card, amount_minor):
                return rule.rc
        return None

    def add_override(self, rule: HostOverride) -> None:
        """Force a response code for financial requests while the host serves."""
        with self._lock:
            self._overrides.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rc.clear()
            self._delay_ms.clear()
            self._overrides.clear()
