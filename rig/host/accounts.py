"""What the acquirer host believes about cards and transactions: balances, holds, a ledger.

Both are per host instance, in memory and thread-safe (sessions of several terminals move
the same balances). Full PANs are only used as lookup keys here; nothing in this module
logs, records or shows them (``repr`` masks them).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from rig.cards.profiles import CardProfile, load_cards
from rig.core.redact import mask_pan
from rig.iso8583.cup_txn import SettlementTotals

__all__ = ["Accounts", "Ledger", "TxnKey", "TxnRecord", "TxnStatus", "resolve_cards_dir"]

_ROOT = Path(__file__).resolve().parents[2]


def resolve_cards_dir(path: str | Path) -> Path:
    """``path`` as given when absolute or present in the cwd, else relative to the project."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return _ROOT / p if (_ROOT / p).exists() else p


class Accounts:
    """Balances and pre-authorization holds of the cards the host knows, by card name.

    ``available = balance - held``; a debit or hold succeeds only when it fits.
    """

    def __init__(self, cards: Mapping[str, CardProfile]) -> None:
        self._lock = threading.Lock()
        self._cards = dict(cards)
        self._by_pan = {c.pan: c for c in cards.values()}
        self._balance = {name: c.balance_minor for name, c in cards.items()}
        self._held = dict.fromkeys(cards, 0)

    @classmethod
    def from_dir(cls, directory: str | Path) -> Accounts:
        """Accounts for every profile in ``directory`` (see :func:`resolve_cards_dir`)."""
        return cls(load_cards(resolve_cards_dir(directory)))

    def __len__(self) -> int:
        return len(self._cards)

    def __repr__(self) -> str:
        return f"<Accounts {len(self._cards)} cards>"

    def by_pan(self, pan: str) -> CardProfile | None:
        """The profile with this PAN (known to the host or not), or None."""
        return self._by_pan.get(pan)

    def profile(self, card: str) -> CardProfile:
        return self._cards[card]

    def balance(self, card: str) -> int:
        with self._lock:
            return self._balance[card]

    def held(self, card: str) -> int:
        with self._lock:
            return self._held[card]

    def available(self, card: str) -> int:
        with self._lock:
            return self._balance[card] - self._held[card]

    def debit(self, card: str, amount_minor: int, *, force: bool = False) -> bool:
        """Take ``amount_minor`` if available (or anyway with ``force``); False if not."""
        with self._lock:
            if not force and self._balance[card] - self._held[card] < amount_minor:
                return False
            self._balance[card] -= amount_minor
            return True

    def credit(self, card: str, amount_minor: int) -> None:
        with self._lock:
            self._balance[card] += amount_minor

    def hold(self, card: str, amount_minor: int, *, force: bool = False) -> bool:
        """Reserve ``amount_minor`` (pre-authorization) if available; False if not."""
        with self._lock:
            if not force and self._balance[card] - self._held[card] < amount_minor:
                return False
            self._held[card] += amount_minor
            return True

    def release(self, card: str, amount_minor: int) -> None:
        """Give back a hold (never below zero)."""
        with self._lock:
            self._held[card] = max(0, self._held[card] - amount_minor)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """card name -> (balance, held)."""
        with self._lock:
            return {c: (self._balance[c], self._held[c]) for c in self._cards}


TxnKey = tuple[str, str, str]
"""(terminal name, batch, STAN): how CUP identifies a terminal's transaction."""
TxnStatus = Literal["approved", "declined", "voided", "reversed"]


@dataclass(frozen=True, slots=True)
class TxnRecord:
    """One financial request the host answered."""

    key: TxnKey
    kind: str  # sale, preauth, balance, void
    rc: str
    status: TxnStatus
    card: str | None = None
    pan: str | None = None
    amount_minor: int = 0
    auth_code: str | None = None
    rrn: str | None = None
    original: TxnKey | None = None  # what a void voids
    forced: bool = False  # approved by an override: effects were forced

    def __repr__(self) -> str:
        pan = mask_pan(self.pan) if self.pan else None
        return (f"TxnRecord({self.key}, {self.kind}, rc={self.rc}, {self.status}, "
                f"card={self.card}, pan={pan}, amount={self.amount_minor})")


class Ledger:
    """The host's journal of terminals' transactions, by (terminal, batch, STAN).

    Every state change is one atomic call, so a repeated reversal or a void racing a
    reversal can move a balance at most once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[TxnKey] = set()
        self._records: dict[TxnKey, TxnRecord] = {}
        self._settled: dict[tuple[str, str], bool] = {}

    def claim(self, key: TxnKey) -> bool:
        """Reserve a STAN; False when this terminal already used it in this batch."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def put(self, record: TxnRecord) -> None:
        with self._lock:
            self._seen.add(record.key)
            self._records[record.key] = record

    def get(self, key: TxnKey) -> TxnRecord | None:
        with self._lock:
            return self._records.get(key)

    def transition(self, key: TxnKey, old: TxnStatus, new: TxnStatus) -> TxnRecord | None:
        """Move ``key`` from ``old`` to ``new`` status; the record as it was, or None."""
        with self._lock:
            rec = self._records.get(key)
            if rec is None or rec.status != old:
                return None
            self._records[key] = replace(rec, status=new)
            return rec

    def reverse(self, key: TxnKey) -> TxnRecord | None:
        """Mark an approved transaction reversed; the record (to undo), else None."""
        return self.transition(key, "approved", "reversed")

    def records(self, terminal: str | None = None, batch: str | None = None) -> list[TxnRecord]:
        with self._lock:
            return [r for r in self._records.values()
                    if (terminal is None or r.key[0] == terminal)
                    and (batch is None or r.key[1] == batch)]

    def totals(self, terminal: str, batch: str) -> SettlementTotals:
        """Settlement totals of a batch: approved sales not voided or reversed (debits);
        no credits (the rig serves no refunds)."""
        sales = [r for r in self.records(terminal, batch)
                 if r.kind == "sale" and r.status == "approved"]
        return SettlementTotals(len(sales), sum(r.amount_minor for r in sales))

    def settle(self, terminal: str, batch: str, balanced: bool) -> None:
        with self._lock:
            self._settled[(terminal, batch)] = balanced

    def settled(self, terminal: str, batch: str) -> bool | None:
        """True / False after a balanced / unbalanced settlement, None before one."""
        with self._lock:
            return self._settled.get((terminal, batch))
