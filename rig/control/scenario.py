"""Running a scenario (:mod:`rig.faults.scenarios`) on a terminal and judging it.

Each procedure drives the terminal through the case, watching every event of the terminal;
the observations are compared with the scenario's expectation, check by check. The verdict
is ``pass`` when every given check holds, ``fail`` otherwise (``error`` when the case could not
be run at all, e.g. kernel faults without CAP_NET_ADMIN), with what was observed.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.errors import RigError, TerminalError, TestError
from ..faults.scenarios import Scenario
from ..faults.schedule import is_giveup
from ..timeline.events import EventKind
from .recovery import Watch, run_recovery, settle, signon_attempts
from .signon import wait_ready

# Procedures take the session (rig.control.session.Session) duck-typed: it calls them.
Rig = Any

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    scenario: str
    terminal: str
    verdict: str  # pass | fail | error
    expected: dict[str, Any]
    observed: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)
    recover_s: float | None = None
    duration_s: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_terminal(rig: Rig, sc: Scenario, terminal: str) -> str:
    """The terminal to run ``sc`` on: ``terminal``, unless the case needs an operator login
    and ``terminal`` logs in by itself; then the lab's first terminal that waits for one."""
    if sc.manual_login and rig.cfg.terminals[terminal].auto_login:
        manual = [t for t, c in rig.cfg.terminals.items() if not c.auto_login]
        if not manual:
            raise TestError(f"{sc.name} needs a terminal with auto_login: false; this lab has none")
        return manual[0]
    return terminal


def run_scenario(rig: Rig, sc: Scenario, terminal: str) -> Verdict:
    rig.cycle(terminal)
    t0 = time.monotonic()
    watch = Watch(rig, terminal)
    expected = sc.expect.model_dump(exclude_none=True, exclude_defaults=True)
    try:
        console_patterns(sc)  # a bad regex fails now, not after the case ran
        if "kernel" in sc.needs:
            _check_kernel(rig)
        observed = PROCEDURES[sc.procedure](rig, sc, terminal, watch)
    except (RigError, OSError) as e:
        log.warning("scenario %s on %s could not run: %s", sc.name, terminal, e)
        return Verdict(sc.name, terminal, "error", expected, {}, error=str(e),
                       duration_s=time.monotonic() - t0)
    finally:
        watch.close()
    console = [str(e.data.get("line", "")) for e in watch.events
               if e.source.endswith(".console")]
    observed["console_lines"] = len(console)
    checks = judge(sc, observed, console)
    ok = all(c["ok"] for c in checks)
    return Verdict(sc.name, terminal, "pass" if ok else "fail", expected,
                   {k: v for k, v in observed.items() if not k.startswith("_")}, checks,
                   recover_s=observed.get("recover_s"), duration_s=round(time.monotonic() - t0, 3))


def _check_kernel(rig: Rig) -> None:
    from ..faults.kernel import probe

    caps = probe()
    if not (caps.nft and caps.net_admin):
        raise TestError(f"needs kernel faults: {caps.reason}")


def console_patterns(sc: Scenario) -> list[re.Pattern[str]]:
    """The scenario's ``expect.console`` regexes, compiled; TestError names one that is not."""
    out = []
    for rx in sc.expect.console:
        try:
            out.append(re.compile(rx))
        except (re.error, OverflowError, RecursionError) as e:
            raise TestError(f"scenario {sc.name}: expect.console {rx!r} is not a regular "
                            f"expression: {e}") from None
    return out


def judge(sc: Scenario, obs: dict[str, Any], console: list[str]) -> list[dict[str, Any]]:
    """One check per expectation given: what was expected, what was observed, ok or not."""
    e = sc.expect
    checks: list[dict[str, Any]] = []

    def check(what: str, want: Any, got: Any, ok: bool | None = None) -> None:
        checks.append({"check": what, "expected": want, "observed": got,
                       "ok": bool(want == got if ok is None else ok)})

    for name in ("outcome", "rc", "signed_on", "signon_sent", "reversal", "signon_again",
                 "login_refused", "recovers"):
        want = getattr(e, name)
        if want is not None:
            check(name, want, obs.get(name))
    if e.attempts_min is not None:
        check("attempts_min", e.attempts_min, obs.get("attempts"),
              (obs.get("attempts") or 0) >= e.attempts_min)
    if e.recover_within_s is not None:
        r = obs.get("recover_s")
        check("recover_within_s", e.recover_within_s, r, r is not None and r <= e.recover_within_s)
    for rx in console_patterns(sc):
        hit = next((line for line in console if rx.search(line)), None)
        check(f"console ~ {rx.pattern}", True, hit, hit is not None)
    return checks


# --- procedures -----------------------------------------------------------------------------------

def _held(watch: Watch) -> tuple[int | None, int | None]:
    ons = [e.mono_ns for e in watch.events if e.kind == EventKind.FAULT_ON]
    offs = [e.mono_ns for e in watch.events if e.kind == EventKind.FAULT_OFF]
    return (min(ons) if ons else None), (max(offs) if offs else None)


def _between(watch: Watch, kind: EventKind, a: int | None, b: int | None) -> bool:
    if a is None:
        return False
    return any(e.kind == kind and e.mono_ns >= a and (b is None or e.mono_ns <= b)
               for e in watch.events)


