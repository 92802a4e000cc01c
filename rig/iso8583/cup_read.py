"""China UnionPay (CUP) POS dialect: constants and readers of financial messages.

Re-exported by :mod:`rig.iso8583.cup_txn` (import them from there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rig.core.errors import ProtocolError

from .cup_codec import is_digits
from .dialects import Message

__all__ = [
    "APPROVED",
    "ENTRY_CODES",
    "FINANCIAL_MTIS",
    "PROC_BALANCE",
    "PROC_PREAUTH",
    "PROC_SALE",
    "PROC_VOID",
    "SETTLE_CODE",
    "EntryMode",
    "SettlementTotals",
    "TxnKind",
    "amount_of",
    "check_financial",
    "balance_of",
    "batch_of",
    "card_expiry",
    "card_pan",
    "entry_mode_of",
    "original_of",
    "parse_balance",
    "parse_totals",
    "settlement_result",
    "txn_kind",
]

APPROVED = "00"
PROC_SALE = "000000"
PROC_PREAUTH = "030000"
PROC_BALANCE = "310000"
PROC_VOID = "200000"
SETTLE_CODE = "201"  # 60.3 of a settlement

EntryMode = Literal["chip", "swipe", "tap"]
TxnKind = Literal["sale", "preauth", "balance", "void", "reversal", "settlement"]
FINANCIAL_MTIS = frozenset({"0100", "0200", "0220", "0400", "0500"})
"""Request MTIs the host answers as financial messages (others are network or errors)."""

ENTRY_CODES: dict[str, str] = {"chip": "05", "swipe": "02", "tap": "07", "fallback": "80"}
"""22.1 (PAN entry mode) per way of reading the card."""
_ENTRY_BACK = {v: k for k, v in ENTRY_CODES.items()}


@dataclass(frozen=True, slots=True)
class SettlementTotals:
    """One block of settlement totals (CUP 48): debits (sales) and credits (refunds)."""

    debit_count: int = 0
    debit_minor: int = 0
    credit_count: int = 0
    credit_minor: int = 0

    def __add__(self, other: SettlementTotals) -> SettlementTotals:
        return SettlementTotals(self.debit_count + other.debit_count,
                                self.debit_minor + other.debit_minor,
                                self.credit_count + other.credit_count,
                                self.credit_minor + other.credit_minor)


def check_financial(msg: Message) -> None:
    """Raise ProtocolError for a financial MTI that is not shaped like one: 0100 / 0200 /
    0220 / 0400 without a processing code (3), 0500 whose 60.3 is not 201."""
    mti = str(msg.get("t"))
    if mti == "0500":
        f60 = msg.get("60")
        code = f60[8:11] if isinstance(f60, str) else None
        if code != SETTLE_CODE:
            raise ProtocolError(f"CUP 0500: 60.3 {code!r} is not settlement ({SETTLE_CODE})")
    elif mti in FINANCIAL_MTIS and not (isinstance(msg.get("3"), str) and len(msg["3"]) == 6):
        raise ProtocolError(f"CUP {mti}: processing code (field 3) missing")


def txn_kind(msg: Message) -> TxnKind | None:
    """What a financial request is, or None (a network message, or one the rig does not
    serve: refund 0220, pre-auth completion...)."""
    mti = msg.get("t")
    proc = str(msg.get("3", ""))[:2]
    if mti == "0400":
        return "reversal"
    if mti == "0500":
        return "settlement"
    if mti == "0100":
        return "preauth" if proc == "03" else None
    if mti == "0200":
        return {"00": "sale", "31": "balance", "20": "void"}.get(proc)  # type: ignore[return-value]
    return None


def card_pan(msg: Message) -> str | None:
    """The PAN: field 2, else the part of track 2 (35) before ``=``."""
    pan = msg.get("2")
    if isinstance(pan, str) and pan:
        return pan
    track = msg.get("35")
    if isinstance(track, str) and "=" in track:
        return track.split("=", 1)[0] or None
    return None


def card_expiry(msg: Message) -> str | None:
    """Expiry YYMM: field 14, else the 4 digits after ``=`` in track 2."""
    exp = msg.get("14")
    if isinstance(exp, str) and len(exp) == 4:
        return exp
    track = msg.get("35")
    if isinstance(track, str) and "=" in track:
        tail = track.split("=", 1)[1][:4]
        return tail if len(tail) == 4 and is_digits(tail) else None
    return None


def amount_of(msg: Message) -> int | None:
    """Field 4 as minor units, or None."""
    amount = msg.get("4")
    return int(amount) if isinstance(amount, str) and is_digits(amount) else None


def batch_of(msg: Message) -> str | None:
    """60.2: the batch number."""
    f60 = msg.get("60")
    return f60[2:8] if isinstance(f60, str) and len(f60) >= 8 else None


def original_of(msg: Message) -> tuple[str, str] | None:
    """Field 61 of a void: (original batch, original STAN)."""
    f61 = msg.get("61")
    if isinstance(f61, str) and len(f61) >= 12 and is_digits(f61[:12]):
        return f61[:6], f61[6:12]
    return None


def entry_mode_of(msg: Message) -> EntryMode | None:
    """chip / swipe / tap from field 22."""
    f22 = msg.get("22")
    return _ENTRY_BACK.get(f22[:2]) if isinstance(f22, str) else None  # type: ignore[return-value]


def parse_balance(field54: str) -> int:
    """Minor units from a field 54 balance (first 20-character entry); D means negative."""
    if len(field54) < 20 or field54[7] not in "CD" or not is_digits(field54[8:20]):
        raise ProtocolError("field 54 is not a CUP balance (1002 + currency + C/D + n12)")
    value = int(field54[8:20])
    return -value if field54[7] == "D" else value


def balance_of(msg: Message) -> int | None:
    """The balance a 0210 carries in 54, or None."""
    f54 = msg.get("54")
    return parse_balance(f54) if isinstance(f54, str) else None


def parse_totals(field48: str) -> tuple[SettlementTotals, SettlementTotals]:
    """(domestic, foreign) totals of a settlement field 48 (31 or 62 digits)."""
    if not is_digits(field48) or (len(field48) != 31 and len(field48) < 62):
        raise ProtocolError("field 48 is not CUP settlement totals (31 or 62 digits)")

    def block(s: str) -> SettlementTotals:
        return SettlementTotals(int(s[0:3]), int(s[3:15]), int(s[15:18]), int(s[18:30]))
    foreign = block(field48[31:61]) if len(field48) >= 62 else SettlementTotals()
    return block(field48[:30]), foreign


def settlement_result(msg: Message) -> str | None:
    """The host's settlement result in a 0510: ``"1"`` balanced, ``"2"`` not balanced."""
    f48 = msg.get("48")
    return f48[30] if isinstance(f48, str) and len(f48) >= 31 else None
