"""Test helpers: the embedded virtual lab config moved onto free loopback ports."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from rig.config import LabConfig, load_lab

VIRTUAL_YAML = Path(__file__).resolve().parents[1] / "configs" / "labs" / "virtual.yaml"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def virtual_config(tmp_path: Path, **sim_overrides: Any) -> LabConfig:
    """``configs/labs/virtual.yaml`` with every port free, the truth journal in ``tmp_path``.

    ``time_scale`` defaults to 0.05; keyword arguments override other ``sim`` settings.
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
                             "host_path": host}
                      for name in base.terminals},
        "sim": {"psu_listen": f"127.0.0.1:{psu_port}", "grbl_listen": f"127.0.0.1:{grbl_port}",
                "time_scale": 0.05,
                "truth_journal": str(tmp_path / "truth.jsonl"), **sim_overrides},
    }
    return load_lab(VIRTUAL_YAML, overrides=over)


def write_config(cfg: LabConfig, path: Path) -> Path:
    """Write ``cfg`` as a lab file (JSON is YAML) that ``load_lab`` reads back."""
    path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1), encoding="utf-8")
    return path
