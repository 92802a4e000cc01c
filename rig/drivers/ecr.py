"""ECR port driver: the virtual terminal's line protocol (``LOGIN``, ``STATUS``, ``SIGNON``…).

One command at a time (a lock), each exchange stamped and recorded as an ``ecr_io`` event.
"""

from __future__ import annotations

import threading

import serial

from ..core.clock import Deadline, now
from ..core.errors import InstrumentError, TerminalError
from ..core.redact import redact_text
from ..timeline.events import Event, EventKind, Sink


class EcrDriver:
    def __init__(self, terminal: str, url: str, sink: Sink, timeout_s: float = 3.0) -> None:
        self.terminal = terminal
        self.url = url
        self.sink = sink
        self.timeout_s = timeout_s
        self.source = f"{terminal}.ecr"
        self._lock = threading.Lock()
        self._port: serial.SerialBase | None = None

    def _ensure(self) -> serial.SerialBase:
        if self._port is None or not self._port.is_open:
            try:
                self._port = serial.serial_for_url(self.url, baudrate=9600, timeout=0.2)
            except (serial.SerialException, OSError, ValueError) as e:
                raise InstrumentError(f"{self.source} ({self.url}): cannot open: {e}") from e
        return self._port

    def command(self, line: str, secret: str | None = None) -> str:
        """Send one command, return the reply text after ``OK``; ``ERR`` raises TerminalError."""
        shown = line.replace(secret, "****") if secret else line
        with self._lock:
            port = self._ensure()
            try:
                port.reset_input_buffer()
                port.write(line.encode() + b"\r\n")
                port.flush()
                sent = now()
                reply = self._readline(port)
            except (serial.SerialException, OSError) as e:
                self.close()
                raise InstrumentError(f"{self.source} ({self.url}): {shown!r} failed: {e}") from e
            got = now()
        self.sink.record(Event.at(sent, EventKind.ECR_IO, self.source, self.terminal,
                                  cmd=redact_text(shown), reply=redact_text(reply),
                                  reply_mono_ns=got.mono_ns))
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

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            finally:
                self._port = None
