"""Figures recomputed from the virtual lab's truth journal, to check the rig's against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def truth_cycles(entries: list[dict[str, Any]], terminal: str) -> list[dict[str, float | None]]:
    """One dict of truth figures (s) per power-on of ``terminal``, in order."""
    mine = [e for e in entries if e.get("terminal") == terminal]
    cycles: list[list[dict[str, Any]]] = []
    for e in mine:
        if e["what"] == "power_on":
            cycles.append([e])
        elif cycles:
            cycles[-1].append(e)
    out = []
    for c in cycles:
        t0 = c[0]["mono_ns"]

        def first(what: str, c=c) -> int | None:
            return next((e["mono_ns"] for e in c if e["what"] == what), None)

        sent = [e for e in c if e["what"] == "signon_req_sent"]
        got = [e for e in c if e["what"] == "signon_rsp_received"]
        ready = first("ready")
        console = first("console")
        out.append({
            "boot_s": None if console is None else (console - t0) / 1e9,
            "signon_req_s": (sent[0]["mono_ns"] - t0) / 1e9 if sent else None,
            "signon_host_s": (got[-1]["mono_ns"] - sent[-1]["mono_ns"]) / 1e9 if got and sent else None,
            "ready_s": None if ready is None else (ready - t0) / 1e9,
        })
    return out
