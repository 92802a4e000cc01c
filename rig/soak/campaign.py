"""Soak campaign files: what an overnight run does, as validated data.

A campaign (``configs/campaigns/<name>.yaml``, format in ``docs/soak.md``) names a lab and its
terminals, the steps of one cycle (power cycle, await sign-on, blocks of sales, settle, waits),
when to stop (cycles per terminal, a duration, a local time), the fault matrix a cycle draws
its case from, the health policy, and a label (the firmware under test) that every result
carries. Nothing here touches hardware: :func:`load_campaign` reads and checks the file, the
lab config, the scenarios and the card profiles, and :mod:`rig.soak.plan` expands it.

Checking runs in two passes, both ending in ``file:line: field: problem``: the file's shape
(pydantic, through :func:`rig.config.validate_model`, as for lab configs and scenarios), then
what needs the world around it: the lab's terminals, cards and magazine, scenario names, fault
windows against the cycle's steps, sales that would run before a sign-on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from ..cards.profiles import CARDS_DIR, CardProfile, load_cards
from ..config import LabConfig, _line_of, load_lab, read_yaml, validate_model
from ..core.errors import ConfigError, TestError
from ..faults.scenarios import FaultData, Scenario, load_scenarios
from ..faults.spec import Fault, Phase, fault_from_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS_DIR = REPO_ROOT / "configs" / "campaigns"

Loc = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- values -----------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|min|s)")


def parse_duration(v: Any) -> float:
    """Seconds from ``3600``, ``"90m"``, ``"8h"``, ``"1h30m"``, ``"45s"``, ``"1d"``."""
    if isinstance(v, bool):
        raise ValueError(f"duration {v!r}: give seconds or a text like '8h' / '90m'")
    if isinstance(v, int | float):
        s = float(v)
    elif isinstance(v, str):
        text = v.strip().lower()
        try:
            s = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or _DURATION.sub("", text).strip():
                raise ValueError(f"duration {v!r}: give seconds or a text like '8h', '90m', "
                                 f"'1h30m', '45s'") from None
            unit_s = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}
            s = sum(float(n) * unit_s[u] for n, u in parts)
    else:
        raise ValueError(f"duration {v!r}: give seconds or a text like '8h' / '90m'")
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"duration {v!r} must be above 0")
    return s


def parse_local_time(v: Any) -> time:
    """``"07:00"`` / ``"06:30:00"`` → :class:`datetime.time` (local time of the rig host)."""
    if isinstance(v, time):
        return v
    if isinstance(v, int) and not isinstance(v, bool):  # YAML 1.1 reads 07:00 as 420 (base 60)
        raise ValueError(f"until {v!r}: quote the time, e.g. until: \"07:00\"")
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*", str(v))
    if not m or int(m[1]) > 23 or int(m[2]) > 59 or int(m[3] or 0) > 59:
        raise ValueError(f"until {v!r}: give a local time of day as HH:MM, e.g. \"07:00\"")
    return time(int(m[1]), int(m[2]), int(m[3] or 0))


MAX_AMOUNT = Decimal(10**10)  # major units; ISO 8583 field 4 holds 12 digits of minor units


def parse_amount(v: Any) -> str:
    """``1``, ``1.0``, ``"1.00"`` → ``"1.00"``: positive, at most two decimals (major units)."""
    if isinstance(v, bool):
        raise ValueError(f"amount {v!r} is not a number")
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        raise ValueError(f"amount {v!r} is not a number; give it like \"1.00\"") from None
    if not d.is_finite() or d <= 0 or d >= MAX_AMOUNT or d != d.quantize(Decimal("0.01")):
        raise ValueError(f"amount {v!r}: must be positive with at most 2 decimals, below "
                         f"{MAX_AMOUNT:,} (field 4: 12 digits of minor units)")
    return f"{d:.2f}"


Seconds = Annotated[float, BeforeValidator(parse_duration)]
LocalTime = Annotated[time, BeforeValidator(parse_local_time)]
Amount = Annotated[str, BeforeValidator(parse_amount)]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]


# --- steps ------------------------------------------------------------------------------------

class _Step(_Strict):
    """A step of a cycle (or of a health procedure); the runner aborts it after its deadline."""

    deadline_s: float | None = Field(None, gt=0, description="abort the step after this long "
                                     "(default: from the step's own times, see deadline())")

    def default_deadline_s(self) -> float:  # pragma: no cover - every step overrides it
        raise NotImplementedError

    def deadline(self) -> float:
        """Seconds the runner gives this step before it aborts it."""
        return self.deadline_s if self.deadline_s is not None else self.default_deadline_s()

    def params(self) -> dict[str, Any]:
        """The step's parameters (no kind; unset optional ones left out)."""
        return self.model_dump(mode="json", exclude={"kind"}, exclude_none=True)


