"""Leases: exclusive use of terminals by one client session, recorded in the store.

A lease is held by a session until released, or until the session ends (its client closed,
died — its PID gone — or stopped sending heartbeats). A call on a terminal that another
session holds is refused with a :class:`~rig.core.errors.LeaseError` that names the holder,
its note and since when.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from ..core.errors import LeaseError, TestError
from ..timeline.store import Store


@dataclass
class Lease:
    id: int
    holder: str  # session id
    who: str  # the holder as people read it: "alice@host pid 123 (notebook)"
    terminals: tuple[str, ...]
    note: str | None
    since: float = field(default_factory=time.time)
    implicit: bool = False  # taken by a single call for its duration
    rows: list[int] = field(default_factory=list)  # store rows, one per terminal

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "holder": self.holder, "who": self.who,
                "terminals": list(self.terminals), "note": self.note, "since": self.since,
                "implicit": self.implicit}


class Leases:
    def __init__(self, store: Store, terminals: list[str]) -> None:
        self._store = store
        self._terminals = set(terminals)
        self._lock = threading.Lock()
        self._by_terminal: dict[str, Lease] = {}
        self._ids = itertools.count(1)

    def holder(self, terminal: str) -> Lease | None:
        with self._lock:
            return self._by_terminal.get(terminal)

    def all(self) -> list[Lease]:
        with self._lock:
            return list({id(x): x for x in self._by_terminal.values()}.values())

    def _refuse(self, terminal: str, lease: Lease) -> LeaseError:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.since))
        note = f" ({lease.note})" if lease.note else ""
        what = "a call of" if lease.implicit else "leased by"
        return LeaseError(f"{terminal} is {what} {lease.who}{note} since {since}; "
                          f"try again when it is released")

    def acquire(self, holder: str, who: str, terminals: list[str], note: str | None = None,
                run_id: int | None = None, implicit: bool = False) -> Lease:
        """Take every terminal or none; a terminal the holder leases already is fine."""
        unknown = [t for t in terminals if t not in self._terminals]
        if unknown:
            raise TestError(f"unknown terminal(s) {', '.join(unknown)}; this lab has "
                            f"{', '.join(sorted(self._terminals))}")
        with self._lock:
            for t in terminals:
                cur = self._by_terminal.get(t)
                if cur is not None and cur.holder != holder:
                    raise self._refuse(t, cur)
            free = [t for t in terminals if t not in self._by_terminal]
            lease = Lease(next(self._ids), holder, who, tuple(free), note, implicit=implicit)
            for t in free:
                self._by_terminal[t] = lease
        if not implicit:
            lease.rows = [self._store.add_lease(t, who, run_id, note) for t in free]
        return lease

    def check(self, holder: str, terminals: list[str]) -> None:
        with self._lock:
            for t in terminals:
                cur = self._by_terminal.get(t)
                if cur is not None and cur.holder != holder:
                    raise self._refuse(t, cur)

    def release(self, lease: Lease, why: str = "released") -> None:
        with self._lock:
            for t in lease.terminals:
                if self._by_terminal.get(t) is lease:
                    del self._by_terminal[t]
        for row in lease.rows:
            self._store.end_lease(row, why)

    def release_holder(self, holder: str, why: str) -> list[str]:
        """Release every lease of ``holder``; returns the terminals freed."""
        with self._lock:
            mine = {id(x): x for x in self._by_terminal.values() if x.holder == holder}
        freed: list[str] = []
        for lease in mine.values():
            self.release(lease, why)
            freed.extend(lease.terminals)
        return freed
