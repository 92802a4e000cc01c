"""The acquirer host under load: legitimate sign-ons while hostile connections are open.

The host (:class:`rig.host.AcquirerHost`, CUP, processing 0 ms) runs in this process, as in
the controller; the hostile connections and the legitimate terminals run in child processes
so their Python work does not share the host's GIL (this machine's cores are shared by all
three, so the figures include that contention).

Hostile mix, kept open by a child that reconnects whatever the host closes (after 0.2 s;
garbage ones after ~1 s): a third idle (connected, silent), a third half-sent (the first 10
bytes of a sign-on frame, never the rest), a third garbage (a length-prefixed frame of random
bytes: a protocol error, closed by the host, then again). Per level of hostile connections:

- latency: one terminal signing on again and again (a fresh connection per sign-on, as the
  virtual terminals do): connect → ``0800`` sent → ``0810`` read, p50 / p99 / max, failures;
- throughput: 8 such terminals in a closed loop: sign-ons answered per second.

Levels 0 / 100 / 1000 with ``max_connections`` above the load (every hostile connection
really open at the host), then 1000 with the host's default cap (the host evicts the oldest
idle connection for each new one: a connection churn). Goal: p99 ≤ 50 ms at 1000.

    .venv/bin/python benchmarks/host_load.py [--seconds 3] [--levels 0,100,1000]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig.config import load_lab  # noqa: E402
from rig.host import AcquirerHost  # noqa: E402
from rig.iso8583 import cup, frame, get_dialect  # noqa: E402
from rig.timeline.events import Event  # noqa: E402

GOAL_P99_MS = 50.0
BIG_CAP = 2048
CUP = get_dialect("cup")
LAB = ROOT / "configs" / "labs" / "virtual.yaml"


def raise_nofile(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``want`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


_T1 = load_lab(LAB).terminals["T1"]


def signon_frame(stan: int) -> bytes:
    t = _T1
    msg = cup.signon_request(stan=stan % 1_000_000 or 1, terminal_id=t.terminal_id,
                             merchant_id=t.merchant_id, batch=1, key_mode=t.key_mode,
                             operator="01")
    return frame(CUP.encode(msg))


# --- child: hostile connections ------------------------------------------------------------------

def hostile(port: int, n: int, seconds: float) -> None:
    """Keep ``n`` hostile connections open for ``seconds``; print stats as JSON."""
    raise_nofile(n + 256)
    half = signon_frame(1)[:10]
    sel = selectors.DefaultSelector()
    stats = {"connects": 0, "connect_failures": 0, "closed_by_host": 0, "garbage_sent": 0}
    pending: list[tuple[float, int]] = [(0.0, i) for i in range(n)]  # (when, slot)
    socks: dict[int, socket.socket] = {}
    connected: set[int] = set()  # slots connected at least once

    def open_slot(slot: int) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", port))
        except OSError:
            stats["connect_failures"] += 1
            s.close()
            pending.append((time.monotonic() + 0.2, slot))
            return
        socks[slot] = s
        sel.register(s, selectors.EVENT_WRITE, (slot, "connecting"))

    start = time.monotonic()
    ready_at: float | None = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    end = start + seconds
    while time.monotonic() < end and not stop.is_set():
        t = time.monotonic()
        due = [p for p in pending if p[0] <= t]
        pending[:] = [p for p in pending if p[0] > t]
        for _, slot in due:
            open_slot(slot)
        if ready_at is None and len(connected) == n:
            ready_at = time.monotonic()
            print(json.dumps({"ready_s": ready_at - start}), flush=True)
        for key, _ in sel.select(0.05):
            slot, state = key.data
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if state == "connecting":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                sel.unregister(s)
                if err:
                    stats["connect_failures"] += 1
                    s.close()
                    del socks[slot]
                    pending.append((time.monotonic() + 0.2, slot))
                    continue
                stats["connects"] += 1
                connected.add(slot)
                kind = slot % 3
                try:
                    if kind == 1:
                        s.send(half)
                    elif kind == 2:
                        body = os.urandom(random.randint(20, 120))
                        s.send(len(body).to_bytes(2, "big") + body)
                        stats["garbage_sent"] += 1
                except OSError:
                    pass
                sel.register(s, selectors.EVENT_READ, (slot, "open"))
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                stats["closed_by_host"] += 1
                sel.unregister(s)
                s.close()
                del socks[slot]
                again = 0.8 + 0.4 * random.random() if slot % 3 == 2 else 0.2
                pending.append((time.monotonic() + again, slot))
    stats["open_at_end"] = len(socks)
    print(json.dumps(stats), flush=True)
    for s in socks.values():
        s.close()


# --- child: legitimate terminals -----------------------------------------------------------------

def legit(port: int, clients: int, seconds: float) -> None:
    """``clients`` terminals signing on in a closed loop for ``seconds``; JSON results."""
    lat_ms: list[float] = []
    fails: dict[str, int] = {}
    lock = threading.Lock()
    stans = iter(range(1, 10**9))
    end = time.monotonic() + seconds

    def recv_exactly(s: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            d = s.recv(n - len(buf))
            if not d:
                raise EOFError("closed by host")
            buf += d
        return buf

    def run() -> None:
        while time.monotonic() < end:
            with lock:
                data = signon_frame(next(stans))
            t0 = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sendall(data)
                    n = int.from_bytes(recv_exactly(s, 2), "big")
                    body = recv_exactly(s, n)
                took = (time.perf_counter() - t0) * 1000
                rc = CUP.decode(body).get("39")
                with lock:
                    if rc == "00":
                        lat_ms.append(took)
                    else:
                        fails[f"rc {rc}"] = fails.get(f"rc {rc}", 0) + 1
            except (OSError, EOFError) as e:
                with lock:
                    fails[type(e).__name__] = fails.get(type(e).__name__, 0) + 1
                time.sleep(0.01)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"lat_ms": lat_ms, "fails": fails, "seconds": seconds}), flush=True)


# --- parent --------------------------------------------------------------------------------------

class CountingSink:
    """Keeps a count of events by kind (the store's cost is not what is measured here)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, event: Event) -> None:
        with self._lock:
            self.counts[event.kind.value] = self.counts.get(event.kind.value, 0) + 1


def child(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)


def run_level(host: AcquirerHost, n: int, seconds: float) -> dict[str, object]:
    port = host.address[1]
    hostile_proc = None
    ready_s: float | None = 0.0
    if n:
        hostile_proc = child(["--hostile", json.dumps([port, n, 4 * seconds + 30])])
        assert hostile_proc.stdout is not None
        line = hostile_proc.stdout.readline()  # ready, or the stats if never ready
        ready_s = json.loads(line).get("ready_s") if line else None
        time.sleep(1.0)
    try:
        results = []
        for clients in (1, 8):
            p = child(["--legit", json.dumps([port, clients, seconds])])
            out, _ = p.communicate()
            results.append(json.loads(out))
    finally:
        hostile_stats: dict[str, object] = {}
        if hostile_proc is not None:
            hostile_proc.terminate()
            try:
                out, _ = hostile_proc.communicate(timeout=10)
                lines = out.strip().splitlines()
                hostile_stats = json.loads(lines[-1]) if lines else {}
            except subprocess.TimeoutExpired:
                hostile_proc.kill()
        time.sleep(0.5)
    lat = np.asarray(results[0]["lat_ms"])
    fails = {k: results[0]["fails"].get(k, 0) + results[1]["fails"].get(k, 0)
             for k in {*results[0]["fails"], *results[1]["fails"]}}
    return {"n": n, "ready_s": ready_s, "lat": lat, "rate": len(results[1]["lat_ms"]) / seconds,
            "fails": fails, "hostile": hostile_stats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0, help="per phase and level")
    ap.add_argument("--levels", default="0,100,1000")
    ap.add_argument("--hostile", help=argparse.SUPPRESS)
    ap.add_argument("--legit", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hostile:
        hostile(*json.loads(a.hostile))
        return
    if a.legit:
        legit(*json.loads(a.legit))
        return

    levels = [int(x) for x in a.levels.split(",")]
    raise_nofile(BIG_CAP + 512)
    cfg = load_lab(LAB, overrides={"host": {"processing_ms": 0, "read_timeout_s": 120}})
    default_cap = inspect.signature(AcquirerHost).parameters["max_connections"].default
    runs: list[tuple[str, int, dict[str, object]]] = []
    for cap in (BIG_CAP, default_cap):
        sink = CountingSink()
        with AcquirerHost(cfg, sink, listen="127.0.0.1:0", max_connections=cap) as host:
            for n in (levels if cap == BIG_CAP else [max(levels)]):
                if cap != BIG_CAP and n <= cap:
                    continue
                runs.append((f"cap {cap}", n, run_level(host, n, a.seconds)))

    print(f"\nacquirer host under load: CUP sign-ons, a fresh connection each; {a.seconds:g} s "
          f"per phase; {os.cpu_count()} CPUs shared by host, terminals and hostile clients")
    print(f"{'host':<10} {'hostile':>7} {'open in s':>9} {'closed':>7} {'signon/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  failures")
    worst: float | None = None
    for label, n, r in runs:
        lat = r["lat"]
        assert isinstance(lat, np.ndarray)
        p50, p99, mx = ((float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                         float(lat.max())) if len(lat) else (float("nan"),) * 3)
        ready = r["ready_s"]
        ready_txt = f"{ready:9.2f}" if isinstance(ready, float) else f"{'never':>9}"
        fails = r["fails"]
        assert isinstance(fails, dict)
        fail_txt = ", ".join(f"{k} {v}" for k, v in sorted(fails.items())) or "none"
        hostile_stats = r["hostile"]
        assert isinstance(hostile_stats, dict)
        closed = int(hostile_stats.get("closed_by_host", 0))
        print(f"{label:<10} {n:7d} {ready_txt} {closed:7d} {r['rate']:9.1f} {p50:8.2f} "
              f"{p99:8.2f} {mx:8.2f}  {fail_txt}")
        if n == max(levels) and label == f"cap {BIG_CAP}":
            worst = p99 if len(lat) and not fails else float("inf")
    if worst is not None:
        print(f"goal (p99 of a sign-on with {max(levels)} hostile connections open "
              f"<= {GOAL_P99_MS:g} ms, no failure): "
              f"{'MET' if worst <= GOAL_P99_MS else 'NOT MET'} ({worst:.1f} ms)")


if __name__ == "__main__":
    main()