class PowerCycle(_Step):
    kind: Literal["power_cycle"] = "power_cycle"
    off_s: float | None = Field(None, ge=0, le=3600, description="off time (default: the lab's "
                                "power.off_s of the terminal)")

    def default_deadline_s(self) -> float:
        return (self.off_s or 0.0) + 30.0


class AwaitSignon(_Step):
    kind: Literal["await_signon"] = "await_signon"
    timeout_s: float = Field(60.0, gt=0, description="READY (or give-up) within this long")

    def default_deadline_s(self) -> float:
        return self.timeout_s + 10.0


class Sales(_Step):
    kind: Literal["sales"] = "sales"
    count: int = Field(1, ge=1, le=1000, description="sales in this block, one after another")
    card: str = Field("cup_debit", description="card profile, in the robot's magazine")
    entry: Literal["chip", "swipe", "tap"] = "chip"
    amount: Amount = "1.00"
    timeout_s: float = Field(60.0, gt=0, description="each sale's result within this long")

    def default_deadline_s(self) -> float:
        return self.count * (self.timeout_s + 30.0)


class Settle(_Step):
    kind: Literal["settle"] = "settle"
    timeout_s: float = Field(30.0, gt=0)

    def default_deadline_s(self) -> float:
        return self.timeout_s + 10.0


class Wait(_Step):
    kind: Literal["wait"] = "wait"
    s: float = Field(ge=0, le=86400, description="seconds to wait")

    def default_deadline_s(self) -> float:
        return self.s + 5.0


class RobotHome(_Step):
    """Home the shared robot (health recovery only: it takes the robot from every terminal)."""

    kind: Literal["robot_home"] = "robot_home"

    def default_deadline_s(self) -> float:
        return 120.0


CYCLE_STEPS: dict[str, type[_Step]] = {
    c.model_fields["kind"].default: c for c in (PowerCycle, AwaitSignon, Sales, Settle, Wait)}
HEALTH_STEPS: dict[str, type[_Step]] = {**CYCLE_STEPS, "robot_home": RobotHome}


def _step_form(allowed: Mapping[str, type[_Step]], where: str) -> Callable[[Any], Any]:
    """YAML ``- sales: {count: 2}`` / ``- settle`` → ``{"kind": "sales", "count": 2}``."""

    def normalise(v: Any) -> Any:
        if isinstance(v, _Step):
            return v
        if isinstance(v, str):
            kind, params = v, {}
        elif isinstance(v, dict) and "kind" in v:
            return v  # the dumped form (a campaign snapshot) validates again
        elif isinstance(v, dict) and len(v) == 1:
            kind, params = next(iter(v.items()))
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise ValueError(f"step {kind!r}: give its parameters as a mapping, e.g. "
                                 f"`- {kind}: {{...}}`, not {params!r}")
        else:
            raise ValueError(f"a step is one key naming it, e.g. `- wait: {{s: 1}}`; got {v!r}")
        if kind not in allowed:
            hint = (" (robot_home belongs in health.recover / health.check)"
                    if kind in HEALTH_STEPS else "")
            raise ValueError(f"unknown {where} step {kind!r}{hint}; known: "
                             f"{', '.join(allowed)}")
        return {"kind": kind, **params}

    return normalise


