"""Running a campaign inside the rig service: a worker per terminal, cycle after cycle.

Each worker takes its terminal's planned cycles in index order. A cycle is recorded in the
store's ``soak_cycles`` as ``started`` before its first step and ended (``completed`` /
``failed`` / ``aborted``) before the next begins; ``(run, terminal, index)`` is unique, so a
resume — after a stop, a closed window or a crash — continues at the next planned cycle and
never runs one twice. The steps are the session calls a notebook makes (power cycle, wait for
sign-on, sales, settle): there is no second way to drive the hardware. Faults of the cycle's
matrix case are held for the cycle, each on its window.

Failures are classed: ``terminal`` (the DUT), ``infrastructure`` (an instrument, the robot,
the host or the lab unreachable: the worker pauses until the lab answers again, recorded as a
pause, never as a DUT failure) and ``test`` (the campaign is wrong for this lab: the worker
stops). DUT failures drive the terminal's health (:mod:`rig.soak.health`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime
from typing import Any

from ..control.bench import Bench
from ..core.errors import Cancelled, InfrastructureError, LeaseError, RigError, TestError
from ..timeline.events import Event, EventKind
from .campaign import AwaitSignon, Campaign, PowerCycle, RobotHome, Sales, Settle, Wait
from .health import QUARANTINED, TerminalHealth
from .plan import Plan, PlannedCase, plan

log = logging.getLogger(__name__)


class StepDeadline(RigError):
    """A step ran past its deadline (the terminal hung): a DUT failure."""


class _Worker:
    """What the live status shows of one terminal's worker."""

    def __init__(self, terminal: str, health: TerminalHealth) -> None:
        self.terminal = terminal
        self.health = health
        self.index: int | None = None
        self.case: str | None = None
        self.state = "starting"  # running, waiting (lease), paused (infra), done, quarantined
        self.why = ""
        self.counts = {"completed": 0, "failed": 0, "aborted": 0}
        self.failures: dict[str, int] = {}

    def as_dict(self) -> dict[str, Any]:
        return {"terminal": self.terminal, "state": self.state, "why": self.why,
                "health": self.health.state, "index": self.index, "case": self.case,
                **self.counts, "failures": dict(self.failures)}