def _signon(rig: Rig, sc: Scenario, terminal: str, watch: Watch) -> dict[str, Any]:
    rec = run_recovery(rig, terminal, sc.fault_objects(), during="signon",
                       timeout_s=sc.timeout_s, watch=watch)
    on, off = _held(watch)
    return {"signed_on": _between(watch, EventKind.READY, on, off),
            "signon_sent": _between(watch, EventKind.SIGNON_REQ, on, off),
            "attempts": signon_attempts(watch.events), "recovers": rec.recovered,
            "recover_s": rec.recover_s, "remedy": rec.remedy, "fault": rec.fault,
            "fault_held_s": rec.fault_held_s, "error": rec.error}


def _sale(rig: Rig, sc: Scenario, terminal: str, watch: Watch) -> dict[str, Any]:
    faults = sc.fault_objects()
    sale = sc.sale.model_dump()
    if not faults:  # a plain sale (insufficient funds...): no fault to recover from
        rig.ensure_ready(terminal, timeout_s=sc.timeout_s)
        r = rig.sale(terminal, **sale)
        return {"outcome": r.outcome, "rc": r.rc, "error": r.error,
                "reversal": any(e.kind == EventKind.REVERSAL_REQ for e in watch.events)}
    rec = run_recovery(rig, terminal, faults, during="sale", timeout_s=sc.timeout_s,
                       watch=watch, **sale)
    result = next((e for e in watch.events if e.kind == EventKind.AUTH_RESULT), None)
    after = result.mono_ns if result else 0
    return {"outcome": rec.first_outcome, "rc": rec.first_rc,
            "reversal": any(e.kind == EventKind.REVERSAL_REQ for e in watch.events),
            "signon_again": any(e.kind == EventKind.SIGNON_REQ and e.mono_ns > after
                                for e in watch.events) if result else False,
            "recovers": rec.recovered, "recover_s": rec.recover_s, "remedy": rec.remedy,
            "sales": rec.attempts, "fault": rec.fault, "error": rec.error}


def _login(rig: Rig, sc: Scenario, terminal: str, watch: Watch) -> dict[str, Any]:
    """A wrong operator id / password: refused, no sign-on sent; the right one recovers."""
    track = rig.cycle(terminal)
    ecr = rig.hw.ecrs.get(terminal)
    if ecr is None:
        raise TestError(f"{terminal}: {sc.name} logs in over ECR; the terminal has no ECR port")
    creds = sc.login or {"op": "99", "password": "bad"}
    rig.power_cycle(terminal)
    try:
        if track.wait_event({EventKind.BOOT_DONE}, sc.timeout_s) is None:
            raise TerminalError(f"{terminal}: did not boot within {sc.timeout_s:.0f} s")
        bad_ns = time.monotonic_ns()
        try:
            ecr.command(f"LOGIN {creds.get('op', '99')} {creds.get('password', 'bad')}",
                        secret=creds.get("password"))
            refused = False
        except TerminalError:
            refused = True
        time.sleep(2.0)  # a terminal that ignored the refusal would sign on now
        sent = any(e.kind == EventKind.SIGNON_REQ and e.mono_ns >= bad_ns for e in watch.events)
        good_ns = time.monotonic_ns()
        error = wait_ready(rig.hw, track, sc.timeout_s)
    except BaseException as e:
        rig.cycle(terminal).finish("aborted", error=str(e) or type(e).__name__)
        raise
    s = rig.cycle(terminal).finish("completed", error=error)
    ready = watch.first(lambda e: e.kind == EventKind.READY, after_ns=good_ns)
    return {"login_refused": refused, "signon_sent": sent, "recovers": s.ok,
            "recover_s": (ready.mono_ns - good_ns) / 1e9 if ready else None,
            "attempts": signon_attempts(watch.events)}


def _not_signed_on(rig: Rig, sc: Scenario, terminal: str, watch: Watch) -> dict[str, Any]:
    """Make the terminal give up signing on (the scenario's faults), then try a sale: refused.
    Recovery is the operator's remedy: sign on again."""
    track = rig.cycle(terminal)
    faults = sc.fault_objects()
    with rig.fault(terminal, *faults):
        rig.power_cycle(terminal)
        try:
            wait_ready(rig.hw, track, sc.timeout_s)
        except BaseException as e:
            rig.cycle(terminal).finish("aborted", error=str(e) or type(e).__name__)
            raise
        rig.cycle(terminal).finish("completed")
    gave_up = any(is_giveup(e) for e in watch.events)
    r = rig.sale(terminal, **sc.sale.model_dump())
    fixed_ns = time.monotonic_ns()
    try:
        rig.hw.ecrs[terminal].command("SIGNON")
    except TerminalError as e:
        log.info("%s: SIGNON refused: %s", terminal, e)
    ready = watch.wait(lambda e: e.kind == EventKind.READY, sc.timeout_s, after_ns=fixed_ns)
    settle(rig, terminal)
    return {"gave_up": gave_up, "outcome": r.outcome, "rc": r.rc, "error": r.error,
            "signed_on": False if gave_up else None, "recovers": ready is not None,
            "recover_s": (ready.mono_ns - fixed_ns) / 1e9 if ready else None,
            "attempts": signon_attempts(watch.events)}


PROCEDURES = {"signon": _signon, "sale": _sale, "login": _login, "not_signed_on": _not_signed_on}
