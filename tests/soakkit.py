"""Test helpers for soak campaigns: a small campaign file on a given lab."""

from __future__ import annotations

from pathlib import Path


def campaign_file(tmp: Path, lab: Path, *, cycles: int, name: str = "t-soak",
                  label: str = "fw-test", terminals: str = "all", signon_s: float = 5,
                  extra: str = "") -> Path:
    """Power cycle + sign-on per cycle, a baseline and a slow-host case round robin, a quick
    health policy. ``signon_s`` too short makes every sign-on a DUT failure (but those under
    the slow-host fault, which count as data), while the health check (3 s) passes."""
    path = tmp / f"{name}.yaml"
    path.write_text(f"""
name: {name}
label: {label}
lab: {lab}
terminals: {terminals}
steps:
  - power_cycle: {{off_s: 0.05}}
  - await_signon: {{timeout_s: {signon_s}}}
stop:
  cycles: {cycles}
matrix:
  order: round_robin
  cases:
    - id: baseline
      none: true
    - id: slow-host
      faults:
        - {{fault: host_delay, ms: 20, applies_to: signon, during: signon}}
health:
  suspect_after: 2
  recover:
    - power_cycle: {{off_s: 0.05}}
  quarantine_after: 2
  check:
    - power_cycle: {{off_s: 0.05}}
    - await_signon: {{timeout_s: 3}}
{extra}
""")
    return path
