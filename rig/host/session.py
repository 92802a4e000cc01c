"""One terminal connection to the acquirer host: read frames, answer network and (CUP)
financial messages (decided by :mod:`rig.host.txn`), record.

Runs in its own thread on a blocking socket. Each request is stamped with the kernel receive
time of its last TCP segment (see :mod:`rig.host.timestamps`); each response right after
``sendall`` returned. A protocol error is recorded and closes this connection only.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from rig.clock import ClockSource, Stamp, WallToMono, now
from rig.errors import ProtocolError
from rig.events import Event, EventKind, Sink
from rig.iso8583.cup_txn import FINANCIAL_MTIS, check_financial
from rig.iso8583.dialects import Dialect, Message
from rig.iso8583.framing import ConnectionClosed, frame, read_frame
from rig.iso8583.keys import encode_field62, generate_working_keys
from rig.redact import redact_text

from ..netstamp import RxStamp, StampedReader, send_stamped
from . import responses
from .rules import APPROVED, ResponseRules
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
    txn: TxnProcessor | None = None  # financial requests (CUP only)


class _Close(Exception):
    """End this session; ``reason`` goes into HOST_DISCONNECT."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Session:
    """Serves one accepted connection until the peer closes, an error, or host stop."""

    def __init__(self, ctx: HostContext, sock: socket.socket, peer: str,
                 accepted: Stamp) -> None:
        self.ctx = ctx
        self.accepted = accepted
        self.sock = sock
        self.peer = peer
        self.reader = StampedReader(sock, ctx.mapper, idle_timeout_s=ctx.idle_timeout_s,
                                    frame_timeout_s=ctx.frame_timeout_s)
        self.frames = 0

    # --- loop -----------------------------------------------------------------------------
    def run(self) -> None:
        # stamped when accept() returned: the kernel may have queued the first request earlier
        self._record(Event.at(self.accepted, EventKind.HOST_CONNECT, SOURCE, peer=self.peer))
        reason = "peer closed"
        try:
            while True:
                self._serve_one()
        except _Close as c:
            reason = c.reason
        except Exception as e:  # a host bug: say so, keep the other connections serving
            log.exception("host session %s failed", self.peer)
            reason = "host error"
            self._record(Event.now(EventKind.ERROR, SOURCE, peer=self.peer,
                                   error=safe_text(f"{type(e).__name__}: {e}")))
        finally:
            try:
                self.sock.close()
            finally:
                self._record(Event.now(EventKind.HOST_DISCONNECT, SOURCE, peer=self.peer,
                                       reason=reason, frames=self.frames))

    def _serve_one(self) -> None:
        self.reader.begin_frame()
        try:
            body = read_frame(self.reader.read_exactly, self.ctx.max_frame)
        except ConnectionClosed:
            raise _Close("host stopped" if self.ctx.stopping.is_set() else "peer closed") from None
        except ProtocolError as e:
            if self.ctx.stopping.is_set():
                raise _Close("host stopped") from None
            self._protocol_error(str(e))
        except TimeoutError:
            if self.reader.in_frame:
                self._protocol_error(f"frame incomplete after {self.ctx.frame_timeout_s:g} s "
                                     f"({self.reader.frame_bytes} bytes received)")
            raise _Close("idle timeout") from None
        except OSError as e:
            raise _Close("host stopped" if self.ctx.stopping.is_set()
                         else f"receive failed: {e.strerror or e}") from None
        if not body:  # zero-length keep-alive frame
            return
        rx = self.reader.last
        assert rx is not None
        self.frames += 1
        try:
            msg = self.ctx.dialect.decode(body)
        except Exception as e:  # any failure to parse untrusted bytes is the peer's error
            if not isinstance(e, ProtocolError):
                log.warning("%s decode raised %s (not ProtocolError)",
                            self.ctx.dialect.name, type(e).__name__)
            self._protocol_error(f"undecodable {len(body)}-byte message: {e}", length=len(body))
        self._dispatch(msg, rx, body)

    def _protocol_error(self, error: str, length: int | None = None,
                        mti: str | None = None) -> NoReturn:
        data: dict[str, Any] = {"peer": self.peer, "error": safe_text(error)}
        if length is not None:
            data["length"] = length
        if mti is not None:
            data["mti"] = mti
        self._record(Event.at(now(), EventKind.PROTOCOL_ERROR, SOURCE, **data))
        log.info("host: protocol error from %s: %s; closing", self.peer, data["error"])
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

    def _signon(self, msg: Message, rx: RxStamp, tid: str,
                terminal: tuple[str, bytes, str] | None) -> None:
        ctx = self.ctx
        key_mode = responses.key_mode(ctx.dialect, msg, terminal[2] if terminal else None)
        name = terminal[0] if terminal else None
        stan = str(msg.get("11", ""))
        self._stamped(rx, EventKind.SIGNON_REQ, name, stan=stan, key_mode=key_mode,
                      terminal_id=tid)
        field62 = None
        keys = None
        if terminal is None:
            rc = RC_INVALID_MERCHANT
            log.warning("host: sign-on from unknown terminal id %r (%s)", tid, self.peer)
        else:
            rc = ctx.rules.rc_for(name, APPROVED)
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
        tx = self._send(reply, rx, ctx.rules.processing_delay_s(name))
        self._stamped(tx, EventKind.SIGNON_RSP, name, peer=self.peer, rc=rc, stan=stan)

    def _network(self, msg: Message, rx: RxStamp, kind: str, name: str | None) -> None:
        ctx = self.ctx
        mti = str(msg.get("t"))
        stan = str(msg.get("11", ""))
        code = ctx.dialect.network_code(msg)
        self._stamped(rx, EventKind.NET_REQ, name, mti=mti, stan=stan, code=code, what=kind)
        rc = ctx.rules.rc_for(name, APPROVED) if name else RC_INVALID_MERCHANT
        reply = responses.network_response(ctx.dialect, msg, rc=rc, rrn=ctx.next_rrn())
        if kind == "signoff" and name is not None and rc == APPROVED:
            ctx.states.signed_off(name)
        tx = self._send(reply, rx, ctx.rules.processing_delay_s(name))
        self._stamped(tx, EventKind.NET_RSP, name, peer=self.peer, mti=str(reply.get("t")),
                      rc=rc, stan=stan, code=code)

    def _financial(self, txn: TxnProcessor, msg: Message, rx: RxStamp, body: bytes) -> None:
        """0100 / 0200 / 0400 / 0500: request event (kernel stamp), answer, response event."""
        tid = str(msg.get("41", "")).strip()
        terminal = self.ctx.terminals.get(tid)
        name = terminal[0] if terminal else None
        check_financial(msg)  # malformed: a protocol error, like a bad 08x0
        kind, data = request_event(msg)
        self._stamped(rx, kind, name, terminal_id=tid, **data)
        outcome = txn.handle(msg, body, name)
        tx = self._send(outcome.reply, rx, self.ctx.rules.processing_delay_s(name),
                        mak=outcome.mak)
        self._stamped(tx, outcome.event, name, peer=self.peer, **outcome.data)

    # --- I/O --------------------------------------------------------------------------------
    def _send(self, reply: Message, rx: RxStamp, delay_s: float,
              mak: bytes | None = None) -> RxStamp:
        """Encode (MAC'd under ``mak`` if given), wait until ``delay_s`` after the request
        arrived, send the whole frame; returns the kernel's transmit stamp (thread stamp
        after ``sendall`` where TX stamping is unavailable)."""
        data = frame(self.ctx.dialect.encode(reply, mak=mak))
        wait_s = (rx.mono_ns + int(delay_s * 1e9) - time.monotonic_ns()) / 1e9
        if wait_s > 0 and self.ctx.stopping.wait(wait_s):
            raise _Close("host stopped")
        try:
            self.sock.settimeout(self.ctx.frame_timeout_s)
            return send_stamped(self.sock, data, self.ctx.mapper)
        except OSError as e:
            raise _Close(f"send failed: {e.strerror or e}") from None

    def _record(self, event: Event) -> None:
        try:
            self.ctx.sink.record(event)
        except Exception:  # a broken sink must not take the host down
            log.exception("host: sink refused %s", event.kind)
