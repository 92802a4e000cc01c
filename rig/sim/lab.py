"""VirtualLab: the SCPI power supply, the GRBL card robot, the card world and the virtual
terminals of one lab on one asyncio loop.

The loop runs in its own thread (``start()`` / ``stop()``) or in the foreground (``run()``,
until SIGINT / SIGTERM). The truth journal is appended to; each run is framed by entries
``lab_start`` / ``lab_stop`` (``terminal`` null), so readers can tell runs apart.
PSU channel N powers every terminal whose ``power`` names a PSU and channel N (several
terminals on one channel share it and their currents add up). With a ``robot:`` layout (and
its robot instrument) the lab serves a GRBL robot on ``sim.grbl_listen`` whose moves drive the
:class:`CardWorld`, which hands card events to the terminals with ``stations``. On
``sim.control_listen`` it serves the control port (:mod:`rig.sim.control`: card faults and
terminal quirks, JSON lines).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..config import LabConfig
from ..errors import InfrastructureError
from .control import ControlServer
from .grbl import GrblServer
from .journal import TruthJournal
from .lines import parse_hostport
from .psu import ScpiPsuServer
from .terminal import VirtualTerminal
from .world import CardWorld

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_journal_path(cfg: LabConfig) -> Path:
    """``cfg.sim.truth_journal`` or ``results/<lab name>-truth.jsonl``."""
    return Path(cfg.sim.truth_journal or f"results/{cfg.name}-truth.jsonl")


class VirtualLab:
    """Fake hardware of one lab on loopback. Use as a context manager or start()/stop()."""

    def __init__(self, cfg: LabConfig, journal_path: str | None = None) -> None:
        self.cfg = cfg
        self.journal_path = Path(journal_path) if journal_path else default_journal_path(cfg)
        self.journal = TruthJournal(self.journal_path)
        sim = cfg.sim
        self.terminals: dict[str, VirtualTerminal] = {
            name: VirtualTerminal(name, t, sim, self.journal, random.Random(f"{sim.seed}:{name}"))
            for name, t in cfg.terminals.items()}
        self._by_channel: dict[int, list[VirtualTerminal]] = {}
        for name, t in cfg.terminals.items():
            if t.power.psu is None:
                log.warning("%s is powered by relay %s, which the virtual lab does not simulate; "
                            "it stays off", name, t.power.relay)
            elif t.power.channel > sim.psu_channels:
                log.warning("%s is on PSU channel %d but the virtual PSU has %d channels; it stays off",
                            name, t.power.channel, sim.psu_channels)
            else:
                self._by_channel.setdefault(t.power.channel, []).append(self.terminals[name])
        self.psu = ScpiPsuServer(channels=sim.psu_channels, model=sim.psu_model,
                                 on_power=self._on_power, load=self._load)
        self.world: CardWorld | None = None
        self.grbl: GrblServer | None = None
        layout = cfg.robot
        if layout is not None and getattr(cfg.instruments.get(layout.instrument), "kind", None) == "robot":
            stations = {n: t.stations for n, t in cfg.terminals.items() if t.stations is not None}
            self.world = CardWorld(layout, sim, stations, self.journal)
            self.grbl = GrblServer(max_feed_mm_min=sim.robot_max_feed_mm_min,
                                   on_segment=self.world.on_segment, on_gripper=self.world.on_gripper)
            for name in stations:
                self.terminals[name].world = self.world
                self.world.attach(name, self.terminals[name].card_event)
        self.control = ControlServer(self.terminals, self.world, self.journal)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set when the loop thread ended
        self._closed = False
        self._announced = False  # lab_start journaled

    # --- wiring -------------------------------------------------------------------------------
    def _on_power(self, channel: int, powered: bool, volts: float) -> None:
        for t in self._by_channel.get(channel, ()):
            t.power(powered, volts)

    def _load(self, channel: int) -> float:
        return sum(t.load() for t in self._by_channel.get(channel, ()))

    def addresses(self) -> dict[str, str]:
        """Where everything listens: ``{"psu": "h:p", "robot": "h:p", "T1.console": "h:p", ...}``."""
        out = {"psu": f"{parse_hostport(self.cfg.sim.psu_listen)[0]}:{self.psu.port}"}
        if self.grbl is not None:
            out["robot"] = f"{parse_hostport(self.cfg.sim.grbl_listen)[0]}:{self.grbl.port}"
        if self.control.address:
            out["control"] = f"{self.control.address[0]}:{self.control.address[1]}"
        for name, t in self.terminals.items():
            for kind, srv in (("console", t.console), ("ecr", t.ecr)):
                if srv.address:
                    out[f"{name}.{kind}"] = f"{srv.address[0]}:{srv.address[1]}"
        return out

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and the loop thread's end."""
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    def state(self, terminal: str) -> str:
        """The terminal's state (``OFF``, ``BOOTING``, ``LOGIN``, ``SIGNON``, ``READY``...)."""
        return str(self.terminals[terminal].state)

    # --- running ------------------------------------------------------------------------------
    async def _astart(self) -> None:
        host, port = parse_hostport(self.cfg.sim.psu_listen)
        await self.psu.start(host, port)
        if self.grbl is not None:
            await self.grbl.start(*parse_hostport(self.cfg.sim.grbl_listen))
        if self.cfg.sim.control_listen:
            await self.control.start(*parse_hostport(self.cfg.sim.control_listen))
        for t in self.terminals.values():
            await t.start()

    async def _astop(self) -> None:
        for t in self.terminals.values():
            try:
                await t.stop()
            except Exception:
                log.exception("stopping %s", t.name)
        try:
            await self.psu.stop()
        except Exception:
            log.exception("stopping the PSU server")
        if self.grbl is not None:
            try:
                await self.grbl.stop()
            except Exception:
                log.exception("stopping the GRBL server")
        try:
            await self.control.stop()
        except Exception:
            log.exception("stopping the control port")

    def start(self, timeout_s: float = 10.0) -> VirtualLab:
        """Start the loop thread; returns once every server listens (raises if one cannot)."""
        with self._lock:
            if self._thread is not None:
                return self
            if self._closed:
                raise InfrastructureError(f"virtual lab {self.cfg.name!r} was stopped; make a new one")
            started = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(target=self._main, args=(started, failure),
                                            name=f"vlab-{self.cfg.name}", daemon=True)
            self._thread.start()
        if not started.wait(timeout_s):
            self.stop()
            raise InfrastructureError(f"virtual lab {self.cfg.name!r}: not listening after {timeout_s} s")
        if failure:
            self.stop()
            e = failure[0]
            raise InfrastructureError(f"virtual lab {self.cfg.name!r} cannot start: {e}; "
                                      "is another lab (or anything else) using these ports?") from e
        addresses = self.addresses()
        self._announced = True
        self.journal.record(None, "lab_start", lab=self.cfg.name, pid=os.getpid(), addresses=addresses)
        log.info("virtual lab %s listening: %s", self.cfg.name, addresses)
        return self

    def _main(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._astart())
            except BaseException as e:
                failure.append(e)
                started.set()
                loop.run_until_complete(self._astop())
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._astop())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
        finally:
            loop.close()
            self._stopped.set()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        """Run a coroutine on the lab's loop from another thread and return its result."""
        if self._loop is None or not self._loop.is_running():
            raise InfrastructureError(f"virtual lab {self.cfg.name!r} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop everything and close every port; safe to call twice."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed = True
        if thread is not None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(loop.stop)
                except RuntimeError:  # closed meanwhile
                    pass
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("virtual lab %s: loop thread did not stop within %s s", self.cfg.name, timeout_s)
            if self._announced:
                self.journal.record(None, "lab_stop", lab=self.cfg.name, pid=os.getpid())
        self.journal.close()

    def run(self) -> None:
        """Start, then serve in the foreground until SIGINT / SIGTERM (or ``stop()``)."""
        self.start()
        stop = threading.Event()
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            while not stop.wait(0.2) and self.running:
                pass
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.stop()

    def __enter__(self) -> VirtualLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
