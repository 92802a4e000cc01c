"""China UnionPay (CUP) POS dialect: financial message builders and readers.

Used by the acquirer host (``rig.host``) and by the virtual terminal (``rig.sim``). Builders
return plain messages; the MAC is added by ``CUP.encode(msg, mak=session_mak)``.

Terminal side (all keyword-only; ``stan``/``batch`` int or digit str; amounts in minor units)::

    sale_request(*, stan, terminal_id, merchant_id, batch, amount_minor, entry_mode,
                 pan=None, expiry=None, pan_sequence=None, track2=None, field55=None,
                 currency="156", pin_capability="1", tpdu=DEFAULT_TPDU,
                 header=DEFAULT_HEADER) -> Message                     # 0200 3=000000 25=00
    preauth_request(... same as sale_request ...) -> Message           # 0100 3=030000 25=06
    balance_request(... sale_request without amount_minor ...) -> Message  # 0200 3=310000
    void_request(*, stan, terminal_id, merchant_id, batch, amount_minor, entry_mode,
                 original_stan, original_batch=None, original_rrn=None,
                 original_auth_code=None, pan=None, expiry=None, pan_sequence=None,
                 track2=None, field55=None, currency="156", pin_capability="1",
                 tpdu=DEFAULT_TPDU, header=DEFAULT_HEADER) -> Message  # 0200 3=200000 61
    reversal_request(original: Message, reason_rc="98") -> Message    # 0400
    settlement_request(*, stan, terminal_id, merchant_id, batch, totals: SettlementTotals,
                       foreign=None, currency="156", operator=None,
                       tpdu=DEFAULT_TPDU, header=DEFAULT_HEADER) -> Message  # 0500

Host side::

    txn_response(request, *, rc, rrn, when, auth_code=None, balance_minor=None,
                 field48=None, currency=None, acquirer="00000000",
                 follow_up=0, field55=None) -> Message                 # 0110/0210/0410/0510
    settlement_response(request, *, balanced, rrn, when, acquirer="00000000") -> Message

Readers (defined in ``cup_read``, re-exported here): ``check_financial`` (ProtocolError for a
misshapen financial message), ``txn_kind`` (sale / preauth / balance / void / reversal /
settlement / None), ``card_pan`` (2, else track 2), ``card_expiry`` (14, else track 2),
``amount_of``, ``batch_of`` (60.2), ``original_of`` (61), ``entry_mode_of``, ``balance_of``
(54 → minor units), ``parse_balance``, ``parse_totals`` (48 → (domestic, foreign)),
``settlement_result`` (48 of a 0510 → "1" / "2").

Field layouts chosen (CUP POS practice):

- 22 = entry mode (05 chip, 02 swipe, 07 contactless, 80 fallback: a chip card's magstripe
  read after its chip failed, ``entry_mode="fallback"``) + PIN capability digit (22.2):
  ``"051"``, sent left-aligned as n4 (``05 10``).
- 23 = ``"0"`` + the 2-digit PAN sequence number (n3, from 5F34).
- 60 = 60.1 message type (22 sale, 10 pre-auth, 01 balance, 23 void) + 60.2 batch (6) +
  60.3 network code ``000`` + 60.4 terminal read capability ``6`` (contact and
  contactless chip) + 60.5 chip condition ``0`` (``2`` for a fallback: the last chip read
  failed): 13 digits. Settlement:
  ``00`` + batch + ``201``.
- 61 (void) = original batch (6) + original STAN (6).
- 48 (settlement, 62 digits) = domestic block (debit count n3, debit amount n12, credit
  count n3, credit amount n12, result n1) + foreign block (same layout). The terminal sends
  result ``0``; the host answers with ``1`` balanced / ``2`` not balanced in both blocks.
  Debit = approved sales (not voided or reversed); credit = refunds.
- 54 (balance) = account type ``10`` + amount type ``02`` (available) + currency (3) +
  ``C``/``D`` + amount (12): e.g. ``1002156C000000012345``.
- A reversal keeps the original's STAN (11) and 60; it drops 26, 35, 36, 52, 53 and 64,
  takes 2 and 14 from track 2 when the original had none, and adds 39 = reason.
- Responses swap the TPDU and echo 3, 4, 11, 22, 25, 41, 42, 48, 49, 60, 61 when present
  (never 2, 35, 55); they add 12, 13, 32, 37, 38 (when approved and given), 39, 48
  (settlement result), 54 (balance inquiry), 55 (the issuer's chip data for the card: 91
  issuer authentication data, when given).
"""

