"""Test helper: the virtual lab with one terminal of each shipped profile (and a keypad each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rig.config import LabConfig
from tests.labcfg import virtual_config

# terminal -> (model, profile); T4 (vlab, manual login) stays as virtual.yaml has it
PROFILE_OF = {"T1": "vlab", "T2": "pax-a920", "T3": "newland-n910", "T4": "vlab"}


def profile_lab(tmp_path: Path, **sim: Any) -> LabConfig:
    """``virtual_config`` with T2 a pax-a920 (English console, framed ECR), T3 a newland-n910
    (GBK console, keypad-driven, no ECR) and a keypad station on every terminal."""
    cfg = virtual_config(tmp_path, **sim)
    raw = cfg.model_dump(mode="json")
    base = raw["models"]["vlab-pos"]
    for prof in ("pax-a920", "newland-n910"):
        raw["models"][prof] = {**base, "profile": prof}
    for name, t in raw["terminals"].items():
        prof = PROFILE_OF[name]
        if prof != "vlab":
            t["model"] = prof
        chip = t["stations"]["chip"]
        t["stations"]["keypad"] = {"x": chip["x"] - 30, "y": 170, "z": -5}
    raw["terminals"]["T3"]["ecr"] = None
    raw["instruments"]["robot1"]["feed_mm_min"] = 60000
    return LabConfig.model_validate(raw)