CycleStep = Annotated[
    PowerCycle | AwaitSignon | Sales | Settle | Wait,
    Field(discriminator="kind"), BeforeValidator(_step_form(CYCLE_STEPS, "cycle"))]
HealthStep = Annotated[
    PowerCycle | AwaitSignon | Sales | Settle | Wait | RobotHome,
    Field(discriminator="kind"), BeforeValidator(_step_form(HEALTH_STEPS, "health"))]
AnyStep = PowerCycle | AwaitSignon | Sales | Settle | Wait | RobotHome


# --- stop criteria, matrix, health ----------------------------------------------------------

class Stop(_Strict):
    """When the campaign ends: at the first criterion met."""

    cycles: int | None = Field(None, ge=1, description="cycles per terminal")
    duration: Seconds | None = Field(None, description="seconds after the start: 36000, '10h', "
                                     "'90m'")
    until: LocalTime | None = Field(None, description="local time of day, e.g. '07:00' (the "
                                    "next one after the start)")

    @model_validator(mode="after")
    def _some(self) -> Stop:
        if self.cycles is None and self.duration is None and self.until is None:
            raise ValueError("give at least one of cycles, duration, until (else it never ends)")
        return self

    def deadline(self, started: datetime) -> datetime | None:
        """When a campaign started at ``started`` (aware, or naive local) must stop, if a
        ``duration`` or ``until`` says so; the earlier of the two."""
        start = started if started.tzinfo else started.astimezone()
        ends: list[datetime] = []
        if self.duration is not None:
            ends.append(start + timedelta(seconds=self.duration))
        if self.until is not None:
            local = start.astimezone()
            end = datetime.combine(local.date(), self.until).astimezone()
            if end <= local:
                end = datetime.combine(local.date() + timedelta(days=1), self.until).astimezone()
            ends.append(end)
        return min(ends) if ends else None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cycles is not None:
            out["cycles"] = self.cycles
        if self.duration is not None:
            out["duration_s"] = self.duration
        if self.until is not None:
            out["until"] = self.until.strftime("%H:%M:%S" if self.until.second else "%H:%M")
        return out


CaseKind = Literal["baseline", "faults", "scenario"]


class Case(_Strict):
    """One case of the fault matrix: a baseline, a list of faults, or a named scenario."""

    id: Slug = Field(description="names the case in every cycle's result")
    title: str = ""
    weight: float = Field(1.0, gt=0, le=1e6, description="relative share of cycles")
    none: Literal[True] | None = Field(None, description="true: a baseline case (no fault)")
    faults: list[FaultData] | None = Field(None, description="fault dicts, as in scenarios: "
                                           "{fault: latency, ms: 200, during: signon}")
    scenario: str | None = Field(None, description="a scenario of configs/scenarios: its faults, "
                                 "windows and expectation")
    during: Phase | None = Field(None, description="window for this case's faults that give none")
    extra_s: float | None = Field(None, ge=0, description="added to this case's cycle in the "
                                  "dry-run estimate (overrides the planner's guess)")

    @model_validator(mode="after")
    def _one_kind(self) -> Case:
        given = [k for k in ("none", "faults", "scenario") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `none: true`, `faults: [...]`, `scenario: "
                             f"<name>` (got {', '.join(given) or 'none of them'})")
        if self.faults is not None and not self.faults:
            raise ValueError("faults is empty; a case without faults is `none: true`")
        if self.during is not None and self.faults is None:
            raise ValueError("during applies to `faults:` cases (a scenario has its own)")
        return self

    @property
    def kind(self) -> CaseKind:
        return "baseline" if self.none else "faults" if self.faults is not None else "scenario"

    def fault_objects(self, scenarios: Mapping[str, Scenario] | None = None) -> list[Fault]:
        """The faults this case holds over a cycle, each on its window (``during`` given to the
        ones without); a scenario case needs ``scenarios`` (name → Scenario)."""
        if self.scenario is not None:
            if scenarios is None or self.scenario not in scenarios:
                raise TestError(f"case {self.id}: unknown scenario {self.scenario!r}")
            return scenarios[self.scenario].fault_objects()
        out = []
        for d in self.faults or ():
            f = fault_from_dict(d)
            if self.during is not None and f.during is None:
                f = f.model_copy(update={"during": self.during})
            out.append(f)
        return out


class Matrix(_Strict):
    """The cases and how a cycle picks one: round robin by cycle index, or seeded random."""

    order: Literal["round_robin", "random"] = "round_robin"
    seed: int | None = Field(None, description="random order: the same seed replays the plan")
    stagger: bool = Field(True, description="round robin: terminal k (its position in the "
                          "campaign's terminals) starts k cases further, so the terminals run "
                          "different cases at the same time and a short run covers the matrix")
    cases: list[Case] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Matrix:
        ids = [c.id for c in self.cases]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"case ids must be unique: {', '.join(twice)} given twice")
        if self.order == "random" and self.seed is None:
            raise ValueError("order random needs a seed (a resume must replay the same plan)")
        if self.order == "round_robin":
            odd = [c.id for c in self.cases if c.weight != int(c.weight)]
            if odd:
                raise ValueError("round_robin weights are whole numbers (a case with weight 2 "
                                 f"comes twice per round); not: {', '.join(odd)}")
            if sum(c.weight for c in self.cases) > 10_000:
                raise ValueError("round_robin weights add up to more than 10000 cycles per "
                                 "round; use smaller weights (only their ratios matter)")
        return self


