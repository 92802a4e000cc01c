"""The virtual lab's physical card world: magazine, gripper, chip slots, swipe paths, NFC zones.

It watches the GRBL sim (``on_segment`` when a motion segment starts, ``on_gripper`` when M8 /
M9 executes) and turns what the robot really does into card events for the right terminal at
the moment it physically happens: a card arriving at a chip station (within
``sim.insert_tolerance_mm``) is inserted and removed when the next segment carries it away; a
segment from ``swipe_start`` to ``swipe_end`` (either direction) swipes it at length / duration;
a card arriving at ``nfc`` is in the field at once (``card_in_field``: journal only, the
terminal cannot read it yet) and tapped once it stayed ``sim.tap_dwell_min_ms`` (real time,
like the robot). A card left at a chip station's x/y but short of its depth by more than
``sim.insert_tolerance_mm`` and at most ``sim.shallow_insert_max_mm`` for
``sim.shallow_insert_dwell_ms`` (real time) is a shallow insert (``card_shallow``, with
``short_mm``): not in the slot, but the terminal notices a card that is not seated. Events are scheduled on the loop at the segment's end (or the dwell's end), journaled
with that time (``clock: "sim"``) and handed to the terminal's handler.

Keypads: a terminal with ``stations.keypad`` and a profile keypad has its keys at the keypad
origin plus each key's (x, y) offset, the origin's z being the top of the keys. A segment that
ends over a key (within :data:`KEY_RADIUS_MM`) between :data:`KEY_MIN_TRAVEL_MM` and
:data:`KEY_MAX_TRAVEL_MM` below its top presses it; the press registers once the probe stayed
the profile's ``min_press_ms`` (real time), journaled as ``key_pressed`` and handed to the
terminal's key handler. A probe that leaves earlier pressed nothing.

Cards are physical: each is in exactly one place (a magazine slot, the gripper, a terminal's
chip slot, or dropped where the gripper let go of it), see :meth:`CardWorld.where`.

Card faults (:meth:`CardWorld.set_fault`, switched at run time per profile name, on every
physical card of that profile): ``mute`` (no ATR, the chip answers nothing), ``corrupt_record``
(READ RECORD after GET PROCESSING OPTIONS answers garbage, so the kernel fails) and ``bad_lrc``
(the magstripe's LRC is wrong: every swipe read fails).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..cards.emv import EmvCard
from ..cards.profiles import CARDS_DIR, CardProfile, load_cards
from ..config import Point, RobotLayout, SimConfig, Stations
from ..core.clock import ClockSource, Stamp
from ..core.errors import ConfigError
from .journal import TruthJournal
from .wire import MAPPER

log = logging.getLogger(__name__)

CardEventKind = Literal["inserted", "removed", "swiped", "in_field", "tapped", "shallow"]
CARD_FAULTS = ("mute", "corrupt_record", "bad_lrc")
# what a corrupt record reads as: a record template whose length runs past the data
CORRUPT_RECORD = bytes.fromhex("7081FF5A0862") + b"\x90\x00"
SW_OK = b"\x90\x00"
Vec = Sequence[float]


class Segment(Protocol):
    """What the world needs of ``rig.sim.grbl.Segment``."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    t_start_ns: int
    t_end_ns: int


class Card:
    """One physical card: its profile and its chip (the ATC survives between reads).

    Read the chip through :meth:`atr` / :meth:`transmit` (they apply :attr:`fault`)."""

    def __init__(self, slot: int, profile: CardProfile) -> None:
        self.slot = slot  # its home in the magazine
        self.profile = profile
        self.chip = EmvCard(profile)
        self.fault: str | None = None  # one of CARD_FAULTS, switched on by the lab
        self._gpo_done = False

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def is_chip_card(self) -> bool:
        """Service code 2xx / 6xx: the magstripe says "use the chip" (fallback rules apply)."""
        return self.profile.service_code[0] in "26"

    def reset(self) -> None:
        """Power the chip up again (cold reset)."""
        self.chip.reset()
        self._gpo_done = False

    def atr(self) -> bytes | None:
        """The answer to reset, or None (a mute chip, by profile or by fault)."""
        return None if self.fault == "mute" else self.chip.atr()

    def transmit(self, apdu: bytes) -> bytes:
        """One APDU to the chip, through the card's fault."""
        if self.fault == "mute":
            return b""
        rsp = self.chip.transmit(apdu)
        if self.fault == "corrupt_record" and len(apdu) >= 2:
            ins = apdu[1]
            if ins == 0xA4:
                self._gpo_done = False
            elif ins == 0xA8:
                self._gpo_done = rsp[-2:] == SW_OK
            elif ins == 0xB2 and self._gpo_done and rsp[-2:] == SW_OK:
                return CORRUPT_RECORD
        return rsp

    def __repr__(self) -> str:
        return f"Card(slot {self.slot}, {self.profile!r})"


