"""The virtual lab's truth journal: what each simulated device really did, and when.

One JSON object per line, flushed per line, so a benchmark (or a crash post-mortem) can read
it while the lab runs: ``{"mono_ns", "wall_ns", "terminal", "what", ...data, "clock"}``. Stamps
are taken by the caller at the I/O boundary; the journal never re-stamps. ``clock`` says who
took the stamp: ``kernel_rx`` / ``kernel_tx`` (the kernel's receive / transmit stamp at one of
the lab's sockets, :mod:`rig.sim.wire`), ``thread`` (the lab's loop thread, where no socket
was crossed or the kernel gave no stamp), ``sim`` (when the simulated world says a motion
ended, :mod:`rig.sim.world`). ``mono_ns`` is CLOCK_MONOTONIC; a kernel stamp's ``wall_ns`` is the
kernel's CLOCK_REALTIME and its ``mono_ns`` that minus the lab's wall-mono offset.
Entries are also kept in memory (bounded) for tests, which can :meth:`TruthJournal.wait_for`
an entry.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..core.clock import now

Entry = dict[str, Any]
# what a lab's line-level I/O writes (one entry per line crossing a port); tests that compare
# event sequences leave these out
LINE_KINDS = ("console", "ecr_cmd", "ecr_reply", "robot_line")


class Stamped(Protocol):
    @property
    def mono_ns(self) -> int: ...

    @property
    def wall_ns(self) -> int: ...


class TruthJournal:
    """Thread-safe JSONL writer (append mode) plus an in-memory copy of the last ``keep`` entries.

    ``path=None`` keeps entries in memory only.
    """

    def __init__(self, path: str | os.PathLike[str] | None, keep: int = 100_000) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Condition()
        self._entries: deque[Entry] = deque(maxlen=keep)
        self._count = 0  # entries ever recorded (the deque may have dropped old ones)
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")

    def record(self, terminal: str | None, what: str, stamp: Stamped | None = None,
               **data: Any) -> Entry:
        """Append one entry; ``stamp`` defaults to now (take it at the I/O boundary instead).

        ``clock`` comes from ``data``, else from the stamp (a :class:`rig.sim.wire.WireStamp`
        knows its clock), else it is ``thread`` when the journal stamped.
        """
        st: Stamped = stamp or now()
        entry: Entry = {"mono_ns": st.mono_ns, "wall_ns": st.wall_ns, "terminal": terminal,
                        "what": what, **data}
        clock = getattr(st, "clock", None) or ("thread" if stamp is None else None)
        if clock is not None:
            entry.setdefault("clock", str(clock))
        line = json.dumps(entry, separators=(",", ":"), default=str)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            self._entries.append(entry)
            self._count += 1
            self._lock.notify_all()
        return entry

    def entries(self, terminal: str | None = None, what: str | None = None) -> list[Entry]:
        """A copy of the in-memory entries, optionally filtered."""
        with self._lock:
            items = list(self._entries)
        return [e for e in items
                if (terminal is None or e["terminal"] == terminal) and (what is None or e["what"] == what)]

    def wait_for(self, match: Callable[[Entry], bool], timeout: float,
                 since_mono_ns: int = 0) -> Entry | None:
        """First entry (at or after ``since_mono_ns``) matching ``match``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            fresh = list(self._entries)
            while True:
                for e in fresh:
                    if e["mono_ns"] >= since_mono_ns and match(e):
                        return e
                seen = self._count
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
                new = min(self._count - seen, len(self._entries))
                fresh = list(self._entries)[len(self._entries) - new:] if new else []

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_journal(path: str | os.PathLike[str]) -> list[Entry]:
    """All entries of a journal file, in file order (a torn last line is skipped)."""
    out: list[Entry] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
