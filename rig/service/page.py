"""``GET /``: the service's live page, and ``GET /v1/live``, the little JSON it needs beyond
``/v1/status`` and ``/v1/campaigns``.

The page is one constant, self-contained HTML document (no external asset; its Content
Security Policy allows nothing else): it holds no data itself and fills itself by fetching the
three JSON routes every 2 s. With a token (the service bound to a non-loopback address), the
page is opened as ``/?token=<token>``: for ``GET /`` alone the ``token`` query parameter stands
for the ``Authorization: Bearer`` header the service's guard checks, and the page's script
sends that header on every fetch. Without the right token ``/`` is a 401 like every route.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..timeline.store import open_readonly
from .hub import Hub
from .metrics import SoakTally, shown_campaigns

N_FAILURES = 20  # latest failures on the page
N_EVENTS = 15  # latest notable events on the page
FIGURE_WINDOW = 500  # latest cycles / sales read for each terminal's latest figures
NOTABLE = {"health", "pause", "resume", "signon_fail", "card_fail", "card_fallback",
           "protocol_error", "error", "robot_alarm", "auth_result"}

_STYLE = """
body{font:14px/1.35 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#555}.empty{color:#888;font-style:italic}
#error{background:#fdd;border:1px solid #c66;padding:4px 8px;margin:.5em 0}
.good,.completed{color:#070}.suspect,.waiting,.paused{color:#a60}
.bad,.quarantined,.failed,.interrupted{color:#b00;font-weight:600}
.running{color:#05a}.small{font-size:.9em;color:#555}
"""

_SCRIPT = """
"use strict";
const TOKEN = new URLSearchParams(location.search).get("token");
const HEADERS = TOKEN ? {"Authorization": "Bearer " + TOKEN} : {};
let refreshes = 0;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : String(k ?? ""));
  return e;
}
function table(id, head, rows, empty) {
  const box = document.getElementById(id);
  if (!rows.length) { box.replaceChildren(el("p", {class: "empty"}, empty)); return; }
  const t = el("table", {}, el("tr", {}, ...head.map(h => el("th", {}, h))));
  for (const r of rows) t.append(r);
  box.replaceChildren(t);
}
function td(v, cls) { return el("td", {class: cls}, v); }
function num(v, digits) {
  return (v === null || v === undefined) ? "\\u2013" : Number(v).toFixed(digits ?? 3);
}
function when(s) { return s ? new Date(s * 1000).toTimeString().slice(0, 8) : "\\u2013"; }
function dur(s) {
  s = Math.floor(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
}
function classes(by) {
  const parts = Object.entries(by || {}).filter(([, n]) => n).map(([c, n]) => c + " " + n);
  return parts.length ? parts.join(", ") : "\\u2013";
}
async function getJson(path) {
  const r = await fetch(path, {headers: HEADERS, cache: "no-store"});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status + " " + (await r.text()).slice(0, 200));
  return r.json();
}

function render(st, campaigns, live) {
  document.title = "posrig \\u2013 " + st.lab;
  document.getElementById("lab").textContent = st.lab;
  document.getElementById("meta").textContent = "service pid " + st.pid + " \\u00b7 up " +
    dur(st.uptime_s) + " \\u00b7 " + st.url + " \\u00b7 updated " +
    new Date().toTimeString().slice(0, 8);
  const names = Object.fromEntries(campaigns.map(c => [c.run_id, c.campaign]));
  const shown = campaigns.filter(c => c.state === "running").concat(
    campaigns.filter(c => c.state !== "running").slice(-10)).sort((a, b) => b.run_id - a.run_id);
  table("campaigns", ["run", "campaign", "label", "state", "progress", "completed", "failed",
                      "aborted", "failures by class", "note"],
    shown.map(c => {
      const done = c.completed + c.failed + c.aborted;
      const prog = el("td", {}, c.planned ? el("progress", {max: c.planned, value: done}) : "",
                      " " + done + " / " + (c.planned ?? "\\u221e"));
      return el("tr", {"data-run": c.run_id}, td(c.run_id, "n"), td(c.campaign), td(c.label),
        td(c.state, c.state), prog, td(c.completed, "n"), td(c.failed, "n"),
        td(c.aborted, "n"), td(classes((live.failures_by_class || {})[c.run_id])),
        td(c.stop_reason || (c.deadline ? "until " + c.deadline : "")));
    }), "no campaign in this lab's store yet");

  const workers = document.getElementById("workers");
  const running = campaigns.filter(c => c.state === "running" && c.terminals);
  if (!running.length) workers.replaceChildren(el("p", {class: "empty"}, "no campaign running"));
  else workers.replaceChildren(...running.map(c => {
    const box = el("div", {id: "workers-" + c.run_id});
    const t = el("table", {}, el("tr", {}, ...["terminal", "health", "state", "cycle", "case",
      "completed", "failed", "aborted", "failures"].map(h => el("th", {}, h))));
    for (const w of c.terminals) {
      const state = w.why ? w.state + ": " + w.why : w.state;
      t.append(el("tr", {"data-terminal": w.terminal}, td(w.terminal), td(w.health, w.health),
        td(state, w.state), td(w.index ?? "\\u2013", "n"), td(w.case ?? "\\u2013"),
        td(w.completed, "n"), td(w.failed, "n"), td(w.aborted, "n"), td(classes(w.failures))));
    }
    box.append(el("h3", {}, c.campaign + " (run " + c.run_id + ")"), t);
    return box;
  }));

  table("terminals", ["terminal", "open cycle", "leased by", "boot_s", "signon_req_s",
                      "ready_s", "last sign-on", "card_to_result_s", "last sale"],
    Object.entries(st.terminals).map(([t, s]) => {
      const f = (live.figures || {})[t] || {};
      const cyc = s.cycle ? s.kind + " " + s.cycle + (s.owner ? " (" + s.owner + ")" : "") : "idle";
      const lease = s.leased_by ? s.leased_by + (s.lease_note ? " \\u2013 " + s.lease_note : "")
                                : "\\u2013";
      return el("tr", {"data-terminal": t}, td(t), td(cyc), td(lease), td(num(f.boot_s), "n"),
        td(num(f.signon_req_s), "n"), td(num(f.ready_s), "n"),
        td(f.signon_at ? when(f.signon_at) + (f.ok === false ? " failed: " + f.error : "") :
           "\\u2013", f.ok === false ? "failed" : ""),
        td(num(f.card_to_result_s), "n"),
        td(f.sale_outcome ? f.sale_outcome + (f.sale_rc ? " rc " + f.sale_rc : "") : "\\u2013"));
    }), "no terminal");

  table("leases", ["id", "terminals", "held by", "note", "since"],
    st.leases.map(x => el("tr", {}, td(x.id, "n"), td(x.terminals.join(", ")),
      td(x.who + (x.implicit ? " (one call)" : "")), td(x.note ?? ""), td(when(x.since)))),
    "no lease");
  table("clients", ["session", "who", "label", "note", "run", "since", "calls"],
    st.clients.map(c => el("tr", {}, td(c.sid), td(c.who), td(c.label ?? ""), td(c.note ?? ""),
      td(c.run_id, "n"), td(when(c.since)), td(c.calls_in_flight, "n"))),
    "no client session");
  table("failures", ["ended", "campaign", "terminal", "cycle", "case", "state", "class",
                     "error"],
    (live.failures || []).map(f => el("tr", {}, td(when(f.ended)),
      td((names[f.run_id] ?? "") + " (run " + f.run_id + ")"), td(f.terminal), td(f.idx, "n"),
      td(f.case), td(f.state, f.state), td(f.class ?? ""), td(f.error ?? ""))),
    "no failure");
  table("events", ["time", "kind", "terminal", "data"],
    (live.events || []).map(e => el("tr", {}, td(when(e.wall_ns / 1e9)), td(e.kind),
      td(e.terminal ?? ""), td(JSON.stringify(e.data).slice(0, 200), "small"))),
    "no notable event yet");
}

async function refresh() {
  const banner = document.getElementById("error");
  try {
    const [st, campaigns, live] = await Promise.all(
      [getJson("v1/status"), getJson("v1/campaigns"), getJson("v1/live")]);
    render(st, campaigns, live);
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    banner.hidden = true;
  } catch (e) {
    banner.textContent = "cannot reach the rig service: " + e.message;
    banner.hidden = false;
  } finally {
    setTimeout(refresh, 2000);
  }
}
refresh();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>posrig</title><style>{_STYLE}</style></head>
<body data-refreshes="0">
<h1>posrig &middot; lab <span id="lab">&hellip;</span></h1>
<div id="meta" class="meta">loading&hellip;</div>
<div id="error" hidden></div>
<h2>Campaigns</h2><div id="campaigns"></div>
<h2>Running campaigns: terminals</h2><div id="workers"></div>
<h2>Terminals and latest figures (s)</h2><div id="terminals"></div>
<h2>Leases</h2><div id="leases"></div>
<h2>Clients</h2><div id="clients"></div>
<h2>Latest failures</h2><div id="failures"></div>
<h2>Latest events</h2><div id="events"></div>
<script>{_SCRIPT}</script>
</body></html>
"""

CSP = (f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


class QueryToken:
    """ASGI middleware: on ``GET /`` only, ``?token=`` becomes the ``Authorization: Bearer``
    header (a browser cannot send a header when it opens a link). Added after the service's
    guard, it runs before it; every other route still needs the header itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET",
                                                                                     "HEAD"):
            token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            headers = list(scope.get("headers", []))
            if token and not any(k.lower() == b"authorization" for k, _ in headers):
                headers.append((b"authorization", f"Bearer {token[0]}".encode("latin-1")))
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def _figures(db: Path) -> dict[str, dict[str, Any]]:
    """Each terminal's latest sign-on figures and latest sale (from the last cycles / sales)."""
    out: dict[str, dict[str, Any]] = {}
    if not db.exists():
        return out
    with closing(open_readonly(db)) as con:
        for terminal, end_ns, result_json in con.execute(
                "SELECT terminal, end_wall_ns, result_json FROM cycles WHERE id > (SELECT "
                "coalesce(max(id), 0) FROM cycles) - ? AND kind='signon' AND end_wall_ns IS NOT "
                "NULL ORDER BY id DESC", (FIGURE_WINDOW,)):
            if terminal in out:
                continue
            r = json.loads(result_json or "{}")
            out[terminal] = {"boot_s": r.get("boot_s"), "signon_req_s": r.get("signon_req_s"),
                             "ready_s": r.get("ready_s"), "ok": r.get("ok"),
                             "error": r.get("error"), "signon_at": end_ns / 1e9}
        sold: set[str] = set()
        for terminal, outcome, rc, result_json in con.execute(
                "SELECT terminal, outcome, rc, result_json FROM sales WHERE id > (SELECT "
                "coalesce(max(id), 0) FROM sales) - ? ORDER BY id DESC", (FIGURE_WINDOW,)):
            if terminal in sold:
                continue
            sold.add(terminal)
            r = json.loads(result_json or "{}")
            out.setdefault(terminal, {}).update(card_to_result_s=r.get("card_to_result_s"),
                                                sale_outcome=outcome, sale_rc=rc)
    return out


def _events(hub: Hub) -> list[dict[str, Any]]:
    """The latest notable events (health, pauses, faults, failures, results), newest first."""
    out: list[dict[str, Any]] = []
    for item in reversed(hub.bus.recent()):
        if item.get("kind") in NOTABLE:
            out.append(item)
            if len(out) >= N_EVENTS:
                break
    return out


def router(hub: Hub, tally: SoakTally) -> APIRouter:
    """``GET /`` (the page) and ``GET /v1/live`` (failures, figures, events)."""
    r = APIRouter()
    db = Path(hub.bench.store.path)

    @r.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP,
                                           "Cache-Control": "no-store",
                                           "Referrer-Policy": "no-referrer"})

    @r.get("/v1/live")
    def live() -> dict[str, Any]:
        names = {c["run_id"]: c["name"] for c in shown_campaigns(db)}
        tally.update(names)
        with tally.lock:
            by_class = tally.failures_by_class()
            failures = list(tally.failures)[-N_FAILURES:][::-1]
        return {"now": time.time(),
                "failures_by_class": {str(k): v for k, v in by_class.items() if k in names},
                "failures": [{**f, "campaign": names.get(f["run_id"])} for f in failures],
                "figures": _figures(db), "events": _events(hub)}

    return r


def mount(app: FastAPI, hub: Hub, tally: SoakTally) -> None:
    """Add the page, ``/v1/live`` and the ``?token=`` translation to ``app``."""
    app.add_middleware(QueryToken)
    app.include_router(router(hub, tally))