from __future__ import annotations

from datetime import datetime

from rig.core.errors import ProtocolError

from .cup import response_envelope
from .cup_codec import DEFAULT_HEADER, DEFAULT_TPDU, is_digits
from .cup_read import (
    APPROVED,
    ENTRY_CODES,
    FINANCIAL_MTIS,
    PROC_BALANCE,
    PROC_PREAUTH,
    PROC_SALE,
    PROC_VOID,
    SETTLE_CODE,
    EntryMode,
    SettlementTotals,
    TxnKind,
    amount_of,
    balance_of,
    batch_of,
    card_expiry,
    card_pan,
    check_financial,
    entry_mode_of,
    original_of,
    parse_balance,
    parse_totals,
    settlement_result,
    txn_kind,
)
from .dialects import Message

__all__ = [
    "APPROVED",
    "DEFAULT_HEADER",
    "DEFAULT_TPDU",
    "ENTRY_CODES",
    "FALLBACK",
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
    "balance_field",
    "balance_of",
    "balance_request",
    "batch_of",
    "check_financial",
    "card_expiry",
    "card_pan",
    "entry_mode_of",
    "original_of",
    "parse_balance",
    "parse_totals",
    "preauth_request",
    "reversal_request",
    "sale_request",
    "settlement_request",
    "settlement_response",
    "settlement_result",
    "totals_field",
    "txn_kind",
    "txn_response",
    "void_request",
]

_TYPE_CODE = {"sale": "22", "preauth": "10", "balance": "01", "void": "23"}
_READ_CAPABILITY = "6"  # 60.4: contact and contactless chip
_CHIP_CONDITION = "0"  # 60.5: no fallback
FALLBACK = "fallback"  # entry_mode of a fallback swipe: 22.1 = 80, 60.5 = 2
_FALLBACK_CODE, _FALLBACK_CONDITION = "80", "2"
_DROP_IN_REVERSAL = ("26", "35", "36", "52", "53", "64")
_ECHO = ("3", "4", "11", "22", "25", "41", "42", "49", "60", "61")


# --- helpers ------------------------------------------------------------------------------

def _num(value: int | str, width: int, what: str) -> str:
    text = str(value).zfill(width)
    if len(text) != width or not is_digits(text):
        raise ProtocolError(f"{what} must be at most {width} digits")
    return text


def _amount(amount_minor: int) -> str:
    if not isinstance(amount_minor, int) or amount_minor < 0:
        raise ProtocolError("amount_minor must be a non-negative int")
    return _num(amount_minor, 12, "amount")


def _entry(entry_mode: str, pin_capability: str) -> str:
    codes = {**ENTRY_CODES, FALLBACK: _FALLBACK_CODE}
    if entry_mode not in codes:
        raise ProtocolError(f"entry mode {entry_mode!r}: expected one of {sorted(codes)}")
    if pin_capability not in ("0", "1", "2"):
        raise ProtocolError(f"PIN capability must be 0, 1 or 2, got {pin_capability!r}")
    return codes[entry_mode] + pin_capability


def _card_fields(pan: str | None, expiry: str | None, pan_sequence: str | None,
                 track2: str | None, field55: bytes | None) -> Message:
    if pan is None and track2 is None:
        raise ProtocolError("a card message needs pan or track2")
    out: Message = {}
    if pan is not None:
        if not is_digits(pan) or not 12 <= len(pan) <= 19:
            raise ProtocolError("pan must be 12-19 digits")
        out["2"] = pan
    if expiry is not None:
        out["14"] = _num(expiry, 4, "expiry (YYMM)")
    if pan_sequence is not None:
        out["23"] = _num(pan_sequence, 3, "PAN sequence number")
    if track2 is not None:
        out["35"] = track2
    if field55 is not None:
        out["55"] = bytes(field55)
    return out


