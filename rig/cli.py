"""The ``rig`` command. Renders with rich; the library itself never prints."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .core.errors import ConfigError, RigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="posrig: power-cycle POS terminals and time their sign-on.")
lab_app = typer.Typer(no_args_is_help=True, help="The virtual lab (rig.sim).")
host_app = typer.Typer(no_args_is_help=True, help="The acquirer host simulator.")
app.add_typer(lab_app, name="lab")
app.add_typer(host_app, name="host")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # an error names file:line: never wrap it

ConfigOpt = Annotated[str, typer.Option("--config", "-c", envvar="RIG_CONFIG",
                                        help="lab config YAML")]
DEFAULT_CONFIG = "configs/labs/virtual.yaml"


class _State:
    results: str | None = None
    label: str | None = None
    verbose: bool = False


state = _State()


@app.callback()
def _main(
    results: Annotated[str | None, typer.Option("--results", envvar="RIG_RESULTS",
                                                help="results directory (default ./results)")] = None,
    label: Annotated[str | None, typer.Option(help="run label, e.g. a firmware version")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    state.results, state.label, state.verbose = results, label, verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _open(config: str):
    """A client of the lab's rig service (started, detached, if none runs)."""
    from .client import open_rig

    return open_rig(config, label=state.label, results=state.results, kind="cli")


# --- the rig service ---------------------------------------------------------------------------
@app.command()
def serve(what: Annotated[str, typer.Argument(
              help="a lab config to serve (foreground), or 'status' / 'stop'")] = DEFAULT_CONFIG,
          config: ConfigOpt = DEFAULT_CONFIG,
          host: Annotated[str, typer.Option(help="bind address; other than loopback needs "
                                                 "the token in <results>/<lab>-service.token")]
          = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port (0: any free one)")] = 0,
          idle_exit: Annotated[float, typer.Option(help="exit after this long with no client "
                                                        "(0: never)")] = 0.0,
          no_lab: Annotated[bool, typer.Option("--no-lab", help="do not start the virtual lab")]
          = False,
          delete_config: Annotated[bool, typer.Option(hidden=True)] = False,
          as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The rig service for one lab: `rig serve CONFIG` runs it in the foreground (Ctrl-C stops
    it, leaving the safe state); `rig serve status` / `rig serve stop` for the running one."""
    from .config import load_lab
    from .control.bench import results_dir
    from .service.runtime import Paths, read_info
    from .service.runtime import serve as run_service

    if what in ("status", "stop"):
        paths = Paths(results_dir(state.results).resolve(), load_lab(config).name)
        info = read_info(paths)
        if info is None:
            if as_json:
                out.print_json(json.dumps({"running": False, "lab": paths.lab}))
            else:
                out.print(f"no rig service runs for lab {paths.lab} ({paths.results})")
            raise typer.Exit(0 if what == "stop" else 1)
        import httpx

        headers = {"authorization": f"Bearer {info['token']}"} if "token" in info else {}
        if what == "stop":
            httpx.post(f"{info['url']}/v1/shutdown", headers=headers, timeout=10.0)
            from .timeline.store import pid_alive

            end = time.monotonic() + 60
            while time.monotonic() < end and pid_alive(int(info["pid"]), info.get("proc_start")):
                time.sleep(0.1)
            out.print(f"rig service for lab {paths.lab} (pid {info['pid']}) stopped")
            return
        st = httpx.get(f"{info['url']}/v1/status", headers=headers, timeout=10.0).json()
        if as_json:
            out.print_json(json.dumps({"running": True, **st}))
            return
        out.print(f"[bold]{st['lab']}[/bold] pid {st['pid']} {st['url']} up {st['uptime_s']:.0f} s "
                  f"store {st['store']}", highlight=False)
        for c in st["clients"]:
            out.print(f"  client {c['who']} run {c['run_id']} {c.get('label') or ''}",
                      highlight=False)
        table = Table("terminal", "cycle", "leased by", "note")
        for t, info_t in st["terminals"].items():
            table.add_row(t, str(info_t["cycle"] or "-"), info_t["leased_by"] or "-",
                          info_t["lease_note"] or "")
        out.print(table)
        return
    raise typer.Exit(run_service(what, results=state.results, host=host, port=port,
                                 idle_s=idle_exit, start_lab=False if no_lab else None,
                                 delete_config=delete_config))


# --- soak campaigns ------------------------------------------------------------------------------
soak_app = typer.Typer(no_args_is_help=True, help="Overnight soak campaigns (run in the service).")
app.add_typer(soak_app, name="soak")


@functools.cache
def _service_of(lab_config: str | Path):
    """(base URL, headers) of the lab's rig service, starting one if none runs (found once per
    command: a campaign's progress polls it every second)."""
    from .client import connect

    info, _path, _cfg = connect(lab_config, results=state.results)
    headers = {"authorization": f"Bearer {info['token']}"} if "token" in info else {}
    return info["url"], headers


def _api(lab_config: str | Path, method: str, path: str, body: Any = None) -> Any:
    import httpx

    from .service import codec

    url, headers = _service_of(lab_config)
    r = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=60.0)
    data = r.json()
    if r.status_code >= 400:
        raise codec.error_from_wire(data)
    return data


