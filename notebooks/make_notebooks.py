"""Writes the notebooks from this source, so their code is reviewed as Python (run it after
editing; `make test` executes the .ipynb files)."""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent


def md(s: str):
    return nbf.v4.new_markdown_cell(s.strip())


def code(s: str):
    return nbf.v4.new_code_cell(s.strip())


quickstart = [
    md("""
# 01 · Quickstart: power-cycle a terminal and time its sign-on (签到)

Opens the embedded virtual lab (it is started as a child process when nothing listens yet),
power-cycles terminal T1 ten times and plots the four sign-on figures. See `docs/timing.md`
for what each figure measures.
"""),
    code("""
import os
from pathlib import Path

# run from the repository root whether Jupyter started here or in notebooks/
if not Path("configs").exists() and Path("../configs").exists():
    os.chdir("..")

from rig import load_run, open_rig

rig = open_rig("configs/labs/virtual.yaml", label="quickstart")
rig
"""),
    code("""
rig.power_cycle("T1")
s = rig.wait_signon("T1")
s
"""),
    code("""
df = rig.signon_series("T1", n=10)
df[["i", "ok", "attempts", "boot_s", "signon_req_s", "signon_host_s", "ready_s"]]
"""),
    code("""
import matplotlib.pyplot as plt

figures = ["boot_s", "signon_req_s", "signon_host_s", "ready_s"]
fig, axes = plt.subplots(1, 4, figsize=(14, 3))
for ax, f in zip(axes, figures):
    ax.plot(df["i"], df[f] * 1000, "o-")
    ax.set_title(f)
    ax.set_xlabel("cycle")
    ax.set_ylabel("ms")
fig.tight_layout()
"""),
    code("""
assert df["ok"].all(), df[~df["ok"]]
rig.close()  # outputs off (safe_power), run marked completed

run = load_run(rig.store.path, rig.run_id)   # the same figures, read back from the store
run.signons[figures].describe().loc[["count", "mean", "50%", "max"]]
"""),
]


transactions = [
    md("""
# 02 · Transactions: sales by entry mode and card

The shared card robot picks each card from the magazine and inserts, swipes or taps it on a
virtual terminal; the rig times every step (`card_to_auth_s`, `auth_host_s`,
`auth_to_result_s`, `card_to_result_s`, and how long the terminal waited for the robot). PANs
are masked everywhere.
"""),
    code("""
import os
from pathlib import Path

if not Path("configs").exists() and Path("../configs").exists():
    os.chdir("..")

import pandas as pd
from rig import load_run, open_rig

rig = open_rig("configs/labs/virtual.yaml", label="transactions")
for t in ("T1", "T2"):
    rig.ensure_ready(t)
"""),
    code("""
results = []
for card in ["cup_debit", "cup_credit", "visa_credit", "mc_debit"]:
    for entry in ["chip", "swipe", "tap"]:
        results.append(rig.sale("T1", amount="1.00", card=card, entry=entry))
# declines and read failures
results.append(rig.sale("T2", amount="9999.00", card="cup_debit", entry="swipe"))   # 51
results.append(rig.sale("T2", amount="1.00", card="expired", entry="chip"))         # 54
results.append(rig.sale("T2", amount="1.00", card="mute", entry="chip"))            # no ATR
sales = pd.DataFrame([r.as_dict() for r in results])
sales[["terminal", "card", "entry", "outcome", "rc", "pan_masked", "card_to_auth_s",
       "auth_host_s", "card_to_result_s", "robot_wait_s"]]
"""),
    code("""
import matplotlib.pyplot as plt

ok = sales[sales["outcome"] == "approved"]
figs = ["card_to_auth_s", "auth_host_s", "auth_to_result_s", "card_to_result_s"]
fig, axes = plt.subplots(1, 4, figsize=(15, 3))
for ax, f in zip(axes, figs):
    ok.boxplot(column=f, by="entry", ax=ax)
    ax.set_title(f)
    ax.set_ylabel("s")
fig.suptitle("approved sales by entry mode")
fig.tight_layout()
"""),
    code("""
sales.groupby(["outcome", "rc"], dropna=False).size().rename("sales").to_frame()
"""),
    code("""
assert (ok["rc"] == "00").all() and len(ok) == 12
rig.close()
stored = load_run(rig.store.path, rig.run_id).sales
stored.groupby("entry")[["card_to_auth_s", "card_to_result_s"]].median()
"""),
]