def _f60(kind: str, batch: int | str, entry_mode: str = "") -> str:
    cond = _FALLBACK_CONDITION if entry_mode == FALLBACK else _CHIP_CONDITION
    return _TYPE_CODE[kind] + _num(batch, 6, "batch") + "000" + _READ_CAPABILITY + cond


def _card_request(mti: str, proc: str, kind: str, cond: str, *, stan: int | str,
                  terminal_id: str, merchant_id: str, batch: int | str,
                  amount_minor: int | None, entry_mode: str, pan: str | None,
                  expiry: str | None, pan_sequence: str | None, track2: str | None,
                  field55: bytes | None, currency: str, pin_capability: str, tpdu: bytes,
                  header: bytes) -> Message:
    msg: Message = {"tpdu": bytes(tpdu), "header": bytes(header), "t": mti, "3": proc}
    msg.update(_card_fields(pan, expiry, pan_sequence, track2, field55))
    if amount_minor is not None:
        msg["4"] = _amount(amount_minor)
    msg["11"] = _num(stan, 6, "stan")
    msg["22"] = _entry(entry_mode, pin_capability)
    msg["25"] = cond
    msg["41"] = terminal_id
    msg["42"] = merchant_id
    msg["49"] = _num(currency, 3, "currency")
    msg["60"] = _f60(kind, batch, entry_mode)
    return dict(sorted(msg.items(), key=_order))


# --- terminal side ------------------------------------------------------------------------

def sale_request(*, stan: int | str, terminal_id: str, merchant_id: str, batch: int | str,
                 amount_minor: int, entry_mode: str, pan: str | None = None,
                 expiry: str | None = None, pan_sequence: str | None = None,
                 track2: str | None = None, field55: bytes | None = None,
                 currency: str = "156", pin_capability: str = "1",
                 tpdu: bytes = DEFAULT_TPDU, header: bytes = DEFAULT_HEADER) -> Message:
    """`0200` sale (3=000000, 25=00, 60.1=22)."""
    return _card_request("0200", PROC_SALE, "sale", "00", stan=stan, terminal_id=terminal_id,
                         merchant_id=merchant_id, batch=batch, amount_minor=amount_minor,
                         entry_mode=entry_mode, pan=pan, expiry=expiry,
                         pan_sequence=pan_sequence, track2=track2, field55=field55,
                         currency=currency, pin_capability=pin_capability, tpdu=tpdu,
                         header=header)


def preauth_request(*, stan: int | str, terminal_id: str, merchant_id: str, batch: int | str,
                    amount_minor: int, entry_mode: str, pan: str | None = None,
                    expiry: str | None = None, pan_sequence: str | None = None,
                    track2: str | None = None, field55: bytes | None = None,
                    currency: str = "156", pin_capability: str = "1",
                    tpdu: bytes = DEFAULT_TPDU, header: bytes = DEFAULT_HEADER) -> Message:
    """`0100` pre-authorization (3=030000, 25=06, 60.1=10)."""
    return _card_request("0100", PROC_PREAUTH, "preauth", "06", stan=stan,
                         terminal_id=terminal_id, merchant_id=merchant_id, batch=batch,
                         amount_minor=amount_minor, entry_mode=entry_mode, pan=pan,
                         expiry=expiry, pan_sequence=pan_sequence, track2=track2,
                         field55=field55, currency=currency, pin_capability=pin_capability,
                         tpdu=tpdu, header=header)


