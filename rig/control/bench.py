"""The notebook API (also used by the CLI and the soak runner): one ``Rig`` per session.

A ``Rig`` opens one run in the lab's store, starts the acquirer host, opens the instruments and
console/ECR ports of the lab config, and — on a virtual lab that is not running — starts the lab
as a child process. Everything that changes the world registers its undo on one ExitStack
(after OpenHTF), so ``close()``, Ctrl-C and SIGTERM leave the configured safe state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from ..analysis.metrics import SignOn, signon_figures
from ..config import LabConfig, load_lab
from ..core.clock import ClockSource, Deadline, Stamp, WallToMono, now
from ..core.errors import InfrastructureError, TerminalError, TestError
from ..drivers.console import ConsoleReader
from ..drivers.ecr import EcrDriver
from ..drivers.profiles import get_profile
from ..drivers.psu import PsuDriver
from ..drivers.relay import RelayDriver
from ..faults.inject import Backends, Injector
from ..faults.labctl import LabControl
from ..faults.ledger import Ledger
from ..faults.power import PowerPath
from ..faults.schedule import Windows
from ..faults.spec import Fault
from ..faults.sweep import sweep
from ..host.server import AcquirerHost
from ..timeline.events import Event, EventKind
from ..timeline.recorder import Recorder
from ..timeline.store import Store
from .labproc import LabProcess, listening
from .signon import wait_ready

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/labs/virtual.yaml"


@dataclass
class _Track:
    """What the rig knows of one terminal's current cycle."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    cycle_id: int | None = None
    kind: str = "signon"
    n: int = 0
    events: list[Event] = field(default_factory=list)
    done: bool = True


def results_dir(results: str | Path | None = None) -> Path:
    return Path(results or os.environ.get("RIG_RESULTS") or "results")