@dataclass(frozen=True, slots=True)
class CardEvent:
    """Something physically happened to ``card`` at ``stamp`` (monotonic + wall ns)."""

    kind: CardEventKind
    card: Card
    stamp: Stamp
    speed_mm_s: float | None = None  # swipes only


Handler = Callable[[CardEvent], None]
KeyHandler = Callable[[str, Stamp], None]
KEY_RADIUS_MM = 3.0  # how far off a key's centre a press still lands on it
KEY_MIN_TRAVEL_MM = 0.3  # a key registers once pressed this far below its top
KEY_MAX_TRAVEL_MM = 8.0  # deeper than this the probe is not on a key


@dataclass(frozen=True, slots=True)
class KeypadPlace:
    """Where one terminal's keys are (robot coordinates, key tops) and how long a press takes."""

    keys: dict[str, tuple[float, float, float]]
    min_press_ms: float


def keypad_places(stations: Mapping[str, Stations],
                  profiles: Mapping[str, Any]) -> dict[str, KeypadPlace]:
    """Key positions of every terminal with ``stations.keypad`` and a profile keypad
    (``profiles``: terminal -> :class:`rig.terminal_profiles.TerminalProfile`)."""
    out: dict[str, KeypadPlace] = {}
    for t, st in stations.items():
        kp = getattr(profiles.get(t), "keypad", None)
        if st.keypad is None or kp is None:
            continue
        o = st.keypad
        out[t] = KeypadPlace({k: (o.x + v.x, o.y + v.y, o.z) for k, v in kp.keys.items()},
                             kp.min_press_ms)
    return out


def resolve_cards_dir(cards_dir: str) -> Path:
    """``cards_dir`` relative to the cwd, else to the repository, else the repo's configs/cards."""
    p = Path(cards_dir)
    for cand in (p, CARDS_DIR.parents[1] / p, CARDS_DIR):
        if cand.is_dir():
            return cand
    raise ConfigError(f"robot.cards_dir: {cards_dir!r} is not a directory")


def _dist(a: Vec, b: Vec) -> float:
    return math.dist(tuple(a), tuple(b))


def _xyz(p: Point) -> tuple[float, float, float]:
    return (p.x, p.y, p.z)


def _stamp(mono_ns: int) -> Stamp:
    return Stamp(mono_ns, mono_ns + MAPPER.offset_ns())