def balance_request(*, stan: int | str, terminal_id: str, merchant_id: str, batch: int | str,
                    entry_mode: str, pan: str | None = None, expiry: str | None = None,
                    pan_sequence: str | None = None, track2: str | None = None,
                    field55: bytes | None = None, currency: str = "156",
                    pin_capability: str = "1", tpdu: bytes = DEFAULT_TPDU,
                    header: bytes = DEFAULT_HEADER) -> Message:
    """`0200` balance inquiry (3=310000, 25=00, 60.1=01, no amount)."""
    return _card_request("0200", PROC_BALANCE, "balance", "00", stan=stan,
                         terminal_id=terminal_id, merchant_id=merchant_id, batch=batch,
                         amount_minor=None, entry_mode=entry_mode, pan=pan, expiry=expiry,
                         pan_sequence=pan_sequence, track2=track2, field55=field55,
                         currency=currency, pin_capability=pin_capability, tpdu=tpdu,
                         header=header)


def void_request(*, stan: int | str, terminal_id: str, merchant_id: str, batch: int | str,
                 amount_minor: int, entry_mode: str, original_stan: int | str,
                 original_batch: int | str | None = None, original_rrn: str | None = None,
                 original_auth_code: str | None = None, pan: str | None = None,
                 expiry: str | None = None, pan_sequence: str | None = None,
                 track2: str | None = None, field55: bytes | None = None,
                 currency: str = "156", pin_capability: str = "1",
                 tpdu: bytes = DEFAULT_TPDU, header: bytes = DEFAULT_HEADER) -> Message:
    """`0200` void of a sale (3=200000, 25=00, 60.1=23, 61 = original batch + STAN).

    ``amount_minor`` is the original amount; 37 / 38 carry the original RRN / auth code
    when given. ``original_batch`` defaults to ``batch``.
    """
    msg = _card_request("0200", PROC_VOID, "void", "00", stan=stan, terminal_id=terminal_id,
                        merchant_id=merchant_id, batch=batch, amount_minor=amount_minor,
                        entry_mode=entry_mode, pan=pan, expiry=expiry,
                        pan_sequence=pan_sequence, track2=track2, field55=field55,
                        currency=currency, pin_capability=pin_capability, tpdu=tpdu,
                        header=header)
    if original_rrn is not None:
        msg["37"] = original_rrn
    if original_auth_code is not None:
        msg["38"] = original_auth_code
    orig_batch = batch if original_batch is None else original_batch
    msg["61"] = _num(orig_batch, 6, "original batch") + _num(original_stan, 6, "original stan")
    return dict(sorted(msg.items(), key=_order))


def reversal_request(original: Message, reason_rc: str = "98") -> Message:
    """`0400` reversal of ``original`` (a 0100 / 0200 request): same fields and STAN, 39 =
    ``reason_rc`` (98 no response, 96 / 06 other), without PIN, track and MAC fields."""
    mti = str(original.get("t"))
    if mti not in ("0100", "0200"):
        raise ProtocolError(f"cannot reverse a {mti}: only 0100 / 0200 are reversed")
    if len(reason_rc) != 2 or not reason_rc.isascii() or not reason_rc.isalnum():
        raise ProtocolError(f"reversal reason must be a 2-character rc, got {reason_rc!r}")
    msg: Message = {k: v for k, v in original.items() if k not in _DROP_IN_REVERSAL}
    msg["t"] = "0400"
    if "2" not in msg and (pan := card_pan(original)) is not None:
        msg["2"] = pan
    if "14" not in msg and (exp := card_expiry(original)) is not None:
        msg["14"] = exp
    msg["39"] = reason_rc
    return dict(sorted(msg.items(), key=_order))


def totals_field(totals: SettlementTotals, foreign: SettlementTotals | None = None,
                 result: str = "0") -> str:
    """Settlement field 48: domestic block + foreign block, each n3 n12 n3 n12 + result."""
    def block(t: SettlementTotals) -> str:
        return (_num(t.debit_count, 3, "debit count") + _amount(t.debit_minor)
                + _num(t.credit_count, 3, "credit count") + _amount(t.credit_minor) + result)
    return block(totals) + block(foreign or SettlementTotals())


