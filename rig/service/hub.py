"""The service's state: the bench, its client sessions, leases, the event fan-out, idle exit.

One :class:`Hub` per service process. Each client (a notebook, the CLI, the scheduler) opens a
session — its own run in the store — sends heartbeats, and is closed when it says so, when its
process is gone (same host: its PID, checked with its start time) or when heartbeats stop.
Closing a session cancels its calls, aborts its open cycles (events kept), disarms its faults
and frees its leases.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..control.bench import Bench
from ..control.session import Session
from ..core.errors import ServiceError, TestError
from ..faults.scenarios import Scenario
from ..timeline.events import Event
from ..timeline.store import pid_alive, proc_start
from . import codec
from .leases import Leases

log = logging.getLogger(__name__)

# name -> (which kwargs name the terminals, the Session method)
CALLS: dict[str, str] = {
    "power_on": "terminal", "power_off": "terminal", "power_cycle": "terminal",
    "wait_signon": "terminal", "ensure_ready": "terminal", "series_rows": "terminals",
    "sale": "terminal", "balance": "terminal", "settle": "terminal", "recovery": "terminal",
    "scenario": "terminal", "card_check": "", "status": "", "robot_action": "",
    "clear_faults": "", "keypad": "terminal",
}


@dataclass
class Client:
    sid: str
    session: Session
    pid: int | None
    pid_start: int | None
    host: str
    user: str
    label: str | None
    note: str | None
    kind: str
    started: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    calls: int = 0
    faults: dict[int, list[Any]] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)

    @property
    def who(self) -> str:
        pid = f" pid {self.pid}" if self.pid else ""
        return f"{self.user}@{self.host}{pid} ({self.kind}, session {self.sid})"

    def as_dict(self) -> dict[str, Any]:
        return {"sid": self.sid, "who": self.who, "pid": self.pid, "label": self.label,
                "note": self.note, "run_id": self.session.run_id, "since": self.started,
                "calls_in_flight": self.calls}


class EventBus:
    """Fans every recorded event out to subscribers (bounded queues; a slow one loses the
    oldest and is told how many), and keeps the last ``keep`` events for late readers."""

    def __init__(self, keep: int = 5000, per_subscriber: int = 20000) -> None:
        self._subs: list[queue.Queue[dict[str, Any]]] = []
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._per = per_subscriber
        self.seq = 0

    def publish(self, ev: Event) -> None:
        with self._lock:
            self.seq += 1
            item = {"seq": self.seq, "mono_ns": ev.mono_ns, "wall_ns": ev.wall_ns,
                    "kind": str(ev.kind), "source": ev.source, "terminal": ev.terminal,
                    "clock": str(ev.clock), "data": codec.encode(dict(ev.data))}
            self._recent.append(item)
            subs = list(self._subs)
        for q in subs:
            try:
                q.put_nowait(item)
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    q.get_nowait()
                with contextlib.suppress(queue.Full):
                    q.put_nowait({"kind": "dropped", "seq": item["seq"]})

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._recent)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[queue.Queue[dict[str, Any]]]:
        q: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=self._per)
        with self._lock:
            self._subs.append(q)
        try:
            yield q
        finally:
            with self._lock:
                self._subs.remove(q)


class Hub:
    def __init__(self, config: str | Path, *, results: str | Path | None = None,
                 start_lab: bool | None = None, idle_s: float = 0.0,
                 heartbeat_s: float = 10.0, url: str = "") -> None:
        self.started = time.time()
        self.idle_s, self.heartbeat_s, self.url = idle_s, heartbeat_s, url
        self.bench = Bench(config, label="service", results=results, start_lab=start_lab,
                           run_kind="service")
        self.cfg = self.bench.cfg
        self.bench.store.end_stale_leases("service restarted")
        self.leases = Leases(self.bench.store, self.bench.terminals)
        self.bus = EventBus()
        self.bench.recorder.add_listener(self.bus.publish)
        self.clients: dict[str, Client] = {}
        self.campaigns: dict[int, Any] = {}  # run id -> rig.soak.runner.CampaignRun
        self._lock = threading.Lock()
        self._last_active = time.monotonic()
        self.stopping = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="service-reaper", daemon=True)
        self._reaper.start()
        from .scheduler import Scheduler

        self.scheduler = Scheduler(self)

    # --- clients ------------------------------------------------------------------------------
    def open_client(self, *, label: str | None, pid: int | None, host: str, user: str,
                    kind: str = "client", note: str | None = None) -> Client:
        if self.stopping.is_set():
            raise ServiceError("the rig service is stopping")
        sid = uuid.uuid4().hex[:12]
        local = host == os.uname().nodename
        session = self.bench.session(label=label, owner=sid,
                                     client={"pid": pid, "host": host, "user": user,
                                             "kind": kind, "note": note})
        c = Client(sid, session, pid, proc_start(pid) if pid and local else None, host, user,
                   label, note, kind)
        with self._lock:
            self.clients[sid] = c
            self._last_active = time.monotonic()
        log.info("client %s opened run %d", c.who, session.run_id)
        return c

    def client(self, sid: str) -> Client:
        with self._lock:
            c = self.clients.get(sid)
        if c is None:
            raise TestError(f"session {sid} is not open on this service (it ended, or the "
                            f"service restarted); open the rig again")
        c.last_seen = time.monotonic()
        return c

    def close_client(self, sid: str, state: str = "completed", why: str = "closed") -> None:
        with self._lock:
            c = self.clients.pop(sid, None)
            self._last_active = time.monotonic()
        if c is None:
            return
        log.info("client %s: %s", c.who, why)
        c.session.stop()
        for armed in c.faults.values():
            with contextlib.suppress(Exception):
                c.session.disarm(armed)
        self.leases.release_holder(sid, why)
        c.session.close(state)

    def _reap(self) -> None:
        """Close sessions whose client is gone; exit when idle."""
        while not self.stopping.wait(0.25):
            now = time.monotonic()
            with self._lock:
                clients = list(self.clients.values())
            for c in clients:
                gone = None
                if c.pid_start is not None and not pid_alive(c.pid or 0, c.pid_start):
                    gone = f"client process {c.pid} is gone"
                elif now - c.last_seen > 3 * self.heartbeat_s and c.calls == 0:
                    gone = f"no heartbeat for {now - c.last_seen:.0f} s"
                if gone:
                    try:
                        self.close_client(c.sid, "interrupted", gone)
                    except Exception:
                        log.exception("closing %s", c.who)
            with self._lock:
                busy = any(not c.done for c in self.campaigns.values()) or bool(
                    self.bench.store.query("SELECT 1 FROM schedules LIMIT 1"))
                if busy:
                    self._last_active = now
                idle = not self.clients and not busy and now - self._last_active > self.idle_s
            if self.idle_s > 0 and idle:
                log.info("idle for %.0f s with no client: exiting", self.idle_s)
                self.stopping.set()

    # --- calls --------------------------------------------------------------------------------
    def _terminals_of(self, method: str, kwargs: dict[str, Any]) -> list[str]:
        key = CALLS[method]
        if not key:
            return []
        value = kwargs.get(key, "all" if key == "terminals" else None)
        if value == "all":
            return self.bench.terminals
        if isinstance(value, str):
            return [value]
        if value is None:
            raise TestError(f"{method}: give `{key}`")
        return list(value)

    def call(self, sid: str, method: str, kwargs: dict[str, Any]) -> Any:
        """Run one Session call for client ``sid`` under the leases (an implicit lease on the
        terminals it names for its duration, unless the client holds them)."""
        if method == "clear_faults":
            return self.clear_faults(sid)
        if method not in CALLS:
            raise TestError(f"no such call {method!r}; calls: {', '.join(sorted(CALLS))}")
        c = self.client(sid)
        terminals = self._terminals_of(method, kwargs)
        kwargs = dict(kwargs)
        if method == "recovery":
            kwargs["fault"] = codec.fault_from_wire(kwargs["fault"])
        if method == "scenario":
            kwargs["sc"] = Scenario.model_validate(kwargs["sc"])
        if method == "sale" and kwargs.get("faults"):
            kwargs["faults"] = [codec.fault_from_wire(f) for f in kwargs["faults"]]
        if method == "series_rows":
            def progress(done: int, ok: int, total: int) -> None:
                c.progress = {"done": done, "ok": ok, "total": total}
            c.progress = {"done": 0, "ok": 0, "total": 0}
            kwargs["progress"] = progress
        lease = self.leases.acquire(sid, c.who, terminals, note=f"call {method}",
                                    implicit=True) if terminals else None
        with self._lock:
            c.calls += 1
            self._last_active = time.monotonic()
        try:
            if method == "keypad":  # Session.keypad(terminal, *keys), as a notebook calls it
                return c.session.keypad(kwargs["terminal"], *kwargs["keys"])
            return getattr(c.session, method)(**kwargs)
        finally:
            with self._lock:
                c.calls -= 1
                self._last_active = time.monotonic()
            c.last_seen = time.monotonic()
            if lease is not None:
                self.leases.release(lease, "call ended")

    def lease(self, sid: str, terminals: list[str], note: str | None) -> dict[str, Any]:
        c = self.client(sid)
        names = self.bench.terminals if terminals == ["all"] else terminals
        lease = self.leases.acquire(sid, c.who, names, note=note, run_id=c.session.run_id)
        for t in lease.terminals:  # their events between cycles go to this client's run
            self.bench.recorder.set_cycle(t, None, c.session.run_id)
        return lease.as_dict()

    def unlease(self, sid: str, lease_id: int) -> None:
        self.client(sid)
        for lease in self.leases.all():
            if lease.id == lease_id and lease.holder == sid:
                self.leases.release(lease, "released")
                return
        raise TestError(f"lease {lease_id} is not held by this session")

    def arm(self, sid: str, terminal: str, faults: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.client(sid)
        self.leases.check(sid, [terminal])
        armed = c.session.arm(terminal, *[codec.fault_from_wire(f) for f in faults])
        handle = max(c.faults, default=0) + 1
        c.faults[handle] = armed
        return {"handle": handle, "ids": [a.id for a in armed]}

    def disarm(self, sid: str, handle: int) -> list[list[dict[str, Any]]]:
        c = self.client(sid)
        armed = c.faults.pop(handle, None)
        if armed is None:
            return []
        c.session.disarm(armed)
        return [[{"id": o.id, "on_mono_ns": o.since.mono_ns} for o in a.occurrences]
                for a in armed]

    def clear_faults(self, sid: str) -> dict[str, Any]:
        """Every fault off (``rig fault clear``): the sessions holding faults are ended (their
        clients hear it at their next call or heartbeat), whatever is still on is undone."""
        c = self.client(sid)
        with self._lock:
            holders = [o for o in self.clients.values() if o.faults and o.sid != sid]
        stopped = []
        for other in holders:
            stopped.append(other.pid)
            self.close_client(other.sid, "interrupted", f"its faults were cleared by {c.who}")
        for handle in list(c.faults):
            c.session.disarm(c.faults.pop(handle))
        return {"undone": c.session.clear_faults() + list(self.bench.swept),
                "stopped_pids": sorted(p for p in stopped if p)}

    def cancel(self, sid: str, terminals: list[str] | None) -> None:
        self.client(sid).session.stop(terminals)

    # --- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            clients = [c.as_dict() for c in self.clients.values()]
        terminals = {}
        for t, tc in self.bench.cycles.items():
            holder = self.leases.holder(t)
            terminals[t] = {"cycle": tc.cycle_id if tc.open else None,
                            "kind": tc.kind if tc.open else None, "owner": tc.owner if tc.open else None,
                            "leased_by": holder.who if holder else None,
                            "lease_note": holder.note if holder else None}
        return {"pid": os.getpid(), "url": self.url, "lab": self.cfg.name,
                "uptime_s": round(time.time() - self.started, 1),
                "store": str(self.bench.store.path), "service_run": self.bench.run_id,
                "journal": str(self.bench.journal_path),
                "results": str(self.bench.results),
                "lab_child": self.bench.lab.proc.pid if self.bench.lab and self.bench.lab.proc
                else None,
                "recovered_runs": self.bench.recovered,
                "clients": clients, "leases": [x.as_dict() for x in self.leases.all()],
                "terminals": terminals}

    # --- campaigns ----------------------------------------------------------------------------
    def start_campaign(self, path: str | None = None, *, resume: int | None = None) -> dict[str, Any]:
        """Run a campaign file (``path``), or resume the campaign of run ``resume``."""
        from ..soak.campaign import Campaign, load_campaign
        from ..soak.runner import CampaignRun

        store = self.bench.store
        if resume is not None:
            cur = self.campaigns.get(resume)
            if cur is not None and not cur.done:
                raise TestError(f"campaign run {resume} is running already")
            rows = store.query("SELECT campaign_json, source, state FROM campaigns "
                               "WHERE run_id=?", (resume,))
            if not rows:
                raise TestError(f"run {resume} is not a campaign of this lab's store")
            if rows[0]["state"] == "completed":
                raise TestError(f"campaign run {resume} completed; nothing to resume")
            campaign = Campaign.model_validate(json.loads(rows[0]["campaign_json"]))
            if rows[0]["source"]:
                campaign._source = Path(rows[0]["source"])
            run_id = resume
            store.set_campaign_state(run_id, "running")
        else:
            if path is None:
                raise TestError("give a campaign file")
            campaign = load_campaign(path)
        lab = campaign.lab_config()
        if lab.name != self.cfg.name:
            raise TestError(f"campaign {campaign.name} is for lab {lab.name}; this service runs "
                            f"lab {self.cfg.name}")
        if resume is None:
            terminals = campaign.terminal_names(self.cfg)
            run_id = self.bench.begin_run(campaign.label, "campaign",
                                          {"campaign": campaign.name, "source": str(path)})
            from ..soak.plan import plan as make_plan

            store.add_campaign(run_id, name=campaign.name, label=campaign.label,
                               source=str(Path(path).resolve()) if path else None,
                               campaign=campaign.model_dump(mode="json"), terminals=terminals,
                               planned=make_plan(campaign, lab=self.cfg).cycles_per_terminal)
        holder = f"campaign-{run_id}"
        who = f"campaign {campaign.name} (run {run_id})"
        held: dict[str, Any] = {}

        def acquire(t: str) -> None:
            held[t] = self.leases.acquire(holder, who, [t], note=campaign.label, run_id=run_id)

        def release(t: str) -> None:
            lease = held.pop(t, None)
            if lease is not None:
                self.leases.release(lease, "campaign ended")

        run = CampaignRun(self.bench, campaign, run_id, acquire=acquire, release=release)
        with self._lock:
            self.campaigns[run_id] = run
            self._last_active = time.monotonic()
        run.start()
        return run.status()

    def campaign_status(self, run_id: int) -> dict[str, Any]:
        run = self.campaigns.get(run_id)
        if run is not None:
            return run.status()
        rows = self.bench.store.query("SELECT run_id FROM campaigns WHERE run_id=?", (run_id,))
        if not rows:
            raise TestError(f"no campaign run {run_id} in this lab's store")
        return next(c for c in self.list_campaigns() if c["run_id"] == run_id)

    def list_campaigns(self) -> list[dict[str, Any]]:
        """Every campaign of the store, with its counts; live status for running ones."""
        out = []
        for r in self.bench.store.query(
                "SELECT c.run_id, c.name, c.label, c.state, c.planned, c.terminals_json, "
                "(SELECT count(*) FROM soak_cycles s WHERE s.run_id=c.run_id AND "
                "s.state='completed') AS completed, (SELECT count(*) FROM soak_cycles s WHERE "
                "s.run_id=c.run_id AND s.state='failed') AS failed, (SELECT count(*) FROM "
                "soak_cycles s WHERE s.run_id=c.run_id AND s.state='aborted') AS aborted "
                "FROM campaigns c ORDER BY c.run_id"):
            n_terms = len(json.loads(r["terminals_json"]))
            item = {"run_id": r["run_id"], "campaign": r["name"], "label": r["label"],
                    "state": r["state"],
                    "planned": r["planned"] * n_terms if r["planned"] is not None else None,
                    "completed": r["completed"], "failed": r["failed"], "aborted": r["aborted"]}
            live = self.campaigns.get(r["run_id"])
            if live is not None and not live.done:
                item.update(live.status())
            out.append(item)
        return out

    def stop_campaign(self, run_id: int, reason: str = "stopped by request") -> dict[str, Any]:
        run = self.campaigns.get(run_id)
        if run is None or run.done:
            raise TestError(f"campaign run {run_id} is not running")
        run.stop(reason)
        return run.status()

    def install_schedules(self, path: str) -> list[dict[str, Any]]:
        """Install the schedules of a file (each replaces one of the same name)."""
        from ..soak.campaign import load_campaign
        from ..soak.schedule import load_schedule

        entries = load_schedule(path)
        for e in entries:
            c = load_campaign(e["campaign"])  # checked now, not at the window's start
            if c.lab_config().name != self.cfg.name:
                raise TestError(f"schedule {e['name']}: campaign {c.name} is for lab "
                                f"{c.lab_config().name}; this service runs {self.cfg.name}")
        for e in entries:
            self.bench.store.put_schedule(e["name"], e["campaign"], e["start"], e["duration_s"])
        return self.scheduler.schedules()

    def clear_schedules(self) -> int:
        return self.bench.store.clear_schedules()

    def close(self) -> None:
        self.scheduler.close()
        for run in list(self.campaigns.values()):
            if not run.done:
                run.stop("the rig service is stopping")
        for run in list(self.campaigns.values()):
            run.wait(60)
        self.stopping.set()
        for sid in list(self.clients):
            self.close_client(sid, "interrupted", "service stopping")
        self.bench.close("completed")