def _baseline_matrix() -> Matrix:
    return Matrix(cases=[Case(id="baseline", none=True)])


class Health(_Strict):
    """LAVA-style health: good → suspect → recovery → check → good, or bad → quarantined."""

    suspect_after: int = Field(2, ge=1, description="consecutive DUT failures → suspect")
    recover: list[HealthStep] = Field(
        default_factory=lambda: [PowerCycle(off_s=10.0)],
        description="steps run on a suspect terminal (e.g. a long power cycle, robot_home)")
    quarantine_after: int = Field(3, ge=1, description="failed recoveries in a row → quarantined")
    check: list[HealthStep] | None = Field(
        None, description="health check before a terminal returns (default: the cycle's steps "
        "with no fault)")
    infra_poll_s: float = Field(5.0, gt=0, description="while paused on an infrastructure "
                                "error: ask the instrument again this often")

    def check_steps(self, cycle: list[AnyStep]) -> list[AnyStep]:
        """The health check's steps: ``check``, else the cycle's own steps."""
        return list(self.check) if self.check is not None else list(cycle)


class EstimateHints(_Strict):
    """What the dry-run estimate cannot know from the lab config (a bench's terminals)."""

    boot_s: float | None = Field(None, gt=0, description="power on → READY, typical")
    sale_s: float | None = Field(None, gt=0, description="one sale, ECR command → result, incl. "
                                 "the robot's moves")
    settle_s: float | None = Field(None, gt=0)


# --- the campaign -----------------------------------------------------------------------------