def settlement_request(*, stan: int | str, terminal_id: str, merchant_id: str,
                       batch: int | str, totals: SettlementTotals,
                       foreign: SettlementTotals | None = None, currency: str = "156",
                       operator: str | None = None, tpdu: bytes = DEFAULT_TPDU,
                       header: bytes = DEFAULT_HEADER) -> Message:
    """`0500` batch settlement: 11, 41, 42, 48 (totals), 49, 60 = 00 + batch + 201, 63."""
    msg: Message = {
        "tpdu": bytes(tpdu), "header": bytes(header), "t": "0500",
        "11": _num(stan, 6, "stan"), "41": terminal_id, "42": merchant_id,
        "48": totals_field(totals, foreign), "49": _num(currency, 3, "currency"),
        "60": "00" + _num(batch, 6, "batch") + SETTLE_CODE,
    }
    if operator is not None:
        msg["63"] = operator.ljust(3)
    return msg


# --- host side ----------------------------------------------------------------------------

def balance_field(balance_minor: int, currency: str = "156") -> str:
    """Field 54: ``10`` ``02`` (available) + currency + C/D + 12-digit amount."""
    sign = "C" if balance_minor >= 0 else "D"
    return "1002" + _num(currency, 3, "currency") + sign + _amount(abs(balance_minor))


def txn_response(request: Message, *, rc: str, rrn: str, when: datetime,
                 auth_code: str | None = None, balance_minor: int | None = None,
                 field48: str | None = None, currency: str | None = None,
                 acquirer: str = "00000000", follow_up: int = 0,
                 field55: bytes | None = None) -> Message:
    """The reply to a financial request (0110 / 0210 / 0410 / 0510); no MAC yet.

    ``auth_code`` (6 characters) goes into 38 when ``rc`` is 00; ``balance_minor`` into 54;
    ``field48`` replaces 48 (settlement result); ``field55`` (TLV, e.g. ``91`` with the ARPC)
    into 55. ``follow_up`` is the header's request for more work (3 = sign on again, sent
    with A0).
    """
    if len(rc) != 2 or not rc.isascii() or not rc.isalnum():
        raise ProtocolError(f"response code must be 2 characters, got {rc!r}")
    rsp = response_envelope(request, follow_up)
    for f in _ECHO:
        if f in request:
            rsp[f] = request[f]
    rsp["12"] = when.strftime("%H%M%S")
    rsp["13"] = when.strftime("%m%d")
    rsp["32"] = acquirer
    rsp["37"] = rrn
    if rc == APPROVED and auth_code is not None:
        if len(auth_code) != 6 or not auth_code.isascii():
            raise ProtocolError("auth code must be 6 ASCII characters")
        rsp["38"] = auth_code
    rsp["39"] = rc
    if field48 is not None:
        rsp["48"] = field48
    elif "48" in request:
        rsp["48"] = request["48"]
    if balance_minor is not None:
        cur = currency or str(request.get("49") or "156")
        rsp["54"] = balance_field(balance_minor, cur)
    if field55:
        rsp["55"] = bytes(field55)
    return dict(sorted(rsp.items(), key=_order))


def settlement_response(request: Message, *, balanced: bool, rrn: str, when: datetime,
                        acquirer: str = "00000000") -> Message:
    """`0510`: rc 00, the terminal's 48 with result 1 (balanced) / 2 (not) in each block."""
    f48 = str(request.get("48") or totals_field(SettlementTotals()))
    if len(f48) < 62 or not is_digits(f48):
        f48 = totals_field(SettlementTotals())
    code = "1" if balanced else "2"
    f48 = f48[:30] + code + f48[31:61] + code + f48[62:]
    return txn_response(request, rc=APPROVED, rrn=rrn, when=when, field48=f48,
                        acquirer=acquirer)


def _order(item: tuple[str, object]) -> tuple[int, int]:
    key = item[0]
    if key in ("tpdu", "header", "t"):
        return (0, ("tpdu", "header", "t").index(key))
    return (1, int(key)) if key.isdigit() else (2, 0)
