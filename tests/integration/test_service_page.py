"""The service's live page (``/``, in a real headless Chromium) and ``/metrics``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rig.client import connect, open_rig
from rig.service import metrics
from rig.service.metrics import HubCollector, SoakTally
from rig.service.runtime import Paths, read_info
from rig.timeline.store import Store, open_readonly
from tests.labcfg import virtual_config, write_config
from tests.soakkit import campaign_file

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONSOLE = re.compile(r":CONSOLE[:(].*")


# --- helpers ------------------------------------------------------------------------------------
def _campaign(tmp: Path, lab: Path, *, cycles: int, name: str = "t-live",
              terminals: str = "all", signon_s: float = 5) -> Path:
    return campaign_file(tmp, lab, cycles=cycles, name=name, label="fw-live",
                         terminals=terminals, signon_s=signon_s)


class Api:
    """The service's HTTP API with its token (if it has one)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.url = info["url"]
        self.headers = {"authorization": f"Bearer {info['token']}"} if "token" in info else {}

    def __call__(self, method: str, path: str, body: object = None) -> Any:
        r = httpx.request(method, self.url + path, json=body, headers=self.headers, timeout=60)
        assert r.status_code < 400, r.text
        return r.json() if r.headers["content-type"].startswith("application/json") else r.text

    def until(self, run: int, test: Any, timeout_s: float = 90) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            st = self("GET", f"/v1/campaigns/{run}")
            if test(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"campaign {run}: condition not met in {timeout_s} s: {st}")


def _metrics(text: str) -> dict[str, list[Any]]:
    """Family name -> its samples (the text must parse as Prometheus' format)."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _total(samples: list[Any], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def _chromium() -> str:
    """Debian's chromium; CI must have it (a failure there), elsewhere the test is skipped."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    why = "needs Debian's `chromium` package (apt-get install chromium; scripts/install-system.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"chromium is missing on CI: {why}")
    pytest.skip(why)


def _render(exe: str, url: str, profile: Path, budget_ms: int = 5000) -> tuple[str, list[str]]:
    """The page's DOM after ``budget_ms`` of (virtual) time, and its console messages."""
    p = subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
         f"--virtual-time-budget={budget_ms}", "--enable-logging=stderr", "--v=0", "--dump-dom",
         url], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout, CONSOLE.findall(p.stderr)


