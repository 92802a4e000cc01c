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


def write(name: str, cells: list) -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    write("01_quickstart.ipynb", quickstart)
    write("02_transactions.ipynb", transactions)
