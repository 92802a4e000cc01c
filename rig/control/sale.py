"""A sale on a terminal: started as its profile's ``drive`` says (ECR ``SALE <minor>``, or the
robot pressing ``SALE``, the amount digit by digit and ``ENTER`` on its keypad) → the shared
robot presents the card → result; and the batch settlement (``SETTLE``). Procedures of a
:class:`~rig.control.cycles.TerminalCycle`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from ..analysis.sale_metrics import SaleResult, sale_figures
from ..core.errors import InfrastructureError, InstrumentError, TerminalError, TestError
from ..core.redact import redact_text
from ..drivers.profiles import get_profile
from ..faults.spec import ExpiredCard, InsertShallow, RobotAlarm, SwipeTooFast
from ..timeline.events import Event, EventKind
from .cycles import TerminalCycle
from .hardware import Hardware
from .signon import console_shows

log = logging.getLogger(__name__)
ENTRIES = ("chip", "swipe", "tap")
TXNS = {"sale": "SALE", "preauth": "PREAUTH", "balance": "BALANCE"}


def to_minor(amount: str | int | float | Decimal) -> int:
    """``"1.00"`` → 100 (2-decimal currencies such as CNY)."""
    if isinstance(amount, int):
        raise TestError(f"amount {amount!r}: give a decimal string like '1.00' (major units)")
    try:
        d = Decimal(str(amount))
    except InvalidOperation:
        raise TestError(f"amount {amount!r} is not a number") from None
    if d <= 0 or d != d.quantize(Decimal("0.01")):
        raise TestError(f"amount {amount!r}: must be positive with at most 2 decimals")
    return int(d * 100)


def run_sale(hw: Hardware, tc: TerminalCycle, run_id: int, *, amount: str | None, card: str,
             entry: str, txn: str = "sale", owner: str | None = None,
             swipe_speed_mm_s: float | None = None, tap_dwell_ms: float | None = None,
             timeout_s: float = 60.0) -> SaleResult:
    terminal = tc.terminal
    layout, robot = hw.cfg.robot, hw.robot
    if layout is None or robot is None:
        raise TestError("this lab has no card robot: add `robot:` and a robot instrument to the "
                        "lab config")
    stations = hw.cfg.terminals[terminal].stations
    if stations is None:
        raise TestError(f"{terminal}: no `stations:` in the lab config; the robot cannot reach it")
    if entry not in ENTRIES:
        raise TestError(f"entry {entry!r}: choose one of {', '.join(ENTRIES)}")
    if txn not in TXNS:
        raise TestError(f"txn {txn!r}: choose one of {', '.join(TXNS)}")
    slot = layout.slot_of(card)
    if slot is None:
        raise TestError(f"card {card!r} is not in the robot's magazine "
                        f"({', '.join(sorted(set(layout.magazine.slots.values())))})")
    minor = None if txn == "balance" else to_minor(amount)
    start, cancel = _starter(hw, terminal, robot, stations, txn, minor)
    speed = swipe_speed_mm_s or layout.swipe_speed_mm_s
    dwell = layout.tap_dwell_ms if tap_dwell_ms is None else tap_dwell_ms
    base = {"terminal": terminal, "card": card, "entry": entry, "amount_minor": minor, "txn": txn}

    poller = None if console_shows(hw, terminal, "result") else _ResultPoller(hw, terminal)
    cycle = tc.begin(run_id, "sale", owner)
    outcome: str | None = None
    error: str | None = None
    try:
        try:
            start()
        except TerminalError as e:
            outcome, error = "refused", str(e)
        if outcome is None and poller is not None:
            poller.start()
        if outcome is None and not console_shows(hw, terminal, "card_prompt"):
            tc.sleep(CARD_PROMPT_S)  # no prompt to wait for: give the terminal a moment
        elif outcome is None and tc.wait_event({EventKind.CARD_WAIT}, 10.0) is None:
            outcome, error = "failed", "terminal did not ask for a card within 10 s"
        if outcome is None:
            outcome, error = _present(hw, tc, robot, slot, stations, entry, speed, dwell,
                                      timeout_s, cancel)
    except BaseException as e:
        if poller is not None:
            poller.stop()
        cancel()
        taken = tc.take()
        if taken:
            tc.mark(taken[0], "aborted", {**base, "outcome": "aborted",
                                          "error": str(e) or type(e).__name__})
        raise
    if poller is not None:
        poller.stop()
    taken = tc.take()
    events = taken[2] if taken else []
    figs = sale_figures(events)
    if figs["outcome"] is not None and outcome in (None, "result"):
        outcome = figs["outcome"]
    result = SaleResult(**base, **{k: v for k, v in figs.items() if k != "outcome"},
                        outcome=outcome or "failed", cycle=cycle, error=error)
    tc.mark(cycle, "completed", result.as_dict())
    hw.store.add_sale(run_id, cycle, result.as_dict())
    return result


CARD_PROMPT_S = 0.2  # without a console card prompt: present the card this long after the start
RESULT_POLL_S = 0.05


class _ResultPoller:
    """A terminal whose console cannot show the result: ECR ``RESULT?`` polled in a thread
    until it answers; recorded as AUTH_RESULT from ``<T>.ecr`` (``via``: ecr RESULT?)."""

    def __init__(self, hw: Hardware, terminal: str) -> None:
        self.ecr = hw.ecrs.get(terminal)
        if self.ecr is None:
            raise TestError(f"{terminal}: its console cannot show the result and it has no ECR "
                            "port: the rig cannot see how the sale ended")
        self.hw, self.terminal = hw, terminal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"result-{terminal}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        assert self.ecr is not None
        while not self._stop.wait(RESULT_POLL_S):
            try:
                reply = self.ecr.command("RESULT?")
            except (TerminalError, InfrastructureError):
                continue  # busy, or no result yet
            self.hw.recorder.record(Event.now(EventKind.AUTH_RESULT, f"{self.terminal}.ecr",
                                              self.terminal, line=redact_text(reply),
                                              via="ecr RESULT?", poll_s=RESULT_POLL_S))
            return


def _starter(hw: Hardware, terminal: str, robot, stations, txn: str,
             minor: int | None) -> tuple[Callable[[], None], Callable[[], None]]:
    """(start, cancel) of a transaction as the terminal's profile drives it."""
    profile = get_profile(hw.cfg.models[hw.cfg.terminals[terminal].model].profile)
    if profile.drive == "keypad":
        keypad = profile.keypad
        if keypad is None or stations.keypad is None:
            raise TestError(f"{terminal}: profile {profile.name} drives sales on the keypad; "
                            "give the terminal stations.keypad in the lab config")
        if txn != "sale" or minor is None:
            raise TestError(f"{terminal}: only sales are started on the keypad, not {txn!r}")

        def press(*keys: str) -> None:
            if robot.holding():
                robot.press_keys(stations, keypad, keys)
                return
            with robot.session(terminal):
                robot.press_keys(stations, keypad, keys)

        def cancel_keys() -> None:
            try:
                press("CANCEL")
            except (TestError, InfrastructureError) as e:
                log.warning("%s: CANCEL key failed: %s", terminal, e)

        return (lambda: press("SALE", *str(minor), "ENTER")), cancel_keys
    if profile.drive == "none":
        raise TestError(f"{terminal}: profile {profile.name} says the rig cannot start a sale "
                        "on this model (drive: none)")
    ecr = hw.ecrs.get(terminal)
    if ecr is None:
        raise TestError(f"{terminal}: no ECR port configured; a sale is started over ECR")
    cmd = TXNS[txn] if minor is None else f"{TXNS[txn]} {minor}"

    def start() -> None:
        ecr.command(cmd)

    return start, lambda: _cancel(ecr)