class Dom(HTMLParser):
    """The rows of the page's tables: (id of the nearest enclosing div, tr attributes, cells)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.divs: list[str | None] = []
        self.rows: list[tuple[str | None, dict[str, str | None], list[str]]] = []
        self.body: dict[str, str | None] = {}
        self.ids: dict[str, str] = {}
        self._cell: list[str] | None = None
        self._span: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "div":
            self.divs.append(a.get("id"))
        elif tag == "tr":
            self.rows.append((next((d for d in reversed(self.divs) if d), None), a, []))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "span" and a.get("id"):
            self._span = a["id"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.divs:
            self.divs.pop()
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1][2].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "span":
            self._span = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._span is not None:
            self.ids[self._span] = self.ids.get(self._span, "") + data

    def table(self, box: str) -> list[dict[str, str]]:
        """The rows of the table in div ``box`` as dicts by header."""
        rows = [(a, cells) for b, a, cells in self.rows if b == box]
        if not rows:
            return []
        head = rows[0][1]
        return [dict(zip(head, cells, strict=False), **{"@" + k: v or "" for k, v in a.items()})
                for a, cells in rows[1:]]


# --- /metrics -----------------------------------------------------------------------------------
def test_metrics_follow_a_campaign_and_match_the_store(lab, tmp_path):
    path, results = lab
    rig = open_rig(path, results=results, label="metrics-test")
    try:
        api = Api(connect(path, results=results)[0])
        held = rig.lease("T1", note="bench check")  # T1's worker waits for it
        run = api("POST", "/v1/campaigns", {"path": str(_campaign(tmp_path, path, cycles=6))})[
            "run_id"]
        api.until(run, lambda st: st["completed"] >= 3)
        first = _metrics(api("GET", "/metrics"))
        cycles = first["posrig_soak_cycles"]
        done1 = _total(cycles, "posrig_soak_cycles_total", campaign="t-live", run=str(run),
                       state="completed")
        assert done1 >= 3
        assert _total(cycles, "posrig_soak_cycles_total", terminal="T1") == 0
        assert _total(first["posrig_terminal_leased"], "posrig_terminal_leased",
                      terminal="T1") == 1
        assert _total(first["posrig_soak_worker_state"], "posrig_soak_worker_state",
                      terminal="T1", state="waiting") == 1
        assert _total(first["posrig_terminal_health"], "posrig_terminal_health",
                      terminal="T2", state="good") == 1
        assert _total(first["posrig_soak_campaign_state"], "posrig_soak_campaign_state",
                      run=str(run), state="running") == 1
        assert _total(first["posrig_soak_campaign_planned_cycles"],
                      "posrig_soak_campaign_planned_cycles", run=str(run)) == 24
        assert first["posrig_service_clients"][0].value >= 1
        assert first["posrig_service_uptime_seconds"][0].value > 0
        assert first["posrig_service_info"][0].labels["lab"] == "virtual"
        time.sleep(1.5)
        second = _metrics(api("GET", "/metrics"))
        assert _total(second["posrig_soak_cycles"], "posrig_soak_cycles_total",
                      state="completed") > done1, "the cycle counters should move"
        held.release()
        st = api.until(run, lambda st: st["state"] != "running", 120)
        assert st["state"] == "completed", st
    finally:
        rig.close()
    last = _metrics(api("GET", "/metrics"))
    con = open_readonly(results / "virtual.db")
    store = dict(con.execute("SELECT state, count(*) FROM soak_cycles WHERE run_id=? "
                             "GROUP BY state", (run,)).fetchall())
    for state in ("completed", "failed", "aborted"):
        assert _total(last["posrig_soak_cycles"], "posrig_soak_cycles_total", run=str(run),
                      state=state) == store.get(state, 0), state
    ready = sum(1 for (r,) in con.execute("SELECT result_json FROM soak_cycles WHERE run_id=?",
                                          (run,))
                if (json.loads(r or "{}").get("signon") or {}).get("ready_s") is not None)
    assert ready > 0
    assert _total(last["posrig_soak_ready_seconds"], "posrig_soak_ready_seconds_count") == ready
    assert _total(last["posrig_soak_ready_seconds"], "posrig_soak_ready_seconds_bucket",
                  le="+Inf") == ready
    assert _total(last["posrig_soak_cycles_in_flight"], "posrig_soak_cycles_in_flight") == 0
    assert last["posrig_scrape_duration_seconds"][0].value < 1.0


def _cycle(store: Store, run: int, terminal: str, idx: int, state: str = "completed",
           cls: str | None = None, ready: float | None = 0.5, sale: float | None = None) -> int:
    sid = store.start_soak_cycle(run, terminal, idx, "baseline")
    assert sid is not None
    if state != "started":
        result: dict[str, Any] = {"signon": {"ready_s": ready, "signon_req_s": 0.02}}
        if sale is not None:
            result["sales"] = [{"card_to_result_s": sale}]
        if cls:
            result["error"] = f"boom {idx}"
        store.end_soak_cycle(sid, state, result, cls=cls)
    return sid


def test_the_tally_reads_only_what_ended_since_and_counts_each_cycle_once(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(metrics, "WINDOW", 50)  # the first read: the last 50 cycles
    window = metrics.WINDOW
    store = Store(tmp_path / "lab.db")
    store.add_campaign(7, name="old", label="fw", source=None, campaign={}, terminals=["T1"],
                       planned=None)
    store.add_campaign(8, name="new", label="fw", source=None, campaign={},
                       terminals=["T2", "T3"], planned=None)
    for i in range(5):  # older than the window a new service reads: counted by the seed
        _cycle(store, 7, "T1", i)
    for i in range(window):
        _cycle(store, 8, "T2", i, ready=None)
    open_row = _cycle(store, 8, "T3", 0, state="started")
    tally = SoakTally(tmp_path / "lab.db")
    tally.update([7, 8])
    assert tally.counts[(7, "T1", "completed", None)] == 5  # via the seed (below the window)
    assert tally.counts[(8, "T2", "completed", None)] == window
    assert tally.in_flight == {(8, "T3"): 1}
    store.end_soak_cycle(open_row, "failed", {"error": "no sign-on",
                                              "signon": {"ready_s": 3.0}}, cls="terminal")
    _cycle(store, 8, "T3", 1, state="aborted", cls="infrastructure", ready=None)
    _cycle(store, 8, "T3", 2, sale=1.2)
    tally.update([7, 8])
    tally.update([7, 8])  # nothing new: nothing counted twice
    assert tally.counts[(8, "T3", "failed", "terminal")] == 1
    assert tally.counts[(8, "T3", "aborted", "infrastructure")] == 1
    assert tally.counts[(8, "T3", "completed", None)] == 1
    assert tally.counts[(8, "T2", "completed", None)] == window
    assert tally.in_flight == {}
    assert tally.failures_by_class()[8] == {"terminal": 1, "infrastructure": 1}
    assert [f["error"] for f in tally.failures][-2:] == ["no sign-on", "boom 1"]
    assert sum(tally.hist[("ready_s", "T3")].counts) == 2
    assert sum(tally.hist[("card_to_result_s", "T3")].counts) == 1

    hub = SimpleNamespace(
        cfg=SimpleNamespace(name="lab"), url="http://x", started=time.time() - 5, clients={},
        leases=SimpleNamespace(all=lambda: []), campaigns={},
        bench=SimpleNamespace(terminals=["T1", "T2", "T3"], store=store))
    registry = CollectorRegistry()
    registry.register(HubCollector(hub))  # type: ignore[arg-type]
    m = _metrics(generate_latest(registry).decode())
    assert _total(m["posrig_soak_failures"], "posrig_soak_failures_total", run="8",
                  terminal="T3", **{"class": "infrastructure"}) == 1
    assert _total(m["posrig_soak_cycles"], "posrig_soak_cycles_total", campaign="old",
                  state="completed") == 5
    buckets = {s.labels["le"]: s.value for s in m["posrig_soak_card_to_result_seconds"]
               if s.name.endswith("_bucket")}
    assert buckets["1.0"] == 0 and buckets["2.5"] == 1 and buckets["+Inf"] == 1
    assert _total(m["posrig_terminal_leased"], "posrig_terminal_leased") == 0


# --- the live page ------------------------------------------------------------------------------
def test_the_page_in_headless_chromium_shows_and_follows_the_running_campaigns(lab, tmp_path):
    exe = _chromium()
    path, results = lab
    rig = open_rig(path, results=results, label="page-test", note="watching the page")
    try:
        api = Api(connect(path, results=results)[0])
        rig.lease("T1", note="fw 9.9 on the bench")
        live = api("POST", "/v1/campaigns", {"path": str(_campaign(
            tmp_path, path, cycles=60, terminals="[T1, T2, T3]"))})["run_id"]
        bad = api("POST", "/v1/campaigns", {"path": str(_campaign(
            tmp_path, path, cycles=60, name="t-fail", terminals="[T4]", signon_s=0.01))})[
            "run_id"]
        before = api.until(live, lambda st: st["completed"] >= 2)["completed"]
        api.until(bad, lambda st: st["failed"] >= 2)
        t0 = time.monotonic()
        dom, console = _render(exe, api.url + "/", tmp_path / "chromium")
        took = time.monotonic() - t0
        page = Dom(dom)
        assert console == [], console
        assert int(page.body.get("data-refreshes") or 0) >= 2, (took, dom[:2000])
        assert page.ids.get("lab") == "virtual"
        assert re.search(r'id="error"[^>]*hidden', dom), dom
        camps = {r["@data-run"]: r for r in page.table("campaigns")}
        assert camps[str(live)]["campaign"] == "t-live", camps
        assert camps[str(live)]["state"] == "running"
        done, planned = (int(x) for x in camps[str(live)]["progress"].split(" / "))
        assert planned == 180 and done >= before
        assert camps[str(bad)]["campaign"] == "t-fail"
        assert re.fullmatch(r"terminal \d+", camps[str(bad)]["failures by class"]), camps
        workers = {r["@data-terminal"]: r for r in page.table(f"workers-{live}")}
        assert sorted(workers) == ["T1", "T2", "T3"]
        assert workers["T1"]["state"].startswith("waiting: T1 is leased by"), workers["T1"]
        assert "fw 9.9 on the bench" in workers["T1"]["state"]
        assert workers["T2"]["health"] == workers["T3"]["health"] == "good", workers
        assert sum(int(w["completed"]) for w in workers.values()) >= before
        failing = page.table(f"workers-{bad}")
        assert [w["@data-terminal"] for w in failing] == ["T4"]
        assert int(failing[0]["failed"]) >= 2 and failing[0]["failures"].startswith("terminal")
        terms = {r["@data-terminal"]: r for r in page.table("terminals")}
        assert "fw 9.9 on the bench" in terms["T1"]["leased by"]
        assert "campaign t-fail" in terms["T4"]["leased by"]
        assert float(terms["T2"]["ready_s"]) > 0 and float(terms["T3"]["ready_s"]) > 0, terms
        assert any(r["terminals"] == "T1" and r["note"] == "fw 9.9 on the bench"
                   for r in page.table("leases"))
        assert any(r["label"] == "page-test" for r in page.table("clients"))
        failures = page.table("failures")
        assert failures and all(f["terminal"] == "T4" and f["class"] == "terminal"
                                for f in failures), failures
        assert "t-fail" in failures[0]["campaign"] and "sign-on" in failures[0]["error"]
        assert any(e["kind"] == "health" for e in page.table("events"))
        for run in (live, bad):
            api("POST", f"/v1/campaigns/{run}/stop")
        for run in (live, bad):
            api.until(run, lambda st: st["state"] != "running", 60)
    finally:
        rig.close()


def test_with_a_token_the_page_takes_it_from_its_url_and_sends_it(tmp_path, service_stop):
    exe = _chromium()
    path = write_config(virtual_config(tmp_path, time_scale=0.1), tmp_path / "lab.yaml")
    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rig", "--results", str(results), "serve", str(path),
         "--host", "127.0.0.2", "--idle-exit", "60"], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        info = None
        while time.monotonic() < end and not (info := read_info(Paths(results.resolve(),
                                                                      "virtual"))):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert info and "token" in info, info
        url, token = info["url"], info["token"]
        assert httpx.get(url + "/", timeout=10).status_code == 401
        assert httpx.get(url + "/?token=nope", timeout=10).status_code == 401
        r = httpx.get(url + "/", params={"token": token}, timeout=10)
        assert r.status_code == 200 and "default-src 'none'" in r.headers[
            "content-security-policy"]
        assert "virtual" not in r.text  # the page itself holds no data
        # the query token stands for the header on the page alone
        assert httpx.get(url + "/v1/live", params={"token": token}, timeout=10
                         ).status_code == 401
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.get(url + "/v1/live", headers=auth, timeout=10).status_code == 200
        assert httpx.get(url + "/metrics", timeout=10).status_code == 401
        assert "posrig_service_uptime_seconds" in httpx.get(url + "/metrics", headers=auth,
                                                            timeout=10).text
        dom, console = _render(exe, f"{url}/?token={token}", tmp_path / "chromium")
        page = Dom(dom)
        assert console == [], console
        assert int(page.body.get("data-refreshes") or 0) >= 2, dom[:2000]
        assert page.ids.get("lab") == "virtual"
        assert sorted(r["@data-terminal"] for r in page.table("terminals")) == [
            "T1", "T2", "T3", "T4"]
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)
