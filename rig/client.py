"""The notebook API: ``open_rig()`` returns a :class:`Rig`, a client of the lab's rig service.

The service (:mod:`rig.service`) owns the hardware; a ``Rig`` opens a session on it (its own
run in the store), keeps it alive with heartbeats, and forwards every call. The calls and their
return types are those of the in-process session (:class:`rig.control.session.Session`):
``SignOn``, ``SaleResult``, a DataFrame for a series... A Ctrl-C during a call cancels it in
the service (its cycle is marked aborted, events kept) and raises KeyboardInterrupt here. If the
service dies, calls fail with :class:`~rig.core.errors.ServiceError` at once, never hang.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .config import LabConfig, load_lab
from .core.errors import Cancelled, ServiceError, TestError
from .service import codec
from .service.runtime import DEFAULT_IDLE_S, Paths, read_info, spawn, wait_ready
from .timeline.events import Event, EventKind

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/labs/virtual.yaml"


class StoreRef:
    """The lab's store as a client sees it: its path, and read-only queries (WAL readers
    never block the service, which is the store's only writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        import sqlite3

        from .timeline.store import open_readonly

        db = open_readonly(self.path)
        try:
            db.row_factory = sqlite3.Row
            return db.execute(sql, params).fetchall()
        finally:
            db.close()


class Lease:
    """A held lease (``with rig.lease(...)``); ``release()`` is idempotent."""

    def __init__(self, rig: Rig, info: dict[str, Any]) -> None:
        self._rig, self.info = rig, info
        self.id = int(info["id"])
        self.terminals = list(info["terminals"])
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._rig._request("DELETE", f"/leases/{self.id}")

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lease {self.id} {','.join(self.terminals)}>"


