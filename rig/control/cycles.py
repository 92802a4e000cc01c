"""One terminal's cycles: the bookkeeping every procedure runs through.

A :class:`TerminalCycle` holds, for one terminal, the open cycle (id, run, kind, the events
recorded in it), a lock that makes one procedure at a time use the terminal, and a cancel
token. Procedures (sign-on, sale, settle, series, scenario) receive it; they never reach into
the bench or the client. A cycle is opened with :meth:`begin`, closed for new events with
:meth:`take`, and committed with :meth:`mark` — events first, then the cycle's end marker,
never the other order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..analysis.metrics import SignOn, signon_figures
from ..core.clock import Deadline, now
from ..core.errors import Cancelled, TestError
from ..timeline.events import Event, EventKind
from ..timeline.recorder import Recorder
from ..timeline.store import Store


class TerminalCycle:
    """Cycle bookkeeping of one terminal (thread-safe)."""

    def __init__(self, terminal: str, *, store: Store, recorder: Recorder, has_console: bool,
                 on_edge: Callable[[str, bool], None] | None = None) -> None:
        self.terminal = terminal
        self.store, self.recorder = store, recorder
        self.has_console = has_console
        self._edge_listeners: list[Callable[[str, bool], None]] = [on_edge] if on_edge else []
        self.cond = threading.Condition()
        self.lock = threading.RLock()  # one procedure at a time on this terminal
        self.cancel = threading.Event()
        self._depth = 0  # nesting of using() (a scenario calls sale, which uses the terminal)
        self.cycle_id: int | None = None
        self.run_id: int | None = None  # the run of the open (or last) cycle
        self.kind = "signon"
        self.owner: str | None = None  # who opened the cycle (a client session)
        self.events: list[Event] = []
        self.done = True
        self._n: dict[int, int] = {}  # cycles per run

    # --- events -------------------------------------------------------------------------------
    def on_event(self, ev: Event) -> None:
        with self.cond:
            if not self.done:
                self.events.append(ev)
            self.cond.notify_all()

    def n(self, run_id: int | None = None) -> int:
        """How many cycles this terminal has opened in ``run_id`` (the current run)."""
        return self._n.get(self.run_id if run_id is None else run_id, 0)

    @property
    def open(self) -> bool:
        return not self.done and self.cycle_id is not None

    def has(self, kind: EventKind) -> bool:
        with self.cond:
            return any(e.kind == kind for e in self.events)

    def snapshot(self) -> list[Event]:
        with self.cond:
            return list(self.events)

    # --- waiting ------------------------------------------------------------------------------
    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"{self.terminal}: cancelled")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless cancelled (then raise :class:`Cancelled`)."""
        if self.cancel.wait(seconds):
            raise Cancelled(f"{self.terminal}: cancelled")

    def wait_event(self, kinds: set[EventKind], timeout_s: float,
                   after_ns: int = 0) -> Event | None:
        """The first event of ``kinds`` in the open cycle (recorded after ``after_ns``), waiting
        up to ``timeout_s``; None on time-out. Raises :class:`Cancelled` when cancelled."""
        deadline = Deadline(timeout_s)
        with self.cond:
            while True:
                ev = next((e for e in self.events if e.kind in kinds and e.mono_ns >= after_ns),
                          None)
                if ev is not None or deadline.expired:
                    return ev
                self.check_cancel()
                self.cond.wait(min(0.1, deadline.remaining()))

    def wait_until(self, pred: Callable[[list[Event]], Any], timeout_s: float) -> Any:
        """Wait until ``pred(events)`` is truthy (returned) or ``timeout_s`` passes (None)."""
        deadline = Deadline(timeout_s)
        with self.cond:
            while True:
                got = pred(self.events)
                if got or deadline.expired:
                    return got or None
                self.check_cancel()
                self.cond.wait(min(0.1, deadline.remaining()))

    # --- use ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def using(self, owner: str | None = None) -> Iterator[TerminalCycle]:
        """Hold the terminal for one procedure; a fresh cancel token for it."""
        with self.lock:
            if owner is not None and self.open and self.owner not in (None, owner):
                raise TestError(f"{self.terminal}: a cycle of {self.owner} is open; wait for it "
                                f"to end or lease the terminal")
            if self._depth == 0:
                self.cancel.clear()
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1

    # --- cycle edges --------------------------------------------------------------------------
    def begin(self, run_id: int, kind: str = "signon", owner: str | None = None) -> int:
        """End the open cycle (completed), open a new one in ``run_id``; returns its id."""
        self.finish("completed")
        with self.cond:
            if run_id not in self._n:  # a run this process has not numbered yet (a resume)
                self._n[run_id] = self.store.last_cycle_n(run_id, self.terminal)
            self._n[run_id] += 1
            st = now()
            self.cycle_id = self.store.start_cycle(run_id, self.terminal, self._n[run_id], kind,
                                                   st.mono_ns, st.wall_ns)
            self.run_id, self.kind, self.owner = run_id, kind, owner
            self.events = []
            self.done = False
        self.recorder.set_cycle(self.terminal, self.cycle_id, run_id)
        self._edge(True)
        return self.cycle_id

    def add_edge_listener(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(terminal, opened)`` when a cycle opens (True) or is taken (False)."""
        self._edge_listeners.append(listener)

    def _edge(self, opened: bool) -> None:
        for listener in self._edge_listeners:
            listener(self.terminal, opened)

    def take(self) -> tuple[int, str, list[Event]] | None:
        """Close the open cycle for new events: (cycle id, kind, its events)."""
        with self.cond:
            if self.done or self.cycle_id is None:
                return None
            self.done = True
            taken = self.cycle_id, self.kind, list(self.events)
        self.recorder.set_cycle(self.terminal, None, self.run_id)
        self._edge(False)
        return taken

    def mark(self, cycle: int, state: str, result: dict[str, Any]) -> None:
        """Commit everything recorded so far, then mark the cycle (never the other order).
        A store that could not take the cycle's events fails it loudly."""
        self.recorder.flush()
        try:
            self.recorder.check()
        except Exception as e:
            self.store.end_cycle(cycle, "failed", {**result, "ok": False, "error": str(e)})
            raise
        self.store.end_cycle(cycle, state, result)

    def finish(self, state: str, error: str | None = None,
               extra: dict[str, Any] | None = None) -> SignOn:
        """End the open cycle (if any) with its sign-on figures: commit events, then mark."""
        taken = self.take()
        if taken is None:
            return SignOn(self.terminal, self.cycle_id, False, error="no open cycle")
        cycle, kind, events = taken
        result = signon_figures(self.terminal, cycle, events, has_console=self.has_console,
                                error=error)
        record = {**result.as_dict(), "n": self.n(), **(extra or {})}
        if kind != "signon":  # e.g. a sale interrupted before it could report
            record = {"ok": False, "error": error or "ended", "n": record["n"]}
        self.mark(cycle, state, record)
        return result

    def abort(self, exc: BaseException) -> None:
        """Mark the open cycle aborted with the exception's text (used on every error path)."""
        self.finish("aborted", error=str(exc) or type(exc).__name__)
