"""``GET /metrics``: the rig service in Prometheus' text format, read at scrape time.

A custom collector in a registry of the app's own (not prometheus_client's global one) reads
the hub (clients, leases, live campaign workers) and the store's ``soak_cycles`` when scraped.
The store is read through :class:`SoakTally`, which follows the table incrementally: the first
scrape reads the last :data:`WINDOW` cycles (and the counts of the campaigns shown, once);
every later one reads only the rows that ended since, so a scrape costs what happened since the
last one, not the size of the store. Cycle and failure counts come from the store (they survive
a service restart); the figure histograms count the cycles seen by this service process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..timeline.store import open_readonly
from .hub import Hub

WINDOW = 10_000  # soak cycles read at most per scrape (the first one: the last WINDOW cycles)
RECENT_CAMPAIGNS = 10  # campaigns with series: the latest ones, and every running one
# figure in a soak cycle's result_json -> histogram name
FIGURES = {"ready_s": "posrig_soak_ready_seconds",
           "signon_req_s": "posrig_soak_signon_req_seconds",
           "card_to_result_s": "posrig_soak_card_to_result_seconds"}
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
           300.0)
HEALTH_STATES = ("good", "suspect", "bad", "quarantined")
WORKER_STATES = ("starting", "running", "waiting", "paused", "done", "quarantined", "failed")
CAMPAIGN_STATES = ("running", "completed", "stopped", "interrupted", "failed")
ENDED = ("completed", "failed", "aborted")


def figures_of(result: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The figures of one soak cycle's ``result_json``: (figure, seconds) pairs."""
    sign = result.get("signon") or {}
    for f in ("ready_s", "signon_req_s"):
        if isinstance(sign.get(f), int | float):
            yield f, float(sign[f])
    for sale in result.get("sales") or []:
        v = sale.get("card_to_result_s") if isinstance(sale, dict) else None
        if isinstance(v, int | float):
            yield "card_to_result_s", float(v)