class CardWorld:
    """Cards, magazine and stations of one lab; its hooks run in the lab's event loop."""

    def __init__(self, layout: RobotLayout, sim: SimConfig, stations: dict[str, Stations],
                 journal: TruthJournal, cards: dict[str, CardProfile] | None = None,
                 keypads: dict[str, KeypadPlace] | None = None) -> None:
        self.layout = layout
        self.keypads = dict(keypads or {})
        self._key_handlers: dict[str, KeyHandler] = {}
        self.sim = sim
        self.stations = {name: {k: _xyz(getattr(st, k)) for k in ("chip", "swipe_start", "swipe_end", "nfc")}
                         for name, st in stations.items()}
        self.journal = journal
        profiles = cards if cards is not None else load_cards(resolve_cards_dir(layout.cards_dir))
        self.cards: dict[int, Card] = {}
        for slot, name in sorted(layout.magazine.slots.items()):
            if name not in profiles:
                raise ConfigError(f"robot.magazine.slots.{slot}: no card profile {name!r}")
            self.cards[slot] = Card(slot, profiles[name])
        self._slots: dict[int, Card | None] = dict(self.cards)
        self._chip: dict[str, Card] = {}  # terminal -> card in its chip slot
        self.held: Card | None = None  # in the gripper (possibly also in a chip slot)
        self._handlers: dict[str, Handler] = {}
        self._pending: list[tuple[int, asyncio.TimerHandle, Callable[[], None]]] = []
        self._tol = sim.insert_tolerance_mm
        self.faults: dict[str, str] = {}  # card profile name -> fault

    # --- card faults --------------------------------------------------------------------------
    def profiles(self) -> list[str]:
        """Names of the card profiles in the magazine."""
        return sorted({c.name for c in self.cards.values()})

    def set_fault(self, profile: str, fault: str | None) -> tuple[list[int], str | None]:
        """Switch ``fault`` (None: clear) on every card of ``profile``; (their slots, the fault
        before). Journaled as ``card_fault``. Raises ValueError for an unknown profile or fault."""
        if profile not in self.profiles():
            raise ValueError(f"no card of profile {profile!r} in the magazine "
                             f"(it holds {', '.join(self.profiles())})")
        if fault is not None and fault not in CARD_FAULTS:
            raise ValueError(f"unknown card fault {fault!r} (known: {', '.join(CARD_FAULTS)}, null)")
        was = self.faults.pop(profile, None)
        if fault is not None:
            self.faults[profile] = fault
        slots = [s for s, c in sorted(self.cards.items()) if c.name == profile]
        for s in slots:
            self.cards[s].fault = fault
        self.journal.record(None, "card_fault", card=profile, fault=fault, was=was, slots=slots)
        log.info("card fault on %s (slots %s): %s -> %s", profile, slots, was, fault)
        return slots, was

    # --- queries ------------------------------------------------------------------------------
    def attach(self, terminal: str, handler: Handler) -> None:
        """Deliver ``terminal``'s card events to ``handler`` (called in the loop)."""
        self._handlers[terminal] = handler

    def attach_keys(self, terminal: str, handler: KeyHandler) -> None:
        """Deliver ``terminal``'s key presses to ``handler(key, stamp)`` (called in the loop)."""
        self._key_handlers[terminal] = handler

    def inserted(self, terminal: str) -> Card | None:
        """The card in ``terminal``'s chip slot now."""
        return self._chip.get(terminal)

    def where(self, card: Card) -> str:
        """``chip T1``, ``gripper``, ``slot 3`` or ``dropped``: the one place the card is."""
        for t, c in self._chip.items():
            if c is card:
                return f"chip {t}"
        if self.held is card:
            return "gripper"
        for s, c in self._slots.items():
            if c is card:
                return f"slot {s}"
        return "dropped"

    def _slot_at(self, pos: Vec) -> int | None:
        return next((s for s in self.cards if _dist(pos, _xyz(self.layout.slot_point(s))) <= self._tol), None)

    def _station_at(self, pos: Vec, kind: str) -> str | None:
        return next((t for t, st in self.stations.items() if _dist(pos, st[kind]) <= self._tol), None)

    def _shallow_at(self, pos: Vec) -> tuple[str, float] | None:
        """(terminal, mm short) when ``pos`` is over a chip station but not deep enough."""
        for t, st in self.stations.items():
            x, y, z = st["chip"]
            short = pos[2] - z
            if (math.hypot(pos[0] - x, pos[1] - y) <= self._tol
                    and self._tol < short <= self.sim.shallow_insert_max_mm):
                return t, short
        return None

    # --- GRBL hooks ---------------------------------------------------------------------------
    def on_gripper(self, closed: bool, pos: Vec) -> None:
        """M8 (close) grips the card under it; M9 (open) lets go of the held one."""
        if closed:
            if self.held is not None:
                return
            slot = self._slot_at(pos)
            if slot is not None and (card := self._slots.get(slot)) is not None:
                self._slots[slot] = None
                self.held = card
                self.journal.record(None, "card_picked", clock=str(ClockSource.SIM), slot=slot, card=card.name)
            elif (t := self._station_at(pos, "chip")) is not None and t in self._chip:
                self.held = self._chip[t]  # gripping the card left in the chip slot
            return
        card, self.held = self.held, None
        if card is None or card in self._chip.values():
            return  # nothing held, or the card stays in the chip slot
        self._cancel_pending()
        slot = self._slot_at(pos)
        if slot is not None and self._slots[slot] is None:
            self._slots[slot] = card
            self.journal.record(None, "card_returned", clock=str(ClockSource.SIM), slot=slot, card=card.name)
        else:
            log.warning("card %s dropped at %s (not over an empty slot)", card.name, tuple(pos))
            self.journal.record(None, "card_dropped", clock=str(ClockSource.SIM), card=card.name,
                                pos=[round(v, 3) for v in pos])

    def on_segment(self, seg: Segment) -> None:
        """A motion segment starts (or a stop truncated the previous one)."""
        pending, self._pending = self._pending, []
        for due, handle, fire in pending:
            handle.cancel()
            if due <= seg.t_start_ns + 1_000_000:  # the previous segment completed: it happened
                fire()
        if (press := self._key_at(seg.end)) is not None:
            t, key, min_ms = press
            due = seg.t_end_ns + int(min_ms * 1e6)
            self._schedule(due, lambda t=t, key=key, due=due: self._press(t, key, due))
        card = self.held
        if card is None:
            return
        for t, c in list(self._chip.items()):
            if c is card and _dist(seg.end, self.stations[t]["chip"]) > self._tol:
                del self._chip[t]
                self._emit(t, "removed", card, seg.t_start_ns)
        length = _dist(seg.start, seg.end)
        if (t := self._station_at(seg.end, "chip")) is not None and t not in self._chip:
            self._schedule(seg.t_end_ns, lambda t=t, due=seg.t_end_ns: self._insert(t, card, due))
        elif (sh := self._shallow_at(seg.end)) is not None and sh[0] not in self._chip:
            t, short = sh
            due = seg.t_end_ns + int(self.sim.shallow_insert_dwell_ms * 1e6)
            self._schedule(due, lambda t=t, due=due, short=short: self._shallow(t, card, due, short))
        elif length > self._tol and (t := self._swipe_of(seg)) is not None and seg.t_end_ns > seg.t_start_ns:
            speed = length / ((seg.t_end_ns - seg.t_start_ns) / 1e9)
            self._schedule(seg.t_end_ns,
                           lambda t=t, due=seg.t_end_ns: self._emit(t, "swiped", card, due, speed))
        elif (t := self._station_at(seg.end, "nfc")) is not None:
            due = seg.t_end_ns + int(self.sim.tap_dwell_min_ms * 1e6)
            self._schedule(seg.t_end_ns, lambda t=t, at=seg.t_end_ns: self._emit(t, "in_field", card, at))
            self._schedule(due, lambda t=t: self._emit(t, "tapped", card, due))

    def _swipe_of(self, seg: Segment) -> str | None:
        for t, st in self.stations.items():
            a, b = st["swipe_start"], st["swipe_end"]
            if ((_dist(seg.start, a) <= self._tol and _dist(seg.end, b) <= self._tol)
                    or (_dist(seg.start, b) <= self._tol and _dist(seg.end, a) <= self._tol)):
                return t
        return None

    def _key_at(self, pos: Vec) -> tuple[str, str, float] | None:
        """(terminal, key, min press ms) when ``pos`` presses a key down."""
        for t, kp in self.keypads.items():
            for key, (x, y, top) in kp.keys.items():
                travel = top - pos[2]
                if (math.hypot(pos[0] - x, pos[1] - y) <= KEY_RADIUS_MM
                        and KEY_MIN_TRAVEL_MM <= travel <= KEY_MAX_TRAVEL_MM):
                    return t, key, kp.min_press_ms
        return None

    def _press(self, terminal: str, key: str, when_ns: int) -> None:
        stamp = _stamp(max(when_ns, time.monotonic_ns()))
        self.journal.record(terminal, "key_pressed", stamp, clock=str(ClockSource.SIM), key=key,
                            planned_lag_us=(stamp.mono_ns - when_ns) // 1000)
        handler = self._key_handlers.get(terminal)
        if handler is not None:
            try:
                handler(key, stamp)
            except Exception:
                log.exception("%s: key handler failed", terminal)

    # --- events -------------------------------------------------------------------------------
    def _insert(self, terminal: str, card: Card, when_ns: int) -> None:
        if self.held is not card or terminal in self._chip:
            return
        self._chip[terminal] = card
        self._emit(terminal, "inserted", card, when_ns)

    def _shallow(self, terminal: str, card: Card, when_ns: int, short_mm: float) -> None:
        if self.held is not card or terminal in self._chip:
            return
        self._emit(terminal, "shallow", card, when_ns, short_mm=round(short_mm, 2))

    def _schedule(self, due_ns: int, fire: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def run() -> None:
            self._pending = [p for p in self._pending if p[2] is not run]
            fire()

        handle = loop.call_at(loop.time() + (due_ns - time.monotonic_ns()) / 1e9, run)
        self._pending.append((due_ns, handle, run))

    def _cancel_pending(self) -> None:
        for _, handle, _ in self._pending:
            handle.cancel()
        self._pending = []

    def _emit(self, terminal: str, kind: CardEventKind, card: Card, when_ns: int,
              speed: float | None = None, **data: Any) -> None:
        # Stamped when the event really fires in the lab's loop, not when the motion plan said it
        # would: the robot's sync `ok` and the terminal's card read follow the loop, so the
        # planned time would be early by the loop's lag (measured up to ~2 ms on 2 busy cores).
        stamp = _stamp(max(when_ns, time.monotonic_ns()))
        extra: dict[str, Any] = {"planned_lag_us": (stamp.mono_ns - when_ns) // 1000}
        if speed is not None:
            extra["speed_mm_s"] = round(speed, 1)
        extra.update(data)
        self.journal.record(terminal, f"card_{kind}", stamp, clock=str(ClockSource.SIM), card=card.name,
                            **extra)
        handler = self._handlers.get(terminal)
        if handler is not None:
            try:
                handler(CardEvent(kind, card, stamp, speed))
            except Exception:
                log.exception("%s: card event handler failed", terminal)
