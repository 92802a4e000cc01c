"""Terminal profiles: what a terminal model prints on its console and how it is driven, as data.

A profile is a YAML file (``configs/profiles/<name>.yaml``, see ``template.yaml``) validated
here with ``file:line: field: problem`` errors. Both sides load it, so it lives beside
:mod:`rig.config` (shared core, no I/O beyond reading the file): the controller's console
reader (:mod:`rig.drivers.console`) classifies lines with it, the virtual lab's terminals
(:mod:`rig.sim.parts`) print their lines in its format, so every profile is tested live.

Console events have one **canonical form** (the virtual terminal's native text, e.g.
``RESULT approved rc=00 auth=123456 stan=000012``): a pattern's named groups (``rc``, ``stan``,
``outcome``…) are rewritten into it, so the figures read every model's lines the same way.
A pattern's ``values`` map what the model prints to the canonical word (``成功: approved``).
An ``emit`` template says how the virtual lab prints the event for this model; it must read
back as the same event (checked at load time). Events a model cannot report are listed under
``unsupported`` with the reason; the figures that need them come out NaN with it.
"""

from __future__ import annotations

import codecs
import functools
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from .config import Strict, field_error
from .core.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "configs" / "profiles"


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One console event: its canonical head and what it means."""

    head: str
    means: str
    word: str | None = None  # a field printed right after the head (RESULT <outcome>)


# Order matters for canonical parsing only where heads share a prefix (none do).
EVENTS: dict[str, EventSpec] = {
    "boot": EventSpec("BOOT done", "boot finished (its first line: boot_s)"),
    "login_prompt": EventSpec("LOGIN wait", "asks for the operator (the rig logs in over ECR)"),
    "login": EventSpec("LOGIN ok", "operator logged in"),
    "signon_start": EventSpec("SIGNON start", "a sign-on attempt starts"),
    "signon_ok": EventSpec("SIGNON ok", "signed on (working keys loaded)"),
    "signon_fail": EventSpec("SIGNON fail", "one sign-on attempt failed (rc)"),
    "signon_giveup": EventSpec("SIGNON giveup", "gave up signing on"),
    "ready": EventSpec("READY", "idle and signed on (ready_s)"),
    "sale_start": EventSpec("SALE start", "a transaction started"),
    "card_prompt": EventSpec("CARD wait", "asks for the card"),
    "card_read": EventSpec("CARD read", "card read (masked pan, mode)"),
    "card_fail": EventSpec("CARD fail", "a card read failed (reason)"),
    "insert_again": EventSpec("CARD insert again", "asks for the card again"),
    "fallback": EventSpec("CARD fallback", "chip failed: asks for a swipe"),
    "result": EventSpec("RESULT", "the result with its response code", word="outcome"),
    "reversal": EventSpec("REVERSAL", "a reversal (what: sent / ok / fail / giveup)", word="what"),
}
# the events the figures read; each profile gives a pattern for them or says why it cannot
FIGURE_EVENTS = ("boot", "signon_start", "signon_ok", "signon_fail", "ready", "card_prompt",
                 "insert_again", "result", "reversal")
FIELDS = ("outcome", "what", "mode", "pan", "rc", "auth", "rrn", "stan", "attempt", "amount",
          "balance", "settle", "reason")  # canonical order; reason last (it may hold spaces)
TEMPLATE_VARS = ("ms", "level", "text", "time", "date", *FIELDS)
OUTCOMES = ("approved", "declined", "failed")
SAMPLE = {"outcome": "declined", "what": "sent", "mode": "chip", "pan": "622202******1234",
          "rc": "05", "auth": "123456", "rrn": "000000000042", "stan": "000123", "attempt": "1",
          "amount": "100", "balance": "499900", "settle": "balanced", "reason": "no ATR",
          "ms": 812, "level": "INFO", "time": "12:34:56", "date": "2026-01-02"}
_KV = re.compile(r"(\w+)=(\S+)")


class ConsoleEvent(Strict):
    """How one event looks on the console."""

    pattern: str = Field(description="regular expression (Python re, searched in the line); "
                         "named groups among: " + ", ".join(FIELDS))
    emit: str | None = Field(None, description="how the virtual lab prints it: a format string "
                             "over " + ", ".join(TEMPLATE_VARS) + "; must match `pattern`")
    values: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="per group: printed text -> canonical word "
        "(e.g. outcome: {成功: approved})")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            rx = re.compile(v)
        except re.error as e:
            raise ValueError(f"bad regular expression {v!r}: {e}") from None
        unknown = sorted(set(rx.groupindex) - set(FIELDS))
        if unknown:
            raise ValueError(f"named group(s) {', '.join(unknown)} unknown; use "
                             f"{', '.join(FIELDS)}")
        return v

    @field_validator("emit")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v)
                     if f is not None]
        except ValueError as e:
            raise ValueError(f"bad template {v!r}: {e}") from None
        names = {f for f, _, _ in parts}
        unknown = sorted(n for n in names if n not in TEMPLATE_VARS)
        if unknown or "" in names:
            raise ValueError(f"template field(s) {', '.join(unknown) or '{}'} unknown; use "
                             f"{', '.join(TEMPLATE_VARS)}")
        specs = sorted({f for f, spec, conv in parts if (spec or conv) and f != "ms"})
        if specs:  # a field may be empty (no auth code on a decline): text only, no specs
            raise ValueError(f"format specs only on {{ms}}, not on {', '.join(specs)}")
        return v


class KeypadKey(Strict):
    """A key's centre, mm from the terminal's keypad origin (``stations.keypad``)."""

    x: float
    y: float


DIGITS = tuple("0123456789")


class Keypad(Strict):
    """Where the keys are and how the robot presses them."""

    keys: dict[str, KeypadKey] = Field(description="key name -> offset from stations.keypad")
    press_mm: float = Field(1.5, gt=0, le=10, description="how far below the key top to press")
    press_ms: float = Field(120, ge=0, le=5000, description="how long to hold it down")
    lift_mm: float = Field(3.0, gt=0, le=50, description="hover height above the keys")
    min_press_ms: float = Field(50, ge=0, description="shorter presses do not register (sim)")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        """Accept the flat form ``{SALE: {x, y}, "1": {x, y}, press_mm: 1.5}`` too."""
        if isinstance(data, Mapping) and "keys" not in data:
            settings = {"press_mm", "press_ms", "lift_mm", "min_press_ms"}
            return {"keys": {str(k): v for k, v in data.items() if k not in settings},
                    **{k: v for k, v in data.items() if k in settings}}
        return data


class SimConsole(Strict):
    """How the virtual lab prints lines that are no event of the profile."""

    line: str | None = Field(None, description="template for every other line (ms, level, text, "
                             "time, date); null: the model prints nothing for them")

    _check = field_validator("line")(lambda cls, v: ConsoleEvent._template(v))


class TerminalProfile(Strict):
    """One terminal model: console format, ECR protocol, how a sale is started, keypad."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    encoding: str = Field("utf-8", description="console byte encoding (utf-8, gbk, gb18030…)")
    canonical: bool = Field(False, description="the console already prints canonical lines "
                            "(the virtual terminal): events keep the line as printed")
    console: dict[str, ConsoleEvent] = Field(default_factory=dict,
                                             description="event -> pattern (first match wins)")
    unsupported: dict[str, str] = Field(default_factory=dict,
                                        description="event -> why this model cannot report it")
    sim: SimConsole = SimConsole()
    drive: Literal["ecr", "keypad", "none"] = Field("ecr", description="how a sale is started")
    ecr: Literal["line", "framed", "none"] = Field("line", description="ECR protocol profile")
    ecr_retries: int = Field(3, ge=0, le=10, description="framed: resends after NAK / no ACK")
    ready_after_0810_ms: float | None = Field(
        None, ge=0, description="no READY on the console and no ECR STATUS: READY this long "
        "after the 0810 (a configured estimate; figures say so)")
    keypad: Keypad | None = None

    _compiled: list[tuple[str, re.Pattern[str]]] = PrivateAttr(default_factory=list)

    @field_validator("encoding")
    @classmethod
    def _codec(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}") from None

    @model_validator(mode="after")
    def _consistent(self) -> TerminalProfile:
        for section in ("console", "unsupported"):
            for ev in getattr(self, section):
                if ev not in EVENTS:
                    raise field_error((section, ev), f"unknown event {ev!r}; events: "
                                       f"{', '.join(EVENTS)}")
        for ev in self.unsupported:
            if ev in self.console:
                raise field_error(("unsupported", ev), f"{ev} has a console pattern too")
        for ev, ce in self.console.items():
            for group in ce.values:
                if group not in FIELDS:
                    raise field_error(("console", ev, "values", group), f"unknown group {group!r}")
        if self.drive == "keypad":
            missing = [k for k in ("SALE", "ENTER", *DIGITS)
                       if self.keypad is None or k not in self.keypad.keys]
            if missing:
                raise field_error(("keypad",) if self.keypad else ("drive",),
                                   f"drive: keypad needs keys {', '.join(missing)}")
        if self.drive == "ecr" and self.ecr == "none":
            raise field_error(("drive",), "drive: ecr needs an ECR protocol (ecr: line | framed)")
        self._compiled = [(ev, re.compile(ce.pattern)) for ev, ce in self.console.items()]
        for ev, ce in self.console.items():
            if ce.emit is None:
                continue
            fields = {**SAMPLE, "outcome": "approved" if ev == "result" else SAMPLE["outcome"]}
            line = self._format(ev, ce.emit, fields, EVENTS[ev].head)
            got = self.match(line)
            if got is None or got.event != ev:
                raise field_error(("console", ev, "emit"), f"renders {line!r}, which this "
                                   f"profile reads as {got.event if got else 'no event'}")
        return self

    # --- reading lines (the controller) --------------------------------------------------------
    def match(self, line: str) -> Match | None:
        """The first event whose pattern is found in ``line``, with its canonical fields."""
        for ev, rx in self._compiled:
            m = rx.search(line)
            if m is None:
                continue
            values = self.console[ev].values
            fields = {k: values.get(k, {}).get(v, v) for k, v in m.groupdict().items()
                      if v not in (None, "")}
            if self.canonical:
                fields = {**parse_canonical(ev, line), **fields}
            return Match(ev, fields)
        return None

    def why_not(self, event: str) -> str | None:
        """Why this model cannot report ``event`` (None: it can)."""
        if event in self.console:
            return None
        return self.unsupported.get(event, f"profile {self.name} has no pattern for {event}")

    # --- printing lines (the virtual lab) -----------------------------------------------------
    def render(self, event: str | None, text: str, **context: Any) -> str | None:
        """How this model prints canonical ``text`` (event ``event`` or None); None: silent.
        ``context``: ms, level, time, date."""
        fields = {**context, **(parse_canonical(event, text) if event else {})}
        ce = self.console.get(event) if event else None
        if ce is not None and ce.emit is not None:
            return self._format(event, ce.emit, fields, text)
        if event is not None and event in self.unsupported:
            return None
        return None if self.sim.line is None else self._format(event, self.sim.line, fields, text)

    def _format(self, event: str | None, template: str, fields: Mapping[str, Any],
                text: str) -> str:
        printed = dict(fields)
        if event in self.console:
            for group, table in self.console[event].values.items():  # canonical -> printed
                back = {canon: shown for shown, canon in reversed(list(table.items()))}
                if group in printed:
                    printed[group] = back.get(str(printed[group]), printed[group])
        return template.format_map(_Blank(text=text, **printed))


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class Match:
    """A console line read as ``event`` with canonical ``fields``."""

    event: str
    fields: dict[str, str] = field(default_factory=dict)

    def canonical(self) -> str:
        """The event in canonical form (what the figures read)."""
        return canonical_line(self.event, self.fields)