class Campaign(_Strict):
    name: Slug
    title: str = ""
    label: str = Field(min_length=1, description="firmware under test; carried into every result")
    lab: str = Field(description="lab config, relative to this file or to the project")
    terminals: Annotated[list[str], Field(min_length=1)] | Literal["all"] = Field(
        "all", description="terminal names of the lab, or all")
    steps: list[CycleStep] = Field(min_length=1, description="one cycle, in order")
    stop: Stop
    matrix: Matrix = Field(default_factory=_baseline_matrix)
    health: Health = Health()
    chunk: int = Field(10, ge=1, le=100_000, description="cycles per chunk")
    estimate: EstimateHints = EstimateHints()

    _source: Path | None = PrivateAttr(None)
    _lab: LabConfig | None = PrivateAttr(None)
    _scenarios: dict[str, Scenario] | None = PrivateAttr(None)
    _cards: dict[str, CardProfile] | None = PrivateAttr(None)

    # --- where it came from, what it refers to -----------------------------------------------
    @property
    def source(self) -> Path | None:
        """The campaign file (None for a campaign built in code)."""
        return self._source

    def lab_path(self) -> Path:
        """The lab config: absolute, else next to the campaign file, else under the project."""
        return resolve_lab(self.lab, self._source)

    def lab_config(self) -> LabConfig:
        """The lab config (loaded once)."""
        if self._lab is None:
            self._lab = load_lab(self.lab_path())
        return self._lab

    def scenarios(self) -> dict[str, Scenario]:
        """The scenarios the matrix may name (``configs/scenarios``, loaded once)."""
        if self._scenarios is None:
            self._scenarios = load_scenarios()
        return self._scenarios

    def cards(self) -> dict[str, CardProfile]:
        """The card profiles of the lab's magazine (loaded once)."""
        if self._cards is None:
            self._cards = load_cards(cards_dir(self.lab_config()))
        return self._cards

    def terminal_names(self, lab: LabConfig | None = None) -> list[str]:
        """The campaign's terminals, in the lab config's order for ``all``."""
        lab = lab or self.lab_config()
        if self.terminals == "all":
            return list(lab.terminals)
        unknown = [t for t in self.terminals if t not in lab.terminals]
        if unknown:
            raise TestError(f"campaign {self.name}: terminals {', '.join(unknown)} are not in "
                            f"lab {lab.name} ({', '.join(lab.terminals)})")
        return list(self.terminals)

    def check_steps(self) -> list[AnyStep]:
        """The health check's steps (see :meth:`Health.check_steps`)."""
        return self.health.check_steps(list(self.steps))

    def snapshot(self) -> dict[str, Any]:
        """The campaign as plain data (store it with the run), with where its lab came from."""
        data = self.model_dump(mode="json")
        data["source"] = str(self._source) if self._source else None
        try:
            data["lab_path"] = str(self.lab_path())
        except ConfigError:
            data["lab_path"] = None
        return data


def resolve_lab(lab: str, source: Path | None = None) -> Path:
    """Where the lab config ``lab`` is: absolute, next to ``source``, or under the project."""
    p = Path(lab).expanduser()
    if p.is_absolute():
        tried = [p]
    else:
        tried = ([source.parent / p] if source is not None else []) + [REPO_ROOT / p]
    for cand in tried:
        if cand.is_file():
            return cand.resolve()
    raise ConfigError(f"lab config {lab!r} not found (looked at {', '.join(map(str, tried))})")


# --- loading ----------------------------------------------------------------------------------

def load_campaign(path: str | Path, *, lab: LabConfig | None = None,
                  scenarios: Mapping[str, Scenario] | None = None,
                  cards: Mapping[str, CardProfile] | None = None) -> Campaign:
    """Read and check a campaign file; every problem is ``file:line: field: problem``.

    ``lab``, ``scenarios`` and ``cards`` default to the campaign's lab config, the shipped
    scenarios (``configs/scenarios``) and the lab's card profiles."""
    path = Path(path)
    data, tree = read_yaml(path)
    camp = validate_model(Campaign, data, str(path), tree)
    camp._source = path.resolve()
    where = f"{path}:{_line_of(tree, ('lab',)) or '?'}: lab"
    if lab is None:
        try:
            lab = load_lab(resolve_lab(camp.lab, camp._source))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    camp._lab = lab
    if scenarios is None:
        try:
            scenarios = load_scenarios()
        except ConfigError as e:
            raise ConfigError(f"{path}:1: matrix: cannot load the scenarios: {e}") from None
    camp._scenarios = dict(scenarios)
    if cards is None:
        try:
            cards = load_cards(cards_dir(lab))
        except ConfigError as e:
            raise ConfigError(f"{path}:1: cannot load the card profiles: {e}") from None
    camp._cards = dict(cards)
    problems = check_campaign(camp, lab, camp._scenarios, cards)
    if problems:
        raise ConfigError("\n".join(
            f"{path}:{_line_of(tree, loc) or '?'}: {'.'.join(map(str, loc))}: {msg}"
            for loc, msg in problems))
    return camp


