"""Expected-protocol testing of instrument drivers (after PyMeasure's ``expected_protocol``).

A :class:`FakeResource` stands in for a pyvisa message-based resource and checks the driver's
traffic against a transcript of ``(write, reply)`` pairs: every write must be expected, in order;
a reply (``str``) must be read before the next write; ``None`` means nothing comes back; an
exception instance as the reply is raised by ``read()`` (a timeout, a dropped socket). The entry
:data:`REOPEN` says the driver must (re)open the resource at that point. At the end every
expected write must have happened and nothing may be left unread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

REOPEN = ("<reopen>", None)

Exchange = tuple[str, "str | BaseException | None"]
D = TypeVar("D")


class FakeResource:
    """A scripted pyvisa-like resource: ``write``, ``read``, ``close`` and ``open`` (the opener)."""

    def __init__(self, exchanges: Sequence[Exchange]) -> None:
        self._pending: deque[Exchange] = deque(exchanges)
        self._unread: str | BaseException | None = None
        self._last = ""
        self.opened = 0
        self.closed = 0
        self.written: list[str] = []

    def open(self) -> FakeResource:
        """The driver's opener: the first call is the initial open, later ones must be REOPEN."""
        if self.opened:
            self._expect_next(REOPEN[0], "reopened the resource")
        self.opened += 1
        self._unread = None
        return self

    def _expect_next(self, what: str, did: str) -> Exchange:
        if not self._pending:
            raise AssertionError(f"driver {did} ({what!r}) but the transcript is exhausted")
        entry = self._pending.popleft()
        if entry[0] != what:
            raise AssertionError(f"driver {did} ({what!r}); the transcript expected {entry[0]!r}")
        return entry

    def write(self, message: str) -> int:
        if self._unread is not None:
            raise AssertionError(f"driver wrote {message!r} before reading the reply "
                                 f"{self._unread!r} to {self._last!r}")
        _, reply = self._expect_next(message, "wrote")
        self.written.append(message)
        self._last, self._unread = message, reply
        return len(message) + 1

    def read(self) -> str:
        reply, self._unread = self._unread, None
        if reply is None:
            raise AssertionError(f"driver read after {self._last!r}, which gets no reply")
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self) -> None:
        self.closed += 1
        self._unread = None

    def assert_done(self) -> None:
        if self._pending:
            raise AssertionError(f"expected writes never happened: {[e[0] for e in self._pending]}")
        if self._unread is not None:
            raise AssertionError(f"reply {self._unread!r} to {self._last!r} was never read")


@contextmanager
def expected_protocol(driver_factory: Callable[[Callable[[], FakeResource]], D],
                      exchanges: Sequence[Exchange]) -> Iterator[D]:
    """Yield ``driver_factory(opener)``, the driver talking to a :class:`FakeResource`.

    The factory builds (and may open) the driver with the given opener; its own traffic, such
    as an identification query on open, belongs in ``exchanges`` too.
    """
    fake = FakeResource(exchanges)
    driver = driver_factory(fake.open)
    yield driver
    fake.assert_done()


def timeout_error() -> Any:
    """The exception pyvisa raises when a read times out."""
    from pyvisa import constants
    from pyvisa.errors import VisaIOError

    return VisaIOError(constants.StatusCode.error_timeout)
