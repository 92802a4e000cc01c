"""The bench: the one owner of a lab's hardware (instruments, consoles, ECR ports, robot,
acquirer host, fault proxies, injector, the virtual-lab child, recorder and store).

A :class:`Bench` opens everything in the lab config and registers each undo on one ExitStack
(after OpenHTF), so ``close()``, Ctrl-C and SIGTERM leave the configured safe state. Calls are
made through sessions (:mod:`rig.control.session`), one run each: the rig service opens one per
client; :func:`open_local` returns a session that owns its bench (tests; the service itself).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from ..config import LabConfig, load_lab
from ..core.clock import WallToMono
from ..core.errors import InfrastructureError, TestError
from ..drivers.console import ConsoleReader
from ..drivers.ecr import EcrDriver
from ..drivers.pdu import PduDriver
from ..drivers.profiles import get_profile
from ..drivers.psu import PsuDriver
from ..drivers.relay import RelayDriver
from ..faults.inject import Backends, Injector
from ..faults.labctl import LabControl
from ..faults.ledger import Ledger
from ..faults.schedule import Windows
from ..faults.sweep import sweep
from ..host.server import AcquirerHost
from ..timeline.events import Event
from ..timeline.recorder import Recorder
from ..timeline.store import Store
from .current_trace import CurrentTrace
from .cycles import TerminalCycle
from .hardware import Hardware
from .labproc import LabProcess, listening
from .session import Session

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/labs/virtual.yaml"


def results_dir(results: str | Path | None = None) -> Path:
    return Path(results or os.environ.get("RIG_RESULTS") or "results")


def _process_started_at() -> float:
    """This process's start time (wall clock, s); now if /proc cannot tell."""
    import time

    from ..timeline.store import proc_start

    ticks = proc_start(os.getpid())
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        assert ticks is not None
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, AssertionError, ValueError):
        return time.time()


def sweep_config_files(results: Path, lab: str) -> list[Path]:
    """Remove the lab configs (``.<lab>-*.yaml``: a bench's for its lab child, a client's for
    the service) that a killed process left in ``results``: those older than this process
    (with a second's margin for the coarse boot time). Returns what it removed."""
    if not results.is_dir():
        return []
    cutoff = _process_started_at() - 1.0
    gone = []
    for p in results.glob(f".{lab}-*.yaml"):
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
                gone.append(p)
        except FileNotFoundError:
            continue
    if gone:
        log.warning("removed %d lab config file(s) left by a killed process in %s",
                    len(gone), results)
    return gone


