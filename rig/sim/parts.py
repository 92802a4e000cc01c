"""The parts of a virtual terminal that its life and its card transactions share.

:class:`rig.sim.terminal.VirtualTerminal` (power, boot, login, sign-on, ECR) makes them and
lends them to :class:`rig.sim.sale.Transactions` (card transactions); the sale flow sees
these parts, never the terminal:

- :class:`Voice`: the console and the truth journal. The terminal speaks canonical text
  (``RESULT approved rc=00 …``); the voice prints it as the terminal's profile says
  (:meth:`rig.terminal_profiles.TerminalProfile.render`: ``812 INFO READY`` for ``vlab``,
  ``12:00:01 待机 请选择交易`` in GBK for another model, or nothing for an event the model does
  not print). Every console line is journaled with the kernel's transmit stamp of its write to
  the console port (the truth of boot, READY, RESULT…); an event the model keeps silent is
  journaled with the thread's stamp. Nothing is said or journaled while the terminal is off.
  Quirks are looked up here too.
- :class:`Memory`: what survives a power cycle like a terminal's NVRAM (STAN, batch number)
  and the working keys of the last good sign-on.
- :class:`Delays`: every simulated delay, drawn from its distribution and scaled by
  ``sim.time_scale``.
- :class:`HostRoute`: where the terminal dials its host, and from which network namespace.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime

from ..config import Distribution, SimConfig
from ..iso8583.keys import WorkingKeys
from ..terminal_profiles import TerminalProfile, canonical_event
from .journal import TruthJournal
from .lines import LineServer
from .wire import WireStamp, thread_stamp


class Voice:
    """What a terminal says on its console and writes to the truth journal.

    ``on`` and ``boot_ns`` follow the terminal's power (the terminal sets them): while off it
    says nothing and journals nothing; console lines start with the uptime since ``boot_ns``.
    ``quirks`` is the terminal's set of switched-on quirks (shared, not copied).
    """

    def __init__(self, name: str, console: LineServer, journal: TruthJournal, quirks: set[str],
                 profile: TerminalProfile | None = None) -> None:
        self.name = name
        self.profile = profile  # None: the canonical "<uptime_ms> <LEVEL> <text>" (vlab)
        self.console = console
        self.journal = journal
        self.quirks = quirks
        self.on = False
        self.boot_ns = 0

    def say(self, level: str, text: str, what: str | None = None, **data: object) -> None:
        """Write one console line to every client, then journal it (and ``what``, if given) with
        when it left: the kernel's TX stamp, else the thread's (e.g. no client connected)."""
        if not self.on:
            return
        line = self.render(level, text)
        if line is None:  # this model does not print it
            at = thread_stamp()
        else:
            at = self.console.broadcast(line)
            self.journal.record(self.name, "console", at, line=line)
        if what is not None:
            self.journal.record(self.name, what, at, **data)

    def render(self, level: str, text: str) -> str | None:
        """Canonical ``text`` as this terminal's model prints it (None: not at all)."""
        uptime_ms = (time.monotonic_ns() - self.boot_ns) // 1_000_000
        if self.profile is None:
            return f"{uptime_ms} {level} {text}"
        wall = datetime.now()
        return self.profile.render(canonical_event(text), text, ms=uptime_ms, level=level,
                                   time=wall.strftime("%H:%M:%S"), date=wall.strftime("%Y-%m-%d"))

    def record(self, what: str, stamp: WireStamp, **data: object) -> None:
        """Journal an I/O boundary stamped by the caller (nothing while off)."""
        if self.on:
            self.journal.record(self.name, what, stamp, **data)

    def quirk(self, name: str, **data: object) -> bool:
        """Whether quirk ``name`` is on; when it is, journal its effect (``quirk_effect``)."""
        if name not in self.quirks:
            return False
        self.journal.record(self.name, "quirk_effect", quirk=name, **data)
        return True


@dataclass(slots=True)
class Memory:
    """NVRAM: the last STAN used and the batch number survive power cycles; so do the working
    keys of the last good sign-on (None after a failed one)."""

    stan: int = 0
    batch: int = 1
    keys: WorkingKeys | None = None

    def next_stan(self) -> str:
        """The next STAN (1..999999, then 1 again), as 6 digits."""
        self.stan = self.stan % 999_999 + 1
        return f"{self.stan:06d}"


@dataclass(frozen=True, slots=True)
class Delays:
    """Simulated delays: drawn with the terminal's own random generator, times ``time_scale``."""

    sim: SimConfig
    rng: random.Random

    def draw_s(self, dist: Distribution) -> float:
        return dist.draw(self.rng) * self.sim.time_scale / 1000.0

    async def sleep(self, dist: Distribution, since_ns: int | None = None) -> None:
        """Sleep a drawn delay; counted from ``since_ns`` (monotonic) when given."""
        delay = self.draw_s(dist)
        if since_ns is not None:
            delay -= (time.monotonic_ns() - since_ns) / 1e9
        await asyncio.sleep(max(0.0, delay))

    async def sleep_ms(self, ms: float) -> None:
        await asyncio.sleep(ms * self.sim.time_scale / 1000.0)


@dataclass(frozen=True, slots=True)
class HostRoute:
    """Where the terminal dials its host, and the network namespace it dials from (sim.netns)."""

    host: str
    port: int
    netns: str | None = None
