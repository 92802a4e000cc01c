"""One clock for the whole rig: CLOCK_MONOTONIC ns plus wall-clock ns.

Every event carries both. Kernel receive timestamps (SO_TIMESTAMPNS) are CLOCK_REALTIME;
:class:`WallToMono` maps them onto the monotonic timeline with an offset refreshed often.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum


class ClockSource(StrEnum):
    """Who took a timestamp (stored with every event)."""

    KERNEL = "kernel"  # SO_TIMESTAMPNS on a socket the rig owns, mapped to monotonic
    THREAD = "thread"  # the thread owning the port/instrument, right after the call returned
    SIM = "sim"  # the virtual lab's own stamp (truth journal)
    DERIVED = "derived"  # computed, not observed (e.g. cycle bookkeeping)


@dataclass(frozen=True, slots=True)
class Stamp:
    mono_ns: int
    wall_ns: int


def now() -> Stamp:
    """Return (mono_ns, wall_ns), taken back to back."""
    return Stamp(time.monotonic_ns(), time.time_ns())


class WallToMono:
    """Maps CLOCK_REALTIME ns to CLOCK_MONOTONIC ns.

    The offset is sampled as the tightest of a few back-to-back reads and refreshed when older
    than ``refresh_s`` (NTP slews the wall clock slowly, so a few seconds is plenty).
    """

    def __init__(self, refresh_s: float = 2.0) -> None:
        self._refresh_ns = int(refresh_s * 1e9)
        self._lock = threading.Lock()
        self._offset = 0
        self._taken = -(1 << 62)
        self._sample()

    def _sample(self) -> None:
        best = None
        for _ in range(5):
            m0 = time.monotonic_ns()
            w = time.time_ns()
            m1 = time.monotonic_ns()
            span = m1 - m0
            if best is None or span < best[0]:
                best = (span, w - (m0 + m1) // 2)
        assert best is not None
        self._offset = best[1]
        self._taken = time.monotonic_ns()

    def offset_ns(self) -> int:
        """wall_ns - mono_ns, refreshed if stale."""
        with self._lock:
            if time.monotonic_ns() - self._taken > self._refresh_ns:
                self._sample()
            return self._offset

    def to_mono(self, wall_ns: int) -> int:
        return wall_ns - self.offset_ns()


class Deadline:
    """A point on the monotonic clock; ``remaining()`` in seconds, never negative."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._end = time.monotonic() + timeout_s

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end
