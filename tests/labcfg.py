"""Test helpers: the embedded virtual lab config moved onto free loopback ports."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any

from rig.config import LabConfig, load_lab

VIRTUAL_YAML = Path(__file__).resolve().parents[1] / "configs" / "labs" / "virtual.yaml"


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, below the kernel's ephemeral range, never handed out
    twice in this process.

    Binding port 0 would return an *ephemeral* port, which any outgoing connection (pyvisa,
    pyserial, a test client) may take as its local port before the lab binds it: a rare
    "address already in use" seen once in ~500 tests. Ports below the ephemeral range are
    only ever taken by someone binding them on purpose.
    """
    hi = min(_ephemeral_low(), 65536) - 1
    lo = max(20000, hi - 12000)
    for _ in range(2000):
        port = random.randint(lo, hi)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {lo}..{hi}")


def virtual_config(tmp_path: Path, *, proxies: bool = False, **sim_overrides: Any) -> LabConfig:
    """``configs/labs/virtual.yaml`` with every port free, the truth journal in ``tmp_path``.

    ``time_scale`` defaults to 0.05; keyword arguments override other ``sim`` settings.
    Terminals dial the host directly unless ``proxies`` (then each dials a port of its own,
    where a rig runs the terminal's fault proxy).
    """
    base = load_lab(VIRTUAL_YAML)
    host = f"127.0.0.1:{free_port()}"
    psu_port, grbl_port = free_port(), free_port()
    instruments: dict[str, Any] = {}
    for name, inst in base.instruments.items():
        if inst.kind == "psu":
            instruments[name] = {"resource": f"TCPIP0::127.0.0.1::{psu_port}::SOCKET"}
        elif inst.kind == "robot":
            instruments[name] = {"port": f"socket://127.0.0.1:{grbl_port}"}
    over: dict[str, Any] = {
        "instruments": instruments,
        "host": {"listen": host},
        "terminals": {name: {"console": f"socket://127.0.0.1:{free_port()}",
                             "ecr": f"socket://127.0.0.1:{free_port()}",
                             "host_path": f"127.0.0.1:{free_port()}" if proxies else host}
                      for name in base.terminals},
        "sim": {"psu_listen": f"127.0.0.1:{psu_port}", "grbl_listen": f"127.0.0.1:{grbl_port}",
                "control_listen": f"127.0.0.1:{free_port()}",
                "time_scale": 0.05,
                "truth_journal": str(tmp_path / "truth.jsonl"), **sim_overrides},
    }
    return load_lab(VIRTUAL_YAML, overrides=over)


def write_config(cfg: LabConfig, path: Path) -> Path:
    """Write ``cfg`` as a lab file (JSON is YAML) that ``load_lab`` reads back."""
    path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1), encoding="utf-8")
    return path


def grown(cfg: LabConfig, terminals: int) -> LabConfig:
    """``cfg`` with ``terminals`` terminals (copies of T1 on free ports, each on its own
    channel of one PSU with as many channels)."""
    raw = cfg.model_dump(mode="json")
    t1 = raw["terminals"]["T1"]
    psu = t1["power"]["psu"]
    for i in range(1, terminals + 1):
        name = f"T{i}"
        d = json.loads(json.dumps(raw["terminals"].get(name, t1)))
        if name not in raw["terminals"]:
            d.update(terminal_id=f"{10000000 + i:08d}", console=f"socket://127.0.0.1:{free_port()}",
                     ecr=f"socket://127.0.0.1:{free_port()}")
        d["power"]["channel"] = i
        raw["terminals"][name] = d
    raw["instruments"][psu]["channels"] = max(terminals, 4)
    raw["sim"]["psu_channels"] = max(terminals, 4)
    return LabConfig.model_validate(raw)
