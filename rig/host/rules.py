"""Response rules of the acquirer host: processing delay, response-code overrides, host
faults, and the checks of financial requests (MAC, card, expiry).

Overrides and faults are thread-safe so a test (or :mod:`rig.faults`) can change them while
the host serves.

Host faults (:class:`HostFaultSpec`, DESIGN §6) change how the host answers one class of
message of one terminal (or of every lab terminal; requests from a terminal id the lab does
not know are never faulted):

- ``delay`` adds ``ms`` to the processing delay; ``slow_signon`` the same for sign-on only;
- ``rc`` forces the response code: a sign-on / network reply carries it (it takes precedence
  over :meth:`ResponseRules.set_rc`), a financial request gets it as an override does
  (:mod:`rig.host.txn` step 4, before ``HostConfig.overrides``: 03 / A0 / 30 / 94 still come
  first); a reversal or settlement with a forced rc other than 00 is not processed;
- ``bad_mac``: financial replies carry a field 64 that does not verify under the MAK;
- ``garbage``: the host processes the request, then sends random bytes (as long as the real
  reply) that do not decode, in a valid length frame;
- ``no_response``: the host processes the request (state, ledger and balances move, so a
  terminal that does not reverse leaves a trace) and never sends the reply; the connection
  stays open, without the idle timeout, until the peer closes or sends again;
- ``close``: the host closes the connection right after reading the request, unprocessed.

Per request, for each action the first matching fault applies (a terminal's own before the
ones for every terminal, then in the order added). ``close``, ``no_response`` and ``garbage``
exclude each other and mask ``rc`` and ``bad_mac`` (and, but for ``garbage``, the delays).
A fault with ``count`` is spent by the requests it took effect on (a masked fault, or an
``rc`` a financial request never reached because of 03 / A0 / 30 / 94, is not spent).
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from datetime import date
from typing import Literal, get_args

from rig.cards.profiles import CardProfile
from rig.config import HostConfig, HostOverride
from rig.iso8583.dialects import Dialect
from rig.iso8583.keys import WorkingKeys

APPROVED = "00"
RC_INVALID_CARD = "14"
RC_EXPIRED = "54"
RC_INSUFFICIENT = "51"
RC_DUPLICATE = "94"
RC_MAC_ERROR = "A0"
RC_FORMAT_ERROR = "30"
RC_NOT_SUPPORTED = "40"
RC_NO_ORIGINAL = "25"
RC_BAD_AMOUNT = "13"
RC_INVALID_TXN = "12"


FaultAction = Literal["delay", "no_response", "rc", "bad_mac", "garbage", "close",
                      "slow_signon"]
AppliesTo = Literal["signon", "auth", "reversal", "settle", "all"]
MessageClass = Literal["signon", "auth", "reversal", "settle", "network"]
"""What a request is for fault matching: 0800 sign-on, 0100/0200/0220 (sale, pre-auth,
balance, void...), 0400, 0500, or another network message (echo, sign-off: only ``all``)."""

FAULT_ACTIONS: tuple[str, ...] = get_args(FaultAction)
APPLIES_TO: tuple[str, ...] = get_args(AppliesTo)
DISPOSITIONS: tuple[str, ...] = ("close", "no_response", "garbage")
"""Actions that replace the reply; at most one applies to a request."""
_FINANCIAL_CLASSES = frozenset({"auth", "reversal", "settle"})
_MS_ACTIONS = frozenset({"delay", "slow_signon"})


def valid_rc(rc: object) -> bool:
    return isinstance(rc, str) and len(rc) == 2 and rc.isascii() and rc.isalnum()


@dataclass(frozen=True)
class HostFaultSpec:
    """One host fault: ``action`` on the requests of ``terminal`` (None: every lab terminal)
    of class ``applies_to``, for the next ``count`` of them (None: until removed).

    ``rc`` (2 letters or digits) is required for, and only for, ``rc``; ``ms`` (>= 0) is only
    for ``delay`` and ``slow_signon``. ``slow_signon`` applies to ``signon`` (or ``all``,
    meaning sign-on); ``bad_mac`` to financial replies only, so not to ``signon``.
    """

    action: FaultAction
    terminal: str | None = None
    applies_to: AppliesTo = "all"
    rc: str | None = None
    ms: float = 0.0
    count: int | None = None

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"host fault action must be one of {', '.join(FAULT_ACTIONS)}; "
                             f"got {self.action!r}")
        if self.terminal is not None and (not isinstance(self.terminal, str)
                                          or not self.terminal):
            raise ValueError(f"host fault terminal must be a terminal name or None, "
                             f"got {self.terminal!r}")
        if self.applies_to not in APPLIES_TO:
            raise ValueError(f"host fault applies_to must be one of {', '.join(APPLIES_TO)}; "
                             f"got {self.applies_to!r}")
        if self.action == "rc":
            if self.rc is None:
                raise ValueError("host fault 'rc' needs rc (the response code to answer with)")
            if not valid_rc(self.rc):
                raise ValueError(f"host fault rc must be 2 letters or digits, got {self.rc!r}")
        elif self.rc is not None:
            raise ValueError(f"host fault {self.action!r} takes no rc (only action 'rc' does), "
                             f"got rc={self.rc!r}")
        ms = self.ms
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
            raise ValueError(f"host fault ms must be a finite number, got {ms!r}")
        if ms < 0:
            raise ValueError(f"host fault ms must be >= 0, got {ms}")
        if ms and self.action not in _MS_ACTIONS:
            raise ValueError(f"host fault {self.action!r} takes no ms (only 'delay' and "
                             f"'slow_signon' do), got ms={ms}")
        object.__setattr__(self, "ms", float(ms))
        count = self.count
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise ValueError(f"host fault count must be an integer >= 1 or None, got {count!r}")
        if self.action == "slow_signon" and self.applies_to not in ("signon", "all"):
            raise ValueError(f"host fault 'slow_signon' delays sign-on replies only; "
                             f"applies_to must be 'signon' or 'all', got {self.applies_to!r}")
        if self.action == "bad_mac" and self.applies_to == "signon":
            raise ValueError("host fault 'bad_mac' applies to financial replies (sign-on "
                             "replies carry no MAC); applies_to must not be 'signon'")

    def matches(self, terminal: str, message: MessageClass) -> bool:
        """Whether this fault applies to a request of class ``message`` from ``terminal``."""
        if self.terminal is not None and self.terminal != terminal:
            return False
        if self.action == "slow_signon" and message != "signon":
            return False
        if self.action == "bad_mac" and message not in _FINANCIAL_CLASSES:
            return False
        return self.applies_to in ("all", message)


@dataclass(frozen=True)
class FaultPlan:
    """The faults that take effect on one request (spent already), one per action."""

    applied: tuple[tuple[str, HostFaultSpec], ...] = ()

    def _first(self, action: str) -> tuple[str, HostFaultSpec] | None:
        return next((a for a in self.applied if a[1].action == action), None)

    @property
    def disposition(self) -> str | None:
        """``close``, ``no_response``, ``garbage`` or None (answer normally)."""
        return next((s.action for _, s in self.applied if s.action in DISPOSITIONS), None)

    @property
    def rc(self) -> str | None:
        hit = self._first("rc")
        return hit[1].rc if hit else None

    @property
    def rc_id(self) -> str | None:
        hit = self._first("rc")
        return hit[0] if hit else None

    @property
    def bad_mac(self) -> bool:
        return self._first("bad_mac") is not None

    @property
    def delay_ms(self) -> float:
        return sum(s.ms for _, s in self.applied if s.action in _MS_ACTIONS)

    def without(self, action: str) -> FaultPlan:
        return FaultPlan(tuple(a for a in self.applied if a[1].action != action))

    def event_data(self) -> dict[str, object]:
        """``fault`` (the actions, comma-separated, in :data:`FAULT_ACTIONS` order),
        ``fault_ids``, and ``fault_delay_ms`` when a delay applied; {} without faults."""
        if not self.applied:
            return {}
        data: dict[str, object] = {"fault": ",".join(s.action for _, s in self.applied),
                                   "fault_ids": [fid for fid, _ in self.applied]}
        if any(s.action in _MS_ACTIONS for _, s in self.applied):
            data["fault_delay_ms"] = self.delay_ms
        return data


NO_FAULTS = FaultPlan()


class _Active:
    __slots__ = ("remaining", "spec")

    def __init__(self, spec: HostFaultSpec) -> None:
        self.spec = spec
        self.remaining = spec.count  # None: unlimited; 0: spent


def mac_ok(dialect: Dialect, body: bytes, keys: WorkingKeys | None) -> bool:
    """Whether ``body`` carries a MAC that verifies under the session MAK (no keys: False)."""
    if keys is None:
        return False
    try:
        return dialect.verify_mac(body, keys.mak)
    except Exception:  # undecodable / wrong key length: not a valid MAC either
        return False


def expiry_passed(yymm: str, today: date) -> bool:
    """A YYMM expiry before this month (an invalid month counts as expired)."""
    if len(yymm) != 4 or not yymm.isdigit() or not 1 <= int(yymm[2:]) <= 12:
        return True
    return (2000 + int(yymm[:2]), int(yymm[2:])) < (today.year, today.month)


def card_rc(card: CardProfile | None, sent_expiry: str | None, today: date) -> str | None:
    """14 for a card the host does not know, 54 when the card (as sent, or as the host
    knows it) has expired, else None."""
    if card is None or not card.known_to_host:
        return RC_INVALID_CARD
    if card.expired(today) or (sent_expiry is not None and expiry_passed(sent_expiry, today)):
        return RC_EXPIRED
    return None


def override_matches(rule: HostOverride, terminal: str | None, card: str | None,
                     amount_minor: int | None) -> bool:
    """Every criterion the rule gives matches (a rule without criteria matches all)."""
    return ((rule.terminal is None or rule.terminal == terminal)
            and (rule.card is None or rule.card == card)
            and (rule.amount_minor is None or rule.amount_minor == amount_minor))


class ResponseRules:
    """Decides how the host answers a terminal (``terminal`` is a name from the lab config)."""

    def __init__(self, host: HostConfig) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._rc: dict[str | None, str] = {}
        self._delay_ms: dict[str | None, float] = {}
        self._overrides: list[HostOverride] = []
        self._faults: dict[str, _Active] = {}  # in the order added; spent ones until pruned
        self._fault_ids = itertools.count(1)

    def processing_delay_s(self, terminal: str | None) -> float:
        """Delay between request received and response sent (override, rule, else default)."""
        with self._lock:
            if terminal in self._delay_ms:
                return self._delay_ms[terminal] / 1000.0
        rule = self._host.rules.get(terminal) if terminal is not None else None
        ms = rule.processing_ms if rule is not None else self._host.processing_ms
        return ms / 1000.0

    def rc_for(self, terminal: str | None, default: str = APPROVED) -> str:
        """The response code to send: an override for this terminal, else ``default``."""
        with self._lock:
            return self._rc.get(terminal, default)

    def set_rc(self, terminal: str | None, rc: str | None) -> None:
        """Force response code ``rc`` for ``terminal`` (None clears the override)."""
        if rc is not None and (len(rc) != 2 or not rc.isascii() or not rc.isalnum()):
            raise ValueError(f"response code must be 2 alphanumeric characters, got {rc!r}")
        with self._lock:
            if rc is None:
                self._rc.pop(terminal, None)
            else:
                self._rc[terminal] = rc

    def set_delay_ms(self, terminal: str | None, ms: float | None) -> None:
        """Override the processing delay for ``terminal`` (None clears the override)."""
        if ms is not None and ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {ms}")
        with self._lock:
            if ms is None:
                self._delay_ms.pop(terminal, None)
            else:
                self._delay_ms[terminal] = ms

    def txn_rc(self, terminal: str | None, card: str | None,
               amount_minor: int | None) -> str | None:
        """The forced rc of the first matching override (runtime ones first, then
        ``HostConfig.overrides``), or None."""
        with self._lock:
            rules = [*self._overrides, *self._host.overrides]
        for rule in rules:
            if override_matches(rule, terminal, card, amount_minor):
                return rule.rc
        return None

    def add_override(self, rule: HostOverride) -> None:
        """Force a response code for financial requests while the host serves."""
        with self._lock:
            self._overrides.append(rule)

    # --- host faults ------------------------------------------------------------------------
    def add_fault(self, spec: HostFaultSpec) -> str:
        """Start injecting ``spec`` (effective from the next request read); returns its id."""
        if not isinstance(spec, HostFaultSpec):
            raise TypeError(f"add_fault takes a HostFaultSpec, got {type(spec).__name__}")
        with self._lock:
            for fid in [f for f, a in self._faults.items() if a.remaining == 0]:
                del self._faults[fid]  # spent: kept only so a request could give it back
            fid = f"hf{next(self._fault_ids)}"
            self._faults[fid] = _Active(spec)
        return fid

    def remove_fault(self, fault_id: str) -> None:
        """Stop injecting fault ``fault_id`` (no error if it is spent or unknown)."""
        with self._lock:
            self._faults.pop(fault_id, None)

    def faults(self) -> list[tuple[str, HostFaultSpec]]:
        """The faults still active (not spent), in the order added."""
        with self._lock:
            return [(fid, a.spec) for fid, a in self._faults.items() if a.remaining != 0]

    def take_faults(self, terminal: str | None, message: MessageClass) -> FaultPlan:
        """The faults that take effect on one request of class ``message`` from ``terminal``
        (None, an unknown terminal id: none), spending one of each ``count``."""
        if terminal is None:
            return NO_FAULTS
        with self._lock:
            if not self._faults:
                return NO_FAULTS
            live = [(fid, a) for fid, a in self._faults.items()
                    if a.remaining != 0 and a.spec.matches(terminal, message)]
            live.sort(key=lambda item: item[1].spec.terminal is None)  # stable: own first
            first: dict[str, tuple[str, _Active]] = {}
            for fid, a in live:
                first.setdefault(a.spec.action, (fid, a))
            disposition = next((a.spec.action for _, a in live
                                if a.spec.action in DISPOSITIONS), None)
            if disposition is not None:  # no valid reply: rc, bad_mac (and delays) masked
                keep = {disposition, *_MS_ACTIONS} if disposition == "garbage" else {disposition}
                first = {k: v for k, v in first.items() if k in keep}
            chosen = [first[a] for a in FAULT_ACTIONS if a in first]
            for _, a in chosen:
                if a.remaining is not None:
                    a.remaining -= 1
            return FaultPlan(tuple((fid, a.spec) for fid, a in chosen))

    def refund_fault(self, fault_id: str) -> None:
        """Give back one use of a fault that :meth:`take_faults` spent but that did not take
        effect (a financial request answered before its rc override applied)."""
        with self._lock:
            a = self._faults.get(fault_id)
            if a is not None and a.remaining is not None:
                a.remaining += 1

    def clear(self) -> None:
        """Drop every override and fault."""
        with self._lock:
            self._rc.clear()
            self._delay_ms.clear()
            self._overrides.clear()
            self._faults.clear()
