"""The host's open connections, and which one to evict when a new one arrives at the cap.

A connection is *busy* from the moment a whole request has arrived until its reply is sent
(or withheld): it is never evicted. Otherwise it is *idle* — waiting for a peer that may be
a terminal between requests, an idle socket, or a half-sent frame. At the cap the oldest
idle connection that has never had a request served goes first (by accept time), then the
idle connection whose last request is the oldest; when every connection is busy the new
one is refused. No scan: both orders are kept as they change (O(1) per step).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ConnTable(Generic[T]):
    """Connections by id, with the eviction order; not thread-safe (the host's loop owns it)."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"max_connections must be >= 1, got {cap}")
        self.cap = cap
        self._all: dict[int, T] = {}
        self._fresh: OrderedDict[int, T] = OrderedDict()  # idle, never served: by accept time
        self._served: OrderedDict[int, T] = OrderedDict()  # idle, served: by last request

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._all.values()))

    @property
    def full(self) -> bool:
        return len(self._all) >= self.cap

    def add(self, cid: int, conn: T) -> None:
        """A new connection: idle, never served."""
        self._all[cid] = conn
        self._fresh[cid] = conn

    def remove(self, cid: int) -> None:
        self._all.pop(cid, None)
        self._fresh.pop(cid, None)
        self._served.pop(cid, None)

    def busy(self, cid: int) -> None:
        """A whole request arrived on ``cid``: not evictable until :meth:`served`."""
        self._fresh.pop(cid, None)
        self._served.pop(cid, None)

    def served(self, cid: int) -> None:
        """``cid`` handled a request and waits for the next: idle again, newest served."""
        conn = self._all.get(cid)
        if conn is not None:
            self._served.pop(cid, None)
            self._served[cid] = conn

    def victim(self) -> tuple[int, T] | None:
        """The connection to evict (it stays in the table until removed), or None."""
        for order in (self._fresh, self._served):
            if order:
                return next(iter(order.items()))
        return None
