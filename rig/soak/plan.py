"""The dry-run planner: a campaign expanded into (terminal, cycle index) → case, chunks and an
estimated duration, without touching hardware.

The case of a cycle is a pure function of (campaign, terminal, index): round robin by index
over the cases (a case of weight w comes w times per round, interleaved; with ``stagger``, the
campaign's k-th terminal starts k places further), or seeded random, drawn from
``random.Random(f"{seed}:{terminal}:{index}")`` (a string seed is hashed with SHA-512, so it
does not depend on the process or ``PYTHONHASHSEED``). A resume, another
process, another host: all see the same plan. Chunks have fixed boundaries per terminal
(``[k·chunk, (k+1)·chunk − 1]``), so running a chunk again is idempotent by
(run, terminal, cycle index) when the runner skips the indices it has recorded.

A campaign bounded only by time (``duration`` / ``until``) has no last cycle: its plan is
lazy, ``case(t, i)`` answers for any ``i`` and a terminal's ``chunks(t)`` never ends.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from ..config import Distribution, LabConfig, RobotConfig
from ..core.errors import ConfigError, TestError
from ..drivers import robot_moves as moves
from ..faults.scenarios import Scenario
from ..faults.spec import WINDOW_FIELDS, Fault
from .campaign import (
    AwaitSignon,
    Campaign,
    CaseKind,
    PowerCycle,
    Sales,
    Settle,
    Wait,
)

# --- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedCase:
    """A matrix case, resolved: the faults a cycle of this case holds, on their windows."""

    number: int  # position in the campaign's matrix
    id: str
    kind: CaseKind
    what: str
    weight: float
    share: float  # of the cycles: exact for round robin, expected for random
    faults: tuple[Fault, ...] = ()
    scenario: Scenario | None = None  # the scenario case's expectation, for a verdict
    extra_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "what": self.what,
                               "share": round(self.share, 6), "weight": self.weight,
                               "faults": [fault_label(f) for f in self.faults]}
        if self.scenario is not None:
            out["scenario"] = self.scenario.name
        return out


def fault_label(f: Fault) -> str:
    """``latency(ms=200, during=signon)``: the fault's name, the parameters that differ from
    their defaults, then its window."""
    params = f.model_dump(exclude_defaults=True, exclude=set(WINDOW_FIELDS))
    args = ", ".join(f"{k}={_num(v)}" for k, v in {**params, **f.window()}.items())
    return f"{f.name}({args})"


def _num(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _what(kind: CaseKind, faults: Sequence[Fault], scenario: Scenario | None, title: str) -> str:
    if kind == "baseline":
        text = "no fault"
    elif scenario is not None:
        text = f"scenario {scenario.name}: {scenario.title}"
    else:
        text = " + ".join(fault_label(f) for f in faults)
    return f"{title} — {text}" if title else text


def smooth_round_robin(weights: Sequence[int]) -> list[int]:
    """One round of a weighted round robin (nginx's smooth variant): case ``i`` comes
    ``weights[i]`` times, spread out; equal weights give the cases in order."""
    total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def random_pick(seed: int, terminal: str, index: int, cumulative: Sequence[float]) -> int:
    """The case number of (terminal, index) under ``seed``: a fresh generator per cycle, keyed
    by all three, so a cycle's case does not depend on any other cycle."""
    rng = random.Random(f"{seed}:{terminal}:{index}")
    return min(bisect_right(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


# --- chunks -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, order=True)
class Chunk:
    """Cycles ``first``..``last`` (inclusive) of one terminal; idempotent by
    (run, terminal, cycle index): a runner skips the indices it has recorded."""

    terminal: str
    first: int
    last: int

    def indices(self) -> range:
        return range(self.first, self.last + 1)

    def __len__(self) -> int:
        return self.last - self.first + 1

    def key(self, run_id: int | str) -> tuple[int | str, str, int]:
        """(run, terminal, first index): names the chunk for a distributor."""
        return (run_id, self.terminal, self.first)

    def as_dict(self) -> dict[str, Any]:
        return {"terminal": self.terminal, "first": self.first, "last": self.last}


class PlannedCycle(NamedTuple):
    terminal: str
    index: int
    case: PlannedCase

    def as_dict(self) -> dict[str, Any]:
        return {"terminal": self.terminal, "index": self.index, "case": self.case.id}


# --- the estimate -----------------------------------------------------------------------------

BENCH_BOOT_S = 30.0  # power on → READY of a real terminal, when nothing better is known
BENCH_READ_AUTH_S = 3.0  # card presented → result on a real terminal and host
BENCH_SETTLE_S = 5.0
PSU_S = 0.02  # a PSU switch's round trip (off, then on)
ECR_S = 0.02  # an ECR command's round trip
SALE_ALONE_S = 0.1  # a sale's part outside the robot (ECR, card wait, bookkeeping; measured)
HOST_S = 0.005  # one request / response on loopback, beyond the host's processing_ms
ROBOT_LINE_S = 0.003  # per G-code line beyond distance / feed (the virtual robot: 2.5 ms p50)
OUTAGES = ("host_down", "refuse", "stall", "reset", "blackhole", "reject", "link_down")


@dataclass(frozen=True)
class Estimate:
    """How long the campaign should take, and from what."""

    seconds: float | None  # None: no bound (cannot happen for a valid campaign)
    bound: str  # which stop criterion ends it first: cycles, duration, until
    cycle_s: dict[str, float]  # per terminal: mean cycle, alone (incl. its robot time)
    robot_s_per_round: float  # the shared robot's busy time for one cycle of every terminal
    round_s: float  # one cycle of every terminal, in parallel (robot-bound or not)
    expected_cycles_per_terminal: float
    steps_s: dict[str, float]  # one baseline cycle by step kind (mean over terminals)
    case_extra_s: dict[str, float]  # what each case adds to a cycle (mean over terminals)
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"seconds": r(self.seconds), "text": human_duration(self.seconds),
                "bound": self.bound, "robot_bound": self.robot_s_per_round >= max(
                    self.cycle_s.values(), default=0.0),
                "cycle_s": {t: r(v) for t, v in self.cycle_s.items()},
                "robot_s_per_round": r(self.robot_s_per_round), "round_s": r(self.round_s),
                "expected_cycles_per_terminal": r(self.expected_cycles_per_terminal),
                "steps_s": {k: r(v) for k, v in self.steps_s.items()},
                "case_extra_s": {k: r(v) for k, v in self.case_extra_s.items()},
                "notes": list(self.notes)}


def human_duration(s: float | None) -> str:
    """``~2 min``, ``~45 s``, ``~10 h 5 min``."""
    if s is None:
        return "unbounded"
    if s < 90:
        return f"~{s:.0f} s"
    if s < 90 * 60:
        return f"~{s / 60:.0f} min"
    h, m = divmod(round(s / 60), 60)
    return f"~{h} h {m} min" if m else f"~{h} h"


def _typical_s(d: Distribution, scale: float) -> float:
    """A delay distribution's typical value, seconds."""
    ms = {"fixed": d.ms, "uniform": ((d.low or 0) + (d.high or 0)) / 2, "normal": d.mean}[d.dist]
    return max(d.min, float(ms or 0.0)) * scale / 1000.0


@dataclass
class _Costs:
    """One terminal's cycle: time away from the robot, and time holding it; ``lead_s`` /
    ``tail_s``: the time before its first sale and after its last (the robot idles then when
    every terminal is there at once: the campaign's start and end)."""

    alone_s: float = 0.0
    robot_s: float = 0.0
    lead_s: float = 0.0
    tail_s: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, alone: float = 0.0, robot: float = 0.0) -> None:
        self.alone_s += alone
        self.robot_s += robot
        self.steps[kind] = self.steps.get(kind, 0.0) + alone + robot
        if robot:
            self.tail_s = 0.0
        elif self.robot_s == 0:
            self.lead_s += alone
        else:
            self.tail_s += alone


class _Timing:
    """The step and fault times of one lab, from its config (virtual) or the hints (bench)."""

    def __init__(self, campaign: Campaign, lab: LabConfig) -> None:
        self.c, self.lab, self.hints = campaign, lab, campaign.estimate
        self.virtual = lab.virtual
        self.scale = lab.sim.time_scale
        self.notes: list[str] = []
        sim = lab.sim
        if self.hints.boot_s is None and not self.virtual:
            self.notes.append(f"boot: lab {lab.name} is not virtual; assumed {BENCH_BOOT_S:.0f} s "
                              "from power on to READY (set estimate.boot_s)")
        self.host_s = lab.host.processing_ms / 1000.0 + HOST_S
        if self.virtual:
            self.read_auth_s = (_typical_s(sim.card_read, self.scale) + self.host_s
                                + _typical_s(sim.result_display, self.scale) + ECR_S)
        else:
            self.read_auth_s = BENCH_READ_AUTH_S
            if self.hints.sale_s is None and any(isinstance(s, Sales) for s in campaign.steps):
                self.notes.append(f"sales: lab {lab.name} is not virtual; assumed "
                                  f"{BENCH_READ_AUTH_S:.0f} s from card presented to result plus "
                                  "the robot's moves (set estimate.sale_s)")

    # --- steps --------------------------------------------------------------------------------
    def signon_s(self, terminal: str) -> float:
        if self.hints.boot_s is not None:
            return self.hints.boot_s
        if not self.virtual:
            return BENCH_BOOT_S
        sim, tc = self.lab.sim, self.lab.terminals[terminal]
        login = _typical_s(sim.login, self.scale) + (0.0 if tc.auto_login else ECR_S)
        return (_typical_s(sim.boot, self.scale) + login + _typical_s(sim.clock_sync, self.scale)
                + _typical_s(sim.ready, self.scale) + self.host_s)

    def cycle(self, terminal: str) -> _Costs:
        costs = _Costs()
        for s in self.c.steps:
            if isinstance(s, PowerCycle):
                off = s.off_s if s.off_s is not None else self.lab.terminals[terminal].power.off_s
                costs.add("power_cycle", off + PSU_S)
            elif isinstance(s, AwaitSignon):
                costs.add("await_signon", min(self.signon_s(terminal), s.timeout_s))
            elif isinstance(s, Sales):
                alone, robot = self.sale_s(terminal, s)
                costs.add("sales", s.count * alone, s.count * robot)
            elif isinstance(s, Settle):
                settle = self.hints.settle_s or (ECR_S + self.host_s if self.virtual
                                                 else BENCH_SETTLE_S)
                costs.add("settle", settle)
            elif isinstance(s, Wait):
                costs.add("wait", s.s)
        return costs

    def sale_s(self, terminal: str, s: Sales) -> tuple[float, float]:
        """(away from the robot, holding the robot) of one sale."""
        if self.hints.sale_s is not None:
            return 0.0, self.hints.sale_s
        return SALE_ALONE_S, self.robot_sale_s(terminal, s.card, s.entry) + self.presented_s(
            s.entry)

    def presented_s(self, entry: str) -> float:
        """Card presented → result, beyond the robot's own moves (a tap's dwell overlaps)."""
        if entry != "tap" or self.lab.robot is None:
            return self.read_auth_s
        tap_min = self.lab.sim.tap_dwell_min_ms / 1000.0 if self.virtual else 0.0
        return max(0.0, tap_min + self.read_auth_s - self.lab.robot.tap_dwell_ms / 1000.0)

    def robot_sale_s(self, terminal: str, card: str, entry: str) -> float:
        """The robot's moves of one sale: pick, present, (withdraw), return, by the move plans
        the driver uses, at the lab's travel feed."""
        layout, st = self.lab.robot, self.lab.terminals[terminal].stations
        inst = self.lab.instruments.get(layout.instrument) if layout else None
        slot = layout.slot_of(card) if layout else None
        if layout is None or st is None or not isinstance(inst, RobotConfig) or slot is None:
            self._note(f"robot: no geometry for {terminal} / {card}; its moves count as 0 s")
            return 0.0
        mp = moves.MovePlans(layout, inst.feed_mm_min)
        limits = moves.Limits((1e12, 1e12, 1e12), moves.DEFAULT_ACCEL_MM_S2, inst.feed_mm_min)
        present = {"chip": lambda: mp.insert(st) + mp.withdraw(st),
                   "swipe": lambda: mp.swipe(st, layout.swipe_speed_mm_s),
                   "tap": lambda: mp.tap(st, layout.tap_dwell_ms)}[entry]()
        p = layout.slot_point(slot)
        pos, total = (p.x, p.y, layout.safe_z), 0.0
        for steps in (mp.pick(slot), present, mp.return_card(slot)):
            pl = moves.plan(steps, pos, limits)
            total += pl.motion_s + ROBOT_LINE_S * len(steps)
            pos = pl.end
        return total

    # --- faults -------------------------------------------------------------------------------
    def case_extra(self, terminal: str, case: PlannedCase) -> tuple[float, float]:
        """(away from the robot, holding it) that a case adds to a cycle of ``terminal``."""
        if case.extra_s is not None:
            return case.extra_s, 0.0
        alone = robot = 0.0
        for f in case.faults:
            a, r = self.fault_extra(terminal, f)
            alone, robot = alone + a, robot + r
        return alone, robot

    def fault_extra(self, terminal: str, f: Fault) -> tuple[float, float]:
        steps = self.c.steps
        signons = [s for s in steps if isinstance(s, AwaitSignon)]
        sales = [s for s in steps if isinstance(s, Sales)]
        n_sales = sum(s.count for s in sales)
        scope = _scope(f)
        p = f.params()
        name = f.name
        if name == "latency":
            per = p["ms"] / 1000.0 * (2 if p["direction"] == "both" else 1) * p["toxicity"]
            return (per * len(signons) * ("signon" in scope),
                    per * n_sales * ("auth" in scope))
        if name in ("host_delay", "host_slow_signon", "host_no_response"):
            applies = "signon" if name == "host_slow_signon" else p["applies_to"]
            count = p.get("count") or math.inf
            n_sig = min(count, len(signons)) if "signon" in scope and applies in (
                "signon", "all") else 0
            n_auth = min(count, n_sales) if "auth" in scope and applies in ("auth", "all") else 0
            if name == "host_no_response":
                return (n_sig * self._signon_giveup_s(terminal, signons),
                        n_auth * self._auth_timeout_s(sales))
            return n_sig * p["ms"] / 1000.0, n_auth * p["ms"] / 1000.0
        if name in ("power_dropout", "brownout", "slow_ramp"):
            if name == "brownout" and self.virtual and p["volts"] >= self.lab.sim.min_voltage:
                return 0.0, 0.0
            off = p["s"] if name == "slow_ramp" else p["ms"] / 1000.0
            return off + self.signon_s(terminal), 0.0
        if name in OUTAGES:
            share = p.get("toxicity", 1.0)  # proxy faults hit this share of the connections
            if "signon" in scope and signons:
                backoff = self.lab.sim.backoff_ms if self.virtual else [5000.0]
                if f.for_s is not None:
                    return f.for_s + max(backoff, default=0.0) / 1000.0, 0.0
                if share < 1:  # some attempts fail: about one retry after the first back-off
                    return share * (backoff[0] if backoff else 0.0) / 1000.0, 0.0
                return self._signon_giveup_s(terminal, signons), 0.0
            if "auth" in scope and name in ("stall", "blackhole", "link_down"):
                return 0.0, share * n_sales * self._auth_timeout_s(sales)
            return 0.0, 0.0  # refused or reset: the sale fails at once
        if name in ("host_reply", "expired_card"):
            return 0.0, 0.0  # an answer at once (A0: one sign-on exchange more)
        self._note(f"{name}: no cost model; a cycle under it counts as a normal one")
        return 0.0, 0.0

    def _signon_giveup_s(self, terminal: str, signons: list[AwaitSignon]) -> float:
        """The extra time of a sign-on that never succeeds: until the terminal gives up (the
        virtual terminal's time-outs and back-offs) or the step's time-out."""
        timeout = min((s.timeout_s for s in signons), default=60.0)
        if self.virtual:
            sim = self.lab.sim
            tries = sim.signon_retries + 1
            giveup = (tries * sim.signon_timeout_ms
                      + sum(sim.backoff_ms[:sim.signon_retries])) / 1000.0
            timeout = min(timeout, giveup)
        return max(0.0, timeout - self.signon_s(terminal))

    def _auth_timeout_s(self, sales: list[Sales]) -> float:
        if self.virtual:
            return self.lab.sim.auth_timeout_ms / 1000.0
        return min((s.timeout_s for s in sales), default=60.0)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _scope(f: Fault) -> set[str]:
    """The exchanges a fault's window covers: signon, auth (sales), or both."""
    if f.during == "signon":
        return {"signon"}
    if f.during in ("auth", "sale"):
        return {"auth"}
    if f.during is None and f.at_s is not None:
        return {"signon"}  # from power on, for for_s at most
    return {"signon", "auth"}  # the whole cycle


# --- the plan ---------------------------------------------------------------------------------

class Plan:
    """A campaign expanded for some terminals. Build it with :func:`plan`."""

    def __init__(self, campaign: Campaign, terminals: Sequence[str], lab: LabConfig,
                 now: datetime | None = None) -> None:
        if not terminals:
            raise TestError(f"campaign {campaign.name}: no terminals to plan")
        unknown = [t for t in terminals if t not in lab.terminals]
        if unknown:
            raise TestError(f"campaign {campaign.name}: terminals {', '.join(unknown)} are not "
                            f"in lab {lab.name} ({', '.join(lab.terminals)})")
        if len(set(terminals)) != len(terminals):
            raise TestError(f"campaign {campaign.name}: a terminal is listed twice")
        self.campaign = campaign
        self.lab = lab
        self.terminals: tuple[str, ...] = tuple(terminals)
        self.now = now
        m = campaign.matrix
        self.order = m.order
        self.seed = m.seed
        members = campaign.terminal_names(lab)
        outside = [t for t in terminals if t not in members]
        if outside:
            raise TestError(f"campaign {campaign.name}: {', '.join(outside)} not among its "
                            f"terminals ({', '.join(members)})")
        stagger = m.order == "round_robin" and m.stagger
        self._offset = {t: members.index(t) if stagger else 0 for t in terminals}
        total = sum(c.weight for c in m.cases)
        scenarios = campaign.scenarios() if any(c.scenario for c in m.cases) else {}
        cases = []
        for i, c in enumerate(m.cases):
            faults = tuple(c.fault_objects(scenarios))
            sc = scenarios.get(c.scenario) if c.scenario else None
            cases.append(PlannedCase(number=i, id=c.id, kind=c.kind,
                                     what=_what(c.kind, faults, sc, c.title), weight=c.weight,
                                     share=c.weight / total, faults=faults, scenario=sc,
                                     extra_s=c.extra_s))
        self.cases: tuple[PlannedCase, ...] = tuple(cases)
        self._round = smooth_round_robin([int(c.weight) for c in m.cases]) \
            if m.order == "round_robin" else []
        cum, acc = [], 0.0
        for c in m.cases:
            acc += c.weight
            cum.append(acc)
        self._cumulative = cum
        self._estimate: Estimate | None = None

    # --- what a cycle is ----------------------------------------------------------------------
    @property
    def cycles_per_terminal(self) -> int | None:
        """The planned cycles of each terminal; None for a campaign bounded only by time."""
        return self.campaign.stop.cycles

    @property
    def bounded(self) -> bool:
        return self.cycles_per_terminal is not None

    @property
    def chunk_size(self) -> int:
        return self.campaign.chunk

    def _check(self, terminal: str, index: int) -> None:
        if terminal not in self.terminals:
            raise TestError(f"{terminal}: not a terminal of this plan "
                            f"({', '.join(self.terminals)})")
        if not isinstance(index, int) or index < 0:
            raise TestError(f"{terminal}: cycle index {index!r} must be an int ≥ 0")
        n = self.cycles_per_terminal
        if n is not None and index >= n:
            raise TestError(f"{terminal}: cycle {index} is past the plan's {n} cycles "
                            f"(indices 0..{n - 1})")

    def case_number(self, terminal: str, index: int) -> int:
        """The matrix position of cycle ``index`` of ``terminal``."""
        self._check(terminal, index)
        if self.order == "round_robin":
            return self._round[(index + self._offset[terminal]) % len(self._round)]
        assert self.seed is not None
        return random_pick(self.seed, terminal, index, self._cumulative)

    def case(self, terminal: str, index: int) -> PlannedCase:
        """The case of cycle ``index`` (0-based) of ``terminal``: the same in every process."""
        return self.cases[self.case_number(terminal, index)]

    def cycles(self, terminal: str | None = None) -> Iterator[PlannedCycle]:
        """Every planned cycle, index-major (index 0 of every terminal, then 1...); only for a
        cycle-bounded plan unless ``terminal`` is given (then endless if time-bounded)."""
        if terminal is not None:
            for ch in self.chunks(terminal):
                for i in ch.indices():
                    yield PlannedCycle(terminal, i, self.case(terminal, i))
            return
        n = self._need_bound("cycles()")
        for i in range(n):
            for t in self.terminals:
                yield PlannedCycle(t, i, self.case(t, i))

    # --- chunks -------------------------------------------------------------------------------
    def chunk_of(self, terminal: str, index: int) -> Chunk:
        """The chunk holding cycle ``index`` of ``terminal``."""
        self._check(terminal, index)
        first = index - index % self.chunk_size
        last = first + self.chunk_size - 1
        if self.cycles_per_terminal is not None:
            last = min(last, self.cycles_per_terminal - 1)
        return Chunk(terminal, first, last)

    def chunks(self, terminal: str | None = None, start: int = 0) -> Iterator[Chunk]:
        """Chunks in order. With ``terminal``: its chunks from the one holding ``start`` (a
        resume), endless for a time-bounded plan. Without: every chunk of a cycle-bounded plan,
        chunk-major (chunk 0 of every terminal, then chunk 1...)."""
        if terminal is None:
            n = self._need_bound("chunks() of every terminal")
            for first in range(0, n, self.chunk_size):
                for t in self.terminals:
                    yield self.chunk_of(t, first)
            return
        n = self.cycles_per_terminal
        if n is not None and start >= n:
            self._check(terminal, 0)
            return
        ch = self.chunk_of(terminal, start)
        while True:
            yield ch
            nxt = ch.last + 1
            if n is not None and nxt >= n:
                return
            ch = self.chunk_of(terminal, nxt)

    @property
    def n_chunks(self) -> int | None:
        """How many chunks (all terminals); None for a time-bounded plan."""
        n = self.cycles_per_terminal
        return None if n is None else len(self.terminals) * -(-n // self.chunk_size)

    def _need_bound(self, what: str) -> int:
        n = self.cycles_per_terminal
        if n is None:
            raise TestError(f"campaign {self.campaign.name} is bounded by time only: {what} "
                            "would never end; iterate one terminal's chunks(terminal)")
        return n

    # --- stopping and time --------------------------------------------------------------------
    def deadline(self, started: datetime) -> datetime | None:
        """When the campaign started at ``started`` must stop (duration / until), if ever."""
        return self.campaign.stop.deadline(started)

    def _counts(self, terminal: str) -> list[float]:
        """Cycles of each case for ``terminal``: exact for a bounded round robin, else the
        expected share per cycle (times the cycles when bounded)."""
        n = self.cycles_per_terminal
        if n is not None and self.order == "round_robin":
            counts = [0.0] * len(self.cases)
            full, rest = divmod(n, len(self._round))
            for j in self._round:
                counts[j] += full
            for k in range(rest):
                counts[self._round[(self._offset[terminal] + k) % len(self._round)]] += 1
            return counts
        return [c.share * (n if n is not None else 1) for c in self.cases]

    def estimate(self) -> Estimate:
        """The estimated duration, from the steps, the lab config and the cases."""
        if self._estimate is None:
            self._estimate = self._make_estimate()
        return self._estimate

    def estimate_s(self) -> float:
        """Estimated wall time of the whole campaign, seconds."""
        return float(self.estimate().seconds or 0.0)

    def _make_estimate(self) -> Estimate:
        timing = _Timing(self.campaign, self.lab)
        base = {t: timing.cycle(t) for t in self.terminals}
        extra = {t: [timing.case_extra(t, c) for c in self.cases] for t in self.terminals}
        shares = [c.share for c in self.cases]

        def per_cycle(t: str, weights: Sequence[float]) -> tuple[float, float]:
            """(whole cycle alone, robot part), summed over ``weights`` cycles per case."""
            whole = robot = 0.0
            for w, (a, r) in zip(weights, extra[t], strict=True):
                whole += w * (base[t].alone_s + base[t].robot_s + a + r)
                robot += w * (base[t].robot_s + r)
            return whole, robot

        mean = {t: per_cycle(t, shares) for t in self.terminals}
        cycle_s = {t: mean[t][0] for t in self.terminals}
        robot_round = sum(mean[t][1] for t in self.terminals)
        round_s = max(max(cycle_s.values()), robot_round)
        notes = list(timing.notes)
        kernel = [c.id for c in self.cases if any(f.layer == "kernel" for f in c.faults)]
        if kernel:
            notes.append(f"cases {', '.join(kernel)} use kernel faults: they need root and the "
                         "terminals' net_iface / net_addr (sim.netns or bench NICs)")
        if robot_round > max(cycle_s.values()) and robot_round > 0:
            notes.append(f"the shared robot is the bottleneck: {robot_round:.1f} s of robot time "
                         f"per round of {len(self.terminals)} cycles, a terminal's cycle alone "
                         f"{max(cycle_s.values()):.1f} s")
        bounds: dict[str, float] = {}
        n = self.cycles_per_terminal
        if n is not None:
            totals = {t: per_cycle(t, self._counts(t)) for t in self.terminals}
            ramp = min(b.lead_s for b in base.values()) + min(b.tail_s for b in base.values())
            bounds["cycles"] = max(max(w for w, _ in totals.values()),
                                   sum(r for _, r in totals.values()) + ramp)
        stop = self.campaign.stop
        if stop.duration is not None:
            bounds["duration"] = stop.duration
        if stop.until is not None:
            now = (self.now or datetime.now()).astimezone()  # naive = local, as deadline() takes it
            end = stop.deadline(now) if stop.duration is None else \
                stop.model_copy(update={"duration": None}).deadline(now)
            assert end is not None
            bounds["until"] = (end - now).total_seconds()
        bound = min(bounds, key=lambda k: bounds[k])
        seconds = bounds[bound]
        expected = float(n) if bound == "cycles" and n is not None else (
            seconds / round_s if round_s > 0 else 0.0)
        notes += self._funds_notes(expected)
        steps_s: dict[str, float] = {}
        for t in self.terminals:
            for k, v in base[t].steps.items():
                steps_s[k] = steps_s.get(k, 0.0) + v / len(self.terminals)
        case_extra = {c.id: sum(sum(extra[t][j]) for t in self.terminals) / len(self.terminals)
                      for j, c in enumerate(self.cases)}
        return Estimate(seconds=seconds, bound=bound, cycle_s=cycle_s,
                        robot_s_per_round=robot_round, round_s=round_s,
                        expected_cycles_per_terminal=expected, steps_s=steps_s,
                        case_extra_s=case_extra, notes=tuple(notes))

    def _funds_notes(self, cycles_per_terminal: float) -> list[str]:
        """The acquirer host keeps each card's balance: say when the sales would drain one
        (from then on its sales decline 51, which is not the terminal's fault)."""
        try:
            cards = self.campaign.cards()
        except ConfigError:
            return []
        per_cycle: dict[str, int] = {}
        for s in self.campaign.steps:
            if isinstance(s, Sales):
                minor = int(Decimal(s.amount) * 100) * s.count
                per_cycle[s.card] = per_cycle.get(s.card, 0) + minor
        out = []
        cycles = cycles_per_terminal * len(self.terminals)
        for card, minor in per_cycle.items():
            if card not in cards:
                continue
            balance = cards[card].balance_minor
            if minor * cycles >= 0.8 * balance:
                out.append(f"funds: {card}'s sales would take up to {minor * cycles / 100:.2f} of "
                           f"its {balance / 100:.2f} balance on the host; after about "
                           f"{balance // minor} cycles (all terminals) they decline 51: lower "
                           "the amounts or raise balance_minor")
        return out

    # --- for `rig soak plan --json` -----------------------------------------------------------
    def as_dict(self, first: int = 10) -> dict[str, Any]:
        """The plan as data: campaign, label, terminals, cycles_per_terminal, cases (id, kind,
        what, share), chunks (how many), estimated_s, and the ``first`` (terminal, index, case)
        rows in the order they run."""
        est = self.estimate()
        rows: list[dict[str, Any]] = []
        i = 0
        while len(rows) < first and (self.cycles_per_terminal is None
                                     or i < self.cycles_per_terminal):
            for t in self.terminals:
                if len(rows) < first:
                    rows.append(PlannedCycle(t, i, self.case(t, i)).as_dict())
            i += 1
        c = self.campaign
        return {
            "campaign": c.name, "label": c.label,
            "lab": str(c.lab_path()) if c.source else c.lab,
            "terminals": list(self.terminals),
            "cycles_per_terminal": self.cycles_per_terminal,
            "stop": c.stop.summary(),
            "order": self.order, "seed": self.seed, "chunk": self.chunk_size,
            "steps": [{s.kind: s.params()} for s in c.steps],
            "cases": [pc.as_dict() for pc in self.cases],
            "chunks": self.n_chunks,
            "estimated_s": round(self.estimate_s(), 1),
            "estimated": human_duration(est.seconds),
            "estimate": est.as_dict(),
            "first": rows,
        }

    def __repr__(self) -> str:
        n = self.cycles_per_terminal
        return (f"Plan({self.campaign.name!r}, {len(self.terminals)} terminals, "
                f"{n if n is not None else 'open-ended'} cycles each, {len(self.cases)} cases, "
                f"{human_duration(self.estimate_s())})")


def plan(campaign: Campaign, terminals: Sequence[str] | None = None, *,
         lab: LabConfig | None = None, now: datetime | None = None) -> Plan:
    """Expand ``campaign`` for ``terminals`` (default: the campaign's own). No hardware is
    touched; ``lab`` defaults to the campaign's lab config, ``now`` (for ``until``) to the
    local time."""
    lab = lab or campaign.lab_config()
    names = list(terminals) if terminals is not None else campaign.terminal_names(lab)
    return Plan(campaign, names, lab, now)