def _follow(lab_config: str | Path, run_id: int, as_json: bool) -> dict[str, Any]:
    """Live progress of a campaign until it ends; Ctrl-C asks it to stop safely."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    st: dict[str, Any] = {}
    stopping = False
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err,
                  disable=as_json, transient=False) as bar:
        task = bar.add_task(f"campaign run {run_id}", total=None, info="")
        while True:
            try:
                st = _api(lab_config, "GET", f"/v1/campaigns/{run_id}")
                done = st["completed"] + st["failed"] + st["aborted"]
                health = " ".join(f"{w['terminal']}:{w['health']}"
                                  + (f"({w['state']})" if w["state"] not in ("running", "done")
                                     else "") for w in st.get("terminals", []))
                bar.update(task, total=st.get("planned"), completed=done,
                           info=f"failed {st['failed']} aborted {st['aborted']}  {health}")
                if st["state"] != "running":
                    break
                time.sleep(1.0)
            except KeyboardInterrupt:
                if stopping:
                    raise
                stopping = True
                err.print("stopping the campaign safely (Ctrl-C again leaves it running)...")
                _api(lab_config, "POST", f"/v1/campaigns/{run_id}/stop")
    return st


@app.command()
def schedule(what: Annotated[str, typer.Argument(help="a schedule file to install, or 'list' / "
                                                   "'clear'")],
             config: ConfigOpt = DEFAULT_CONFIG,
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Install cron-style windows in which campaigns run (`rig schedule configs/schedule.yaml`),
    show them (`rig schedule list`), or remove them all (`rig schedule clear`)."""
    if what == "clear":
        got = _api(config, "DELETE", "/v1/schedules")
        out.print(f"{got['cleared']} schedule(s) removed")
        return
    if what == "list":
        rows = _api(config, "GET", "/v1/schedules")
    else:
        from .soak.campaign import load_campaign
        from .soak.schedule import load_schedule

        lab = load_campaign(load_schedule(what)[0]["campaign"]).lab_path()
        rows = _api(lab, "POST", "/v1/schedules", {"path": str(Path(what).resolve())})
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("schedule", "window start", "open for", "campaign", "run", "now")
    for r in rows:
        table.add_row(r["name"], r["start"], f"{r['duration_s']:g} s", r["campaign"],
                      str(r["run_id"] or "-"), r["now"])
    out.print(table)


