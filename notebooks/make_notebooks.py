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
