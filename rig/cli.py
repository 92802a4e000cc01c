"""The ``rig`` command. Renders with rich; the library itself never prints."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import ConfigError, RigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="posrig: power-cycle POS terminals and time their sign-on.")
lab_app = typer.Typer(no_args_is_help=True, help="The virtual lab (rig.sim).")
host_app = typer.Typer(no_args_is_help=True, help="The acquirer host simulator.")
app.add_typer(lab_app, name="lab")
app.add_typer(host_app, name="host")

out = Console()
err = Console(stderr=True)

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
    from .rig import open_rig

    return open_rig(config, label=state.label, results=state.results)


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
    from .events import EventKind
    from .host.server import AcquirerHost

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
                    "cycles": [{"ok": r["ok"], **{f: r[f] for f in SIGNON_FIGURES},
                                "attempts": r["attempts"], "error": r["error"]} for r in mine],
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

    t = Table(title="sign-on figures (s) over ok cycles: p50 / p90 / p99 / max")
    t.add_column("terminal")
    t.add_column("ok")
    for f in SIGNON_FIGURES:
        t.add_column(f, justify="right")
    for p in per:
        s = p["summary"]
        cells = []
        for f in SIGNON_FIGURES:
            v = s.get(f)
            cells.append("-" if not v else " / ".join(_fmt(v[k]) for k in ("p50", "p90", "p99", "max")))
        t.add_row(p["terminal"], f"{s['ok']}/{s['cycles']}", *cells)
        for i, c in enumerate(p["cycles"], 1):
            if not c["ok"]:
                out.print(f"[red]{p['terminal']} cycle {i}: {c['error']}")
    out.print(t)
    out.print(f"run {run_id} stored in {store}")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
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


if __name__ == "__main__":
    main()
