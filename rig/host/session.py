"""One terminal connection to the acquirer host: read frames, answer network and (CUP)
financial messages (decided by :mod:`rig.host.txn`), record.

A coroutine on the host's event loop (:mod:`rig.host.server`), one per connection, reading
through :class:`rig.host.conn.HostConn`: each request is stamped with the kernel receive time
of its last TCP segment, each response with the kernel's transmit stamp (see
:mod:`rig.core.netstamp`). Deciding the answer is synchronous (no I/O); waiting out a
processing delay and sending are awaited, so a slow or faulted reply holds up only its own
connection. A protocol error is recorded and closes this connection only; so does a frame not
completed within the frame deadline, or no frame within the idle limit (``idle timeout``).
The server ends a session by cancelling it, with the reason it gives (``host stopped``,
``evicted``).

Host faults (:class:`rig.host.rules.HostFaultSpec`) are looked up once a request is decoded
and classified (after the receive stamp). What they did is in the events: a ``*_RSP`` carries
``fault`` (the actions, comma-separated), ``fault_ids`` and, with a delay, ``fault_delay_ms``;
under ``no_response`` / ``close`` no reply is sent and the ``*_REQ`` event carries ``fault``,
``fault_ids`` and ``answered: False`` (``close`` then ends with HOST_DISCONNECT reason
``fault close``); under ``garbage`` the ``*_RSP`` has ``rc: None``, ``host_rc`` (what the host
decided) and ``length`` (of the random body sent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from rig.core.clock import ClockSource, Stamp, WallToMono, now
from rig.core.errors import ProtocolError
from rig.core.redact import redact_text
from rig.iso8583.cup_txn import FINANCIAL_MTIS, check_financial
from rig.iso8583.dialects import Dialect, Message
from rig.iso8583.framing import ConnectionClosed, frame
from rig.iso8583.keys import encode_field62, generate_working_keys
from rig.timeline.events import Event, EventKind, Sink

from ..core.netstamp import RxStamp
from . import responses
from .conn import HostConn
from .flood import FloodLog
from .rules import APPROVED, NO_FAULTS, FaultPlan, MessageClass, ResponseRules
from .state import HostStates
from .txn import RC_INVALID_MERCHANT, TxnProcessor, request_event

log = logging.getLogger(__name__)

SOURCE = "host"
NO_TIMESTAMP = "thread: no kernel receive timestamp"


def safe_text(text: str, limit: int = 240) -> str:
    """Error text fit for an event: PANs masked, track data dropped, length bounded."""
    clean = redact_text(text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


@dataclass(frozen=True)
class HostContext:
    """What every session of one host shares."""

    dialect: Dialect
    sink: Sink
    rules: ResponseRules
    states: HostStates
    mapper: WallToMono
    terminals: dict[str, tuple[str, bytes, str]]  # field 41 -> (name, TMK, configured key mode)
    idle_timeout_s: float
    frame_timeout_s: float
    max_frame: int
    stopping: threading.Event
    next_rrn: Callable[[], str]
    flood: FloodLog  # what peers do wrong, logged once per kind and interval
    txn: TxnProcessor | None = None  # financial requests (CUP only)


_FINANCIAL_CLASS: dict[str, MessageClass] = {"0400": "reversal", "0500": "settle"}


class _Close(Exception):
    """End this session; ``reason`` goes into HOST_DISCONNECT."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Reply:
    """A reply decided, to be sent once its delay is over, then recorded."""

    body: bytes
    due_mono_ns: int
    kind: EventKind
    terminal: str | None
    data: dict[str, object]


class Activity:
    """What a session tells its server: a request arrived (busy: not to be evicted), it was
    handled (idle again). The server's implementation keeps the eviction order."""

    def busy(self) -> None:
        """A whole request arrived."""

    def served(self) -> None:
        """The request was answered (or withheld); waiting for the next."""


