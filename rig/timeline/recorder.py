"""The recorder: a thread that batches events into the store.

``record()`` is cheap and thread-safe (it tags the event with its terminal's current run and
cycle and queues it); listeners see every event at once, in the recording thread. A writer thread commits
at least every ``commit_interval_s`` (200 ms) and whenever :meth:`flush` is called (every cycle
boundary), so a crash loses at most the last fraction of a second of events — and never a
cycle's end marker, which is written after its events are committed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from ..core.errors import InfrastructureError
from .events import Event
from .store import Store, event_row

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]


class Recorder:
    def __init__(self, store: Store, run_id: int, commit_interval_s: float = 0.2) -> None:
        self.store = store
        self.run_id = run_id
        self._interval = commit_interval_s
        self._q: queue.SimpleQueue[tuple[Event, int, int | None] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._routes: dict[str, tuple[int, int | None]] = {}  # terminal -> (run, cycle)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rig-recorder", daemon=True)
        self._thread.start()

    # --- producer side ------------------------------------------------------------------------
    def record(self, event: Event) -> None:
        run, cycle = (self._routes.get(event.terminal, (self.run_id, None)) if event.terminal
                      else (self.run_id, None))
        self._q.put((event, run, cycle))
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not lose the event
                log.exception("event listener failed on %s", event.kind)

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def set_cycle(self, terminal: str, cycle_id: int | None, run_id: int | None = None) -> None:
        """Events of ``terminal`` recorded from now on belong to ``cycle_id`` of ``run_id``
        (the recorder's own run when None); ``cycle_id=None`` and ``run_id=None`` route them
        back to the recorder's own run."""
        run = self.run_id if run_id is None else run_id
        if cycle_id is None and run == self.run_id:
            self._routes.pop(terminal, None)
        else:
            self._routes[terminal] = (run, cycle_id)

    def route(self, terminal: str) -> tuple[int, int | None]:
        """(run, cycle) that ``terminal``'s events go to now."""
        return self._routes.get(terminal, (self.run_id, None))

    def check(self) -> None:
        """Raise if the writer could not store events (a full disk, a locked file...)."""
        if self.error is not None:
            raise InfrastructureError(f"the recorder could not write to {self.store.path}: "
                                      f"{self.error}; events since then may be lost")

    def flush(self, timeout_s: float = 10.0) -> None:
        """Block until everything recorded so far is committed."""
        if self._closed or not self._thread.is_alive():
            return
        done = threading.Event()
        self._q.put(done)
        if not done.wait(timeout_s):
            log.error("recorder flush timed out after %.1f s", timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout=10)

    # --- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        batch: list = []
        waiters: list[threading.Event] = []
        due: float | None = None  # when the oldest uncommitted event must be committed
        while True:
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                item = False  # commit deadline reached
            stop = item is None
            if isinstance(item, tuple):
                batch.append(event_row(item[1], item[2], item[0]))
                if due is None:
                    due = time.monotonic() + self._interval
            elif isinstance(item, threading.Event):
                waiters.append(item)
            if batch and len(batch) >= 2000:
                item = False
            if item is False or waiters or stop:
                try:
                    if batch:
                        self.store.append_events(batch)
                    self.store.commit()
                except Exception as e:  # keep the queue moving; surface the error to the rig
                    log.exception("recorder could not write %d events", len(batch))
                    self.error = e
                batch, due = [], None
                for w in waiters:
                    w.set()
                waiters = []
            if stop:
                return