def load_campaigns(directory: str | Path | None = None) -> dict[str, Campaign]:
    """Every ``*.yaml`` campaign of ``directory`` (default ``configs/campaigns``), by name."""
    d = Path(directory) if directory else CAMPAIGNS_DIR
    if not d.is_dir():
        raise ConfigError(f"{d}: no such campaign directory")
    return {c.name: c for c in (load_campaign(p) for p in sorted(d.glob("*.yaml")))}


def cards_dir(lab: LabConfig) -> Path:
    """The card profiles of ``lab``'s magazine: its ``robot.cards_dir`` (cwd, else project)."""
    if lab.robot is None:
        return CARDS_DIR
    d = Path(lab.robot.cards_dir)
    return d if d.is_absolute() or d.is_dir() else REPO_ROOT / d


# --- checks that need the lab, the scenarios and the cards ------------------------------------

SOAK_PROCEDURES = ("signon", "sale")  # scenario procedures that fit inside a cycle's steps


def check_campaign(c: Campaign, lab: LabConfig, scenarios: Mapping[str, Scenario],
                   cards: Mapping[str, CardProfile]) -> list[tuple[Loc, str]]:
    """Problems (location, message) of a structurally valid campaign against its world."""
    out: list[tuple[Loc, str]] = []
    if c.terminals != "all":
        for i, t in enumerate(c.terminals):
            if t not in lab.terminals:
                out.append((("terminals", i), f"no terminal {t!r} in lab {lab.name} "
                            f"({', '.join(lab.terminals)})"))
        twice = sorted({t for t in c.terminals if c.terminals.count(t) > 1})
        if twice:
            out.append((("terminals",), f"{', '.join(twice)} listed twice"))
    out += _check_order(c.steps, ("steps",))
    out += _check_steps(c.steps, ("steps",), lab, cards)
    out += _check_steps(c.health.recover, ("health", "recover"), lab, cards)
    if c.health.check is not None:
        out += _check_order(c.health.check, ("health", "check"), cyclic=False)
        out += _check_steps(c.health.check, ("health", "check"), lab, cards)
    names = [t for t in (lab.terminals if c.terminals == "all" else c.terminals)
             if t in lab.terminals]
    for i, case in enumerate(c.matrix.cases):
        loc = ("matrix", "cases", i)
        problems = _check_case(case, loc, c.steps, scenarios, cards)
        out += problems
        if not problems:
            out += _check_case_lab(case, loc, lab, names, scenarios)
    return out


def _check_case_lab(case: Case, loc: Loc, lab: LabConfig, terminals: list[str],
                    scenarios: Mapping[str, Scenario]) -> list[tuple[Loc, str]]:
    """Faults the lab cannot apply: card faults and virtual-only scenarios on a bench, power
    faults other than a dropout on a relay-powered terminal."""
    sc = scenarios.get(case.scenario) if case.scenario else None
    where = (*loc, "scenario") if sc else (*loc, "faults")
    if sc is not None and "virtual" in sc.needs and not lab.virtual:
        return [(where, f"scenario {sc.name!r} needs the virtual lab; lab {lab.name} is a bench")]
    out: list[tuple[Loc, str]] = []
    for f in case.fault_objects(scenarios):
        if f.layer == "card" and not lab.virtual:
            out.append((where, f"fault {f.name} needs the virtual lab's control port; on a "
                        "bench, put a card with that defect in the magazine"))
        if f.layer == "power" and not getattr(f, "relay_ok", False):
            relayed = [t for t in terminals if lab.terminals[t].power.relay is not None
                       or lab.terminals[t].power.pdu is not None]
            if relayed:
                out.append((where, f"fault {f.name} needs a PSU channel; "
                            f"{', '.join(relayed)} {'is' if len(relayed) == 1 else 'are'} "
                            "powered through a relay or a PDU (only power_dropout works there)"))
    return out


