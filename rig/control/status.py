"""Status: what a lab engineer checks first — instruments, outputs, terminals."""

from __future__ import annotations

from typing import Any

from ..core.errors import InfrastructureError
from .hardware import Hardware


def status(rig: Hardware, run_id: int) -> dict[str, Any]:
    out: dict[str, Any] = {"lab": rig.cfg.name, "run_id": run_id,
                           "store": str(rig.store.path), "instruments": {}, "terminals": {}}
    for name, psu in rig.psus.items():
        try:
            out["instruments"][name] = {"ok": True, "idn": psu.idn()}
        except InfrastructureError as e:
            out["instruments"][name] = {"ok": False, "error": str(e)}
    if rig.robot is not None:
        try:
            st = rig.robot.status()
            out["instruments"][rig.robot.name] = {"ok": True, "idn": f"GRBL {st.state} at {st.mpos}"}
        except InfrastructureError as e:
            out["instruments"][rig.robot.name] = {"ok": False, "error": str(e)}
    for tname, t in rig.cfg.terminals.items():
        info: dict[str, Any] = {"console": rig.consoles[tname].connected
                                if tname in rig.consoles else None}
        if t.power.psu and t.power.psu in rig.psus:
            try:
                info["output"] = rig.psus[t.power.psu].output_state(t.power.channel)
            except InfrastructureError as e:
                info["output"] = f"error: {e}"
        if tname in rig.ecrs:
            try:
                info["state"] = rig.ecrs[tname].command("STATUS")
            except Exception as e:  # status must not raise
                info["state"] = f"error: {e}"
        out["terminals"][tname] = info
    return out