class Bench:
    """Owns one lab's hardware; hands out sessions. Thread-safe. Close it exactly once."""

    def __init__(self, config: str | Path | LabConfig = DEFAULT_CONFIG, *, label: str | None = None,
                 results: str | Path | None = None, start_lab: bool | None = None,
                 run_kind: str = "local") -> None:
        from ..core.logredact import install as install_redaction

        install_redaction()  # every log handler: no PAN, track, PIN block or key in a log
        self.cfg = config if isinstance(config, LabConfig) else load_lab(config)
        self.config_path = None if isinstance(config, LabConfig) else Path(config)
        self.results = results_dir(results)
        self.label = label
        self.run_kind = run_kind
        self._stack = contextlib.ExitStack()
        self.lab: LabProcess | None = None
        self._closed = False
        self._run_state = "running"
        self._lock = threading.Lock()
        self.sessions: dict[str, Session] = {}
        self.recovered: list[int] = []
        try:
            self._open(start_lab)
        except BaseException:
            self._close("failed")
            raise

    # --- set-up -------------------------------------------------------------------------------
    def _open(self, start_lab: bool | None) -> None:
        cfg = self.cfg
        sweep_config_files(self.results, cfg.name)
        self.store = Store(self.results / f"{cfg.name}.db")
        self._stack.callback(self.store.close)
        self.recovered = self.store.recover()
        self.run_id = self._begin_run(self.label, self.run_kind)
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

        self.hw = hw = Hardware(cfg, self.store, self.recorder)
        self.psus, self.relays = hw.psus, hw.relays
        self.consoles, self.ecrs = hw.consoles, hw.ecrs
        for name, inst in cfg.instruments.items():
            if inst.kind == "robot":
                from ..drivers.robot import RobotDriver

                layout = cfg.robot if cfg.robot and cfg.robot.instrument == name else None
                robot = RobotDriver(name, inst, self.recorder, layout=layout)
                robot.open()
                self._stack.callback(robot.close)  # parks first
                if layout is not None:
                    hw.robot = robot
                continue
            if inst.kind == "psu":
                limits = {}
                for t in cfg.terminals.values():
                    if t.power.psu == name:
                        m = cfg.models[t.model]
                        limits[t.power.outlet] = (m.voltage_max, m.current_max)
                drv = PsuDriver(name, inst, self.recorder, limits=limits)
                drv.open()
                self._stack.callback(drv.close)
                self.psus[name] = drv
            else:
                rdrv = RelayDriver(name, inst, self.recorder)
                rdrv.open()
                self._stack.callback(rdrv.close)
                self.relays[name] = rdrv
        for name, pcfg in cfg.pdus.items():  # PDUs behind pdudaemon: checked it answers
            pdu = PduDriver(name, pcfg, self.recorder)
            pdu.open()
            self._stack.callback(pdu.close)
            hw.pdus[name] = pdu

        for tname, t in cfg.terminals.items():
            if t.console:
                reader = ConsoleReader(tname, t.console, get_profile(cfg.models[t.model].profile),
                                       self.recorder)
                if not reader.start(wait_s=5.0):
                    log.warning("%s: console %s not open yet; still trying", tname, t.console)
                self._stack.callback(reader.stop)
                self.consoles[tname] = reader
            if t.ecr:
                prof = get_profile(cfg.models[t.model].profile)
                ecr = EcrDriver(tname, t.ecr, self.recorder, protocol="framed" if prof.ecr ==
                                "framed" else "line", retries=prof.ecr_retries)
                self._stack.callback(ecr.close)
                self.ecrs[tname] = ecr
        self.cycles = {t: TerminalCycle(t, store=self.store, recorder=self.recorder,
                                        has_console=tc.console is not None)
                       for t, tc in cfg.terminals.items()}
        self._stack.callback(self._safe_state)
        self._open_faults()  # undone before the safe state (unwinds first)
        self.trace = CurrentTrace(cfg, self.psus, self.store, self.recorder)
        self._stack.callback(self.trace.close)  # before the PSUs close (unwinds first)
        for tcyc in self.cycles.values():
            tcyc.add_edge_listener(self.hw.windows.cycle_edge)  # type: ignore[union-attr]
            tcyc.add_edge_listener(self.trace.cycle_edge)

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
        self.injector = self.hw.injector = Injector(Backends(
            cfg=cfg, sink=self.recorder, host_rules=self.host.rules, proxies=self.proxies,
            power=self.hw.power_path, kernel=kernel_faults, kernel_match=kernel_match,
            kernel_iface=lambda t: cfg.terminals[t].net_iface, lab=lab), self.ledger)
        self.windows = self.hw.windows = Windows(self.injector)
        self.recorder.add_listener(self.windows.on_event)
        self._stack.callback(self.injector.off_all)
        self._stack.callback(self.windows.close)
        held = {e.get("terminal") for e in self.ledger.entries()
                if e.get("alive") and e.get("layer") == "power"}
        self.swept = sweep(
            ledger=self.ledger, sink=self.recorder,
            power={t: self.hw.power_path(t) for t in cfg.terminals if t not in held},
            kernel=kernel_faults, lab=lab if self.lab is None else None)

    @property
    def journal_path(self) -> Path:
        """The virtual lab's truth journal (when this rig started the lab)."""
        return self.results / f"{self.cfg.name}-truth.jsonl"

    def _config_file(self) -> Path:
        if self.config_path is not None:
            return self.config_path
        self.results.mkdir(parents=True, exist_ok=True)
        # it holds keys and passwords: 0600 (mkstemp), removed on close, swept after a kill -9
        fd, name = tempfile.mkstemp(prefix=f".{self.cfg.name}-", suffix=".yaml", dir=self.results)
        path = Path(name)
        self._stack.callback(path.unlink, missing_ok=True)
        with os.fdopen(fd, "w") as f:
            YAML(typ="safe").dump(self.cfg.model_dump(mode="json"), f)
        return path

    def begin_run(self, label: str | None, kind: str, client: dict[str, Any] | None = None) -> int:
        """A new run in the store (a client session's, a campaign's), with the lab's config
        snapshot and clock notes."""
        return self._begin_run(label, kind, client)

    def _begin_run(self, label: str | None, kind: str, client: dict[str, Any] | None = None) -> int:
        w2m = WallToMono()
        return self.store.begin_run(
            lab=self.cfg.name, label=label, config=self.cfg.snapshot(),
            clock={"host": os.uname().nodename, "wall_minus_mono_ns": w2m.offset_ns(),
                   "power_on": "PSU: acknowledge RX of the output command, bracketed by its TX "
                               "(event data tx_ns / ack_ns / bracket_ns); relay: after flush(); "
                               "pdu: pdudaemon's HTTP answer, bracketed by the request's TX "
                               "(coarse: its queue and the PDU's I/O are inside the bracket)",
                   "sources": {"host": "kernel SO_TIMESTAMPNS (rx), kernel TX stamps (tx)",
                               "console": "kernel SO_TIMESTAMPNS", "psu": "kernel SO_TIMESTAMPNS",
                               "ecr": "thread"},
                   "kind": kind, "client": client or {}},
        )

    # --- events -------------------------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        tc = self.cycles.get(ev.terminal or "") if hasattr(self, "cycles") else None
        if tc is not None:
            tc.on_event(ev)

    @property
    def terminals(self) -> list[str]:
        return list(self.cfg.terminals)

    # --- sessions -----------------------------------------------------------------------------
    def session(self, *, label: str | None = None, owner: str | None = None,
                client: dict[str, Any] | None = None, own_run: bool = True,
                run_id: int | None = None) -> Session:
        """A new session: its own new run (``own_run``), an existing run (``run_id``: a
        campaign resumed), or the bench's run."""
        if self._closed:
            raise TestError("this bench is closed")
        owner = owner or f"session-{uuid.uuid4().hex[:8]}"
        if run_id is None:
            run_id = self._begin_run(label, "session", client) if own_run else self.run_id
        s = Session(self.hw, self.cycles, run_id, owner=owner, label=label,
                    journal_path=self.journal_path, results=self.results,
                    on_close=self._session_closed if own_run else None)
        with self._lock:
            self.sessions[owner] = s
        return s

    def _session_closed(self, s: Session, state: str) -> None:
        """A session ended: the terminals it drove go to the safe state, as a closing Rig's
        did when each notebook owned the lab; its run is marked."""
        with self._lock:
            self.sessions.pop(s.owner, None)
        self.safe_state(sorted(s.used))
        for t in self.cfg.terminals:  # its terminals' later events go to the bench's run
            if self.recorder.route(t)[0] == s.run_id:
                self.recorder.set_cycle(t, None)
        self.recorder.flush()
        self.store.end_run(s.run_id, state)

    # --- teardown -----------------------------------------------------------------------------
    def _safe_state(self) -> None:
        for tc in self.cycles.values():
            if tc.open:
                tc.cancel.set()
                tc.finish("aborted", error="interrupted")
        self.safe_state(list(self.cfg.terminals))

    def safe_state(self, terminals: list[str]) -> None:
        """Put ``terminals``' power in the configured safe state (``safe_power``)."""
        if self.cfg.safe_power == "leave":
            return
        on = self.cfg.safe_power == "on"
        for t in terminals:
            try:
                self.hw.switch(t, on)
            except Exception as e:  # keep going: every other terminal still gets its safe state
                log.error("%s: could not reach safe power state %s: %s", t, self.cfg.safe_power, e)

    def _close(self, state: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._run_state = state
        for tc in getattr(self, "cycles", {}).values():
            tc.cancel.set()
        with self._lock:
            sessions = list(self.sessions.values())
        for s in sessions:
            try:
                s.close("interrupted" if state != "completed" else "completed")
            except Exception as e:
                log.error("closing %r: %s", s, e)
        self._stack.close()

    def close(self, state: str = "completed") -> None:
        """Leave the safe state, stop everything, mark the run. Idempotent."""
        self._close(state)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, et: type[BaseException] | None, *_: object) -> None:
        self.close("completed" if et is None else
                   "interrupted" if issubclass(et, KeyboardInterrupt) else "failed")

    def __repr__(self) -> str:
        return f"<Bench lab={self.cfg.name!r} run={getattr(self, 'run_id', None)}>"


class LocalRig(Session):
    """A session that owns its bench (in-process use: tests, benchmarks, the service)."""

    bench: Bench

    @property
    def lab(self) -> LabProcess | None:
        return self.bench.lab

    @property
    def swept(self) -> list[Any]:
        return self.bench.swept

    @property
    def host(self) -> AcquirerHost:
        return self.bench.host

    @property
    def proxies(self) -> dict[str, Any]:
        return self.bench.proxies

    def close(self, state: str = "completed") -> None:
        if self._closed:
            return
        super().close(state)
        self.bench.close(state)

    def __enter__(self) -> LocalRig:
        return self


def open_local(config: str | Path | LabConfig | None = None, *, label: str | None = None,
               results: str | Path | None = None, start_lab: bool | None = None) -> LocalRig:
    """Open a lab in this process (no service): the bench and one session on its run."""
    config = config or os.environ.get("RIG_CONFIG") or DEFAULT_CONFIG
    bench = Bench(config, label=label, results=results, start_lab=start_lab)
    try:
        rig = LocalRig(bench.hw, bench.cycles, bench.run_id, owner="local", label=label,
                       journal_path=bench.journal_path, results=bench.results)
        rig.bench = bench
        return rig
    except BaseException:
        bench.close("failed")
        raise
