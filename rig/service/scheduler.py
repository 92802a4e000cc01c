"""The service's scheduler: keeps each installed schedule's campaign running while its window
is open, and stops it safely when the window closes (:mod:`rig.soak.schedule`).

Schedules live in the store (``schedules``), so a restarted service picks them up again, and
with them the run to resume.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from ..core.errors import RigError
from ..soak.schedule import Window

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, hub: Any, tick_s: float = 0.5) -> None:
        self.hub = hub
        self.tick_s = tick_s
        self.notes: dict[str, str] = {}  # schedule -> what it is doing now (status, live page)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def schedules(self) -> list[dict[str, Any]]:
        rows = self.hub.bench.store.query("SELECT * FROM schedules ORDER BY name")
        return [{**dict(r), "now": self.notes.get(r["name"], "")} for r in rows]

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            for s in self.schedules():
                try:
                    self._tick(s)
                except RigError as e:
                    self.notes[s["name"]] = f"error: {e}"
                    log.warning("schedule %s: %s", s["name"], e)
                except Exception:
                    log.exception("schedule %s", s["name"])

    def _tick(self, s: dict[str, Any]) -> None:
        hub, name = self.hub, s["name"]
        now = datetime.now().astimezone()
        window = Window(start=s["start"], duration=s["duration_s"])
        since = window.open_since(now)
        run = hub.campaigns.get(s["run_id"]) if s["run_id"] is not None else None
        running = run is not None and not run.done
        if since is None:
            if running:
                hub.stop_campaign(s["run_id"], f"schedule {name}: its window closed")
                self.notes[name] = "window closed: stopping"
            else:
                self.notes[name] = f"next window {window.next_start(now):%Y-%m-%d %H:%M:%S}"
            return
        if running:
            self.notes[name] = f"running (run {s['run_id']})"
            return
        state = None
        if s["run_id"] is not None:
            rows = hub.bench.store.query("SELECT state, started_wall_ns FROM campaigns "
                                         "WHERE run_id=?", (s["run_id"],))
            state = rows[0]["state"] if rows else None
            begun = rows[0]["started_wall_ns"] / 1e9 if rows else 0.0
            if state == "completed" and begun >= since.timestamp():
                self.notes[name] = "completed in this window"
                return
        if state in ("stopped", "interrupted"):
            hub.start_campaign(resume=s["run_id"])
            self.notes[name] = f"resumed run {s['run_id']}"
        else:
            st = hub.start_campaign(s["campaign"])
            hub.bench.store.set_schedule_run(name, st["run_id"])
            self.notes[name] = f"started run {st['run_id']}"
        log.info("schedule %s: %s", name, self.notes[name])
