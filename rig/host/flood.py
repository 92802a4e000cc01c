"""What hostile or broken peers do, logged once per kind and interval, not once per connection.

The first occurrence of a kind (protocol error, eviction, refusal, accept failure…) in an
interval is logged at once, with its detail; the others of that interval are counted and
summed up in one line when the interval ends (:meth:`FloodLog.flush`, called by the host on
a timer and at stop). Events are unaffected: every connection still records its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    start: float
    level: int
    suppressed: int = 0
    last: str = ""


class FloodLog:
    """Rate-limits log lines by kind: at most one line per kind and ``interval_s``, plus a
    summary (``"<n> more <kind> in the last <s> s (last: …)"``) of what it held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, *,
                 prefix: str = "host", clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"flood log interval must be > 0 s, got {interval_s}")
        self.log = logger
        self.interval_s = interval_s
        self.prefix = prefix
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def note(self, kind: str, level: int, msg: str, *args: object) -> None:
        """One occurrence of ``kind``: logged now (``msg % args``) if it is the first of its
        interval, else counted for the summary."""
        t = self._clock()
        with self._lock:
            w = self._windows.get(kind)
            if w is not None and t - w.start < self.interval_s:
                w.suppressed += 1
                w.last = msg % args if args else msg
                return
            summary = self._summary(kind, w, t) if w is not None else None
            self._windows[kind] = _Window(t, level)
        if summary is not None:
            self.log.log(*summary)
        self.log.log(level, msg, *args)

    def flush(self, force: bool = False) -> None:
        """Log the summary of every interval that has ended (``force``: of every interval)."""
        t = self._clock()
        out = []
        with self._lock:
            for kind, w in list(self._windows.items()):
                if force or t - w.start >= self.interval_s:
                    del self._windows[kind]
                    summary = self._summary(kind, w, t)
                    if summary is not None:
                        out.append(summary)
        for summary in out:
            self.log.log(*summary)

    def _summary(self, kind: str, w: _Window, t: float) -> tuple[int, str, int, str, float,
                                                                  str] | None:
        if not w.suppressed:
            return None
        span = min(t - w.start, self.interval_s) if t > w.start else 0.0
        return (w.level, f"{self.prefix}: %d more %s in the last %.1f s (last: %s)",
                w.suppressed, kind, max(span, 0.0), w.last)