class Rig:
    """Synchronous, thread-safe control of one lab. Use :func:`open_rig`."""

    def __init__(self, config: str | Path | LabConfig = DEFAULT_CONFIG, *, label: str | None = None,
                 results: str | Path | None = None, start_lab: bool | None = None) -> None:
        self.cfg = config if isinstance(config, LabConfig) else load_lab(config)
        self.config_path = None if isinstance(config, LabConfig) else Path(config)
        self.results = results_dir(results)
        self.label = label
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._tracks = {t: _Track() for t in self.cfg.terminals}
        self.lab: LabProcess | None = None
        self._closed = False
        self._run_state = "running"
        try:
            self._open(start_lab)
        except BaseException:
            self._close("failed")
            raise

    # --- set-up -------------------------------------------------------------------------------
    def _open(self, start_lab: bool | None) -> None:
        cfg = self.cfg
        self.store = Store(self.results / f"{cfg.name}.db")
        self._stack.callback(self.store.close)
        self.store.recover()
        w2m = WallToMono()
        self.run_id = self.store.begin_run(
            lab=cfg.name, label=self.label, config=cfg.snapshot(),
            clock={"host": os.uname().nodename, "wall_minus_mono_ns": w2m.offset_ns(),
                   "sources": {"host": "kernel SO_TIMESTAMPNS (rx), thread (tx)",
                               "console": "thread", "psu": "thread", "ecr": "thread"}},
        )
        self._stack.callback(lambda: self.store.end_run(self.run_id, self._run_state))
        self.recorder = Recorder(self.store, self.run_id)
        self._stack.callback(self.recorder.close)
        self.recorder.add_listener(self._on_event)

        if cfg.virtual and start_lab is not False and not listening(cfg.sim.psu_listen):
            self.lab = LabProcess(self._config_file(), journal=self.journal_path,
                                  log_path=self.results / f"{cfg.name}-lab.log")
            self.lab.start()
            self._stack.callback(self.lab.stop)

        self.host = AcquirerHost(cfg, self.recorder)
        self.host.start()
        self._stack.callback(self.host.stop)
        self.proxies = self._start_proxies()

        self.psus: dict[str, PsuDriver] = {}
        self.relays: dict[str, RelayDriver] = {}
        self.robot: Any = None
        for name, inst in cfg.instruments.items():
            if inst.kind == "robot":
                from ..drivers.robot import RobotDriver

                layout = cfg.robot if cfg.robot and cfg.robot.instrument == name else None
                robot = RobotDriver(name, inst, self.recorder, layout=layout)
                robot.open()
                self._stack.callback(robot.close)  # parks first
                if layout is not None:
                    self.robot = robot
                continue
            if inst.kind == "psu":
                limits = {}
                for t in cfg.terminals.values():
                    if t.power.psu == name:
                        m = cfg.models[t.model]
                        limits[t.power.channel] = (m.voltage_max, m.current_max)
                drv = PsuDriver(name, inst, self.recorder, limits=limits)
                drv.open()
                self._stack.callback(drv.close)
                self.psus[name] = drv
            else:
                rdrv = RelayDriver(name, inst, self.recorder)
                rdrv.open()
                self._stack.callback(rdrv.close)
                self.relays[name] = rdrv

        self.consoles: dict[str, ConsoleReader] = {}
        self.ecrs: dict[str, EcrDriver] = {}
        for tname, t in cfg.terminals.items():
            if t.console:
                reader = ConsoleReader(tname, t.console, get_profile(cfg.models[t.model].profile),
                                       self.recorder)
                if not reader.start(wait_s=5.0):
                    log.warning("%s: console %s not open yet; still trying", tname, t.console)
                self._stack.callback(reader.stop)
                self.consoles[tname] = reader
            if t.ecr:
                ecr = EcrDriver(tname, t.ecr, self.recorder)
                self._stack.callback(ecr.close)
                self.ecrs[tname] = ecr
        self._stack.callback(self._safe_state)
        self._open_faults()  # undone before the safe state (unwinds first)

    def _start_proxies(self) -> dict[str, Any]:
        """One fault proxy per terminal whose ``host_path`` is not the host itself."""
        from ..faults.proxy import FaultProxy

        proxies: dict[str, Any] = {}
        for tname, t in self.cfg.terminals.items():
            if t.host_path == self.cfg.host.listen:
                continue
            px = FaultProxy(f"{tname}.proxy", listen=t.host_path, upstream=self.cfg.host.listen,
                            sink=self.recorder, terminal=tname)
            try:
                px.start()
            except Exception as e:
                raise InfrastructureError(
                    f"{tname}: cannot start its fault proxy on host_path {t.host_path} (the "
                    f"address the terminal dials; the rig forwards it to the host at "
                    f"{self.cfg.host.listen}): {e}. Is {t.host_path.rsplit(':', 1)[0]} an "
                    f"address of this machine, and the port free?") from e
            self._stack.callback(px.stop)
            proxies[tname] = px
        return proxies

    def _power_path(self, terminal: str) -> PowerPath:
        p = self.cfg.terminals[terminal].power
        if p.psu:
            return PowerPath("psu", self.psus[p.psu], p.channel, nominal_v=p.voltage)
        assert p.relay
        return PowerPath("relay", self.relays[p.relay], p.channel)

    def _open_faults(self) -> None:
        """The fault injector, its windows, and the sweep of a crashed rig's leftovers."""
        from ..faults.kernel import KernelFaults, Match

        cfg = self.cfg
        lab = (LabControl(cfg.sim.control_listen)
               if cfg.virtual and cfg.sim.control_listen else None)
        kernel: list[KernelFaults] = []

        def kernel_faults() -> KernelFaults:
            if not kernel:
                kernel.append(KernelFaults())
            return kernel[0]

        def kernel_match(terminal: str) -> Match:
            t = cfg.terminals[terminal]
            return Match(iface=t.net_iface, addr=t.net_addr,
                         port=int(t.host_path.rsplit(":", 1)[1]))

        self.ledger = Ledger(self.results / f"{cfg.name}-faults.json")
        self.injector = Injector(Backends(
            cfg=cfg, sink=self.recorder, host_rules=self.host.rules, proxies=self.proxies,
            power=self._power_path, kernel=kernel_faults, kernel_match=kernel_match,
            kernel_iface=lambda t: cfg.terminals[t].net_iface, lab=lab), self.ledger)
        self.windows = Windows(self.injector)
        self.recorder.add_listener(self.windows.on_event)
        self._stack.callback(self.injector.off_all)
        self._stack.callback(self.windows.close)
        held = {e.get("terminal") for e in self.ledger.entries()
                if e.get("alive") and e.get("layer") == "power"}
        self.swept = sweep(
            ledger=self.ledger, sink=self.recorder,
            power={t: self._power_path(t) for t in cfg.terminals if t not in held},
            kernel=kernel_faults, lab=lab if self.lab is None else None)

    @property
    def journal_path(self) -> Path:
        """The virtual lab's truth journal (when this rig started the lab)."""
        return self.results / f"{self.cfg.name}-truth.jsonl"

    def _config_file(self) -> Path:
        if self.config_path is not None:
            return self.config_path
        self.results.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.cfg.name}-", suffix=".yaml", dir=self.results)
        with os.fdopen(fd, "w") as f:
            YAML(typ="safe").dump(self.cfg.model_dump(mode="json"), f)
        self._stack.callback(os.unlink, name)
        return Path(name)

    # --- events -------------------------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        track = self._tracks.get(ev.terminal or "")
        if track is None:
            return
        with track.cond:
            if not track.done:
                track.events.append(ev)
            track.cond.notify_all()

    def _check(self, terminal: str) -> _Track:
        if self._closed:
            raise TestError("this rig is closed; open a new one with open_rig()")
        try:
            return self._tracks[terminal]
        except KeyError:
            raise TestError(f"unknown terminal {terminal!r}; this lab has "
                            f"{', '.join(self.cfg.terminals)}") from None

    @property
    def terminals(self) -> list[str]:
        return list(self.cfg.terminals)

    # --- power --------------------------------------------------------------------------------
    def _switch(self, terminal: str, on: bool) -> Stamp:
        p = self.cfg.terminals[terminal].power
        if p.psu:
            psu = self.psus[p.psu]
            if on:
                assert p.voltage is not None and p.current_limit is not None
                psu.set_voltage(p.channel, p.voltage)
                psu.set_current(p.channel, p.current_limit)
            stamp = psu.output(p.channel, on)
            src, clock = p.psu, psu.last_clock
        else:
            assert p.relay
            stamp = self.relays[p.relay].set(p.channel, on)
            src, clock = p.relay, ClockSource.THREAD
        kind = EventKind.POWER_ON if on else EventKind.POWER_OFF
        self.recorder.record(Event.at(stamp, kind, src, terminal, clock=clock, channel=p.channel,
                                      volts=p.voltage if on else 0.0))
        return stamp

    def _begin_cycle(self, terminal: str, kind: str = "signon") -> int:
        track = self._tracks[terminal]
        self._finish(terminal, state="completed")
        with track.cond:
            track.n += 1
            st = now()
            track.cycle_id = self.store.start_cycle(self.run_id, terminal, track.n, kind,
                                                    st.mono_ns, st.wall_ns)
            track.kind = kind
            track.events = []
            track.done = False
        self.recorder.set_cycle(terminal, track.cycle_id)
        self.windows.cycle_edge(terminal, start=True)
        return track.cycle_id

    def power_on(self, terminal: str) -> int:
        """Switch the terminal's power on. Starts a new cycle unless ``power_cycle`` already
        did; returns the cycle's id."""
        track = self._check(terminal)
        with track.cond:
            fresh = not track.done and not any(e.kind == EventKind.POWER_ON for e in track.events)
        cycle = track.cycle_id if fresh else self._begin_cycle(terminal)
        assert cycle is not None
        try:
            self._switch(terminal, True)
        except BaseException as e:
            self._finish(terminal, state="aborted", error=str(e))
            raise
        return cycle

    def power_off(self, terminal: str) -> None:
        """Switch the terminal's power off (the open cycle, if any, ends)."""
        self._check(terminal)
        self._finish(terminal, state="completed")
        self._switch(terminal, False)

    def power_cycle(self, terminal: str, off_s: float | None = None) -> int:
        """Off, wait ``off_s`` (config default), on: one cycle, from the off edge. Returns the
        cycle's id; figures count from the on edge."""
        self._check(terminal)
        self._begin_cycle(terminal)
        try:
            self._switch(terminal, False)
            if self._stop.wait(self.cfg.terminals[terminal].power.off_s if off_s is None else off_s):
                raise KeyboardInterrupt
        except BaseException as e:
            self._finish(terminal, state="aborted", error=str(e) or type(e).__name__)
            raise
        return self.power_on(terminal)

    # --- sign-on ------------------------------------------------------------------------------
    def wait_signon(self, terminal: str, timeout_s: float = 60.0) -> SignOn:
        """Wait until the terminal is READY (or gave up, or ``timeout_s`` passed) and return the
        cycle's figures. Logs the operator in over ECR where the terminal needs it."""
        track = self._check(terminal)
        if track.done or track.cycle_id is None:
            raise TestError(f"{terminal}: no open cycle; call power_on/power_cycle first")
        try:
            error = wait_ready(self, terminal, track, timeout_s)
        except BaseException as e:
            self._finish(terminal, state="aborted", error=str(e) or type(e).__name__)
            raise
        return self._finish(terminal, state="completed", error=error)

    def _await(self, track: _Track, kind: EventKind, timeout_s: float) -> None:
        self._wait_event(track, {kind}, timeout_s)

    def _wait_event(self, track: _Track, kinds: set[EventKind], timeout_s: float,
                    after_ns: int = 0) -> Event | None:
        """The first event of ``kinds`` in the open cycle (recorded after ``after_ns``), waiting
        up to ``timeout_s``; None on time-out. Raises KeyboardInterrupt when the rig stops."""
        deadline = Deadline(timeout_s)
        with track.cond:
            while True:
                ev = next((e for e in track.events if e.kind in kinds and e.mono_ns >= after_ns),
                          None)
                if ev is not None or deadline.expired:
                    return ev
                if self._stop.is_set():
                    raise KeyboardInterrupt
                track.cond.wait(min(0.1, deadline.remaining()))

    def _take(self, terminal: str) -> tuple[int, str, list[Event]] | None:
        """Close the terminal's open cycle for new events: (cycle id, kind, its events)."""
        track = self._tracks[terminal]
        with track.cond:
            if track.done or track.cycle_id is None:
                return None
            track.done = True
            taken = track.cycle_id, track.kind, list(track.events)
        self.windows.cycle_edge(terminal, start=False)
        return taken

    def _mark(self, cycle: int, state: str, result: dict[str, Any]) -> None:
        """Commit everything recorded so far, then mark the cycle (never the other order)."""
        self.recorder.flush()
        self.store.end_cycle(cycle, state, result)

    def _finish(self, terminal: str, state: str, error: str | None = None,
                extra: dict[str, Any] | None = None) -> SignOn:
        """End the terminal's open cycle (if any): commit its events, then mark it."""
        taken = self._take(terminal)
        if taken is None:
            return SignOn(terminal, self._tracks[terminal].cycle_id, False, error="no open cycle")
        cycle, kind, events = taken
        tcfg = self.cfg.terminals[terminal]
        result = signon_figures(terminal, cycle, events, has_console=tcfg.console is not None,
                                error=error)
        record = {**result.as_dict(), "n": self._tracks[terminal].n, **(extra or {})}
        if kind != "signon":  # e.g. a sale interrupted before it could report
            record = {"ok": False, "error": error or "ended", "n": record["n"]}
        self._mark(cycle, state, record)
        return result

    def signon_series(self, terminals: str | Iterable[str] = "all", n: int = 10,
                      off_s: float | None = None, timeout_s: float = 60.0,
                      progress: bool = True) -> Any:
        """Power-cycle each terminal ``n`` times (terminals in parallel) and wait for sign-on
        each time. Returns a pandas DataFrame, one row per cycle."""
        from .series import run_series

        names = self.terminals if terminals == "all" else (
            [terminals] if isinstance(terminals, str) else list(terminals))
        for t in names:
            self._check(t)
        self._stop.clear()  # re-arm after an interrupted series (a notebook's Ctrl-C)
        return run_series(self, names, n, off_s=off_s, timeout_s=timeout_s, progress=progress)

    def ensure_ready(self, terminal: str, timeout_s: float = 60.0) -> SignOn | None:
        """Power-cycle and sign the terminal on unless its ECR says READY already."""
        self._check(terminal)
        ecr = self.ecrs.get(terminal)
        if ecr is not None:
            try:
                if ecr.command("STATUS").split()[:1] == ["READY"]:
                    return None
            except TerminalError:
                pass
        self.power_cycle(terminal)
        s = self.wait_signon(terminal, timeout_s=timeout_s)
        if not s.ok:
            raise TerminalError(f"{terminal}: did not sign on: {s.error}")
        return s

    # --- faults -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def fault(self, terminal: str, *faults: Fault) -> Iterator[list[Any]]:
        """Hold ``faults`` on ``terminal`` for the ``with`` block: on now, or at each occurrence
        of their window (``during=`` / ``at_s=`` / ``for_s=``); always off at the end, on
        exceptions and Ctrl-C too. Yields the armed windows (their ``occurrences``)."""
        self._check(terminal)
        if not faults:
            raise TestError("rig.fault(terminal, fault, ...): give at least one fault")
        for f in faults:
            if not isinstance(f, Fault):
                raise TestError(f"{f!r} is not a fault; use the classes of rig.faults")
            self.injector.check(terminal, f)  # every fault is checked before any goes on
        armed: list[Any] = []
        try:
            for f in faults:
                armed.append(self.windows.arm(terminal, f))
            yield armed
        finally:
            for a in reversed(armed):
                self.windows.disarm(a)

    def recovery(self, terminal: str, fault: Fault, during: str = "signon",
                 timeout_s: float = 120.0) -> Any:
        """Inject ``fault`` during one phase (``signon`` or ``sale``) and measure how the terminal
        recovers once it is off: a :class:`~rig.control.recovery.Recovery` with ``recover_s``
        (fault off → next successful sign-on or sale) and the attempts seen."""
        from .recovery import run_recovery

        return run_recovery(self, terminal, fault, during=during, timeout_s=timeout_s)

    # --- sales and cards -----------------------------------------------------------------------
    def sale(self, terminal: str, amount: str = "1.00", card: str = "cup_debit",
             entry: str = "chip", *, txn: str = "sale", swipe_speed_mm_s: float | None = None,
             tap_dwell_ms: float | None = None, timeout_s: float = 60.0,
             faults: Iterable[Fault] = ()) -> Any:
        """Start a sale over ECR, present ``card`` with the robot (``entry``: chip, swipe,
        tap) and return a :class:`~rig.analysis.sale_metrics.SaleResult` with its figures.
        ``faults`` are held for the sale (each on for its window, e.g. ``during="auth"``)."""
        from .sale import run_sale

        faults = list(faults)
        with contextlib.ExitStack() as stack:
            if faults:
                stack.enter_context(self.fault(terminal, *faults))
            return run_sale(self, terminal, amount=amount, card=card, entry=entry, txn=txn,
                            swipe_speed_mm_s=swipe_speed_mm_s, tap_dwell_ms=tap_dwell_ms,
                            timeout_s=timeout_s)

    def balance(self, terminal: str, card: str = "cup_debit", entry: str = "chip") -> Any:
        """Balance inquiry with ``card``; the SaleResult's ``balance`` is the available balance
        in minor units as the terminal showed it (e.g. ``"499900"`` = 4999.00)."""
        from .sale import run_sale

        return run_sale(self, terminal, amount=None, card=card, entry=entry, txn="balance")

    def settle(self, terminal: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Settle the terminal's batch (0500); the host checks the totals."""
        from .sale import run_settle

        return run_settle(self, terminal, timeout_s=timeout_s)

    def card_check(self, card: str | None = None, reader: str | None = None,
                   contactless: bool = False) -> Any:
        """Check a card through PC/SC (ATR, AIDs, masked PAN, expiry, problems). On a virtual
        lab, ``card`` names the emulated card to attach to the virtual reader."""
        from .cardcheck import card_check

        return card_check(self, card, reader=reader, contactless=contactless)

    def status(self) -> dict[str, Any]:
        """Instruments (identity or error) and terminals (output, console, state)."""
        from .status import status

        return status(self)

    # --- teardown -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask running series to stop at the next safe point (thread-safe)."""
        self._stop.set()

    def _safe_state(self) -> None:
        for t in self.cfg.terminals:
            if self._tracks[t].done is False:
                self._finish(t, state="aborted", error="interrupted")
        if self.cfg.safe_power == "leave":
            return
        on = self.cfg.safe_power == "on"
        for t in self.cfg.terminals:
            try:
                self._switch(t, on)
            except Exception as e:  # keep going: every other terminal still gets its safe state
                log.error("%s: could not reach safe power state %s: %s", t, self.cfg.safe_power, e)

    def _close(self, state: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._run_state = state
        self._stop.set()
        self._stack.close()

    def close(self, state: str = "completed") -> None:
        """Leave the safe state, stop everything, mark the run. Idempotent."""
        self._close(state)

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, et: type[BaseException] | None, *_: object) -> None:
        self.close("completed" if et is None else
                   "interrupted" if issubclass(et, KeyboardInterrupt) else "failed")

    def __repr__(self) -> str:
        return f"<Rig lab={self.cfg.name!r} run={getattr(self, 'run_id', None)} terminals={self.terminals}>"


def open_rig(config: str | Path | LabConfig | None = None, *, label: str | None = None,
             results: str | Path | None = None, start_lab: bool | None = None) -> Rig:
    """Open a lab: ``open_rig("configs/labs/virtual.yaml")``. Starts the virtual lab if needed."""
    config = config or os.environ.get("RIG_CONFIG") or DEFAULT_CONFIG
    return Rig(config, label=label, results=results, start_lab=start_lab)