def press_keys(hw: Hardware, terminal: str, keys: list[str]) -> dict[str, object]:
    """The robot presses ``keys`` on ``terminal``'s keypad (``rig keypad T1 SALE 1 0 0 ENTER``)."""
    robot = hw.robot
    if robot is None:
        raise TestError("this lab has no card robot (no `robot:` in the lab config)")
    stations = hw.cfg.terminals[terminal].stations
    profile = get_profile(hw.cfg.models[hw.cfg.terminals[terminal].model].profile)
    if profile.keypad is None or stations is None or stations.keypad is None:
        raise TestError(f"{terminal}: needs a keypad map in its profile ({profile.name}) and "
                        "stations.keypad in the lab config")
    with robot.session(terminal):
        stamp = robot.press_keys(stations, profile.keypad, keys)
    return {"terminal": terminal, "keys": keys, "first_press_mono_ns": stamp.mono_ns}


def _robot_faults(hw: Hardware, terminal: str, slot: int, stations, speed: float):
    """Apply the terminal's active robot faults to how the card is presented: another card,
    a shallow insert, a too-fast swipe; returns (slot, stations, speed, alarm_after_ms)."""
    layout = hw.cfg.robot
    alarm_ms = None
    for f in (hw.injector.robot_faults(terminal) if hw.injector else ()):
        if isinstance(f, ExpiredCard):
            swapped = layout.slot_of(f.card) if layout else None
            if swapped is None:
                raise TestError(f"ExpiredCard: card {f.card!r} is not in the robot's magazine")
            slot = swapped
        elif isinstance(f, InsertShallow):
            chip = stations.chip
            stations = stations.model_copy(update={"chip": chip.model_copy(
                update={"z": chip.z + f.mm})})
        elif isinstance(f, SwipeTooFast):
            speed = f.mm_s
        elif isinstance(f, RobotAlarm):
            alarm_ms = f.after_ms
    return slot, stations, speed, alarm_ms


MAX_PRESENTS = 5  # an operator presents the card again when asked, this often at most


