"""A session: the notebook API's calls for one run, on a bench's hardware.

The service opens one :class:`Session` per client (its own run in the store); ``open_local``
returns one that owns its bench (tests, and the service's own use). Every call holds the
terminal's cycle object for its duration (:meth:`TerminalCycle.using`), so two calls never
finish each other's cycles; :meth:`stop` cancels this session's work terminal by terminal.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..analysis.metrics import SignOn
from ..core.errors import TestError
from ..faults.spec import Fault
from . import sale as _sale
from . import series as _series
from . import signon as _signon
from .cycles import TerminalCycle
from .hardware import Hardware

log = logging.getLogger(__name__)


class Session:
    """The rig's calls for one run (thread-safe)."""

    def __init__(self, hw: Hardware, cycles: dict[str, TerminalCycle], run_id: int, *,
                 owner: str, label: str | None = None, journal_path: Path | None = None,
                 results: Path | None = None,
                 on_close: Callable[[Session, str], None] | None = None) -> None:
        self.hw, self.cfg = hw, hw.cfg
        self._cycles = cycles
        self.run_id, self.owner, self.label = run_id, owner, label
        self.journal_path = journal_path
        self.results = results
        self._on_close = on_close
        self._closed = False
        self._used: set[str] = set()  # terminals this session has driven (their cancel tokens)

    # --- the context procedures get -----------------------------------------------------------
    def cycle(self, terminal: str) -> TerminalCycle:
        """The terminal's cycle object (raises TestError for an unknown terminal)."""
        if self._closed:
            raise TestError("this rig is closed; open a new one with open_rig()")
        try:
            tc = self._cycles[terminal]
        except KeyError:
            raise TestError(f"unknown terminal {terminal!r}; this lab has "
                            f"{', '.join(self.cfg.terminals)}") from None
        self._used.add(terminal)
        return tc

    @contextlib.contextmanager
    def _use(self, terminal: str) -> Iterator[TerminalCycle]:
        with self.cycle(terminal).using(self.owner) as tc:
            yield tc

    @property
    def used(self) -> set[str]:
        """The terminals this session has driven."""
        return set(self._used)

    @property
    def terminals(self) -> list[str]:
        return list(self.cfg.terminals)

    @property
    def store(self) -> Any:
        return self.hw.store

    @property
    def recorder(self) -> Any:
        return self.hw.recorder

    @property
    def injector(self) -> Any:
        return self.hw.injector

    @property
    def ecrs(self) -> dict[str, Any]:
        return self.hw.ecrs

    @property
    def psus(self) -> dict[str, Any]:
        return self.hw.psus

    @property
    def robot(self) -> Any:
        return self.hw.robot

    def flush(self) -> None:
        """Commit every event recorded so far (readers of the store then see them)."""
        self.hw.recorder.flush()

    # --- power and sign-on --------------------------------------------------------------------
    def power_on(self, terminal: str) -> int:
        """Switch the terminal on. Starts a new cycle unless ``power_cycle`` already did;
        returns the cycle's id."""
        with self._use(terminal) as tc:
            return _signon.power_on(self.hw, tc, self.run_id, self.owner)

    def power_off(self, terminal: str) -> None:
        """Switch the terminal off (the open cycle, if any, ends)."""
        with self._use(terminal) as tc:
            _signon.power_off(self.hw, tc)

    def power_cycle(self, terminal: str, off_s: float | None = None) -> int:
        """Off, wait ``off_s`` (config default), on: one cycle, from the off edge. Returns the
        cycle's id; figures count from the on edge."""
        with self._use(terminal) as tc:
            return _signon.power_cycle(self.hw, tc, self.run_id, off_s, self.owner)

    def wait_signon(self, terminal: str, timeout_s: float = 60.0) -> SignOn:
        """Wait until the terminal is READY (or gave up, or ``timeout_s`` passed) and return the
        cycle's figures. Logs the operator in over ECR where the terminal needs it."""
        with self._use(terminal) as tc:
            return _signon.wait_signon(self.hw, tc, timeout_s)

    def ensure_ready(self, terminal: str, timeout_s: float = 60.0) -> SignOn | None:
        """Power-cycle and sign the terminal on unless its ECR says READY already."""
        with self._use(terminal) as tc:
            return _signon.ensure_ready(self.hw, tc, self.run_id, timeout_s, self.owner)

    def series_rows(self, terminals: str | Iterable[str] = "all", n: int = 10,
                    off_s: float | None = None, timeout_s: float = 60.0,
                    progress: _series.Progress | None = None) -> list[dict[str, Any]]:
        """A sign-on series as rows (what :meth:`signon_series` puts in a DataFrame)."""
        names = self.terminals if terminals == "all" else (
            [terminals] if isinstance(terminals, str) else list(terminals))
        if n < 1:
            raise TestError(f"n={n}: a series needs at least one cycle per terminal")
        cycles = [self.cycle(t) for t in names]
        return _series.run_series(self.hw, cycles, n, self.run_id, off_s=off_s,
                                  timeout_s=timeout_s, owner=self.owner, progress=progress)

    def signon_series(self, terminals: str | Iterable[str] = "all", n: int = 10,
                      off_s: float | None = None, timeout_s: float = 60.0,
                      progress: bool = True) -> Any:
        """Power-cycle each terminal ``n`` times (terminals in parallel) and wait for sign-on
        each time. Returns a pandas DataFrame, one row per cycle."""
        import pandas as pd
        from tqdm.auto import tqdm

        names = self.terminals if terminals == "all" else (
            [terminals] if isinstance(terminals, str) else list(terminals))
        bar = tqdm(total=n * len(names), desc="sign-on cycles", unit="cycle",
                   disable=not progress)

        def tick(done: int, ok: int, total: int) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(ok=ok, refresh=False)

        try:
            rows = self.series_rows(names, n, off_s=off_s, timeout_s=timeout_s, progress=tick)
        finally:
            bar.close()
        return pd.DataFrame(rows)

    # --- faults -------------------------------------------------------------------------------
    def arm(self, terminal: str, *faults: Fault) -> list[Any]:
        """Check every fault, then arm each on its window; returns the armed windows."""
        self.cycle(terminal)
        if not faults:
            raise TestError("rig.fault(terminal, fault, ...): give at least one fault")
        assert self.hw.injector is not None and self.hw.windows is not None
        for f in faults:
            if not isinstance(f, Fault):
                raise TestError(f"{f!r} is not a fault; use the classes of rig.faults")
            self.hw.injector.check(terminal, f)  # every fault is checked before any goes on
        armed: list[Any] = []
        try:
            for f in faults:
                armed.append(self.hw.windows.arm(terminal, f))
        except BaseException:
            self.disarm(armed)
            raise
        return armed

    def disarm(self, armed: Iterable[Any]) -> None:
        assert self.hw.windows is not None
        for a in reversed(list(armed)):
            self.hw.windows.disarm(a)

    @contextlib.contextmanager
    def fault(self, terminal: str, *faults: Fault) -> Iterator[list[Any]]:
        """Hold ``faults`` on ``terminal`` for the ``with`` block: on now, or at each occurrence
        of their window (``during=`` / ``at_s=`` / ``for_s=``); always off at the end, on
        exceptions and Ctrl-C too. Yields the armed windows (their ``occurrences``)."""
        armed = self.arm(terminal, *faults)
        try:
            yield armed
        finally:
            self.disarm(armed)

    def recovery(self, terminal: str, fault: Fault, during: str = "signon",
                 timeout_s: float = 120.0) -> Any:
        """Inject ``fault`` during one phase (``signon`` or ``sale``) and measure how the terminal
        recovers once it is off: a :class:`~rig.control.recovery.Recovery`."""
        from .recovery import run_recovery

        with self._use(terminal):
            return run_recovery(self, terminal, fault, during=during, timeout_s=timeout_s)

    def scenario(self, sc: Any, terminal: str, pick: bool = True) -> Any:
        """Run a scenario (:class:`~rig.faults.scenarios.Scenario`) and judge it: a Verdict.
        ``pick``: a case that needs a manual login may move to a terminal that has one."""
        from .scenario import pick_terminal, run_scenario

        if pick:
            terminal = pick_terminal(self, sc, terminal)
        with self._use(terminal):
            return run_scenario(self, sc, terminal)

    # --- sales and cards ----------------------------------------------------------------------
    def sale(self, terminal: str, amount: str = "1.00", card: str = "cup_debit",
             entry: str = "chip", *, txn: str = "sale", swipe_speed_mm_s: float | None = None,
             tap_dwell_ms: float | None = None, timeout_s: float = 60.0,
             faults: Iterable[Fault] = ()) -> Any:
        """Start a sale over ECR, present ``card`` with the robot (``entry``: chip, swipe,
        tap) and return a :class:`~rig.analysis.sale_metrics.SaleResult` with its figures.
        ``faults`` are held for the sale (each on for its window, e.g. ``during="auth"``)."""
        faults = list(faults)
        with contextlib.ExitStack() as stack:
            tc = stack.enter_context(self._use(terminal))
            if faults:
                stack.enter_context(self.fault(terminal, *faults))
            return _sale.run_sale(self.hw, tc, self.run_id, amount=amount, card=card,
                                  entry=entry, txn=txn, owner=self.owner,
                                  swipe_speed_mm_s=swipe_speed_mm_s, tap_dwell_ms=tap_dwell_ms,
                                  timeout_s=timeout_s)

    def balance(self, terminal: str, card: str = "cup_debit", entry: str = "chip") -> Any:
        """Balance inquiry with ``card``; the SaleResult's ``balance`` is the available balance
        in minor units as the terminal showed it (e.g. ``"499900"`` = 4999.00)."""
        with self._use(terminal) as tc:
            return _sale.run_sale(self.hw, tc, self.run_id, amount=None, card=card, entry=entry,
                                  txn="balance", owner=self.owner)

    def settle(self, terminal: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Settle the terminal's batch (0500); the host checks the totals."""
        with self._use(terminal) as tc:
            return _sale.run_settle(self.hw, tc, self.run_id, timeout_s=timeout_s,
                                    owner=self.owner)

    def keypad(self, terminal: str, *keys: str) -> dict[str, Any]:
        """The robot presses ``keys`` on the terminal's keypad (``"SALE", "1", "0", "0",
        "ENTER"``; its profile's keypad map, its ``stations.keypad``); returns the keys and
        the stamp of the first press."""
        with self._use(terminal):
            return _sale.press_keys(self.hw, terminal, list(keys))

    def card_check(self, card: str | None = None, reader: str | None = None,
                   contactless: bool = False) -> Any:
        """Check a card through PC/SC (ATR, AIDs, masked PAN, expiry, problems). On a virtual
        lab, ``card`` names the emulated card to attach to the virtual reader."""
        from .cardcheck import card_check

        return card_check(self.hw, card, reader=reader, contactless=contactless)

    def robot_action(self, action: str) -> str:
        """``status`` / ``home`` / ``park`` the card robot; what it says."""
        robot = self.hw.robot
        if robot is None:
            raise TestError("this lab has no card robot (no `robot:` in the lab config)")
        if action == "status":
            st = robot.status()
            return f"{robot.name}: {st.state} MPos={st.mpos}"
        if action not in ("home", "park"):
            raise TestError(f"robot action {action!r}: choose status, home or park")
        getattr(robot, action)()
        return f"{robot.name}: {'homed' if action == 'home' else 'parked'}"

    def clear_faults(self) -> list[str]:
        """Turn every fault on this lab off (any session's); what was turned off."""
        assert self.hw.injector is not None
        labels = [f"{a.terminal}: {a.fault.label()}" for a in self.hw.injector.active.values()]
        self.hw.injector.off_all()
        return labels

    def status(self) -> dict[str, Any]:
        """Instruments (identity or error) and terminals (output, console, state)."""
        from .status import status

        return status(self.hw, self.run_id)

    # --- teardown -----------------------------------------------------------------------------
    def stop(self, terminals: Iterable[str] | None = None) -> None:
        """Cancel this session's running calls (all its terminals, or ``terminals``) at their
        next safe point (thread-safe); the next call re-arms."""
        for t in (self._used if terminals is None else terminals):
            if t in self._cycles:
                self._cycles[t].cancel.set()

    def abort_open(self, error: str = "interrupted") -> None:
        """Mark this session's open cycles aborted (events kept)."""
        for t in list(self._used):
            tc = self._cycles[t]
            if tc.open and tc.run_id == self.run_id:
                tc.finish("aborted", error=error)

    def close(self, state: str = "completed") -> None:
        """End the session's run (open cycles aborted). Idempotent."""
        if self._closed:
            return
        self.stop()
        self.abort_open()
        self._closed = True
        if self._on_close:
            self._on_close(self, state)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, et: type[BaseException] | None, *_: object) -> None:
        self.close("completed" if et is None else
                   "interrupted" if issubclass(et, KeyboardInterrupt) else "failed")

    def __repr__(self) -> str:
        return f"<Session lab={self.cfg.name!r} run={self.run_id} owner={self.owner!r}>"