class _Histogram:
    """Per-bucket (not cumulative) counts and the sum of one figure on one terminal."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, v: float) -> None:
        i = next((i for i, b in enumerate(BUCKETS) if v <= b), len(BUCKETS))
        self.counts[i] += 1
        self.total += v

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            acc += n
            out.append((bound, float(acc)))
        return out


class SoakTally:
    """The store's ``soak_cycles`` followed incrementally (thread-safe; :meth:`update` first).

    Rows are numbered in commit order and go from ``started`` to an end state once, so one
    cursor suffices: every row below it has been counted. Rows at or above it that ended are
    remembered until the cursor passes them.
    """

    def __init__(self, db: Path, keep_failures: int = 50) -> None:
        self.db = db
        self.lock = threading.Lock()
        self._cursor: int | None = None
        self._floor = 0  # rows below it were counted by the one-time seed, per campaign
        self._seen: set[int] = set()
        self._seeded: set[int] = set()
        # (run, terminal, state, class) -> ended cycles
        self.counts: dict[tuple[int, str, str, str | None], int] = {}
        self.in_flight: dict[tuple[int, str], int] = {}
        self.hist: dict[tuple[str, str], _Histogram] = {}  # (figure, terminal)
        self.failures: deque[dict[str, Any]] = deque(maxlen=keep_failures)  # newest last

    def update(self, runs: Iterable[int] = ()) -> None:
        """Read what ended since the last call; seed the counts of ``runs`` not seen yet."""
        if not self.db.exists():
            return
        with self.lock, closing(open_readonly(self.db)) as db:
            self._scan(db)
            for run in set(runs) - self._seeded:
                self._seed(db, run)

    def _seed(self, db: sqlite3.Connection, run: int) -> None:
        for terminal, state, cls, n in db.execute(
                "SELECT terminal, state, class, count(*) FROM soak_cycles WHERE run_id=? AND "
                "id < ? AND state != 'started' GROUP BY terminal, state, class",
                (run, self._floor)):
            key = (run, terminal, state, cls)
            self.counts[key] = self.counts.get(key, 0) + n
        self._seeded.add(run)

    def _scan(self, db: sqlite3.Connection) -> None:
        top = db.execute("SELECT coalesce(max(id), 0) FROM soak_cycles").fetchone()[0]
        lo = max(self._cursor or 0, top - WINDOW + 1)
        if self._cursor is None:
            self._floor = lo
        rows = db.execute("SELECT id, run_id, terminal, state FROM soak_cycles WHERE id >= ? "
                          "ORDER BY id", (lo,)).fetchall()
        cursor: int | None = None
        fresh: list[int] = []
        in_flight: dict[tuple[int, str], int] = {}
        for sid, run, terminal, state in rows:
            if state == "started":
                cursor = sid if cursor is None else cursor
                in_flight[(run, terminal)] = in_flight.get((run, terminal), 0) + 1
            elif sid not in self._seen:
                fresh.append(sid)
        self.in_flight = in_flight
        if fresh:
            for row in db.execute(
                    "SELECT id, run_id, terminal, idx, case_id, state, class, ended_wall_ns, "
                    "result_json FROM soak_cycles WHERE id BETWEEN ? AND ? AND state != "
                    "'started' ORDER BY id", (fresh[0], fresh[-1])):
                if row[0] not in self._seen:
                    self._count(*row)
        self._cursor = cursor if cursor is not None else top + 1
        self._seen = {i for i in self._seen if i >= self._cursor}

    def _count(self, sid: int, run: int, terminal: str, idx: int, case: str, state: str,
               cls: str | None, ended_ns: int | None, result_json: str | None) -> None:
        self._seen.add(sid)
        key = (run, terminal, state, cls)
        self.counts[key] = self.counts.get(key, 0) + 1
        try:
            result = json.loads(result_json or "{}")
        except ValueError:
            result = {}
        for figure, v in figures_of(result):
            self.hist.setdefault((figure, terminal), _Histogram()).observe(v)
        if cls is not None or state == "failed":
            self.failures.append({
                "run_id": run, "terminal": terminal, "idx": idx, "case": case, "state": state,
                "class": cls, "error": result.get("error"),
                "ended": ended_ns / 1e9 if ended_ns else None})

    def failures_by_class(self) -> dict[int, dict[str, int]]:
        """Run -> failure class -> cycles (call under :attr:`lock` or after :meth:`update`)."""
        out: dict[int, dict[str, int]] = {}
        for (run, _, _, cls), n in list(self.counts.items()):
            if cls is not None:
                d = out.setdefault(run, {})
                d[cls] = d.get(cls, 0) + n
        return out


def shown_campaigns(db: Path) -> list[dict[str, Any]]:
    """The campaigns that get series and rows: the latest :data:`RECENT_CAMPAIGNS`, and every
    one the store says is running."""
    if not db.exists():
        return []
    with closing(open_readonly(db)) as con:
        rows = con.execute(
            "SELECT run_id, name, state, planned, terminals_json FROM campaigns WHERE run_id IN "
            "(SELECT run_id FROM campaigns ORDER BY run_id DESC LIMIT ?) OR state='running' "
            "ORDER BY run_id", (RECENT_CAMPAIGNS,)).fetchall()
    return [{"run_id": r[0], "name": r[1], "state": r[2], "planned": r[3],
             "terminals": json.loads(r[4])} for r in rows]


class HubCollector(Collector):
    """Reads the hub and the store at every scrape (see the module's docstring)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.tally = SoakTally(Path(hub.bench.store.path))

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        hub = self.hub
        campaigns = shown_campaigns(self.tally.db)
        names = {c["run_id"]: c["name"] for c in campaigns}
        self.tally.update(names)

        info = InfoMetricFamily("posrig_service", "The rig service: its lab and process.")
        info.add_metric([], {"lab": hub.cfg.name, "pid": str(os.getpid()), "url": hub.url})
        yield info
        yield GaugeMetricFamily("posrig_service_start_time_seconds",
                                "When the service started (Unix time).", value=hub.started)
        yield GaugeMetricFamily("posrig_service_uptime_seconds", "Seconds since the service "
                                "started.", value=time.time() - hub.started)
        yield GaugeMetricFamily("posrig_service_clients", "Open client sessions (notebooks, "
                                "CLI, ...).", value=len(hub.clients))
        leases = hub.leases.all()
        yield GaugeMetricFamily("posrig_service_leases", "Leases held (campaigns' included).",
                                value=len(leases))
        leased = GaugeMetricFamily("posrig_terminal_leased", "1 while a session or campaign "
                                   "holds a lease on the terminal.", labels=["terminal"])
        held = {t for x in leases for t in x.terminals}
        for t in hub.bench.terminals:
            leased.add_metric([t], 1.0 if t in held else 0.0)
        yield leased

        state = GaugeMetricFamily("posrig_soak_campaign_state", "1 for the campaign's state.",
                                  labels=["campaign", "run", "state"])
        planned = GaugeMetricFamily("posrig_soak_campaign_planned_cycles",
                                    "Planned cycles of the campaign, all terminals.",
                                    labels=["campaign", "run"])
        for c in campaigns:
            for s in CAMPAIGN_STATES:
                state.add_metric([c["name"], str(c["run_id"]), s], float(c["state"] == s))
            if c["planned"] is not None:
                planned.add_metric([c["name"], str(c["run_id"])],
                                   float(c["planned"] * len(c["terminals"])))
        yield state
        yield planned

        cycles = CounterMetricFamily("posrig_soak_cycles", "Ended soak cycles by state.",
                                     labels=["campaign", "run", "terminal", "state"])
        failures = CounterMetricFamily("posrig_soak_failures", "Failed or aborted soak cycles "
                                       "by failure class (terminal, infrastructure, test).",
                                       labels=["campaign", "run", "terminal", "class"])
        flight = GaugeMetricFamily("posrig_soak_cycles_in_flight", "Soak cycles started, not "
                                   "ended.", labels=["campaign", "run", "terminal"])
        with self.tally.lock:
            by_state: dict[tuple[int, str, str], int] = {}
            by_class: dict[tuple[int, str, str], int] = {}
            for (run, terminal, st, cls), n in self.tally.counts.items():
                if run in names:
                    by_state[(run, terminal, st)] = by_state.get((run, terminal, st), 0) + n
                    if cls is not None:
                        by_class[(run, terminal, cls)] = by_class.get((run, terminal, cls), 0) + n
            for (run, terminal), n in self.tally.in_flight.items():
                if run in names:
                    flight.add_metric([names[run], str(run), terminal], float(n))
            hists = {k: (h.buckets(), h.total) for k, h in self.tally.hist.items()}
        for (run, terminal, st), n in sorted(by_state.items()):
            cycles.add_metric([names[run], str(run), terminal, st], float(n))
        for (run, terminal, cls), n in sorted(by_class.items()):
            failures.add_metric([names[run], str(run), terminal, cls], float(n))
        yield cycles
        yield failures
        yield flight

        for figure, name in FIGURES.items():
            h = HistogramMetricFamily(name, f"{figure} of soak cycles (every case), seconds.",
                                      labels=["terminal"])
            for (f, terminal), (buckets, total) in sorted(hists.items()):
                if f == figure:
                    h.add_metric([terminal], buckets, total)
            yield h

        health = GaugeMetricFamily("posrig_terminal_health", "1 for the terminal's health in "
                                   "its running campaign.", labels=["terminal", "state"])
        worker = GaugeMetricFamily("posrig_soak_worker_state", "1 for what the terminal's "
                                   "campaign worker does.", labels=["terminal", "state"])
        for run in list(hub.campaigns.values()):
            if run.done:
                continue
            for w in run.status()["terminals"]:
                for s in HEALTH_STATES:
                    health.add_metric([w["terminal"], s], float(w["health"] == s))
                for s in WORKER_STATES:
                    worker.add_metric([w["terminal"], s], float(w["state"] == s))
        yield health
        yield worker
        yield GaugeMetricFamily("posrig_scrape_duration_seconds", "How long this scrape took "
                                "to read the hub and the store.", value=time.perf_counter() - t0)


def router(collector: HubCollector) -> APIRouter:
    """``GET /metrics`` of ``collector``, in a registry of its own."""
    registry = CollectorRegistry()
    registry.register(collector)
    r = APIRouter()

    @r.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return r