def canonical_line(event: str, fields: Mapping[str, str]) -> str:
    """``RESULT approved rc=00 stan=000012`` from an event and its fields."""
    spec = EVENTS[event]
    f = dict(fields)
    words = [spec.head]
    if spec.word:
        w = f.pop(spec.word, None)
        if event == "result" and w is None:
            w = "approved" if f.get("rc") == "00" else "declined"
        words.append(str(w or "unknown"))
    words += [f"{k}={f[k]}" for k in FIELDS if k in f and k != spec.word and f[k] != ""]
    return " ".join(words)


def parse_canonical(event: str | None, text: str) -> dict[str, str]:
    """Fields of a canonical line: ``key=value`` pairs (``reason`` runs to the end) and the
    word after the head of result / reversal."""
    fields: dict[str, str] = {}
    head, sep, reason = text.partition(" reason=")
    fields.update((k, v) for k, v in _KV.findall(head) if k in FIELDS)
    if sep:
        fields["reason"] = reason.strip()
    spec = EVENTS.get(event or "")
    if spec is not None and spec.word:
        at = text.find(spec.head)
        rest = text[at + len(spec.head):].split() if at >= 0 else []
        if rest and "=" not in rest[0]:
            fields[spec.word] = rest[0]
    return fields


_HEADS = sorted(((spec.head, ev) for ev, spec in EVENTS.items()), key=lambda h: -len(h[0]))


