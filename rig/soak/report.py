"""The morning report of a campaign run: one JSON document, and one self-contained HTML file.

Everything comes from the store (read-only, so it works while a campaign still writes):
the run and its campaign, every planned cycle (``soak_cycles``) with its figures, health
changes and pauses (events). The HTML embeds its images (PNG as data URIs) and opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import TestError
from ..timeline.store import open_readonly

FIGURES = ("boot_s", "signon_req_s", "signon_host_s", "ready_s", "card_to_auth_s",
           "auth_host_s", "card_to_result_s")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """One planned cycle as a flat record: its state, class and figures."""
    res = json.loads(row["result_json"] or "{}")
    sign = res.get("signon") or {}
    sales = res.get("sales") or []
    out: dict[str, Any] = {
        "terminal": row["terminal"], "cycle": row["idx"], "case": row["case_id"],
        "state": row["state"], "class": row["class"],
        "started_wall_ns": row["started_wall_ns"],
        "duration_s": ((row["ended_mono_ns"] - row["started_mono_ns"]) / 1e9
                       if row["ended_mono_ns"] else None),
        "error": res.get("error"), "under_fault": res.get("under_fault"),
        "verdict": res.get("verdict"),
        "sales": len(sales), "approved": sum(1 for s in sales if s.get("outcome") == "approved"),
        "rcs": sorted({str(s.get("rc")) for s in sales if s.get("rc")}),
        "first_cycle_id": row["first_cycle_id"], "last_cycle_id": row["last_cycle_id"]}
    for f in ("boot_s", "signon_req_s", "signon_host_s", "ready_s"):
        out[f] = sign.get(f)
    for f in ("card_to_auth_s", "auth_host_s", "card_to_result_s"):
        vals = [s.get(f) for s in sales if s.get(f) is not None]
        out[f] = float(np.median(vals)) if vals else None
    return out


def _pcts(vals: list[float]) -> dict[str, float | int] | None:
    if not vals:
        return None
    a = np.asarray(vals, dtype=float)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def build(db: str | Path, run_id: int) -> dict[str, Any]:
    """The report as data: ``{"run", "campaign", "cycles", "summary", "health", "pauses"}``."""
    from ..analysis.stats import wilson

    con = open_readonly(db)
    try:
        import sqlite3

        con.row_factory = sqlite3.Row
        run = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        camp = con.execute("SELECT * FROM campaigns WHERE run_id=?", (run_id,)).fetchone()
        if run is None or camp is None:
            raise TestError(f"run {run_id} is not a campaign run in {db}")
        rows = con.execute("SELECT * FROM soak_cycles WHERE run_id=? ORDER BY started_mono_ns",
                           (run_id,)).fetchall()
        marks = con.execute("SELECT kind, terminal, wall_ns, data_json FROM events WHERE "
                            "run_id IN (?, (SELECT min(id) FROM runs)) AND kind IN ('health', "
                            "'pause', 'resume') ORDER BY seq", (run_id,)).fetchall()
    finally:
        con.close()
    cycles = [_flat(dict(r)) for r in rows]
    mine = [dict(m) for m in marks if json.loads(m["data_json"]).get("run") == run_id]
    health = [{"terminal": m["terminal"], "wall_ns": m["wall_ns"],
               **json.loads(m["data_json"])} for m in mine if m["kind"] == "health"]
    pauses = [{"terminal": m["terminal"], "kind": m["kind"], "wall_ns": m["wall_ns"],
               **json.loads(m["data_json"])} for m in mine if m["kind"] != "health"]
    terminals = json.loads(camp["terminals_json"])
    planned = camp["planned"] * len(terminals) if camp["planned"] is not None else None
    by_state = {s: sum(1 for c in cycles if c["state"] == s)
                for s in ("completed", "failed", "aborted")}
    by_class = {k: sum(1 for c in cycles if c["class"] == k)
                for k in ("terminal", "infrastructure", "test")}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cycles:
        groups.setdefault((c["case"], c["terminal"]), []).append(c)
    per = []
    for (case, term), cs in sorted(groups.items()):
        judged = [c for c in cs if c["state"] != "aborted"]
        ok = sum(1 for c in judged if c["state"] == "completed")
        rate, lo, hi = wilson(ok, len(judged)) if judged else (np.nan, np.nan, np.nan)
        per.append({"case": case, "terminal": term, "cycles": len(cs), "ok": ok,
                    "success": None if not judged else float(rate),
                    "success_ci": None if not judged else [float(lo), float(hi)],
                    **{f: _pcts([c[f] for c in cs if c[f] is not None and c["state"] ==
                                 "completed"]) for f in FIGURES}})
    quarantined = sorted({h["terminal"] for h in health if h.get("state") == "quarantined"})
    if by_class["terminal"] == 0 and not quarantined and (
            planned is None or sum(by_state.values()) >= planned):
        verdict = "pass: every planned cycle ran; no terminal failure"
    elif by_class["terminal"] == 0 and not quarantined:
        verdict = f"incomplete: {sum(by_state.values())} of {planned} planned cycles ran"
    else:
        verdict = (f"attention: {by_class['terminal']} terminal failures"
                   + (f"; quarantined: {', '.join(quarantined)}" if quarantined else ""))
    return {
        "run": {"run_id": run_id, "label": run["label"], "state": run["state"],
                "lab": run["lab"], "host": run["host"],
                "started_wall_ns": run["started_wall_ns"], "ended_wall_ns": run["ended_wall_ns"],
                "config": json.loads(run["config_json"])},
        "campaign": {"name": camp["name"], "label": camp["label"], "state": camp["state"],
                     "source": camp["source"], "terminals": terminals, "planned": planned,
                     "definition": json.loads(camp["campaign_json"])},
        "cycles": cycles,
        "summary": {"verdict": verdict, "planned": planned, **by_state,
                    "failures_by_class": by_class, "quarantined": quarantined, "by_case": per},
        "health": health, "pauses": pauses,
    }


# --- HTML ---------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plots(doc: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    cycles = [c for c in doc["cycles"] if c["state"] == "completed"]
    cases = sorted({c["case"] for c in cycles})
    for f in ("ready_s", "signon_req_s", "card_to_result_s"):
        data = {case: [c[f] for c in cycles if c["case"] == case and c[f] is not None]
                for case in cases}
        data = {k: v for k, v in data.items() if v}
        if not data:
            continue
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3))
        for case, vals in data.items():
            xs = np.sort(vals)
            a.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=case)
        a.set_xlabel(f"{f} (s)")
        a.set_ylabel("ECDF")
        a.legend(fontsize=7)
        t0 = min(c["started_wall_ns"] for c in cycles)
        for case in data:
            pts = [((c["started_wall_ns"] - t0) / 3.6e12, c[f]) for c in cycles
                   if c["case"] == case and c[f] is not None]
            b.plot(*zip(*pts, strict=True), ".", label=case, markersize=4)
        b.set_xlabel("hours into the run")
        b.set_ylabel(f"{f} (s)")
        fig.suptitle(f"{f}: distribution by case, and against time of night", fontsize=10)
        out.append(_png(fig))
    return out


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, dict) and "p50" in v:
            return f"{v['p50']:.3f} / {v['p95']:.3f} / {v['p99']:.3f} (n={v['n']})"
        if isinstance(v, list):
            return ", ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in v)
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def timelines(db: str | Path, doc: dict[str, Any], most: int = 6) -> list[str]:
    """Event timelines (embedded PNGs) of the failed cycles and the slowest ones: each soak
    cycle's first store cycle (its power cycle and sign-on), drawn by rig.analysis.plots."""
    import matplotlib

    matplotlib.use("Agg")
    from ..analysis.load import load_run
    from ..analysis.plots import timeline

    failed = [c for c in doc["cycles"] if c["state"] == "failed" and c["first_cycle_id"]]
    slow = sorted((c for c in doc["cycles"] if c["ready_s"] is not None and c["first_cycle_id"]),
                  key=lambda c: -c["ready_s"])
    picked = (failed[: most // 2] + slow)[:most]
    if not picked:
        return []
    run = load_run(db, doc["run"]["run_id"])
    out = []
    for c in picked:
        try:
            fig = timeline(run, int(c["first_cycle_id"]))
        except (KeyError, ValueError):
            continue
        out.append(f"<h3>{html.escape(c['terminal'])} cycle {c['cycle']} ({html.escape(c['case'])}"
                   f", {c['state']})</h3>" + _png(fig))
    return out


def render_html(doc: dict[str, Any], cycle_timelines: list[str] | None = None) -> str:
    """One self-contained HTML page (images embedded)."""
    s, run, camp = doc["summary"], doc["run"], doc["campaign"]
    colour = "#1a7f37" if s["verdict"].startswith("pass") else "#b35900"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["started_wall_ns"] / 1e9))
    failed = [c for c in doc["cycles"] if c["state"] != "completed"]
    slowest = sorted((c for c in doc["cycles"] if c["ready_s"] is not None),
                     key=lambda c: -c["ready_s"])[:10]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(camp['name'])} run {run['run_id']}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
        "collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
        "text-align:left}h1{margin-bottom:0}.verdict{font-size:1.4em;padding:.5em;color:#fff;"
        f"background:{colour}}}</style></head><body>",
        f"<h1>{html.escape(camp['name'])} — {html.escape(camp['label'])}</h1>",
        f"<p>run {run['run_id']} on lab {html.escape(run['lab'])} ({html.escape(run['host'])}),"
        f" started {when}, state {html.escape(run['state'])}</p>",
        f"<p class='verdict'>{html.escape(s['verdict'])}</p>",
        f"<p>planned {s['planned']}, completed {s['completed']}, failed {s['failed']}, "
        f"aborted {s['aborted']}; failures by class: "
        + html.escape(", ".join(f"{k} {v}" for k, v in s["failures_by_class"].items()))
        + "</p>",
        "<h2>Per case and terminal</h2><p>success rate (Wilson 95 % CI); figures p50 / p95 / "
        "p99 s over completed cycles</p>",
        _table(s["by_case"], ["case", "terminal", "cycles", "ok", "success", "success_ci",
                              "ready_s", "signon_req_s", "signon_host_s", "card_to_result_s"]),
        "<h2>Distributions and the night</h2>", *_plots(doc),
        "<h2>Failed and aborted cycles</h2>",
        _table(failed, ["terminal", "cycle", "case", "state", "class", "error", "rcs",
                        "first_cycle_id", "last_cycle_id"]),
        "<h2>Slowest cycles (ready_s)</h2>",
        _table(slowest, ["terminal", "cycle", "case", "ready_s", "boot_s", "signon_req_s",
                         "first_cycle_id"]),
        "<h2>Timelines of failed and slowest cycles</h2>", *(cycle_timelines or []),
        "<h2>Scenario verdicts</h2>",
        _table([c for c in doc["cycles"] if c.get("verdict")],
               ["terminal", "cycle", "case", "verdict", "error"]),
        "<h2>Health changes and pauses</h2>",
        _table(doc["health"], ["terminal", "state", "why"]),
        _table(doc["pauses"], ["terminal", "kind", "why"]),
        "<h2>Campaign and lab config (secrets masked)</h2><details><summary>show</summary>"
        f"<pre>{html.escape(json.dumps(camp['definition'], indent=1))}</pre>"
        f"<pre>{html.escape(json.dumps(run['config'], indent=1))}</pre></details>",
        "</body></html>"]
    return "\n".join(parts)


def write_html(doc: dict[str, Any], path: str | Path, db: str | Path | None = None) -> Path:
    """Write the report; with the store (``db``), the slowest and failed cycles' timelines."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(doc, timelines(db, doc) if db else None), encoding="utf-8")
    return p
