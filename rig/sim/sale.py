"""Card transactions of a virtual terminal: sale, pre-auth, balance, void, settlement.

ECR ``SALE <amount_minor>`` (``PREAUTH``, ``BALANCE``, ``VOID <stan>``, ``SETTLE``) answers at
once and runs the transaction on the console: ``SALE start`` → ``CARD wait`` → a card event from
the world (:mod:`rig.sim.world`) → ``CARD present`` → the read (``sim.card_read``, scaled) →
``CARD read`` (masked PAN) or ``CARD fail reason=…`` (keeps waiting until the card timeout) → a
pending reversal first → ``AUTH req`` → ``0200``/``0100`` with the session MAC → ``0210`` within
``sim.auth_timeout_ms`` (real time: it bounds the outside world) → ``AUTH rsp`` → ``RESULT …``
after ``sim.result_display``. A reversal is stored before the request leaves (NVRAM-style) and
cleared by any answer, so a timeout, a lost connection or a power cut leaves it pending; it is
sent before the next online transaction (``1 + sim.reversal_retries`` attempts in all).
Only masked PANs reach the console, the journal and the log; never track 2, field 55 or keys.

The chip is read by the EMV kernel (:mod:`rig.cards.kernel`), which follows the card's PDOL and
CDOLs; after the host's answer a contact card gets it (EXTERNAL AUTHENTICATE and the second
GENERATE AC with the ARC and the ARPC of field 55): a TC ends the sale approved, an AAC after
an approval declines it (``RESULT declined rc=CD``) and stores a reversal (39 = 06). A card
without a chip is, in the chip reader, a chip that gives no ATR (as a mute one); a card
without an antenna gives no answer in the field (``CARD fail reason=no contactless answer``).

Card faults, as field guides describe them: a failed chip read (no ATR, unreadable record…)
says ``CARD fail reason=…`` then ``CARD insert again``; after ``sim.chip_fallback_after``
failed chip reads in one transaction it says ``CARD fallback swipe`` instead and takes a swipe
of that chip card as a fallback (22 = ``80x``, 60.5 = ``2``; ``CARD read mode=fallback``).
A chip card (service code 2xx/6xx) swiped outside fallback is a plain swipe, or ``CARD fail
reason=use chip`` with ``sim.swipe_chip_cards: false``. A card not pushed fully home says
``CARD fail reason=insert again`` then ``CARD insert again`` (not counted towards fallback:
the chip was never read); a magstripe with a bad LRC ``CARD fail reason=bad LRC,
swipe again``. Quirks of the terminal (``no_reversal``, ``no_resignon``, ``no_fallback``) break
the matching behaviour on purpose (see :mod:`rig.sim.control`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..cards import tlv
from ..cards.kernel import CardReadError, ChipTransaction, Completion, TerminalData, begin
from ..config import TerminalConfig
from ..core.clock import now
from ..core.redact import mask_pan
from ..iso8583 import cup_txn
from ..iso8583.dialects import Message
from .online import Reply, exchange
from .parts import Delays, HostRoute, Memory, Voice
from .wire import WireStamp
from .world import CardEvent, CardWorld

log = logging.getLogger(__name__)

CARD_TIMEOUT_MS = 30_000  # x sim.time_scale
COMMANDS = {"SALE": "sale", "PREAUTH": "preauth", "BALANCE": "balance", "VOID": "void", "SETTLE": "settle"}
MODE_OF = {"inserted": "chip", "swiped": "swipe", "tapped": "tap"}
REVERSIBLE = ("sale", "preauth", "void")
NOT_CHIP_FAILURES = ("card removed",)  # chip read errors that are no chip fault
CARD_DECLINED = "CD"  # the card's AAC after the host approved (terminal-side code)


@dataclass(frozen=True, slots=True)
class CardData:
    """What the terminal took from the card (only ``masked_pan`` may be shown or logged)."""

    mode: str
    pan: str = field(repr=False)
    track2: str = field(repr=False)
    expiry: str | None = None
    pan_sequence: str | None = None
    field55: bytes | None = field(default=None, repr=False)
    aid: str | None = None
    chip: ChipTransaction | None = field(default=None, repr=False)  # waits for the host's answer

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.pan)


@dataclass(slots=True)
class BatchEntry:
    """One approved transaction of the open batch (for VOID and SETTLE)."""

    stan: str
    kind: str
    amount: int
    rrn: str
    auth: str | None
    voided: bool = False


@dataclass(slots=True)
class Txn:
    kind: str
    amount: int | None = None
    original: BatchEntry | None = None
    cards: asyncio.Queue[CardEvent | None] = field(default_factory=asyncio.Queue)  # None: CANCEL
    online: bool = False  # past the point where CANCEL works
    cancelled: bool = False
    chip_failures: int = 0  # failed chip reads (for fallback)
    fallback: bool = False  # fallback to swipe offered


class Finished(Exception):  # noqa: N818 - control flow: ends a transaction with its RESULT
    """How a transaction ended: approved / declined / failed, its rc and RESULT fields."""

    def __init__(self, status: str, rc: str, reason: str = "", **data: Any) -> None:
        super().__init__(reason or rc)
        self.status, self.rc, self.reason, self.data = status, rc, reason, data


@dataclass(frozen=True, slots=True)
class SaleContext:
    """What a terminal lends its transactions; the sale flow sees nothing else of it."""

    voice: Voice
    memory: Memory
    delays: Delays
    tcfg: TerminalConfig
    route: HostRoute
    is_ready: Callable[[], bool]  # signed on and idle enough to start a transaction
    on_mac_error: Callable[[], None]  # the host answered A0 (MAC error): sign on again


class Transactions:
    """The transaction side of one terminal (its state survives power cycles)."""

    def __init__(self, ctx: SaleContext) -> None:
        self.name = ctx.voice.name
        self.voice, self.memory, self.delays = ctx.voice, ctx.memory, ctx.delays
        self.sim, self.tcfg, self.route = ctx.delays.sim, ctx.tcfg, ctx.route
        self._is_ready, self._on_mac_error = ctx.is_ready, ctx.on_mac_error
        self.world: CardWorld | None = None  # set when the lab has a card robot
        self.txn: Txn | None = None
        self.batch: list[BatchEntry] = []
        self.reversal: Message | None = None  # pending 0400
        self.reversal_left = 0
        self.last_result: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return self.txn is not None

    # --- ECR ----------------------------------------------------------------------------------
    def ecr(self, cmd: str, args: list[str]) -> str:
        """``SALE``/``PREAUTH``/``BALANCE``/``VOID``/``SETTLE``/``RESULT?``: the ECR reply."""
        if cmd == "RESULT?":
            if self.busy:
                return "ERR 21 busy"
            return f"OK {self.last_result}" if self.last_result else "ERR 22 no result"
        kind = COMMANDS[cmd]
        if not self._is_ready():
            return "ERR 20 not signed on"
        if self.busy:
            return "ERR 21 busy"
        txn = Txn(kind)
        if kind in ("sale", "preauth"):
            if len(args) != 1 or not args[0].isdigit() or not 0 < int(args[0]) < 10**12:
                return f"ERR 04 usage: {cmd} <amount_minor>"
            txn.amount = int(args[0])
        elif kind == "void":
            if len(args) != 1 or not args[0].isdigit():
                return "ERR 04 usage: VOID <stan>"
            stan = f"{int(args[0]):06d}"
            orig = next((e for e in self.batch if e.stan == stan and e.kind == "sale"), None)
            if orig is None:
                return "ERR 23 no such transaction"
            if orig.voided:
                return "ERR 24 already voided"
            txn.original, txn.amount = orig, orig.amount
        elif args:
            return f"ERR 04 usage: {cmd}"
        self.txn, self.last_result = txn, None
        self._task = asyncio.get_running_loop().create_task(self._run(txn))
        return f"OK {cmd} started"

    def cancel(self) -> None:
        """ECR CANCEL: ends the transaction with ``RESULT failed rc=CX`` unless it is online."""
        txn = self.txn
        if txn is not None and not txn.online and not txn.cancelled:
            txn.cancelled = True
            txn.cards.put_nowait(None)

    def card_event(self, ev: CardEvent) -> None:
        """A card event for this terminal (from the world)."""
        txn = self.txn
        if txn is not None and not txn.online and self._is_ready():
            txn.cards.put_nowait(ev)

    def power_off(self) -> None:
        """Power went: the transaction dies silently (a stored reversal stays pending)."""
        task, self._task, self.txn = self._task, None, None
        if task is not None:
            task.cancel()

    # --- the transaction --------------------------------------------------------------------
    async def _run(self, txn: Txn) -> None:
        try:
            amount = "" if txn.amount is None else f" amount={txn.amount}"
            orig = f" orig={txn.original.stan}" if txn.original else ""
            self.voice.say("INFO", f"SALE start type={txn.kind}{amount}{orig}", what="sale_start",
                           type=txn.kind, amount=txn.amount)
            try:
                card = None if txn.kind == "settle" else await self._card(txn)
                txn.online = True
                if self.reversal is not None:
                    await self._send_reversal()
                end = await self._online(txn, card)
            except Finished as f:
                end = f
            except Exception:
                log.exception("%s: transaction failed", self.name)
                end = Finished("failed", "PE", "internal error")
            self._result(txn, end)
        finally:
            if self.txn is txn:
                self.txn, self._task = None, None
        if end.status == "declined" and end.rc == "A0":
            if not self.voice.quirk("no_resignon", skipped="sign-on after A0"):
                self._on_mac_error()  # the host said MAC error: fetch fresh working keys

    async def _card(self, txn: Txn) -> CardData:
        loop = asyncio.get_running_loop()
        self.voice.say("INFO", "CARD wait")
        deadline = loop.time() + CARD_TIMEOUT_MS * self.sim.time_scale / 1000
        if self.world is not None and (held := self.world.inserted(self.name)) is not None:
            txn.cards.put_nowait(CardEvent("inserted", held, now()))
        while True:
            try:
                ev = await asyncio.wait_for(txn.cards.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise Finished("failed", "CT", "card timeout") from None
            if ev is None or txn.cancelled:
                raise Finished("failed", "CX", "cancelled")
            if ev.kind == "shallow":
                if txn.fallback:
                    self.voice.say("INFO", "CARD fallback swipe")
                else:  # not seated: no chip read, so no step towards fallback
                    self._fail("chip", "insert again")
                    self.voice.say("INFO", "CARD insert again", what="card_insert_again",
                                   chip_failures=txn.chip_failures, shallow=True)
                continue
            mode = MODE_OF.get(ev.kind)
            if mode is None:
                continue  # removed
            if mode == "chip" and txn.fallback:
                self.voice.say("INFO", "CARD fallback swipe")  # the chip had its chances
                continue
            modes = ev.card.profile.entry_modes
            if mode == "swipe" and mode not in modes:
                self._fail(mode, f"card does not support {mode}")
                continue
            if (mode == "swipe" and ev.card.is_chip_card and not txn.fallback
                    and not self.sim.swipe_chip_cards):
                self._fail(mode, "use chip")
                continue
            self.voice.say("INFO", f"CARD present mode={mode}")
            await asyncio.sleep(self.delays.draw_s(self.sim.card_read))
            try:
                data = self._read(ev, mode, txn)
            except CardReadError as e:
                self._fail(mode, e.reason)
                if mode == "chip" and e.reason not in NOT_CHIP_FAILURES:
                    self._chip_failed(txn)
                continue
            if txn.cancelled:
                raise Finished("failed", "CX", "cancelled")
            self.voice.say("INFO", f"CARD read mode={data.mode} pan={data.masked_pan}", what="card_read",
                           mode=data.mode, pan=data.masked_pan, aid=data.aid)
            return data

    def _fail(self, mode: str, reason: str) -> None:
        self.voice.say("WARN", f"CARD fail reason={reason}", what="card_fail", mode=mode, reason=reason)

    def _chip_failed(self, txn: Txn) -> None:
        """One more failed chip read: insert again, or (after ``sim.chip_fallback_after``) swipe."""
        txn.chip_failures += 1
        due = txn.chip_failures >= self.sim.chip_fallback_after
        if due and not self.voice.quirk("no_fallback", skipped="fallback", chip_failures=txn.chip_failures):
            txn.fallback = True
            self.voice.say("INFO", "CARD fallback swipe", what="card_fallback", chip_failures=txn.chip_failures)
        else:
            self.voice.say("INFO", "CARD insert again", what="card_insert_again", chip_failures=txn.chip_failures)

    def _read(self, ev: CardEvent, mode: str, txn: Txn) -> CardData:
        p = ev.card.profile
        if mode == "swipe":
            speed = ev.speed_mm_s or 0.0
            if not self.sim.swipe_speed_min_mm_s <= speed <= self.sim.swipe_speed_max_mm_s:
                raise CardReadError("swipe again")
            if ev.card.fault == "bad_lrc":
                raise CardReadError("bad LRC, swipe again")
            fallback = txn.fallback and ev.card.is_chip_card
            return CardData(cup_txn.FALLBACK if fallback else "swipe", p.pan, p.track2)
        if mode == "chip" and self.world is not None and self.world.inserted(self.name) is not ev.card:
            raise CardReadError("card removed")
        card = ev.card
        card.chip.power_up(contactless=mode == "tap")  # the contacts, or the field
        card.reset()
        if card.atr() is None:  # no chip (antenna) there, or a mute one
            raise CardReadError("no ATR" if mode == "chip" else "no contactless answer")
        term = TerminalData(terminal_id=self.tcfg.terminal_id, merchant_id=self.tcfg.merchant_id)
        chip = begin(card.transmit, contactless=mode == "tap", amount_minor=txn.amount or 0,
                     unpredictable=os.urandom(4), when=datetime.now(), terminal=term)
        r = chip.read
        return CardData(mode, r.pan, r.track2, r.expiry, r.pan_sequence, r.field55, r.aid,
                        chip if chip.needs_completion else None)

    def _complete_chip(self, card: CardData | None, arc: str | None,
                       rsp: Message | None) -> Completion | None:
        """Give a contact card the host's answer (``arc`` None: none came); its completion, or
        None when there was nothing to complete or the card failed."""
        chip = card.chip if card is not None else None
        if chip is None or not chip.needs_completion:
            return None
        f55 = rsp.get("55") if rsp is not None else None
        iad = None
        if isinstance(f55, bytes | bytearray):
            try:
                iad = tlv.find(bytes(f55), 0x91)
            except tlv.TlvError:
                iad = None
        try:
            return chip.complete(arc, iad)
        except CardReadError as e:
            log.info("%s: second GENERATE AC failed: %s", self.name, e.reason)
            return None

    # --- online -------------------------------------------------------------------------------
    def _request(self, txn: Txn, card: CardData | None, stan: str) -> Message:
        ids: dict[str, Any] = {"stan": stan, "terminal_id": self.tcfg.terminal_id,
                               "merchant_id": self.tcfg.merchant_id, "batch": self.memory.batch}
        if txn.kind == "settle":
            totals = cup_txn.SettlementTotals(
                sum(1 for e in self.batch if e.kind == "sale" and not e.voided),
                sum(e.amount for e in self.batch if e.kind == "sale" and not e.voided))
            return cup_txn.settlement_request(**ids, totals=totals)
        assert card is not None
        chip = card.mode not in ("swipe", cup_txn.FALLBACK)
        ids.update(entry_mode=card.mode, pan=card.pan if chip else None, track2=card.track2,
                   expiry=card.expiry, pan_sequence=card.pan_sequence if chip else None,
                   field55=card.field55 if chip else None)
        if txn.kind == "balance":
            return cup_txn.balance_request(**ids)
        if txn.kind == "void":
            o = txn.original
            assert o is not None and txn.amount is not None
            return cup_txn.void_request(**ids, amount_minor=txn.amount, original_stan=o.stan,
                                        original_rrn=o.rrn, original_auth_code=o.auth)
        build = cup_txn.preauth_request if txn.kind == "preauth" else cup_txn.sale_request
        return build(**ids, amount_minor=txn.amount or 0)

    async def _online(self, txn: Txn, card: CardData | None) -> Finished:
        stan = self.memory.next_stan()
        msg = self._request(txn, card, stan)
        self.voice.say("INFO", f"AUTH req stan={stan}")
        reversible = txn.kind in REVERSIBLE

        def store() -> None:
            if reversible:
                self._store_reversal(cup_txn.reversal_request(msg, "98"))

        outcome, reply = await self._exchange(msg, "auth_req_sent", {
            "stan": stan, "mti": msg["t"], "type": txn.kind, "amount": txn.amount}, before_send=store)
        if reply is None:
            rc, reason = {"refused": ("NC", "no connection"), "protocol": ("PE", "protocol error"),
                          "closed": ("98", "no response")}.get(outcome, ("98", "timeout"))
            self._complete_chip(card, None, None)  # unable to go online: the card's AAC
            return Finished("failed", rc, reason, stan=stan)
        rsp = reply.msg
        rc = str(rsp.get("39", "")).strip()
        self.voice.record("auth_rsp_received", reply.rx.stamp, stan=stan, rc=rc, mac_ok=reply.mac_ok)
        if reversible and self.reversal is not None and self.reversal.get("11") == stan:
            self._clear_reversal()
        self.voice.say("INFO", f"AUTH rsp rc={rc}")
        await asyncio.sleep(self.delays.draw_s(self.sim.result_display))
        if not reply.mac_ok:
            self._complete_chip(card, None, None)
            if reversible and rc == cup_txn.APPROVED:  # approved but untrusted: take it back
                self._store_reversal(cup_txn.reversal_request(msg, "A0"))
            return Finished("failed", "A0", "MAC error", stan=stan)
        done = self._complete_chip(card, rc, rsp)
        if rc != cup_txn.APPROVED:
            return Finished("declined", rc, stan=stan)
        if card is not None and card.chip is not None and (done is None or not done.approved):
            self.voice.say("WARN", "CARD declined after approval", what="card_declined",
                           issuer_auth=done.issuer_auth if done else None)
            if reversible:
                self._store_reversal(cup_txn.reversal_request(msg, "06"))
            return Finished("declined", CARD_DECLINED, stan=stan)
        rrn, auth = str(rsp.get("37", "")).strip(), rsp.get("38")
        extra: dict[str, Any] = {"auth": str(auth).strip() if auth else None, "rrn": rrn, "stan": stan}
        if txn.kind == "balance" and (bal := cup_txn.balance_of(rsp)) is not None:
            extra["balance"] = bal
        if txn.kind in ("sale", "preauth"):
            self.batch.append(BatchEntry(stan, txn.kind, txn.amount or 0, rrn, extra["auth"]))
        elif txn.kind == "void" and txn.original is not None:
            txn.original.voided = True
        elif txn.kind == "settle":
            extra["settle"] = {"1": "balanced", "2": "unbalanced"}.get(
                cup_txn.settlement_result(rsp) or "", "unknown")
            self.batch.clear()
            self.memory.batch = self.memory.batch % 999_999 + 1
        return Finished("approved", rc, **extra)

    def _result(self, txn: Txn, f: Finished) -> None:
        words = [f"RESULT {f.status} rc={f.rc}"]
        if f.status == "failed":
            words.append(f"reason={f.reason}")
        else:
            words += [f"{k}={f.data[k]}" for k in ("auth", "rrn", "stan", "balance", "settle")
                      if f.data.get(k) is not None]
        text = " ".join(words)
        self.last_result = text
        self.voice.say("INFO" if f.status == "approved" else "WARN", text, what="result", status=f.status,
                       rc=f.rc, type=txn.kind, amount=txn.amount, reason=f.reason or None, **f.data)

    # --- reversal -----------------------------------------------------------------------------
    def _store_reversal(self, rev: Message) -> None:
        if self.voice.quirk("no_reversal", skipped="store reversal", stan=rev.get("11")):
            return
        self.reversal, self.reversal_left = rev, 1 + self.sim.reversal_retries

    def _clear_reversal(self) -> None:
        self.reversal, self.reversal_left = None, 0

    async def _send_reversal(self) -> None:
        if self.reversal is not None and self.voice.quirk("no_reversal", skipped="send reversal",
                                                  stan=self.reversal.get("11")):
            return
        while self.reversal is not None and self.reversal_left > 0:
            rev = self.reversal
            stan = str(rev.get("11"))
            self.reversal_left -= 1
            outcome, reply = await self._exchange(
                rev, "reversal_sent", {"stan": stan, "reason": rev.get("39")},
                after_send=lambda s=stan: self.voice.say("INFO", f"REVERSAL sent stan={s}"))
            if reply is not None and reply.mac_ok:
                rc = str(reply.msg.get("39", "")).strip()
                self._clear_reversal()
                self.voice.record("reversal_ok", reply.rx.stamp, stan=stan, rc=rc)
                self.voice.say("INFO", f"REVERSAL ok stan={stan} rc={rc}")
                return
            self.voice.say("WARN", f"REVERSAL fail stan={stan} reason={'MAC error' if reply else outcome}")
        if self.reversal is not None:
            self.voice.say("ERROR", f"REVERSAL giveup stan={self.reversal.get('11')}")
            self._clear_reversal()

    async def _exchange(self, msg: Message, sent_what: str, sent_data: dict[str, Any], *,
                        before_send: Callable[[], None] | None = None,
                        after_send: Callable[[], None] | None = None) -> tuple[str, Reply | None]:
        keys = self.memory.keys
        if keys is None:
            return "protocol", None

        def sent(stamp: WireStamp) -> None:
            self.voice.record(sent_what, stamp, **sent_data)
            if after_send is not None:
                after_send()

        r = self.route
        return await exchange(r.host, r.port, msg, mak8=keys.mak8,
                              timeout_s=self.sim.auth_timeout_ms / 1000.0,
                              on_sent=sent, before_send=before_send, netns=r.netns)