def canonical_event(text: str) -> str | None:
    """Which event a canonical text (without uptime / level) is, if any."""
    for head, ev in _HEADS:
        if text == head or text.startswith(head + " "):
            return ev
    return None


# --- loading ----------------------------------------------------------------------------------
def profile_path(name: str, base: str | Path | None = None) -> Path:
    """A profile file: ``name`` as a path (``.yaml``), else ``configs/profiles/<name>.yaml``
    under ``base`` / the cwd / the project."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    for root in ([Path(base)] if base else []) + [Path("configs/profiles"), PROFILES_DIR]:
        cand = root / f"{name}.yaml"
        if cand.is_file():
            return cand
    known = sorted(x.stem for x in PROFILES_DIR.glob("*.yaml") if x.stem != "template")
    raise ConfigError(f"unknown terminal profile {name!r}; known: {', '.join(known)} "
                      f"(or give a path to a .yaml file)")


def load_profile_file(path: str | Path) -> TerminalProfile:
    """Load and validate one profile file (``name`` defaults to the file's stem)."""
    from .config import read_yaml, validate_model

    data, tree = read_yaml(path)
    data.setdefault("name", Path(path).stem)
    return validate_model(TerminalProfile, data, str(path), tree)


@functools.cache
def load_profile(name: str) -> TerminalProfile:
    """A profile by name (or path), loaded once per process."""
    return load_profile_file(profile_path(name))


def shipped_profiles() -> list[str]:
    """Names of the profiles in the project's configs/profiles (the template excluded)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml") if p.stem != "template")


# --- figures a profile cannot supply ------------------------------------------------------------
def figure_gaps(profile: TerminalProfile, console: bool, ecr: bool) -> dict[str, str]:
    """Figures a terminal of ``profile`` cannot supply (with or without a ``console`` / ``ecr``
    port configured), and why: their NaN reason."""
    gaps: dict[str, str] = {}
    ready, result = (console and ev in profile.console for ev in ("ready", "result"))
    ecr = ecr and profile.ecr != "none"
    if not ready and not ecr and profile.ready_after_0810_ms is None:
        gaps["ready_s"] = (f"profile {profile.name} cannot report READY "
                           f"({profile.why_not('ready') if console else 'no console'}), no ECR "
                           "STATUS, no ready_after_0810_ms")
    if not result and not ecr:
        why = (f"profile {profile.name} cannot report the result "
               f"({profile.why_not('result') if console else 'no console'}) and there is no ECR")
        gaps["auth_to_result_s"] = gaps["card_to_result_s"] = why
    return gaps


def lab_gaps(snapshot: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """:func:`figure_gaps` of every terminal of a lab config snapshot (as stored with a run);
    a profile that no longer loads is skipped."""
    snap = snapshot or {}
    models, out = snap.get("models") or {}, {}
    for name, t in (snap.get("terminals") or {}).items():
        try:
            prof = load_profile(str((models.get(t.get("model")) or {}).get("profile", "vlab")))
        except ConfigError:
            continue
        gaps = figure_gaps(prof, bool(t.get("console")), bool(t.get("ecr")))
        if gaps:
            out[name] = gaps
    return out


# --- checking a captured console log ---------------------------------------------------------------
_CAPTURE_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z?\t")


SIGNON_PHASE = ("boot", "signon_start", "signon_ok", "ready")  # a power-up shows these
SALE_PHASE = ("card_prompt", "result")  # a transaction shows these
SALE_SIGNS = ("sale_start", "card_prompt", "card_read", "result")


@dataclass
class LogCheck:
    """What ``rig profile check`` reports: each line's event, and the events never seen."""

    profile: str
    lines: list[tuple[int, str, str | None, str | None]]  # (line no, text, event, canonical)
    seen: dict[str, int]
    missing: list[str]  # the log shows the phase, the profile has a pattern, no line matched
    not_seen: list[str]  # figure events only a failure case (or another phase) would show
    unsupported: dict[str, str]  # figure events the profile says it cannot report, and why

    @property
    def clean(self) -> bool:
        """Some line matched, and every event of the phases the log shows was seen."""
        return bool(self.seen) and not self.missing


def decode_log(data: bytes, encoding: str) -> list[str]:
    """A log file's lines: UTF-8 (a rig capture), else the profile's encoding; bad bytes are
    replaced, never fatal."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode(encoding, "replace")
    return text.splitlines()


def check_log(profile: TerminalProfile, lines: Iterable[str]) -> LogCheck:
    """Classify each line of a console log (a ``rig console --capture`` file: its stamp column
    is skipped; comment lines ``#`` too). A log that shows a power-up must show every sign-on
    event the profile has a pattern for (boot, sign-on start / ok, ready); one that shows a
    transaction, its card prompt and result; the others are listed as not seen."""
    rows: list[tuple[int, str, str | None, str | None]] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        if raw.startswith("#") or not raw.strip():
            continue
        text = _CAPTURE_STAMP.sub("", raw, count=1).strip()
        m = profile.match(text)
        rows.append((n, text, m.event if m else None, m.canonical() if m else None))
        if m:
            seen[m.event] = seen.get(m.event, 0) + 1
    need: list[str] = []
    if any(e in seen for e in SIGNON_PHASE) or not any(e in seen for e in SALE_SIGNS):
        need += SIGNON_PHASE
    if any(e in seen for e in SALE_SIGNS):
        need += SALE_PHASE
    missing = [e for e in need if e in profile.console and e not in seen]
    not_seen = [e for e in FIGURE_EVENTS
                if e in profile.console and e not in seen and e not in missing]
    return LogCheck(profile.name, rows, seen, missing, not_seen,
                    {e: profile.why_not(e) or "" for e in FIGURE_EVENTS if e not in profile.console})


__all__ = ["EVENTS", "FIELDS", "FIGURE_EVENTS", "ConsoleEvent", "Keypad", "LogCheck", "Match",
           "TerminalProfile", "canonical_event", "canonical_line", "check_log", "decode_log",
           "figure_gaps", "lab_gaps",
           "load_profile", "load_profile_file", "parse_canonical", "profile_path",
           "shipped_profiles"]
