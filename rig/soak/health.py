"""A terminal's health during a campaign (after LAVA): good → suspect → bad → quarantined.

A DUT failure (the terminal, not the rig) counts; ``suspect_after`` of them in a row make the
terminal suspect, and the runner runs the recovery steps and then the health check on it. A
check that passes makes it good again; one that fails counts a failed recovery, and
``quarantine_after`` of those in a row quarantine it: it takes no more cycles in this run.
Infrastructure errors never count here (the worker pauses instead).
"""

from __future__ import annotations

from dataclasses import dataclass

GOOD, SUSPECT, BAD, QUARANTINED = "good", "suspect", "bad", "quarantined"


@dataclass
class TerminalHealth:
    suspect_after: int
    quarantine_after: int
    state: str = GOOD
    failures: int = 0  # DUT failures in a row
    recoveries_failed: int = 0  # failed recoveries in a row

    def cycle(self, ok: bool) -> str | None:
        """Count one cycle's outcome; returns the new state when it changed."""
        if ok:
            self.failures = 0
            return None
        self.failures += 1
        if self.state == GOOD and self.failures >= self.suspect_after:
            self.state = SUSPECT
            return self.state
        return None

    def recovered(self, ok: bool) -> str:
        """The outcome of recovery + health check on a suspect (or bad) terminal."""
        if ok:
            self.state, self.failures, self.recoveries_failed = GOOD, 0, 0
            return self.state
        self.recoveries_failed += 1
        self.state = QUARANTINED if self.recoveries_failed >= self.quarantine_after else BAD
        return self.state

    @property
    def needs_recovery(self) -> bool:
        return self.state in (SUSPECT, BAD)

    @property
    def quarantined(self) -> bool:
        return self.state == QUARANTINED
