"""USB relay boards of the "LC Technology / LCUS" family over pyserial.

The board (a CH340 USB-serial chip, 9600 8N1) takes 4-byte frames ``A0 <channel> <0|1> <sum>``
with ``sum = (0xA0 + channel + state) & 0xFF``, e.g. ``A0 01 01 A2`` closes relay 1, and never
answers. So nothing can be acknowledged or queried: :meth:`RelayDriver.set` stamps the moment
``flush()`` returned (the frame left the host), :meth:`RelayDriver.switch` brackets the write
and the flush in a :class:`~rig.drivers.power_edge.PowerEdge` (the contact closes later still:
the frame's time on the line plus the relay's operate time), and :meth:`RelayDriver.commanded`
reports what this driver last commanded, not a read-back. ``RelayConfig.address`` is unused by this protocol
(the boards have no address). Ports are pyserial URLs: device paths, ``socket://``,
``rfc2217://``, ``loop://``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import serial

from ..config import RelayConfig
from ..core.clock import ClockSource, Stamp, now
from ..core.errors import InstrumentError, TestError
from ..timeline.events import Event, EventKind, Sink
from .power_edge import PowerEdge

log = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 2.0


class SerialPort(Protocol):
    """The part of a pyserial port the driver uses."""

    def write(self, data: bytes) -> int | None: ...
    def flush(self) -> Any: ...
    def close(self) -> Any: ...


def frame(channel: int, on: bool) -> bytes:
    """The LCUS frame switching ``channel`` (1-based) on or off."""
    state = 1 if on else 0
    return bytes((0xA0, channel, state, (0xA0 + channel + state) & 0xFF))


class RelayDriver:
    """One LCUS relay board; thread-safe. ``opener`` replaces pyserial (tests)."""

    def __init__(self, name: str, cfg: RelayConfig, sink: Sink, *,
                 opener: Callable[[], SerialPort] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self._sink = sink
        self._opener = opener or self._open_port
        self._lock = threading.Lock()
        self._port: SerialPort | None = None
        self._commanded: dict[int, bool] = {}

    @property
    def who(self) -> str:
        return f"{self.name} ({self.cfg.port})"

    def open(self) -> RelayDriver:
        with self._lock:
            if self._port is None:
                self._connect()
        return self

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> RelayDriver:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_port(self) -> SerialPort:
        port = serial.serial_for_url(self.cfg.port, baudrate=self.cfg.baudrate, timeout=1.0,
                                     write_timeout=WRITE_TIMEOUT_S)
        return cast(SerialPort, port)

    def _connect(self) -> None:
        try:
            self._port = self._opener()
        except (serial.SerialException, OSError, ValueError) as e:
            raise InstrumentError(f"{self.who}: cannot open: {e}; is the relay board plugged in "
                                  f"and the port right?") from e

    def _drop(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception as e:
                log.debug("%s: closing: %s", self.who, e)

    def set(self, ch: int, on: bool) -> Stamp:
        """Switch relay ``ch``; returns the stamp taken right after ``flush()`` returned."""
        return self.switch(ch, on).stamp

    def switch(self, ch: int, on: bool) -> PowerEdge:
        """Switch relay ``ch``; the :class:`PowerEdge` from right before the frame's write to
        right after ``flush()`` returned (thread stamps; the stamp is the flush's)."""
        if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= self.cfg.channels:
            raise TestError(f"{self.name}: no relay {ch!r} (it has 1..{self.cfg.channels})")
        data = frame(ch, on)
        with self._lock:
            for attempt in (1, 2):
                if self._port is None:
                    self._connect()
                port = self._port
                assert port is not None
                try:
                    tx_ns = time.monotonic_ns()
                    written = port.write(data)
                    if written is not None and written != len(data):
                        raise serial.SerialTimeoutException(f"wrote {written} of {len(data)} bytes")
                    port.flush()
                except (serial.SerialException, OSError) as e:
                    problem = f"cannot send {data.hex(' ')} ({e})"
                    self._sink.record(Event.now(EventKind.RELAY_IO, self.name, channel=ch,
                                                on=bool(on), frame=data.hex(), error=problem))
                    self._drop()
                    if attempt == 2:
                        raise InstrumentError(f"{self.who}: {problem}, also after reopening; is "
                                              f"the relay board plugged in and the port right?") from e
                    log.warning("%s: %s; reopening and retrying", self.who, problem)
                    continue
                stamp = now()
                self._commanded[ch] = bool(on)
                self._sink.record(Event.at(stamp, EventKind.RELAY_IO, self.name, channel=ch,
                                           on=bool(on), frame=data.hex()))
                log.debug("%s: relay %d %s", self.name, ch, "on" if on else "off")
                return PowerEdge.acknowledged(tx_ns, stamp, ClockSource.THREAD)
        raise AssertionError("unreachable")

    def commanded(self, ch: int) -> bool | None:
        """The state this driver last commanded for ``ch`` (None: never); the board has no query."""
        return self._commanded.get(ch)