faults = [
    md("""
# 03 · Faults: what the terminal does when the world breaks

Faults act on a terminal's network path (its fault proxy, or the kernel), the acquirer host,
its power, the cards and the robot. Each is switched on at the start of a phase of the
terminal (`during="signon" | "auth" | "sale" | "cycle"`) or at an offset, and off at the
phase's end; both edges are events on the same timeline as the figures, and every fault is
undone on exit. This notebook runs the lab at `time_scale` 0.3 with a 1 s sign-on timeout so
it finishes in a minute or two.
"""),
    code("""
import os
from pathlib import Path

if not Path("configs").exists() and Path("../configs").exists():
    os.chdir("..")

from contextlib import nullcontext

import pandas as pd
from rig import load_run, open_rig
from rig.config import load_lab
from rig.faults import HostReply, Latency, Stall

cfg = load_lab("configs/labs/virtual.yaml",
               overrides={"sim": {"time_scale": 0.3, "signon_timeout_ms": 1000}})
rig = open_rig(cfg, label="faults")
"""),
    md("## Sign-on time against injected one-way latency (both directions)"),
    code("""
rows = []
for ms in [0, 50, 100, 200, 400]:
    for i in range(3):
        if ms:
            with rig.fault("T1", Latency(ms=ms, during="signon")):
                rig.power_cycle("T1"); s = rig.wait_signon("T1")
        else:
            rig.power_cycle("T1"); s = rig.wait_signon("T1")
        rows.append({"latency_ms": ms, **s.as_dict()})
lat = pd.DataFrame(rows)
curve = lat.groupby("latency_ms")[["signon_req_s", "ready_s"]].median() * 1000
ax = curve.plot(marker="o", title="sign-on under latency (median of 3)")
ax.set_ylabel("ms after power-on");
curve
"""),
    md("""
## Sign-on success against connection loss

`Stall(toxicity=p)`: a share `p` of the terminal's connections is blackholed by its proxy (the
sign-on attempt times out and the terminal retries). Packet loss proper (`Loss`, nftables)
needs CAP_NET_ADMIN; the scenario `unstable-network` uses it.
"""),
    code("""
rows = []
for p in [0.0, 0.3, 0.6, 0.9]:
    for i in range(4):
        with rig.fault("T2", Stall(toxicity=p, during="signon")) if p else nullcontext():
            rig.power_cycle("T2"); s = rig.wait_signon("T2", timeout_s=30)
        rows.append({"stall_share": p, "ok": s.ok, "attempts": s.attempts,
                     "first_try": s.ok and s.attempts == 1})
loss = pd.DataFrame(rows)
rate = loss.groupby("stall_share")[["ok", "first_try"]].mean()
ax = rate.plot(marker="o", ylim=(-0.05, 1.05), title="sign-on success vs share of stalled connections")
ax.set_ylabel("rate");
rate
"""),
    md("## One cycle on the timeline, with its fault window shaded"),
    code("""
import matplotlib.pyplot as plt

with rig.fault("T3", HostReply(rc="96", applies_to="signon", during="signon", for_s=0.6)):
    cycle = rig.power_cycle("T3"); s = rig.wait_signon("T3")
rig.flush()
run = load_run(rig.store.path, rig.run_id)
ev = run.events[run.events["cycle_id"] == cycle].copy()
t0 = ev.loc[ev["kind"] == "power_on", "mono_ns"].min()
ev["t_s"] = (ev["mono_ns"] - t0) / 1e9
shown = ev[ev["kind"].isin(["power_on", "boot_done", "signon_req", "signon_rsp", "signon_fail",
                            "ready", "fault_on", "fault_off"])]
fig, ax = plt.subplots(figsize=(11, 3))
kinds = list(dict.fromkeys(shown["kind"]))
ax.scatter(shown["t_s"], [kinds.index(k) for k in shown["kind"]], marker="|", s=300)
ax.set_yticks(range(len(kinds)), kinds)
on = ev.loc[ev["kind"] == "fault_on", "t_s"]
off = ev.loc[ev["kind"] == "fault_off", "t_s"]
for a, b in zip(on, off):
    ax.axvspan(a, b, color="tab:red", alpha=0.15, label="host answers 96")
ax.set_xlabel("s after power-on"); ax.legend(loc="lower right"); fig.tight_layout()
s
"""),
    md("## The field's failure cases (scenarios that need no kernel privileges)"),
    code("""
from rig.faults.scenarios import load_scenarios

verdicts = []
for name, sc in load_scenarios().items():
    if "kernel" in sc.needs:
        continue  # no-network, unstable-network: `rig scenario run` as root
    v = rig.scenario(sc, "T1")  # runs in the rig service; a Verdict comes back
    verdicts.append({"scenario": name, "verdict": v.verdict, "recover_s": v.recover_s,
                     "failed": [c["check"] for c in v.checks if not c["ok"]]})
table = pd.DataFrame(verdicts)
table
"""),
    code("""
assert (table["verdict"] == "pass").all(), table
assert lat.groupby("latency_ms")["signon_req_s"].median().is_monotonic_increasing
rig.close()
"""),
]


