"""Undo what a crashed rig left behind, and say what was undone.

Run by every new rig before it touches a terminal (and by ``rig fault clear``). It looks at
the world itself, not only at the fault ledger: ``rig_*`` nftables tables, links the rig took
down and qdiscs it added (through :meth:`rig.faults.kernel.KernelFaults.sweep`), PSU channels
whose voltage is off the terminal's nominal, card faults and quirks left in a running virtual
lab. Ledger entries of dead processes name the leftovers; what the sweep undid is recorded
as one ``FAULT_SWEEP`` event.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from ..timeline.events import Event, EventKind, Sink
from .ledger import Ledger, pid_alive
from .power import PowerPath

log = logging.getLogger(__name__)


def _live_table(table: str) -> bool:
    """``rig_p<pid>_…`` tables of processes that still run are theirs, not leftovers."""
    m = re.match(r"rig_p(\d+)_", table)
    return bool(m) and pid_alive(int(m.group(1)))


def sweep(*, ledger: Ledger | None, sink: Sink, power: dict[str, PowerPath],
          kernel: Callable[[], Any] | None = None, lab: Any = None,
          include_live: bool = False) -> list[str]:
    """Undo leftovers; returns one line per thing undone (empty when the world was clean).

    ``include_live`` also drops ledger entries of processes that still run (``rig fault clear``
    after it asked them to stop)."""
    undone: list[str] = []
    dead = ledger.drop_dead() if ledger is not None else []
    if ledger is not None and include_live:
        for e in ledger.entries():
            ledger.drop_pid(int(e.get("pid", 0)))
    for e in dead:
        undone.append(f"ledger: {e.get('terminal')} {e.get('fault')} {e.get('params')} "
                      f"held by dead pid {e.get('pid')}")
    if kernel is not None:
        try:
            undone += [f"kernel: {line}" for line in kernel().sweep(keep=_live_table)]
        except Exception as e:  # no CAP_NET_ADMIN, no nft: say so, never fail the start
            if any(e_.get("layer") == "kernel" for e_ in dead):
                undone.append(f"kernel: could not sweep ({e})")
            log.info("kernel sweep skipped: %s", e)
    for terminal, path in power.items():
        if path.kind != "psu" or path.nominal_v is None:
            continue
        try:
            v = path.driver.voltage_setpoint(path.channel)
            tol = max(0.01, 0.002 * path.nominal_v)
            off_nominal = abs(v - path.nominal_v) > tol
            # 0 V with the output off is an idle supply, not a leftover; anything else off
            # nominal (a brownout's 6 V, a ramp stuck low with the output on) is
            if off_nominal and (abs(v) > tol or path.driver.output_state(path.channel)):
                path.driver.set_voltage(path.channel, path.nominal_v)
                undone.append(f"power: {terminal} channel {path.channel} was set to {v:g} V, "
                              f"back to nominal {path.nominal_v:g} V")
        except Exception as e:
            log.warning("%s: could not check the PSU setpoint: %s", terminal, e)
    if lab is not None:
        try:
            cleared = lab.clear()
            for item in cleared.get("cleared", []):
                undone.append(f"virtual lab: {item}")
        except Exception as e:
            log.info("virtual lab control not reachable for the sweep: %s", e)
    if undone:
        for line in undone:
            log.warning("fault sweep: %s", line)
        sink.record(Event.now(EventKind.FAULT_SWEEP, "faults", None, undone=undone))
    return undone
