"""Turning a fault on and off: one :class:`Injector` per rig, one backend per layer.

``Injector.on(terminal, fault)`` changes the world (a proxy toxic, an nftables table, a host
rule, a PSU transient, a card fault in the virtual lab), records ``FAULT_ON`` stamped right
after the change took effect, and returns an :class:`Active` whose ``off()`` undoes it and
records ``FAULT_OFF``. Every active fault is also written to the lab's fault ledger
(:mod:`rig.faults.ledger`) so ``rig fault list`` in another process sees it and a crashed rig's
leftovers can be named. Robot faults change how the rig presents a card; they are read by the
sale procedure through :meth:`Injector.robot_faults`, not applied here.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import LabConfig
from ..core.clock import Stamp, now
from ..core.errors import TestError
from ..timeline.events import Event, EventKind, Sink
from . import spec
from .ledger import Ledger
from .power import PowerPath, PowerTransient

log = logging.getLogger(__name__)
SOURCE = "faults"


@dataclass
class Backends:
    """What the injector may act on; the rig fills in what its lab has."""

    cfg: LabConfig
    sink: Sink
    host_rules: Any = None  # rig.host.rules.ResponseRules
    proxies: dict[str, Any] = field(default_factory=dict)  # terminal -> FaultProxy
    power: Callable[[str], PowerPath] | None = None
    kernel: Callable[[], Any] | None = None  # -> KernelFaults (made on first use)
    kernel_match: Callable[[str], Any] | None = None  # terminal -> kernel.Match
    kernel_iface: Callable[[str], str | None] | None = None
    lab: Any = None  # rig.faults.labctl.LabControl (virtual lab only)


@dataclass
class Active:
    """One fault that is on; ``off()`` undoes it (idempotent)."""

    id: str
    terminal: str
    fault: spec.Fault
    since: Stamp
    undo: Callable[[], None]
    injector: Injector
    trigger: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def off(self, reason: str = "released") -> Stamp | None:
        return self.injector.off(self, reason)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "terminal": self.terminal, "fault": self.fault.name,
                "layer": self.fault.layer, "params": self.fault.params(),
                "since_wall_ns": self.since.wall_ns}


class Injector:
    """Applies faults to the lab's backends; thread-safe."""

    def __init__(self, backends: Backends, ledger: Ledger | None = None) -> None:
        self.b = backends
        self.ledger = ledger
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.active: dict[str, Active] = {}
        self._transients: dict[str, Any] = {}

    # --- checks before anything changes ---------------------------------------------------------
    def check(self, terminal: str, fault: spec.Fault) -> None:
        """Raise TestError when ``fault`` cannot act on ``terminal`` in this lab (nothing changes)."""
        cfg = self.b.cfg
        if terminal not in cfg.terminals:
            raise TestError(f"unknown terminal {terminal!r}; this lab has {', '.join(cfg.terminals)}")
        layer = fault.layer
        if layer == "proxy" and terminal not in self.b.proxies:
            t = cfg.terminals[terminal]
            raise TestError(
                f"{terminal}: {fault.name} needs the terminal's fault proxy, but its host_path "
                f"{t.host_path} is the host itself ({cfg.host.listen}); give the terminal a "
                f"host_path of its own (the rig proxies it to the host)")
        if layer == "host" and self.b.host_rules is None:
            raise TestError(f"{fault.name}: this rig runs no acquirer host")
        if layer == "power":
            p = cfg.terminals[terminal].power
            switch_only = (f"relay {p.relay}" if p.relay else
                           f"PDU {p.pdu} (pdudaemon)" if p.pdu else None)
            if switch_only and not getattr(fault, "relay_ok", False):
                raise TestError(f"{terminal} is powered through {switch_only}: it can only "
                                f"switch, so {fault.name} is impossible; use PowerDropout")
            if isinstance(fault, spec.Brownout | spec.SlowRamp) and p.voltage is not None:
                v = fault.volts if isinstance(fault, spec.Brownout) else fault.from_volts
                if v > p.voltage:
                    raise TestError(f"{fault.name}: {v} V is above the terminal's nominal "
                                    f"{p.voltage} V; a brownout lowers the voltage")
        if layer == "card":
            if self.b.lab is None:
                raise TestError(
                    f"{fault.name}: card faults are switched on emulated cards of the virtual lab; "
                    f"on a bench put a card with that defect (e.g. configs/cards/mute.yaml) in "
                    f"the magazine and use ExpiredCard(card=...) to present it")
            card = getattr(fault, "card", None)
            if card is None:
                raise TestError(f"{fault.name}: say which card profile (card=...)")
        if layer == "kernel" and (self.b.kernel is None or self.b.kernel_match is None):
            raise TestError(f"{fault.name}: kernel faults are not available in this rig")
        if layer == "kernel" and isinstance(fault, spec.LinkDown | spec.LinkFlap | spec.Rate
                                            | spec.Netem):
            iface = self.b.kernel_iface(terminal) if self.b.kernel_iface else None
            if iface is None:
                raise TestError(
                    f"{terminal}: {fault.name} acts on a network interface, and the terminal has "
                    f"none of its own (set `net_iface` for a bench terminal, or `sim.netns: true` "
                    f"for the virtual lab)")

    # --- on / off -----------------------------------------------------------------------------
    def on(self, terminal: str, fault: spec.Fault, trigger: dict[str, Any] | None = None) -> Active:
        """Switch ``fault`` on for ``terminal``; records FAULT_ON. Raises before any change when
        the fault cannot be applied here."""
        self.check(terminal, fault)
        fid = f"f{next(self._ids)}"
        t0 = time.monotonic_ns()
        undo = self._apply(fid, terminal, fault)
        stamp = now()
        act = Active(fid, terminal, fault, stamp, undo, self, dict(trigger or {}))
        with self._lock:
            self.active[fid] = act
        if self.ledger is not None:
            self.ledger.add(act.as_dict())
        self.b.sink.record(Event.at(
            stamp, EventKind.FAULT_ON, SOURCE, terminal, id=fid, fault=fault.name,
            layer=fault.layer, params=fault.params(), window=fault.window(),
            apply_us=(stamp.mono_ns - t0) // 1000, **act.trigger))
        log.info("%s: fault on %s (%s)", terminal, fault.label(), fid)
        transient = self._transients.pop(fid, None)
        if transient is not None:  # a power transient ends by itself: its end is the off edge
            transient.when_done(lambda: act.off("transient over"))
        return act

    def off(self, act: Active, reason: str = "released") -> Stamp | None:
        with self._lock:
            if act.done:
                return None
            act.done = True
            self.active.pop(act.id, None)
        t0 = time.monotonic_ns()
        error = None
        try:
            act.undo()
        except Exception as e:  # keep going: the FAULT_OFF says it failed, the sweep retries
            error = f"{type(e).__name__}: {e}"
            log.error("%s: undoing %s failed: %s", act.terminal, act.fault.label(), error)
        stamp = now()
        if self.ledger is not None:
            self.ledger.remove(act.id)
        data: dict[str, Any] = {"id": act.id, "fault": act.fault.name, "layer": act.fault.layer,
                                "held_s": (stamp.mono_ns - act.since.mono_ns) / 1e9,
                                "undo_us": (stamp.mono_ns - t0) // 1000, "reason": reason}
        if error:
            data["error"] = error
        self.b.sink.record(Event.at(stamp, EventKind.FAULT_OFF, SOURCE, act.terminal, **data))
        return stamp

    def off_all(self, reason: str = "rig closing") -> None:
        with self._lock:
            acts = list(self.active.values())
        for act in reversed(acts):
            act.off(reason)

    def robot_faults(self, terminal: str) -> list[spec.Fault]:
        """Active robot faults of ``terminal`` (the sale procedure applies them)."""
        with self._lock:
            return [a.fault for a in self.active.values()
                    if a.terminal == terminal and a.fault.layer == "robot"]

    # --- per layer ----------------------------------------------------------------------------
    def _apply(self, fid: str, terminal: str, f: spec.Fault) -> Callable[[], None]:
        apply = getattr(self, f"_apply_{f.layer}")
        return apply(fid, terminal, f)

    def _apply_proxy(self, fid: str, terminal: str, f: spec.Fault) -> Callable[[], None]:
        from .proxy import Toxic

        proxy = self.b.proxies[terminal]
        if isinstance(f, spec.Refuse | spec.HostDown):
            proxy.refuse(True)
            return lambda: proxy.refuse(False)
        assert isinstance(f, spec._Proxy)
        common = {"direction": f.direction, "toxicity": f.toxicity}
        if isinstance(f, spec.Latency):
            toxic = Toxic("latency", latency_ms=f.ms, jitter_ms=f.jitter_ms, **common)
        elif isinstance(f, spec.Bandwidth):
            toxic = Toxic("bandwidth", rate_kbps=f.kbps, **common)
        elif isinstance(f, spec.Stall):
            toxic = Toxic("stall", **common)
        elif isinstance(f, spec.Reset):
            toxic = Toxic("reset", **common)
        elif isinstance(f, spec.Slicer):
            toxic = Toxic("slicer", avg_bytes=f.avg_bytes, size_variation=f.size_variation,
                          delay_us=f.delay_us, **common)
        elif isinstance(f, spec.CloseAfter):
            toxic = Toxic("close_after", bytes=f.bytes, **common)
        elif isinstance(f, spec.SlowClose):
            toxic = Toxic("slow_close", delay_ms=f.ms, **common)
        else:  # pragma: no cover - every proxy fault is listed above
            raise TestError(f"{f.name}: no proxy toxic for it")
        tid = proxy.add(toxic)
        return lambda: proxy.remove(tid)

    def _apply_host(self, fid: str, terminal: str, f: spec.Fault) -> Callable[[], None]:
        from ..host.rules import HostFaultSpec

        assert isinstance(f, spec._Host)
        applies = f.applies_to
        if isinstance(f, spec.HostSlowSignon):
            applies = "signon"
        hs = HostFaultSpec(action=f.action, terminal=terminal, applies_to=applies,
                           rc=getattr(f, "rc", None), ms=float(getattr(f, "ms", 0.0)),
                           count=f.count)
        rules = self.b.host_rules
        hid = rules.add_fault(hs)
        return lambda: rules.remove_fault(hid)

    def _apply_kernel(self, fid: str, terminal: str, f: spec.Fault) -> Callable[[], None]:
        assert self.b.kernel is not None and self.b.kernel_match is not None
        k = self.b.kernel()
        # the nft table is rig_<name>: the pid lets a sweep spare the tables of live rigs
        name = re.sub(r"\W", "_", f"p{os.getpid()}_{terminal}_{fid}")[:48]
        iface = self.b.kernel_iface(terminal) if self.b.kernel_iface else None
        if isinstance(f, spec.Loss):
            h = k.loss(name, f.percent, self.b.kernel_match(terminal))
        elif isinstance(f, spec.Blackhole):
            h = k.blackhole(name, self.b.kernel_match(terminal))
        elif isinstance(f, spec.Reject):
            h = k.reject(name, self.b.kernel_match(terminal))
        elif isinstance(f, spec.LinkDown):
            h = k.link_down(iface)
        elif isinstance(f, spec.LinkFlap):
            h = k.flap(iface, f.down_s, f.up_s)
        elif isinstance(f, spec.Rate):
            h = k.rate(iface, f.kbit)
        elif isinstance(f, spec.Netem):
            h = k.netem(iface, delay_ms=f.delay_ms, jitter_ms=f.jitter_ms, loss=f.loss,
                        reorder=f.reorder, corrupt=f.corrupt, duplicate=f.duplicate)
        else:  # pragma: no cover
            raise TestError(f"{f.name}: not a kernel fault")
        return lambda: k.undo(h)

    def _apply_power(self, fid: str, terminal: str, f: spec.Fault) -> Callable[[], None]:
        assert self.b.power is not None
        tr = PowerTransient(terminal, self.b.power(terminal), f)
        tr.start()
        self._transients[fid] = tr
        return tr.stop

    def _apply_card(self, fid: str, terminal: str, f: spec.Fault) -> Callable[[], None]:
        what = {"card_mute": "mute", "card_corrupt": "corrupt_record", "card_bad_lrc": "bad_lrc"}
        card = getattr(f, "card", None)
        lab = self.b.lab
        lab.card_fault(card, what[f.name])
        return lambda: lab.card_fault(card, None)

    def _apply_robot(self, fid: str, terminal: str, f: spec.Fault) -> Callable[[], None]:
        if self.b.cfg.robot is None:
            raise TestError(f"{f.name}: this lab has no card robot")
        return lambda: None  # read by the sale procedure while active