class Session:
    """Serves one accepted connection until the peer closes, an error, a deadline, or the
    server cancels it (:meth:`end`)."""

    def __init__(self, ctx: HostContext, conn: HostConn, peer: str, accepted: Stamp,
                 activity: Activity | None = None) -> None:
        self.ctx = ctx
        self.accepted = accepted
        self.conn = conn
        self.peer = peer
        self.activity = activity or Activity()
        self.frames = 0
        self.held = False  # a reply was withheld (no_response): no idle timeout until a frame
        self.end_reason = "host stopped"  # why the server cancelled it
        self.started = False
        self._reply: _Reply | None = None

    # --- loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until the connection ends; records HOST_CONNECT ... HOST_DISCONNECT. A
        cancellation (from the server) ends it with :attr:`end_reason`."""
        self.started = True
        # stamped when accept() returned: the kernel may have queued the first request earlier
        self._record(Event.at(self.accepted, EventKind.HOST_CONNECT, SOURCE, peer=self.peer))
        reason = "peer closed"
        try:
            while True:
                await self._serve_one()
        except _Close as c:
            reason = c.reason
        except asyncio.CancelledError:
            reason = self.end_reason
        except Exception as e:  # a host bug: say so, keep the other connections serving
            log.exception("host session %s failed", self.peer)
            reason = "host error"
            self._record(Event.now(EventKind.ERROR, SOURCE, peer=self.peer,
                                   error=safe_text(f"{type(e).__name__}: {e}")))
        finally:
            try:
                self.conn.close()
            finally:
                self._record(Event.now(EventKind.HOST_DISCONNECT, SOURCE, peer=self.peer,
                                       reason=reason, frames=self.frames))

    def abandoned(self) -> None:
        """The server cancelled the task before :meth:`run` began: record what it would have."""
        self.conn.close()
        self._record(Event.at(self.accepted, EventKind.HOST_CONNECT, SOURCE, peer=self.peer))
        self._record(Event.now(EventKind.HOST_DISCONNECT, SOURCE, peer=self.peer,
                               reason=self.end_reason, frames=0))

    def end(self, reason: str) -> None:
        """Close the connection now (its fd is free at once); the server then cancels the
        task, which records HOST_DISCONNECT with ``reason``."""
        self.end_reason = reason
        self.conn.close()

    async def _serve_one(self) -> None:
        conn = self.conn
        # one frame per turn: a peer that pipelines frames (or keep-alives) faster than they
        # are served would otherwise never let the loop go to the other connections
        await asyncio.sleep(0)
        try:
            body = await conn.read_frame(self.ctx.max_frame)
        except ConnectionClosed:
            raise _Close("host stopped" if self.ctx.stopping.is_set() else "peer closed") from None
        except ProtocolError as e:
            if self.ctx.stopping.is_set():
                raise _Close("host stopped") from None
            self._protocol_error(str(e))
        except TimeoutError:
            if conn.in_frame:
                self._protocol_error(f"frame incomplete after {conn.frame_timeout_s:g} s "
                                     f"({conn.frame_bytes} bytes received)")
            if self.held:  # the peer waits for the reply it will never get: let it close
                return
            raise _Close("idle timeout") from None
        except OSError as e:
            raise _Close("host stopped" if self.ctx.stopping.is_set()
                         else f"receive failed: {e.strerror or e}") from None
        if not body:  # zero-length keep-alive frame
            return
        rx = conn.last
        assert rx is not None
        self.frames += 1
        self.activity.busy()
        try:
            msg = self.ctx.dialect.decode(body)
        except Exception as e:  # any failure to parse untrusted bytes is the peer's error
            if not isinstance(e, ProtocolError):
                self.ctx.flood.note("decoder failures", logging.WARNING,
                                    "%s decode raised %s (not ProtocolError)",
                                    self.ctx.dialect.name, type(e).__name__)
            self._protocol_error(f"undecodable {len(body)}-byte message: {e}", length=len(body))
        self._reply = None
        self._dispatch(msg, rx, body)
        reply, self._reply = self._reply, None
        if reply is not None:
            tx = await self._send(reply.body, reply.due_mono_ns)
            self.held = False
            self._stamped(tx, reply.kind, reply.terminal, **reply.data)
        self.activity.served()

    def _protocol_error(self, error: str, length: int | None = None,
                        mti: str | None = None) -> NoReturn:
        data: dict[str, Any] = {"peer": self.peer, "error": safe_text(error)}
        if length is not None:
            data["length"] = length
        if mti is not None:
            data["mti"] = mti
        self._record(Event.at(now(), EventKind.PROTOCOL_ERROR, SOURCE, **data))
        self.ctx.flood.note("protocol errors", logging.INFO,
                            "host: protocol error from %s: %s; closing", self.peer, data["error"])
        raise _Close("protocol error")

    # --- dispatch -------------------------------------------------------------------------
    def _dispatch(self, msg: Message, rx: RxStamp, body: bytes) -> None:
        mti = str(msg.get("t", "")) or None
        try:
            if self.ctx.txn is not None and mti in FINANCIAL_MTIS:
                self._financial(self.ctx.txn, msg, rx, body)
                return
            kind = responses.classify(self.ctx.dialect, msg)
            if kind is None:
                raise ProtocolError(f"unexpected message {mti or '(no MTI)'}")
            tid = str(msg.get("41", "")).strip()
            terminal = self.ctx.terminals.get(tid)
            if kind == "signon":
                self._signon(msg, rx, tid, terminal)
            else:
                self._network(msg, rx, kind, terminal[0] if terminal else None)
        except ProtocolError as e:
            self._protocol_error(str(e), length=len(body), mti=mti)

    def _stamped(self, rx: RxStamp, kind: EventKind, terminal: str | None,
                 **data: object) -> None:
        if rx.clock is not ClockSource.KERNEL:
            data["stamp"] = NO_TIMESTAMP
        elif rx.lag_ns is not None:
            data["rx_lag_us"] = rx.lag_ns // 1000
        self._record(Event(rx.mono_ns, rx.wall_ns, kind, SOURCE, terminal,
                           {"peer": self.peer, **data}, rx.clock))

    def _faults(self, name: str | None, message: MessageClass) -> FaultPlan:
        return self.ctx.rules.take_faults(name, message) if name is not None else NO_FAULTS

    def _request(self, rx: RxStamp, kind: EventKind, name: str | None, plan: FaultPlan,
                 **data: object) -> None:
        """Record the request event; under ``close`` end the session unanswered."""
        action = plan.disposition
        if action in ("close", "no_response"):
            data.update(plan.event_data(), answered=False)
        self._stamped(rx, kind, name, **data)
        if action == "close":
            raise _Close("fault close")

    def _answer(self, plan: FaultPlan, rx: RxStamp, reply: Message, mak: bytes | None,
                delay_s: float, kind: EventKind, name: str | None,
                data: dict[str, object]) -> None:
        """Decide what to send for ``reply`` (or what the faults make of it), and when; the
        loop sends it and records the response event."""
        if plan.disposition == "no_response":
            self.held = True
            return
        body = self._encode(reply, mak, bad_mac=plan.bad_mac)
        if plan.disposition == "garbage":
            body = self._garbage(len(body))
            data = {**data, "rc": None, "host_rc": data.get("rc"), "length": len(body)}
        due = rx.mono_ns + int((delay_s + plan.delay_ms / 1000.0) * 1e9)
        self._reply = _Reply(body, due, kind, name, {**data, **plan.event_data()})

    def _signon(self, msg: Message, rx: RxStamp, tid: str,
                terminal: tuple[str, bytes, str] | None) -> None:
        ctx = self.ctx
        key_mode = responses.key_mode(ctx.dialect, msg, terminal[2] if terminal else None)
        name = terminal[0] if terminal else None
        stan = str(msg.get("11", ""))
        plan = self._faults(name, "signon")
        self._request(rx, EventKind.SIGNON_REQ, name, plan, stan=stan, key_mode=key_mode,
                      terminal_id=tid)
        field62 = None
        keys = None
        if terminal is None:
            rc = RC_INVALID_MERCHANT
            ctx.flood.note("sign-ons from unknown terminal ids", logging.WARNING,
                           "host: sign-on from unknown terminal id %r (%s)", tid, self.peer)
        else:
            rc = plan.rc or ctx.rules.rc_for(name, APPROVED)
            if rc == APPROVED and key_mode is not None and responses.carries_keys(ctx.dialect):
                keys = generate_working_keys(key_mode)
                field62 = encode_field62(terminal[1], keys, key_mode)
        reply = responses.signon_response(ctx.dialect, msg, rc=rc, field62=field62,
                                          rrn=ctx.next_rrn())
        if name is not None:  # committed before the reply: a fast terminal may MAC at once
            if rc == APPROVED:
                ctx.states.signed_on(name, keys, batch=responses.batch(ctx.dialect, msg),
                                     key_mode=key_mode, mono_ns=rx.mono_ns)
            else:
                ctx.states.signed_off(name)
        self._answer(plan, rx, reply, None, ctx.rules.processing_delay_s(name),
                     EventKind.SIGNON_RSP, name, {"rc": rc, "stan": stan})

    def _network(self, msg: Message, rx: RxStamp, kind: str, name: str | None) -> None:
        ctx = self.ctx
        mti = str(msg.get("t"))
        stan = str(msg.get("11", ""))
        code = ctx.dialect.network_code(msg)
        plan = self._faults(name, "network")
        self._request(rx, EventKind.NET_REQ, name, plan, mti=mti, stan=stan, code=code,
                      what=kind)
        rc = (plan.rc or ctx.rules.rc_for(name, APPROVED)) if name else RC_INVALID_MERCHANT
        reply = responses.network_response(ctx.dialect, msg, rc=rc, rrn=ctx.next_rrn())
        if kind == "signoff" and name is not None and rc == APPROVED:
            ctx.states.signed_off(name)
        self._answer(plan, rx, reply, None, ctx.rules.processing_delay_s(name),
                     EventKind.NET_RSP, name,
                     {"mti": str(reply.get("t")), "rc": rc, "stan": stan, "code": code})

    def _financial(self, txn: TxnProcessor, msg: Message, rx: RxStamp, body: bytes) -> None:
        """0100 / 0200 / 0400 / 0500: request event (kernel stamp), answer, response event."""
        tid = str(msg.get("41", "")).strip()
        terminal = self.ctx.terminals.get(tid)
        name = terminal[0] if terminal else None
        check_financial(msg)  # malformed: a protocol error, like a bad 08x0
        mti = str(msg.get("t"))
        plan = self._faults(name, _FINANCIAL_CLASS.get(mti, "auth"))
        kind, data = request_event(msg)
        self._request(rx, kind, name, plan, terminal_id=tid, **data)
        outcome = txn.handle(msg, body, name, fault_rc=plan.rc)
        rc_id = plan.rc_id
        if rc_id is not None and not outcome.by_fault:  # answered before the rc applied
            self.ctx.rules.refund_fault(rc_id)
            plan = plan.without("rc")
        self._answer(plan, rx, outcome.reply, outcome.mak,
                     self.ctx.rules.processing_delay_s(name), outcome.event, name,
                     dict(outcome.data))

    # --- I/O --------------------------------------------------------------------------------
    def _encode(self, reply: Message, mak: bytes | None, *, bad_mac: bool = False) -> bytes:
        """The reply's body, MAC'd under ``mak`` if given; with ``bad_mac`` always carrying a
        MAC field that does not verify under ``mak`` (a MAC under a random key)."""
        dialect = self.ctx.dialect
        if not bad_mac:
            return dialect.encode(reply, mak=mak)
        good = dialect.encode(reply, mak=mak)[-8:] if mak is not None else None
        while True:  # a random key's MAC equals the right one once in 2**32 tries
            body = dialect.encode(reply, mak=os.urandom(len(mak) if mak is not None else 16))
            if body[-8:] != good:
                return body

    def _garbage(self, length: int) -> bytes:
        """``length`` random bytes that the dialect cannot decode."""
        junk = os.urandom(length)
        for _ in range(64):  # one try in practice; bounded for a reply too short to fail
            try:
                self.ctx.dialect.decode(junk)
            except Exception:
                break
            junk = os.urandom(length)
        return junk

    async def _send(self, body: bytes, due_mono_ns: int) -> RxStamp:
        """Wait (without holding up other connections) until ``due_mono_ns``, send ``body``
        as one frame; returns the kernel's transmit stamp (thread stamp where TX stamping is
        unavailable)."""
        data = frame(body)
        wait_s = (due_mono_ns - time.monotonic_ns()) / 1e9
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        try:
            return await self.conn.send(data, self.conn.frame_timeout_s)
        except TimeoutError as e:
            raise _Close(f"send failed: {e}") from None
        except OSError as e:
            raise _Close(f"send failed: {e.strerror or e}") from None

    def _record(self, event: Event) -> None:
        try:
            self.ctx.sink.record(event)
        except Exception:  # a broken sink must not take the host down
            log.exception("host: sink refused %s", event.kind)
