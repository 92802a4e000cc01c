"""ECR port driver: the terminal's cash-register link, as its profile's ECR protocol says.

Two protocols carry the same commands (``LOGIN``, ``STATUS``, ``SIGNON``, ``SALE <minor>``…,
answered ``OK …`` / ``ERR <code> <text>``):

- ``line``: one text line each way (``\r\n``), the virtual terminal's native link;
- ``framed``: ``STX data ETX LRC`` (:mod:`rig.core.ecrframe`), each frame answered ``ACK`` /
  ``NAK``; a frame is sent again after a ``NAK`` or when no ``ACK`` comes within ``ack_s``
  (``retries`` times), a reply with a bad LRC is ``NAK``-ed so the terminal sends it again.

One command at a time (a lock), each exchange stamped and recorded as an ``ecr_io`` event
(``attempts``: how many times the command frame was sent). Replies of any bytes are safe:
undecodable bytes are replaced, line noise between frames skipped.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import serial

from ..core import ecrframe
from ..core.clock import Deadline, Stamp, now
from ..core.errors import InstrumentError, TerminalError
from ..core.redact import redact_text
from ..timeline.events import Event, EventKind, Sink


class EcrDriver:
    def __init__(self, terminal: str, url: str, sink: Sink, timeout_s: float = 3.0, *,
                 protocol: str = "line", retries: int = 3, ack_s: float = 0.5) -> None:
        if protocol not in ("line", "framed"):
            raise ValueError(f"{terminal}: ECR protocol {protocol!r}: line or framed")
        self.terminal = terminal
        self.url = url
        self.sink = sink
        self.timeout_s = timeout_s
        self.protocol = protocol
        self.retries = retries
        self.ack_s = ack_s
        self.source = f"{terminal}.ecr"
        self._lock = threading.Lock()
        self._port: serial.SerialBase | None = None

    def _ensure(self) -> serial.SerialBase:
        if self._port is None or not self._port.is_open:
            try:
                self._port = serial.serial_for_url(self.url, baudrate=9600, timeout=0.2)
            except (serial.SerialException, OSError, ValueError) as e:
                raise InstrumentError(f"{self.source} ({self.url}): cannot open: {e}") from e
            sock = getattr(self._port, "_socket", None)  # socket:// (terminal servers, the lab)
            if isinstance(sock, socket.socket):
                # a framed exchange ends with our ACK and the next command follows it: without
                # this, Nagle holds the command until the peer's delayed ACK (~40 ms)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._port

    def command(self, line: str, secret: str | None = None) -> str:
        """Send one command, return the reply text after ``OK``; ``ERR`` raises TerminalError."""
        shown = line.replace(secret, "****") if secret else line
        with self._lock:
            port = self._ensure()
            try:
                port.reset_input_buffer()
                if self.protocol == "framed":
                    sent, reply, attempts = self._framed(port, line, shown)
                else:
                    port.write(line.encode() + b"\r\n")
                    port.flush()
                    sent, attempts = now(), 1
                    reply = self._readline(port)
            except (serial.SerialException, OSError) as e:
                self.close()
                raise InstrumentError(f"{self.source} ({self.url}): {shown!r} failed: {e}") from e
            got = now()
        extra = {"attempts": attempts} if self.protocol == "framed" else {}
        self.sink.record(Event.at(sent, EventKind.ECR_IO, self.source, self.terminal,
                                  cmd=redact_text(shown), reply=redact_text(reply),
                                  reply_mono_ns=got.mono_ns, **extra))
        if reply.startswith("OK"):
            return reply[2:].strip()
        raise TerminalError(f"{self.terminal}: ECR {shown!r} answered {reply!r}")

    def _readline(self, port: serial.SerialBase) -> str:
        deadline = Deadline(self.timeout_s)
        buf = b""
        while not deadline.expired:
            buf += port.read(max(1, port.in_waiting))
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        raise InstrumentError(
            f"{self.source} ({self.url}): no reply within {self.timeout_s} s; is the terminal's "
            "ECR port connected?"
        )

    def _framed(self, port: serial.SerialBase, line: str, shown: str) -> tuple[Stamp, str, int]:
        """Send ``line`` framed until ACKed, then read the reply frame (ACKing it, NAKing a bad
        one); (stamp of the ACKed send, reply text, sends)."""
        frame = ecrframe.encode(line)
        decoder = ecrframe.Decoder()
        pending: list[ecrframe.Item] = []
        attempt = 0
        while True:
            attempt += 1
            port.write(frame)
            port.flush()
            sent = now()
            got = self._next(port, decoder, pending, self.ack_s, want_ack=True)
            if got == ecrframe.ACK:
                break
            if attempt > self.retries:
                raise InstrumentError(
                    f"{self.source} ({self.url}): {shown!r} not acknowledged after {attempt} "
                    f"sends (NAK or no ACK within {self.ack_s} s); is the ECR protocol 'framed' "
                    "right?")
        deadline = Deadline(self.timeout_s)
        while True:
            item = self._next(port, decoder, pending, max(0.01, deadline.remaining()),
                              want_ack=False)
            if not isinstance(item, ecrframe.Frame):
                raise InstrumentError(f"{self.source} ({self.url}): no reply frame within "
                                      f"{self.timeout_s} s to {shown!r}")
            if item.ok:
                port.write(bytes([ecrframe.ACK]))
                port.flush()
                return sent, item.text.strip(), attempt
            port.write(bytes([ecrframe.NAK]))  # bad LRC: the terminal sends it again
            port.flush()
            if deadline.expired:
                raise InstrumentError(f"{self.source} ({self.url}): only corrupt reply frames "
                                      f"to {shown!r} within {self.timeout_s} s")

    @staticmethod
    def _next(port: serial.SerialBase, decoder: ecrframe.Decoder, pending: list[ecrframe.Item],
              timeout_s: float, want_ack: bool) -> ecrframe.Item | None:
        """The next ACK / NAK (``want_ack``) or frame within ``timeout_s``; None on time-out."""
        deadline = Deadline(timeout_s)
        while True:
            for i, item in enumerate(pending):
                if want_ack != isinstance(item, ecrframe.Frame):
                    del pending[i]  # the reply frame may come in the same read as the ACK
                    return item
            if deadline.expired:
                return None
            pending.extend(decoder.feed(port.read(max(1, port.in_waiting))))

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            finally:
                self._port = None