@soak_app.command("plan")
def soak_plan(campaign: Annotated[str, typer.Argument(help="campaign file")],
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Dry run: the expanded matrix, chunks and estimated duration; no hardware touched."""
    from .soak import load_campaign, plan

    p = plan(load_campaign(campaign))
    d = p.as_dict()
    if as_json:
        out.print_json(json.dumps(d, default=str))
        return
    out.print(repr(p), highlight=False)
    table = Table("case", "kind", "share", "what")
    for c in d["cases"]:
        table.add_row(c["id"], c["kind"], f"{c['share']:.0%}", c["what"])
    out.print(table)


@soak_app.command("run")
def soak_run(campaign: Annotated[str, typer.Argument(help="campaign file")],
             detach: Annotated[bool, typer.Option("--detach", help="return at once")] = False,
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Submit a campaign to the lab's rig service and follow it (Ctrl-C stops it safely)."""
    from .soak import load_campaign

    c = load_campaign(campaign)
    lab = c.lab_path()
    st = _api(lab, "POST", "/v1/campaigns", {"path": str(Path(campaign).resolve())})
    run_id = st["run_id"]
    if detach:
        out.print_json(json.dumps(st)) if as_json else out.print(
            f"campaign {c.name} runs as run {run_id}; `rig soak list`, `rig soak stop {run_id}`")
        return
    st = _follow(lab, run_id, as_json)
    _soak_summary(st, as_json)
    if st["state"] == "stopped":
        raise typer.Exit(130)
    if st["state"] == "failed":
        raise typer.Exit(1)


def _soak_summary(st: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(st, default=str))
        return
    out.print(f"campaign {st['campaign']} run {st['run_id']} ({st['label']}): {st['state']}, "
              f"{st['completed']} completed, {st['failed']} failed, {st['aborted']} aborted"
              + (f" of {st['planned']}" if st.get("planned") else ""), highlight=False)


@soak_app.command("list")
def soak_list(config: ConfigOpt = DEFAULT_CONFIG,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The lab's campaign runs with their counts."""
    rows = _api(config, "GET", "/v1/campaigns")
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("run", "campaign", "label", "state", "planned", "completed", "failed",
                  "aborted")
    for r in rows:
        table.add_row(str(r["run_id"]), r["campaign"], r["label"], r["state"],
                      str(r["planned"] or "-"), str(r["completed"]), str(r["failed"]),
                      str(r["aborted"]))
    out.print(table)


@soak_app.command("resume")
def soak_resume(run: Annotated[int, typer.Argument(help="campaign run id")],
                config: ConfigOpt = DEFAULT_CONFIG,
                detach: Annotated[bool, typer.Option("--detach")] = False,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Continue a stopped or interrupted campaign at its next planned cycle."""
    st = _api(config, "POST", f"/v1/campaigns/{run}/resume")
    if not detach:
        st = _follow(config, run, as_json)
    _soak_summary(st, as_json)


@soak_app.command("stop")
def soak_stop(run: Annotated[int, typer.Argument(help="campaign run id")],
              config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Stop a campaign safely (steps aborted, faults undone, safe power); resumable."""
    _api(config, "POST", f"/v1/campaigns/{run}/stop")
    while (st := _api(config, "GET", f"/v1/campaigns/{run}"))["state"] == "running":
        time.sleep(0.5)
    _soak_summary(st, False)


@app.command()
def report(run: Annotated[str, typer.Argument(help="campaign run id, or 'last'")],
           config: ConfigOpt = DEFAULT_CONFIG,
           html_path: Annotated[str | None, typer.Option("--html", help="write the morning "
                                                         "report here (one file)")] = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The morning report of a campaign run: verdict, figures per case and terminal, failures,
    health; `--html FILE` (self-contained) and/or `--json`. Reads the store only."""
    from .config import load_lab
    from .control.bench import results_dir
    from .core.errors import TestError
    from .soak.report import build, write_html
    from .timeline.store import open_readonly

    db = results_dir(state.results) / f"{load_lab(config).name}.db"
    if run == "last":
        con = open_readonly(db)
        row = con.execute("SELECT max(run_id) FROM campaigns").fetchone()
        con.close()
        if row[0] is None:
            raise TestError(f"no campaign run in {db}; run one with `rig soak run`")
        run_id = int(row[0])
    else:
        run_id = int(run)
    doc = build(db, run_id)
    if html_path:
        path = write_html(doc, html_path, db=db)
        if not as_json:
            out.print(f"report of run {run_id}: {path}", highlight=False)
    if as_json:
        out.print_json(json.dumps(doc, default=str))
    elif not html_path:
        s = doc["summary"]
        out.print(f"run {run_id} {doc['campaign']['name']} ({doc['campaign']['label']}): "
                  f"{s['verdict']}", highlight=False)


# --- lab / host ---------------------------------------------------------------------------------
@lab_app.command("up")
def lab_up(config: Annotated[str, typer.Argument(help="lab config")] = DEFAULT_CONFIG,
           journal: Annotated[str | None, typer.Option(help="truth journal JSONL path")] = None,
           exit_with_parent: bool = False) -> None:
    """Run the virtual lab in the foreground; prints a line with 'ready' when it listens."""
    from .sim.__main__ import main as sim_main  # the CLI is the one place lab and rig meet

    argv = [config] + (["--journal", journal] if journal else []) + (
        ["--exit-with-parent"] if exit_with_parent else [])
    raise typer.Exit(sim_main(argv))


@host_app.command("up")
def host_up(config: ConfigOpt = DEFAULT_CONFIG,
            port: Annotated[int | None, typer.Option(help="listen port (default: config)")] = None,
            bind: Annotated[str, typer.Option(help="listen address")] = "127.0.0.1") -> None:
    """Run the acquirer host alone, for terminals the rig does not control."""
    from .config import load_lab
    from .host.server import AcquirerHost
    from .timeline.events import EventKind

    cfg = load_lab(config)
    listen = f"{bind}:{port}" if port is not None else cfg.host.listen

    class Printer:
        def record(self, ev: Any) -> None:
            if ev.kind in (EventKind.SIGNON_REQ, EventKind.SIGNON_RSP, EventKind.PROTOCOL_ERROR,
                           EventKind.HOST_CONNECT, EventKind.NET_REQ):
                out.print(f"{ev.kind:<14} {ev.terminal or '-':<4} {json.dumps(dict(ev.data))}")

    host = AcquirerHost(cfg, Printer(), listen=listen)
    host.start()
    out.print(f"host ready on {host.address[0]}:{host.address[1]} ({cfg.host.dialect}); Ctrl-C stops")
    _sigterm_as_interrupt()
    try:
        host.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()


# --- status / power -----------------------------------------------------------------------------
@app.command()
def status(config: ConfigOpt = DEFAULT_CONFIG,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Instruments and terminals of the lab."""
    with _open(config) as rig:
        st = rig.status()
    if as_json:
        out.print_json(json.dumps(st))
        return
    t = Table(title=f"lab {st['lab']} (run {st['run_id']})")
    for col in ("name", "state", "detail"):
        t.add_column(col)
    for name, i in st["instruments"].items():
        t.add_row(name, "ok" if i["ok"] else "[red]error", i.get("idn") or i.get("error", ""))
    for name, i in st["terminals"].items():
        t.add_row(name, str(i.get("state", "")), f"output={i.get('output')} console={i.get('console')}")
    out.print(t)


@app.command()
def power(terminal: str, action: Annotated[str, typer.Argument(help="on | off | cycle")],
          config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Switch a terminal's power. (The rig's safe state applies when it exits, so 'on' with
    safe_power: off only lasts while the command runs; use a notebook to keep it on.)"""
    if action not in ("on", "off", "cycle"):
        raise typer.BadParameter("action must be on, off or cycle")
    with _open(config) as rig:
        if action == "on":
            rig.power_on(terminal)
        elif action == "off":
            rig.power_off(terminal)
        else:
            rig.power_cycle(terminal)
            s = rig.wait_signon(terminal)
            out.print(f"{terminal}: {'signed on' if s.ok else s.error}; ready_s={_fmt(s.ready_s)}")


# --- sign-on series -----------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


@app.command()
def signon(terminal: Annotated[str, typer.Argument(help="terminal name, or 'all'")],
           n: Annotated[int, typer.Option("-n", min=1, help="cycles per terminal")] = 10,
           config: ConfigOpt = DEFAULT_CONFIG,
           off_s: Annotated[float | None, typer.Option(help="off time per cycle (s)")] = None,
           timeout_s: Annotated[float, typer.Option(help="READY timeout per cycle (s)")] = 60.0,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Power-cycle TERMINAL n times and time each sign-on (签到)."""
    from .analysis.metrics import SIGNON_FIGURES, summarize

    _sigterm_as_interrupt()
    with _open(config) as rig:
        names = rig.terminals if terminal == "all" else [terminal]
        df = rig.signon_series(names, n=n, off_s=off_s, timeout_s=timeout_s,
                               progress=not as_json and sys.stderr.isatty())
        run_id, store = rig.run_id, rig.store.path
    rows = [{k: _clean(v) for k, v in r.items()} for r in df.to_dict("records")]
    per = []
    for name in names:
        mine = [r for r in rows if r["terminal"] == name]
        per.append({"terminal": name,
                    "cycles": [{"ok": r["ok"], **{f: r.get(f) for f in SIGNON_FIGURES},
                                "attempts": r.get("attempts", 0), "error": r.get("error")}
                               for r in mine],
                    "summary": summarize(mine)})
    if as_json:
        doc = per[0] if len(per) == 1 else {"terminals": per, "summary": summarize(rows)}
        doc["run_id"], doc["store"] = run_id, str(store)
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        _render(per, run_id, store)
    if any(not r["ok"] for r in rows):
        raise typer.Exit(1)


def _render(per: list[dict[str, Any]], run_id: int, store: Path) -> None:
    from .analysis.metrics import SIGNON_FIGURES

    t = Table(title="sign-on figures over ok cycles, ms: p50 / p99")
    t.add_column("terminal")
    t.add_column("ok")
    for f in SIGNON_FIGURES:
        t.add_column(f.removesuffix("_s"), justify="right", no_wrap=True)
    for p in per:
        s = p["summary"]
        cells = []
        for f in SIGNON_FIGURES:
            v = s.get(f)
            cells.append("-" if not v else f"{v['p50'] * 1e3:.1f} / {v['p99'] * 1e3:.1f}")
        t.add_row(p["terminal"], f"{s['ok']}/{s['cycles']}", *cells)
        for i, c in enumerate(p["cycles"], 1):
            if not c["ok"]:
                out.print(f"[red]{p['terminal']} cycle {i}: {c['error']}")
    out.print(t)
    out.print(f"run {run_id} stored in {store}")


# --- sales, cards, robot ------------------------------------------------------------------------
card_app = typer.Typer(no_args_is_help=True, help="Card profiles and PC/SC card checks.")
robot_app = typer.Typer(no_args_is_help=True, help="The card robot.")
app.add_typer(card_app, name="card")
app.add_typer(robot_app, name="robot")


@app.command()
def sale(terminal: str,
         card: Annotated[str, typer.Option(help="card profile in the magazine")] = "cup_debit",
         amount: Annotated[str, typer.Option(help="amount, major units")] = "1.00",
         entry: Annotated[str, typer.Option(help="chip | swipe | tap")] = "chip",
         config: ConfigOpt = DEFAULT_CONFIG,
         as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Sign the terminal on if needed, then run one sale with the robot presenting the card."""
    _sigterm_as_interrupt()
    with _open(config) as rig:
        rig.ensure_ready(terminal)
        r = rig.sale(terminal, amount=amount, card=card, entry=entry)
    if as_json:
        sys.stdout.write(json.dumps(r.as_dict()) + "\n")
    else:
        color = "green" if r.approved else "red"
        out.print(f"[{color}]{r.outcome}[/{color}] rc={r.rc} auth={r.auth_code} rrn={r.rrn} "
                  f"card={r.card} ({r.pan_masked}) entry={r.entry}" + (f"  {r.error}" if r.error else ""))
        out.print("  ".join(f"{k}={_fmt(getattr(r, k))}" for k in
                            ("card_to_auth_s", "auth_host_s", "auth_to_result_s", "card_to_result_s",
                             "robot_wait_s")))
    if r.outcome not in ("approved", "declined"):
        raise typer.Exit(1)


@card_app.command("list")
def card_list(as_json: Annotated[bool, typer.Option("--json")] = False,
              cards_dir: Annotated[str | None, typer.Option(help="profiles directory")] = None) -> None:
    """The card profiles (PANs masked)."""
    from .cards.profiles import CARDS_DIR, load_cards
    from .core.redact import mask_pan

    cards = load_cards(cards_dir or CARDS_DIR)
    rows = [{"name": c.name, "scheme": c.scheme, "product": c.product, "pan": mask_pan(c.pan),
             "expiry": c.expiry, "entry_modes": c.entry_modes, "aids": c.aids,
             "expired": c.expired(), "mute": c.mute} for c in cards.values()]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    t = Table(title="card profiles")
    for col in ("name", "scheme", "pan", "expiry", "entry", "notes"):
        t.add_column(col)
    for r in rows:
        notes = ", ".join(n for n, on in (("expired", r["expired"]), ("mute", r["mute"])) if on)
        t.add_row(r["name"], f"{r['scheme']} {r['product']}", r["pan"], r["expiry"],
                  ",".join(r["entry_modes"]), notes)
    out.print(t)


@card_app.command("check")
def card_check(card: Annotated[str | None, typer.Argument(help="emulated card (virtual lab)")] = None,
               reader: Annotated[str | None, typer.Option(help="PC/SC reader name")] = None,
               contactless: Annotated[bool, typer.Option(
                   "--contactless", help="the reader as an NFC field (PPSE)")] = False,
               config: ConfigOpt = DEFAULT_CONFIG,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Read a card through PC/SC: ATR, AIDs, masked PAN, expiry, problems; for an emulated
    card also its profile's EMV data objects and any deviation the card shows from them."""
    with _open(config) as rig:
        c = rig.card_check(card, reader=reader, contactless=contactless)
    if isinstance(c, dict):
        d = dict(c)
    else:
        d = c.as_dict() if hasattr(c, "as_dict") else dict(c.__dict__)
    if as_json:
        sys.stdout.write(json.dumps(d, default=str) + "\n")
        return
    objects, seen = d.pop("data_objects", None) or {}, d.pop("seen", None) or {}
    deviations, expected = d.pop("deviations", None) or [], d.pop("expected", None) or []
    for k, v in d.items():
        if v not in (None, "", []) or k in ("atr", "problems"):
            out.print(f"{k:>12}: {v}")
    if expected:
        out.print(f"{'as profiled':>12}: {'; '.join(expected)}")
    ifaces = [i for i in ("contact", "contactless") if objects.get(i)]
    if objects and not ifaces:
        out.print(f"{d.get('card')}: no chip (magnetic stripe only): no EMV data objects")
    if ifaces:
        t = Table(title=f"data objects of {d.get('card')} ({objects.get('scheme')})")
        t.add_column("object")
        for i in ifaces:
            t.add_column(i + (" (read)" if i == d.get("interface") and seen else ""),
                         overflow="fold")
        for key, name in (("aip", "AIP 82"), ("afl", "AFL 94"), ("pdol", "PDOL 9F38"),
                          ("cdol1", "CDOL1 8C"), ("cdol2", "CDOL2 8D")):
            t.add_row(name, *[str(objects[i][key] if objects[i][key] is not None else "none")
                              for i in ifaces])
        recs = sorted({r for i in ifaces for r in objects[i]["records"]})
        for r in recs:
            t.add_row(f"record {r}", *[" ".join(objects[i]["records"].get(r, [])) or "-"
                                       for i in ifaces])
        out.print(t)
        out.print(f"label {objects.get('label')!r}, priority {objects.get('priority')}, "
                  f"preferred name {objects.get('preferred_name')!r}, language "
                  f"{objects.get('language')}, AIDs {', '.join(objects.get('aids', []))}, "
                  f"ARPC method {objects.get('arpc_method')}")
    if deviations:
        out.print("[red]deviations from the profile:[/red]")
        for x in deviations:
            out.print(f"  - {x}")
    elif objects and seen:
        out.print("the card shows the reader what its profile says (no deviation)")
    if [p for p in d.get("problems") or [] if p not in expected] or deviations:
        raise typer.Exit(1)


def _robot_do(config: str, action: str) -> str:
    """Open the lab, run one robot action, render its outcome."""
    with _open(config) as rig:
        return rig.robot_action(action)


@robot_app.command("status")
def robot_status(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """GRBL state and machine position."""
    out.print(_robot_do(config, "status"))


@robot_app.command("home")
def robot_home(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Home the robot ($H)."""
    out.print(_robot_do(config, "home"))


@robot_app.command("park")
def robot_park(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Move the robot to its park position."""
    out.print(_robot_do(config, "park"))


# --- terminal profiles: console, profile check, keypad ---------------------------------------------
profile_app = typer.Typer(no_args_is_help=True, help="Terminal profiles (configs/profiles).")
app.add_typer(profile_app, name="profile")


def _console_text(ev: Any) -> str:
    """The line as the terminal printed it."""
    return str(ev.data.get("raw") or ev.data.get("line") or "")


def _stamp_text(wall_ns: int) -> str:
    from datetime import UTC, datetime

    t = datetime.fromtimestamp(wall_ns / 1e9, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{wall_ns % 1_000_000_000 // 1000:06d}Z"


@app.command()
def console(terminal: str,
            capture: Annotated[str | None, typer.Option(
                "--capture", help="power-cycle the terminal and write its console to FILE")] = None,
            sale: Annotated[bool, typer.Option(
                "--sale", help="with --capture: also run one sale after READY")] = False,
            timeout_s: Annotated[float, typer.Option(help="--capture: READY timeout (s)")] = 60.0,
            config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Live console lines of TERMINAL with their stamps (Ctrl-C ends); with --capture, one power
    cycle's console (stamped, UTF-8) to a file for `rig profile check`."""
    from rich.markup import escape

    _sigterm_as_interrupt()
    source = f"{terminal}.console"
    with _open(config) as rig:
        if capture is None:
            try:
                for ev in rig.events(follow=True, terminal=terminal):
                    if ev.source == source:
                        out.print(f"{_stamp_text(ev.wall_ns)} [dim]{ev.kind}[/dim] "
                                  f"{escape(_console_text(ev))}", highlight=False, soft_wrap=True)
                        out.file.flush()
            except KeyboardInterrupt:
                pass
            return
        start = time.monotonic_ns()
        rig.power_cycle(terminal)
        s = rig.wait_signon(terminal, timeout_s=timeout_s)
        if sale and s.ok:
            rig.sale(terminal)
        time.sleep(0.3)  # the last lines' events reach the service
        lines = [ev for ev in rig.events(follow=False, terminal=terminal)
                 if ev.source == source and ev.mono_ns >= start]
    path = Path(capture)
    with path.open("w", encoding="utf-8") as f:
        f.write(f"# rig console capture: terminal {terminal}, config {config}, "
                f"{'signed on' if s.ok else s.error}\n")
        for ev in lines:
            f.write(f"{_stamp_text(ev.wall_ns)}\t{_console_text(ev)}\n")
    out.print(f"{terminal}: {len(lines)} console lines written to {path}")
    if not s.ok:
        raise typer.Exit(1)


@profile_app.command("check")
def profile_check(profile: Annotated[str, typer.Argument(help="profile YAML (or a name)")],
                  log: Annotated[str, typer.Argument(help="console log (a --capture file, or raw)")],
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Which lines of LOG match which event of PROFILE, and what is missing."""
    from .terminal_profiles import check_log, decode_log, load_profile_file, profile_path

    prof = load_profile_file(profile_path(profile))
    try:
        data = Path(log).read_bytes()
    except OSError as e:
        raise ConfigError(f"{log}: cannot read: {e.strerror or e}") from e
    r = check_log(prof, decode_log(data, prof.encoding))
    if as_json:
        sys.stdout.write(json.dumps({
            "profile": r.profile, "clean": r.clean, "seen": r.seen, "missing": r.missing,
            "not_seen": r.not_seen, "unsupported": r.unsupported,
            "lines": [{"line": n, "text": t, "event": e, "canonical": c}
                      for n, t, e, c in r.lines]}, ensure_ascii=False) + "\n")
    else:
        t = Table(title=f"{log} read with profile {r.profile}")
        for col in ("line", "event", "text"):
            t.add_column(col)
        for n, text, ev, _ in r.lines:
            t.add_row(str(n), ev or "[dim]-[/dim]", text)
        out.print(t)
        out.print("seen: " + (", ".join(f"{k} x{v}" for k, v in r.seen.items()) or "nothing"))
        for ev in r.missing:
            out.print(f"[red]missing: {ev}[/red] (the log shows the phase but no line matched)")
        for ev in r.not_seen:
            out.print(f"[dim]not seen: {ev} (shown only in a failure case or another phase)[/dim]")
        for ev, why in r.unsupported.items():
            out.print(f"[yellow]cannot report: {ev}[/yellow] ({why})")
        out.print("[green]clean[/green]" if r.clean else "[red]not clean[/red]")
    if not r.clean:
        raise typer.Exit(1)


@app.command()
def keypad(terminal: str,
           keys: Annotated[list[str], typer.Argument(help="keys, e.g. SALE 1 0 0 ENTER")],
           config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """The robot presses KEYS on the terminal's keypad (its profile's keypad map)."""
    with _open(config) as rig:
        r = rig.keypad(terminal, *keys)
    out.print(f"{terminal}: pressed {' '.join(r['keys'])}")


# --- faults and scenarios -------------------------------------------------------------------------
scenario_app = typer.Typer(no_args_is_help=True, help="The field's failure cases.")
app.add_typer(scenario_app, name="scenario")


def _fault_params(args: list[str]) -> dict[str, Any]:
    """``--ms 300 --jitter-ms 50 --for 60`` → ``{"ms": "300", "jitter_ms": "50", "for_s": "60"}``
    (pydantic converts the strings to the field's type and says which one is wrong)."""
    alias = {"for": "for_s", "at": "at_s"}
    params: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise typer.BadParameter(f"unexpected {a!r}; fault parameters are --name value")
        key = a[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        else:
            raise typer.BadParameter(f"{a} needs a value")
        params[alias.get(key, key)] = value
        i += 1
    return params


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def fault(ctx: typer.Context,
          what: Annotated[str, typer.Argument(help="a terminal, or 'list' / 'clear'")],
          name: Annotated[str | None, typer.Argument(help="fault name (see --help-faults)")] = None,
          config: ConfigOpt = DEFAULT_CONFIG,
          as_json: Annotated[bool, typer.Option("--json")] = False,
          help_faults: Annotated[bool, typer.Option("--help-faults",
                                                    help="list the faults and exit")] = False) -> None:
    """Hold a fault on a terminal (`rig fault T1 latency --ms 300 --for 60`), list the faults on
    now (`rig fault list`), or undo everything, a crashed rig's leftovers too (`rig fault clear`)."""
    from .faults.spec import FAULTS, make_fault

    if help_faults:
        for fname, cls in sorted(FAULTS.items()):
            fields = ", ".join(k for k in cls.model_fields if k not in ("during", "at_s", "for_s"))
            out.print(f"[bold]{fname:<17}[/bold] {cls.layer:<6} {cls.what}  [dim]({fields})[/dim]",
                      highlight=False)
        return
    if what == "list":
        return _fault_list(config, as_json)
    if what == "clear":
        return _fault_clear(config, as_json)
    if name is None:
        raise typer.BadParameter("give a fault name, e.g. `rig fault T1 latency --ms 300`")
    f = make_fault(name, **_fault_params(list(ctx.args)))
    _sigterm_as_interrupt()
    with _open(config) as rig:
        with rig.fault(what, f):
            timed = f.for_s is not None and f.during is None and f.at_s is None
            out.print(f"{what}: {f.label()} " + (f"on, held for {f.for_s:g} s" if timed else
                      "armed; Ctrl-C undoes it"), highlight=False)
            end = time.monotonic() + (f.for_s + 0.2 if timed else float("inf"))
            while time.monotonic() < end and rig.ended is None:
                time.sleep(0.2)  # the service turns a timed fault off on time; then disarm
            if rig.ended is not None:
                out.print(f"{what}: {f.name} undone ({rig.ended})", highlight=False)
                return
    out.print(f"{what}: {f.name} undone")


def _ledger(config: str):
    from .config import load_lab
    from .control.bench import results_dir
    from .faults.ledger import Ledger

    cfg = load_lab(config)
    return Ledger(results_dir(state.results) / f"{cfg.name}-faults.json")


def _fault_list(config: str, as_json: bool) -> None:
    import datetime as dt

    entries = _ledger(config).entries()
    if as_json:
        out.print_json(json.dumps(entries))
        return
    if not entries:
        out.print("no faults on")
        return
    table = Table("terminal", "fault", "parameters", "since", "held by")
    for e in entries:
        since = dt.datetime.fromtimestamp(int(e.get("since_wall_ns", 0)) / 1e9).isoformat(
            sep=" ", timespec="seconds")
        holder = f"pid {e.get('pid')}" + ("" if e.get("alive") else " [red](dead: rig fault clear)")
        table.add_row(str(e.get("terminal")), str(e.get("fault")),
                      json.dumps(e.get("params", {})), since, holder)
    out.print(table)


def _fault_clear(config: str, as_json: bool) -> None:
    from .config import load_lab
    from .control.bench import results_dir
    from .service.runtime import Paths, read_info

    ledger = _ledger(config)
    service = read_info(Paths(results_dir(state.results).resolve(), load_lab(config).name)) or {}
    asked = set()
    for e in ledger.entries():
        pid = int(e.get("pid", 0))
        if pid == service.get("pid"):
            continue  # the service turns its own faults off when asked
        if e.get("alive") and pid != os.getpid() and pid not in asked:
            asked.add(pid)
            os.kill(pid, signal.SIGTERM)  # its rig unwinds: every fault off, recorded
    from .faults.ledger import pid_alive

    end = time.monotonic() + 15  # until the holders have exited (their rig released the lab)
    while time.monotonic() < end and any(pid_alive(p) for p in asked):
        time.sleep(0.1)
    with _open(config) as rig:  # the service turns every fault off; its start swept a
        got = rig.clear_faults()  # crashed service's leftovers (kernel, PSU, lab, ledger)
    result = {"stopped_pids": sorted(asked | set(got["stopped_pids"])), "undone": got["undone"]}
    if as_json:
        out.print_json(json.dumps(result))
        return
    for pid in sorted(asked):
        out.print(f"asked pid {pid} to release its faults")
    for line in result["undone"]:
        out.print(f"undid: {line}", highlight=False)
    if not result["stopped_pids"] and not result["undone"]:
        out.print("nothing to clear")


@scenario_app.command("list")
def scenario_list(as_json: Annotated[bool, typer.Option("--json")] = False,
                  directory: Annotated[str | None, typer.Option("--dir",
                                                                help="scenario folder")] = None) -> None:
    """The field's failure cases, each with its expectation."""
    from .faults.scenarios import load_scenarios

    scs = load_scenarios(directory)
    if as_json:
        out.print_json(json.dumps([s.summary() for s in scs.values()]))
        return
    table = Table("scenario", "procedure", "faults", "expected")
    for s in scs.values():
        fl = ", ".join(f.get("fault", "?") for f in s.faults) or "-"
        exp = s.expect.model_dump(exclude_none=True, exclude_defaults=True)
        table.add_row(s.name, s.procedure, fl, ", ".join(f"{k}={v}" for k, v in exp.items()))
    out.print(table)


@scenario_app.command("run")
def scenario_run(name: Annotated[str, typer.Argument(help="scenario name, or 'all'")],
                 terminal: Annotated[str, typer.Argument(help="terminal")] = "T1",
                 config: ConfigOpt = DEFAULT_CONFIG,
                 as_json: Annotated[bool, typer.Option("--json")] = False,
                 directory: Annotated[str | None, typer.Option("--dir",
                                                               help="scenario folder")] = None) -> None:
    """Run one scenario (or all) on a terminal; exit code 1 when any verdict is not pass."""
    from .core.errors import TestError
    from .faults.scenarios import load_scenarios

    scs = load_scenarios(directory)
    if name != "all" and name not in scs:
        raise TestError(f"unknown scenario {name!r}; known: {', '.join(scs)}")
    chosen = list(scs.values()) if name == "all" else [scs[name]]
    _sigterm_as_interrupt()
    verdicts = []
    with _open(config) as rig:
        for sc in chosen:
            if not as_json:
                err.print(f"running {sc.name} ...", highlight=False)
            verdicts.append(rig.scenario(sc, terminal).as_dict())
    if as_json:
        out.print_json(json.dumps(verdicts[0] if name != "all" else verdicts))
    else:
        table = Table("scenario", "terminal", "verdict", "recover_s", "failed checks / error")
        for v in verdicts:
            bad = [f"{c['check']}: want {c['expected']}, saw {c['observed']}"
                   for c in v["checks"] if not c["ok"]]
            colour = {"pass": "green", "fail": "red"}.get(v["verdict"], "yellow")
            table.add_row(v["scenario"], v["terminal"], f"[{colour}]{v['verdict']}",
                          _fmt(v["recover_s"]), "; ".join(bad) or (v["error"] or ""))
        out.print(table)
    if any(v["verdict"] != "pass" for v in verdicts):
        raise typer.Exit(1)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Ctrl-C / SIGINT always interrupts safely, also when started from a script in the
    # background (a non-interactive shell starts background jobs with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = app(standalone_mode=False)  # typer turns Ctrl-C into exit code 130
    except (KeyboardInterrupt, typer.Abort):
        rc = 130
    except ConfigError as e:
        err.print(f"[red]config error:[/red] {e}", highlight=False)
        sys.exit(2)
    except RigError as e:
        err.print(f"[red]{type(e).__name__}:[/red] {e}", highlight=False)
        sys.exit(1)
    except typer.TyperException as e:  # usage errors
        err.print(f"[red]usage:[/red] {e.format_message()}  (try --help)", highlight=False)
        sys.exit(e.exit_code)
    if rc == 130:
        err.print("[yellow]interrupted: outputs left in the safe state, "
                  "the interrupted cycle marked aborted")
    sys.exit(rc if isinstance(rc, int) else 0)


# --- stored runs: list and export (analysis) --------------------------------------------------------
def _store_path(config: str, db: str | None) -> Path:
    """``--db`` if given, else ``<results>/<lab>.db`` of the lab config."""
    if db:
        return Path(db)
    from .config import load_lab
    from .control.bench import results_dir

    return results_dir(state.results) / f"{load_lab(config).name}.db"


@app.command()
def runs(config: ConfigOpt = DEFAULT_CONFIG,
         db: Annotated[str | None, typer.Option(help="store file (default: <results>/<lab>.db)")]
         = None,
         as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The store's runs: label, state, when, how many cycles succeeded."""
    from .analysis.load import list_runs

    df = list_runs(_store_path(config, db))
    if as_json:
        rows = []
        for r in df.to_dict("records"):
            r["started"] = None if r["started"] is None or r["started"] != r["started"] else (
                r["started"].isoformat())
            r["ended"] = None if r["ended"] is None or r["ended"] != r["ended"] else (
                r["ended"].isoformat())
            rows.append({k: (None if v is None or v is __import__("pandas").NA or (
                isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    t = Table(title=f"runs in {_store_path(config, db)}")
    for col in ("run", "label", "state", "started (UTC)", "duration", "cycles", "ok", "failed",
                "aborted", "sales", "events"):
        t.add_column(col, justify="right" if col not in ("label", "state") else "left")
    for r in df.itertuples():
        state_txt = str(r.state) + (" (process gone)" if r.state == "running" and r.alive is
                                    False else "")
        started = "-" if r.started is None or r.started != r.started else r.started.strftime(
            "%Y-%m-%d %H:%M:%S")
        t.add_row(str(r.run_id), str(r.label or ""), state_txt, started,
                  "-" if r.duration_s != r.duration_s else f"{r.duration_s:.0f} s",
                  str(r.cycles), str(r.ok), str(r.failed), str(r.aborted), str(r.sales),
                  str(r.events))
    out.print(t)


@app.command("export")
def export_cmd(run: Annotated[str, typer.Argument(help="run id, or a label (its newest run)")],
               parquet: Annotated[str, typer.Option("--parquet", help="directory to write")],
               config: ConfigOpt = DEFAULT_CONFIG,
               db: Annotated[str | None, typer.Option(help="store file (default: "
                                                           "<results>/<lab>.db)")] = None,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Write a run's tables (run, cycles with every figure, events, sales, faults, current)
    as Parquet files, the config snapshot (secrets masked) in their metadata."""
    from .analysis.load import load_run

    data = load_run(_store_path(config, db), int(run) if run.lstrip("-").isdigit() else run)
    paths = data.to_parquet(parquet)
    if as_json:
        sys.stdout.write(json.dumps({"run_id": data.run_id, "files": [str(p) for p in paths]})
                         + "\n")
        return
    for p in paths:
        out.print(str(p), highlight=False)
    out.print(f"run {data.run_id}: {len(data.cycles)} cycles, {len(data.sales)} sales exported")



# --- rig audit ---------------------------------------------------------------------------------
_AUDIT_SAMPLE_LIMIT = 200


def _audit_text(text: str, known: dict[str, str]) -> list[tuple[str, str]]:
    """(kind, masked sample) of the card data and keys in one piece of text."""
    from .core.redact import mask_pan, redact_text, scan_text

    found = [(f.kind, f.sample) for f in scan_text(text)]
    rest = None
    for pan, name in known.items():
        if pan in text:  # a card profile's PAN the patterns let through (e.g. in a longer run)
            rest = redact_text(text) if rest is None else rest
            if pan in rest:
                found.append(("pan", f"{mask_pan(pan)} (card {name})"))
    return found


def _audit_sqlite(path: Path, known: dict[str, str]) -> list[tuple[str, str, str]]:
    import sqlite3

    out = []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            q = table.replace('"', '""')
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{q}")')]
            for col in cols:
                c = col.replace('"', '""')
                for rowid, value in con.execute(
                        f'SELECT rowid, "{c}" FROM "{q}" WHERE typeof("{c}") = \'text\''):
                    for kind, sample in _audit_text(value, known):
                        out.append((f"{table}.{col} rowid {rowid}", kind, sample))
    finally:
        con.close()
    return out


def _audit_parquet(path: Path, known: dict[str, str]) -> list[tuple[str, str, str]] | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    out = []
    table = pq.read_table(path)
    for k, v in (table.schema.metadata or {}).items():
        for kind, sample in _audit_text(v.decode("utf-8", "replace"), known):
            out.append((f"metadata {k.decode('utf-8', 'replace')}", kind, sample))
    for name in table.column_names:
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        for i, value in enumerate(col.to_pylist()):
            if value:
                for kind, sample in _audit_text(value, known):
                    out.append((f"column {name} row {i}", kind, sample))
    return out


def audit_path(path: Path, cards_dir: str | Path | None = None) -> dict[str, Any]:
    """Scan a results directory, a report or an export (text, JSON, HTML, SQLite stores, Parquet)
    for PANs (the card profiles' and any Luhn-valid one), track data, EMV card data, PIN blocks,
    keys and passwords. Returns {"files", "skipped", "findings": [{file, where, kind, sample}]}."""
    from .cards.profiles import CARDS_DIR, load_cards

    known = {c.pan: c.name for c in load_cards(cards_dir or CARDS_DIR).values()}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    findings: list[dict[str, str]] = []
    scanned, skipped = 0, []
    for f in files:
        try:
            with open(f, "rb") as fh:
                head = fh.read(8192)
        except OSError as e:
            skipped.append(f"{f}: {e}")
            continue
        rows: list[tuple[str, str, str]] | None
        if head.startswith(b"SQLite format 3\x00"):
            rows = _audit_sqlite(f, known)
        elif head.startswith(b"PAR1"):
            rows = _audit_parquet(f, known)
        elif b"\x00" in head:
            rows = None  # binary (a WAL / shm file: its store is read through SQLite)
        else:
            rows = []
            with open(f, encoding="utf-8", errors="replace") as fh:
                for n, line in enumerate(fh, 1):
                    rows += [(f"line {n}", k, s) for k, s in _audit_text(line, known)]
        if rows is None:
            skipped.append(str(f))
            continue
        scanned += 1
        findings += [{"file": str(f), "where": w, "kind": k, "sample": s} for w, k, s in rows]
    return {"path": str(path), "files": scanned, "skipped": skipped, "findings": findings}


@app.command("audit")
def audit_cmd(path: Annotated[str | None, typer.Argument(
                  help="results directory, report or export (default: the results directory)")]
              = None,
              cards_dir: Annotated[str | None, typer.Option(help="card profiles directory")]
              = None,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Look for card data and keys at rest: PANs (card profiles' and Luhn-valid ones), tracks
    1 / 2, EMV card data, PIN blocks, keys, passwords. Exit 1 on a find, 0 when clean."""
    from .control.bench import results_dir

    target = Path(path) if path else results_dir(state.results)
    if not target.exists():
        err.print(f"rig audit: {target}: no such file or directory")
        raise typer.Exit(2)
    report = audit_path(target, cards_dir)
    findings = report["findings"]
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        if findings:
            t = Table(title=f"card data / keys found in {target}")
            for col in ("file", "where", "kind", "sample (masked)"):
                t.add_column(col)
            for f in findings[:_AUDIT_SAMPLE_LIMIT]:
                t.add_row(f["file"], f["where"], f["kind"], f["sample"])
            out.print(t)
            if len(findings) > _AUDIT_SAMPLE_LIMIT:
                out.print(f"... and {len(findings) - _AUDIT_SAMPLE_LIMIT} more (--json: all)")
        kinds: dict[str, int] = {}
        for f in findings:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "clean"
        out.print(f"rig audit {target}: {report['files']} files scanned, "
                  f"{len(report['skipped'])} binary skipped: {summary}", highlight=False)
    if findings:
        raise typer.Exit(1)


if __name__ == "__main__":
    main()
