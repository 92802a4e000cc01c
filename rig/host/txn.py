"""Financial requests at the acquirer host (CUP): sale, balance, void, pre-auth, reversal,
settlement. No I/O: the session reads, stamps and sends; this module decides the answer.

Order of the checks of a sale / pre-auth / balance / void:

1. field 41 unknown → 03 (no MAC); no signed-on session or a wrong / missing MAC → A0,
   replied without a MAC and with header follow-up 3 (sign on again);
2. a financial MTI the rig does not serve (refund 0220, completion…) → 40; a required
   field missing (11, 60.2, PAN, amount) → 30; amount 0 → 13;
3. the STAN already used by this terminal in this batch → 94;
4. a host fault's rc (``ResponseRules.add_fault``, action ``rc``, handed in by the session),
   else an override (``HostConfig.overrides`` / ``ResponseRules.add_override``, first match of
   terminal, card, amount) forces its rc; a forced 00 skips the card, cryptogram and funds
   checks (balances still move, possibly below zero);
5. PAN unknown or ``known_to_host: false`` → 14; field 55 that is not TLV → 30; an
   application cryptogram (9F26 with the data it covers) that does not verify under the
   issuer's key for the card's brand → A7 (security processing failure, :mod:`rig.cards.issuer`);
   expired (field 14 / track 2 as sent, or the profile) → 54; sale / pre-auth over the
   available balance → 51; void: original not found / another card → 25, other amount → 64,
   not approved any more → 12;
6. else 00 with a 6-digit auth code; sale debits, pre-auth holds, void credits the original.

A request whose ARQC verified is answered with field 55 = ``91`` (issuer authentication
data: the ARPC over the response code, as the card's brand computes it), whatever the rc, so
the card can check the answer at its second GENERATE AC. A 9F26 without the data it covers
(a terminal sending a partial field 55) is not checked; the response event says so
(``arqc``: ok / failed / absent / unverifiable / malformed).

A reversal (0400) is answered 00 whatever it finds (CUP practice, so the terminal clears
it); it undoes an approved original once. Settlement (0500) is answered 00 with result 1
(balanced) or 2 in 48, comparing the terminal's totals (domestic + foreign blocks summed)
with the host's (approved sales of the batch not voided or reversed). A host fault's rc other
than 00 answers a reversal or a settlement (after the MAC check) without processing it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from rig.cards.issuer import ArqcCheck, check_arqc
from rig.cards.profiles import CardProfile
from rig.core.errors import ProtocolError
from rig.core.redact import mask_pan
from rig.iso8583.cup_txn import (
    APPROVED,
    SettlementTotals,
    TxnKind,
    amount_of,
    batch_of,
    card_expiry,
    card_pan,
    original_of,
    parse_totals,
    settlement_response,
    txn_kind,
    txn_response,
)
from rig.iso8583.dialects import Dialect, Message
from rig.timeline.events import EventKind

from .accounts import Accounts, Ledger, TxnKey, TxnRecord
from .rules import (
    RC_BAD_AMOUNT,
    RC_DUPLICATE,
    RC_FORMAT_ERROR,
    RC_INSUFFICIENT,
    RC_INVALID_CARD,
    RC_INVALID_TXN,
    RC_MAC_ERROR,
    RC_NO_ORIGINAL,
    RC_NOT_SUPPORTED,
    ResponseRules,
    card_rc,
    mac_ok,
)
from .state import HostStates

__all__ = ["RC_INVALID_MERCHANT", "RC_SECURITY", "TxnOutcome", "TxnProcessor", "request_event"]

RC_INVALID_MERCHANT = "03"
RC_SECURITY = "A7"  # CUP: security processing failure (here: the ARQC does not verify)
RC_BAD_ORIGINAL_AMOUNT = "64"
_SIGN_ON_AGAIN = 3  # header follow-up nibble


@dataclass(frozen=True)
class TxnOutcome:
    """The reply to send (MAC'd with ``mak`` unless None) and the response event."""

    reply: Message = field(repr=False)
    mak: bytes | None = field(repr=False)
    rc: str
    event: EventKind
    data: dict[str, object]
    by_fault: bool = False  # the host fault's rc decided the answer


def _rsp_event(mti: object) -> EventKind:
    return {"0400": EventKind.REVERSAL_RSP,
            "0500": EventKind.SETTLE_RSP}.get(str(mti), EventKind.AUTH_RSP)


def _masked(msg: Message) -> str | None:
    pan = card_pan(msg)
    return mask_pan(pan) if pan else None


def request_event(msg: Message) -> tuple[EventKind, dict[str, object]]:
    """The request event kind and its (redacted) data: never track 2, 52, 55, 62 or keys."""
    mti = str(msg.get("t"))
    stan = str(msg.get("11", ""))
    base: dict[str, object] = {"mti": mti, "stan": stan, "batch": batch_of(msg)}
    if mti == "0500":
        data: dict[str, object] = dict(base)
        try:
            dom, foreign = parse_totals(str(msg.get("48", "")))
            total = dom + foreign
            data.update(debit_count=total.debit_count, debit_minor=total.debit_minor,
                        credit_count=total.credit_count, credit_minor=total.credit_minor)
        except ProtocolError:
            data["totals"] = "invalid"
        return EventKind.SETTLE_REQ, data
    data = {**base, "proc": str(msg.get("3", "")), "amount_minor": amount_of(msg),
            "pan": _masked(msg), "entry": msg.get("22")}
    if mti == "0400":
        data["reason"] = msg.get("39")
        return EventKind.REVERSAL_REQ, data
    data["txn"] = txn_kind(msg)
    return EventKind.AUTH_REQ, data


class TxnProcessor:
    """Decides the host's answer to financial requests; one per host (thread-safe)."""

    def __init__(self, dialect: Dialect, states: HostStates, rules: ResponseRules,
                 accounts: Accounts, ledger: Ledger, next_rrn: Callable[[], str], *,
                 today: Callable[[], date] = date.today,
                 clock: Callable[[], datetime] = datetime.now) -> None:
        self.dialect = dialect
        self.states = states
        self.rules = rules
        self.accounts = accounts
        self.ledger = ledger
        self.next_rrn = next_rrn
        self.today = today
        self.clock = clock
        self._auth = itertools.count(random.randrange(1, 1_000_000))

    def _auth_code(self) -> str:
        return f"{next(self._auth) % 1_000_000:06d}"

    def _reply(self, msg: Message, rc: str, mak: bytes | None, *, auth_code: str | None = None,
               balance_minor: int | None = None, follow_up: int = 0,
               field55: bytes | None = None, **data: object) -> TxnOutcome:
        rrn = self.next_rrn()
        auth = auth_code if rc == APPROVED else None
        reply = txn_response(msg, rc=rc, rrn=rrn, when=self.clock(), auth_code=auth,
                             balance_minor=balance_minor, follow_up=follow_up, field55=field55)
        return TxnOutcome(reply, mak, rc, _rsp_event(msg.get("t")),
                          {"mti": reply["t"], "rc": rc, "stan": str(msg.get("11", "")),
                           "auth_code": auth, "rrn": rrn, **data})

    # --- entry ------------------------------------------------------------------------------
    def handle(self, msg: Message, body: bytes, terminal: str | None, *,
               fault_rc: str | None = None) -> TxnOutcome:
        """Answer one decoded financial request (``body`` as received, for the MAC);
        ``fault_rc``: a host fault's forced response code (see the module doc)."""
        if terminal is None:
            return self._reply(msg, RC_INVALID_MERCHANT, None)
        state = self.states.get(terminal)
        keys = state.keys if state.signed_on else None
        if keys is None or not mac_ok(self.dialect, body, keys):
            why = "not signed on" if keys is None else "bad MAC"
            return self._reply(msg, RC_MAC_ERROR, None, follow_up=_SIGN_ON_AGAIN, error=why)
        kind = txn_kind(msg)
        if kind is None:
            return self._reply(msg, RC_NOT_SUPPORTED, keys.mak)
        if fault_rc is not None and fault_rc != APPROVED and kind in ("reversal", "settlement"):
            out = self._reply(msg, fault_rc, keys.mak, outcome="fault")
            return replace(out, by_fault=True)
        if kind == "reversal":
            out = self._reversal(msg, terminal, keys.mak)
        elif kind == "settlement":
            out = self._settlement(msg, terminal, keys.mak)
        else:
            return self._authorize(msg, kind, terminal, keys.mak, fault_rc)
        return replace(out, by_fault=True) if fault_rc == out.rc == APPROVED else out

    # --- authorizations -------------------------------------------------------------------
    def _authorize(self, msg: Message, kind: TxnKind, terminal: str, mak: bytes,
                   fault_rc: str | None = None) -> TxnOutcome:
        stan, batch, pan, amount = msg.get("11"), batch_of(msg), card_pan(msg), amount_of(msg)
        if not stan or batch is None or pan is None or (kind != "balance" and amount is None):
            return self._reply(msg, RC_FORMAT_ERROR, mak, txn=kind)
        key: TxnKey = (terminal, batch, str(stan))
        if not self.ledger.claim(key):
            return self._reply(msg, RC_DUPLICATE, mak, txn=kind)
        card = self.accounts.by_pan(pan)
        name = card.name if card is not None else None
        forced = fault_rc if fault_rc is not None else self.rules.txn_rc(terminal, name, amount)
        original: TxnKey | None = None
        arqc = self._arqc(msg, card, pan)
        if forced is not None and forced != APPROVED:
            rc = forced
        elif kind != "balance" and not amount:
            rc = RC_BAD_AMOUNT
        else:
            rc = None if forced is not None else card_rc(card, card_expiry(msg), self.today())
            if forced is None and rc != RC_INVALID_CARD:  # a known card: its cryptogram first
                rc = {"malformed": RC_FORMAT_ERROR, "failed": RC_SECURITY}.get(arqc.status, rc)
            if rc is None:
                rc, original = self._apply(msg, kind, terminal, name, pan, amount or 0,
                                           force=forced is not None)
        approved = rc == APPROVED
        auth_code = self._auth_code() if approved else None
        balance = (self.accounts.available(name)
                   if approved and kind == "balance" and name is not None else None)
        out = self._reply(msg, rc, mak, auth_code=auth_code, balance_minor=balance, txn=kind,
                          card=name, forced=forced is not None, arqc=arqc.status,
                          field55=arqc.reply_field55(rc))
        if fault_rc is not None:
            out = replace(out, by_fault=True)
        self.ledger.put(TxnRecord(key, kind, rc, "approved" if approved else "declined",
                                  name, pan, amount or 0, auth_code, str(out.data["rrn"]),
                                  original, forced is not None))
        return out

    def _arqc(self, msg: Message, card: CardProfile | None, pan: str) -> ArqcCheck:
        """The issuer's check of the request's chip cryptogram (absent for a swipe)."""
        f55 = msg.get("55")
        if card is None or not card.known_to_host or not isinstance(f55, bytes | bytearray):
            return ArqcCheck("absent")
        return check_arqc(bytes(f55), scheme=card.scheme, pan=pan,
                          pan_sequence=str(msg["23"]) if msg.get("23") else None)

    def _apply(self, msg: Message, kind: TxnKind, terminal: str, card: str | None, pan: str,
               amount: int, *, force: bool) -> tuple[str, TxnKey | None]:
        """Move balances for an authorization that passed the checks: (rc, voided key)."""
        if kind == "sale":
            ok = card is None or self.accounts.debit(card, amount, force=force)
            return (APPROVED if ok else RC_INSUFFICIENT), None
        if kind == "preauth":
            ok = card is None or self.accounts.hold(card, amount, force=force)
            return (APPROVED if ok else RC_INSUFFICIENT), None
        if kind == "balance":
            return APPROVED, None
        orig = original_of(msg)  # void
        if orig is None:
            return RC_FORMAT_ERROR, None
        okey: TxnKey = (terminal, *orig)
        rec = self.ledger.get(okey)
        if rec is None or rec.kind != "sale" or rec.pan != pan:
            return RC_NO_ORIGINAL, okey
        if rec.amount_minor != amount:
            return RC_BAD_ORIGINAL_AMOUNT, okey
        if self.ledger.transition(okey, "approved", "voided") is None:
            return RC_INVALID_TXN, okey
        if rec.card is not None:
            self.accounts.credit(rec.card, rec.amount_minor)
        return APPROVED, okey

    # --- reversal and settlement ------------------------------------------------------------
    def _reversal(self, msg: Message, terminal: str, mak: bytes) -> TxnOutcome:
        batch, stan = batch_of(msg), msg.get("11")
        if batch is None or not stan:
            return self._reply(msg, RC_FORMAT_ERROR, mak)
        key: TxnKey = (terminal, batch, str(stan))
        rec = self.ledger.get(key)
        pan = card_pan(msg)
        if rec is None:
            outcome = "not_found"
        elif pan is not None and rec.pan != pan:
            outcome = "mismatch"
        elif (done := self.ledger.reverse(key)) is None:
            outcome = "declined" if rec.status == "declined" else "already"
        else:
            self._undo(done)
            outcome = "reversed"
        return self._reply(msg, APPROVED, mak, outcome=outcome)

    def _undo(self, rec: TxnRecord) -> None:
        if rec.kind == "void" and rec.original is not None:
            self.ledger.transition(rec.original, "voided", "approved")
        if rec.card is None:
            return
        if rec.kind == "sale":
            self.accounts.credit(rec.card, rec.amount_minor)
        elif rec.kind == "preauth":
            self.accounts.release(rec.card, rec.amount_minor)
        elif rec.kind == "void":
            self.accounts.debit(rec.card, rec.amount_minor, force=True)

    def _settlement(self, msg: Message, terminal: str, mak: bytes) -> TxnOutcome:
        batch = batch_of(msg)
        try:
            dom, foreign = parse_totals(str(msg.get("48", "")))
        except ProtocolError:
            return self._reply(msg, RC_FORMAT_ERROR, mak)
        if batch is None:
            return self._reply(msg, RC_FORMAT_ERROR, mak)
        host: SettlementTotals = self.ledger.totals(terminal, batch)
        balanced = dom + foreign == host
        self.ledger.settle(terminal, batch, balanced)
        rrn = self.next_rrn()
        reply = settlement_response(msg, balanced=balanced, rrn=rrn, when=self.clock())
        return TxnOutcome(reply, mak, APPROVED, EventKind.SETTLE_RSP, {
            "mti": reply["t"], "rc": APPROVED, "stan": str(msg.get("11", "")), "rrn": rrn,
            "batch": batch, "result": "1" if balanced else "2",
            "host_debit_count": host.debit_count, "host_debit_minor": host.debit_minor})