def _present(hw: Hardware, tc: TerminalCycle, robot, slot: int, stations, entry: str,
             speed: float, dwell: float, timeout_s: float,
             cancel: Callable[[], None]) -> tuple[str, str | None]:
    """Robot part of a sale; returns (outcome, error) — outcome "result" when the terminal
    showed a RESULT line (the figures then say approved/declined/failed). When the terminal
    asks for the card again ("insert again") the robot presents it again; when it falls back
    from the chip to the magstripe, the robot swipes the card."""
    terminal = tc.terminal
    with robot.session(terminal):
        slot, stations, speed, alarm_ms = _robot_faults(hw, terminal, slot, stations, speed)
        robot.pick(slot)
        timer = None
        inserted = False
        fails: list[str] = []
        try:
            if alarm_ms is not None:
                timer = threading.Timer(alarm_ms / 1000.0, robot.interrupt)
                timer.start()
            for _ in range(MAX_PRESENTS):
                try:
                    stamp = _present_once(robot, entry, stations, speed, dwell)
                    inserted = entry == "chip"
                except InstrumentError as e:
                    if alarm_ms is None:
                        raise
                    _recover_robot(robot)
                    cancel()
                    tc.wait_event({EventKind.AUTH_RESULT}, 5.0)
                    return "robot_alarm", str(e)
                # the driver records CARD_PRESENTED (for the session's terminal) with this stamp
                ev = tc.wait_event({EventKind.AUTH_RESULT, EventKind.CARD_FAIL},
                                     timeout_s, after_ns=stamp.mono_ns - 1)
                if ev is None or ev.kind == EventKind.AUTH_RESULT:
                    break
                fails.append(str(ev.data.get("line", "")).split("reason=", 1)[-1])
                ask = tc.wait_event({EventKind.CARD_RETRY, EventKind.CARD_FALLBACK,
                                              EventKind.AUTH_RESULT}, 2.0, after_ns=ev.mono_ns)
                if ask is None or ask.kind == EventKind.AUTH_RESULT:
                    ev = ask or ev
                    break
                if inserted:
                    robot.withdraw(stations)
                    inserted = False
                if ask.kind == EventKind.CARD_FALLBACK:
                    entry = "swipe"
        finally:
            if timer is not None:
                timer.cancel()
            if inserted:
                robot.withdraw(stations)
            robot.return_card(slot)
    if ev is None:
        cancel()
        return "failed", f"no result within {timeout_s:.0f} s"
    if ev.kind == EventKind.CARD_FAIL:
        reason = " → ".join(dict.fromkeys(fails)) or str(ev.data.get("line", "")).split(
            "reason=", 1)[-1]  # every distinct reason, in order (chip, then the fallback)
        cancel()
        tc.wait_event({EventKind.AUTH_RESULT}, 5.0)
        return "read_failed", reason
    return "result", None


def _present_once(robot, entry: str, stations, speed: float, dwell: float):
    if entry == "chip":
        return robot.insert(stations)
    if entry == "swipe":
        return robot.swipe(stations, speed)
    return robot.tap(stations, dwell)


def _recover_robot(robot) -> None:
    """After an injected alarm: clear the lock so the card can go back to its slot."""
    try:
        robot.unlock()
    except InfrastructureError as e:
        log.warning("%s: could not clear the alarm: %s", robot.name, e)


def _cancel(ecr) -> None:
    try:
        ecr.command("CANCEL")
    except (TerminalError, InfrastructureError) as e:
        log.warning("%s: CANCEL failed: %s", ecr.terminal, e)


def run_settle(hw: Hardware, tc: TerminalCycle, run_id: int, timeout_s: float = 30.0,
               owner: str | None = None) -> dict[str, object]:
    """ECR ``SETTLE``: the terminal sends its batch totals (0500); the host compares them with
    its own. Returns outcome, rc, ``settle`` (balanced / unbalanced), stan."""
    from ..analysis.sale_metrics import line_fields

    terminal = tc.terminal
    ecr = hw.ecrs.get(terminal)
    if ecr is None:
        raise TestError(f"{terminal}: no ECR port configured; settlement is started over ECR")
    cycle = tc.begin(run_id, "settle", owner)
    try:
        ecr.command("SETTLE")
        ev = tc.wait_event({EventKind.AUTH_RESULT}, timeout_s)
    except BaseException as e:
        taken = tc.take()
        if taken:
            tc.mark(taken[0], "aborted", {"outcome": "aborted", "error": str(e) or type(e).__name__})
        raise
    fields = line_fields(ev)
    line = str(ev.data.get("line", "")) if ev else ""
    outcome = line.split("RESULT ", 1)[1].split()[0] if "RESULT " in line else "failed"
    result: dict[str, object] = {"terminal": terminal, "outcome": outcome, "rc": fields.get("rc"),
                                 "settle": fields.get("settle"), "stan": fields.get("stan"),
                                 "error": None if ev else f"no result within {timeout_s:.0f} s"}
    tc.take()
    tc.mark(cycle, "completed", result)
    return result