class Rig:
    """A client of one lab's rig service. Use :func:`open_rig`."""

    def __init__(self, url: str, cfg: LabConfig, *, token: str | None = None,
                 label: str | None = None, kind: str = "notebook", note: str | None = None,
                 config_path: Path | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.label = label
        self.config_path = config_path
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers,
                                  timeout=httpx.Timeout(30.0, read=None))
        self._closed = False
        self.ended: str | None = None  # why the service ended this session, if it did
        try:
            r = self._http.post("/v1/sessions", json={
                "label": label, "pid": os.getpid(), "host": os.uname().nodename,
                "user": getpass.getuser(), "kind": kind, "note": note})
        except httpx.HTTPError as e:
            self._http.close()
            raise ServiceError(f"the rig service at {self.url} does not answer: {e}") from e
        info = self._check(r)
        self.sid: str = info["sid"]
        self.run_id: int = info["run_id"]
        # the service sends its config with secrets masked, and a digest of the whole of it;
        # the client keeps its own (the same file) once open_rig has compared the two
        self.cfg = cfg
        self.service_config: dict[str, Any] = info["config"]
        self.service_digest: str = info["config_digest"]
        self.store = StoreRef(info["store"])
        self.journal_path = Path(info["journal"])
        self.results = Path(info["results"])
        self._heartbeat_s = float(info["heartbeat_s"])
        self._stop_beat = threading.Event()
        self.progress: dict[str, int] = {}
        self._beat = threading.Thread(target=self._heartbeats, name="rig-heartbeat", daemon=True)
        self._beat.start()

    # --- transport ----------------------------------------------------------------------------
    def _check(self, r: Any) -> Any:
        try:
            data = r.json()
        except ValueError:
            raise ServiceError(f"the rig service at {self.url} answered {r.status_code}: "
                               f"{r.text[:200]}") from None
        if r.status_code >= 400:
            raise codec.error_from_wire(data if isinstance(data, dict) else {})
        return data

    def _request(self, method: str, path: str, body: Any = None,
                 timeout: float | None = None) -> Any:
        import httpx

        if self._closed:
            raise TestError("this rig is closed; open a new one with open_rig()")
        kw: dict[str, Any] = {} if body is None else {"json": body}
        if timeout is not None:
            kw["timeout"] = timeout
        try:
            r = self._http.request(method, f"/v1/sessions/{self.sid}{path}", **kw)
        except httpx.HTTPError as e:
            raise ServiceError(f"the rig service at {self.url} is gone ({type(e).__name__}: "
                               f"{e}); `rig serve status` shows whether it runs, its log is "
                               f"in {self.results}") from None
        return self._check(r)

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            data = self._request("POST", f"/call/{method}", kwargs)
        except KeyboardInterrupt:
            self._cancel_after_interrupt(kwargs)
            raise
        except Cancelled as e:
            raise KeyboardInterrupt(str(e)) from None
        return codec.decode(data["result"])

    def _cancel_after_interrupt(self, kwargs: dict[str, Any]) -> None:
        """A Ctrl-C here: cancel the call in the service (its cycle ends aborted)."""
        import httpx

        terminals = kwargs.get("terminals", kwargs.get("terminal"))
        if isinstance(terminals, str):
            terminals = None if terminals == "all" else [terminals]
        with contextlib.suppress(httpx.HTTPError, ServiceError, TestError):
            self._http.post(f"/v1/sessions/{self.sid}/cancel",
                            json={"terminals": terminals}, timeout=5.0)

    def _heartbeats(self) -> None:
        import httpx

        while not self._stop_beat.wait(max(0.5, self._heartbeat_s / 3)):
            try:
                r = self._http.post(f"/v1/sessions/{self.sid}/heartbeat", timeout=5.0)
                if r.status_code == 200:
                    self.progress = r.json().get("progress") or {}
                elif r.status_code == 400:  # the service ended this session
                    self.ended = str(r.json().get("message", "ended by the service"))
                    return
            except httpx.HTTPError as e:
                log.debug("heartbeat failed: %s", e)

    # --- the notebook API ---------------------------------------------------------------------
    @property
    def terminals(self) -> list[str]:
        return list(self.cfg.terminals)

    def power_on(self, terminal: str) -> int:
        """Switch the terminal's power on; returns the cycle's id."""
        return self._call("power_on", terminal=terminal)

    def power_off(self, terminal: str) -> None:
        """Switch the terminal's power off (the open cycle, if any, ends)."""
        self._call("power_off", terminal=terminal)

    def power_cycle(self, terminal: str, off_s: float | None = None) -> int:
        """Off, wait ``off_s`` (config default), on: one cycle; returns its id."""
        return self._call("power_cycle", terminal=terminal, off_s=off_s)

    def wait_signon(self, terminal: str, timeout_s: float = 60.0) -> Any:
        """Wait until READY (or gave up, or ``timeout_s``); the cycle's :class:`SignOn`."""
        return self._call("wait_signon", terminal=terminal, timeout_s=timeout_s)

    def ensure_ready(self, terminal: str, timeout_s: float = 60.0) -> Any:
        """Power-cycle and sign on unless the terminal's ECR says READY already."""
        return self._call("ensure_ready", terminal=terminal, timeout_s=timeout_s)

    def signon_series(self, terminals: str | Iterable[str] = "all", n: int = 10,
                      off_s: float | None = None, timeout_s: float = 60.0,
                      progress: bool = True) -> Any:
        """Power-cycle each terminal ``n`` times (in parallel) and wait for sign-on each
        time; a pandas DataFrame, one row per cycle. A terminal that fails stops alone."""
        import pandas as pd
        from tqdm.auto import tqdm

        names = self.terminals if terminals == "all" else (
            [terminals] if isinstance(terminals, str) else list(terminals))
        bar = tqdm(total=n * len(names), desc="sign-on cycles", unit="cycle",
                   disable=not progress)
        done = threading.Event()

        def follow() -> None:  # the heartbeat carries the series' progress
            while not done.wait(0.5):
                p = self.progress
                if p.get("done", 0) > bar.n:
                    bar.update(p["done"] - bar.n)
                    bar.set_postfix(ok=p.get("ok", 0), refresh=False)

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        try:
            rows = self._call("series_rows", terminals=names, n=n, off_s=off_s,
                              timeout_s=timeout_s)
        finally:
            done.set()
            bar.update(max(0, len(rows) - bar.n) if "rows" in locals() else 0)
            bar.close()
        return pd.DataFrame(rows)

    @contextlib.contextmanager
    def fault(self, terminal: str, *faults: Any) -> Iterator[list[dict[str, Any]]]:
        """Hold ``faults`` on ``terminal`` for the ``with`` block (each on its window); always
        off at the end, on exceptions and Ctrl-C too. Yields the armed faults' ids."""
        from .faults.spec import Fault

        for f in faults:
            if not isinstance(f, Fault):
                raise TestError(f"{f!r} is not a fault; use the classes of rig.faults")
        got = self._request("POST", "/faults", {
            "terminal": terminal, "faults": [codec.fault_to_wire(f) for f in faults]})
        armed = [{"id": i} for i in got["ids"]]
        try:
            yield armed
        finally:
            if self.ended is None:  # an ended session's faults were turned off already
                occ = self._request("DELETE", f"/faults/{got['handle']}")["occurrences"]
                for a, o in zip(armed, occ, strict=False):
                    a["occurrences"] = o

    def recovery(self, terminal: str, fault: Any, during: str = "signon",
                 timeout_s: float = 120.0) -> Any:
        """Inject ``fault`` during one phase and measure the recovery: a ``Recovery``."""
        return self._call("recovery", terminal=terminal, fault=codec.fault_to_wire(fault),
                          during=during, timeout_s=timeout_s)

    def scenario(self, sc: Any, terminal: str) -> Any:
        """Run a scenario (:class:`~rig.faults.scenarios.Scenario`) and judge it: a Verdict."""
        return self._call("scenario", sc=sc.model_dump(mode="json"), terminal=terminal)

    def sale(self, terminal: str, amount: str = "1.00", card: str = "cup_debit",
             entry: str = "chip", *, txn: str = "sale", swipe_speed_mm_s: float | None = None,
             tap_dwell_ms: float | None = None, timeout_s: float = 60.0,
             faults: Iterable[Any] = ()) -> Any:
        """A sale through ECR and the robot; a ``SaleResult`` with its figures."""
        return self._call("sale", terminal=terminal, amount=amount, card=card, entry=entry,
                          txn=txn, swipe_speed_mm_s=swipe_speed_mm_s, tap_dwell_ms=tap_dwell_ms,
                          timeout_s=timeout_s, faults=[codec.fault_to_wire(f) for f in faults])

    def balance(self, terminal: str, card: str = "cup_debit", entry: str = "chip") -> Any:
        """Balance inquiry; the ``SaleResult``'s ``balance`` is in minor units."""
        return self._call("balance", terminal=terminal, card=card, entry=entry)

    def settle(self, terminal: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Settle the terminal's batch (0500); the host checks the totals."""
        return self._call("settle", terminal=terminal, timeout_s=timeout_s)

    def card_check(self, card: str | None = None, reader: str | None = None,
                   contactless: bool = False) -> Any:
        """Check a card through PC/SC (in the service, which owns the readers)."""
        return self._call("card_check", card=card, reader=reader, contactless=contactless)

    def status(self) -> dict[str, Any]:
        """Instruments (identity or error) and terminals (output, console, state)."""
        return self._call("status")

    def keypad(self, terminal: str, *keys: str) -> dict[str, Any]:
        """The robot presses ``keys`` on the terminal's keypad (``"SALE", "1", "0", "0",
        "ENTER"``), as its profile's keypad map says; what was pressed."""
        return self._call("keypad", terminal=terminal, keys=list(keys))

    def robot_action(self, action: str) -> str:
        """``status`` / ``home`` / ``park`` the card robot."""
        return self._call("robot_action", action=action)

    def clear_faults(self) -> dict[str, Any]:
        """Turn every fault on the lab off; the clients holding faults are ended. Returns
        ``{"undone": [...], "stopped_pids": [...]}``."""
        return self._call("clear_faults")

    def service_status(self) -> dict[str, Any]:
        """The service: pid, URL, uptime, clients, leases, terminals' cycles."""
        return self._check(self._http.get("/v1/status"))

    def lease(self, *terminals: str, note: str | None = None) -> Lease:
        """Exclusive use of ``terminals`` until released (``with rig.lease("T1"): ...``) or
        this client ends; others get a LeaseError naming this client and ``note``."""
        if not terminals:
            raise TestError("rig.lease(terminal, ...): name at least one terminal (or 'all')")
        return Lease(self, self._request("POST", "/leases", {"terminals": list(terminals),
                                                             "note": note}))

    def events(self, follow: bool = False, terminal: str | None = None) -> Iterator[Event]:
        """The timeline as it is recorded: recent events, or (``follow=True``) live from now."""
        import httpx
        from httpx_sse import connect_sse

        from .core.clock import ClockSource

        try:
            with connect_sse(self._http, "GET", "/v1/events",
                             params={"follow": follow, **({"terminal": terminal}
                                                          if terminal else {})}) as src:
                for sse in src.iter_sse():
                    item = json.loads(sse.data)
                    if item.get("kind") == "dropped":
                        log.warning("event stream: events up to seq %s were dropped (slow "
                                    "reader)", item.get("seq"))
                        continue
                    yield Event(item["mono_ns"], item["wall_ns"], EventKind(item["kind"]),
                                item["source"], item.get("terminal"), item.get("data") or {},
                                ClockSource(item["clock"]))
        except httpx.HTTPError as e:
            raise ServiceError(f"the rig service at {self.url}: event stream ended: {e}") from None

    # --- campaigns (they run in the service; this client only starts and follows them) -----
    def _service(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        try:
            return self._check(self._http.request(method, path, json=body, timeout=60.0))
        except httpx.HTTPError as e:
            raise ServiceError(f"the rig service at {self.url} is gone: {e}") from None

    def campaign(self, path: str | Path, *, follow: bool = True, progress: bool = True) -> Any:
        """Run a campaign file in the service; with ``follow``, wait for its end showing
        progress (a Ctrl-C asks it to stop safely). Its status: run_id, state, counts..."""
        st = self._service("POST", "/v1/campaigns", {"path": str(Path(path).resolve())})
        return self.follow_campaign(st["run_id"], progress=progress) if follow else st

    def follow_campaign(self, run_id: int, progress: bool = True) -> Any:
        """Wait for campaign run ``run_id`` to end (tqdm progress); Ctrl-C stops it safely."""
        import time as _time

        from tqdm.auto import tqdm

        st = self._service("GET", f"/v1/campaigns/{run_id}")
        bar = tqdm(total=st.get("planned"), desc=f"campaign {st['campaign']}", unit="cycle",
                   disable=not progress)
        try:
            while st["state"] == "running":
                try:
                    _time.sleep(1.0)
                except KeyboardInterrupt:
                    self._service("POST", f"/v1/campaigns/{run_id}/stop")
                st = self._service("GET", f"/v1/campaigns/{run_id}")
                done = st["completed"] + st["failed"] + st["aborted"]
                bar.update(done - bar.n)
                bar.set_postfix(failed=st["failed"], aborted=st["aborted"], refresh=False)
        finally:
            bar.close()
        return st

    def campaigns(self) -> Any:
        """Every campaign run of the lab, with its counts (a DataFrame)."""
        import pandas as pd

        return pd.DataFrame(self._service("GET", "/v1/campaigns"))

    def stop_campaign(self, run_id: int) -> Any:
        """Stop a campaign safely (resumable with ``resume_campaign``)."""
        return self._service("POST", f"/v1/campaigns/{run_id}/stop")

    def resume_campaign(self, run_id: int, *, follow: bool = True) -> Any:
        """Continue a stopped or interrupted campaign at its next planned cycle."""
        st = self._service("POST", f"/v1/campaigns/{run_id}/resume")
        return self.follow_campaign(run_id) if follow else st

    def flush(self) -> None:
        """Nothing to do here: the service commits a cycle's events before its end marker."""

    def stop(self, terminals: Iterable[str] | None = None) -> None:
        """Cancel this client's running calls (thread-safe)."""
        self._request("POST", "/cancel", {"terminals": list(terminals) if terminals else None})

    # --- teardown -----------------------------------------------------------------------------
    def close(self, state: str = "completed") -> None:
        """End this client's session (its run gets ``state``). Idempotent."""
        import httpx

        if self._closed:
            return
        self._stop_beat.set()
        with contextlib.suppress(httpx.HTTPError):
            self._http.delete(f"/v1/sessions/{self.sid}", params={"state": state}, timeout=30.0)
        self._closed = True
        self._http.close()

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, et: type[BaseException] | None, *_: object) -> None:
        self.close("completed" if et is None else
                   "interrupted" if issubclass(et, KeyboardInterrupt) else "failed")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stop_beat.set()

    def __repr__(self) -> str:
        return f"<Rig lab={self.cfg.name!r} run={self.run_id} service={self.url}>"


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two config dumps differ (dotted paths), for a clear mismatch error."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [path]


def connect(config: str | Path | LabConfig | None = None, *,
            results: str | Path | None = None, start_lab: bool | None = None,
            spawn_if_missing: bool = True) -> tuple[dict[str, Any], Path | None, LabConfig]:
    """The lab's service info (pid, url, token), starting a detached service if none runs."""
    from .control.bench import results_dir

    config = config or os.environ.get("RIG_CONFIG") or DEFAULT_CONFIG
    res = results_dir(results).resolve()
    if isinstance(config, LabConfig):
        cfg, path, temp = config, None, True
    else:
        cfg, path, temp = load_lab(config), Path(config).resolve(), False
    paths = Paths(res, cfg.name)
    info = read_info(paths)
    if info is not None:
        return info, path, cfg
    if not spawn_if_missing:
        raise ServiceError(f"no rig service runs for lab {cfg.name} (results {res}); start "
                           f"one with `rig serve {path or '<config>'}`")
    if temp:  # a config given as an object: the service reads it from a 0600 file, then
        # deletes it (it holds keys and passwords)
        from ruamel.yaml import YAML

        res.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{cfg.name}-client-", suffix=".yaml", dir=res)
        with os.fdopen(fd, "w") as f:
            YAML(typ="safe").dump(cfg.model_dump(mode="json"), f)
        path = Path(name)
    idle = float(os.environ.get("RIG_SERVICE_IDLE_S", DEFAULT_IDLE_S))
    assert path is not None
    proc = spawn(path, res, idle_s=idle, start_lab=start_lab, delete_config=temp)
    try:
        return wait_ready(paths, proc), path, cfg
    except BaseException:
        if proc.poll() is None and not read_info(paths):
            proc.kill()
        raise


def open_rig(config: str | Path | LabConfig | None = None, *, label: str | None = None,
             results: str | Path | None = None, start_lab: bool | None = None,
             note: str | None = None, kind: str = "notebook") -> Rig:
    """Open a lab: ``open_rig("configs/labs/virtual.yaml")``. Connects to the lab's rig
    service on this host, starting one (detached; it starts the virtual lab) if none runs."""
    info, path, cfg = connect(config, results=results, start_lab=start_lab)
    rig = Rig(info["url"], cfg, token=info.get("token"), label=label, kind=kind, note=note,
              config_path=path)
    diff = _differences(cfg.snapshot(), rig.service_config)
    if not diff and rig.service_digest != cfg.digest():
        diff = ["a terminal's tmk or operator password"]
    if diff:
        rig.close()
        raise ServiceError(
            f"the rig service for lab {cfg.name} (pid {info['pid']}) runs with a different "
            f"config ({', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''} differ); stop it "
            f"with `rig serve stop --config {path}` or use another results directory")
    return rig
