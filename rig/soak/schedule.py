"""Schedules: cron-style windows in which a campaign runs, installed into the rig service.

A schedule names a campaign file and a window: ``start`` (a cron expression, read by croniter;
a sixth field is seconds) and ``duration``. While a window is open the scheduler keeps the
campaign running: it starts a run at the window's start, resumes a stopped or interrupted one,
and starts a new run in a later window once a run completed. When the window closes it stops the
campaign safely (resumable). Two schedules never drive one terminal at once: each campaign
leases its terminals, and a worker waits while another holds them (a notebook too).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import load_model
from .campaign import Seconds


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(description="cron expression of the window's start, local time, e.g. "
                       "'0 20 * * 1-5' (weeknights 20:00); a sixth field is seconds")
    duration: Seconds = Field(description="how long the window stays open: '11h', '90m', s")

    @field_validator("start")
    @classmethod
    def _cron(cls, v: str) -> str:
        if not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression (minute hour day month weekday "
                             "[second])")
        return v

    @model_validator(mode="after")
    def _no_overlap(self) -> Window:
        it = croniter(self.start, datetime.now().astimezone())
        starts = [it.get_next(datetime) for _ in range(8)]
        gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
        if min(gaps) < self.duration:
            raise ValueError(f"windows overlap: one starts every {min(gaps):g} s but stays open "
                             f"{self.duration:g} s; shorten the duration")
        return self

    def open_since(self, now: datetime) -> datetime | None:
        """The start of the window open at ``now`` (aware, local), or None when closed."""
        start = croniter(self.start, now + timedelta(microseconds=1)).get_prev(datetime)
        return start if now < start + timedelta(seconds=self.duration) else None

    def next_start(self, now: datetime) -> datetime:
        return croniter(self.start, now).get_next(datetime)


class ScheduleEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    campaign: str = Field(description="campaign file, relative to the schedule file")
    window: Window


class ScheduleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schedules: list[ScheduleEntry] = Field(min_length=1)


def load_schedule(path: str | Path) -> list[dict[str, Any]]:
    """The schedules of a file (file:line errors), campaign paths made absolute."""
    p = Path(path)
    doc = load_model(ScheduleFile, p)
    out = []
    for s in doc.schedules:
        camp = Path(s.campaign)
        if not camp.is_absolute():
            camp = (p.parent / camp) if (p.parent / camp).exists() else camp
        out.append({"name": s.name, "campaign": str(camp.resolve()),
                    "start": s.window.start, "duration_s": s.window.duration})
    return out
