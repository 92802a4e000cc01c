"""The PSU current trace: each PSU-powered terminal's channel sampled while a cycle is open.

One sampling thread per power supply (a slow instrument never delays another's samples) reads
every active channel of that supply in one exchange where the dialect allows compound queries
(:meth:`rig.drivers.psu.PsuDriver.sample`), at the supply's ``trace_hz``. A channel becomes
active when its terminal's cycle opens and inactive when it is taken, so a trace covers the
power cycle, boot, sign-on and any transaction, and lines up with the cycle's events: both are
stamped at the I/O boundary on the same clock.

Samples are buffered and written to the store's ``current_samples`` table at least every
:data:`FLUSH_S` and when a cycle ends (before its end marker); a crash loses at most that much
of a trace. A PSU that stops answering is logged once and asked again every :data:`RETRY_S`
(not at the trace rate: each failed exchange holds the driver's lock through a reconnect): the
trace has a gap, the cycle goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..config import LabConfig
from ..core.errors import RigError
from ..drivers.psu import PsuDriver
from ..timeline.recorder import Recorder
from ..timeline.store import Store

log = logging.getLogger(__name__)

FLUSH_S = 0.5
RETRY_S = 2.0  # a supply that does not answer is asked again this often (not at trace_hz)


@dataclass(frozen=True, slots=True)
class _Active:
    terminal: str
    channel: int
    run_id: int
    cycle_id: int | None


class _Sampler:
    """One PSU's sampling thread."""

    def __init__(self, trace: CurrentTrace, psu: PsuDriver, rate_hz: float, volts: bool) -> None:
        self.trace, self.psu, self.volts = trace, psu, volts
        self.period_s = 1.0 / rate_hz
        self.active: dict[str, _Active] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.failing = False
        self.thread = threading.Thread(target=self._run, name=f"rig-trace-{psu.name}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while True:
            with self.cond:
                while not self.active and not self.stopping:
                    self.cond.wait()
                    due = time.monotonic()
                if self.stopping:
                    return
                active = list(self.active.values())
            self._sample(active)
            due += self.period_s if not self.failing else max(self.period_s, RETRY_S)
            late = time.monotonic() - due
            if late > self.period_s:  # fell behind (a slow reply): skip, never burst
                due = time.monotonic()
            with self.cond:
                if not self.stopping:
                    self.cond.wait(max(0.0, due - time.monotonic()))

    def _sample(self, active: list[_Active]) -> None:
        try:
            readings = self.psu.sample([a.channel for a in active], self.volts)
        except RigError as e:
            if not self.failing:
                log.warning("current trace of %s: %s; the trace has a gap until it answers",
                            self.psu.name, e)
            self.failing = True
            return
        if self.failing:
            log.info("current trace of %s: answering again", self.psu.name)
            self.failing = False
        self.trace.add([
            (a.run_id, a.cycle_id, a.terminal, self.psu.name, a.channel, r.mono_ns, r.wall_ns,
             r.clock.value, r.amps, r.volts)
            for a, r in zip(active, readings, strict=True)])

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=5)


class CurrentTrace:
    """Samples the PSU channel of each terminal with an open cycle; see the module doc.

    Wire :meth:`cycle_edge` to the terminals' cycle edges; :meth:`close` stops the threads and
    writes what is buffered.
    """

    def __init__(self, cfg: LabConfig, psus: dict[str, PsuDriver], store: Store,
                 recorder: Recorder) -> None:
        self.store, self.recorder = store, recorder
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._flushed = time.monotonic()
        self._channel: dict[str, tuple[_Sampler, int]] = {}
        samplers: dict[str, _Sampler] = {}
        for tname, t in cfg.terminals.items():
            name = t.power.psu
            if name is None or name not in psus:
                continue
            inst = psus[name].cfg
            if inst.trace_hz <= 0:
                continue
            if name not in samplers:
                samplers[name] = _Sampler(self, psus[name], inst.trace_hz, inst.trace_volts)
            self._channel[tname] = (samplers[name], t.power.outlet)
        self._samplers = list(samplers.values())

    @property
    def terminals(self) -> list[str]:
        """The terminals whose channel is traced."""
        return list(self._channel)

    def cycle_edge(self, terminal: str, start: bool) -> None:
        """A cycle of ``terminal`` opened (start its channel) or was taken (stop it, write the
        samples)."""
        entry = self._channel.get(terminal)
        if entry is None:
            return
        sampler, channel = entry
        with sampler.cond:
            if start:
                run, cycle = self.recorder.route(terminal)
                sampler.active[terminal] = _Active(terminal, channel, run, cycle)
                sampler.cond.notify_all()
            else:
                sampler.active.pop(terminal, None)
        if not start:
            self.flush()

    def add(self, rows: list[tuple]) -> None:
        with self._lock:
            self._rows.extend(rows)
            due = time.monotonic() - self._flushed >= FLUSH_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples (and commit)."""
        with self._lock:
            rows, self._rows = self._rows, []
            self._flushed = time.monotonic()
        if not rows:
            return
        try:
            self.store.append_current(rows)
            self.store.commit()
        except Exception:  # a trace must never fail a cycle; the events carry the result
            log.exception("current trace: could not write %d samples", len(rows))

    def close(self) -> None:
        for s in self._samplers:
            s.stop()
        self.flush()
