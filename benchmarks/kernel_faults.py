"""Kernel fault set-up and tear-down times (nftables tables, link down, tbf), in a netns.

Makes a throwaway namespace pair joined by a veth, applies and undoes each fault kind N times
on the rig side and prints p50 / p99 in ms, as :meth:`KernelFaults.timings` records them
(the first call, which probes the kernel and opens netlink, is reported on its own). Prints
whether this kernel has sch_netem. Needs root; prints a skip line otherwise.

    .venv/bin/python benchmarks/kernel_faults.py [--iterations 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig.core import netns  # noqa: E402
from rig.faults.kernel import KernelFaults, Match, probe  # noqa: E402


def can_run() -> str | None:
    cap = False
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            cap = bool(int(line.split()[1], 16) >> 12 & 1)
    missing = [c for c in ("ip", "nft") if shutil.which(c) is None]
    if os.geteuid() != 0 or not cap or missing:
        return (f"SKIP kernel_faults: needs root (CAP_NET_ADMIN) and nftables "
                f"(euid {os.geteuid()}, CAP_NET_ADMIN {cap}, missing {missing or 'nothing'})")
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    why = can_run()
    if why:
        print(why)
        return
    t0 = time.monotonic()
    caps = probe()
    probe_ms = (time.monotonic() - t0) * 1e3
    print(f"probe: {probe_ms:.0f} ms  nft={caps.nft} tbf={caps.tbf} netem={caps.netem}")
    print(f"netem: {'available' if caps.netem else 'NOT available on this kernel'}"
          + ("" if caps.netem else f" — {caps.reason}"))
    rig, term = f"rigb{os.getpid()}_r", f"rigb{os.getpid()}_t"
    try:
        netns.create(rig)
        netns.create(term)
        netns.add_veth("rig0", "term0", netns=rig, peer_netns=term, addr="10.78.0.1/24",
                       peer_addr="10.78.0.2/24")
        k = KernelFaults(rig)
        t0 = time.monotonic()
        k.undo(k.loss("warm", 10, Match(port=1)))
        first_ms = (time.monotonic() - t0) * 1e3
        k.records.clear()
        match = Match(iface="rig0", addr="10.78.0.2", port=7000)
        kinds = {
            "loss": lambda: k.loss("bench", 30, match),
            "blackhole": lambda: k.blackhole("bench", match),
            "reject": lambda: k.reject("bench", match),
            "link_down": lambda: k.link_down("rig0"),
            "rate": lambda: k.rate("rig0", 8000),
        }
        for _ in range(args.iterations):
            for fn in kinds.values():
                k.undo(fn())
        k.close()
        t = k.timings()
        print(f"first fault (probe nft in the netns + netlink open): {first_ms:.1f} ms")
        print(f"{'kind':<10} {'n':>3}  {'set-up p50':>10} {'p99':>7}  {'tear-down p50':>13} "
              f"{'p99':>7}   (ms)")
        for kind in kinds:
            s, d = np.array(t[kind]["setup_ms"]), np.array(t[kind]["teardown_ms"])
            print(f"{kind:<10} {len(s):>3}  {np.percentile(s, 50):>10.2f} "
                  f"{np.percentile(s, 99):>7.2f}  {np.percentile(d, 50):>13.2f} "
                  f"{np.percentile(d, 99):>7.2f}")
    finally:
        netns.delete(rig)
        netns.delete(term)


if __name__ == "__main__":
    main()