def _check_order(steps: list[Any], loc: Loc, cyclic: bool = True) -> list[tuple[Loc, str]]:
    """Sales and settlements need a signed-on terminal: in a cycle that power-cycles, each must
    come after an ``await_signon`` that follows the last power cycle (cyclically: the next
    cycle starts where this one ended)."""
    kinds = [s.kind for s in steps]
    if "power_cycle" not in kinds:
        return []
    last_pc = max(i for i, k in enumerate(kinds) if k == "power_cycle")
    signed = cyclic and "await_signon" in kinds[last_pc + 1:]
    out = []
    for i, k in enumerate(kinds):
        if k == "power_cycle":
            signed = False
        elif k == "await_signon":
            signed = True
        elif k in ("sales", "settle") and not signed:
            out.append(((*loc, i, k), f"a {k} step after a power_cycle needs an await_signon "
                        "before it (the terminal is not signed on yet)"))
    return out


def _check_steps(steps: list[Any], loc: Loc, lab: LabConfig,
                 cards: Mapping[str, CardProfile]) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    for i, s in enumerate(steps):
        if isinstance(s, Sales):
            here = (*loc, i, "sales", "card")
            out += [(here, m) for m in _card_problems(s.card, s.entry, lab, cards)]
        if isinstance(s, RobotHome) and lab.robot is None:
            out.append(((*loc, i), f"lab {lab.name} has no robot to home"))
    return out


def _card_problems(card: str, entry: str | None, lab: LabConfig,
                   cards: Mapping[str, CardProfile]) -> list[str]:
    if card not in cards:
        return [f"unknown card {card!r}; known: {', '.join(sorted(cards))}"]
    if lab.robot is None:
        return [f"lab {lab.name} has no card robot: sales need `robot:` in the lab config"]
    if lab.robot.slot_of(card) is None:
        held = ", ".join(sorted(set(lab.robot.magazine.slots.values())))
        return [f"card {card!r} is not in lab {lab.name}'s robot magazine ({held})"]
    if entry is not None and entry not in cards[card].entry_modes:
        return [f"card {card!r} does not support entry {entry!r} (its entry_modes: "
                f"{', '.join(cards[card].entry_modes)})"]
    return []


def _check_case(case: Case, loc: Loc, steps: list[Any], scenarios: Mapping[str, Scenario],
                cards: Mapping[str, CardProfile]) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    kinds = {s.kind for s in steps}
    if case.scenario is not None:
        sc = scenarios.get(case.scenario)
        if sc is None:
            return [((*loc, "scenario"), f"unknown scenario {case.scenario!r}; known: "
                     f"{', '.join(sorted(scenarios))}")]
        if sc.procedure not in SOAK_PROCEDURES:
            out.append(((*loc, "scenario"), f"scenario {sc.name!r} (procedure {sc.procedure}) "
                        "does not fit inside a soak cycle; run it with `rig scenario run`"))
        elif not sc.faults:
            out.append(((*loc, "scenario"), f"scenario {sc.name!r} has no faults: inside a soak "
                        "cycle it would be a baseline (use `none: true`)"))
        elif sc.procedure == "sale" and "sales" not in kinds:
            out.append(((*loc, "scenario"), f"scenario {sc.name!r} is about a sale but the "
                        "cycle has no sales step"))
        elif sc.procedure == "signon" and "await_signon" not in kinds:
            out.append(((*loc, "scenario"), f"scenario {sc.name!r} is about sign-on but the "
                        "cycle has no await_signon step"))
        return out
    for j, f in enumerate(case.fault_objects() if case.faults else ()):
        here = (*loc, "faults", j)
        card = getattr(f, "card", None)
        if card is not None and card not in cards:
            out.append((here, f"fault {f.name}: unknown card {card!r}; known: "
                        f"{', '.join(sorted(cards))}"))
        need = {"signon": "await_signon", "auth": "sales", "sale": "sales"}.get(f.during or "")
        if need is not None and need not in kinds:
            out.append((here, f"fault {f.name} is on during {f.during}, but the cycle has no "
                        f"{need} step: it would never be on"))
        if f.layer in ("card", "robot") and "sales" not in kinds:
            out.append((here, f"fault {f.name} acts on a sale's card, but the cycle has no "
                        "sales step"))
    return out