def write(name: str, cells: list) -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    write("01_quickstart.ipynb", quickstart)
    write("02_transactions.ipynb", transactions)
    write("03_faults.ipynb", faults)


analysis = [
    md("""
# 04 · Analysis: figures with confidence, firmware A against B

Every figure is re-derived from the stored timeline (`load_run`), with one definition shared by
the live rig, the CLI and this notebook (`docs/timing.md`, `docs/analysis.md`). Here the
virtual lab plays two firmware versions of the same terminal: **fw-1.4** boots in
normal(700 ms, 60 ms), **fw-1.5** in normal(780 ms, 60 ms). We run a sign-on series on each
(`time_scale` 0.5, so a boot takes half as long in real time), then ask what changed and how
sure we can be.
"""),
    code("""
%matplotlib inline
import os
import subprocess
import sys
from pathlib import Path

if not Path("configs").exists() and Path("../configs").exists():
    os.chdir("..")

from IPython.display import display
from rig import compare, list_runs, load_run, open_rig
from rig.analysis import plots
from rig.config import load_lab
from rig.faults import Latency

LAB = "configs/labs/virtual.yaml"
FIRMWARE = {"fw-1.4": {"dist": "normal", "mean": 700, "sd": 60, "min": 300},
            "fw-1.5": {"dist": "normal", "mean": 780, "sd": 60, "min": 300}}


def lab(boot, seed):
    return load_lab(LAB, overrides={"sim": {"time_scale": 0.5, "boot": boot, "seed": seed}})


def stop_service():
    # the lab's rig service holds the lab's config; stop it so the next open_rig starts one
    # with the other firmware's boot distribution
    subprocess.run([sys.executable, "-m", "rig", "serve", "stop", "--config", LAB], check=False,
                   capture_output=True)
"""),
    md("## Firmware 1.4: a sign-on series, a few cycles under network latency, a few sales"),
    code("""
stop_service()
rig = open_rig(lab(FIRMWARE["fw-1.4"], seed=1), label="fw-1.4")
rig.signon_series("all", n=25, off_s=0.05, progress=False)
with rig.fault("T2", Latency(ms=150, during="signon")):
    rig.signon_series("T2", n=6, off_s=0.05, progress=False)
for card, entry in [("cup_debit", "chip"), ("visa_credit", "tap"), ("mc_debit", "swipe")]:
    rig.sale("T1", amount="1.00", card=card, entry=entry)
run_a_id, db = rig.run_id, rig.store.path
rig.close()
"""),
    md("## Firmware 1.5: the same series on the restarted lab"),
    code("""
stop_service()
rig = open_rig(lab(FIRMWARE["fw-1.5"], seed=2), label="fw-1.5")
rig.signon_series("all", n=25, off_s=0.05, progress=False)
run_b_id = rig.run_id
rig.close()
list_runs(db)
"""),
    md("""
## One run: cycles, figures, summary with confidence intervals

`run.cycles` has one row per cycle with every figure re-derived from the events, the faults that
were on during the cycle (`fault_case`), why a figure is missing (`why`) and why a cycle failed
(`failure`). `run.summary(by=...)` gives p50 / p95 / p99 with bootstrap 95 % intervals and the
success rate with its Wilson interval.
"""),
    code("""
run_a, run_b = load_run(db, run_a_id), load_run(db, run_b_id)
run_a
"""),
    code("""
run_a.cycles[["cycle_id", "terminal", "kind", "fault_case", "boot_s", "signon_req_s",
              "signon_host_s", "ready_s", "card_to_result_s", "ok", "why"]].head(8)
"""),
    code("""
run_a.summary(by=["kind", "fault_case"])
"""),
    md("""
The live rig stored each cycle's figures when the cycle ended (`run.results`); the re-derived
ones are the same numbers, because both come from `rig.analysis.figures`.
"""),
    code("""
stored = run_a.results.set_index("cycle_id")
derived = run_a.cycles.set_index("cycle_id")
signon = derived["kind"] == "signon"
diff = (stored.loc[signon, "ready_s"] - derived.loc[signon, "ready_s"]).abs().max()
print(f"largest difference stored vs re-derived ready_s: {diff} s")
"""),
    md("## Firmware 1.4 against 1.5"),
    code("""
boot = compare(run_a.cycles[run_a.cycles["fault_case"] == "none"], run_b, figure="boot_s",
               labels=("fw-1.4", "fw-1.5"))
boot
"""),
    code("""
ready = compare(run_a.cycles[run_a.cycles["fault_case"] == "none"], run_b, figure="ready_s",
                labels=("fw-1.4", "fw-1.5"))
print(ready.verdict)
plots.ecdf({"fw-1.4": run_a.cycles[run_a.cycles["fault_case"] == "none"], "fw-1.5": run_b},
           "ready_s")
"""),
    md("## Under latency: the faulted cycles apart"),
    code("""
display(run_a.plot.ecdf("signon_req_s", by="fault_case"))
run_a.plot.trend("ready_s", by="terminal", window=5)
"""),
    md("""
## The slowest cycles on the timeline

Each phase from power-on to READY as a bar, every event as a tick, fault windows shaded. The
lower panel is for the PSU current trace of the cycle.
"""),
    code("""
slow = run_b.cycles.nlargest(2, "ready_s")
for cycle in slow["cycle_id"]:
    display(run_b.plot.timeline(int(cycle)))
faulted = run_a.cycles[run_a.cycles["fault_case"] != "none"]["cycle_id"].iloc[0]
run_a.plot.timeline(int(faulted))
"""),
    md("""
## The current trace of a cycle

`run.current` holds the PSU channel's sampled current and voltage (the `current_samples`
table). The monitor that samples `MEAS:CURR?` during a cycle is not part of this version, so the
trace is empty and the timeline's lower panel says so; once it records, the same plot shows
boot, sign-on and the transaction in the current draw, lined up with the events.
"""),
    code("""
run_a.current
"""),
    md("## Failures, and an export for other tools"),
    code("""
display(run_a.failures(by="terminal"))
files = run_a.to_parquet(Path(os.environ.get("RIG_RESULTS", "results")) / "exports")
[f.name for f in files]
"""),
    code("""
assert boot.detected and boot.shift_s > 0, boot.verdict
assert run_a.cycles["ok"].all() and run_b.cycles["ok"].all()
assert (run_a.cycles["fault_case"] != "none").sum() == 6
assert diff < 1e-9
"""),
]

if __name__ == "__main__":
    write("04_analysis.ipynb", analysis)
