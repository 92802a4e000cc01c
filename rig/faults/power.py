"""Power faults through the terminal's PSU channel (or relay, or PDU outlet): dropout,
brownout, slow ramp.

A transient runs in its own thread: :meth:`PowerTransient.start` returns once the first change
is acknowledged by the instrument (so ``FAULT_ON`` is stamped after the terminal really lost
power), the thread sleeps out the fault and restores nominal power, then calls ``on_done`` (the
injector records ``FAULT_OFF``). ``stop()`` ends it early and always leaves nominal power, the
output on. A relay and a PDU outlet (through pdudaemon) can only switch: they support dropout
alone (checked before anything changes); a PDU's dropout is as coarse as pdudaemon's answers
(each edge takes one HTTP request, the PDU's own I/O included).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import TestError
from . import spec

log = logging.getLogger(__name__)


@dataclass
class PowerPath:
    """How a terminal is powered, as the power faults need it."""

    kind: str  # "psu" | "relay" | "pdu"
    driver: Any  # PsuDriver | RelayDriver | PduDriver
    channel: int
    nominal_v: float | None = None
    min_v_hint: float | None = None


class PowerTransient:
    def __init__(self, terminal: str, path: PowerPath, fault: spec.Fault) -> None:
        if path.kind in ("relay", "pdu") and not isinstance(fault, spec.PowerDropout):
            what = "a relay" if path.kind == "relay" else "a PDU outlet (pdudaemon)"
            raise TestError(f"{terminal}: {what} can only switch; {fault.name} needs a PSU "
                            f"(use PowerDropout)")
        if path.kind == "psu" and path.nominal_v is None:
            raise TestError(f"{terminal}: no nominal voltage configured for its PSU channel")
        self.terminal, self.path, self.fault = terminal, path, fault
        self._cancel = threading.Event()
        self._first = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._on_done: Callable[[], object] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"power-fault-{terminal}",
                                        daemon=True)

    # --- control ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> None:
        """Start; return once the first change was acknowledged (re-raises its error)."""
        self._thread.start()
        if not self._first.wait(timeout_s):
            self.stop()
            raise TestError(f"{self.terminal}: {self.fault.name} did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join(timeout_s)
            raise self._error

    def when_done(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the transient is over by itself (at once if it is)."""
        with self._lock:
            if not self._done.is_set():
                self._on_done = callback
                return
        callback()

    def stop(self) -> None:
        """End early (if running) and leave nominal power; idempotent."""
        self._cancel.set()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(30.0)

    # --- the transient --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._transient()
        except BaseException as e:  # noqa: BLE001 - reported to start() or logged
            if not self._first.is_set():
                self._error = e
            else:
                log.error("%s: %s failed: %s", self.terminal, self.fault.name, e)
        finally:
            try:
                self._restore()
            except Exception as e:
                log.error("%s: could not restore nominal power after %s: %s",
                          self.terminal, self.fault.name, e)
            self._first.set()
            with self._lock:
                self._done.set()
                cb, self._on_done = self._on_done, None
            if cb is not None and self._error is None:
                cb()

    def _transient(self) -> None:
        f, p = self.fault, self.path
        if isinstance(f, spec.PowerDropout):
            self._switch(False)
            self._first.set()
            self._cancel.wait(f.ms / 1000.0)
        elif isinstance(f, spec.Brownout):
            p.driver.set_voltage(p.channel, f.volts)
            self._first.set()
            self._cancel.wait(f.ms / 1000.0)
        elif isinstance(f, spec.SlowRamp):
            assert p.nominal_v is not None
            p.driver.set_voltage(p.channel, f.from_volts)
            self._first.set()
            step_s = f.s / f.steps
            for i in range(1, f.steps + 1):
                if self._cancel.wait(step_s):
                    return
                v = f.from_volts + (p.nominal_v - f.from_volts) * i / f.steps
                p.driver.set_voltage(p.channel, round(v, 3))
        else:
            raise TestError(f"{f.name}: not a power fault")

    def _switch(self, on: bool) -> None:
        p = self.path
        if p.kind == "psu":
            p.driver.output(p.channel, on)
        else:
            p.driver.set(p.channel, on)

    def _restore(self) -> None:
        p = self.path
        if isinstance(self.fault, spec.PowerDropout):
            self._switch(True)
        elif p.kind == "psu" and p.nominal_v is not None:
            p.driver.set_voltage(p.channel, p.nominal_v)