class CampaignRun:
    """One campaign run in the service (``start()``, ``stop()``, ``status()``)."""

    def __init__(self, bench: Bench, campaign: Campaign, run_id: int, *,
                 acquire: Any = None, release: Any = None, started: datetime | None = None
                 ) -> None:
        self.bench, self.campaign, self.run_id = bench, campaign, run_id
        self.plan: Plan = plan(campaign, lab=bench.cfg)
        self.started = started or datetime.now().astimezone()
        self.deadline = self.plan.deadline(self.started)
        self.session = bench.session(label=campaign.label, owner=f"campaign-{run_id}",
                                     run_id=run_id)
        self._acquire, self._release = acquire, release
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self.state = "running"
        h = campaign.health
        self.workers = {t: _Worker(t, TerminalHealth(h.suspect_after, h.quarantine_after))
                        for t in self.plan.terminals}
        for r in bench.store.query(  # a resumed run counts what it did before
                "SELECT terminal, state, class, count(*) FROM soak_cycles WHERE run_id=? AND "
                "state != 'started' GROUP BY terminal, state, class", (run_id,)):
            w = self.workers.get(r[0])
            if w is not None:
                w.counts[r[1]] += r[3]
                if r[2]:
                    w.failures[r[2]] = w.failures.get(r[2], 0) + r[3]
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._lock = threading.Lock()

    # --- control ------------------------------------------------------------------------------
    def start(self) -> None:
        for t in self.plan.terminals:
            th = threading.Thread(target=self._guarded, args=(t,), name=f"soak-{t}",
                                  daemon=True)
            self._threads.append(th)
            th.start()
        threading.Thread(target=self._finish_when_done, name=f"soak-{self.run_id}",
                         daemon=True).start()

    def stop(self, reason: str = "stopped") -> None:
        """Stop safely: the running steps are cancelled (their cycles aborted, events kept),
        faults undone, the terminals put in the safe state; resumable later."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()
            self.session.stop()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def status(self) -> dict[str, Any]:
        n = self.plan.cycles_per_terminal
        workers = [w.as_dict() for w in self.workers.values()]
        return {"run_id": self.run_id, "campaign": self.campaign.name,
                "label": self.campaign.label, "state": self.state,
                "stop_reason": self.stop_reason,
                "planned": n * len(self.workers) if n is not None else None,
                "completed": sum(w["completed"] for w in workers),
                "failed": sum(w["failed"] for w in workers),
                "aborted": sum(w["aborted"] for w in workers),
                "deadline": self.deadline.isoformat() if self.deadline else None,
                "terminals": workers}

    # --- the workers --------------------------------------------------------------------------
    def _finish_when_done(self) -> None:
        for th in self._threads:
            th.join()
        if self._stop.is_set():
            self.state = "stopped"
        elif any(w.state == "failed" for w in self.workers.values()):
            self.state = "failed"
        else:
            self.state = "completed"
        self.bench.store.set_campaign_state(self.run_id, self.state, self.stop_reason)
        self.session.close("completed" if self.state == "completed" else
                           "failed" if self.state == "failed" else "interrupted")
        self._done.set()
        log.info("campaign %s (run %d): %s", self.campaign.name, self.run_id, self.state)

    def _guarded(self, terminal: str) -> None:
        w = self.workers[terminal]
        try:
            self._hold_lease(w)
            if not self._stop.is_set():
                self._work(w)
        except Exception as e:
            log.exception("campaign %s: worker %s failed", self.campaign.name, terminal)
            w.state, w.why = "failed", f"{type(e).__name__}: {e}"
        finally:
            if self._release:
                self._release(terminal)
            if w.state not in ("failed", "quarantined"):
                w.state = "done"

    def _hold_lease(self, w: _Worker) -> None:
        """Lease the terminal; while a notebook holds it, wait (and say so)."""
        if self._acquire is None:
            return
        while not self._stop.is_set():
            try:
                self._acquire(w.terminal)
                return
            except LeaseError as e:
                w.state, w.why = "waiting", str(e)
                self._stop.wait(2.0)

    def _done_indices(self, terminal: str) -> set[int]:
        rows = self.bench.store.query(
            "SELECT idx FROM soak_cycles WHERE run_id=? AND terminal=?", (self.run_id, terminal))
        return {int(r[0]) for r in rows}

    def _work(self, w: _Worker) -> None:
        t = w.terminal
        done = self._done_indices(t)
        n = self.plan.cycles_per_terminal
        index = 0
        while not self._stop.is_set():
            if n is not None and index >= n:
                break
            if self.deadline is not None and datetime.now().astimezone() >= self.deadline:
                self.stop_reason = self.stop_reason or "the campaign's time is up"
                break
            if index in done:
                index += 1
                continue
            case = self.plan.case(t, index)
            soak_id = self.bench.store.start_soak_cycle(self.run_id, t, index, case.id)
            if soak_id is None:  # recorded by an earlier service: never twice
                index += 1
                continue
            w.state, w.index, w.case, w.why = "running", index, case.id, ""
            state, cls, result, first, last = self._cycle(t, case)
            self.bench.store.end_soak_cycle(soak_id, state, result, cls=cls, first_cycle=first,
                                            last_cycle=last)
            w.counts[state] += 1
            if cls:
                w.failures[cls] = w.failures.get(cls, 0) + 1
            index += 1
            if state == "aborted" and cls == "infrastructure" and not self._stop.is_set():
                self._pause(w, str(result.get("error")))
            elif cls == "test":
                w.state, w.why = "failed", str(result.get("error"))
                return
            elif state != "aborted" and not result.get("under_fault"):
                # a cycle that failed under its case's fault neither counts against the
                # terminal nor clears its record
                changed = w.health.cycle(state == "completed")
                if changed:
                    self._health_event(t, changed, f"{w.health.failures} DUT failures in a row")
                if w.health.needs_recovery and not self._stop.is_set():
                    self._recover(w)
                if w.health.quarantined:
                    w.state, w.why = QUARANTINED, "failed its recoveries"
                    return

    # --- one cycle ----------------------------------------------------------------------------
    def _cycle(self, terminal: str, case: PlannedCase
               ) -> tuple[str, str | None, dict[str, Any], int | None, int | None]:
        t0 = time.monotonic_ns()
        result: dict[str, Any] = {"case": case.id, "label": self.campaign.label}
        try:
            if case.scenario is not None:
                v = self.session.scenario(case.scenario, terminal, pick=False)
                result.update(verdict=v.verdict, recover_s=v.recover_s, error=v.error)
                ok, failure = v.verdict == "pass", None if v.verdict == "pass" else (
                    v.error or "scenario verdict: " + v.verdict)
                if v.verdict == "error":
                    raise InfrastructureError(v.error or "scenario could not run")
            else:
                with self.session.fault(terminal, *case.faults) if case.faults else \
                        contextlib.nullcontext():
                    ok, failure = self._steps(terminal, self.campaign.steps, result)
                if case.kind != "baseline" and not ok:
                    # under a fault a failed sign-on or sale is data, not a DUT failure
                    result["under_fault"] = failure
                    ok, failure = True, None
            state, cls = ("completed", None) if ok else ("failed", "terminal")
            if failure:
                result["error"] = failure
        except Cancelled as e:
            state, cls = "aborted", None
            result["error"] = self.stop_reason or str(e) or "cancelled"
        except StepDeadline as e:
            state, cls = "failed", "terminal"
            result["error"] = str(e)
        except TestError as e:
            state, cls = "aborted", "test"
            result["error"] = str(e)
        except InfrastructureError as e:
            state, cls = "aborted", "infrastructure"
            result["error"] = str(e)
        except RigError as e:  # TerminalError and the like: the DUT
            state, cls = "failed", "terminal"
            result["error"] = str(e)
        rows = self.bench.store.query(
            "SELECT min(id), max(id) FROM cycles WHERE run_id=? AND terminal=? AND "
            "start_mono_ns >= ?", (self.run_id, terminal, t0))
        first, last = (rows[0][0], rows[0][1]) if rows else (None, None)
        return state, cls, result, first, last

    def _steps(self, terminal: str, steps: list[Any], result: dict[str, Any]
               ) -> tuple[bool, str | None]:
        """Run ``steps``; (all went well, the first failure's text)."""
        ok, failure = True, None
        sales: list[dict[str, Any]] = result.setdefault("sales", [])
        for step in steps:
            if self._stop.is_set():
                raise Cancelled("campaign stopping")
            with self._deadline(terminal, step):
                if isinstance(step, PowerCycle):
                    self.session.power_cycle(terminal, off_s=step.off_s)
                elif isinstance(step, AwaitSignon):
                    s = self.session.wait_signon(terminal, timeout_s=step.timeout_s)
                    result["signon"] = s.as_dict()
                    if not s.ok:
                        ok, failure = False, failure or f"sign-on: {s.error}"
                        break  # no sales on a terminal that did not sign on
                elif isinstance(step, Sales):
                    for _ in range(step.count):
                        r = self.session.sale(terminal, amount=step.amount, card=step.card,
                                              entry=step.entry, timeout_s=step.timeout_s)
                        sales.append({k: v for k, v in r.as_dict().items()
                                      if k not in ("terminal",)})
                        if r.outcome != "approved":
                            ok = False
                            failure = failure or f"sale: {r.outcome} {r.rc or ''} {r.error or ''}"
                elif isinstance(step, Settle):
                    res = self.session.settle(terminal, timeout_s=step.timeout_s)
                    result["settle"] = res
                    if res.get("settle") not in (None, "balanced"):
                        ok, failure = False, failure or f"settle: {res.get('settle')}"
                elif isinstance(step, Wait):
                    self.session.cycle(terminal).sleep(step.s)
                elif isinstance(step, RobotHome):
                    self.session.robot_action("home")
        return ok, failure

    @contextlib.contextmanager
    def _deadline(self, terminal: str, step: Any) -> Any:
        """Cancel the step after its deadline; that is a DUT failure, not a stop."""
        fired = threading.Event()

        def fire() -> None:
            fired.set()
            self.session.stop([terminal])

        timer = threading.Timer(step.deadline(), fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Cancelled:
            if fired.is_set() and not self._stop.is_set():
                raise StepDeadline(f"{terminal}: step {step.kind} ran past its deadline of "
                                   f"{step.deadline():.0f} s") from None
            raise
        finally:
            timer.cancel()

    # --- health and pauses --------------------------------------------------------------------
    def _health_event(self, terminal: str, state: str, why: str) -> None:
        self.bench.recorder.record(Event.now(EventKind.HEALTH, "soak", terminal, state=state,
                                             why=why, run=self.run_id))
        log.info("campaign %s: %s is %s (%s)", self.campaign.name, terminal, state, why)

    def _recover(self, w: _Worker) -> None:
        """Recovery steps, then the health check (the cycle's steps, no fault)."""
        h = self.campaign.health
        result: dict[str, Any] = {}
        try:
            self._steps(w.terminal, list(h.recover), result)
            ok, failure = self._steps(w.terminal, h.check_steps(self.campaign.steps), result)
        except Cancelled:
            return
        except RigError as e:
            ok, failure = False, str(e)
        state = w.health.recovered(ok)
        self._health_event(w.terminal, state, "health check passed" if ok else
                           f"health check failed: {failure}")

    def _pause(self, w: _Worker, why: str) -> None:
        """An infrastructure error: wait until the lab's instruments answer again."""
        w.state, w.why = "paused", why
        rec = self.bench.recorder
        rec.record(Event.now(EventKind.PAUSE, "soak", w.terminal, why=why, run=self.run_id))
        poll = self.campaign.health.infra_poll_s
        while not self._stop.wait(poll):
            try:
                st = self.session.status()
            except RigError:
                continue
            if all(i.get("ok") for i in st["instruments"].values()):
                break
        rec.record(Event.now(EventKind.RESUME, "soak", w.terminal, run=self.run_id))
        w.state, w.why = "running", ""
