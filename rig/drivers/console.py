"""Console log reader: one pyserial port per terminal, a reader thread, lines stamped on arrival.

Works with device paths, ``socket://`` (the virtual lab, terminal servers) and ``rfc2217://``.
Each line becomes one event whose kind the terminal profile decides (:mod:`rig.terminal_profiles`);
the stamp is taken right after the read that delivered the line's newline returned. Bytes are
decoded with the profile's encoding (GBK consoles exist), undecodable bytes replaced, so any
byte stream is safe to read. A line the profile reads as an event keeps, for a model that does
not print canonical lines, the canonical form in ``line`` (what the figures read) and the line
as printed in ``raw``.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Iterator

import serial

from ..core.clock import ClockSource, Stamp, WallToMono, now
from ..core.netstamp import ANC_SPACE, enable_rx_timestamps, kernel_wall_ns
from ..core.redact import redact_text
from ..terminal_profiles import TerminalProfile
from ..timeline.events import Event, EventKind, Sink
from .profiles import classify

log = logging.getLogger(__name__)


class ConsoleReader:
    def __init__(self, terminal: str, url: str, profile: TerminalProfile, sink: Sink,
                 baudrate: int = 115200, reconnect_s: float = 0.5) -> None:
        self.terminal = terminal
        self.url = url
        self.profile = profile
        self.sink = sink
        self.baudrate = baudrate
        self.reconnect_s = reconnect_s
        self.source = f"{terminal}.console"
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._port: serial.SerialBase | None = None
        self._w2m = WallToMono()
        self._thread = threading.Thread(target=self._run, name=f"console-{terminal}", daemon=True)

    def start(self, wait_s: float = 5.0) -> bool:
        """Start reading; returns whether the port opened within ``wait_s``."""
        self._thread.start()
        return self._connected.wait(wait_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the port to be open; whether it is."""
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        port = self._port
        if port is not None:
            try:
                port.close()
            except Exception:  # closing a dead port
                pass
        self._thread.join(timeout=2)

    def _open(self) -> serial.SerialBase:
        return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0.2)

    def _run(self) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                self._port = self._open()
            except (serial.SerialException, OSError, ValueError) as e:
                if not warned:
                    self.sink.record(Event.now(EventKind.ERROR, self.source, self.terminal,
                                               error=f"console {self.url}: cannot open: {e}"))
                    warned = True
                self._stop.wait(self.reconnect_s)
                continue
            warned = False
            self._connected.set()
            try:
                self._read(self._port)
            except (serial.SerialException, OSError, AttributeError, TypeError, ValueError) as e:
                # AttributeError/TypeError: pyserial's port was closed under us by stop()
                if not self._stop.is_set():
                    self.sink.record(Event.now(EventKind.ERROR, self.source, self.terminal,
                                               error=f"console {self.url}: connection lost: {e}"))
            finally:
                self._connected.clear()
                try:
                    self._port.close()
                except Exception:
                    pass
            self._stop.wait(self.reconnect_s)

    def _chunks(self, port: serial.SerialBase) -> Iterator[tuple[bytes, Stamp, ClockSource]]:
        """Yield (bytes, stamp, clock) as they arrive; b"" on an idle poll."""
        sock = getattr(port, "_socket", None)
        if isinstance(sock, socket.socket) and enable_rx_timestamps(sock):
            # pyserial's socket:// handler holds a TCP socket the rig owns: read it with
            # recvmsg so each chunk carries the kernel's receive time (DESIGN §4), not the
            # time this thread got the GIL back.
            while not self._stop.is_set():
                if not select.select([sock], [], [], 0.2)[0]:
                    yield b"", now(), ClockSource.THREAD
                    continue
                data, anc, flags, _ = sock.recvmsg(65536, ANC_SPACE)
                if not data:
                    raise serial.SerialException("connection closed by peer")
                wall = None if flags & socket.MSG_CTRUNC else kernel_wall_ns(anc)
                if wall is None:
                    yield data, now(), ClockSource.THREAD
                else:
                    yield data, Stamp(self._w2m.to_mono(wall), wall), ClockSource.KERNEL
        while not self._stop.is_set():  # a real serial line: stamp when read() returned
            chunk = port.read(max(1, port.in_waiting))
            yield chunk, now(), ClockSource.THREAD

    def _read(self, port: serial.SerialBase) -> None:
        buf = b""
        for chunk, stamp, clock in self._chunks(port):
            if not chunk:
                continue
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(self.profile.encoding, "replace").strip().replace("\x00", "")
                if line:
                    kind, canonical = classify(self.profile, line)
                    data = {"line": redact_text(line)} if canonical is None else {
                        "line": redact_text(canonical), "raw": redact_text(line)}
                    self.sink.record(Event.at(stamp, kind, self.source, self.terminal,
                                              clock=clock, **data))
            if len(buf) > 65536:  # a console that never sends a newline
                buf = b""
